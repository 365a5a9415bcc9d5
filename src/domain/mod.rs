//! Plain types of the job service: jobs, specs, states, queues. No HTTP, no SQL.

mod job;
mod queue;
mod spec;
mod time;

pub use job::{ErrorInfo, Job, JobId, JobState, Progress, TENANT_DEFAULT};
pub use queue::{
    Backoff, QueueConfig, QueueCounts, QueueDefaults, QueueDefaultsPatch, QueueInfo, QueueSettings,
};
pub use spec::{FieldError, JobSpec, NewJob, OnConflict, escape_pointer, valid_metadata_key};
pub use time::Timestamp;
