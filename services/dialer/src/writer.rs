//! Group commit for the dialer's writes. Call tasks and claims hand their changes
//! to a few writer tasks; each writer applies whatever is pending in one
//! transaction, one statement per kind of change. A busy replica thus pays one
//! commit and a handful of statements for many calls; under light load a batch
//! holds one change and this is the plain transaction per step. Every change
//! still commits together with its outbox event (DESIGN rule 1).

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use ringer::call::{NumberedCall, OwnedCall};
use ringer::events::{Event, EventType};
use ringer::telemetry::{self, TraceContext};
use sqlx::PgPool;
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::store::{self, Answering, Claim, Ended, Ringing, Segment};

/// Most changes one transaction applies.
const MAX_BATCH: usize = 64;

/// A change a call task asks for.
#[derive(Debug, Clone)]
pub enum Change {
    Ring(Ringing),
    Answer(Answering),
    /// Ends the call, with the transcript segments not written yet.
    End(Ended, Vec<Segment>),
    /// Writes transcript segments of a call in progress.
    Transcript(Uuid, Vec<Segment>),
}

struct Job<Request, Reply> {
    request: Request,
    trace: Option<TraceContext>,
    reply: oneshot::Sender<sqlx::Result<Reply>>,
}

type Queue<Request, Reply> = Arc<Mutex<mpsc::Receiver<Job<Request, Reply>>>>;

/// What every batch needs to know about this replica.
#[derive(Debug, Clone)]
struct Replica {
    db: PgPool,
    dialer_id: String,
    lease: Duration,
    default_org_limit: i32,
}

/// The writers of one replica. Dropping it stops them once their queues are empty.
#[derive(Debug, Clone)]
pub struct Writer {
    changes: mpsc::Sender<Job<Change, Option<OwnedCall>>>,
    claims: mpsc::Sender<Job<(Uuid, Uuid), Claim>>,
}

impl Writer {
    /// Starts `workers` writers for call steps and `workers` for claims.
    pub fn start(
        db: PgPool,
        dialer_id: String,
        lease: Duration,
        default_org_limit: i32,
        workers: usize,
    ) -> (Writer, Vec<JoinHandle<()>>) {
        let replica = Arc::new(Replica {
            db,
            dialer_id,
            lease,
            default_org_limit,
        });
        let (changes, change_queue) = mpsc::channel(4 * MAX_BATCH);
        let (claims, claim_queue) = mpsc::channel(4 * MAX_BATCH);
        let change_queue: Queue<_, _> = Arc::new(Mutex::new(change_queue));
        let claim_queue: Queue<_, _> = Arc::new(Mutex::new(claim_queue));
        let mut tasks = Vec::new();
        for _ in 0..workers.max(1) {
            tasks.push(tokio::spawn(serve(
                replica.clone(),
                change_queue.clone(),
                Changes,
            )));
            tasks.push(tokio::spawn(serve(
                replica.clone(),
                claim_queue.clone(),
                Claims,
            )));
        }
        (Writer { changes, claims }, tasks)
    }

    /// Applies `change` and returns the call as it now is, or None when the guard
    /// refused it (and for transcript writes).
    pub async fn apply(&self, change: Change) -> sqlx::Result<Option<OwnedCall>> {
        submit(&self.changes, change).await
    }

    /// Tries to claim `call_id` of `org_id` for this replica.
    pub async fn claim(&self, call_id: Uuid, org_id: Uuid) -> sqlx::Result<Claim> {
        submit(&self.claims, (call_id, org_id)).await
    }
}

async fn submit<Request, Reply>(
    queue: &mpsc::Sender<Job<Request, Reply>>,
    request: Request,
) -> sqlx::Result<Reply> {
    let (reply, answer) = oneshot::channel();
    let job = Job {
        request,
        trace: telemetry::current(),
        reply,
    };
    queue.send(job).await.map_err(|_| sqlx::Error::PoolClosed)?;
    answer.await.map_err(|_| sqlx::Error::PoolClosed)?
}

/// One kind of batch: applies many requests in one transaction, one reply each.
trait Batch: Send + Sync + 'static {
    type Request: Send + Sync + 'static;
    type Reply: Send + 'static;

    fn apply(
        &self,
        replica: &Replica,
        requests: &[(&Self::Request, Option<TraceContext>)],
    ) -> impl Future<Output = sqlx::Result<Vec<Self::Reply>>> + Send;
}

struct Changes;
struct Claims;

impl Batch for Changes {
    type Request = Change;
    type Reply = Option<OwnedCall>;

    async fn apply(
        &self,
        replica: &Replica,
        requests: &[(&Change, Option<TraceContext>)],
    ) -> sqlx::Result<Vec<Option<OwnedCall>>> {
        apply_changes(replica, requests).await
    }
}

impl Batch for Claims {
    type Request = (Uuid, Uuid);
    type Reply = Claim;

    async fn apply(
        &self,
        replica: &Replica,
        requests: &[(&(Uuid, Uuid), Option<TraceContext>)],
    ) -> sqlx::Result<Vec<Claim>> {
        apply_claims(replica, requests).await
    }
}

