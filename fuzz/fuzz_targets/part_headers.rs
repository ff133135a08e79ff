//! A multipart part's `Content-Disposition` and `Content-Type` (any bytes a header may hold)
//! through the server's part classification: it must never panic, and a part with a file name
//! in any form must be a file.
#![no_main]

use axum::http::{header, HeaderMap, HeaderValue};
use imgclass_server::api::upload::PartInfo;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (disposition, content_type) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], Some(&data[i + 1..])),
        None => (data, None),
    };
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_bytes(disposition) {
        headers.insert(header::CONTENT_DISPOSITION, v);
    }
    if let Some(Ok(v)) = content_type.map(HeaderValue::from_bytes) {
        headers.insert(header::CONTENT_TYPE, v);
    }
    let part = PartInfo::from_headers(&headers);
    if let Some(name) = &part.file_name {
        assert!(part.is_file);
        assert!(!name.is_empty() && name.chars().count() <= 255);
        assert!(!name.contains(['/', '\\']) && !name.chars().any(char::is_control));
    }
    let _ = part.label(1);
});
