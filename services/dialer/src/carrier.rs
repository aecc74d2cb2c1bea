//! The phone network as the dialer sees it: a [`Carrier`] places a call and hands
//! back a [`CallLeg`], which reports progress until answer and then carries the
//! conversation's text turns. The simulated carrier (`crate::sim`) and a real one
//! (Twilio Programmable Voice with ConversationRelay, a later issue) both fit.

use std::future::Future;
use std::time::Duration;

use ringer::call::Call;

/// Who picked up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnsweredBy {
    Human,
    Machine,
}

impl AnsweredBy {
    /// The value of the Call's `answered_by` field.
    pub fn as_str(self) -> &'static str {
        match self {
            AnsweredBy::Human => "human",
            AnsweredBy::Machine => "machine",
        }
    }
}

/// A failure the carrier reported for this call (the network's verdict, not ours).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CarrierFailure {
    /// The provider's own code, for example `SIP 503` or a Twilio error number.
    pub provider_code: String,
    pub message: String,
}

/// What happened to a placed call before anyone spoke.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// The destination is ringing. Reported at most once, before the outcome.
    Ringing,
    Answered(AnsweredBy),
    Busy,
    NoAnswer,
    Failed(CarrierFailure),
}

/// What came down the line when the agent listened.
#[derive(Debug, Clone, PartialEq)]
pub enum Heard {
    /// The callee said something; `duration` is its length on the line.
    Speech { text: String, duration: Duration },
    /// Nothing was said for `duration` (on hold, thinking, a dead line).
    Silence { duration: Duration },
    /// The callee hung up.
    HungUp,
}

/// The agent finished saying something.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spoken {
    /// Length of the speech on the line.
    pub duration: Duration,
}

/// The carrier or the link to it failed (as opposed to a call outcome).
#[derive(Debug, thiserror::Error)]
pub enum CarrierError {
    /// The callee hung up while the agent was speaking.
    #[error("the callee hung up")]
    HungUp,
    #[error("carrier error: {0:#}")]
    Other(anyhow::Error),
}

/// Places calls. One instance serves every call of a dialer replica.
pub trait Carrier: Send + Sync + 'static {
    type Leg: CallLeg;

    /// Short name for logs and metrics (`simulated`, `twilio`).
    fn name(&self) -> &'static str;

    /// The `source` of transcript segments of its calls (`simulated`; a real
    /// carrier's speech recognition would say `stt`).
    fn transcript_source(&self) -> &'static str;

    /// Places `call` (to `call.to_number` from `call.from_number`). Returns once the
    /// carrier accepted the request; progress follows on the leg.
    fn dial(&self, call: &Call) -> impl Future<Output = Result<Self::Leg, CarrierError>> + Send;

    /// Hangs up a call this process does not hold a leg for (its dialer died), where
    /// the carrier can. The default does nothing: the call dies with its process.
    fn hang_up_orphan(
        &self,
        carrier_call_id: &str,
    ) -> impl Future<Output = Result<(), CarrierError>> + Send {
        let _ = carrier_call_id;
        async { Ok(()) }
    }
}

/// One placed call.
pub trait CallLeg: Send + 'static {
    /// The carrier's id of this call (stored on the call for reconciliation).
    fn carrier_call_id(&self) -> &str;

    /// The next progress report before answer; call it until it returns anything
    /// but [`Progress::Ringing`].
    fn progress(&mut self) -> impl Future<Output = Result<Progress, CarrierError>> + Send;

    /// Speaks `text` to the callee and returns once it was said.
    fn say(&mut self, text: &str) -> impl Future<Output = Result<Spoken, CarrierError>> + Send;

    /// Waits for the callee's next utterance (or a stretch of silence, or hang-up).
    fn listen(&mut self) -> impl Future<Output = Result<Heard, CarrierError>> + Send;

    /// Ends the call from our side. Idempotent.
    fn hang_up(&mut self) -> impl Future<Output = Result<(), CarrierError>> + Send;
}
