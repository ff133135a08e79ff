//! Any bytes through the worker's pre-processing, the decoder wrapper: sniffing and limits, the
//! JPEG path (libjpeg-turbo with its error manager), PNG row by row, whole decodes by the image
//! crate, then crop and resize into the model's input. It must answer, never panic or crash,
//! and fill the whole tensor with finite values when it succeeds.
#![no_main]

use imgclass_classifier::prepare::{Preprocessor, TENSOR_LEN};
use imgclass_classifier::{Cancel, MemoryBudget, ImageLimits};
use libfuzzer_sys::fuzz_target;
use std::cell::RefCell;
use std::sync::OnceLock;

fn budget() -> &'static MemoryBudget {
    static BUDGET: OnceLock<MemoryBudget> = OnceLock::new();
    BUDGET.get_or_init(|| MemoryBudget::new(256 << 20))
}

thread_local! {
    static PREPROCESSOR: RefCell<Preprocessor> = RefCell::new(Preprocessor::new());
}

fuzz_target!(|data: &[u8]| {
    let limits = ImageLimits {
        max_bytes: 1 << 20,
        max_side: 4096,
        max_pixels: 4 << 20,
    };
    let mut out = vec![f32::NAN; TENSOR_LEN];
    let prepared = PREPROCESSOR.with(|p| {
        p.borrow_mut()
            .prepare(data, &limits, budget(), &Cancel::never(), &mut out)
    });
    if let Ok(p) = prepared {
        assert!(p.width <= limits.max_side && p.height <= limits.max_side);
        assert!(out.iter().all(|v| v.is_finite()), "the tensor is not filled");
    }
});
