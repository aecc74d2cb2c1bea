//! A whole ringer system in one process, for end-to-end tests: the five
//! services on one test database and one broker namespace, plus a webhook
//! receiver that records what it gets.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use ringer::config::CommonConfig;
use ringer::testing::{TestBroker, TestOrg, common_config, random_namespace, seed_org};
use serde_json::Value;
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// One webhook request as received.
#[derive(Debug, Clone)]
pub struct Received {
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Received {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("webhook bodies are JSON")
    }

    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

/// A local webhook receiver answering 200 and recording every request.
#[derive(Clone)]
pub struct Receiver {
    pub url: String,
    received: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    pub async fn start(shutdown: &CancellationToken) -> Self {
        let received = Arc::new(Mutex::new(Vec::new()));
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(record))
            .with_state(received.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind receiver");
        let addr: SocketAddr = listener.local_addr().expect("address");
        let token = shutdown.clone();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { token.cancelled().await })
                .await
        });
        Self {
            url: format!("http://{addr}/hook"),
            received,
        }
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().expect("receiver lock").clone()
    }

    /// Requests whose body concerns `call_id`.
    pub fn for_call(&self, call_id: &str) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| r.json()["data"]["call"]["id"] == call_id)
            .collect()
    }
}

async fn record(
    State(received): State<Arc<Mutex<Vec<Received>>>>,
    headers: HeaderMap,
    body: Bytes,
) -> &'static str {
    received
        .lock()
        .expect("receiver lock")
        .push(Received { headers, body });
    "ok"
}

