//! Webhooks: the deliverer, a background task that any node runs beside its workers. It claims
//! due deliveries from the store's outbox under a lease, sends each one signed per Standard
//! Webhooks 1.0 (`webhook-id`, `webhook-timestamp`,
//! `webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">`), and records the
//! outcome: delivered on 2xx, stopped on `410 Gone`, otherwise tried again on the schedule
//! (immediately, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h, … with jitter; a `429`/`503`'s
//! `Retry-After` is waited out when longer) until `max_attempts`, as `imgclass_core::policy::delivery` decides.
//!
//! The deliverer shares nothing with the job workers but the database: a slow or dead receiver
//! holds only its own delivery (each has a timeout and runs on its own task) and never a job.
//!
//! Every call goes through the SSRF guard ([`crate::ssrf`]). A delivery's body carries the job
//! as the view the deliverer is started with (the API's, so that a webhook shows the job as
//! `GET /api/jobs/{id}` does).

use crate::ssrf::{forbidden, GuardedResolver};
use base64::Engine;
use chrono::Utc;
use hmac::{Hmac, Mac};
use imgclass_core::policy::{self, DeliveryDecision, DeliveryRules};
use imgclass_store::{Delivery, DeliveryAttempt, DeliveryNext, Job, Store};
use rand::Rng;
use reqwest::Url;
use serde::Serialize;
use sha2::Sha256;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify, Semaphore};
use tokio::task::JoinHandle;

/// The signing secret (`whsec_` + base64 of the key); `Debug` shows `***`.
#[derive(Clone)]
pub struct WebhookSecret(Vec<u8>);

impl WebhookSecret {
    pub fn parse(s: &str) -> Result<Self, String> {
        let b64 = s.trim().strip_prefix("whsec_").ok_or_else(|| {
            "a webhook secret is whsec_ followed by base64 (e.g. from: echo whsec_$(head -c 32 /dev/urandom | base64))".to_string()
        })?;
        let key = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| format!("the webhook secret after whsec_ is not base64: {e}"))?;
        if key.len() < 24 || key.len() > 64 {
            return Err("a webhook secret's key is 24 to 64 bytes".into());
        }
        Ok(WebhookSecret(key))
    }

    /// `v1,<base64 HMAC-SHA256 of "id.timestamp.body">`.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!(
            "v1,{}",
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
        )
    }
}

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Webhook settings (from the command line).
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    pub secret: WebhookSecret,
    /// Call loopback, private and link-local addresses too (tests, on-premises receivers).
    pub allow_private: bool,
    /// Attempts per delivery, the first included.
    pub max_attempts: u32,
    /// The schedule's waits are multiplied by this (tests run it scaled down).
    pub schedule_scale: f64,
    /// Each attempt's whole time.
    pub timeout: Duration,
    /// The webhook of jobs whose submission names none.
    pub default_url: Option<String>,
    /// How long a claimed delivery is this node's (longer than `timeout`).
    pub lease: Duration,
    /// Deliveries in flight at once on this node.
    pub concurrency: usize,
    /// The slowest the outbox is looked at when nothing wakes the deliverer.
    pub poll_interval: Duration,
    /// A name for this node in leases and logs.
    pub node: String,
}

impl WebhookConfig {
    pub fn new(secret: WebhookSecret) -> Self {
        WebhookConfig {
            secret,
            allow_private: false,
            max_attempts: 8,
            schedule_scale: 1.0,
            timeout: Duration::from_secs(10),
            default_url: None,
            lease: Duration::from_secs(60),
            concurrency: 16,
            poll_interval: Duration::from_secs(5),
            node: format!("node-{}", std::process::id()),
        }
    }

    /// The rules of deliveries as configured.
    pub fn rules(&self) -> DeliveryRules {
        DeliveryRules {
            max_attempts: self.max_attempts,
            schedule_scale: self.schedule_scale,
        }
    }
}

