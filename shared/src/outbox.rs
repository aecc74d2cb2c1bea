//! The transactional outbox: events are written in the transaction of the change
//! they announce, and a relay (running in every binary) publishes them.

use std::time::{Duration, Instant};

use lapin::Confirmation;
use lapin::types::{AMQPValue, FieldTable};
use sqlx::postgres::PgListener;
use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::broker::{Broker, CONFIRM_TIMEOUT, Outgoing, PublishError, check_confirmation};
use crate::call::Call;
use crate::events::{Event, EventType};
use crate::telemetry;

/// Postgres channel notified (by a trigger) when outbox rows are committed by
/// a session that is not a ringer binary's own (ringer-admin, tests, psql).
/// A binary's sessions notify the channel of their process instead (see
/// migration 0008 and [`run_relay`]).
pub const NOTIFY_CHANNEL: &str = "ringer_outbox";

/// Writes `event_type` for `call` to the outbox, taking the call's next sequence
/// number. Must run in the transaction that made the change.
pub async fn emit(
    conn: &mut PgConnection,
    org_id: Uuid,
    event_type: EventType,
    call: &Call,
) -> sqlx::Result<Event> {
    let (sequence,): (i64,) = sqlx::query_as(
        "UPDATE calls SET event_seq = event_seq + 1 WHERE id = $1 RETURNING event_seq",
    )
    .bind(call.id)
    .fetch_one(&mut *conn)
    .await?;
    emit_numbered(conn, org_id, event_type, call, sequence).await
}

/// Like [`emit`], for a caller whose own update of the call already took the
/// sequence number (`SET event_seq = event_seq + 1 … RETURNING event_seq`,
/// see [`crate::call::NumberedCall`]): one statement and one row version less.
pub async fn emit_numbered(
    conn: &mut PgConnection,
    org_id: Uuid,
    event_type: EventType,
    call: &Call,
    sequence: i64,
) -> sqlx::Result<Event> {
    let event = Event::new(event_type, org_id, call.clone(), sequence);
    enqueue(conn, &event).await?;
    Ok(event)
}

/// Writes an already built event (its sequence taken by the caller) to the outbox.
pub async fn enqueue(conn: &mut PgConnection, event: &Event) -> sqlx::Result<()> {
    let payload =
        serde_json::to_value(event).map_err(|error| sqlx::Error::Encode(Box::new(error)))?;
    let traceparent = telemetry::current().map(|context| context.child().to_header());
    sqlx::query(
        "INSERT INTO outbox (event_id, routing_key, payload, traceparent) VALUES ($1, $2, $3, $4)",
    )
    .bind(event.id)
    .bind(event.event_type.routing_key())
    .bind(payload)
    .bind(traceparent)
    .execute(conn)
    .await?;
    Ok(())
}

#[derive(sqlx::FromRow)]
struct PendingRow {
    id: i64,
    event_id: Uuid,
    routing_key: String,
    payload: serde_json::Value,
    traceparent: Option<String>,
}

/// Sends every row, then waits for all their confirms (one round trip for the batch).
async fn publish_rows(
    broker: &Broker,
    rows: &[PendingRow],
) -> Result<Vec<Result<Confirmation, PublishError>>, PublishError> {
    let exchange = broker.names().events_exchange();
    let mut confirms = Vec::with_capacity(rows.len());
    for row in rows {
        let payload = serde_json::to_vec(&row.payload).expect("a JSON value serialises");
        let mut headers = FieldTable::default();
        if let Some(traceparent) = &row.traceparent {
            headers.insert(
                "traceparent".into(),
                AMQPValue::LongString(traceparent.as_str().into()),
            );
        }
        let message = Outgoing {
            exchange: &exchange,
            routing_key: &row.routing_key,
            payload: &payload,
            message_id: Some(row.event_id.to_string()),
            headers,
        };
        confirms.push(broker.start_publish(&message).await?);
    }
    let mut confirmations = Vec::with_capacity(confirms.len());
    for confirm in confirms {
        confirmations.push(confirm.await.map_err(PublishError::from));
    }
    Ok(confirmations)
}

