//! Webhook deliveries as jobs and batches show them.

use serde::Serialize;
use utoipa::ToSchema;

use super::Timestamp;

/// Where a webhook delivery stands.
///
/// `pending` → `delivered` (a 2xx answer) or → `failed` (attempts exhausted,
/// a `410 Gone`, or a destination the outbound rules refuse).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStatus {
    Pending,
    Delivered,
    Failed,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "pending" => DeliveryStatus::Pending,
            "delivered" => DeliveryStatus::Delivered,
            "failed" => DeliveryStatus::Failed,
            _ => return None,
        })
    }
}

/// The latest webhook of a job or batch and how its delivery went.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct WebhookDelivery {
    /// The `webhook-id` header: the same on every attempt, for de-duplication.
    pub id: String,
    /// The event delivered, e.g. `job.succeeded` or `batch.finished`.
    pub event: String,
    pub status: DeliveryStatus,
    /// Attempts made so far.
    pub attempts: u32,
    /// Why the last attempt failed (an HTTP status or a network error).
    pub last_error: Option<String>,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_attempt_at: Option<Timestamp>,
    /// When the next attempt is due (`pending` only).
    #[schema(value_type = Option<String>, format = DateTime)]
    pub next_attempt_at: Option<Timestamp>,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub delivered_at: Option<Timestamp>,
}
