//! The plain (non-file) fields of a submission — `priority`, `cache`, `webhook`,
//! `webhook_events` — as multipart fields or the query of a raw image body, and their checks.
//! Values are read as `params` reads them: `cache` in any of the usual boolean spellings, event
//! names in any case, surrounding white space ignored.

use super::params;
use crate::error::ApiError;
use crate::AppState;
use imgclass_core::{ErrorCode, EventKind};
use imgclass_store::Webhook;

/// The plain (non-file) fields of a submission.
#[derive(Debug)]
pub(super) struct SubmitFields {
    /// Higher runs first among due jobs.
    pub(super) priority: i32,
    /// Whether an earlier result for the same image may answer (the result cache).
    pub(super) cache: bool,
    /// The URL to call when the jobs change.
    pub(super) webhook: Option<String>,
    /// Which changes to call it for (`None`: the jobs' end).
    pub(super) webhook_events: Option<Vec<EventKind>>,
    /// The model that classifies the images (`None`: the server's default model).
    pub(super) model: Option<String>,
}

/// The range of `priority`.
const PRIORITIES: std::ops::RangeInclusive<i32> = -1000..=1000;

fn invalid_webhook(message: impl Into<String>) -> ApiError {
    ApiError::from_code(ErrorCode::InvalidWebhook, message)
}

impl Default for SubmitFields {
    fn default() -> Self {
        SubmitFields {
            priority: 0,
            cache: true,
            webhook: None,
            webhook_events: None,
            model: None,
        }
    }
}

impl SubmitFields {
    /// The plain fields a submission reads (multipart fields, or the query of a raw body).
    pub(super) const NAMES: [&'static str; 5] =
        ["priority", "webhook", "webhook_events", "cache", "model"];

    /// Takes a plain field; the reader refuses unknown ones.
    pub(super) fn take(&mut self, name: &str, text: &str) -> Result<(), ApiError> {
        match name {
            "model" => self.model = Some(model_name(text)?),
            "webhook" => self.webhook = Some(text.trim().to_string()),
            "webhook_events" => {
                let events = self.webhook_events.get_or_insert_with(Vec::new);
                for name in text.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                    let event = params::enumerated(name, str::parse::<EventKind>)
                        .ok()
                        .filter(|e| Webhook::EVENTS.contains(e))
                        .ok_or_else(|| {
                            invalid_webhook(format!(
                                "webhook_events are any of running, succeeded, failed, canceled; \
                                 not {:?}",
                                params::shown(name)
                            ))
                        })?;
                    if !events.contains(&event) {
                        events.push(event);
                    }
                }
            }
            "cache" => {
                self.cache = params::boolean(text).ok_or_else(|| {
                    ApiError::from_code(
                        ErrorCode::BadRequest,
                        format!(
                            "cache is {}; not {:?}",
                            params::BOOLEANS,
                            params::shown(text)
                        ),
                    )
                })?;
            }
            "priority" => {
                self.priority = params::whole_number(text, PRIORITIES).ok_or_else(|| {
                    ApiError::from_code(
                        ErrorCode::BadRequest,
                        format!(
                            "priority must be a whole number from {} to {}, not {:?}",
                            PRIORITIES.start(),
                            PRIORITIES.end(),
                            params::shown(text)
                        ),
                    )
                })?;
            }
            _ => {}
        }
        Ok(())
    }

    /// The jobs' webhook: the one given (or the server's default), checked.
    pub(super) async fn webhook(&self, state: &AppState) -> Result<Option<Webhook>, ApiError> {
        let config = state.webhooks.as_deref();
        let url = self
            .webhook
            .clone()
            .filter(|u| !u.is_empty())
            .or_else(|| config.and_then(|c| c.default_url.clone()));
        let Some(url) = url else {
            if self.webhook_events.is_some() {
                return Err(invalid_webhook(
                    "webhook_events were given without a webhook",
                ));
            }
            return Ok(None);
        };
        let Some(config) = config else {
            return Err(invalid_webhook(
                "this server sends no webhooks (it runs without --webhook-secret)",
            ));
        };
        let url = imgclass_worker::ssrf::check_url(&url, config.allow_private)
            .await
            .map_err(invalid_webhook)?;
        let events = match &self.webhook_events {
            Some(e) if e.is_empty() => {
                return Err(invalid_webhook("webhook_events names no event"));
            }
            Some(e) => e.clone(),
            None => Webhook::DEFAULT_EVENTS.to_vec(),
        };
        Ok(Some(Webhook {
            url: url.to_string(),
            events,
        }))
    }
}

/// A model's name as a submission gives it: 1 to 64 letters, digits, `.`, `_` or `-`.
fn model_name(text: &str) -> Result<String, ApiError> {
    let name = text.trim();
    let valid = (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if valid {
        Ok(name.to_string())
    } else {
        Err(ApiError::from_code(
            ErrorCode::UnknownModel,
            format!(
                "model is a model's name (1 to 64 letters, digits, '.', '_' or '-'); not {:?}",
                params::shown(text)
            ),
        ))
    }
}