/// A running service: its name and its task.
pub type Service = (&'static str, JoinHandle<anyhow::Result<()>>);

/// Starts the five services on `common()` settings (rate limit off). Each gets
/// its own child of `token`, as each is its own process in production: one
/// stopping (a lost broker, say) does not stop the others; cancelling `token`
/// stops them all. Returns the api's address.
pub async fn start_services(
    common: impl Fn() -> CommonConfig,
    token: &CancellationToken,
) -> (SocketAddr, Vec<Service>) {
    let mut api_config = ringer_api::Config::with_common(common());
    api_config.rate_limit_per_second = 0;
    let (addr, api) = ringer_api::start(api_config, token.child_token())
        .await
        .expect("api starts");
    let services: Vec<Service> = vec![
        ("api", api),
        (
            "dialer",
            tokio::spawn(ringer_dialer::run(
                ringer_dialer::Config::new(common()),
                token.child_token(),
            )),
        ),
        (
            "extractor",
            tokio::spawn(ringer_extractor::run(
                ringer_extractor::Config::with_common(common()),
                token.child_token(),
            )),
        ),
        (
            "billing",
            tokio::spawn(ringer_billing::run(
                ringer_billing::Config::new(common()),
                token.child_token(),
            )),
        ),
        (
            "webhook-dispatcher",
            tokio::spawn(ringer_webhook_dispatcher::run(
                ringer_webhook_dispatcher::Config::with_common(common()),
                token.child_token(),
            )),
        ),
    ];
    (addr, services)
}

/// The five services, running.
pub struct System {
    pub api: String,
    pub client: reqwest::Client,
    pub pool: PgPool,
    pub org: TestOrg,
    pub broker: TestBroker,
    pub receiver: Receiver,
    shutdown: CancellationToken,
    services: Vec<Service>,
}

/// How to start a [`System`]; the defaults suit most tests.
#[derive(Clone, Default)]
pub struct Options {
    /// Simulated-time factor (0 = no waiting).
    pub time_scale: f64,
    /// Reuse a broker namespace (a second system taking over from a first).
    pub namespace: Option<String>,
    /// Reuse an organisation (and its API key).
    pub org: Option<TestOrg>,
    /// Reuse a webhook receiver.
    pub receiver: Option<Receiver>,
    /// Where the services reach Postgres and RabbitMQ (a [`Proxy`], say);
    /// the test's own pool and broker connection always go direct.
    pub database_url: Option<String>,
    pub amqp_url: Option<String>,
}

impl System {
    /// Starts everything with `time_scale` (0 = no simulated waiting).
    pub async fn start(pool: PgPool, time_scale: f64) -> Self {
        Self::start_with(
            pool,
            Options {
                time_scale,
                ..Options::default()
            },
        )
        .await
    }

    pub async fn start_with(pool: PgPool, options: Options) -> Self {
        if std::env::var_os("TEST_LOG").is_some() {
            ringer::telemetry::init(ringer::config::LogFormat::Pretty);
        }
        let time_scale = options.time_scale;
        let namespace = options.namespace.clone().unwrap_or_else(random_namespace);
        let broker = TestBroker::start_scaled(&namespace, 5, time_scale).await;
        let shutdown = CancellationToken::new();
        let common = || {
            let mut config = common_config(&pool, &namespace);
            config.time_scale = time_scale;
            if let Some(url) = &options.database_url {
                config.database_url = url.clone();
            }
            if let Some(url) = &options.amqp_url {
                config.amqp_url = url.clone();
            }
            config
        };
        let (addr, services) = start_services(common, &shutdown).await;
        let org = match options.org {
            Some(org) => org,
            None => seed_org(&pool, 500_000).await,
        };
        let receiver = match options.receiver {
            Some(receiver) => receiver,
            // The receiver outlives the system, so that a successor can reuse it.
            None => Receiver::start(&CancellationToken::new()).await,
        };
        Self {
            api: format!("http://{addr}"),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .build()
                .expect("client"),
            pool,
            org,
            broker,
            receiver,
            shutdown,
            services,
        }
    }

    /// True while no service has stopped.
    pub fn running(&self) -> bool {
        self.services
            .iter()
            .all(|(_, service)| !service.is_finished())
    }

    pub async fn post(&self, path: &str, body: &Value) -> reqwest::Response {
        self.client
            .post(format!("{}{path}", self.api))
            .bearer_auth(&self.org.api_key)
            .json(body)
            .send()
            .await
            .expect("request sent")
    }

    pub async fn get(&self, path: &str) -> Value {
        let response = self
            .client
            .get(format!("{}{path}", self.api))
            .bearer_auth(&self.org.api_key)
            .send()
            .await
            .expect("request sent");
        assert!(
            response.status().is_success(),
            "GET {path}: {}",
            response.status()
        );
        response.json().await.expect("JSON")
    }

    /// Polls the call until `done` holds or `timeout` passes; returns the last view.
    pub async fn wait_for_call(
        &self,
        id: &str,
        timeout: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let call = self.get(&format!("/v1/calls/{id}")).await;
            if done(&call) || tokio::time::Instant::now() > deadline {
                return call;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the receiver has `count` requests for the call (or `timeout`).
    pub async fn wait_for_webhooks(
        &self,
        call_id: &str,
        count: usize,
        timeout: Duration,
    ) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let received = self.receiver.for_call(call_id);
            if received.len() >= count || tokio::time::Instant::now() > deadline {
                // A moment more, so that a duplicate would show up.
                tokio::time::sleep(Duration::from_millis(300)).await;
                return self.receiver.for_call(call_id);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The org's secret for inline `webhook_url` deliveries.
    pub async fn org_webhook_secret(&self) -> String {
        let (secret,): (String,) = sqlx::query_as("SELECT webhook_secret FROM orgs WHERE id = $1")
            .bind(self.org.id)
            .fetch_one(&self.pool)
            .await
            .expect("org secret");
        secret
    }

    pub async fn stop(self) {
        let broker = self.shut_down().await;
        broker.cleanup().await;
    }

    /// Stops every service as SIGTERM does (each must exit cleanly within 15 s)
    /// and leaves the namespace, with whatever is queued, for a successor.
    pub async fn shut_down(self) -> TestBroker {
        self.shutdown.cancel();
        for (_, service) in self.services {
            match tokio::time::timeout(Duration::from_secs(15), service).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(error))) => panic!("a service failed: {error:#}"),
                Ok(Err(join)) => panic!("a service panicked: {join}"),
                Err(_) => panic!("a service did not stop within 15 s of shutdown"),
            }
        }
        self.broker
    }
}

/// A TCP proxy in front of Postgres or RabbitMQ that a test can break, to show
/// what the services do when the real server restarts: `cut` drops every open
/// connection, `refuse(true)` turns new ones away until `refuse(false)`.
pub struct Proxy {
    pub addr: SocketAddr,
    refusing: Arc<AtomicBool>,
    open: Arc<AtomicUsize>,
    cut: tokio::sync::watch::Sender<u64>,
}

impl Proxy {
    pub async fn start(upstream: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let refusing = Arc::new(AtomicBool::new(false));
        let open = Arc::new(AtomicUsize::new(0));
        let (cut, _) = tokio::sync::watch::channel(0u64);
        let upstream = upstream.to_owned();
        tokio::spawn({
            let refusing = refusing.clone();
            let open = open.clone();
            let cut = cut.clone();
            async move {
                loop {
                    let Ok((mut inbound, _)) = listener.accept().await else {
                        continue;
                    };
                    if refusing.load(Ordering::SeqCst) {
                        drop(inbound);
                        continue;
                    }
                    let mut cut = cut.subscribe();
                    let upstream = upstream.clone();
                    let open = open.clone();
                    tokio::spawn(async move {
                        let Ok(mut outbound) = tokio::net::TcpStream::connect(&upstream).await
                        else {
                            return;
                        };
                        open.fetch_add(1, Ordering::SeqCst);
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                            _ = cut.changed() => {}
                        }
                        open.fetch_sub(1, Ordering::SeqCst);
                    });
                }
            }
        });
        Self {
            addr,
            refusing,
            open,
            cut,
        }
    }

    /// `url` (postgres:// or amqp://) pointed at the proxy instead.
    pub fn url_for(&self, url: &str) -> String {
        let mut parsed = url::Url::parse(url).expect("a valid URL");
        parsed
            .set_host(Some(&self.addr.ip().to_string()))
            .expect("host");
        parsed.set_port(Some(self.addr.port())).expect("port");
        parsed.to_string()
    }

    /// Connections currently open through the proxy.
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// Drops every open connection.
    pub fn cut(&self) {
        self.cut.send_modify(|generation| *generation += 1);
    }

    pub fn refuse(&self, refusing: bool) {
        self.refusing.store(refusing, Ordering::SeqCst);
    }
}
