//! Typed configuration: command-line flags with `SPOOL_*` environment
//! fallbacks, plus an optional TOML file for queues.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, FromArgMatches, ValueEnum};
use serde::Deserialize;

use crate::access::{DeclaredKey, parse_api_keys};
use crate::domain::{QueueConfig, QueueSettings, StoredKey, TenantSettings, valid_tenant};
use crate::engine::EngineSettings;
use crate::http::HttpSettings;
use crate::http::cors::CorsOrigins;
use crate::kinds::{ExecCommand, SecretHeaders};
use crate::notify::WebhookSecret;
use crate::outbound::OutboundAllow;

/// `SPOOL_AUTH`: whether requests need an API key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum AuthMode {
    /// Keys are required once any exists. With none, only a loopback bind
    /// is allowed (open mode, for development).
    #[default]
    Keys,
    /// No key is ever asked for: every request is the admin of tenant
    /// `default`, whatever the bind address. For a service behind a proxy
    /// that authenticates.
    None,
}

/// `SPOOL_API_KEYS`, parsed. Its `Debug` never shows a secret.
#[derive(Clone, Default)]
pub struct ApiKeysSetting(pub Vec<DeclaredKey>);

impl std::fmt::Debug for ApiKeysSetting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKeysSetting({} keys)", self.0.len())
    }
}

fn api_keys(text: &str) -> Result<ApiKeysSetting, String> {
    parse_api_keys(text)
        .map(ApiKeysSetting)
        .map_err(|e| e.to_string())
}

/// `SPOOL_LOG_FORMAT`; declared by telemetry, which depends on no setting.
pub use crate::telemetry::LogFormat;

fn webhook_secret(text: &str) -> Result<WebhookSecret, String> {
    text.parse()
}

fn duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|e| format!("`{text}` is not a duration like 30s, 5m or 7d: {e}"))
}

