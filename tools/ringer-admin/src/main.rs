//! ringer-admin: the operators' command line.

mod money;
mod render;

use std::time::Duration;

use anyhow::Context;
use clap::{ArgGroup, Parser, Subcommand};
use ringer::broker::{Broker, Names};
use ringer_admin::{calls, dlq, outbox};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use uuid::Uuid;

#[derive(Debug, Parser)]
#[command(name = "ringer-admin", about = "Operate a ringer deployment")]
struct Cli {
    /// Postgres connection string.
    #[arg(
        long,
        env = "DATABASE_URL",
        global = true,
        default_value = "postgres://postgres@127.0.0.1:5432/ringer"
    )]
    database_url: String,

    /// RabbitMQ connection string.
    #[arg(
        long,
        env = "AMQP_URL",
        global = true,
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    amqp_url: String,

    /// Prefix of the deployment's queue and exchange names (its RINGER_NAMESPACE).
    #[arg(long, env = "RINGER_NAMESPACE", global = true, default_value = "")]
    namespace: String,

    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,

    #[command(subcommand)]
    command: Command,
}

/// Set-up commands that only need the database.
#[derive(Debug, Clone, Subcommand)]
enum DbCommand {
    /// Apply the database migrations.
    Migrate,
    /// Organisations.
    #[command(subcommand)]
    Org(OrgCommand),
    /// API keys.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Add credit to an organisation, e.g. `credit ORG 10.00` (dollars) or `credit ORG 1000000mc`.
    Credit {
        org: Uuid,
        /// Dollars (`10`, `10.50`) or milli-cents with an `mc` suffix.
        amount: String,
        #[arg(long, default_value = "operator top-up")]
        description: String,
    },
    /// Phone numbers.
    #[command(subcommand)]
    Number(NumberCommand),
}

#[derive(Debug, Clone, Subcommand)]
enum TopologyCommand {
    /// Declare the topology (every service also does this at start-up).
    Declare {
        /// Work queues' delivery limit (the services' RINGER_DELIVERY_LIMIT).
        #[arg(long, env = "RINGER_DELIVERY_LIMIT", default_value_t = 5)]
        delivery_limit: u32,
        /// The services' RINGER_TIME_SCALE (delay queue TTLs depend on it).
        #[arg(long, env = "RINGER_TIME_SCALE", default_value_t = 1.0)]
        time_scale: f64,
    },
    /// Delete every queue and exchange of the namespace, messages included
    /// (for throw-away namespaces of tests and benchmarks).
    Delete {
        /// Confirm the deletion (required).
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Debug, Subcommand)]
enum Command {
    #[command(flatten)]
    Db(DbCommand),
    /// Dead-letter queues: list, inspect, replay and purge dead-lettered messages.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// The broker topology of the namespace (exchanges, work queues, DLQs, delay queues).
    #[command(subcommand)]
    Topology(TopologyCommand),
    /// An organisation's ledger entries, balance and invariant check (non-zero exit on drift).
    Ledger { org: Uuid },
    /// The transactional outbox.
    #[command(subcommand)]
    Outbox(OutboxCommand),
    /// Calls.
    #[command(subcommand)]
    Calls(CallsCommand),
}

#[derive(Debug, Subcommand)]
enum DlqCommand {
    /// Every dead-letter queue with its depth and the age of its oldest message.
    List,
    /// Describe the messages at the head of a dead-letter queue, leaving them in place.
    Show {
        /// `dialer`, `dialer.dlq`, `extractor`, `billing`, `webhooks.events`, `webhooks.deliveries`.
        queue: String,
        /// How many messages to show.
        #[arg(long, default_value_t = 10)]
        limit: usize,
        /// The work queues' delivery limit (as the services are configured), to count attempts.
        #[arg(long, env = "RINGER_DELIVERY_LIMIT", default_value_t = 5)]
        delivery_limit: u32,
    },
    /// Republish dead letters to the queue they died in, then remove them from the DLQ.
    #[command(group(ArgGroup::new("which").required(true).args(["id", "all"])))]
    Replay {
        queue: String,
        /// Replay the message(s) with this message id.
        #[arg(long)]
        id: Option<String>,
        /// Replay every message in the queue.
        #[arg(long)]
        all: bool,
        /// Only print what would be replayed.
        #[arg(long)]
        dry_run: bool,
    },
    /// Delete every message of a dead-letter queue.
    Purge {
        queue: String,
        /// Confirm the deletion (required).
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Debug, Subcommand)]
enum OutboxCommand {
    /// Events committed but not yet published, and the age of the oldest.
    Status,
}

