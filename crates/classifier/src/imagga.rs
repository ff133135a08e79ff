//! The Imagga tagging API (v2) as a classifier, over blocking HTTP (no async runtime).
//!
//! One classification is three requests, all with HTTP Basic auth: `POST /v2/uploads` (the
//! image as the multipart field `image`) gives an upload id; `GET /v2/tags?image_upload_id=…`
//! gives the tags with confidences from 0 to 100, kept as probabilities from 0 to 1; and
//! `DELETE /v2/uploads/{id}` removes the upload again, whether tagging worked or not.
//!
//! Failures carry the stable codes the queue's rules act on: the network, a timeout, a 5xx or a
//! 429 may pass (retried, after the `Retry-After` the answer gave if it is longer than the
//! backoff); refused credentials (401), a used-up quota (403), a refused image (other 4xx) and a
//! body that does not follow the protocol will not. The secret is sent only in the
//! `Authorization` header and never appears in an error, a log line or `Debug` output.

use crate::{imageio, Classification, Classifier, ClassifyError};
use base64::Engine;
use imgclass_core::{ErrorCode, ModelInfo, Prediction, Provider};
use serde::Deserialize;
use std::fmt;
use std::time::{Duration, Instant, SystemTime};

/// Imagga's public API.
pub const DEFAULT_URL: &str = "https://api.imagga.com";

/// The largest answer body read from the API (a tags answer is a few kilobytes).
const MAX_BODY: u64 = 4 * 1024 * 1024;

/// A credential: shown as `***` by `Debug`, so that it cannot reach a log by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The value itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// How to reach the API and what to ask it for.
#[derive(Debug, Clone)]
pub struct ImaggaConfig {
    /// The API's base URL (scheme and host, optionally a path prefix), without `/v2`.
    pub url: String,
    pub key: String,
    pub secret: Secret,
    /// Tags per result (`limit`).
    pub top_k: usize,
    /// The language of the labels (`language`), e.g. `en`.
    pub language: String,
    /// Tags below this confidence (0–100) are left out (`threshold`), if set.
    pub threshold: Option<f32>,
    /// Each request's whole time, from connecting to the last byte of the answer.
    pub timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid Imagga settings: {0}")]
pub struct ImaggaConfigError(String);

/// The Imagga API as a [`Classifier`]; one per worker thread (they share nothing).
pub struct ImaggaClassifier {
    agent: ureq::Agent,
    base: String,
    /// `Basic base64(key:secret)`; never logged.
    authorization: String,
    top_k: usize,
    language: String,
    threshold: Option<f32>,
    info: ModelInfo,
}

impl fmt::Debug for ImaggaClassifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ImaggaClassifier")
            .field("base", &self.base)
            .field("authorization", &"***")
            .field("top_k", &self.top_k)
            .field("language", &self.language)
            .field("threshold", &self.threshold)
            .finish()
    }
}