/// Everything the service needs to start. Each default is declared once,
/// on its flag (`Config::default` reads them there), and documented in the
/// README's and `docs/operations.md`'s settings tables, which a test holds
/// to the flags.
#[derive(Args, Clone, Debug)]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = "SPOOL_BIND", default_value = "127.0.0.1:8080")]
    pub bind: SocketAddr,
    /// `sqlite://FILE` (embedded mode: one instance, the file created when
    /// missing) or `postgres://USER:PASSWORD@HOST:PORT/DB` (shared mode:
    /// several instances on one database).
    #[arg(long, env = "SPOOL_DATABASE_URL", default_value = "sqlite://spool.db")]
    pub database_url: String,
    /// Optional TOML file declaring queues.
    #[arg(long = "config", env = "SPOOL_CONFIG")]
    pub config_file: Option<PathBuf>,
    /// Time running jobs get to finish on SIGTERM/SIGINT before they are handed back.
    #[arg(long, env = "SPOOL_SHUTDOWN_GRACE", default_value = "30s", value_parser = duration)]
    pub shutdown_grace: Duration,
    /// Time a cancelled or timed-out handler gets to stop before it is aborted.
    #[arg(long, env = "SPOOL_CANCEL_GRACE", default_value = "5s", value_parser = duration)]
    pub cancel_grace: Duration,
    /// Lease of a running job (renewed every third of it); a job whose process
    /// died is rescued once it expires.
    #[arg(long, env = "SPOOL_LEASE_TTL", default_value = "30s", value_parser = duration)]
    pub lease_ttl: Duration,
    /// How long terminal jobs are kept.
    #[arg(long, env = "SPOOL_RETENTION", default_value = "7d", value_parser = duration)]
    pub retention: Duration,
    /// Largest request body in bytes.
    #[arg(long, env = "SPOOL_MAX_BODY_BYTES", default_value_t = 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Most jobs in one batch; a larger batch is refused with 413.
    #[arg(long, env = "SPOOL_MAX_BATCH_SIZE", default_value_t = 10_000)]
    pub max_batch_size: usize,
    /// Largest `POST /v1/batches` body in bytes (a batch of 10 000 jobs with
    /// small payloads needs a few MiB).
    #[arg(long, env = "SPOOL_MAX_BATCH_BODY_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub max_batch_body_bytes: usize,
    /// Key that signs webhooks (Standard Webhooks `whsec_<base64>` form).
    /// Without one, submissions with a `callback_url` are refused.
    #[arg(long, env = "SPOOL_WEBHOOK_SECRET", value_parser = webhook_secret)]
    pub webhook_secret: Option<WebhookSecret>,
    /// Delay before the second delivery attempt of a webhook; each further
    /// delay is four times longer, capped at one hour.
    #[arg(long, env = "SPOOL_WEBHOOK_RETRY_BASE", default_value = "2s", value_parser = duration)]
    pub webhook_retry_base: Duration,
    /// Delivery attempts before a webhook is marked `failed` (with the
    /// defaults, the last attempt comes about 4 hours after the first).
    #[arg(long, env = "SPOOL_WEBHOOK_MAX_ATTEMPTS", default_value_t = 10)]
    pub webhook_max_attempts: u32,
    /// Time one webhook delivery attempt may take.
    #[arg(long, env = "SPOOL_WEBHOOK_TIMEOUT", default_value = "10s", value_parser = duration)]
    pub webhook_timeout: Duration,
    /// Hosts or CIDRs that outbound requests (`http` jobs, webhooks) may reach
    /// despite the rule against loopback, private and metadata addresses.
    #[arg(long, env = "SPOOL_OUTBOUND_ALLOW", default_value = "")]
    pub outbound_allow: OutboundAllow,
    /// Largest response body an `http` job keeps in its result, in bytes
    /// (results are capped at 256 KiB in all).
    #[arg(long, env = "SPOOL_HTTP_MAX_RESPONSE_BYTES", default_value_t = 64 * 1024)]
    pub http_max_response_bytes: usize,
    /// Comma-separated header names whose values in an `http` job's payload
    /// are secret, besides Authorization, Cookie and Proxy-Authorization
    /// (always secret): sent, but shown as `***` (any case matches).
    #[arg(long, env = "SPOOL_HTTP_SECRET_HEADERS", default_value = "")]
    pub http_secret_headers: SecretHeaders,
    /// Events kept for `GET /v1/events` clients resuming with `Last-Event-ID`.
    #[arg(long, env = "SPOOL_EVENT_REPLAY", default_value_t = 10_000)]
    pub event_replay: usize,
    /// Interval of keep-alive comments on idle event streams.
    #[arg(long, env = "SPOOL_SSE_KEEP_ALIVE", default_value = "15s", value_parser = duration)]
    pub sse_keep_alive: Duration,
    /// Time a client gets to send a request's head (line and headers), from
    /// its first byte, or from connecting for a connection's first request;
    /// then the connection is closed.
    #[arg(long, env = "SPOOL_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = duration)]
    pub header_read_timeout: Duration,
    /// Time a client gets to send a request's whole body; a slower one gets
    /// 408 `body_timeout`.
    #[arg(long, env = "SPOOL_BODY_READ_TIMEOUT", default_value = "30s", value_parser = duration)]
    pub body_read_timeout: Duration,
    /// Time a keep-alive connection may sit between requests, and a response
    /// may wait on a client that reads none of it, before the connection is
    /// closed.
    #[arg(long, env = "SPOOL_IDLE_TIMEOUT", default_value = "75s", value_parser = duration)]
    pub idle_timeout: Duration,
    /// Most connections open at once; one more gets 503
    /// `too_many_connections`. Default: three quarters of the open-file
    /// limit, at most 65536.
    #[arg(long, env = "SPOOL_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// API keys: comma-separated `TENANT:ROLE:SECRET` (ROLE is admin, write
    /// or read; SECRET may be `sha256:<hex>` of the secret). More in the
    /// config file's `[[api_keys]]`, and through `POST /v1/keys`.
    #[arg(long, env = "SPOOL_API_KEYS", value_parser = api_keys, hide_env_values = true)]
    pub api_keys: Option<ApiKeysSetting>,
    /// `keys`: requests need an API key once any exists, and a service bound
    /// to a non-loopback address refuses to start without one. `none`:
    /// never ask for a key (behind a proxy that authenticates).
    #[arg(long, env = "SPOOL_AUTH", value_enum, default_value_t = AuthMode::Keys)]
    pub auth: AuthMode,
    /// `GET /metrics` without a key. Default: an admin key is needed.
    #[arg(long, env = "SPOOL_METRICS_PUBLIC", default_value_t = false, action = clap::ArgAction::Set)]
    pub metrics_public: bool,
    /// Log format.
    #[arg(long, env = "SPOOL_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Origins browsers may call the API from: comma-separated
    /// (`https://app.example.com,https://ops.example.com`) or `*`.
    /// Default: none, and no CORS headers are sent.
    #[arg(long, env = "SPOOL_CORS_ORIGINS")]
    pub cors_origins: Option<String>,
    /// Export spans of requests, attempts and webhook deliveries over
    /// OTLP/HTTP (protobuf) to `<URL>/v1/traces`, e.g.
    /// `http://otel-collector:4318`. Default: no export.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// The `service.name` exported spans carry.
    #[arg(long, env = "OTEL_SERVICE_NAME", default_value = "spool")]
    pub otel_service_name: String,
}

