//! Reading the files of `POST /api/jobs`: the parts of a `multipart/form-data` body, or one raw
//! image body. A part that carries a file is a file, whatever its name's encoding (plain
//! `filename`, RFC 5987 `filename*`, bytes that are not UTF-8: the name is kept lossily, for
//! display only); a part with neither a file name nor a non-text content type is a form field
//! and is skipped. Anything that cannot be taken is refused with an error naming the part, and
//! the request is all or nothing.

use crate::error::ApiError;
use crate::upload_budget::{Held, Refused, UploadBudget};
use crate::UploadConfig;
use axum::body::Body;
use axum::extract::{FromRequest, Multipart, Request};
use axum::http::{header, HeaderMap, StatusCode};
use futures_util::StreamExt;
use imgclass_core::ErrorCode;
use percent_encoding::percent_decode;

/// One file of a request, read but not yet checked.
pub struct Upload {
    /// The client's file name, cleaned for display.
    pub file_name: Option<String>,
    /// How error messages name this file.
    pub label: String,
    pub bytes: Vec<u8>,
}

/// The files of a submission and its plain fields.
pub struct Submission {
    pub uploads: Vec<Upload>,
    /// The plain multipart fields that were asked for, as (name, text), in order.
    pub fields: Vec<(String, String)>,
    /// The request's share of the upload budget: keep it until the uploads' bytes are stored
    /// (or dropped).
    pub held: Held,
}

/// A request's share of the upload budget and the body bytes it has read.
struct Meter {
    budget: UploadBudget,
    held: Held,
    read: u64,
}

impl Meter {
    fn new(budget: &UploadBudget) -> Meter {
        Meter {
            budget: budget.clone(),
            held: Held::default(),
            read: 0,
        }
    }

    /// Takes the share of a body of declared length before it is read.
    async fn admit(&mut self, declared: u64) -> Result<(), ApiError> {
        self.budget
            .admit(&mut self.held, declared)
            .await
            .map_err(budget_error)
    }

    /// Counts `n` more bytes read, growing the share when they pass what it holds.
    async fn count(&mut self, n: usize) -> Result<(), ApiError> {
        self.read += n as u64;
        self.budget
            .grow(&mut self.held, self.read)
            .await
            .map_err(budget_error)
    }

    /// Gives the share back (before draining a refused body, which holds nothing).
    fn release(&mut self) {
        self.held = Held::default();
    }
}

fn budget_error(refused: Refused) -> ApiError {
    match refused {
        Refused::Busy { wait } => ApiError::from_code(
            ErrorCode::Busy,
            format!(
                "the server holds as many uploaded bytes as it may at once, and no room was made \
                 for this request within {} s; try again after Retry-After seconds",
                wait.as_secs_f64().ceil()
            ),
        )
        .with_retry_after(wait),
        Refused::TooLarge { wanted, capacity } => ApiError::from_code(
            ErrorCode::PayloadTooLarge,
            format!(
                "the request body ({wanted} bytes) is larger than the server's upload budget \
                 ({capacity} bytes)"
            ),
        ),
    }
}

/// The request's `Content-Length`, if it has a valid one.
fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// Reads and discards a refused request's body (bounded by `limit` bytes and the body-read
/// timeout), so that a client still sending reads the answer instead of a reset. A client that
/// waits for `100 Continue` before sending is not asked for its body.
async fn drain_body(headers: &HeaderMap, body: Body, limit: u64) {
    let expects_continue = headers
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if expects_continue {
        return;
    }
    let mut stream = body.into_data_stream();
    let mut seen = 0u64;
    while let Some(Ok(chunk)) = stream.next().await {
        seen += chunk.len() as u64;
        if seen > limit {
            break;
        }
    }
}

/// The longest plain field read, in bytes.
pub const MAX_FIELD_BYTES: usize = 16 * 1024;

/// What the headers of a multipart part say about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartInfo {
    /// Whether the part carries a file (a file name in any form, or a non-text content type).
    pub is_file: bool,
    /// The form field's name (lossy), if any.
    pub field_name: Option<String>,
    /// The file name, decoded and cleaned for display, if one is usable.
    pub file_name: Option<String>,
}

