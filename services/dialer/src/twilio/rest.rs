//! Twilio's REST API, the parts the dialer uses: create a call, hang one up.

use std::time::Duration;

use ringer::retry::RetryPolicy;
use ringer::twilio::{Repeat, TwilioAccount};
use serde::Deserialize;

pub use ringer::twilio::RestError;

/// The fields of a Call resource we read.
#[derive(Debug, Clone, Deserialize)]
pub struct CallResource {
    pub sid: String,
    #[serde(default)]
    pub status: String,
}

#[derive(Debug, Clone)]
pub struct RestClient {
    rest: ringer::twilio::RestClient,
}

impl RestClient {
    pub fn new(
        account: &TwilioAccount,
        timeout: Duration,
        retry: RetryPolicy,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            rest: ringer::twilio::RestClient::new(account, timeout, retry)?,
        })
    }

    /// `POST /Calls.json` with `form` (To, From, Twiml, StatusCallback…).
    pub async fn create_call(&self, form: &[(String, String)]) -> Result<CallResource, RestError> {
        self.rest
            .post("/Calls.json", form, Repeat::IfNotReceived)
            .await
    }

    /// `POST /Calls/{sid}.json Status=completed`: hangs up a ringing or connected call.
    pub async fn hang_up(&self, call_sid: &str) -> Result<CallResource, RestError> {
        let form = [("Status".to_owned(), "completed".to_owned())];
        self.rest
            .post(&format!("/Calls/{call_sid}.json"), &form, Repeat::Always)
            .await
    }
}