/// Shortest header, body and idle timeout: below it ordinary clients on a
/// busy machine would be cut off.
const MIN_CONNECTION_TIMEOUT: Duration = Duration::from_millis(100);

/// A bad setting: start-up stops with a message naming it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("SPOOL_CONFIG: cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("SPOOL_CONFIG: {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("SPOOL_CONFIG: queue `{queue}`: {message}")]
    Queue { queue: String, message: String },
    #[error("SPOOL_CONFIG: tenants.{tenant}: {message}")]
    Tenant { tenant: String, message: String },
    #[error("SPOOL_CONFIG: {0}")]
    Exec(#[from] crate::kinds::ExecConfigError),
    #[error(transparent)]
    Key(#[from] crate::access::DeclaredKeyError),
    #[error("{setting}: {message}")]
    Invalid {
        setting: &'static str,
        message: String,
    },
}

/// The optional TOML file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// `[queues.NAME]` tables with the fields of `PUT /v1/queues/{name}`.
    #[serde(default)]
    pub queues: BTreeMap<String, QueueSettings>,
    /// `[exec.NAME]` tables: the commands the `exec` kind may run.
    #[serde(default)]
    pub exec: BTreeMap<String, ExecCommand>,
    /// `[[api_keys]]` tables: `name`, `tenant`, `role`, `secret`.
    #[serde(default)]
    pub api_keys: Vec<DeclaredKey>,
    /// `[tenants.NAME]` tables with the fields of `PUT /v1/tenants/{tenant}`
    /// (`max_pending`, `submit_rate`, `submit_burst`).
    #[serde(default)]
    pub tenants: BTreeMap<String, TenantSettings>,
}

impl Default for Config {
    /// The defaults the flags above declare, whatever the environment says:
    /// the binary and the library (tests, `spool bench`, an embedding crate)
    /// start from the same values, written once.
    fn default() -> Self {
        let flags = Config::augment_args(clap::Command::new("spool"))
            .mut_args(|arg| arg.env(None::<&str>))
            .no_binary_name(true);
        let declared = flags
            .try_get_matches_from(std::iter::empty::<String>())
            .and_then(|matches| Config::from_arg_matches(&matches));
        // Only the declarations above decide this (a unit test parses them).
        declared.unwrap_or_else(|error| panic!("the flags' defaults do not parse: {error}"))
    }
}