/// The client every delivery of this node goes through.
fn client(config: &WebhookConfig) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .timeout(config.timeout)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .dns_resolver(Arc::new(GuardedResolver {
            allow_private: config.allow_private,
        }))
        .user_agent(concat!("imgclass-webhooks/", env!("CARGO_PKG_VERSION")))
        .build()?)
}

/// A delivery's body (serialized as is, so that numbers read exactly as in the API).
#[derive(Serialize)]
struct Payload<V> {
    /// `job.running`, `job.succeeded`, `job.failed` or `job.canceled`.
    #[serde(rename = "type")]
    kind: String,
    /// When the change happened.
    timestamp: chrono::DateTime<Utc>,
    data: V,
}

/// The body of a delivery: the job as the view `V` shows it (the API's view, as
/// `GET /api/jobs/{id}` shows it) and the event type.
pub fn body<V: Serialize + From<Job>>(delivery: &Delivery) -> Vec<u8> {
    let payload = Payload {
        kind: format!("job.{}", delivery.event.as_str()),
        timestamp: delivery.job.updated_at,
        data: V::from(delivery.job.clone()),
    };
    serde_json::to_vec(&payload).unwrap_or_default()
}

/// The running deliverer of this node.
pub struct Deliverer {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Deliverer {
    /// Starts delivering; each body shows the job as the view `V` does (see [`body`]).
    pub fn start<V: Serialize + From<Job> + 'static>(
        store: Arc<dyn Store>,
        config: WebhookConfig,
    ) -> anyhow::Result<Deliverer> {
        let client = client(&config)?;
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(run::<V>(store, Arc::new(config), client, stop_rx));
        Ok(Deliverer { stop, task })
    }

    /// Stops claiming; deliveries in flight are dropped (their leases expire and another node,
    /// or the next start, sends them again with the same id).
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

async fn run<V: Serialize + From<Job> + 'static>(
    store: Arc<dyn Store>,
    config: Arc<WebhookConfig>,
    client: reqwest::Client,
    mut stop: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(config.concurrency.max(1)));
    let done = Arc::new(Notify::new());
    let mut events = store.subscribe();
    let mut in_flight = tokio::task::JoinSet::new();
    while !*stop.borrow() {
        let free = permits.available_permits();
        let mut claimed_all = false;
        if free > 0 {
            match store
                .claim_deliveries(&config.node, free, config.lease)
                .await
            {
                Ok(batch) => {
                    claimed_all = batch.len() == free;
                    for delivery in batch {
                        let Ok(permit) = permits.clone().acquire_owned().await else {
                            return;
                        };
                        let (store, config, client, done) =
                            (store.clone(), config.clone(), client.clone(), done.clone());
                        in_flight.spawn(async move {
                            deliver::<V>(&*store, &config, &client, delivery).await;
                            drop(permit);
                            done.notify_one();
                        });
                    }
                }
                Err(e) => tracing::warn!(error = %e, "claiming webhook deliveries failed"),
            }
        }
        while in_flight.try_join_next().is_some() {}
        if claimed_all {
            continue;
        }
        let wait = match store.next_delivery_due().await {
            Ok(Some(due)) => (due - Utc::now())
                .to_std()
                .unwrap_or(Duration::ZERO)
                .clamp(Duration::from_millis(5), config.poll_interval),
            _ => config.poll_interval,
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            // A job changed (possibly with a delivery), on this node or another.
            _ = events.recv() => {}
            _ = done.notified() => {}
            _ = stop.wait_for(|s| *s) => {}
        }
    }
    in_flight.abort_all();
}