/// Publishes up to `batch` unpublished rows and marks the confirmed ones
/// published, in one transaction holding their row locks. `SKIP LOCKED` lets
/// any number of relays share the table without publishing a row twice
/// (a crash after the publish and before the commit republishes the batch:
/// consumers are idempotent). Returns how many rows were published.
pub async fn relay_batch(pool: &PgPool, broker: &Broker, batch: i64) -> anyhow::Result<usize> {
    let mut tx = pool.begin().await?;
    let rows: Vec<PendingRow> = sqlx::query_as(
        "SELECT id, event_id, routing_key, payload, traceparent FROM outbox \
         WHERE published_at IS NULL ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
    )
    .bind(batch)
    .fetch_all(&mut *tx)
    .await?;
    if rows.is_empty() {
        return Ok(0);
    }

    // A broker that stops confirming (blocked by a resource alarm, say) must
    // not hold the rows' locks for ever: give up, roll back, try again later.
    let confirmations = tokio::time::timeout(CONFIRM_TIMEOUT, publish_rows(broker, &rows))
        .await
        .map_err(|_| PublishError::Timeout(CONFIRM_TIMEOUT))??;

    let returned = returned_event_ids(&confirmations);
    let mut published = Vec::with_capacity(rows.len());
    let mut failures = 0usize;
    for (row, confirmation) in rows.iter().zip(confirmations) {
        let outcome = match (&returned, confirmation) {
            (Some(returned), Ok(Confirmation::Ack(_))) => {
                if returned.contains(&row.event_id) {
                    Err(PublishError::Unroutable(row.routing_key.clone()))
                } else {
                    Ok(())
                }
            }
            (_, confirmation) => confirmation.and_then(|c| check_confirmation(c, &row.routing_key)),
        };
        match outcome {
            Ok(()) => published.push(row.id),
            Err(PublishError::Unroutable(_)) if !must_be_routed(&row.routing_key) => {
                metrics::counter!("ringer_outbox_unrouted_total", "routing_key" => row.routing_key.clone())
                    .increment(1);
                published.push(row.id);
            }
            Err(error) => {
                failures += 1;
                tracing::warn!(%error, event_id = %row.event_id, routing_key = %row.routing_key, "outbox publish not confirmed; will retry");
            }
        }
    }
    sqlx::query("UPDATE outbox SET published_at = now() WHERE id = ANY($1)")
        .bind(&published)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    metrics::counter!("ringer_outbox_published_total").increment(published.len() as u64);
    if failures > 0 {
        metrics::counter!("ringer_outbox_publish_failures_total").increment(failures as u64);
        anyhow::bail!("{failures} outbox events were not confirmed by the broker");
    }
    Ok(published.len())
}

/// The event ids of every message the broker returned during a batch, or None
/// when a returned message carries no event id (then each confirmation is
/// taken as it came).
///
/// RabbitMQ returns an unroutable message just before acknowledging it, but an
/// acknowledgement may cover several publishes at once, and lapin hands the
/// return to whichever of their confirms it resolves first. Within one batch
/// on a channel nothing else publishes on (see [`run_relay`]), every return
/// belongs to a row of the batch: its message id (the event id) says which.
fn returned_event_ids(
    confirmations: &[Result<Confirmation, PublishError>],
) -> Option<std::collections::HashSet<Uuid>> {
    let mut returned = std::collections::HashSet::new();
    for confirmation in confirmations.iter().flatten() {
        if let Confirmation::Ack(Some(message)) | Confirmation::Nack(Some(message)) = confirmation {
            let id = message.delivery.properties.message_id().as_ref()?;
            returned.insert(id.as_str().parse().ok()?);
        }
    }
    Some(returned)
}

/// Shortest time between the starts of two relay passes woken by notifications.
const PASS_GAP: Duration = Duration::from_millis(10);