impl ImaggaClassifier {
    pub fn new(config: &ImaggaConfig) -> Result<Self, ImaggaConfigError> {
        let url = config.url.trim();
        let rest = url
            .strip_prefix("https://")
            .or_else(|| url.strip_prefix("http://"))
            .ok_or_else(|| {
                ImaggaConfigError(format!(
                    "the URL {url:?} must start with https:// or http://"
                ))
            })?;
        if rest.is_empty() || rest.starts_with('/') {
            return Err(ImaggaConfigError(format!("the URL {url:?} has no host")));
        }
        let base = url.trim_end_matches('/').to_string();
        if config.key.is_empty() || config.secret.expose().is_empty() {
            return Err(ImaggaConfigError(
                "an API key and secret are needed (--imagga-key, --imagga-secret)".into(),
            ));
        }
        if config.language.is_empty()
            || !config
                .language
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(ImaggaConfigError(format!(
                "the language {:?} is not a language code such as en",
                config.language
            )));
        }
        if let Some(t) = config.threshold {
            if !(0.0..=100.0).contains(&t) {
                return Err(ImaggaConfigError(format!(
                    "the threshold {t} is not a confidence from 0 to 100"
                )));
            }
        }
        if config.timeout.is_zero() {
            return Err(ImaggaConfigError(
                "the request timeout must be above 0".into(),
            ));
        }
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(config.timeout))
            // Statuses are read and mapped here, not turned into bare errors.
            .http_status_as_error(false)
            .max_redirects(0)
            .max_redirects_will_error(false)
            .user_agent(concat!("imgclass/", env!("CARGO_PKG_VERSION")))
            .build()
            .new_agent();
        let credentials = format!("{}:{}", config.key, config.secret.expose());
        Ok(ImaggaClassifier {
            agent,
            base,
            authorization: format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(credentials)
            ),
            top_k: config.top_k.max(1),
            language: config.language.clone(),
            threshold: config.threshold,
            info: Self::model_info(),
        })
    }

    /// What the results of this provider name as their model.
    pub fn model_info() -> ModelInfo {
        ModelInfo {
            provider: Provider::Imagga,
            name: "imagga-tags".into(),
            version: "v2".into(),
        }
    }

    /// `POST /v2/uploads`: the upload id.
    fn upload(&self, image: &[u8]) -> Result<String, ClassifyError> {
        let (content_type, extension) = match image::guess_format(image) {
            Ok(f) => (
                imageio::content_type(f),
                f.extensions_str().first().copied().unwrap_or("bin"),
            ),
            Err(_) => ("application/octet-stream", "bin"),
        };
        let boundary = boundary_for(image);
        let mut body = Vec::with_capacity(image.len() + 256);
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; \
                 filename=\"image.{extension}\"\r\nContent-Type: {content_type}\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(image);
        body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        let answer = self
            .agent
            .post(format!("{}/v2/uploads", self.base))
            .header("Authorization", &self.authorization)
            .header("Accept", "application/json")
            // A refusal (bad credentials, quota) arrives before the image is sent, instead of
            // the server closing the connection on a body it will not read.
            .header("Expect", "100-continue")
            .content_type(format!("multipart/form-data; boundary={boundary}"))
            .send(&body[..]);
        let result: UploadResult = read_result("upload", answer)?;
        if result.upload_id.is_empty() {
            return Err(protocol("upload", "the upload id is empty"));
        }
        Ok(result.upload_id)
    }

    /// `GET /v2/tags`: the tags of an upload, most confident first.
    fn tags(&self, upload_id: &str) -> Result<Vec<Prediction>, ClassifyError> {
        let mut request = self
            .agent
            .get(format!("{}/v2/tags", self.base))
            .header("Authorization", &self.authorization)
            .header("Accept", "application/json")
            .query("image_upload_id", upload_id)
            .query("limit", self.top_k.to_string());
        if self.language != "en" {
            request = request.query("language", &self.language);
        }
        if let Some(t) = self.threshold {
            request = request.query("threshold", t.to_string());
        }
        let result: TagsResult = read_result("tags", request.call())?;
        let mut predictions = Vec::with_capacity(result.tags.len());
        for (index, tag) in result.tags.into_iter().enumerate() {
            let label = tag.tag.get(&self.language).cloned().ok_or_else(|| {
                protocol(
                    "tags",
                    format!("a tag has no label in the language {:?}", self.language),
                )
            })?;
            if !tag.confidence.is_finite() || !(0.0..=100.0).contains(&tag.confidence) {
                return Err(protocol(
                    "tags",
                    format!(
                        "the confidence {} of {label:?} is not from 0 to 100",
                        tag.confidence
                    ),
                ));
            }
            predictions.push(Prediction {
                index,
                label,
                probability: (tag.confidence / 100.0) as f32,
            });
        }
        predictions.sort_by(|a, b| b.probability.total_cmp(&a.probability));
        predictions.truncate(self.top_k);
        Ok(predictions)
    }

    /// `DELETE /v2/uploads/{id}`. A failure is logged and does not change the job's outcome.
    fn delete(&self, upload_id: &str) {
        let answer = self
            .agent
            .delete(format!(
                "{}/v2/uploads/{}",
                self.base,
                percent_encode_segment(upload_id)
            ))
            .header("Authorization", &self.authorization)
            .header("Accept", "application/json")
            .call();
        if let Err(e) = successful_body("delete", answer) {
            tracing::warn!(imagga.upload_id = %upload_id, error = %e, "could not delete an upload at Imagga");
        }
    }
}

impl Classifier for ImaggaClassifier {
    fn classify(&mut self, image: &[u8]) -> Result<Classification, ClassifyError> {
        let started = Instant::now();
        let upload_id = self.upload(image)?;
        let tags = self.tags(&upload_id);
        let elapsed = started.elapsed();
        // Also when tagging failed: nothing is left behind at Imagga.
        self.delete(&upload_id);
        Ok(Classification {
            predictions: tags?,
            decode_ms: 0.0,
            inference_ms: elapsed.as_secs_f64() * 1e3,
        })
    }

