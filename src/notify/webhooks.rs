//! Delivers the webhook outbox: signed POSTs (Standard Webhooks), retried
//! with backoff, through the guarded outbound client.
//!
//! Rows are added by the store in the transaction that ends a job or batch;
//! this loop claims due rows, sends them and records each attempt. A
//! deliverer that dies holding a claim lets it go when the claim expires, and
//! the next attempt carries the same `webhook-id`, so receivers de-duplicate.

use crate::telemetry::metrics;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use url::Url;

use super::WebhookSecret;
use crate::domain::{Redactor, Timestamp, TraceContext};
use crate::outbound::Outbound;
use crate::store::{
    ClaimedWebhook, JobStore, StoreError, WebhookAttempt, WebhookOutcome, WebhookOwner,
};
use crate::telemetry::traces::Tracer;
use opentelemetry::KeyValue;
use opentelemetry::trace::SpanKind;

/// Webhooks sent at once; more wait for the next round.
const CONCURRENCY: u32 = 16;
/// Longest sleep without a wake-up: the fallback re-check.
const POLL: Duration = Duration::from_secs(5);
/// Longest delay between two attempts.
const MAX_DELAY: Duration = Duration::from_secs(3600);
/// Bytes of a receiver's answer kept in `last_error`.
const ERROR_BODY_BYTES: usize = 200;

/// How deliveries are retried. Defaults: see `SPOOL_WEBHOOK_*` in `config.rs`.
#[derive(Clone, Debug)]
pub struct DeliverySettings {
    /// Delay after the first failed attempt; each next one is 4× longer,
    /// capped at an hour, with ±10 % jitter.
    pub retry_base: Duration,
    /// Attempts before the delivery is `failed`.
    pub max_attempts: u32,
    /// Time one attempt may take.
    pub timeout: Duration,
}

impl Default for DeliverySettings {
    fn default() -> Self {
        Self {
            retry_base: Duration::from_secs(2),
            max_attempts: 10,
            timeout: Duration::from_secs(10),
        }
    }
}

impl DeliverySettings {
    /// The delay before attempt `attempts + 1`, after `attempts` failed ones.
    pub fn delay_after(&self, attempts: u32) -> Duration {
        let factor = 4u32.saturating_pow(attempts.saturating_sub(1));
        let delay = self.retry_base.saturating_mul(factor).min(MAX_DELAY);
        let jitter = rand::rng().random_range(0.9..=1.1);
        delay.mul_f64(jitter)
    }
}

/// Everything webhook delivery needs; `None` in the engine means webhooks
/// are off (no `SPOOL_WEBHOOK_SECRET`) and `callback_url` is refused.
#[derive(Clone)]
pub struct Webhooks {
    pub outbound: Outbound,
    pub secret: WebhookSecret,
    pub settings: DeliverySettings,
    /// Where delivery spans go.
    pub tracer: Tracer,
}

impl Webhooks {
    /// Checks a submitted `callback_url` where that can be done before any
    /// lookup (scheme, address literals, loopback names).
    pub fn check_url(&self, url: &str) -> Result<(), String> {
        let parsed = Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
        self.outbound.check_url(&parsed).map_err(|e| e.to_string())
    }
}

/// The delivery loop.
pub struct Deliverer {
    pub store: Arc<dyn JobStore>,
    pub webhooks: Webhooks,
    /// Poked when a job with a `callback_url` or a batch ends.
    pub wake: Arc<Notify>,
    /// Masks a job's secret payload values in the body.
    pub redactor: Redactor,
}

