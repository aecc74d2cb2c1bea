//! The HTTP routes Twilio calls: status and AMD callbacks (signed form posts)
//! and the ConversationRelay WebSocket (signed handshake).

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::relay::{Inbound, Outbound};
use super::signature::{self, SIGNATURE_HEADER};
use super::status::StatusUpdate;
use super::{Inner, LegEvent, LegLink};

pub(super) fn router(inner: Arc<Inner>) -> Router {
    Router::new()
        .route("/twilio/calls/{key}/status", post(status_callback))
        .route("/twilio/calls/{key}/amd", post(amd_callback))
        .route("/twilio/calls/{key}/relay", get(relay_socket))
        .with_state(inner)
}

/// Serves `app` (the carrier's [`router`](super::TwilioCarrier::router)) on
/// `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

fn forbidden() -> Response {
    metrics::counter!("ringer_twilio_rejected_requests_total").increment(1);
    (StatusCode::FORBIDDEN, "invalid X-Twilio-Signature").into_response()
}

fn signature_of(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(SIGNATURE_HEADER)
        .and_then(|value| value.to_str().ok())
}

/// Checks a signed form post to `{public}/twilio/calls/{key}/{kind}` and
/// returns its parameters; None when the signature is missing or wrong.
fn verified_form(
    inner: &Inner,
    key: &str,
    kind: &str,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Option<Vec<(String, String)>> {
    let params: Vec<(String, String)> = form_urlencoded::parse(body).into_owned().collect();
    // The URL Twilio was given, as Twilio signs it (plus any query it was sent with).
    let mut url = inner.settings.callback_url(key, kind);
    if let Some(query) = uri.query() {
        url.push('?');
        url.push_str(query);
    }
    let valid = signature_of(headers).is_some_and(|given| {
        signature::is_valid(
            inner.settings.account.auth_token.expose(),
            given,
            &url,
            &params,
        )
    });
    if !valid {
        tracing::warn!(
            key,
            kind,
            "rejected a Twilio callback without a valid signature"
        );
        return None;
    }
    Some(params)
}

async fn status_callback(
    State(inner): State<Arc<Inner>>,
    Path(key): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(params) = verified_form(&inner, &key, "status", &uri, &headers, &body) else {
        return forbidden();
    };
    let Some(update) = StatusUpdate::from_params(&params) else {
        return (StatusCode::BAD_REQUEST, "no CallSid or unknown CallStatus").into_response();
    };
    metrics::counter!("ringer_twilio_status_callbacks_total", "status" => update.status.as_str())
        .increment(1);
    match inner.sessions.by_key(&key) {
        Some(link) => link.send(LegEvent::Status(update)),
        None => {
            tracing::debug!(key, call_sid = %update.call_sid, "status of a call no longer running here")
        }
    }
    StatusCode::NO_CONTENT.into_response()
}

async fn amd_callback(
    State(inner): State<Arc<Inner>>,
    Path(key): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(params) = verified_form(&inner, &key, "amd", &uri, &headers, &body) else {
        return forbidden();
    };
    let Some(answered_by) = params
        .iter()
        .find(|(name, _)| name == "AnsweredBy")
        .map(|(_, value)| value.clone())
    else {
        return (StatusCode::BAD_REQUEST, "no AnsweredBy").into_response();
    };
    if let Some(link) = inner.sessions.by_key(&key) {
        link.send(LegEvent::Amd(answered_by));
    }
    StatusCode::NO_CONTENT.into_response()
}

async fn relay_socket(
    State(inner): State<Arc<Inner>>,
    Path(key): Path<String>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    // Twilio signs the handshake like a GET of the WebSocket URL. Accept the
    // https:// spelling of it too, as some of Twilio's tooling signs that.
    let wss = inner.settings.relay_url(&key);
    let https = inner.settings.callback_url(&key, "relay");
    let token = inner.settings.account.auth_token.expose();
    let valid = signature_of(&headers).is_some_and(|given| {
        signature::is_valid(token, given, &wss, &[])
            || signature::is_valid(token, given, &https, &[])
    });
    if !valid {
        tracing::warn!(
            key,
            "rejected a ConversationRelay handshake without a valid signature"
        );
        return forbidden();
    }
    let Some(link) = inner.sessions.by_key(&key) else {
        return (StatusCode::NOT_FOUND, "no such call").into_response();
    };
    upgrade
        .on_upgrade(move |socket| run_relay(socket, link))
        .into_response()
}

/// Moves messages between the WebSocket and the leg until either side ends.
async fn run_relay(socket: WebSocket, link: Arc<LegLink>) {
    let (mut sink, mut stream) = socket.split();
    let (outbound, mut to_send) = mpsc::unbounded_channel::<Outbound>();
    link.attach(outbound);
    link.send(LegEvent::RelayConnected);
    loop {
        tokio::select! {
            received = stream.next() => {
                let text = match received {
                    Some(Ok(Message::Text(text))) => text,
                    Some(Ok(Message::Close(_)) | Err(_)) | None => break,
                    Some(Ok(_)) => continue,
                };
                match serde_json::from_str::<Inbound>(text.as_str()) {
                    Ok(message) => {
                        if let Inbound::Interrupt { utterance_until_interrupt, .. } = &message {
                            // At once, not when the leg next reads: the agent may
                            // be streaming the very turn that was interrupted.
                            link.note_interrupt(utterance_until_interrupt);
                        }
                        link.send(LegEvent::Relay(message));
                    }
                    Err(error) => tracing::warn!(%error, "unreadable ConversationRelay message"),
                }
            }
            message = to_send.recv() => {
                let Some(message) = message else {
                    // The leg hung up: close our side.
                    let _ = sink.send(Message::Close(None)).await;
                    break;
                };
                if sink.send(Message::Text(message.to_json().into())).await.is_err() {
                    break;
                }
            }
        }
    }
    link.detach();
    link.send(LegEvent::RelayClosed);
}