impl PartInfo {
    /// Reads a part's `Content-Disposition` and `Content-Type` headers.
    pub fn from_headers(headers: &HeaderMap) -> PartInfo {
        let params = headers
            .get(header::CONTENT_DISPOSITION)
            .map(|v| disposition_params(v.as_bytes()))
            .unwrap_or_default();
        let param = |name: &str| {
            params
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_slice())
        };
        let extended = param("filename*");
        let plain = param("filename");
        let file_name = extended
            .and_then(|v| clean_file_name(&decode_ext_value(v)))
            .or_else(|| plain.and_then(|v| clean_file_name(&String::from_utf8_lossy(v))));
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .map(|v| essence(v.as_bytes()));
        let has_file_type = content_type.is_some_and(|t| !t.is_empty() && t != "text/plain");
        PartInfo {
            is_file: extended.is_some() || plain.is_some() || has_file_type,
            field_name: param("name").map(|v| {
                String::from_utf8_lossy(v)
                    .chars()
                    .filter(|c| !c.is_control())
                    .take(64)
                    .collect()
            }),
            file_name,
        }
    }

    /// How an error message names part number `index` (counted from 1).
    pub fn label(&self, index: usize) -> String {
        match (&self.file_name, &self.field_name) {
            (Some(file), _) => file.clone(),
            (None, Some(field)) if !field.is_empty() => format!("part {index} (field {field:?})"),
            _ => format!("part {index}"),
        }
    }
}