#[derive(Debug, Subcommand)]
enum CallsCommand {
    /// Calls in a non-terminal state for longer than they could be.
    Stuck {
        /// queued, initiated or ringing for longer than this many seconds.
        #[arg(long, default_value_t = 600)]
        dialing_seconds: u32,
        /// in_progress for this many seconds past the call's max_duration_seconds.
        #[arg(long, default_value_t = 300)]
        overrun_seconds: u32,
        /// Ended this many seconds ago without completing (result or billing missing).
        #[arg(long, default_value_t = 600)]
        completion_seconds: u32,
        /// Only this organisation's calls.
        #[arg(long)]
        org: Option<Uuid>,
        /// At most this many calls, oldest first.
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
}

#[derive(Debug, Clone, Subcommand)]
enum OrgCommand {
    /// Create an organisation with its starting credit and print its id.
    Create {
        name: String,
        /// Starting credit in milli-cents.
        #[arg(
            long,
            env = "RINGER_STARTING_CREDIT_MILLI_CENTS",
            default_value_t = 500_000
        )]
        starting_credit_milli_cents: i64,
    },
}

#[derive(Debug, Clone, Subcommand)]
enum KeyCommand {
    /// Create an API key for an organisation (printed once).
    Create {
        org: Uuid,
        #[arg(long, default_value = "default")]
        name: String,
    },
    /// Revoke a key by id or by its visible prefix.
    Revoke { key: String },
}

#[derive(Debug, Clone, Subcommand)]
enum NumberCommand {
    /// Give an organisation a phone number.
    Add {
        org: Uuid,
        /// E.164, like +14155550123.
        e164: String,
        #[arg(long, default_value = "US")]
        country: String,
        #[arg(long, default_value = "local")]
        number_type: String,
    },
}

fn print(json: bool, value: serde_json::Value, text: String) {
    if json {
        println!("{value}");
    } else {
        println!("{text}");
    }
}

async fn connect_db(url: &str) -> anyhow::Result<PgPool> {
    PgPool::connect(url)
        .await
        .context("connecting to Postgres (DATABASE_URL)")
}

async fn connect_broker(cli: &Cli) -> anyhow::Result<Broker> {
    Broker::connect(&cli.amqp_url, Names::new(&cli.namespace), "ringer-admin")
        .await
        .context("connecting to RabbitMQ (AMQP_URL)")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match &cli.command {
        Command::Db(command) => {
            let pool = connect_db(&cli.database_url).await?;
            run_db_command(&pool, cli.json, command).await
        }
        Command::Dlq(command) => run_dlq(&cli, command).await,
        Command::Ledger { org } => {
            let pool = connect_db(&cli.database_url).await?;
            ringer_admin::ledger::run(&pool, *org, cli.json).await
        }
        Command::Topology(command) => {
            let broker = connect_broker(&cli).await?;
            let channel = broker.channel().await?;
            let names = broker.names().clone();
            let done = match command {
                TopologyCommand::Declare {
                    delivery_limit,
                    time_scale,
                } => {
                    ringer::broker::declare_topology(
                        &channel,
                        &names,
                        *delivery_limit,
                        *time_scale,
                    )
                    .await?;
                    "declared"
                }
                TopologyCommand::Delete { yes } => {
                    anyhow::ensure!(
                        *yes,
                        "this deletes every queue of namespace {:?} with its messages; pass --yes",
                        names.namespace()
                    );
                    anyhow::ensure!(
                        !names.namespace().is_empty(),
                        "refusing to delete the un-namespaced (production) topology"
                    );
                    ringer::broker::delete_topology(&channel, &names).await?;
                    "deleted"
                }
            };
            broker.close().await;
            let namespace = names.namespace().to_owned();
            if cli.json {
                println!(
                    "{}",
                    serde_json::json!({ "namespace": namespace, "topology": done })
                );
            } else {
                println!("topology of namespace {namespace:?} {done}");
            }
            Ok(())
        }
        Command::Outbox(OutboxCommand::Status) => {
            let pool = connect_db(&cli.database_url).await?;
            let status = outbox::status(&pool).await?;
            render::outbox_status(cli.json, &status)
        }
        Command::Calls(CallsCommand::Stuck {
            dialing_seconds,
            overrun_seconds,
            completion_seconds,
            org,
            limit,
        }) => {
            let pool = connect_db(&cli.database_url).await?;
            let thresholds = calls::Thresholds {
                dialing_seconds: *dialing_seconds,
                overrun_seconds: *overrun_seconds,
                completion_seconds: *completion_seconds,
            };
            let stuck = calls::stuck(&pool, thresholds, *org, *limit).await?;
            render::stuck_calls(cli.json, &stuck)
        }
    }
}

