//! The README's `imgclass classify` example is the binary's real output: the block between the
//! `readme-example:classify` markers must match what `imgclass classify tests/fixtures/coffee.png`
//! prints, run from the repository root as the README shows it, line for line; only the timing
//! figures (the `… ms` numbers of the last line) may differ.

use super::bin;
use std::path::Path;
use std::process::Command;

const START: &str = "<!-- readme-example:classify:start -->";
const END: &str = "<!-- readme-example:classify:end -->";

/// Replaces every number written just before `ms` with `N`: `(decode 5.5 ms, …` becomes
/// `(decode N ms, …`.
fn mask_timings(line: &str) -> String {
    let words: Vec<&str> = line.split(' ').collect();
    let mut out = Vec::with_capacity(words.len());
    for (i, word) in words.iter().enumerate() {
        let before_ms = words.get(i + 1).is_some_and(|next| next.starts_with("ms"));
        let numeric = !word.is_empty() && word.chars().all(|c| c.is_ascii_digit() || c == '.');
        out.push(if before_ms && numeric { "N" } else { word });
    }
    out.join(" ")
}

#[test]
fn readme_classify_example_matches_the_real_output() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let start = readme
        .find(START)
        .expect("README.md has no classify example start marker");
    let end = readme
        .find(END)
        .expect("README.md has no classify example end marker");
    assert!(start < end, "the README's markers are out of order");
    let block = &readme[start + START.len()..end];
    // The fenced block's lines: the command, then the output.
    let lines: Vec<&str> = block
        .lines()
        .filter(|l| !l.trim_start().starts_with("```") && !l.trim().is_empty())
        .collect();
    let (command, shown) = lines
        .split_first()
        .expect("the README's example block is empty");
    assert_eq!(
        *command, "$ ./run.sh classify tests/fixtures/coffee.png",
        "the README's example runs another command"
    );

    let out = Command::new(bin())
        .current_dir(&root)
        .args(["classify", "tests/fixtures/coffee.png"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let real = String::from_utf8(out.stdout).unwrap();
    let real: Vec<String> = real
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(mask_timings)
        .collect();
    let shown: Vec<String> = shown.iter().map(|l| mask_timings(l)).collect();
    assert!(
        real.last()
            .is_some_and(|l| l.contains("(decode N ms, inference N ms;")),
        "the timing line changed shape: {real:#?}"
    );
    assert_eq!(
        shown, real,
        "README.md's classify example (between the readme-example:classify markers) is not \
         what the binary prints now; paste the real output there"
    );
}

#[test]
fn mask_timings_masks_only_the_figures_before_ms() {
    assert_eq!(
        mask_timings("  (decode 5.5 ms, inference 12 ms; provider builtin, model x 6bd9)"),
        "  (decode N ms, inference N ms; provider builtin, model x 6bd9)"
    );
    assert_eq!(mask_timings("   95.61%  espresso"), "   95.61%  espresso");
}