/// The lowercased media type of a `Content-Type` value, without parameters.
fn essence(value: &[u8]) -> String {
    let text = String::from_utf8_lossy(value);
    text.split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// The parameters of a `Content-Disposition` value, names lowercased, values unquoted (the
/// disposition type itself is skipped). Tolerant: never fails, whatever the bytes.
fn disposition_params(value: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut params = Vec::new();
    // Skip the disposition type.
    let mut i = value.iter().position(|&b| b == b';').unwrap_or(value.len());
    while i < value.len() && params.len() < 32 {
        // Skip separators and white space.
        while i < value.len() && (value[i] == b';' || value[i].is_ascii_whitespace()) {
            i += 1;
        }
        let start = i;
        while i < value.len() && value[i] != b'=' && value[i] != b';' {
            i += 1;
        }
        let name = String::from_utf8_lossy(&value[start..i])
            .trim()
            .to_ascii_lowercase();
        if i >= value.len() || value[i] == b';' {
            // A parameter without a value.
            continue;
        }
        i += 1; // '='
        while i < value.len() && value[i].is_ascii_whitespace() {
            i += 1;
        }
        let mut v = Vec::new();
        if i < value.len() && value[i] == b'"' {
            i += 1;
            while i < value.len() && value[i] != b'"' {
                if value[i] == b'\\' && i + 1 < value.len() {
                    i += 1;
                }
                v.push(value[i]);
                i += 1;
            }
            i += 1; // closing quote (or past the end)
        } else {
            let start = i;
            while i < value.len() && value[i] != b';' {
                i += 1;
            }
            v.extend_from_slice(value[start..i].trim_ascii());
        }
        if !name.is_empty() {
            params.push((name, v));
        }
    }
    params
}

/// Decodes an RFC 5987 `ext-value` (`charset'language'percent-encoded`), lossily: UTF-8 and
/// ISO-8859-1 are honoured, anything else is read as UTF-8.
fn decode_ext_value(value: &[u8]) -> String {
    let mut pieces = value.splitn(3, |&b| b == b'\'');
    let (charset, encoded) = match (pieces.next(), pieces.next(), pieces.next()) {
        (Some(charset), Some(_language), Some(encoded)) => (charset, encoded),
        _ => (&b""[..], value),
    };
    let bytes: Vec<u8> = percent_decode(encoded).collect();
    if charset.eq_ignore_ascii_case(b"iso-8859-1") || charset.eq_ignore_ascii_case(b"latin1") {
        bytes.iter().map(|&b| char::from(b)).collect()
    } else {
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// Keeps the last path component of a client's file name, without control characters, at most
/// 255 characters. It is only ever shown, never used as a path.
pub(crate) fn clean_file_name(name: &str) -> Option<String> {
    let base = name.rsplit(['/', '\\']).next().unwrap_or(name);
    let cleaned: String = base.chars().filter(|c| !c.is_control()).take(255).collect();
    let trimmed = cleaned.trim();
    (!trimmed.is_empty()).then(|| trimmed.to_string())
}

/// Whether an error (or one of its sources) is the body-read progress timeout.
pub(crate) fn is_body_timeout(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(err);
    while let Some(e) = current {
        if e.is::<tower_http::timeout::TimeoutError>() {
            return true;
        }
        current = e.source();
    }
    false
}

fn body_timeout(label: &str) -> ApiError {
    ApiError::from_code(
        ErrorCode::RequestTimeout,
        format!("{label}: the client sent nothing for too long; the request was abandoned"),
    )
}

fn multipart_error(label: &str, e: axum::extract::multipart::MultipartError) -> ApiError {
    if is_body_timeout(&e) {
        body_timeout(label)
    } else if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::from_code(
            ErrorCode::PayloadTooLarge,
            "the request body is larger than the server accepts",
        )
    } else {
        ApiError::from_code(
            ErrorCode::BadRequest,
            format!(
                "{label}: the multipart body could not be read: {}",
                e.body_text()
            ),
        )
    }
}

/// Reads and discards the rest of a field of a refused upload (bounded by the request body
/// limit and the body-read timeout), so that the client, still sending, reads the error
/// response instead of a reset.
async fn drain_field(field: &mut axum::extract::multipart::Field<'_>) {
    while let Ok(Some(_)) = field.chunk().await {}
}

async fn drain_multipart(multipart: &mut Multipart) {
    while let Ok(Some(mut f)) = multipart.next_field().await {
        drain_field(&mut f).await;
    }
}

/// The files of a request to `POST /api/jobs`: multipart parts (with the text of the plain
/// fields named in `wanted`), or one raw image body named by `file_name` (`?filename=`).
/// Public for the fuzz targets (`fuzz/`).
pub async fn read_request<S: Send + Sync>(
    config: &UploadConfig,
    state: &S,
    file_name: Option<String>,
    wanted: &[&str],
    request: Request,
) -> Result<Submission, ApiError> {
    let headers = request.headers();
    let media_type = headers
        .get(header::CONTENT_TYPE)
        .map(|v| essence(v.as_bytes()))
        .unwrap_or_default();
    let multipart = media_type == "multipart/form-data";
    let raw = media_type.starts_with("image/") || media_type == "application/octet-stream";
    if multipart || raw {
        // The body's share of the upload budget: all of it before reading when its length is
        // known (a longer body is refused by the request limit anyway), else as it arrives;
        // a declared body that does not arrive at pace gives back what it has not sent.
        let mut meter = Meter::new(&config.budget);
        let declared = content_length(headers);
        if let Some(len) = declared {
            let limit = config.request_limit() as u64;
            if let Err(e) = meter.admit(len.min(limit)).await {
                let (parts, body) = request.into_parts();
                drain_body(&parts.headers, body, limit).await;
                return Err(e);
            }
        }
        if raw {
            let uploads =
                read_raw(config, request.into_body(), file_name, declared, &mut meter).await?;
            return Ok(Submission {
                uploads,
                fields: Vec::new(),
                held: meter.held,
            });
        }
        let multipart = Multipart::from_request(request, state).await.map_err(|e| {
            ApiError::from_code(
                ErrorCode::BadRequest,
                format!("the multipart body cannot be read: {}", e.body_text()),
            )
        })?;
        return read_multipart(config, wanted, multipart, meter).await;
    }
    let empty = media_type.is_empty()
        && !headers.contains_key(header::TRANSFER_ENCODING)
        && headers
            .get(header::CONTENT_LENGTH)
            .is_none_or(|v| v.as_bytes() == b"0");
    if empty {
        return Err(ApiError::from_code(
            ErrorCode::NoFiles,
            "the request has no image file; send them as multipart/form-data file fields",
        ));
    }
    let got = if media_type.is_empty() {
        "a body without a Content-Type".to_string()
    } else {
        format!("Content-Type {media_type}")
    };
    Err(ApiError::from_code(
        ErrorCode::UnsupportedMediaType,
        format!(
            "send the images as multipart/form-data file fields, or one image as the request \
             body with Content-Type image/*; got {got}"
        ),
    ))
}

async fn read_multipart(
    config: &UploadConfig,
    wanted: &[&str],
    mut multipart: Multipart,
    mut meter: Meter,
) -> Result<Submission, ApiError> {
    let max = config.limits.max_bytes;
    let mut uploads = Vec::new();
    let mut fields = Vec::new();
    let mut index = 0;
    loop {
        let next = multipart
            .next_field()
            .await
            .map_err(|e| multipart_error(&format!("part {}", index + 1), e))?;
        let Some(mut field) = next else { break };
        index += 1;
        let part = PartInfo::from_headers(field.headers());
        let label = part.label(index);
        let refusal = if index > config.max_parts {
            Some(ApiError::from_code(
                ErrorCode::PayloadTooLarge,
                format!(
                    "{label}: a request may have at most {} parts",
                    config.max_parts
                ),
            ))
        } else if part.is_file && uploads.len() >= config.max_files {
            Some(ApiError::from_code(
                ErrorCode::PayloadTooLarge,
                format!("{label}: at most {} files per request", config.max_files),
            ))
        } else {
            None
        };
        if let Some(err) = refusal {
            drain_field(&mut field).await;
            drop(field);
            drain_multipart(&mut multipart).await;
            return Err(err);
        }
        if !part.is_file {
            let Some(name) = part.field_name.filter(|n| wanted.contains(&n.as_str())) else {
                // Any other plain field is refused: a misspelt field is not silently ignored.
                drain_field(&mut field).await;
                drop(field);
                drain_multipart(&mut multipart).await;
                return Err(ApiError::from_code(
                    ErrorCode::BadRequest,
                    format!(
                        "unknown form field in {label}: send image files (with a file name) and \
                         optionally {}",
                        wanted.join(", ")
                    ),
                ));
            };
            let mut text = Vec::new();
            while let Some(chunk) = field
                .chunk()
                .await
                .map_err(|e| multipart_error(&label, e))?
            {
                if text.len() + chunk.len() > MAX_FIELD_BYTES {
                    drain_field(&mut field).await;
                    drop(field);
                    drain_multipart(&mut multipart).await;
                    return Err(ApiError::from_code(
                        ErrorCode::PayloadTooLarge,
                        format!("{label} is longer than {MAX_FIELD_BYTES} bytes"),
                    ));
                }
                if let Err(e) = meter.count(chunk.len()).await {
                    meter.release();
                    drain_field(&mut field).await;
                    drop(field);
                    drain_multipart(&mut multipart).await;
                    return Err(e);
                }
                text.extend_from_slice(&chunk);
            }
            fields.push((name, String::from_utf8_lossy(&text).into_owned()));
            continue;
        }
        // The chunks are kept as they come and joined once at the end: a vector grown chunk
        // by chunk would copy a large file about twice more.
        let mut chunks = Vec::new();
        let mut len = 0;
        while let Some(chunk) = field
            .chunk()
            .await
            .map_err(|e| multipart_error(&label, e))?
        {
            if (len + chunk.len()) as u64 > max {
                drain_field(&mut field).await;
                drop(field);
                drain_multipart(&mut multipart).await;
                return Err(ApiError::from_code(
                    ErrorCode::PayloadTooLarge,
                    format!("{label} is larger than the limit of {max} bytes per file"),
                ));
            }
            if let Err(e) = meter.count(chunk.len()).await {
                meter.release();
                drain_field(&mut field).await;
                drop(field);
                drain_multipart(&mut multipart).await;
                return Err(e);
            }
            len += chunk.len();
            chunks.push(chunk);
        }
        uploads.push(Upload {
            file_name: part.file_name,
            label,
            bytes: chunks.concat(),
        });
    }
    Ok(Submission {
        uploads,
        fields,
        held: meter.held,
    })
}

async fn read_raw(
    config: &UploadConfig,
    body: Body,
    file_name: Option<String>,
    declared: Option<u64>,
    meter: &mut Meter,
) -> Result<Vec<Upload>, ApiError> {
    let max = config.limits.max_bytes;
    let drain_limit = config.request_limit() as u64;
    let file_name = file_name.as_deref().and_then(clean_file_name);
    let label = file_name
        .clone()
        .unwrap_or_else(|| "the request body".to_string());
    let mut stream = body.into_data_stream();
    // Sized once when the length is known (and within the limit): no growth by doubling.
    let mut bytes = Vec::with_capacity(declared.filter(|&n| n <= max).unwrap_or(0) as usize);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            if is_body_timeout(&e) {
                body_timeout(&label)
            } else {
                ApiError::from_code(
                    ErrorCode::BadRequest,
                    format!("{label}: the request body could not be read"),
                )
            }
        })?;
        if (bytes.len() + chunk.len()) as u64 > max {
            // Let a client that is still sending read the answer (bounded like any body).
            let mut seen = (bytes.len() + chunk.len()) as u64;
            while let Some(Ok(more)) = stream.next().await {
                seen += more.len() as u64;
                if seen > drain_limit {
                    break;
                }
            }
            return Err(ApiError::from_code(
                ErrorCode::PayloadTooLarge,
                format!("{label} is larger than the limit of {max} bytes per file"),
            ));
        }
        if let Err(e) = meter.count(chunk.len()).await {
            meter.release();
            let mut seen = (bytes.len() + chunk.len()) as u64;
            drop(bytes);
            while let Some(Ok(more)) = stream.next().await {
                seen += more.len() as u64;
                if seen > drain_limit {
                    break;
                }
            }
            return Err(e);
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(vec![Upload {
        file_name,
        label,
        bytes,
    }])
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn part(disposition: &[u8], content_type: Option<&str>) -> PartInfo {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_DISPOSITION,
            HeaderValue::from_bytes(disposition).unwrap(),
        );
        if let Some(t) = content_type {
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_str(t).unwrap());
        }
        PartInfo::from_headers(&headers)
    }

    #[test]
    fn file_names_are_reduced_to_a_harmless_base_name() {
        assert_eq!(clean_file_name("cat.png").as_deref(), Some("cat.png"));
        assert_eq!(
            clean_file_name("../../etc/passwd").as_deref(),
            Some("passwd")
        );
        assert_eq!(clean_file_name("C:\\x\\y.jpg").as_deref(), Some("y.jpg"));
        assert_eq!(
            clean_file_name("a\u{0}b\nc.png").as_deref(),
            Some("abc.png")
        );
        assert_eq!(clean_file_name("  "), None);
        assert_eq!(clean_file_name(&"x".repeat(1000)).unwrap().len(), 255);
        // Markup is kept as text; it is escaped wherever it is shown.
        assert_eq!(
            clean_file_name("<img src=x onerror=alert(1)>.png").as_deref(),
            Some("<img src=x onerror=alert(1)>.png")
        );
    }

    #[test]
    fn every_form_of_file_name_makes_a_file() {
        let p = part(br#"form-data; name="file"; filename="cat.png""#, None);
        assert!(p.is_file);
        assert_eq!(p.file_name.as_deref(), Some("cat.png"));
        assert_eq!(p.field_name.as_deref(), Some("file"));

        let p = part(
            b"form-data; name=file; filename*=UTF-8''%E2%82%AC%20rates.png",
            None,
        );
        assert!(p.is_file);
        assert_eq!(p.file_name.as_deref(), Some("\u{20ac} rates.png"));

        // filename* wins over filename.
        let p = part(
            b"form-data; name=\"f\"; filename=\"EUR rates.png\"; filename*=utf-8''%e2%82%ac.png",
            None,
        );
        assert_eq!(p.file_name.as_deref(), Some("\u{20ac}.png"));

        let p = part(b"form-data; filename*=iso-8859-1'de'M%FCll.png", None);
        assert_eq!(p.file_name.as_deref(), Some("M\u{fc}ll.png"));

        // Not UTF-8: kept lossily.
        let p = part(b"form-data; name=\"file\"; filename=\"caf\xe9.png\"", None);
        assert!(p.is_file);
        assert_eq!(p.file_name.as_deref(), Some("caf\u{fffd}.png"));

        // A quoted name may hold ';' and escaped quotes.
        let p = part(br#"form-data; filename="a;b \"c\".png"; name="x""#, None);
        assert_eq!(p.file_name.as_deref(), Some("a;b \"c\".png"));
        assert_eq!(p.field_name.as_deref(), Some("x"));

        // An empty name still makes a file, without a name.
        let p = part(br#"form-data; name="file"; filename="""#, None);
        assert!(p.is_file);
        assert_eq!(p.file_name, None);
        assert_eq!(p.label(3), "part 3 (field \"file\")");
    }

    #[test]
    fn content_types_decide_for_parts_without_a_name() {
        assert!(part(br#"form-data; name="photo""#, Some("image/png")).is_file);
        assert!(
            part(
                br#"form-data; name="photo""#,
                Some("application/octet-stream")
            )
            .is_file
        );
        assert!(!part(br#"form-data; name="note""#, None).is_file);
        assert!(
            !part(
                br#"form-data; name="note""#,
                Some("text/plain; charset=utf-8")
            )
            .is_file
        );
    }

    #[test]
    fn hostile_dispositions_do_not_panic() {
        for raw in [
            &b""[..],
            b";",
            b";;;;=;=",
            b"form-data; filename=\"",
            b"form-data; filename=\"\\",
            b"form-data; filename*=",
            b"form-data; filename*=''",
            b"form-data; filename*=utf-8''%",
            b"form-data; filename*=utf-8''%zz%e2",
            b"form-data; =x; name",
        ] {
            let _ = disposition_params(raw);
            let _ = decode_ext_value(raw);
        }
    }
}