async fn run_db_command(pool: &PgPool, json: bool, command: &DbCommand) -> anyhow::Result<()> {
    match command.clone() {
        DbCommand::Migrate => {
            ringer::db::migrate(pool)
                .await
                .context("applying migrations")?;
            print(
                json,
                serde_json::json!({"migrated": true}),
                "migrations applied".to_owned(),
            );
        }
        DbCommand::Org(OrgCommand::Create {
            name,
            starting_credit_milli_cents,
        }) => {
            anyhow::ensure!(
                starting_credit_milli_cents >= 0,
                "the starting credit cannot be negative"
            );
            let mut tx = pool.begin().await?;
            let org = ringer::orgs::create_org(&mut tx, &name, starting_credit_milli_cents).await?;
            tx.commit().await?;
            print(
                json,
                serde_json::json!({"id": org.id, "name": org.name}),
                org.id.to_string(),
            );
        }
        DbCommand::Key(KeyCommand::Create { org, name }) => {
            let mut conn = pool.acquire().await?;
            ensure_org(&mut conn, org).await?;
            let key = ringer::orgs::create_api_key(&mut conn, org, &name).await?;
            print(
                json,
                serde_json::json!({"id": key.id, "key": key.key, "prefix": key.prefix}),
                key.key,
            );
        }
        DbCommand::Key(KeyCommand::Revoke { key }) => {
            let mut conn = pool.acquire().await?;
            let revoked = ringer::orgs::revoke_api_key(&mut conn, &key).await?;
            anyhow::ensure!(revoked > 0, "no active key matches {key:?}");
            print(
                json,
                serde_json::json!({"revoked": revoked}),
                format!("revoked {revoked} key(s)"),
            );
        }
        DbCommand::Credit {
            org,
            amount,
            description,
        } => {
            let amount = money::parse_amount(&amount)?;
            let mut tx = pool.begin().await?;
            ensure_org(&mut tx, org).await?;
            ringer::ledger::credit(&mut tx, org, amount, &description).await?;
            let balance = ringer::ledger::balance(&mut tx, org).await?;
            tx.commit().await?;
            print(
                json,
                serde_json::json!({"org_id": org, "credited_milli_cents": amount, "available_milli_cents": balance.available_milli_cents}),
                format!(
                    "credited {} to {org}; available {}",
                    ringer::money::format_dollars(amount),
                    ringer::money::format_dollars(balance.available_milli_cents)
                ),
            );
        }
        DbCommand::Number(NumberCommand::Add {
            org,
            e164,
            country,
            number_type,
        }) => {
            anyhow::ensure!(
                ringer::orgs::is_e164(&e164),
                "{e164:?} is not an E.164 number like +14155550123"
            );
            let mut conn = pool.acquire().await?;
            ensure_org(&mut conn, org).await?;
            let number = ringer::orgs::add_number(&mut conn, org, &e164, &country, &number_type, 0)
                .await
                .map_err(|error| {
                    if ringer::db::is_constraint_violation(&error, "phone_numbers_active_e164") {
                        anyhow::anyhow!("{e164} is already active in an organisation")
                    } else {
                        error.into()
                    }
                })?;
            print(
                json,
                serde_json::to_value(&number)?,
                format!("{} {} ({})", number.id, number.e164, number.status),
            );
        }
    }
    Ok(())
}

async fn run_dlq(cli: &Cli, command: &DlqCommand) -> anyhow::Result<()> {
    let broker = connect_broker(cli).await?;
    let outcome = run_dlq_command(cli, &broker, command).await;
    broker.close().await;
    outcome
}

async fn run_dlq_command(cli: &Cli, broker: &Broker, command: &DlqCommand) -> anyhow::Result<()> {
    let names = broker.names();
    match command {
        DlqCommand::List => {
            let summaries = dlq::list(broker).await?;
            render::dlq_list(cli.json, &summaries)
        }
        DlqCommand::Show {
            queue,
            limit,
            delivery_limit,
        } => {
            let queue = dlq::resolve(names, queue)?;
            // Call statuses are a help, not a requirement: without a reachable
            // database the messages are still shown.
            let pool = PgPoolOptions::new()
                .max_connections(1)
                .acquire_timeout(Duration::from_secs(5))
                .connect_lazy(&cli.database_url)
                .ok();
            let report = dlq::show(broker, pool.as_ref(), queue, *limit, *delivery_limit).await?;
            render::dlq_show(cli.json, &report)
        }
        DlqCommand::Replay {
            queue,
            id,
            all: _,
            dry_run,
        } => {
            let queue = dlq::resolve(names, queue)?;
            let selection = match id {
                Some(id) => dlq::Selection::Id(id.clone()),
                None => dlq::Selection::All,
            };
            let report = dlq::replay(broker, queue, &selection, *dry_run).await?;
            render::dlq_replay(cli.json, &report)
        }
        DlqCommand::Purge { queue, yes } => {
            let queue = dlq::resolve(names, queue)?;
            if !yes {
                let depth = dlq::depth_of(broker, &queue).await?;
                anyhow::bail!(
                    "refusing to purge {depth} message(s) from {} without --yes",
                    queue.dlq
                );
            }
            let purged = dlq::purge(broker, &queue).await?;
            render::dlq_purge(cli.json, &queue, purged)
        }
    }
}

async fn ensure_org(conn: &mut sqlx::PgConnection, org: Uuid) -> anyhow::Result<()> {
    let found: Option<(Uuid,)> = sqlx::query_as("SELECT id FROM orgs WHERE id = $1")
        .bind(org)
        .fetch_optional(conn)
        .await?;
    anyhow::ensure!(found.is_some(), "no organisation {org}");
    Ok(())
}
