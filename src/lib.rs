//! Spool: an HTTP job-submission service, usable as a binary or a library.
//!
//! Map of the modules, from the outside in:
//!
//! - [`app`]: assembles store, engine and router; runs until a signal.
//! - [`access`]: API keys, the keyring that checks them, open mode.
//! - [`config`]: flags, `SPOOL_*` environment variables and the TOML file.
//! - [`http`]: routes, extractors, the problem+json error type, OpenAPI.
//! - [`engine`]: admission, dispatch to the worker pool, leases, retries,
//!   cancellation, rate limits, schedules and their firing loop, expiry,
//!   shutdown; one file per use case.
//! - [`kinds`]: the [`kinds::JobKind`] trait and the built-in kinds.
//! - [`notify`]: job lifecycle events.
//! - [`outbound`]: which destinations outbound requests may reach (the
//!   private-address rule and `SPOOL_OUTBOUND_ALLOW`).
//! - [`store`]: the [`store::JobStore`] trait, the rules of every transition
//!   written once above the backends (`store/plan/`), and its SQLite
//!   (embedded) and PostgreSQL (shared) backends.
//! - [`domain`]: plain types (jobs, batches, specs, states, queues, rate
//!   limits and their algorithm, schedules and their cadences): no HTTP, no SQL.
//! - [`bench`]: the `spool bench` load generator.
//! - [`cli`]: the binary's command line ([`cli::Cli`]: serve, `openapi`,
//!   `bench`) and its client of a running service (`spool job|batch|queue|events`).
//! - [`telemetry`]: logging set-up, the Prometheus metrics every layer records,
//!   and the spans of requests and attempts (OTLP export).
//!
//! Dependencies between modules go one way: at every level of the tree, no
//! module depends (even through others) on a sibling that depends on it.
//! A test (`layering.rs`) reads the sources and fails on a cycle.
//!
//! A custom kind is a type implementing [`kinds::JobKind`], registered with
//! [`app::App::builder`]`(config).kind(MyKind)`; see the crate
//! `examples/custom-kind` (`cargo run -p spool-example-custom-kind`).

pub mod access;
pub mod app;
pub mod bench;
pub mod cli;
pub mod config;
pub mod domain;
pub mod engine;
pub mod http;
pub mod kinds;
pub mod notify;
pub mod outbound;
pub mod store;
pub mod telemetry;

/// The version and the commit this binary was built from.
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("SPOOL_COMMIT"), ")");

#[cfg(test)]
mod layering;
