//! Settings every binary shares, read from the environment by clap.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// JSON, unless stderr is a terminal.
    Auto,
    Json,
    Pretty,
}

/// Which phone network places calls and sells numbers (`RINGER_CARRIER`; the
/// api and the dialer read it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CarrierKind {
    /// The embedded simulated network: test numbers, scripted callee, no cost.
    Simulated,
    /// Twilio Programmable Voice with ConversationRelay (`RINGER_TWILIO_*`).
    Twilio,
    /// The Twilio carrier against tools/twilio-fake (plain http allowed).
    TwilioFake,
}

/// A secret read from the environment: never shown by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        Ok(Secret(value.to_owned()))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Settings common to the five services. Each service flattens this into its own config.
#[derive(Debug, Clone, clap::Args)]
pub struct CommonConfig {
    /// Postgres connection string.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: String,

    /// RabbitMQ connection string.
    #[arg(
        long,
        env = "AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    pub amqp_url: String,

    /// Prefix of every exchange and queue name, so several deployments (or tests) share one broker.
    #[arg(long, env = "RINGER_NAMESPACE", default_value = "")]
    pub namespace: String,

    /// Address of the HTTP listener (`/healthz`, `/readyz`, `/metrics`, and the API on the api service).
    #[arg(long, env = "RINGER_HTTP_ADDR")]
    pub http_addr: Option<SocketAddr>,

    /// Log format: auto (JSON unless a terminal), json or pretty.
    #[arg(long, env = "RINGER_LOG_FORMAT", value_enum, default_value = "auto")]
    pub log_format: LogFormat,

    /// Size of the Postgres connection pool.
    #[arg(long, env = "RINGER_DB_MAX_CONNECTIONS", default_value_t = 10)]
    pub db_max_connections: u32,

    /// Unacknowledged messages a consumer may hold at once (AMQP prefetch).
    #[arg(long, env = "RINGER_PREFETCH", default_value_t = 32)]
    pub prefetch: u16,

    /// Deliveries of one message before it is dead-lettered (quorum queue `x-delivery-limit`).
    #[arg(long, env = "RINGER_DELIVERY_LIMIT", default_value_t = 5)]
    pub delivery_limit: u32,

    /// Seconds given to in-flight work after SIGTERM before the process exits anyway.
    #[arg(long, env = "RINGER_SHUTDOWN_GRACE_SECONDS", default_value_t = 30)]
    pub shutdown_grace_seconds: u64,

    /// Multiplier applied to every simulated and retry delay (1 = real time, 0 = no waiting).
    #[arg(long, env = "RINGER_TIME_SCALE", default_value_t = 1.0)]
    pub time_scale: f64,

    /// Development mode: allows http:// webhook URLs and private addresses.
    #[arg(long, env = "RINGER_DEV_MODE", default_value_t = false)]
    pub dev_mode: bool,

    /// Outbox rows the relay publishes per batch.
    #[arg(long, env = "RINGER_OUTBOX_BATCH", default_value_t = 200)]
    pub outbox_batch: i64,
}

impl CommonConfig {
    /// Settings for tests and tools: everything at its default but the two connection strings.
    pub fn new(database_url: impl Into<String>, amqp_url: impl Into<String>) -> Self {
        Self {
            database_url: database_url.into(),
            amqp_url: amqp_url.into(),
            namespace: String::new(),
            http_addr: None,
            log_format: LogFormat::Auto,
            db_max_connections: 10,
            prefetch: 32,
            delivery_limit: 5,
            shutdown_grace_seconds: 30,
            time_scale: 1.0,
            dev_mode: false,
            outbox_batch: 200,
        }
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_seconds)
    }

    /// Scales a nominal delay by `time_scale`.
    pub fn scaled(&self, nominal: Duration) -> Duration {
        scale_duration(nominal, self.time_scale)
    }
}

/// Scales a nominal delay; a non-finite or negative scale counts as 0.
pub fn scale_duration(nominal: Duration, scale: f64) -> Duration {
    if !scale.is_finite() || scale <= 0.0 {
        return Duration::ZERO;
    }
    Duration::from_secs_f64(nominal.as_secs_f64() * scale)
}
