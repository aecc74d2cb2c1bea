//! Twilio's REST API as the dialer (calls) and the api (phone numbers) use it:
//! the account settings both read, and one client with HTTP Basic auth,
//! Twilio's error body, and retries that never repeat a request Twilio may
//! have acted on unless it is idempotent.

use std::time::Duration;

use anyhow::Context;
use reqwest::{Method, StatusCode, Url};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::config::Secret;
use crate::retry::{Failure, RetryPolicy, retry};

/// Where Twilio's REST API lives.
pub const TWILIO_API_BASE: &str = "https://api.twilio.com";

/// The Twilio account (`RINGER_CARRIER=twilio` or `twilio-fake`).
#[derive(Debug, Clone, clap::Args)]
pub struct TwilioAccountArgs {
    /// Twilio account SID (AC…).
    #[arg(long, env = "RINGER_TWILIO_ACCOUNT_SID")]
    pub twilio_account_sid: Option<String>,

    /// Twilio auth token: authenticates REST requests (and, on the dialer, checks X-Twilio-Signature on callbacks).
    #[arg(long, env = "RINGER_TWILIO_AUTH_TOKEN", hide_env_values = true)]
    pub twilio_auth_token: Option<Secret>,

    /// Base URL of Twilio's REST API (point it at tools/twilio-fake for RINGER_CARRIER=twilio-fake).
    #[arg(long, env = "RINGER_TWILIO_API_BASE", default_value = TWILIO_API_BASE)]
    pub twilio_api_base: String,
}

impl Default for TwilioAccountArgs {
    /// Nothing configured, Twilio's own API.
    fn default() -> Self {
        Self {
            twilio_account_sid: None,
            twilio_auth_token: None,
            twilio_api_base: TWILIO_API_BASE.to_owned(),
        }
    }
}

impl TwilioAccountArgs {
    /// These credentials against `api_base` (tests, tools).
    pub fn new(account_sid: &str, auth_token: &str, api_base: &str) -> Self {
        Self {
            twilio_account_sid: Some(account_sid.to_owned()),
            twilio_auth_token: Some(Secret::new(auth_token)),
            twilio_api_base: api_base.to_owned(),
        }
    }

    /// The checked account: both credentials present, the base a URL.
    pub fn account(&self) -> anyhow::Result<TwilioAccount> {
        let account_sid = self
            .twilio_account_sid
            .clone()
            .filter(|sid| !sid.trim().is_empty())
            .context("RINGER_TWILIO_ACCOUNT_SID is required for the Twilio carrier")?;
        let auth_token = self
            .twilio_auth_token
            .clone()
            .filter(|token| !token.expose().is_empty())
            .context("RINGER_TWILIO_AUTH_TOKEN is required for the Twilio carrier")?;
        Url::parse(&self.twilio_api_base).with_context(|| {
            format!(
                "RINGER_TWILIO_API_BASE {:?} is not a URL",
                self.twilio_api_base
            )
        })?;
        Ok(TwilioAccount {
            account_sid,
            auth_token,
            api_base: self.twilio_api_base.trim_end_matches('/').to_owned(),
        })
    }
}

/// Checked account settings.
#[derive(Debug, Clone)]
pub struct TwilioAccount {
    pub account_sid: String,
    pub auth_token: Secret,
    /// Without a trailing slash.
    pub api_base: String,
}

/// Why a REST request failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RestError {
    /// Twilio answered with an error (its own `code` when the body had one).
    #[error("Twilio error {code} (HTTP {status}): {message}", code = code.map_or("-".to_owned(), |c| c.to_string()))]
    Api {
        status: u16,
        code: Option<i64>,
        message: String,
    },
    /// No connection: the request never left (refused, DNS, connect timeout).
    #[error("Twilio unreachable: {0}")]
    Connect(String),
    /// No answer after the request left: timeout, reset.
    #[error("no answer from Twilio: {0}")]
    Transport(String),
    /// An answer that is not what the API documents.
    #[error("unexpected answer from Twilio: {0}")]
    Protocol(String),
}

impl RestError {
    /// Twilio refused the request itself (4xx other than 429): repeating it changes nothing.
    pub fn is_client_error(&self) -> bool {
        matches!(self, RestError::Api { status, .. } if (400..500).contains(status) && *status != 429)
    }

    /// Twilio did not accept the account's credentials (401, or 403 for a suspended account).
    pub fn is_auth_error(&self) -> bool {
        matches!(
            self,
            RestError::Api {
                status: 401 | 403,
                ..
            }
        )
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, RestError::Api { status: 404, .. })
    }

    /// Twilio certainly did not act on the request (no connection, or 429).
    pub fn not_received(&self) -> bool {
        matches!(
            self,
            RestError::Connect(_) | RestError::Api { status: 429, .. }
        )
    }

    /// Twilio's own error code, when it sent one.
    pub fn code(&self) -> Option<i64> {
        match self {
            RestError::Api { code, .. } => *code,
            _ => None,
        }
    }
}

#[derive(Debug, Deserialize)]
struct ErrorBody {
    code: Option<i64>,
    message: Option<String>,
}

/// Which failures a request may be repeated after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repeat {
    /// Only when Twilio certainly did not act on it (no connection, 429): a
    /// repeated create after a lost answer could dial or buy twice.
    IfNotReceived,
    /// Any transient failure: the request is idempotent.
    Always,
}

/// A failed attempt, and whether the request may have reached Twilio.
type Attempt<T> = Result<T, (RestError, bool)>;

/// Requests under one account's `/2010-04-01/Accounts/{sid}`.
#[derive(Debug, Clone)]
pub struct RestClient {
    http: reqwest::Client,
    account_url: String,
    account_sid: String,
    auth_token: Secret,
    retry: RetryPolicy,
}