/// Takes what is pending (waiting for at least one job) and applies it. When a
/// batch fails, each of its jobs is retried alone, so that one bad change cannot
/// fail the others.
async fn serve<B: Batch>(replica: Arc<Replica>, queue: Queue<B::Request, B::Reply>, batch_kind: B) {
    loop {
        let batch = {
            let mut queue = queue.lock().await;
            let Some(first) = queue.recv().await else {
                return;
            };
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match queue.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            batch
        };
        let requests: Vec<(&B::Request, Option<TraceContext>)> =
            batch.iter().map(|job| (&job.request, job.trace)).collect();
        match batch_kind.apply(&replica, &requests).await {
            Ok(replies) => {
                drop(requests);
                for (job, reply) in batch.into_iter().zip(replies) {
                    let _ = job.reply.send(Ok(reply));
                }
            }
            Err(error) if batch.len() == 1 => {
                drop(requests);
                if let Some(job) = batch.into_iter().next() {
                    let _ = job.reply.send(Err(error));
                }
            }
            Err(error) => {
                tracing::warn!(%error, jobs = batch.len(), "batch failed; applying its changes one by one");
                drop(requests);
                for job in batch {
                    let alone = [(&job.request, job.trace)];
                    let reply = batch_kind
                        .apply(&replica, &alone)
                        .await
                        .map(|mut replies| replies.pop().expect("one reply per request"));
                    let _ = job.reply.send(reply);
                }
            }
        }
    }
}

async fn apply_claims(
    replica: &Replica,
    requests: &[(&(Uuid, Uuid), Option<TraceContext>)],
) -> sqlx::Result<Vec<Claim>> {
    let pairs: Vec<(Uuid, Uuid)> = requests.iter().map(|(pair, _)| **pair).collect();
    let mut tx = replica.db.begin().await?;
    let claims = store::claim_for_dialing(
        &mut tx,
        &pairs,
        &replica.dialer_id,
        replica.lease,
        replica.default_org_limit,
    )
    .await?;
    tx.commit().await?;
    Ok(claims)
}

async fn apply_changes(
    replica: &Replica,
    requests: &[(&Change, Option<TraceContext>)],
) -> sqlx::Result<Vec<Option<OwnedCall>>> {
    let mut ringing = Vec::new();
    let mut answering = Vec::new();
    let mut ending = Vec::new();
    for (change, _) in requests {
        match change {
            Change::Ring(ring) => ringing.push(ring),
            Change::Answer(answer) => answering.push(answer),
            Change::End(end, _) => ending.push(end),
            Change::Transcript(..) => {}
        }
    }
    let traces: HashMap<Uuid, Option<TraceContext>> = requests
        .iter()
        .map(|(change, trace)| (change_call_id(change), *trace))
        .collect();

    let mut tx = replica.db.begin().await?;
    let mut stepped: Vec<(EventType, NumberedCall)> = Vec::new();
    if !ringing.is_empty() {
        let rows =
            store::mark_ringing(&mut tx, &replica.dialer_id, replica.lease, &ringing).await?;
        stepped.extend(rows.into_iter().map(|row| (EventType::CallRinging, row)));
    }
    if !answering.is_empty() {
        let rows =
            store::mark_answered(&mut tx, &replica.dialer_id, replica.lease, &answering).await?;
        stepped.extend(rows.into_iter().map(|row| (EventType::CallAnswered, row)));
    }
    if !ending.is_empty() {
        let rows = store::mark_ended(&mut tx, &replica.dialer_id, &ending).await?;
        stepped.extend(rows.into_iter().map(|row| (EventType::CallEnded, row)));
    }
    let changed: HashMap<Uuid, &OwnedCall> = stepped
        .iter()
        .map(|(_, row)| (row.owned.call.id, &row.owned))
        .collect();

    // Segments of calls in progress, and of calls whose end was accepted (so that
    // the extractor, which consumes `internal.call.ended`, sees the whole call).
    let mut segments: Vec<(Uuid, &Segment)> = Vec::new();
    for (change, _) in requests {
        match change {
            Change::Transcript(call_id, pending) => {
                segments.extend(pending.iter().map(|segment| (*call_id, segment)));
            }
            Change::End(end, pending) if changed.contains_key(&end.call_id) => {
                segments.extend(pending.iter().map(|segment| (end.call_id, segment)));
            }
            _ => {}
        }
    }
    store::insert_segments(&mut tx, &segments).await?;

    let events: Vec<(Event, Option<TraceContext>)> = stepped
        .iter()
        .map(|(event_type, row)| {
            let event = Event::new(
                *event_type,
                row.owned.org_id,
                row.owned.call.clone(),
                row.event_seq,
            );
            // Each event continues the trace of the call it is about.
            let trace = traces.get(&event.call_id).copied().flatten();
            (event, trace)
        })
        .collect();
    store::enqueue_events(&mut tx, &events).await?;
    tx.commit().await?;

    let mut changed: HashMap<Uuid, OwnedCall> = stepped
        .into_iter()
        .map(|(_, row)| (row.owned.call.id, row.owned))
        .collect();
    Ok(requests
        .iter()
        .map(|(change, _)| match change {
            Change::Transcript(..) => None,
            _ => changed.remove(&change_call_id(change)),
        })
        .collect())
}

fn change_call_id(change: &Change) -> Uuid {
    match change {
        Change::Ring(ring) => ring.call_id,
        Change::Answer(answer) => answer.call_id,
        Change::End(end, _) => end.call_id,
        Change::Transcript(call_id, _) => *call_id,
    }
}