impl Deliverer {
    pub async fn run(self, stopping: CancellationToken) {
        // Each delivery runs as a task of its own, up to CONCURRENCY at
        // once, and a free slot is filled as soon as one ends. (Deliveries
        // used to go in rounds awaited as a whole, so one receiver that
        // hung until the timeout held up every other webhook, even those
        // that became due meanwhile: see the API test
        // `a_hanging_receiver_does_not_hold_up_deliveries_to_others`.)
        let this = Arc::new(self);
        let mut in_flight = tokio::task::JoinSet::new();
        loop {
            if stopping.is_cancelled() {
                break;
            }
            while in_flight.try_join_next().is_some() {}
            let free =
                CONCURRENCY.saturating_sub(u32::try_from(in_flight.len()).unwrap_or(u32::MAX));
            let wait = if free == 0 {
                // Full: the next slot frees when a delivery ends.
                POLL
            } else {
                let now = Timestamp::now();
                // The claim outlives the attempt, so it never lapses while one runs.
                let lease_ms =
                    (this.webhooks.settings.timeout + Duration::from_secs(5)).as_millis();
                let lease_until = now.plus_ms(i64::try_from(lease_ms).unwrap_or(i64::MAX));
                match this.store.claim_webhooks(now, free, lease_until).await {
                    Ok(claimed) if !claimed.is_empty() => {
                        for hook in claimed {
                            let deliverer = this.clone();
                            in_flight.spawn(async move { deliverer.deliver(hook).await });
                        }
                        continue;
                    }
                    Ok(_) => {}
                    Err(error) => {
                        tracing::warn!(%error, "claiming webhooks failed");
                    }
                }
                match this.store.next_webhook_due().await {
                    Ok(Some(due)) => {
                        let ms = due.as_millis().saturating_sub(Timestamp::now().as_millis());
                        if ms <= 0 {
                            // Due but held by another deliverer: don't spin.
                            Duration::from_millis(100)
                        } else {
                            Duration::from_millis(ms.min(POLL.as_millis() as i64) as u64)
                        }
                    }
                    Ok(None) | Err(_) => POLL,
                }
            };
            tokio::select! {
                () = stopping.cancelled() => break,
                () = this.wake.notified() => {}
                () = tokio::time::sleep(wait) => {}
                Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
            }
        }
        // Dropping `in_flight` aborts the deliveries still running; their
        // claims lapse (or are let go at the next start) and they are sent
        // again with the same id.
    }

    async fn deliver(&self, hook: ClaimedWebhook) {
        let body = match &hook.body {
            Some(body) => body.clone(),
            None => match self.render(&hook).await {
                Ok(body) => body,
                Err(error) => {
                    // Left claimed: tried again when the claim lapses.
                    tracing::warn!(webhook_id = %hook.id, %error, "rendering a webhook failed");
                    return;
                }
            },
        };
        let at = Timestamp::now();
        let attempt = hook.attempts + 1;
        let stored = self.stored_trace(&hook).await;
        let tracer = &self.webhooks.tracer;
        let mut span = tracer.start(SpanKind::Client, stored.as_ref(), || {
            (
                format!("webhook {}", hook.event),
                vec![
                    KeyValue::new("spool.webhook.id", hook.id.clone()),
                    KeyValue::new("spool.webhook.attempt", i64::from(attempt)),
                ],
            )
        });
        // Sent on only within a trace someone follows: one the submission
        // brought, or one this service exports.
        let onward = (stored.is_some() || tracer.is_exporting()).then(|| span.context().clone());
        let sent = self.send(&hook, &body, at, onward).await;
        if let Err(Failure::Final(error) | Failure::Passing(error)) = &sent {
            span.fail(error.clone());
        }
        drop(span);
        let outcome = match sent {
            Ok(()) => WebhookOutcome::Delivered,
            Err(Failure::Final(error)) => WebhookOutcome::Failed { error },
            Err(Failure::Passing(error)) if attempt >= self.webhooks.settings.max_attempts => {
                WebhookOutcome::Failed {
                    error: format!("{error} (after {attempt} attempts)"),
                }
            }
            Err(Failure::Passing(error)) => {
                let delay = self.webhooks.settings.delay_after(attempt);
                let delay_ms = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
                WebhookOutcome::Retry {
                    error,
                    next_attempt_at: at.plus_ms(delay_ms),
                }
            }
        };
        match &outcome {
            WebhookOutcome::Delivered => {
                metrics::webhook_delivery("delivered");
                tracing::info!(webhook_id = %hook.id, event = %hook.event, attempt, "webhook delivered");
            }
            WebhookOutcome::Retry {
                error,
                next_attempt_at,
            } => {
                metrics::webhook_delivery("retried");
                tracing::info!(webhook_id = %hook.id, event = %hook.event, attempt, %error,
                    retry_in_ms = next_attempt_at.as_millis() - at.as_millis(), "webhook attempt failed");
            }
            WebhookOutcome::Failed { error } => {
                metrics::webhook_delivery("failed");
                tracing::warn!(webhook_id = %hook.id, event = %hook.event, attempt, %error, "webhook delivery failed for good");
            }
        }
        let record = WebhookAttempt {
            id: hook.id.clone(),
            body,
            at,
            outcome,
        };
        if let Err(error) = self.store.record_webhook(record).await {
            // The claim lapses and the webhook is sent again, same id.
            tracing::warn!(webhook_id = %hook.id, %error, "recording a webhook attempt failed");
        }
    }

