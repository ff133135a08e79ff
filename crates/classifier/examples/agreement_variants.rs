//! Writes the agreement test's photo variants into a directory, for the reference script:
//!
//! ```sh
//! cargo run -p imgclass-classifier --example agreement_variants -- OUT_DIR
//! python crates/classifier/tests/agreement/reference_labels.py OUT_DIR > crates/classifier/tests/agreement/reference_top5.tsv
//! ```

#[path = "../tests/it/variants.rs"]
mod variants;

use std::path::Path;

fn main() {
    let out = std::env::args()
        .nth(1)
        .expect("usage: agreement_variants OUT_DIR");
    let out = Path::new(&out);
    std::fs::create_dir_all(out).unwrap();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures");
    let all = variants::variants(&fixtures);
    for (name, bytes) in &all {
        std::fs::write(out.join(name), bytes).unwrap();
    }
    eprintln!("{} variants in {}", all.len(), out.display());
}