/// Runs the relay until `shutdown`: publishes whenever a commit notifies the
/// channel, and polls every `poll` in case a notification was missed.
///
/// A relay listens on the channel of its own process (`outbox_channel()`
/// of a session of `pool`): commits made through `pool` wake it, and not the
/// relays of other processes, which would only race it for the same rows.
/// It also listens on the shared [`NOTIFY_CHANNEL`] for commits of other
/// sessions, and its polling publishes what a process that died left behind.
pub async fn run_relay(
    pool: PgPool,
    broker: Broker,
    batch: i64,
    poll: Duration,
    shutdown: CancellationToken,
) {
    // A publisher channel of its own: the returns and acknowledgements on it
    // are this relay's alone (see `returned_event_ids`).
    let shared = broker;
    let mut broker = own_publisher(&shared).await;
    let mut listener = match listen(&pool).await {
        Ok(listener) => Some(listener),
        Err(error) => {
            tracing::warn!(%error, "outbox relay cannot LISTEN; polling only");
            None
        }
    };
    let mut last_prune = Instant::now();
    loop {
        if shutdown.is_cancelled() {
            break;
        }
        if !broker.is_connected() && shared.is_connected() {
            broker = own_publisher(&shared).await;
        }
        let last_pass = Instant::now();
        let outcome = relay_batch(&pool, &broker, batch).await;
        let more = match outcome {
            Ok(published) => published as i64 >= batch,
            Err(error) => {
                tracing::warn!(error = format!("{error:#}"), "outbox relay batch failed");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                false
            }
        };
        if last_prune.elapsed() > Duration::from_secs(60) {
            last_prune = Instant::now();
            report_lag(&pool).await;
            if let Err(error) = prune_published(&pool, Duration::from_secs(3600)).await {
                tracing::warn!(%error, "pruning published outbox rows failed");
            }
        }
        if more {
            continue;
        }
        match listener.as_mut() {
            Some(listener) => {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    notification = listener.recv() => {
                        if let Err(error) = notification {
                            tracing::warn!(%error, "outbox LISTEN connection lost; reconnecting");
                        }
                        // Under load a busy process notifies its relay (and
                        // other sessions every relay) many times between two
                        // passes; a pass per notification would mostly find
                        // the rows taken by the previous pass (or a peer).
                        // Passes start at most every PASS_GAP, each answering
                        // every commit notified so far. An idle relay answers
                        // at once.
                        let wait = PASS_GAP.saturating_sub(last_pass.elapsed());
                        if !wait.is_zero() {
                            tokio::time::sleep(wait).await;
                        }
                        while listener.next_buffered().is_some() {}
                    }
                    _ = tokio::time::sleep(poll) => {}
                }
            }
            None => {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(poll) => {}
                }
            }
        }
    }
    // A last pass publishes what in-flight work committed during shutdown.
    if let Err(error) = relay_batch(&pool, &broker, batch).await {
        tracing::warn!(
            error = format!("{error:#}"),
            "final outbox relay pass failed"
        );
    }
}

/// `shared` with a publisher channel of its own, or `shared` itself when the
/// channel cannot be opened (its batches then judge returns per confirm).
async fn own_publisher(shared: &Broker) -> Broker {
    match shared.with_own_publisher().await {
        Ok(broker) => broker,
        Err(error) => {
            tracing::warn!(%error, "outbox relay cannot open a publisher channel; sharing one");
            shared.clone()
        }
    }
}

/// The channel commits made through `pool` notify (one per process for a
/// binary's sessions; [`NOTIFY_CHANNEL`] for any other).
pub async fn channel(pool: &PgPool) -> sqlx::Result<String> {
    sqlx::query_scalar("SELECT outbox_channel()")
        .fetch_one(pool)
        .await
}

async fn listen(pool: &PgPool) -> sqlx::Result<PgListener> {
    let own = channel(pool).await?;
    let mut listener = PgListener::connect_with(pool).await?;
    let mut channels = vec![NOTIFY_CHANNEL, own.as_str()];
    channels.dedup();
    listener.listen_all(channels).await?;
    Ok(listener)
}

/// False for informational events nobody has to receive (see
/// [`EventType::requires_subscriber`]); unknown keys must be routed.
fn must_be_routed(routing_key: &str) -> bool {
    routing_key
        .parse::<EventType>()
        .map_or(true, EventType::requires_subscriber)
}

/// Unpublished rows and the age of the oldest, in seconds.
pub async fn lag(pool: &PgPool) -> sqlx::Result<(i64, f64)> {
    sqlx::query_as(
        "SELECT count(*), COALESCE(EXTRACT(EPOCH FROM now() - min(created_at))::float8, 0) \
         FROM outbox WHERE published_at IS NULL",
    )
    .fetch_one(pool)
    .await
}

async fn report_lag(pool: &PgPool) {
    if let Ok((count, age)) = lag(pool).await {
        metrics::gauge!("ringer_outbox_unpublished").set(count as f64);
        metrics::gauge!("ringer_outbox_oldest_age_seconds").set(age);
    }
}

async fn prune_published(pool: &PgPool, older_than: Duration) -> sqlx::Result<u64> {
    let seconds = older_than.as_secs_f64();
    let result = sqlx::query(
        "DELETE FROM outbox WHERE published_at IS NOT NULL \
         AND published_at < now() - make_interval(secs => $1)",
    )
    .bind(seconds)
    .execute(pool)
    .await?;
    Ok(result.rows_affected())
}