    fn info(&self) -> &ModelInfo {
        &self.info
    }
}

/// A multipart boundary that does not occur in `bytes`.
fn boundary_for(bytes: &[u8]) -> String {
    loop {
        let b = format!("imgclass-{:032x}", rand::random::<u128>());
        if !bytes.windows(b.len()).any(|w| w == b.as_bytes()) {
            return b;
        }
    }
}

/// Percent-encodes everything but unreserved characters (RFC 3986) in a path segment.
fn percent_encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A successful answer's envelope: `{"result": …, "status": {"type": "success", "text": ""}}`.
#[derive(Deserialize)]
struct Envelope<T> {
    result: Option<T>,
}

#[derive(Deserialize)]
struct Status {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: String,
}

/// Only the status of an answer (whose `result` may be anything or absent).
#[derive(Deserialize)]
struct StatusOnly {
    status: Status,
}

#[derive(Deserialize)]
struct UploadResult {
    upload_id: String,
}

#[derive(Deserialize)]
struct TagsResult {
    tags: Vec<Tag>,
}

#[derive(Deserialize)]
struct Tag {
    confidence: f64,
    tag: std::collections::HashMap<String, String>,
}

fn protocol(step: &str, detail: impl fmt::Display) -> ClassifyError {
    ClassifyError::Provider {
        code: ErrorCode::ProviderProtocol,
        message: format!("Imagga's {step} answer does not follow its protocol: {detail}"),
        retry_after: None,
    }
}

/// The body of a request's answer when its status is 2xx and its envelope says `success`;
/// otherwise the error, with its code and the wait the server asked for.
fn successful_body(
    step: &str,
    answer: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> Result<Vec<u8>, ClassifyError> {
    let mut response = answer.map_err(|e| transport_error(step, e))?;
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| imgclass_core::retry_after::parse(v, SystemTime::now()));
    let body = response
        .body_mut()
        .with_config()
        .limit(MAX_BODY)
        .read_to_vec()
        .map_err(|e| transport_error(step, e))?;
    if !(200..300).contains(&status) {
        let said = serde_json::from_slice::<StatusOnly>(&body)
            .map(|s| s.status.text)
            .unwrap_or_else(|_| excerpt(&body));
        return Err(status_error(step, status, &said, retry_after));
    }
    let envelope: StatusOnly =
        serde_json::from_slice(&body).map_err(|e| protocol(step, format!("{e}")))?;
    if envelope.status.kind != "success" {
        return Err(ClassifyError::Provider {
            code: ErrorCode::ProviderRejected,
            message: format!(
                "Imagga's {step} request failed ({}): {}",
                envelope.status.kind, envelope.status.text
            ),
            retry_after: None,
        });
    }
    Ok(body)
}

