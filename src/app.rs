//! Assembling the service: store, engine, router and listener; running it
//! until a shutdown signal.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket};
use tokio_util::sync::CancellationToken;

use crate::access::{Keyring, OpenMode, RateLimiter};
use crate::config::{AuthMode, Config, ConfigError};
use crate::engine::Engine;
use crate::http::serve::{self, ConnectionSettings, FdLimit};
use crate::http::{AppState, router};
use crate::kinds::{ExecKind, HttpKind, JobKind, KindRegistry, RegistryError};
use crate::notify::{DeliverySettings, Webhooks};
use crate::outbound::{Lookup, Outbound, OutboundError, SystemLookup};
use crate::store::{JobStore, PgStore, SqliteStore, StoreError};
use crate::telemetry::traces::Tracer;

/// Time in-flight requests get to finish after the engine stopped.
const HTTP_DRAIN: Duration = Duration::from_secs(5);

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Kinds(#[from] RegistryError),
    #[error("SPOOL_DATABASE_URL: {0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Outbound(#[from] OutboundError),
    #[error(
        "SPOOL_BIND: {addr} is not a loopback address and no API key is configured, so \
         anyone who can reach it could read and change every job. Add a key \
         (SPOOL_API_KEYS=TENANT:admin:SECRET, or [[api_keys]] in the config file), bind \
         127.0.0.1, or set SPOOL_AUTH=none if a proxy in front authenticates"
    )]
    OpenOnNetwork { addr: SocketAddr },
    #[error("SPOOL_BIND: cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Builds an [`App`]: the built-in kinds plus any added with [`AppBuilder::kind`].
pub struct AppBuilder {
    config: Config,
    kinds: Vec<Arc<dyn JobKind>>,
    lookup: Arc<dyn Lookup>,
}

impl AppBuilder {
    /// Registers a job kind of your own.
    pub fn kind(mut self, kind: impl JobKind) -> Self {
        self.kinds.push(Arc::new(kind));
        self
    }

    /// Resolves outbound host names with `lookup` instead of the system
    /// resolver (resolved addresses are still checked).
    pub fn outbound_lookup(mut self, lookup: impl Lookup) -> Self {
        self.lookup = Arc::new(lookup);
        self
    }

    pub async fn build(self) -> Result<App, StartError> {
        let config = self.config;
        let file = config.file()?;
        let declared = config.declared_queues(&file)?;
        let declared_keys = config.declared_keys(&file)?;
        let declared_tenants = config.declared_tenants(&file)?;
        let open_mode = match config.auth {
            AuthMode::None => OpenMode::Always,
            AuthMode::Keys if config.bind.ip().is_loopback() => OpenMode::Allowed,
            AuthMode::Keys => OpenMode::Refused,
        };
        let mut engine_settings = config.engine_settings()?;
        let http_settings = config.http_settings()?;
        // Before anything opens a descriptor, so that all of them count
        // against the raised limit.
        let fd_limit = match serve::raise_fd_limit() {
            Ok(limit) => Some(limit),
            Err(error) => {
                tracing::warn!(%error, "cannot raise the open-file limit; keeping it");
                None
            }
        };
        let connections = ConnectionSettings {
            header_read_timeout: http_settings.header_read_timeout,
            idle_timeout: http_settings.idle_timeout,
            max_connections: connection_cap(http_settings.max_connections, fd_limit),
        };
        let outbound = Outbound::new(config.outbound_allow.clone(), self.lookup)?;
        let mut kinds = self.kinds;
        kinds.push(Arc::new(
            HttpKind::new(outbound.clone(), config.http_max_response_bytes)
                .with_secret_headers(config.http_secret_headers.clone()),
        ));
        // Off unless the config file names commands: absent from /v1/kinds.
        if let Some(exec) = ExecKind::from_config(&file.exec).map_err(ConfigError::from)? {
            kinds.push(Arc::new(exec));
        }
        let kinds = KindRegistry::new(kinds)?;
        // The port is taken first, so a port in use stops the start before
        // anything else is opened; it listens once the engine runs (below).
        let bind_error = |source| StartError::Bind {
            addr: config.bind,
            source,
        };
        let socket = reserve_port(config.bind).map_err(bind_error)?;
        let store = open_store(&config.database_url).await?;
        // Before the engine starts work: a service that would be open to the
        // network does not start at all.
        if open_mode == OpenMode::Refused
            && declared_keys.is_empty()
            && store.stored_keys().await?.is_empty()
        {
            return Err(StartError::OpenOnNetwork { addr: config.bind });
        }
        let tracer = match config.otlp_endpoint.as_deref() {
            Some(endpoint) if !endpoint.trim().is_empty() => {
                Tracer::otlp(endpoint, &config.otel_service_name).map_err(|error| {
                    ConfigError::Invalid {
                        setting: "OTEL_EXPORTER_OTLP_ENDPOINT",
                        message: error.to_string(),
                    }
                })?
            }
            _ => Tracer::disabled(),
        };
        engine_settings.tracer = tracer.clone();
        let webhooks = config.webhook_secret.clone().map(|secret| Webhooks {
            tracer: tracer.clone(),
            outbound: outbound.clone(),
            secret,
            settings: DeliverySettings {
                retry_base: config.webhook_retry_base,
                max_attempts: config.webhook_max_attempts,
                timeout: config.webhook_timeout,
            },
        });
        // Before anything records: the recorder is the process's.
        crate::telemetry::metrics::handle();
        let engine = Engine::start(store, kinds, engine_settings, declared, webhooks).await?;
        tokio::spawn(crate::telemetry::metrics::upkeep(engine.stopping()));
        engine.declare_tenants(declared_tenants).await?;
        let keyring = Keyring::load(engine.clone(), declared_keys, open_mode).await?;
        keyring.spawn_upkeep();
        match open_mode {
            OpenMode::Always => tracing::warn!(
                "SPOOL_AUTH=none: no request is asked for a key; every caller is an admin"
            ),
            OpenMode::Allowed if keyring.is_empty() => tracing::info!(
                "no API key configured: open mode, loopback only (every request is the admin \
                 of tenant `default`)"
            ),
            _ => {}
        }
        // Listening once the engine runs: callers (and tests) that wait for
        // the port to accept may then count on a started service.
        let listener = socket.listen(LISTEN_BACKLOG).map_err(bind_error)?;
        let router = router(
            AppState {
                engine: engine.clone(),
                keyring,
                limiter: Arc::new(RateLimiter::default()),
                sse_keep_alive: config.sse_keep_alive,
            },
            &http_settings,
        );
        Ok(App {
            listener,
            database: without_credentials(&config.database_url),
            router,
            engine,
            tracer,
            connections,
            fd_limit,
        })
    }
}

