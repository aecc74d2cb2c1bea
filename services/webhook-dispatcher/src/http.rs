//! One HTTP attempt: POST with a timeout, no redirects, the first KiB of the
//! answer kept. Outside dev mode only https to public addresses: the URL is
//! checked before sending and every address is checked again by the client's
//! DNS resolver at connect time, so DNS rebinding cannot reach inside.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::header::HeaderMap;
use ringer::url_guard;

use crate::envelope::USER_AGENT;

/// The first this many bytes of a response body are kept.
pub const EXCERPT_BYTES: usize = 1024;

/// What happened to one attempt.
#[derive(Debug, Clone)]
pub struct AttemptResult {
    pub started_at: DateTime<Utc>,
    pub duration: Duration,
    pub response_status: Option<u16>,
    pub response_excerpt: Option<String>,
    /// Why it failed; None on a 2xx.
    pub error: Option<String>,
    /// Retrying cannot help (the URL is refused, or the receiver answered 410 Gone).
    pub permanent: bool,
}

impl AttemptResult {
    pub fn succeeded(&self) -> bool {
        self.error.is_none()
    }

    fn refused(started_at: DateTime<Utc>, why: String) -> Self {
        Self {
            started_at,
            duration: Duration::ZERO,
            response_status: None,
            response_excerpt: None,
            error: Some(format!("refused: {why}")),
            permanent: true,
        }
    }
}

/// Resolves names and refuses any answer holding a non-public address.
#[derive(Debug, Clone, Copy)]
struct GuardedResolver;

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addresses: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            url_guard::check_resolved(&host, addresses.iter().map(SocketAddr::ip))?;
            Ok(Box::new(addresses.into_iter()) as Addrs)
        })
    }
}

/// Sends attempts; one connection pool for every destination.
#[derive(Clone)]
pub struct Sender {
    client: reqwest::Client,
    dev_mode: bool,
}

impl Sender {
    pub fn new(dev_mode: bool, timeout: Duration) -> anyhow::Result<Self> {
        let mut builder = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(USER_AGENT)
            // A proxy would resolve names itself, past the guard.
            .no_proxy()
            .pool_max_idle_per_host(64);
        if !dev_mode {
            builder = builder.dns_resolver(Arc::new(GuardedResolver));
        }
        Ok(Self {
            client: builder.build()?,
            dev_mode,
        })
    }

    /// Checks the URL itself: https, and no literal non-public address (the
    /// resolver sees only names). Dev mode allows both.
    pub fn check_url(&self, raw: &str) -> Result<url::Url, String> {
        let url =
            url::Url::parse(raw).map_err(|error| format!("{raw:?} is not a URL ({error})"))?;
        match url.scheme() {
            "https" => {}
            "http" if self.dev_mode => {}
            other => {
                return Err(format!(
                    "{other}:// URLs are not allowed; webhooks need https"
                ));
            }
        }
        let host = url.host_str().unwrap_or("");
        if host.is_empty() {
            return Err("the URL has no host".to_owned());
        }
        if !self.dev_mode
            && let Some(ip) = url_guard::ip_literal(host)
            && let Some(rule) = url_guard::forbidden_ip(ip)
        {
            return Err(format!(
                "{host} is a {rule} address; webhooks go only to public addresses"
            ));
        }
        Ok(url)
    }

    pub async fn post(&self, raw_url: &str, headers: HeaderMap, body: Vec<u8>) -> AttemptResult {
        let started_at = Utc::now();
        let url = match self.check_url(raw_url) {
            Ok(url) => url,
            Err(why) => return AttemptResult::refused(started_at, why),
        };
        let started = Instant::now();
        let sent = self
            .client
            .post(url)
            .headers(headers)
            .body(body)
            .send()
            .await;
        let mut response = match sent {
            Ok(response) => response,
            Err(error) => {
                return AttemptResult {
                    started_at,
                    duration: started.elapsed(),
                    response_status: None,
                    response_excerpt: None,
                    error: Some(describe(&error)),
                    permanent: false,
                };
            }
        };
        let status = response.status();
        let mut excerpt = Vec::new();
        // Keep the first KiB; a body error after the status still counts the status.
        while excerpt.len() < EXCERPT_BYTES {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    let room = EXCERPT_BYTES - excerpt.len();
                    excerpt.extend_from_slice(&chunk[..chunk.len().min(room)]);
                }
                Ok(None) | Err(_) => break,
            }
        }
        let duration = started.elapsed();
        let excerpt = (!excerpt.is_empty()).then(|| utf8_prefix(&excerpt));
        let error = (!status.is_success()).then(|| match status.canonical_reason() {
            Some(reason) => format!("the endpoint answered {} {reason}", status.as_u16()),
            None => format!("the endpoint answered {}", status.as_u16()),
        });
        AttemptResult {
            started_at,
            duration,
            response_status: Some(status.as_u16()),
            response_excerpt: excerpt,
            error,
            // 410 Gone: the receiver asks us to stop.
            permanent: status == reqwest::StatusCode::GONE,
        }
    }
}

/// Text of at most `EXCERPT_BYTES` bytes, cut at a character boundary.
fn utf8_prefix(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut end = text.len().min(EXCERPT_BYTES);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

/// A reqwest error as a sentence, with its causes (the guard's refusal among them).
fn describe(error: &reqwest::Error) -> String {
    let what = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "could not connect"
    } else {
        "request failed"
    };
    let mut causes = Vec::new();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        let text = cause.to_string();
        if !causes.contains(&text) {
            causes.push(text);
        }
        source = cause.source();
    }
    if causes.is_empty() {
        what.to_owned()
    } else {
        format!("{what}: {}", causes.join(": "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_refused_outside_dev_mode() {
        let production = Sender::new(false, Duration::from_secs(1)).unwrap();
        for (url, expected) in [
            ("http://example.com/hook", "need https"),
            ("https://127.0.0.1/hook", "loopback"),
            ("https://[::1]:8443/hook", "loopback"),
            ("https://10.0.0.7/hook", "private"),
            ("https://169.254.169.254/latest/meta-data", "link-local"),
            ("https://100.64.1.1/", "CGNAT"),
            ("ftp://example.com/", "not allowed"),
        ] {
            let error = production.check_url(url).unwrap_err();
            assert!(error.contains(expected), "{url}: {error}");
        }
        assert!(production.check_url("https://example.com/hook").is_ok());
        let dev = Sender::new(true, Duration::from_secs(1)).unwrap();
        assert!(dev.check_url("http://127.0.0.1:3000/hook").is_ok());
    }

    #[tokio::test]
    async fn the_resolver_refuses_names_of_internal_addresses() {
        let refused = GuardedResolver
            .resolve("localhost".parse().unwrap())
            .await
            .err()
            .expect("localhost is refused");
        assert!(refused.to_string().contains("loopback"), "{refused}");
    }

    #[tokio::test]
    async fn a_name_resolving_inside_is_refused_at_connect_time() {
        let production = Sender::new(false, Duration::from_secs(2)).unwrap();
        let result = production
            .post("https://localhost:9/hook", HeaderMap::new(), Vec::new())
            .await;
        let error = result.error.expect("refused");
        assert!(error.contains("loopback"), "{error}");
        assert!(!result.permanent);
    }

    #[test]
    fn excerpts_are_cut_on_a_character_boundary() {
        let text = "é".repeat(600);
        let cut = utf8_prefix(&text.as_bytes()[..EXCERPT_BYTES]);
        assert!(cut.len() <= EXCERPT_BYTES);
        assert!(cut.chars().all(|c| c == 'é'));
    }
}
