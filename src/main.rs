//! The `spool` binary: configuration → telemetry → App::build → run until
//! stopped; or one of its other commands (bench, openapi, the client).

use std::process::ExitCode;

use clap::Parser;
use spool::app::App;
use spool::cli::{Cli, Command};

/// mimalloc: the service allocates many small, short-lived buffers across
/// threads (requests, rows, JSON), where glibc's allocator spends a fifth of
/// the CPU (measured with `perf` under `spool bench`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Openapi) => {
            print!("{}", spool::http::openapi_document());
            ExitCode::SUCCESS
        }
        Some(Command::Bench(args)) => match spool::bench::run(args).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("spool bench: {error:#}");
                ExitCode::FAILURE
            }
        },
        Some(Command::Serve(config)) => serve(*config).await,
        Some(
            command
            @ (Command::Job(_) | Command::Batch(_) | Command::Queue(_) | Command::Events(_)),
        ) => spool::cli::run(command).await,
        None => serve(cli.config).await,
    }
}

async fn serve(config: spool::config::Config) -> ExitCode {
    spool::telemetry::init(config.log_format);
    let app = match App::builder(config).build().await {
        Ok(app) => app,
        Err(error) => {
            // Said once, on stderr, where a failed start is looked for.
            eprintln!("spool: cannot start: {error}");
            return ExitCode::FAILURE;
        }
    };
    // What the operator needs to size the service: how many connections
    // it takes, out of how many descriptors.
    let connections = app.connection_settings();
    let fd_limit = app.fd_limit();
    match app.local_addr() {
        Ok(addr) => tracing::info!(
            %addr,
            version = spool::VERSION,
            mode = app.mode(),
            database = app.database(),
            queues = %app.engine().queue_names().join(","),
            max_connections = connections.max_connections,
            fd_limit = fd_limit.map(|limit| limit.soft),
            fd_limit_at_start = fd_limit.map(|limit| limit.before),
            "listening"
        ),
        Err(error) => tracing::warn!(%error, "listening on an unknown address"),
    }
    match app.run_until(spool::app::shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "the server failed");
            ExitCode::FAILURE
        }
    }
}