/// Connections the kernel queues before they are accepted (tokio's own
/// `TcpListener::bind` default).
const LISTEN_BACKLOG: u32 = 1024;

/// A socket bound to `addr` but not yet listening: connections to it are
/// refused until [`TcpSocket::listen`].
fn reserve_port(addr: SocketAddr) -> std::io::Result<TcpSocket> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    // As `TcpListener::bind` does: a restart may bind while the previous
    // process's connections linger in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    Ok(socket)
}

/// A database URL fit for a log line: no user, no password, no query (which
/// may carry either).
fn without_credentials(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.scheme() != "sqlite" => {
            let _ = parsed.set_username("");
            let _ = parsed.set_password(None);
            parsed.set_query(None);
            parsed.to_string()
        }
        _ => url.to_owned(),
    }
}

/// The operator's cap, or one derived from the descriptor limit.
fn connection_cap(configured: Option<usize>, fd_limit: Option<FdLimit>) -> usize {
    let Some(limit) = fd_limit else {
        return configured.unwrap_or(serve::DEFAULT_MAX_CONNECTIONS_CEILING);
    };
    let Some(cap) = configured else {
        return serve::default_max_connections(limit.soft);
    };
    if (cap as u64).saturating_add(serve::FDS_FOR_THE_REST) > limit.soft {
        tracing::warn!(
            max_connections = cap,
            fd_limit = limit.soft,
            "SPOOL_MAX_CONNECTIONS leaves fewer than {} file descriptors for the database, \
             outbound requests and files: accepting may fail for want of descriptors",
            serve::FDS_FOR_THE_REST
        );
    }
    cap
}

async fn open_store(url: &str) -> Result<Arc<dyn JobStore>, StartError> {
    if url.starts_with("sqlite:") {
        return Ok(Arc::new(SqliteStore::open(url).await?));
    }
    if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        return Ok(Arc::new(PgStore::open(url).await?));
    }
    Err(ConfigError::Invalid {
        setting: "SPOOL_DATABASE_URL",
        message: format!(
            "`{url}` is not supported; use sqlite://FILE (embedded) or postgres://… (shared)"
        ),
    }
    .into())
}

/// A started service: listening, engine running, not yet serving requests.
pub struct App {
    listener: TcpListener,
    /// The database URL without credentials, for the start-up line.
    database: String,
    router: axum::Router,
    engine: Engine,
    tracer: Tracer,
    connections: ConnectionSettings,
    fd_limit: Option<FdLimit>,
}

impl App {
    pub fn builder(config: Config) -> AppBuilder {
        AppBuilder {
            config,
            kinds: KindRegistry::builtin(),
            lookup: Arc::new(SystemLookup),
        }
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The database it runs on, without user or password.
    pub fn database(&self) -> &str {
        &self.database
    }

    /// `embedded` (SQLite, one instance) or `shared` (PostgreSQL, several).
    pub fn mode(&self) -> &'static str {
        if self.database.starts_with("sqlite:") {
            "embedded"
        } else {
            "shared"
        }
    }

    /// The connection cap and deadlines this service will serve with.
    pub fn connection_settings(&self) -> ConnectionSettings {
        self.connections
    }

    /// The open-file limit after start-up raised it (None when it could
    /// not be read).
    pub fn fd_limit(&self) -> Option<FdLimit> {
        self.fd_limit
    }

    /// Serves until `shutdown` resolves, then stops admitting (503), drains
    /// running jobs within the grace period, hands back the rest and returns.
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
        let App {
            listener,
            database: _,
            router,
            engine,
            tracer,
            connections,
            fd_limit: _,
        } = self;
        let stop_http = CancellationToken::new();
        let server = tokio::spawn(serve::serve(
            listener,
            router,
            connections,
            stop_http.clone(),
        ));
        shutdown.await;
        // Keep answering while jobs drain: reads work, submissions get 503.
        engine.shutdown().await;
        stop_http.cancel();
        let served = match tokio::time::timeout(HTTP_DRAIN, server).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(join_error)) => Err(std::io::Error::other(join_error)),
            Err(_) => {
                tracing::warn!("in-flight requests did not finish in time; closing");
                Ok(())
            }
        };
        // Last: the spans of the drained jobs and requests go out too.
        tracer.shutdown().await;
        served
    }
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => tracing::info!("SIGINT received"),
        _ = terminate => tracing::info!("SIGTERM received"),
    }
}
