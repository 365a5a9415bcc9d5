//! Quotas at the door of `POST /v1/jobs` and `POST /v1/batches`: the rate
//! of the caller's key (`submit_rate`, `submit_burst`), and the quota
//! headers of draft-ietf-httpapi-ratelimit-headers on the answer.
//!
//! The rate is taken before the submission is validated or stored: every
//! request of a key counts, admitted or not, and a refused one costs the
//! store nothing. A request with an `Idempotency-Key` that repeats an
//! accepted one is still replayed when refused (one read of its key).
//! `max_pending` is the store's (see `engine/tenants.rs`): its refusal
//! comes back as `EngineError::TenantQuota` with headers of its own.

use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::Response;

use super::AppState;
use super::error::{ApiError, RATELIMIT, RATELIMIT_POLICY};
use super::idempotency::replayed;
use crate::access::{Rate, RateDecision};
use crate::domain::Caller;
use crate::domain::IdempotencyKey;

/// What the rate said of a submission.
pub(super) enum RateGate {
    /// Go on; with the decision when the key has a rate.
    Open(Option<RateDecision>),
    /// Refused, but it repeats an accepted request: its original answer.
    Replayed(Response),
}

/// Takes a token per job of the request from the caller's key, or refuses
/// the whole request (429 `rate_limited`; 413 when it holds more jobs than
/// the burst, which no wait helps). Open mode (no key) has no rate.
pub(super) async fn take_rate(
    state: &AppState,
    caller: &Caller,
    jobs: usize,
    idempotency: Option<&IdempotencyKey>,
    collection: &str,
) -> Result<RateGate, ApiError> {
    let Some(key) = caller.key_id else {
        return Ok(RateGate::Open(None));
    };
    let Some((per_second, burst)) = state.engine.tenant_settings(&caller.tenant).rate() else {
        return Ok(RateGate::Open(None));
    };
    let rate = Rate { per_second, burst };
    let decision = state.limiter.take(key, &caller.tenant, rate, jobs as u64);
    if decision.allowed {
        return Ok(RateGate::Open(Some(decision)));
    }
    if let Some(idempotency) = idempotency
        && let Some((hash, stored)) = state
            .engine
            .remembered_response(&caller.tenant, &idempotency.key)
            .await?
        && hash == idempotency.request_hash
    {
        return Ok(RateGate::Replayed(replayed(&stored, collection)));
    }
    Err(refusal(&decision, jobs))
}

fn refusal(decision: &RateDecision, jobs: usize) -> ApiError {
    let Rate { per_second, burst } = decision.rate;
    let error = if decision.too_large {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!(
                "this request holds {jobs} jobs, more than this key's submit_burst ({burst}) \
                 lets in at once; split it"
            ),
        )
    } else {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!(
                "this key may submit {per_second} jobs per second, in bursts of at most \
                 {burst}; {} more may go now, this request holds {jobs}",
                decision.remaining
            ),
        )
        .with_retry_after(decision.reset_s)
    };
    with_rate_headers(error, Some(decision))
}

/// `RateLimit-Policy` and `RateLimit` for a key's rate.
fn rate_headers(decision: &RateDecision) -> (String, String) {
    (
        format!(
            "\"submit\";q={};w={}",
            decision.rate.burst,
            decision.rate.window_s()
        ),
        format!("\"submit\";r={};t={}", decision.remaining, decision.reset_s),
    )
}

/// An error with the key's rate headers beside its own.
pub(super) fn with_rate_headers(error: ApiError, decision: Option<&RateDecision>) -> ApiError {
    match decision {
        Some(decision) => {
            let (policy, state) = rate_headers(decision);
            error.with_rate_limit(policy, state)
        }
        None => error,
    }
}

/// An answer with the key's rate headers.
pub(super) fn add_rate_headers(response: &mut Response, decision: Option<&RateDecision>) {
    let Some(decision) = decision else { return };
    let (policy, state) = rate_headers(decision);
    for (name, value) in [(RATELIMIT_POLICY, policy), (RATELIMIT, state)] {
        if let Ok(value) = HeaderValue::from_str(&value) {
            response
                .headers_mut()
                .append(HeaderName::from_static(name), value);
        }
    }
}
