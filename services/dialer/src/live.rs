//! The calls this replica is running: for lease renewal, cancel wake-ups and the
//! live-calls gauge.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use uuid::Uuid;

/// One running call.
#[derive(Debug, Default)]
pub struct LiveCall {
    /// Notified when a cancel may have been requested (the task checks the database).
    pub wake: Notify,
    /// Since when the call waits for the carrier before answer (ringing), if it does.
    waiting_since: Mutex<Option<Instant>>,
}

impl LiveCall {
    /// Marks the call as waiting for the carrier until the guard drops: the
    /// cancel watcher polls only for calls that wait (a cancel requested at any
    /// other moment is caught by the guard of the call's next step).
    pub fn waiting(&self) -> WaitingGuard<'_> {
        *self.waiting_since() = Some(Instant::now());
        WaitingGuard { call: self }
    }

    fn waiting_since(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.waiting_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// See [`LiveCall::waiting`].
pub struct WaitingGuard<'a> {
    call: &'a LiveCall,
}

impl Drop for WaitingGuard<'_> {
    fn drop(&mut self) {
        *self.call.waiting_since() = None;
    }
}

#[derive(Debug, Default)]
pub struct LiveCalls {
    calls: Mutex<HashMap<Uuid, Arc<LiveCall>>>,
}

impl LiveCalls {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Arc<LiveCall>>> {
        self.calls.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a call until the guard drops (however its task ends).
    pub fn register(self: &Arc<Self>, call_id: Uuid) -> LiveGuard {
        let entry = Arc::new(LiveCall::default());
        let count = {
            let mut calls = self.lock();
            calls.insert(call_id, entry.clone());
            calls.len()
        };
        metrics::gauge!("ringer_dialer_live_calls").set(count as f64);
        LiveGuard {
            calls: self.clone(),
            call_id,
            entry,
        }
    }

    pub fn ids(&self) -> Vec<Uuid> {
        self.lock().keys().copied().collect()
    }

    /// Calls that have been waiting for the carrier before answer for at least `for_at_least`.
    pub fn waiting_ids(&self, for_at_least: Duration) -> Vec<Uuid> {
        self.lock()
            .iter()
            .filter(|(_, call)| {
                call.waiting_since()
                    .is_some_and(|since| since.elapsed() >= for_at_least)
            })
            .map(|(id, _)| *id)
            .collect()
    }

    /// Wakes the call's task if it runs here; false when it does not.
    pub fn wake(&self, call_id: Uuid) -> bool {
        match self.lock().get(&call_id) {
            Some(call) => {
                call.wake.notify_one();
                true
            }
            None => false,
        }
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }
}

/// Keeps a call registered while its task lives.
#[derive(Debug)]
pub struct LiveGuard {
    calls: Arc<LiveCalls>,
    call_id: Uuid,
    entry: Arc<LiveCall>,
}

impl LiveGuard {
    pub fn call(&self) -> &LiveCall {
        &self.entry
    }
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        let count = {
            let mut calls = self.calls.lock();
            calls.remove(&self.call_id);
            calls.len()
        };
        metrics::gauge!("ringer_dialer_live_calls").set(count as f64);
    }
}
