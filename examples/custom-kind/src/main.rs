//! Spool used as a library: serves Spool with a job kind of its own.
//! `word_count` counts the words of a text, reporting progress line by line
//! and stopping when cancelled.
//!
//! ```sh
//! cargo run -p spool-example-custom-kind
//! curl -s localhost:8080/v1/jobs -H 'content-type: application/json' \
//!   -d '{"kind": "word_count", "payload": {"text": "one two\nthree"}}'
//! ```

use async_trait::async_trait;
use clap::Parser;
use serde_json::{Value, json};
use spool::app::{App, shutdown_signal};
use spool::cli::{Cli, Command};
use spool::kinds::{JobContext, JobFailure, JobKind};

struct WordCount;

#[async_trait]
impl JobKind for WordCount {
    fn name(&self) -> &str {
        "word_count"
    }

    fn description(&self) -> &str {
        "Counts the words of `text`."
    }

    fn payload_schema(&self) -> Value {
        json!({
            "type": "object",
            "properties": {"text": {"type": "string", "maxLength": 100000}},
            "required": ["text"],
            "additionalProperties": false
        })
    }

    async fn run(&self, ctx: JobContext) -> Result<Value, JobFailure> {
        // The payload was validated against the schema at submission.
        let text = ctx.payload["text"].as_str().unwrap_or_default().to_owned();
        let lines: Vec<&str> = text.lines().collect();
        let mut words = 0;
        for (done, line) in lines.iter().enumerate() {
            if ctx.cancel.is_cancelled() {
                return Err(JobFailure::permanent("cancelled", "stopped on request"));
            }
            words += line.split_whitespace().count();
            ctx.progress(done as u64 + 1, Some(lines.len() as u64), None)
                .await;
        }
        Ok(json!({ "words": words, "lines": lines.len() }))
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // The same flags and SPOOL_* variables as the `spool` binary, with or
    // without its `serve` command; this program has no other command.
    let cli = Cli::parse();
    let config = match cli.command {
        None => cli.config,
        Some(Command::Serve(config)) => *config,
        Some(_) => anyhow::bail!("this example only serves (no `openapi` or `bench`)"),
    };
    spool::telemetry::init(config.log_format);
    let app = App::builder(config).kind(WordCount).build().await?;
    tracing::info!(addr = %app.local_addr()?, "serving with the word_count kind");
    app.run_until(shutdown_signal()).await?;
    Ok(())
}
