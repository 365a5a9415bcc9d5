//! Telling clients what happened: the in-process event stream behind
//! `GET /v1/events` and long-polls, and signed webhooks.

mod events;
mod recent;
mod signing;
mod webhooks;

pub use events::{
    BatchSummary, Event, EventHub, EventKind, JobSummary, Resume, Subject, job_summary,
};
pub use signing::WebhookSecret;
pub use webhooks::{Deliverer, DeliverySettings, Webhooks};
