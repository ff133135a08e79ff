//! Any bytes through the upload check (format sniffing, header-only limits, completeness):
//! it must answer, never panic, and never accept an image over the limits.
#![no_main]

use imgclass_classifier::{imageio, ImageLimits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = ImageLimits {
        max_bytes: 1 << 20,
        max_side: 4096,
        max_pixels: 4 << 20,
    };
    if let Ok(probed) = imageio::check(data, &limits) {
        assert!(probed.width <= limits.max_side && probed.height <= limits.max_side);
        assert!(u64::from(probed.width) * u64::from(probed.height) <= limits.max_pixels);
    }
});
