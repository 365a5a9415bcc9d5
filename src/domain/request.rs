//! What a client asks of the store besides submitting: the fingerprint of
//! an idempotent request, the response it replays, and the filters of a
//! job list.

use serde_json::Value;

use super::{BatchId, JobId, JobState};

/// A remembered `Idempotency-Key`: the request's fingerprint.
#[derive(Clone, Debug)]
pub struct IdempotencyKey {
    pub key: String,
    /// SHA-256 of the canonical request, hex.
    pub request_hash: String,
}

/// The response a submission produced, as remembered for idempotent replay.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredResponse {
    pub status: u16,
    pub body: Value,
}

/// Filters of `GET /v1/jobs`; `cursor` is the last id of the previous page.
#[derive(Clone, Debug, Default)]
pub struct JobFilter {
    pub queue: Option<String>,
    pub status: Option<JobState>,
    pub kind: Option<String>,
    pub key: Option<String>,
    pub metadata: Vec<(String, String)>,
    pub batch_id: Option<BatchId>,
    pub before: Option<JobId>,
    pub limit: u32,
}
