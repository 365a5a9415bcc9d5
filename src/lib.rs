//! Spool: an HTTP job-submission service, usable as a binary or a library.
//!
//! Map of the modules, from the outside in:
//!
//! - [`app`]: assembles store, engine and router; runs until a signal.
//! - [`access`]: API keys, the keyring that checks them, open mode.
//! - [`config`]: flags, `SPOOL_*` environment variables and the TOML file.
//! - [`http`]: routes, extractors, the problem+json error type, OpenAPI.
//! - [`engine`]: admission, dispatch to the worker pool, leases, retries,
//!   cancellation, shutdown.
//! - [`kinds`]: the [`kinds::JobKind`] trait and the built-in kinds.
//! - [`notify`]: job lifecycle events.
//! - [`outbound`]: which destinations outbound requests may reach (the
//!   private-address rule and `SPOOL_OUTBOUND_ALLOW`).
//! - [`store`]: the [`store::JobStore`] trait and its SQLite and PostgreSQL backends.
//! - [`domain`]: plain types (jobs, batches, specs, states, queues): no HTTP, no SQL.
//! - [`bench`]: the `spool bench` load generator.
//! - [`cli`]: the binary's command line ([`cli::Cli`]: serve, `openapi`,
//!   `bench`) and its client of a running service (`spool job|batch|queue|events`).
//! - [`telemetry`]: logging set-up, the Prometheus metrics every layer records,
//!   and the spans of requests and attempts (OTLP export).
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
mod layering {
    //! The map above holds in the code: no top-level module depends, even
    //! through others, on one that depends on it.

    use std::collections::{BTreeMap, BTreeSet};
    use std::path::Path;

    /// Top-level module → the top-level modules its non-test code names.
    fn dependencies() -> BTreeMap<String, BTreeSet<String>> {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut found: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut pending = vec![src.clone()];
        while let Some(dir) = pending.pop() {
            for entry in std::fs::read_dir(&dir).expect("src/ reads").flatten() {
                let path = entry.path();
                if path.is_dir() {
                    pending.push(path);
                    continue;
                }
                let relative = path.strip_prefix(&src).expect("under src/");
                let top = relative
                    .components()
                    .next()
                    .and_then(|c| c.as_os_str().to_str())
                    .unwrap_or_default()
                    .trim_end_matches(".rs")
                    .to_owned();
                if path.extension().is_none_or(|e| e != "rs") || top == "lib" || top == "main" {
                    continue;
                }
                let text = std::fs::read_to_string(&path).expect("a source file");
                let code = text.split("#[cfg(test)]").next().unwrap_or_default();
                let named = found.entry(top.clone()).or_default();
                for (at, _) in code.match_indices("crate::") {
                    let name: String = code[at + "crate::".len()..]
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    if name != top {
                        named.insert(name);
                    }
                }
            }
        }
        let modules: BTreeSet<String> = found.keys().cloned().collect();
        for named in found.values_mut() {
            named.retain(|name| modules.contains(name));
        }
        found
    }

    /// Whether `to` is reachable from `from`.
    fn reaches(graph: &BTreeMap<String, BTreeSet<String>>, from: &str, to: &str) -> bool {
        let mut seen = BTreeSet::new();
        let mut pending = vec![from.to_owned()];
        while let Some(module) = pending.pop() {
            for next in graph.get(&module).into_iter().flatten() {
                if next == to {
                    return true;
                }
                if seen.insert(next.clone()) {
                    pending.push(next.clone());
                }
            }
        }
        false
    }

    #[test]
    fn no_top_level_module_depends_on_one_that_depends_on_it() {
        let graph = dependencies();
        assert!(graph.len() > 10, "{graph:?}");
        assert!(
            graph["engine"].contains("store"),
            "the scan sees `use crate::…`"
        );
        let cycles: Vec<String> = graph
            .iter()
            .flat_map(|(module, named)| named.iter().map(move |next| (module, next)))
            .filter(|(module, next)| reaches(&graph, next, module))
            .map(|(module, next)| format!("{module} -> {next} -> … -> {module}"))
            .collect();
        assert!(cycles.is_empty(), "{cycles:#?}");
    }
}
