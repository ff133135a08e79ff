//! The description of the webhook calls for the OpenAPI document's `webhooks` section: the
//! request the deliverer (`imgclass_worker::webhooks`) sends to a job's webhook URL, signed per
//! Standard Webhooks 1.0, and what it makes of the receiver's answer.

use super::views::JobView;

/// The body of a webhook call.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // Only describes the body; `imgclass_worker::webhooks::body` writes it.
pub(super) struct WebhookPayload {
    /// The kind of change.
    #[serde(rename = "type")]
    kind: WebhookEventType,
    /// When the change happened (the job's `updated_at`).
    timestamp: chrono::DateTime<chrono::Utc>,
    /// The job right after the change, as `GET /api/jobs/{id}` shows it.
    data: JobView,
}

/// The type of a webhook call: `job.` and the event the job's webhook was created for.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // Only describes the body.
pub(super) enum WebhookEventType {
    #[serde(rename = "job.running")]
    Running,
    #[serde(rename = "job.succeeded")]
    Succeeded,
    #[serde(rename = "job.failed")]
    Failed,
    #[serde(rename = "job.canceled")]
    Canceled,
}

/// A job changed: the server sends this to the job's webhook URL.
///
/// A job has a webhook when it was submitted with `webhook` (or the server has a default one);
/// the call is made for each change in its `webhook_events` (by default its end: `succeeded`,
/// `failed` or `canceled`). Each call is signed per Standard Webhooks 1.0 with the server's
/// `--webhook-secret`: `webhook-signature` is `v1,` and the base64 HMAC-SHA256 of
/// `{webhook-id}.{webhook-timestamp}.{body}` (the body's exact bytes). Verify it, and refuse a
/// `webhook-timestamp` far from now, before trusting the body. A call may arrive more than once:
/// `webhook-id` stays the same across its attempts. `GET /api/jobs/{id}/deliveries` lists each
/// call and its attempts.
#[utoipa::path(post, path = "job", tag = "jobs", operation_id = "job_webhook",
    params(
        ("webhook-id" = String, Header, description = "The call's id, the same on every attempt of it: use it to drop repeats."),
        ("webhook-timestamp" = String, Header, description = "When this attempt was signed, in whole seconds since the Unix epoch.", pattern = "^[0-9]+$"),
        ("webhook-signature" = String, Header, description = "`v1,` and the base64 HMAC-SHA256 of `{webhook-id}.{webhook-timestamp}.{body}` with the server's webhook secret.", pattern = "^v1,[A-Za-z0-9+/]+=*$"),
    ),
    request_body(content = WebhookPayload, content_type = "application/json"),
    responses(
        (status = "2XX", description = "Delivered: the call is done."),
        (status = 410, description = "Gone: the receiver wants no more attempts of this call."),
        (status = 429, description = "Tried again later: after `Retry-After` when that is longer than the schedule's wait.",
            headers(("Retry-After" = String, description = "Seconds, or an HTTP date."))),
        (status = 503, description = "Tried again later: after `Retry-After` when that is longer than the schedule's wait.",
            headers(("Retry-After" = String, description = "Seconds, or an HTTP date."))),
        (status = "default", description = "Any other answer, or none within the timeout: tried again on the schedule (at once, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h, ..., with jitter) until the server's attempt limit, then given up (`failed`)."),
    ))]
#[allow(dead_code)] // Describes a request the server sends, not a route it serves.
fn job_webhook() {}

/// The `webhooks` section, as a document of its own whose paths are the webhooks.
#[derive(utoipa::OpenApi)]
#[openapi(paths(job_webhook))]
pub(super) struct WebhookDoc;
