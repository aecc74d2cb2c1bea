//! ringer's dialer: turns `queued` calls into finished conversations with a
//! transcript. It claims a call (`queued → initiated`, with a lease), acks the
//! message, and runs the call in a task: `ringing`, `in_progress` on answer, the
//! conversation, and the end (`internal.call.ended`, which extraction and billing
//! consume). A sweeper in every replica ends calls whose dialer died as
//! `dialer_lost`; a call is never dialled twice.
//!
//! Shutdown: the replica stops taking calls, lets its live calls finish within
//! `RINGER_SHUTDOWN_GRACE_SECONDS`, then hangs up the rest and ends them
//! `failed`/`dialer_lost` itself (a replica killed outright leaves that to
//! another replica's sweeper, once the leases expire).

pub mod agent;
pub mod carrier;
mod live;
pub mod llm_agent;
mod pipeline;
pub mod sim;
mod store;
pub mod twilio;
mod worker;
mod writer;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use ringer::broker::DIALER_QUEUE;
use ringer::config::CommonConfig;
use ringer::service::{Infrastructure, run_worker};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::agent::{Agent, ScriptedAgent};
use crate::carrier::Carrier;
use crate::live::LiveCalls;
use crate::llm_agent::{LlmAgent, LlmAgentArgs, SpeechChannel};
use crate::pipeline::Shared;
use crate::sim::SimulatedCarrier;
use crate::twilio::{TwilioArgs, TwilioCarrier};
use crate::worker::DialerStep;
use crate::writer::Writer;

/// Where `/healthz`, `/readyz` and `/metrics` listen unless `RINGER_HTTP_ADDR` says otherwise.
pub const DEFAULT_HTTP_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 8081);

pub use ringer::config::CarrierKind;

/// Who talks on the calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AgentKind {
    /// The embedded scripted agent: asks for each `returns` field, deterministic.
    Scripted,
    /// An OpenAI-compatible chat-completions endpoint (`RINGER_LLM_*`).
    Llm,
}

/// The dialer's settings, read from the environment.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "ringer-dialer",
    version,
    about = "Places ringer's queued calls and holds their conversations"
)]
pub struct Config {
    #[command(flatten)]
    pub common: CommonConfig,

    /// Phone network that places the calls.
    #[arg(long, env = "RINGER_CARRIER", value_enum, default_value = "simulated")]
    pub carrier: CarrierKind,

    /// Who talks on the calls.
    #[arg(long, env = "RINGER_AGENT", value_enum, default_value = "scripted")]
    pub agent: AgentKind,

    #[command(flatten)]
    pub twilio: TwilioArgs,

    #[command(flatten)]
    pub llm: LlmAgentArgs,

    /// Live calls an org may have at once, unless the org sets its own limit.
    #[arg(long, env = "RINGER_ORG_CONCURRENCY", default_value_t = 10,
          value_parser = clap::value_parser!(i32).range(1..))]
    pub org_concurrency: i32,

    /// Live calls this replica runs at once; further calls wait in the queue.
    #[arg(long, env = "RINGER_DIALER_MAX_LIVE_CALLS", default_value_t = 1000,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_live_calls: u32,

    /// Seconds a claimed call stays ours without renewal; a dead replica's calls
    /// are ended as `dialer_lost` this long after it stopped renewing them.
    #[arg(long, env = "RINGER_DIALER_LEASE_SECONDS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub lease_seconds: u64,

    /// Outbox relays this replica runs besides the standard one (raise it when
    /// `ringer_outbox_oldest_age_seconds` grows; on a small machine extra relays
    /// only contend for the same rows).
    #[arg(long, env = "RINGER_DIALER_EXTRA_RELAYS", default_value_t = 0)]
    pub extra_relays: u32,

    /// This replica's name on the calls it claims (default: hostname-pid-random).
    #[arg(long, env = "RINGER_DIALER_ID", default_value_t = default_dialer_id())]
    pub dialer_id: String,
}

impl Config {
    /// Settings for tests and tools: `common` plus every dialer default.
    pub fn new(common: CommonConfig) -> Self {
        Self {
            common,
            carrier: CarrierKind::Simulated,
            agent: AgentKind::Scripted,
            twilio: TwilioArgs::default(),
            llm: LlmAgentArgs::default(),
            org_concurrency: 10,
            max_live_calls: 1000,
            lease_seconds: 30,
            extra_relays: 0,
            dialer_id: default_dialer_id(),
        }
    }

    pub fn lease(&self) -> Duration {
        Duration::from_secs(self.lease_seconds)
    }
}

/// `hostname-pid-random`: unique per process, readable in the `dialer_id` column.
pub fn default_dialer_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "dialer".to_owned());
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}-{}-{}", std::process::id(), &random[..8])
}

/// Runs the dialer with the configured carrier and agent until `shutdown`.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    match config.carrier {
        CarrierKind::Simulated => {
            let carrier = SimulatedCarrier::new(config.common.time_scale);
            run_with_agent(config, carrier, None, shutdown).await
        }
        CarrierKind::Twilio | CarrierKind::TwilioFake => {
            let fake = config.carrier == CarrierKind::TwilioFake;
            let settings = config
                .twilio
                .settings(fake || config.common.dev_mode, config.common.time_scale)?;
            let name = if fake { "twilio-fake" } else { "twilio" };
            let carrier = TwilioCarrier::new(settings, name)?;
            let addr = config.twilio.twilio_http_addr;
            let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
                format!("binding the Twilio listener on {addr} (RINGER_TWILIO_HTTP_ADDR)")
            })?;
            // Callbacks and relay sockets are needed until the last call is
            // done, so the routes stop after the dialer, not with intake.
            let routes_stop = CancellationToken::new();
            let routes = tokio::spawn(twilio::serve(
                listener,
                carrier.router(),
                routes_stop.clone(),
            ));
            let speech: Arc<dyn SpeechChannel> = Arc::new(carrier.clone());
            let outcome = run_with_agent(config, carrier, Some(speech), shutdown).await;
            routes_stop.cancel();
            let _ = routes.await;
            outcome
        }
    }
}