impl RestClient {
    pub fn new(
        account: &TwilioAccount,
        timeout: Duration,
        retry: RetryPolicy,
    ) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self {
            http,
            account_url: format!(
                "{}/2010-04-01/Accounts/{}",
                account.api_base, account.account_sid
            ),
            account_sid: account.account_sid.clone(),
            auth_token: account.auth_token.clone(),
            retry,
        })
    }

    /// `GET {account}{path}?{query}` (idempotent: retried on transient failures).
    pub async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, &str)],
    ) -> Result<T, RestError> {
        let url = Url::parse_with_params(&format!("{}{path}", self.account_url), query)
            .map_err(|error| RestError::Protocol(format!("bad request URL: {error}")))?;
        let body = self
            .send(Method::GET, url.as_str(), None, Repeat::Always)
            .await?;
        parse(&body)
    }

    /// `POST {account}{path}` with a form.
    pub async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        form: &[(String, String)],
        repeat: Repeat,
    ) -> Result<T, RestError> {
        let url = format!("{}{path}", self.account_url);
        let body = self.send(Method::POST, &url, Some(form), repeat).await?;
        parse(&body)
    }

    /// `DELETE {account}{path}` (idempotent: a repeat finds nothing, 404).
    pub async fn delete(&self, path: &str) -> Result<(), RestError> {
        let url = format!("{}{path}", self.account_url);
        self.send(Method::DELETE, &url, None, Repeat::Always)
            .await
            .map(drop)
    }

    async fn send(
        &self,
        method: Method,
        url: &str,
        form: Option<&[(String, String)]>,
        repeat: Repeat,
    ) -> Result<String, RestError> {
        let outcome = retry(&self.retry, |attempt| {
            let method = method.clone();
            async move {
                let result = self.send_once(method.clone(), url, form).await;
                if let Err((error, _)) = &result {
                    tracing::warn!(attempt, %error, %method, url, "Twilio request failed");
                }
                result.map_err(|(error, received)| {
                    let transient = match &error {
                        RestError::Api { status, .. } if *status == 429 => true,
                        RestError::Api { status, .. } => {
                            repeat == Repeat::Always && (*status >= 500 || *status == 408)
                        }
                        RestError::Connect(_) => true,
                        RestError::Transport(_) => repeat == Repeat::Always || !received,
                        RestError::Protocol(_) => false,
                    };
                    if transient {
                        Failure::transient(error)
                    } else {
                        Failure::permanent(error)
                    }
                })
            }
        })
        .await;
        outcome.map_err(|failed| failed.error)
    }

    async fn send_once(
        &self,
        method: Method,
        url: &str,
        form: Option<&[(String, String)]>,
    ) -> Attempt<String> {
        let mut request = self
            .http
            .request(method, url)
            .basic_auth(&self.account_sid, Some(self.auth_token.expose()));
        if let Some(form) = form {
            request = request.form(form);
        }
        let response = request.send().await.map_err(|error| {
            if error.is_connect() {
                (RestError::Connect(describe(&error)), false)
            } else {
                (RestError::Transport(describe(&error)), true)
            }
        })?;
        let status = response.status();
        let body = response
            .text()
            .await
            .map_err(|error| (RestError::Transport(describe(&error)), true))?;
        if status.is_success() {
            return Ok(body);
        }
        let parsed: Option<ErrorBody> = serde_json::from_str(&body).ok();
        let message = parsed
            .as_ref()
            .and_then(|body| body.message.clone())
            .unwrap_or_else(|| excerpt(&body));
        Err((
            RestError::Api {
                status: status.as_u16(),
                code: parsed.and_then(|body| body.code),
                message,
            },
            status != StatusCode::TOO_MANY_REQUESTS,
        ))
    }
}

fn parse<T: DeserializeOwned>(body: &str) -> Result<T, RestError> {
    serde_json::from_str(body)
        .map_err(|error| RestError::Protocol(format!("{error}: {}", excerpt(body))))
}

fn describe(error: &reqwest::Error) -> String {
    crate::error_chain(error)
}

fn excerpt(body: &str) -> String {
    body.chars().take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_account_needs_both_credentials_and_a_url() {
        let account = TwilioAccountArgs::new("AC1", "s3cret", "http://127.0.0.1:9/")
            .account()
            .expect("valid");
        assert_eq!(account.api_base, "http://127.0.0.1:9");
        assert!(!format!("{account:?}").contains("s3cret"));
        let missing = TwilioAccountArgs::default().account().unwrap_err();
        assert!(missing.to_string().contains("RINGER_TWILIO_ACCOUNT_SID"));
        let no_token = TwilioAccountArgs {
            twilio_auth_token: None,
            ..TwilioAccountArgs::new("AC1", "", TWILIO_API_BASE)
        };
        assert!(
            no_token
                .account()
                .unwrap_err()
                .to_string()
                .contains("RINGER_TWILIO_AUTH_TOKEN")
        );
        let bad_base = TwilioAccountArgs::new("AC1", "t", "not a url").account();
        assert!(
            bad_base
                .unwrap_err()
                .to_string()
                .contains("RINGER_TWILIO_API_BASE")
        );
    }

    #[test]
    fn errors_tell_auth_from_client_errors() {
        let api = |status| RestError::Api {
            status,
            code: Some(20003),
            message: String::new(),
        };
        assert!(api(401).is_auth_error() && api(401).is_client_error());
        assert!(api(404).is_not_found() && !api(404).is_auth_error());
        assert!(!api(429).is_client_error());
        assert_eq!(api(400).code(), Some(20003));
        assert!(!RestError::Connect("refused".into()).is_client_error());
        assert!(RestError::Connect("refused".into()).not_received() && api(429).not_received());
        assert!(!RestError::Transport("reset".into()).not_received());
    }
}
