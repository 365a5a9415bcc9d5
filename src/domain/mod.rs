//! Plain types of the job service: jobs, batches, specs, states, queues,
//! schedules, keys and roles. No HTTP, no SQL.

mod access;
mod batch;
mod cadence;
mod job;
mod limit;
mod queue;
mod request;
mod schedule;
mod spec;
mod tenant;
mod time;
mod trace;
mod webhook;

pub use access::{
    ApiKey, Caller, KeyHash, KeyId, KeySource, KeySpec, Role, StoredKey, valid_tenant,
};
pub use batch::{
    Batch, BatchCounts, BatchId, BatchResult, BatchRetryPolicy, BatchRetryRequest, BatchRetryScope,
    BatchSpec, BatchStatus, MAX_BATCH_RETRIES, NewBatch, check_callback_url, success_required,
};
pub use cadence::{CatchUp, Due, LATE_AFTER_MS, MAX_FIRES_PER_PASS, Plan, Timing};
pub use job::{ErrorInfo, Job, JobId, JobState, Progress, Redactor, TENANT_DEFAULT, WaitingReason};
pub use limit::{
    Budget, Gcra, KeyState, LimitKey, RateLimit, RateLimitKeyState, RateLimitRef,
    RateLimitSettings, from_micros_ceil, micros,
};
pub use queue::{
    Backoff, Concurrency, ConcurrencyRange, QueueConfig, QueueCounts, QueueDefaults,
    QueueDefaultsPatch, QueueInfo, QueueSettings,
};
pub use request::{IdempotencyKey, JobFilter, StoredResponse};
pub use schedule::{
    DEFAULT_CATCH_UP_WINDOW_MS, FIRES_KEPT, FireOutcome, NEXT_FIRE_TIMES, Overlap, Schedule,
    ScheduleConfig, ScheduleFire, ScheduleSpec, fire_key,
};
pub use spec::{
    DependencyRef, FieldError, JobSpec, MAX_CONCURRENCY_LIMIT, MAX_DEPENDENCIES, NewJob,
    OnConflict, SpecContext, escape_pointer, job_pointer, valid_metadata_key,
};
pub use tenant::{
    MAX_PENDING_LIMIT, MAX_SUBMIT_BURST, MAX_SUBMIT_RATE, TenantConfig, TenantInfo, TenantSettings,
};
pub use time::Timestamp;
pub use trace::TraceContext;
pub use webhook::{DeliveryStatus, WebhookDelivery};
