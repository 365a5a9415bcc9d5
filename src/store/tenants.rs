//! Tenants' quotas in the store, shared by both backends: the row, its
//! reading SQL, and the verdict on `max_pending` (the writes and the counts
//! are each backend's own).

use crate::domain::{TenantConfig, TenantSettings, Timestamp};
use crate::store::{StoreError, StoredResponse, SubmitRejection};

pub const SELECT_TENANTS: &str = "SELECT name, max_pending, submit_rate, submit_burst, updated_at \
    FROM tenants ORDER BY name";

#[derive(sqlx::FromRow)]
pub struct TenantRow {
    name: String,
    max_pending: Option<i64>,
    submit_rate: Option<f64>,
    submit_burst: Option<i64>,
    updated_at: i64,
}

impl From<TenantRow> for TenantConfig {
    fn from(row: TenantRow) -> Self {
        TenantConfig {
            name: row.name,
            settings: TenantSettings {
                max_pending: row.max_pending.map(|n| n.max(0) as u64),
                submit_rate: row.submit_rate,
                submit_burst: row
                    .submit_burst
                    .map(|n| n.clamp(1, i64::from(u32::MAX)) as u32),
            },
            updated_at: Timestamp::from_millis(row.updated_at),
        }
    }
}

/// The columns of an upsert: name, max_pending, submit_rate, submit_burst,
/// updated_at.
pub fn upsert_values(tenant: &TenantConfig) -> (&str, Option<i64>, Option<f64>, Option<i64>, i64) {
    let settings = &tenant.settings;
    (
        &tenant.name,
        settings.max_pending.map(|n| n.min(i64::MAX as u64) as i64),
        settings.submit_rate,
        settings.submit_burst.map(i64::from),
        tenant.updated_at.as_millis(),
    )
}

/// `None` when `requested` more jobs fit under the tenant's `max_pending`
/// (or it has none) with `pending` waiting.
pub fn quota_rejection(
    tenant: &str,
    max_pending: Option<i64>,
    pending: i64,
    requested: u64,
) -> Option<SubmitRejection> {
    let max_pending = max_pending?.max(0) as u64;
    let pending = pending.max(0) as u64;
    (pending + requested > max_pending).then(|| SubmitRejection::TenantQuota {
        tenant: tenant.to_owned(),
        max_pending,
        pending,
        requested,
    })
}

/// A remembered idempotent response as stored: `(request_hash, status,
/// body)`, the body JSON text.
pub fn remembered_response(
    (hash, status, body): (String, i64, String),
) -> Result<(String, StoredResponse), StoreError> {
    let body = serde_json::from_str(&body)
        .map_err(|e| StoreError::Corrupt(format!("idempotency body: {e}")))?;
    let status = u16::try_from(status)
        .map_err(|_| StoreError::Corrupt(format!("idempotency status {status}")))?;
    Ok((hash, StoredResponse { status, body }))
}