/// Runs the dialer with `carrier` and the configured agent (which streams its
/// speech through `speech` where the carrier offers it).
async fn run_with_agent<C: Carrier>(
    config: Config,
    carrier: C,
    speech: Option<Arc<dyn SpeechChannel>>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    match config.agent {
        AgentKind::Scripted => run_with(config, carrier, ScriptedAgent, shutdown).await,
        AgentKind::Llm => {
            let settings = config.llm.settings(config.common.dev_mode)?;
            let agent = LlmAgent::with_speech(settings, speech)?;
            run_with(config, carrier, agent, shutdown).await
        }
    }
}

/// Runs the dialer with any carrier and agent (tests plug in their own).
pub async fn run_with<C: Carrier, A: Agent>(
    config: Config,
    carrier: C,
    agent: A,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    tracing::info!(
        dialer_id = %config.dialer_id,
        carrier = carrier.name(),
        time_scale = config.common.time_scale,
        "dialer starting"
    );
    let common = config.common.clone();
    run_worker(
        &common,
        "dialer",
        DEFAULT_HTTP_ADDR,
        shutdown,
        |infra, shutdown| serve(config, infra, carrier, agent, shutdown),
    )
    .await
}

async fn serve<C: Carrier, A: Agent>(
    config: Config,
    infra: Infrastructure,
    carrier: C,
    agent: A,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    // Writers for claims and call steps: a few connections, many calls each.
    let writers = (config.common.db_max_connections as usize / 4).clamp(1, 4);
    let (writer, writer_tasks) = Writer::start(
        infra.db.clone(),
        config.dialer_id.clone(),
        config.lease(),
        config.org_concurrency,
        writers,
    );
    let shared = Arc::new(Shared {
        db: infra.db.clone(),
        writer,
        carrier,
        agent,
        dialer_id: config.dialer_id.clone(),
        lease: config.lease(),
        time_scale: config.common.time_scale,
    });
    let live = Arc::new(LiveCalls::default());
    let calls = TaskTracker::new();
    let abandon = CancellationToken::new();
    // Lease renewal and cancel polling run until the last call is done; the
    // sweeper stops with intake.
    let calls_done = CancellationToken::new();
    let background = [
        tokio::spawn(worker::renew_leases(
            shared.clone(),
            live.clone(),
            calls_done.clone(),
        )),
        tokio::spawn(worker::watch_cancels(
            shared.clone(),
            live.clone(),
            calls_done.clone(),
        )),
        tokio::spawn(worker::sweep_lost_calls(shared.clone(), shutdown.clone())),
    ];
    // The dialer writes most of the events (three per call). Extra relays, beside
    // the one every binary runs, share the outbox through `SKIP LOCKED`; they may
    // publish a call's events out of order, which consumers undo by sequence number.
    let relays: Vec<_> = (0..config.extra_relays)
        .map(|_| {
            tokio::spawn(ringer::outbox::run_relay(
                infra.db.clone(),
                infra.broker.clone(),
                config.common.outbox_batch,
                Duration::from_millis(500),
                shutdown.clone(),
            ))
        })
        .collect();

    let step = Arc::new(DialerStep {
        shared: shared.clone(),
        broker: infra.broker.clone(),
        live: live.clone(),
        slots: Arc::new(Semaphore::new(config.max_live_calls as usize)),
        calls: calls.clone(),
        shutdown: shutdown.clone(),
        abandon: abandon.clone(),
    });
    let queue = infra.broker.names().queue(DIALER_QUEUE);
    let grace = config.common.shutdown_grace();
    // In-flight claims take milliseconds; the grace period is for the calls.
    let claim_grace = grace.min(Duration::from_secs(5));
    let consumed = ringer::consumer::run(
        &infra.broker,
        &queue,
        config.common.prefetch,
        claim_grace,
        step,
        shutdown.clone(),
    )
    .await;

    calls.close();
    if !calls.is_empty() {
        tracing::info!(
            live_calls = live.len(),
            ?grace,
            "waiting for live calls to finish"
        );
    }
    if tokio::time::timeout(grace, calls.wait()).await.is_err() {
        tracing::warn!(
            live_calls = live.len(),
            "live calls outlasted the grace period; hanging up and ending them as dialer_lost"
        );
        abandon.cancel();
        calls.wait().await;
        worker::give_up_calls(&shared, Duration::from_secs(5)).await;
    }
    calls_done.cancel();
    for relay in relays {
        let _ = relay.await;
    }
    for task in background {
        let _ = task.await;
    }
    // The writers stop once every sender (held through `shared`) is gone.
    drop(shared);
    for mut task in writer_tasks {
        if tokio::time::timeout(Duration::from_secs(5), &mut task)
            .await
            .is_err()
        {
            task.abort();
        }
    }
    // The outbox relay stopped with intake; publish what the last calls wrote.
    if let Err(error) = ringer::outbox::relay_batch(&infra.db, &infra.broker, i64::MAX).await {
        tracing::warn!(
            error = format!("{error:#}"),
            "final outbox pass failed; another replica's relay will publish"
        );
    }
    tracing::info!("dialer stopped");
    consumed
}
