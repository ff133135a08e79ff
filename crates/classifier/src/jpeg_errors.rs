//! libjpeg's error manager for decoding, the one place with `unsafe` code in imgclass: libjpeg
//! hands its callbacks a raw pointer to the manager, and the warning's code is read through it.
//!
//! Errors unwind out of the C code as panics (as the `mozjpeg` crate's own manager does; the
//! library is built with `-fexceptions` for this), and so do the warnings that mean the
//! entropy-coded data ran out before the frame was covered: the file ends early
//! (`JWRN_JPEG_EOF`), a marker comes where scan data should (`JWRN_HIT_MARKER`: fewer MCUs than
//! the header declares), or a restart interval is missing (`JWRN_MUST_RESYNC`). Left alone,
//! libjpeg fills the rest of the image with grey and reports success. Other warnings (stray
//! bytes before a marker, an unknown JFIF version, a bad ICC profile) are counted and ignored:
//! such files still decode whole.
#![allow(unsafe_code)]

use mozjpeg_sys::{jpeg_common_struct, jpeg_error_mgr, J_MESSAGE_CODE};
use std::os::raw::c_int;

/// The warnings that mean missing scan data.
const MISSING_DATA: [J_MESSAGE_CODE; 3] = [
    mozjpeg_sys::JWRN_JPEG_EOF,
    mozjpeg_sys::JWRN_HIT_MARKER,
    mozjpeg_sys::JWRN_MUST_RESYNC,
];

/// A manager for `mozjpeg::decompress::DecompressBuilder::with_err`. Panics it raises carry a
/// `String` saying what went wrong.
pub(crate) fn manager() -> jpeg_error_mgr {
    // SAFETY: an all-zero manager is a valid value (null pointers, zero counts, no callbacks),
    // and `jpeg_std_error` fills in libjpeg's defaults (its message table and formatter).
    let mut err: jpeg_error_mgr = unsafe { std::mem::zeroed() };
    unsafe { mozjpeg_sys::jpeg_std_error(&mut err) };
    err.error_exit = Some(error_exit);
    err.emit_message = Some(emit_message);
    err
}

/// The code of the message libjpeg is reporting.
fn code(cinfo: &jpeg_common_struct) -> J_MESSAGE_CODE {
    // SAFETY: libjpeg calls the manager's callbacks with `cinfo.err` pointing at that manager,
    // which the decompressor owns for its whole life.
    unsafe { (*cinfo.err).msg_code }
}

/// libjpeg's text for the message it is reporting.
fn message(cinfo: &mut jpeg_common_struct) -> String {
    let mut buffer = [0u8; 80];
    // SAFETY: as in `code`. `format_message` writes at most JMSG_LENGTH_MAX (80) bytes,
    // NUL-terminated; the binding declares its buffer `&[u8; 80]`, so the function pointer is
    // given its real type (a mutable buffer), as the `mozjpeg` crate does.
    unsafe {
        if let Some(format) = (*cinfo.err).format_message {
            let format = std::mem::transmute::<
                unsafe extern "C-unwind" fn(&mut jpeg_common_struct, &[u8; 80]),
                unsafe extern "C-unwind" fn(&mut jpeg_common_struct, &mut [u8; 80]),
            >(format);
            format(cinfo, &mut buffer);
        }
    }
    let end = buffer.iter().position(|&b| b == 0).unwrap_or(buffer.len());
    String::from_utf8_lossy(&buffer[..end]).into_owned()
}

extern "C-unwind" fn error_exit(cinfo: &mut jpeg_common_struct) {
    let text = message(cinfo);
    std::panic::resume_unwind(Box::new(format!("libjpeg: {text}")));
}

extern "C-unwind" fn emit_message(cinfo: &mut jpeg_common_struct, level: c_int) {
    if level >= 0 {
        return; // a trace message
    }
    if MISSING_DATA.contains(&code(cinfo)) {
        let text = message(cinfo);
        std::panic::resume_unwind(Box::new(format!(
            "the JPEG data does not cover the image its header declares ({text})"
        )));
    }
    // SAFETY: as in `code`.
    unsafe { (*cinfo.err).num_warnings += 1 };
}