/// The `result` of a successful answer.
fn read_result<T: serde::de::DeserializeOwned>(
    step: &str,
    answer: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> Result<T, ClassifyError> {
    let body = successful_body(step, answer)?;
    let envelope: Envelope<T> =
        serde_json::from_slice(&body).map_err(|e| protocol(step, format!("{e}")))?;
    envelope
        .result
        .ok_or_else(|| protocol(step, "the answer has no result"))
}

/// The start of a body that is not the API's JSON, as printable text.
fn excerpt(body: &[u8]) -> String {
    let text: String = String::from_utf8_lossy(body)
        .chars()
        .filter(|c| !c.is_control())
        .take(200)
        .collect();
    if text.trim().is_empty() {
        "(no message)".into()
    } else {
        text.trim().to_string()
    }
}

/// An answer with a non-2xx status.
fn status_error(
    step: &str,
    status: u16,
    said: &str,
    retry_after: Option<Duration>,
) -> ClassifyError {
    let lower = said.to_ascii_lowercase();
    let quota = ["quota", "limit", "exceeded", "exhausted"]
        .iter()
        .any(|w| lower.contains(w));
    let (code, what) = match status {
        401 => (ErrorCode::ProviderAuth, "refused the API key and secret"),
        403 if quota => (ErrorCode::ProviderQuota, "says the quota is used up"),
        403 => (ErrorCode::ProviderAuth, "refused access"),
        429 => (ErrorCode::ProviderRateLimited, "asks to slow down"),
        500..=599 => (ErrorCode::ProviderUnavailable, "failed on its side"),
        _ => (ErrorCode::ProviderRejected, "refused the request"),
    };
    let retry_after = retry_after.filter(|_| code.is_retryable());
    let wait = retry_after
        .map(|d| format!("; it asks to wait {} s", d.as_secs()))
        .unwrap_or_default();
    ClassifyError::Provider {
        code,
        message: format!("Imagga {what} at the {step} step (HTTP {status}): {said}{wait}"),
        retry_after,
    }
}

/// A request that got no answer.
fn transport_error(step: &str, e: ureq::Error) -> ClassifyError {
    let timed_out = match &e {
        ureq::Error::Timeout(_) => true,
        ureq::Error::Io(io) => io.kind() == std::io::ErrorKind::TimedOut,
        _ => false,
    };
    let (code, what) = if timed_out {
        (ErrorCode::ProviderTimeout, "did not answer in time")
    } else if matches!(e, ureq::Error::BodyExceedsLimit(_)) {
        (ErrorCode::ProviderProtocol, "sent a body that is too large")
    } else {
        (ErrorCode::ProviderUnavailable, "could not be reached")
    };
    ClassifyError::Provider {
        code,
        message: format!("Imagga {what} at the {step} step: {e}"),
        retry_after: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ImaggaConfig {
        ImaggaConfig {
            url: "http://127.0.0.1:9".into(),
            key: "acc_key".into(),
            secret: Secret::new("very-secret"),
            top_k: 5,
            language: "en".into(),
            threshold: None,
            timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn the_secret_never_shows_in_debug_output() {
        let c = config();
        assert!(!format!("{c:?}").contains("very-secret"));
        let classifier = ImaggaClassifier::new(&c).unwrap();
        let shown = format!("{classifier:?}");
        assert!(!shown.contains("very-secret"), "{shown}");
        let encoded = base64::engine::general_purpose::STANDARD.encode("acc_key:very-secret");
        assert!(!shown.contains(&encoded), "{shown}");
    }

    #[test]
    fn settings_are_checked() {
        let bad = |f: fn(&mut ImaggaConfig)| {
            let mut c = config();
            f(&mut c);
            ImaggaClassifier::new(&c).unwrap_err().to_string()
        };
        assert!(bad(|c| c.url = "ftp://x".into()).contains("https://"));
        assert!(bad(|c| c.url = "https://".into()).contains("no host"));
        assert!(bad(|c| c.secret = Secret::new("")).contains("--imagga-secret"));
        assert!(bad(|c| c.language = "en&x=1".into()).contains("language"));
        assert!(bad(|c| c.threshold = Some(101.0)).contains("threshold"));
    }

    #[test]
    fn statuses_map_to_codes_and_retry_rules() {
        let code = |status, said| match status_error("tags", status, said, None) {
            ClassifyError::Provider { code, .. } => code,
            other => panic!("{other:?}"),
        };
        assert_eq!(code(401, "Unauthorized"), ErrorCode::ProviderAuth);
        assert_eq!(
            code(403, "You have reached your monthly limits"),
            ErrorCode::ProviderQuota
        );
        assert_eq!(code(403, "Forbidden"), ErrorCode::ProviderAuth);
        assert_eq!(
            code(429, "Too many requests"),
            ErrorCode::ProviderRateLimited
        );
        assert_eq!(code(502, ""), ErrorCode::ProviderUnavailable);
        assert_eq!(code(400, "Unsupported image"), ErrorCode::ProviderRejected);
        let e = status_error("tags", 429, "slow down", Some(Duration::from_secs(7)));
        assert_eq!(e.retry_after(), Some(Duration::from_secs(7)));
        // A wait asked with an error that is not retried means nothing.
        let e = status_error("tags", 401, "no", Some(Duration::from_secs(7)));
        assert_eq!(e.retry_after(), None);
    }

    #[test]
    fn nothing_listening_is_a_retryable_network_error() {
        let mut c = ImaggaClassifier::new(&config()).unwrap();
        let e = c.classify(b"\x89PNG").unwrap_err();
        assert_eq!(e.code(), ErrorCode::ProviderUnavailable, "{e}");
        assert!(e.code().is_retryable());
    }

    #[test]
    fn upload_ids_are_encoded_in_paths() {
        assert_eq!(percent_encode_segment("abc-1_2.3~"), "abc-1_2.3~");
        assert_eq!(percent_encode_segment("a/b?c"), "a%2Fb%3Fc");
    }
}
