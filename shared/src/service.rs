//! What every binary does at start-up: connect, migrate-check, declare topology,
//! run the outbox relay and the operational HTTP routes.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::broker::{self, Broker, Names};
use crate::config::CommonConfig;
use crate::{db, ops, outbox};

/// A new process's name: `ringer-<service>/` and 8 random hex digits.
pub fn instance_name(service: &str) -> String {
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!("ringer-{service}/{}", &random[..8])
}

/// Database and broker, connected, topology declared.
#[derive(Clone, Debug)]
pub struct Infrastructure {
    pub db: PgPool,
    pub broker: Broker,
    /// `ringer-<service>/<8 hex>`, new at every start: the process's name in
    /// Postgres (`application_name`, unless `DATABASE_URL` sets one) and in
    /// RabbitMQ (the connection name), so that an operator can match a
    /// replica's sessions in `pg_stat_activity` with its broker connection.
    /// A pid would not do: every container's process is pid 1.
    pub instance: String,
}

/// How long closing the database pool may wait for its connections to come
/// back (a task still holding one would otherwise hold the exit for ever).
pub const POOL_CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

impl Infrastructure {
    /// Closes the broker connection and the database pool, each within its
    /// timeout, so that a shutdown always ends.
    pub async fn close(&self) {
        self.broker.close().await;
        if tokio::time::timeout(POOL_CLOSE_TIMEOUT, self.db.close())
            .await
            .is_err()
        {
            tracing::warn!(timeout = ?POOL_CLOSE_TIMEOUT, "database connections still in use at exit; leaving them");
        }
    }

    pub async fn connect(config: &CommonConfig, service: &str) -> anyhow::Result<Self> {
        // One name per process: its commits wake its own outbox relay.
        let instance = instance_name(service);
        let db = db::connect_named(&config.database_url, config.db_max_connections, &instance)
            .await
            .context("connecting to Postgres (DATABASE_URL)")?;
        let names = Names::new(&config.namespace);
        let broker = Broker::connect(&config.amqp_url, names.clone(), &instance)
            .await
            .context("connecting to RabbitMQ (AMQP_URL)")?;
        let channel = broker.channel().await?;
        broker::declare_topology(&channel, &names, config.delivery_limit, config.time_scale)
            .await
            .context("declaring the broker topology")?;
        let _ = channel.close(200, "topology declared".into()).await;
        tracing::info!(%instance, "connected to Postgres and RabbitMQ");
        Ok(Self {
            db,
            broker,
            instance,
        })
    }

    pub fn readiness(&self, shutdown: &CancellationToken) -> ops::Readiness {
        ops::Readiness {
            db: self.db.clone(),
            broker: self.broker.clone(),
            shutdown: shutdown.clone(),
        }
    }

    /// Watches the broker connection. lapin does not reconnect, so a binary whose
    /// connection is gone (RabbitMQ restarted, say) stops everything and exits
    /// non-zero; its supervisor (Kubernetes, compose, `make up`) starts it again,
    /// which reconnects and re-declares the topology. Database connections need
    /// no such care: the pool replaces broken ones by itself.
    pub fn watch_broker(&self, shutdown: &CancellationToken) -> BrokerWatch {
        let task = tokio::spawn({
            let broker = self.broker.clone();
            let shutdown = shutdown.clone();
            async move {
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(BROKER_WATCH_INTERVAL) => {}
                    }
                    if !broker.is_connected() {
                        tracing::error!(
                            "lost the connection to RabbitMQ; stopping so that the supervisor restarts this process"
                        );
                        metrics::counter!("ringer_broker_connection_lost_total").increment(1);
                        shutdown.cancel();
                        return;
                    }
                }
            }
        });
        BrokerWatch {
            task,
            broker: self.broker.clone(),
        }
    }

    /// Starts the outbox relay; it stops when `shutdown` is cancelled.
    pub fn spawn_outbox_relay(
        &self,
        config: &CommonConfig,
        shutdown: &CancellationToken,
    ) -> JoinHandle<()> {
        tokio::spawn(outbox::run_relay(
            self.db.clone(),
            self.broker.clone(),
            config.outbox_batch,
            Duration::from_millis(500),
            shutdown.clone(),
        ))
    }
}

/// How often [`Infrastructure::watch_broker`] looks at the connection.
pub const BROKER_WATCH_INTERVAL: Duration = Duration::from_millis(500);

/// See [`Infrastructure::watch_broker`].
#[derive(Debug)]
pub struct BrokerWatch {
    task: JoinHandle<()>,
    broker: Broker,
}

impl BrokerWatch {
    /// Stops watching; an error if the connection was lost (the exit is then
    /// non-zero; a lapin connection never comes back once gone). Call it
    /// before closing the connection.
    pub fn finish(self) -> anyhow::Result<()> {
        self.task.abort();
        if !self.broker.is_connected() {
            anyhow::bail!("lost the connection to RabbitMQ (AMQP_URL)");
        }
        Ok(())
    }
}

/// Binds `addr` (or `default` when unset) and serves `app` plus the operational
/// routes until `shutdown`. Returns the bound address (port 0 picks a free one).
pub async fn spawn_http(
    addr: Option<SocketAddr>,
    default: SocketAddr,
    app: axum::Router,
    shutdown: &CancellationToken,
) -> anyhow::Result<(SocketAddr, JoinHandle<std::io::Result<()>>)> {
    let addr = addr.unwrap_or(default);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the HTTP listener on {addr} (RINGER_HTTP_ADDR)"))?;
    let local = listener.local_addr()?;
    tracing::info!(%local, "HTTP listening");
    let handle = tokio::spawn(ops::serve(listener, app, shutdown.clone()));
    Ok((local, handle))
}

/// Runs a worker's standard life: HTTP ops routes, outbox relay, and `work`
/// (its consume loops) until `shutdown`; then waits for everything to stop.
pub async fn run_worker<F>(
    config: &CommonConfig,
    service: &str,
    default_addr: SocketAddr,
    shutdown: CancellationToken,
    work: impl FnOnce(Infrastructure, CancellationToken) -> F,
) -> anyhow::Result<()>
where
    F: std::future::Future<Output = anyhow::Result<()>>,
{
    let infra = Infrastructure::connect(config, service).await?;
    let (_, http) = spawn_http(
        config.http_addr,
        default_addr,
        ops::router(infra.readiness(&shutdown)),
        &shutdown,
    )
    .await?;
    let relay = infra.spawn_outbox_relay(config, &shutdown);
    let watch = infra.watch_broker(&shutdown);
    let result = work(infra.clone(), shutdown.clone()).await;
    // Whatever stopped the work (shutdown or a broken consumer) stops the rest too.
    shutdown.cancel();
    let _ = relay.await;
    let _ = http.await;
    let connection = watch.finish();
    infra.close().await;
    // A lost broker explains a failed consumer better than the consumer's own error.
    connection.and(result)
}