    /// The body: `{type, timestamp, data}` as Standard Webhooks suggests,
    /// `data` being the job or batch as the API shows it at the first
    /// attempt (every later attempt sends these same bytes).
    async fn render(&self, hook: &ClaimedWebhook) -> Result<String, StoreError> {
        let data = match hook.owner {
            WebhookOwner::Job(id) => match self.store.get_job(&hook.tenant, id).await? {
                Some(job) => serde_json::to_value(self.redactor.shown(job)).unwrap_or(Value::Null),
                None => json!({ "id": id }),
            },
            WebhookOwner::Batch(id) => match self.store.get_batch(&hook.tenant, id).await? {
                Some(batch) => serde_json::to_value(&batch).unwrap_or(Value::Null),
                None => json!({ "id": id }),
            },
        };
        let body = json!({
            "type": hook.event,
            "timestamp": hook.created_at,
            "data": data,
        });
        Ok(body.to_string())
    }

    /// The job's trace context, the parent of each delivery's span. Read
    /// per attempt (a point read): the row keeps only the rendered body,
    /// and deliveries are few.
    async fn stored_trace(&self, hook: &ClaimedWebhook) -> Option<TraceContext> {
        let WebhookOwner::Job(id) = hook.owner else {
            return None;
        };
        match self.store.get_job(&hook.tenant, id).await {
            Ok(Some(job)) => job.trace_context(),
            _ => None,
        }
    }

    async fn send(
        &self,
        hook: &ClaimedWebhook,
        body: &str,
        at: Timestamp,
        trace: Option<TraceContext>,
    ) -> Result<(), Failure> {
        let url = Url::parse(&hook.url).map_err(|e| Failure::Final(format!("bad URL: {e}")))?;
        self.webhooks
            .outbound
            .check_url(&url)
            .map_err(|e| Failure::Final(e.to_string()))?;
        let timestamp_s = at.as_millis() / 1000;
        let signature = self
            .webhooks
            .secret
            .sign(&hook.id, timestamp_s, body.as_bytes());
        let mut request = self
            .webhooks
            .outbound
            .webhook_client()
            .post(url)
            .timeout(self.webhooks.settings.timeout)
            .header("content-type", "application/json")
            .header("webhook-id", &hook.id)
            .header("webhook-timestamp", timestamp_s.to_string())
            .header("webhook-signature", signature);
        if let Some(trace) = trace {
            request = request.header("traceparent", trace.traceparent);
            if let Some(state) = trace.tracestate {
                request = request.header("tracestate", state);
            }
        }
        let response = request
            .body(body.to_owned())
            .send()
            .await
            .map_err(|error| match Outbound::refused(&error) {
                Some(refused) => Failure::Final(refused),
                None if error.is_timeout() => Failure::Passing("timed out".into()),
                None => Failure::Passing(format!("request failed: {}", error_chain(&error))),
            })?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let text = response.text().await.unwrap_or_default();
        let excerpt: String = text.chars().take(ERROR_BODY_BYTES).collect();
        let error = if excerpt.is_empty() {
            format!("HTTP {}", status.as_u16())
        } else {
            format!("HTTP {}: {excerpt}", status.as_u16())
        };
        if status == reqwest::StatusCode::GONE {
            // Standard Webhooks: 410 means the receiver wants no more.
            return Err(Failure::Final(error));
        }
        Err(Failure::Passing(error))
    }
}

enum Failure {
    /// Trying again may help.
    Passing(String),
    /// It cannot: the delivery fails now.
    Final(String),
}

/// The error and its causes on one line (reqwest's own message is terse).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_fourfold_from_the_base_and_stop_at_an_hour() {
        let settings = DeliverySettings {
            retry_base: Duration::from_secs(2),
            ..DeliverySettings::default()
        };
        let within = |d: Duration, s: f64| (d.as_secs_f64() - s).abs() <= s * 0.1 + 1e-9;
        assert!(within(settings.delay_after(1), 2.0));
        assert!(within(settings.delay_after(2), 8.0));
        assert!(within(settings.delay_after(3), 32.0));
        assert!(within(settings.delay_after(9), 3600.0));
        assert!(within(settings.delay_after(40), 3600.0));
    }
}