impl Config {
    /// The config file, read and parsed (empty when there is none).
    pub fn file(&self) -> Result<FileConfig, ConfigError> {
        let Some(path) = &self.config_file else {
            return Ok(FileConfig::default());
        };
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.clone(),
            message: e.to_string(),
        })
    }

    /// The queues the config file declares, checked.
    pub fn declared_queues(&self, file: &FileConfig) -> Result<Vec<QueueConfig>, ConfigError> {
        file.queues
            .clone()
            .into_iter()
            .map(|(name, settings)| {
                if !QueueConfig::valid_name(&name) {
                    return Err(ConfigError::Queue {
                        queue: name,
                        message: "names are 1 to 64 of A-Z a-z 0-9 _ - .".into(),
                    });
                }
                let mut queue = QueueConfig::new(name.clone());
                queue
                    .apply(&settings)
                    .map_err(|errors| ConfigError::Queue {
                        queue: name,
                        message: errors
                            .iter()
                            .map(|e| {
                                format!("{}: {}", e.pointer.trim_start_matches('/'), e.message)
                            })
                            .collect::<Vec<_>>()
                            .join("; "),
                    })?;
                Ok(queue)
            })
            .collect()
    }

    /// The tenants' quotas the config file declares, checked.
    pub fn declared_tenants(
        &self,
        file: &FileConfig,
    ) -> Result<Vec<(String, TenantSettings)>, ConfigError> {
        file.tenants
            .iter()
            .map(|(name, settings)| {
                if !valid_tenant(name) {
                    return Err(ConfigError::Tenant {
                        tenant: name.clone(),
                        message: "names are 1 to 64 of A-Z a-z 0-9 _ - .".into(),
                    });
                }
                settings.validate().map_err(|errors| ConfigError::Tenant {
                    tenant: name.clone(),
                    message: errors
                        .iter()
                        .map(|e| format!("{}: {}", e.pointer.trim_start_matches('/'), e.message))
                        .collect::<Vec<_>>()
                        .join("; "),
                })?;
                Ok((name.clone(), settings.clone()))
            })
            .collect()
    }

    /// The keys `SPOOL_API_KEYS` and the config file declare, checked.
    pub fn declared_keys(&self, file: &FileConfig) -> Result<Vec<StoredKey>, ConfigError> {
        let from_env = self
            .api_keys
            .iter()
            .flat_map(|keys| keys.0.iter())
            .enumerate();
        let mut keys = Vec::new();
        for (i, key) in from_env {
            keys.push(
                key.clone()
                    .into_stored(&format!("SPOOL_API_KEYS entry {}", i + 1))?,
            );
        }
        for (i, key) in file.api_keys.iter().enumerate() {
            keys.push(
                key.clone()
                    .into_stored(&format!("SPOOL_CONFIG: api_keys[{i}]"))?,
            );
        }
        for (i, key) in keys.iter().enumerate() {
            if keys[..i].iter().any(|other| other.hash == key.hash) {
                return Err(ConfigError::Invalid {
                    setting: "SPOOL_API_KEYS",
                    message: format!("the key `{}` is declared twice", key.key.name),
                });
            }
        }
        if self.auth == AuthMode::None && !keys.is_empty() {
            return Err(ConfigError::Invalid {
                setting: "SPOOL_AUTH",
                message: "`none` turns keys off, yet keys are declared; remove one or the other"
                    .into(),
            });
        }
        Ok(keys)
    }

    pub fn engine_settings(&self) -> Result<EngineSettings, ConfigError> {
        if self.lease_ttl < Duration::from_secs(1) {
            return Err(ConfigError::Invalid {
                setting: "SPOOL_LEASE_TTL",
                message: "must be at least 1s".into(),
            });
        }
        if !(1..=100).contains(&self.webhook_max_attempts) {
            return Err(ConfigError::Invalid {
                setting: "SPOOL_WEBHOOK_MAX_ATTEMPTS",
                message: "must be between 1 and 100".into(),
            });
        }
        if !(1..=100_000).contains(&self.max_batch_size) {
            return Err(ConfigError::Invalid {
                setting: "SPOOL_MAX_BATCH_SIZE",
                message: "must be between 1 and 100000".into(),
            });
        }
        Ok(EngineSettings {
            max_batch_size: self.max_batch_size,
            shutdown_grace: self.shutdown_grace,
            cancel_grace: self.cancel_grace,
            lease_ttl: self.lease_ttl,
            retention: self.retention,
            event_replay: self.event_replay,
            ..EngineSettings::default()
        })
    }

    pub fn http_settings(&self) -> Result<HttpSettings, ConfigError> {
        if self.max_body_bytes < 1024 {
            return Err(ConfigError::Invalid {
                setting: "SPOOL_MAX_BODY_BYTES",
                message: "must be at least 1024".into(),
            });
        }
        if self.max_batch_body_bytes < 1024 {
            return Err(ConfigError::Invalid {
                setting: "SPOOL_MAX_BATCH_BODY_BYTES",
                message: "must be at least 1024".into(),
            });
        }
        for (setting, value) in [
            ("SPOOL_HEADER_READ_TIMEOUT", self.header_read_timeout),
            ("SPOOL_BODY_READ_TIMEOUT", self.body_read_timeout),
            ("SPOOL_IDLE_TIMEOUT", self.idle_timeout),
        ] {
            if value < MIN_CONNECTION_TIMEOUT {
                return Err(ConfigError::Invalid {
                    setting,
                    message: "must be at least 100ms".into(),
                });
            }
        }
        let defaults = HttpSettings::default();
        if self.body_read_timeout >= defaults.request_timeout {
            return Err(ConfigError::Invalid {
                setting: "SPOOL_BODY_READ_TIMEOUT",
                message: format!(
                    "must be shorter than the request timeout ({} s)",
                    defaults.request_timeout.as_secs()
                ),
            });
        }
        if self.max_connections == Some(0) {
            return Err(ConfigError::Invalid {
                setting: "SPOOL_MAX_CONNECTIONS",
                message: "must be at least 1".into(),
            });
        }
        Ok(HttpSettings {
            max_body_bytes: self.max_body_bytes,
            max_batch_body_bytes: self.max_batch_body_bytes,
            header_read_timeout: self.header_read_timeout,
            body_read_timeout: self.body_read_timeout,
            idle_timeout: self.idle_timeout,
            max_connections: self.max_connections,
            metrics_public: self.metrics_public,
            cors_origins: self
                .cors_origins
                .as_deref()
                .map(CorsOrigins::parse)
                .transpose()
                .map_err(|message| ConfigError::Invalid {
                    setting: "SPOOL_CORS_ORIGINS",
                    message,
                })?
                .flatten(),
            ..defaults
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use crate::cli::Cli;

    use super::*;

    /// A document's settings table (the one whose header row starts with
    /// `header`): variable → default cell.
    fn documented_defaults(document: &str, header: &str) -> BTreeMap<String, String> {
        document
            .lines()
            .skip_while(|line| !line.starts_with(header))
            .skip(2)
            .take_while(|line| line.starts_with('|'))
            .filter_map(|line| {
                let cells: Vec<&str> = line.split('|').map(str::trim).collect();
                let name = cells.get(1)?.trim_matches('`').to_owned();
                Some((name, cells.get(2)?.to_string()))
            })
            .collect()
    }

    #[test]
    fn every_setting_is_documented_with_the_default_its_flag_declares() {
        for (name, documented) in [
            (
                "README.md",
                documented_defaults(include_str!("../README.md"), "| variable | default"),
            ),
            (
                "docs/operations.md",
                documented_defaults(include_str!("../docs/operations.md"), "| setting | default"),
            ),
        ] {
            assert!(documented.len() > 20, "{name}: {documented:?}");
            agrees_with_the_flags(name, &documented);
        }
    }

    fn agrees_with_the_flags(name: &str, documented: &BTreeMap<String, String>) {
        let flags = Config::augment_args(clap::Command::new("spool"));
        for arg in flags.get_arguments() {
            let Some(env) = arg.get_env().and_then(|env| env.to_str()) else {
                continue;
            };
            let cell = documented
                .get(env)
                .unwrap_or_else(|| panic!("{env} is not in {name}'s settings table"));
            let declared: Vec<String> = arg
                .get_default_values()
                .iter()
                .map(|value| value.to_string_lossy().into_owned())
                .collect();
            match declared.as_slice() {
                [] => assert!(
                    !cell.starts_with('`'),
                    "{env} has no default, {name} says {cell}"
                ),
                [empty] if empty.is_empty() => assert_eq!(cell, "empty", "{name}: {env}"),
                [value] => assert_eq!(cell, &format!("`{value}`"), "{name}: {env}"),
                many => panic!("{env} declares several defaults: {many:?}"),
            }
        }
    }

    #[test]
    fn the_library_starts_from_the_flags_defaults_whatever_the_environment() {
        let config = Config::default();
        assert_eq!(config.bind.to_string(), "127.0.0.1:8080");
        assert_eq!(config.database_url, "sqlite://spool.db");
        assert_eq!(config.shutdown_grace, Duration::from_secs(30));
        assert_eq!(config.retention, Duration::from_secs(7 * 24 * 3600));
        assert_eq!(config.max_body_bytes, 1024 * 1024);
        assert_eq!(config.auth, AuthMode::Keys);
        assert!(config.api_keys.is_none() && config.webhook_secret.is_none());
        // As the binary parses an empty command line (the environment of a
        // test run sets no SPOOL_* variable).
        let parsed = Cli::try_parse_from(["spool"]).expect("parses");
        assert_eq!(format!("{:?}", parsed.config), format!("{config:?}"));
    }

    #[test]
    fn the_engines_own_defaults_are_the_flags_defaults() {
        // `EngineSettings::default()` serves the library's users who build
        // an engine without a `Config`; it may not drift from the flags.
        let from_flags = Config::default().engine_settings().expect("valid");
        let library = crate::engine::EngineSettings::default();
        assert_eq!(from_flags.shutdown_grace, library.shutdown_grace);
        assert_eq!(from_flags.cancel_grace, library.cancel_grace);
        assert_eq!(from_flags.lease_ttl, library.lease_ttl);
        assert_eq!(from_flags.retention, library.retention);
        assert_eq!(from_flags.max_batch_size, library.max_batch_size);
        assert_eq!(from_flags.event_replay, library.event_replay);
    }

    fn refused_setting(config: Config) -> &'static str {
        match config.http_settings() {
            Err(ConfigError::Invalid { setting, .. }) => setting,
            other => panic!("accepted: {other:?}"),
        }
    }

    #[test]
    fn connection_timeouts_and_the_connection_cap_are_checked() {
        let short = Duration::from_millis(50);
        let cases = [
            (
                Config {
                    header_read_timeout: short,
                    ..Config::default()
                },
                "SPOOL_HEADER_READ_TIMEOUT",
            ),
            (
                Config {
                    body_read_timeout: short,
                    ..Config::default()
                },
                "SPOOL_BODY_READ_TIMEOUT",
            ),
            (
                Config {
                    body_read_timeout: Duration::from_secs(75),
                    ..Config::default()
                },
                "SPOOL_BODY_READ_TIMEOUT",
            ),
            (
                Config {
                    idle_timeout: short,
                    ..Config::default()
                },
                "SPOOL_IDLE_TIMEOUT",
            ),
            (
                Config {
                    max_connections: Some(0),
                    ..Config::default()
                },
                "SPOOL_MAX_CONNECTIONS",
            ),
        ];
        for (config, setting) in cases {
            assert_eq!(refused_setting(config), setting);
        }
    }

    #[test]
    fn the_connection_settings_of_config_default_are_the_flags_defaults() {
        let parsed = Cli::try_parse_from(["spool"])
            .expect("no flags parse")
            .config;
        let default = Config::default();
        assert_eq!(parsed.header_read_timeout, default.header_read_timeout);
        assert_eq!(parsed.body_read_timeout, default.body_read_timeout);
        assert_eq!(parsed.idle_timeout, default.idle_timeout);
        assert_eq!(parsed.max_connections, default.max_connections);
        assert_eq!(parsed.http_secret_headers, default.http_secret_headers);
    }

    #[test]
    fn secret_header_names_are_a_comma_separated_list_checked_at_start_up() {
        let parsed = Cli::try_parse_from(["spool", "--http-secret-headers", "X-Api-Key, x-token"])
            .expect("header names parse")
            .config;
        assert_eq!(parsed.http_secret_headers.to_string(), "x-api-key,x-token");
        assert!(Cli::try_parse_from(["spool", "--http-secret-headers", "bad name"]).is_err());
    }
}
