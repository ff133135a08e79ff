//! A whole `POST /api/jobs` body through the server's upload reading (multipart parts or a raw
//! image body), then each file through the image check, as the handler does. The first byte
//! picks the content type; the rest is the body.
#![no_main]

use axum::body::Body;
use axum::http::Request;
use imgclass_classifier::{imageio, ImageLimits};
use imgclass_server::api::upload::read_request;
use imgclass_server::UploadConfig;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

const CONTENT_TYPES: [&str; 4] = [
    "multipart/form-data; boundary=B",
    "multipart/form-data; boundary=\"B\"",
    "image/png",
    "application/octet-stream",
];

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, body)) = data.split_first() else {
        return;
    };
    let limits = ImageLimits {
        max_bytes: 256 * 1024,
        max_side: 4096,
        max_pixels: 4 << 20,
    };
    let mut config = UploadConfig::new(limits, 1);
    config.max_files = 8;
    config.max_parts = 16;
    let request = Request::post("/api/jobs?filename=x.png")
        .header(
            "content-type",
            CONTENT_TYPES[usize::from(mode) % CONTENT_TYPES.len()],
        )
        .body(Body::from(body.to_vec()))
        .unwrap();
    runtime().block_on(async {
        let submitted = read_request(&config, &(), Some("x.png".into()), &["priority"], request).await;
        if let Ok(submission) = submitted {
            assert!(submission.uploads.len() <= config.max_files);
            for upload in submission.uploads {
                assert!(upload.bytes.len() as u64 <= limits.max_bytes);
                let _ = imageio::check(&upload.bytes, &limits);
            }
        }
    });
});