/// One attempt of one delivery, and its outcome recorded.
async fn deliver<V: Serialize + From<Job>>(
    store: &dyn Store,
    config: &WebhookConfig,
    client: &reqwest::Client,
    delivery: Delivery,
) {
    let body = body::<V>(&delivery);
    let started = Instant::now();
    let at = Utc::now();
    let timestamp = at.timestamp();
    let signature = config.secret.sign(&delivery.id, timestamp, &body);
    let sent = send(client, config, &delivery, timestamp, &signature, body).await;
    let attempt_no = delivery.attempts + 1;
    let (status_code, error, retry_after) = match sent {
        Ok((status, retry_after)) => (Some(status), None, retry_after),
        Err(e) => (None, Some(e), None),
    };
    let jitter = rand::rng().random_range(0.9..=1.1);
    let next = match policy::delivery(
        &config.rules(),
        attempt_no,
        status_code,
        retry_after,
        jitter,
    ) {
        DeliveryDecision::Delivered => DeliveryNext::Delivered,
        DeliveryDecision::Gone => DeliveryNext::Gone,
        DeliveryDecision::GiveUp => DeliveryNext::GiveUp,
        DeliveryDecision::RetryIn(wait) => {
            DeliveryNext::RetryAt(Utc::now() + chrono::Duration::from_std(wait).unwrap_or_default())
        }
    };
    let attempt = DeliveryAttempt {
        at,
        status_code,
        error: error.clone(),
        duration_ms: started.elapsed().as_millis() as u64,
    };
    match next {
        DeliveryNext::Delivered => {
            tracing::info!(webhook.id = %delivery.id, job.id = %delivery.job_id, attempt = attempt_no, "webhook delivered")
        }
        _ => {
            tracing::warn!(webhook.id = %delivery.id, job.id = %delivery.job_id, attempt = attempt_no, status = ?status_code, error = ?error, next = ?next, "webhook not delivered")
        }
    }
    match store.finish_delivery(&delivery, attempt, next).await {
        Ok(true) => {}
        Ok(false) => {
            tracing::warn!(webhook.id = %delivery.id, "webhook delivery lease lost; the outcome was not recorded")
        }
        Err(e) => {
            tracing::warn!(webhook.id = %delivery.id, error = %e, "could not record a webhook attempt; it will be sent again")
        }
    }
}

/// Sends one attempt: the status and the `Retry-After` of a 429/503, or why there was no answer.
async fn send(
    client: &reqwest::Client,
    config: &WebhookConfig,
    delivery: &Delivery,
    timestamp: i64,
    signature: &str,
    body: Vec<u8>,
) -> Result<(u16, Option<Duration>), String> {
    let url = Url::parse(&delivery.url).map_err(|e| format!("not a URL: {e}"))?;
    // IP literals never reach the resolver: checked here.
    if !config.allow_private {
        let literal = url
            .host_str()
            .map(|h| h.trim_start_matches('[').trim_end_matches(']'))
            .and_then(|h| h.parse::<IpAddr>().ok());
        if let Some(why) = literal.and_then(forbidden) {
            return Err(format!("refused: the address is {why}"));
        }
    }
    let response = client
        .post(url)
        .header("content-type", "application/json")
        .header("webhook-id", &delivery.id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(body)
        .send()
        .await
        .map_err(describe)?;
    let status = response.status().as_u16();
    let retry_after = if status == 429 || status == 503 {
        response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| imgclass_core::retry_after::parse(v, std::time::SystemTime::now()))
    } else {
        None
    };
    Ok((status, retry_after))
}

/// A failed request in a few words, with its cause (a refused address, a timeout, …).
fn describe(e: reqwest::Error) -> String {
    let what = if e.is_timeout() {
        "no answer within the timeout"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "the request failed"
    };
    let mut causes = Vec::new();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        causes.push(s.to_string());
        source = s.source();
    }
    causes.dedup();
    if causes.is_empty() {
        what.to_string()
    } else {
        format!("{what}: {}", causes.join(": "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_parse_and_sign_per_the_spec() {
        assert!(WebhookSecret::parse("abc").is_err());
        assert!(WebhookSecret::parse("whsec_???").is_err());
        // The Standard Webhooks specification's example.
        let s = WebhookSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let sig = s.sign(
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        assert_eq!(format!("{s:?}"), "***");
    }
}
