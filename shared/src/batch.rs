//! Natural batching: many concurrent jobs share one database statement or
//! one transaction.
//!
//! Postgres spends most of a small statement's cost on the statement itself
//! (locks on every table and index it names, executor set-up), and most of a
//! small write transaction's on its commit (the WAL flush), not on its rows.
//! A [`Batcher`] queues the requests of concurrent jobs and one task runs
//! whatever is waiting together (up to `max` at once), then answers each job:
//! the webhook dispatcher's claims, records and fan-outs, the extractor's
//! results. Nothing waits for a batch to fill: an idle process runs batches of
//! one at the latency it had before, and a busy one runs larger batches.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{Semaphore, mpsc, oneshot};

type Reply<O> = oneshot::Sender<Result<O, Arc<anyhow::Error>>>;

struct Request<I, O> {
    input: I,
    reply: Reply<O>,
}

/// Runs requests of type `I` in batches through one function; see the module docs.
pub struct Batcher<I, O> {
    requests: mpsc::Sender<Request<I, O>>,
}

impl<I: Send + 'static, O: Send + 'static> Batcher<I, O> {
    /// Starts the task that runs batches through `run`, which must return one
    /// output per input, in order: at most `max` requests per batch and at most
    /// `in_flight` batches at once (requests wait in line while all run, which
    /// is what makes the next batch larger). It stops when the batcher is dropped.
    /// `name` labels the batches in the `ringer_batch_size` histogram.
    pub fn spawn<F, Fut>(name: &'static str, max: usize, in_flight: usize, run: F) -> Self
    where
        F: Fn(Vec<I>) -> Fut + Send + 'static,
        Fut: Future<Output = anyhow::Result<Vec<O>>> + Send + 'static,
    {
        let max = max.max(1);
        let (requests, mut waiting) = mpsc::channel::<Request<I, O>>(max * 4);
        let slots = Arc::new(Semaphore::new(in_flight.max(1)));
        tokio::spawn(async move {
            loop {
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    return;
                };
                let mut batch = Vec::with_capacity(max);
                if waiting.recv_many(&mut batch, max).await == 0 {
                    return;
                }
                let (inputs, replies): (Vec<I>, Vec<_>) =
                    batch.into_iter().map(|r| (r.input, r.reply)).unzip();
                metrics::histogram!("ringer_batch_size", "batch" => name)
                    .record(inputs.len() as f64);
                let outcome = run(inputs);
                tokio::spawn(async move {
                    answer(replies, outcome.await);
                    drop(slot);
                });
            }
        });
        Self { requests }
    }

    /// Queues `input` for the next batch and waits for its output.
    pub async fn call(&self, input: I) -> anyhow::Result<O> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Request { input, reply })
            .await
            .map_err(|_| anyhow::anyhow!("the batch task has stopped"))?;
        match answer.await {
            Ok(Ok(output)) => Ok(output),
            Ok(Err(error)) => Err(anyhow::anyhow!("{error:#}")),
            Err(_) => Err(anyhow::anyhow!("the batch task has stopped")),
        }
    }
}

