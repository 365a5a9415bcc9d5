//! API tests: the real router on port 0, or the real binary where a test
//! kills it. One binary, so the crate links once.

mod access;
mod access_processes;
mod adaptive;
mod batch_retry;
mod batch_window;
mod batches;
mod cli;
mod cluster;
mod concurrency_keys;
mod config;
mod connections;
mod cors;
mod custom_kinds;
mod dashboard;
mod durability;
mod events;
mod exec;
mod helpers;
mod hostile;
mod jobs;
mod keys;
mod lists;
mod logs;
mod metrics;
mod openapi;
mod outage;
mod outbound;
mod pipelines;
mod queues;

mod quotas;
mod rate_limits;
mod schedules;
mod secrets;
mod shared;
mod shared_events;
mod shutdown;
mod tenancy;
mod traces;
mod webhooks;