/// Runs `run` on all of `inputs` at once; when that fails and there was more
/// than one input, runs it again on each input alone, so that a bad input
/// fails alone instead of failing the others. Gives one output (or error) per
/// input, in order; the error of a batch of one is the whole outcome.
pub async fn together_or_alone<'a, I, O, E, F, Fut>(
    inputs: &'a [I],
    run: F,
) -> Result<Vec<Result<O, E>>, E>
where
    O: Default,
    E: std::fmt::Display,
    F: Fn(&'a [I]) -> Fut,
    Fut: Future<Output = Result<Vec<O>, E>>,
{
    let error = match run(inputs).await {
        Ok(outputs) => return Ok(outputs.into_iter().map(Ok).collect()),
        Err(error) if inputs.len() <= 1 => return Err(error),
        Err(error) => error,
    };
    tracing::warn!(%error, items = inputs.len(), "a batch failed; running its items one by one");
    let mut each = Vec::with_capacity(inputs.len());
    for input in inputs.chunks(1) {
        each.push(
            run(input)
                .await
                .map(|mut outputs| outputs.pop().unwrap_or_default()),
        );
    }
    Ok(each)
}

/// Sends each caller its output, or every caller the batch's error.
fn answer<O>(replies: Vec<Reply<O>>, outcome: anyhow::Result<Vec<O>>) {
    let error = match outcome {
        Ok(outputs) if outputs.len() == replies.len() => {
            for (reply, output) in replies.into_iter().zip(outputs) {
                let _ = reply.send(Ok(output));
            }
            return;
        }
        Ok(outputs) => anyhow::anyhow!(
            "a batch of {} answered {} results",
            replies.len(),
            outputs.len()
        ),
        Err(error) => error,
    };
    let error = Arc::new(error);
    for reply in replies {
        let _ = reply.send(Err(error.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::time::Duration;

    #[tokio::test]
    async fn concurrent_calls_share_batches_and_each_gets_its_own_answer() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let seen = sizes.clone();
        let batcher = Arc::new(Batcher::spawn("test", 8, 2, move |inputs: Vec<u32>| {
            seen.lock().unwrap().push(inputs.len());
            async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                Ok(inputs.into_iter().map(|n| n * 10).collect())
            }
        }));
        let calls: Vec<_> = (0..20u32)
            .map(|n| {
                let batcher = batcher.clone();
                tokio::spawn(async move { (n, batcher.call(n).await.unwrap()) })
            })
            .collect();
        for call in calls {
            let (n, answer) = call.await.unwrap();
            assert_eq!(answer, n * 10);
        }
        let sizes = sizes.lock().unwrap().clone();
        assert_eq!(sizes.iter().sum::<usize>(), 20);
        assert!(sizes.iter().all(|&s| s <= 8), "{sizes:?}");
        assert!(sizes.len() < 20, "no batching happened: {sizes:?}");
    }

    #[tokio::test]
    async fn no_more_batches_run_at_once_than_allowed() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let (now, peak) = (running.clone(), most.clone());
        let batcher = Arc::new(Batcher::spawn("test", 2, 3, move |inputs: Vec<u32>| {
            let (now, peak) = (now.clone(), peak.clone());
            async move {
                let at_once = now.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(at_once, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
                now.fetch_sub(1, Ordering::SeqCst);
                Ok(inputs)
            }
        }));
        let calls: Vec<_> = (0..30u32)
            .map(|n| {
                let batcher = batcher.clone();
                tokio::spawn(async move { batcher.call(n).await.unwrap() == n })
            })
            .collect();
        for call in calls {
            assert!(call.await.unwrap());
        }
        assert_eq!(
            most.load(Ordering::SeqCst),
            3,
            "three batches overlapped, never more"
        );
    }

    #[tokio::test]
    async fn a_failed_batch_fails_every_call_in_it_and_the_next_batch_still_runs() {
        let batcher = Batcher::spawn("test", 4, 1, |inputs: Vec<u32>| async move {
            if inputs.contains(&0) {
                anyhow::bail!("database unreachable");
            }
            Ok(inputs)
        });
        let error = batcher.call(0).await.unwrap_err();
        assert!(error.to_string().contains("database unreachable"));
        assert_eq!(batcher.call(7).await.unwrap(), 7);
    }

    #[tokio::test]
    async fn a_bad_input_fails_alone() {
        let runs = Mutex::new(Vec::new());
        let outcome = together_or_alone(&[1u32, 0, 3], |inputs: &[u32]| {
            runs.lock().unwrap().push(inputs.len());
            let inputs = inputs.to_vec();
            async move {
                if inputs.contains(&0) {
                    return Err("zero".to_owned());
                }
                Ok(inputs.iter().map(|n| n * 10).collect::<Vec<_>>())
            }
        })
        .await
        .unwrap();
        assert_eq!(outcome, vec![Ok(10), Err("zero".to_owned()), Ok(30)]);
        assert_eq!(*runs.lock().unwrap(), vec![3, 1, 1, 1]);

        let alone =
            together_or_alone(&[0u32], |_: &[u32]| async { Err::<Vec<u32>, _>("zero") }).await;
        assert_eq!(alone, Err("zero"));
    }

    #[tokio::test]
    async fn a_short_answer_is_an_error_not_a_wrong_pairing() {
        let batcher = Batcher::spawn("test", 4, 1, |_inputs: Vec<u32>| async move {
            Ok(Vec::<u32>::new())
        });
        assert!(batcher.call(1).await.is_err());
    }
}
