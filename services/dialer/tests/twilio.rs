//! The Twilio carrier against tools/twilio-fake: REST, signed status and AMD
//! callbacks, and ConversationRelay sessions played by a scripted callee.

use std::net::SocketAddr;
use std::time::Duration;

use ringer::call::{CallStatus, VoicemailAction};
use ringer::testing::{insert_queued_call, new_call, random_namespace, seed_org};
use ringer_dialer::twilio::{TwilioArgs, TwilioCarrier};
use serde_json::json;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use twilio_fake::{Answer, EndedBy, FakeTwilio, Line, Scenario};
use uuid::Uuid;

use crate::helpers::*;

pub const ACCOUNT_SID: &str = "ACtest0000000000000000000000000000";
pub const AUTH_TOKEN: &str = "test-auth-token";

/// The fake, and the carrier's routes served on a loopback port.
pub struct TwilioRig {
    pub fake: FakeTwilio,
    pub carrier: TwilioCarrier,
    pub ingress: SocketAddr,
    stop: CancellationToken,
}

impl TwilioRig {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(adjust: impl FnOnce(&mut TwilioArgs)) -> Self {
        let fake = FakeTwilio::start(ACCOUNT_SID, AUTH_TOKEN).await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ingress = listener.local_addr().unwrap();
        let mut args = TwilioArgs::new(
            ACCOUNT_SID,
            AUTH_TOKEN,
            &format!("http://{ingress}"),
            &fake.base_url,
        );
        args.twilio_silence_ms = 300;
        args.twilio_amd_timeout_seconds = 3;
        adjust(&mut args);
        let settings = args.settings(true, 0.0).expect("valid settings");
        let carrier = TwilioCarrier::new(settings, "twilio-fake").expect("carrier");
        let stop = CancellationToken::new();
        tokio::spawn(ringer_dialer::twilio::serve(
            listener,
            carrier.router(),
            stop.clone(),
        ));
        Self {
            fake,
            carrier,
            ingress,
            stop,
        }
    }
}

impl Drop for TwilioRig {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A test destination number of its own.
pub fn number(line: u32) -> String {
    format!("+1202{:07}", 3_000_000 + line)
}

/// What the API's cancel handler does for a call the dialer owns.
async fn request_cancel(pool: &PgPool, call_id: Uuid) {
    sqlx::query(
        "UPDATE calls SET cancel_requested_at = now(), updated_at = now() \
         WHERE id = $1 AND status IN ('initiated', 'ringing')",
    )
    .bind(call_id)
    .execute(pool)
    .await
    .expect("the call is cancelable");
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_call_runs_through_twilio_end_to_end(pool: PgPool) {
    let namespace = random_namespace();
    let test = test_broker(&namespace, 0.0).await;
    let org = seed_org(&pool, 100_000_000).await;
    let rig = TwilioRig::start().await;
    let to = number(1);
    rig.fake.script(
        &to,
        Scenario::with_lines(
            Answer::Human,
            vec![
                Line::Say("Hello?".into()),
                Line::Say("Sure, go ahead.".into()),
                Line::Dtmf('1'),
                Line::Say("Yes.".into()),
                Line::Say("It's 2026-05-01.".into()),
            ],
        ),
    );
    let mut new = new_call(&org, &to);
    new.returns = Some(json!({"confirmed": "boolean", "day": "date"}));
    let call = insert_queued_call(&pool, &new).await;
    let dialer =
        RunningDialer::start_with(dialer_config(&pool, &namespace, 0.0), rig.carrier.clone());

    let row = wait_until_ended(&pool, call.id, Duration::from_secs(20)).await;
    let fake = rig
        .fake
        .wait_for(&to, Duration::from_secs(5), |call| call.is_over())
        .await;
    dialer.stop().await.expect("the dialer stops cleanly");

    assert_eq!(row.call.status, CallStatus::InProgress);
    assert_eq!(row.call.hangup_cause.as_deref(), Some("completed"));
    assert_eq!(row.call.answered_by.as_deref(), Some("human"));
    assert_eq!(row.call.error_code, None);
    assert_eq!(row.carrier_call_id.as_deref(), Some(fake.sid.as_str()));
    assert!(row.call.started_at.is_some() && row.call.answered_at.is_some());

    // The REST request: TwiML to our relay, signed callbacks to our routes, AMD.
    assert_eq!(fake.param("To"), Some(to.as_str()));
    assert_eq!(fake.param("From"), Some(org.number.as_str()));
    assert!(
        fake.param("Twiml")
            .unwrap()
            .contains(&format!("ws://{}/twilio/calls/", rig.ingress))
    );
    assert_eq!(fake.param("MachineDetection"), Some("Enable"));
    assert_eq!(
        fake.callback_statuses(),
        ["initiated", "ringing", "in-progress", "completed"]
    );
    assert!(
        fake.callbacks.iter().all(|(_, code)| *code == 204),
        "every signed callback accepted: {:?}",
        fake.callbacks
    );
    assert_eq!(fake.amd_callbacks, [("human".to_owned(), 204)]);
    assert_eq!(fake.ended_by, Some(EndedBy::RelayEnd), "we sent `end`");
    assert_eq!(fake.hangup_requests, 0);

    // The conversation: what the callee heard is what the transcript says we said.
    let segments = transcript(&pool, call.id).await;
    let said: Vec<(&str, &str)> = segments
        .iter()
        .map(|s| (s.role.as_str(), s.text.as_str()))
        .collect();
    assert_eq!(
        said,
        [
            ("callee", "Hello?"),
            ("agent", fake.heard[0].as_str()),
            ("callee", "Sure, go ahead."),
            (
                "agent",
                "Could you tell me your confirmed? A yes or no is fine."
            ),
            ("callee", "[pressed 1]"),
            (
                "agent",
                "Sorry, I didn't catch that. Could you tell me your confirmed? A yes or no is fine."
            ),
            ("callee", "Yes."),
            ("agent", "Could you tell me your day? Which date is it?"),
            ("callee", "It's 2026-05-01."),
            ("agent", "Thank you, that's everything I needed. Goodbye!"),
        ]
    );
    assert!(segments.iter().all(|s| s.source == "stt"));
    let agent_turns: Vec<&str> = segments
        .iter()
        .filter(|s| s.role == "agent")
        .map(|s| s.text.as_str())
        .collect();
    assert_eq!(fake.heard, agent_turns);
    assert_eq!(rig.carrier.live_legs(), 0, "the leg deregistered");
    test.cleanup().await;
}

struct Outcome {
    name: &'static str,
    scenario: Scenario,
    voicemail_action: VoicemailAction,
    status: CallStatus,
    hangup_cause: &'static str,
    answered_by: Option<&'static str>,
    error_code: Option<&'static str>,
    callbacks: &'static [&'static str],
}

#[sqlx::test(migrations = "../../migrations")]
async fn every_twilio_outcome_maps_to_the_call(pool: PgPool) {
    let namespace = random_namespace();
    let test = test_broker(&namespace, 0.0).await;
    let org = seed_org(&pool, 100_000_000).await;
    let rig = TwilioRig::start().await;
    let voicemail = || {
        Scenario::with_lines(
            Answer::Machine,
            vec![Line::Say(
                "You've reached Ana. Leave a message after the tone.".into(),
            )],
        )
    };
    let outcome = |name, scenario, status, hangup_cause, callbacks| Outcome {
        name,
        scenario,
        voicemail_action: VoicemailAction::Hangup,
        status,
        hangup_cause,
        answered_by: None,
        error_code: None,
        callbacks,
    };
    let cases = vec![
        outcome(
            "busy",
            Scenario::with_lines(Answer::Busy, vec![]),
            CallStatus::Busy,
            "busy",
            &["initiated", "ringing", "busy"],
        ),
        outcome(
            "no answer",
            Scenario::with_lines(Answer::NoAnswer, vec![]),
            CallStatus::NoAnswer,
            "no_answer",
            &["initiated", "ringing", "no-answer"],
        ),
        Outcome {
            error_code: Some("carrier_error"),
            ..outcome(
                "failed",
                Scenario::with_lines(Answer::Fail { sip: 404 }, vec![]),
                CallStatus::Failed,
                "carrier_error",
                &["initiated", "failed"],
            )
        },
        Outcome {
            answered_by: Some("machine"),
            ..outcome(
                "voicemail, hang up",
                voicemail(),
                CallStatus::NoAnswer,
                "voicemail",
                &["initiated", "ringing", "in-progress", "completed"],
            )
        },
        Outcome {
            answered_by: Some("machine"),
            voicemail_action: VoicemailAction::LeaveMessage,
            ..outcome(
                "voicemail, leave a message",
                voicemail(),
                CallStatus::InProgress,
                "completed",
                &["initiated", "ringing", "in-progress", "completed"],
            )
        },
        Outcome {
            answered_by: Some("human"),
            ..outcome(
                "callee hangs up",
                Scenario::with_lines(
                    Answer::Human,
                    vec![Line::Say("Hello?".into()), Line::HangUp],
                ),
                CallStatus::InProgress,
                "callee_hangup",
                &["initiated", "ringing", "in-progress", "completed"],
            )
        },
    ];
    let mut calls = Vec::new();
    for (line, case) in cases.into_iter().enumerate() {
        let to = number(100 + line as u32);
        rig.fake.script(&to, case.scenario.clone());
        let mut new = new_call(&org, &to);
        new.voicemail_action = case.voicemail_action;
        calls.push((case, to, insert_queued_call(&pool, &new).await));
    }
    let dialer =
        RunningDialer::start_with(dialer_config(&pool, &namespace, 0.0), rig.carrier.clone());
    for (case, to, call) in &calls {
        let name = case.name;
        let row = wait_until_ended(&pool, call.id, Duration::from_secs(20)).await;
        let fake = rig
            .fake
            .wait_for(to, Duration::from_secs(10), |call| call.is_over())
            .await;
        assert_eq!(row.call.status, case.status, "{name}: status");
        assert_eq!(
            row.call.hangup_cause.as_deref(),
            Some(case.hangup_cause),
            "{name}: hangup_cause"
        );
        assert_eq!(
            row.call.answered_by.as_deref(),
            case.answered_by,
            "{name}: answered_by"
        );
        assert_eq!(
            row.call.error_code.as_deref(),
            case.error_code,
            "{name}: error_code"
        );
        assert_eq!(
            fake.callback_statuses(),
            case.callbacks,
            "{name}: callbacks"
        );
        assert!(
            fake.callbacks.iter().all(|(_, code)| *code == 204),
            "{name}: {:?}",
            fake.callbacks
        );
        assert_eq!(row.dial_attempts, 1, "{name}: dialled once");
        match name {
            "failed" => {
                let message = row.call.error_message.clone().unwrap_or_default();
                assert!(message.contains("SIP 404"), "{name}: {message}");
                assert!(message.contains("does not exist"), "{name}: {message}");
            }
            "voicemail, hang up" => {
                assert_eq!(fake.amd_callbacks[0].0, "machine_start");
                assert!(fake.heard.is_empty(), "nothing said to the machine");
                assert!(fake.ended_by.is_some());
            }
            "voicemail, leave a message" => {
                assert_eq!(fake.param("MachineDetection"), Some("DetectMessageEnd"));
                assert_eq!(fake.amd_callbacks[0].0, "machine_end_beep");
                assert_eq!(fake.heard.len(), 1, "{:?}", fake.heard);
                assert!(
                    fake.heard[0].contains("Please call us back at"),
                    "{:?}",
                    fake.heard
                );
            }
            "callee hangs up" => assert_eq!(fake.ended_by, Some(EndedBy::Callee)),
            _ => {}
        }
    }
    dialer.stop().await.expect("the dialer stops cleanly");
    test.cleanup().await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn cancel_hangs_up_a_ringing_call_over_rest(pool: PgPool) {
    let namespace = random_namespace();
    let test = test_broker(&namespace, 0.0).await;
    let org = seed_org(&pool, 100_000_000).await;
    let rig = TwilioRig::start().await;
    let to = number(200);
    rig.fake.script(
        &to,
        Scenario {
            answer: Answer::NoAnswer,
            ring: Some(Duration::from_secs(60)),
            lines: vec![],
        },
    );
    let call = insert_queued_call(&pool, &new_call(&org, &to)).await;
    let dialer =
        RunningDialer::start_with(dialer_config(&pool, &namespace, 0.0), rig.carrier.clone());
    wait_for_status(&pool, call.id, CallStatus::Ringing).await;
    request_cancel(&pool, call.id).await;
    let row = wait_until_ended(&pool, call.id, Duration::from_secs(10)).await;
    let fake = rig
        .fake
        .wait_for(&to, Duration::from_secs(5), |call| call.is_over())
        .await;
    dialer.stop().await.expect("the dialer stops cleanly");

    assert_eq!(row.call.status, CallStatus::Canceled);
    assert_eq!(row.call.hangup_cause.as_deref(), Some("canceled"));
    assert_eq!(fake.hangup_requests, 1, "one REST hang-up");
    assert_eq!(fake.ended_by, Some(EndedBy::RestHangUp));
    assert_eq!(fake.status, "canceled");
    test.cleanup().await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn max_duration_ends_the_twilio_call(pool: PgPool) {
    let namespace = random_namespace();
    let test = test_broker(&namespace, 0.0).await;
    let org = seed_org(&pool, 100_000_000).await;
    let rig = TwilioRig::start().await;
    let to = number(300);
    rig.fake.script(
        &to,
        Scenario::with_lines(
            Answer::Human,
            vec![
                Line::Say("Hello?".into()),
                Line::Say("Please hold on a moment.".into()),
                Line::Hold,
            ],
        ),
    );
    let mut new = new_call(&org, &to);
    new.max_duration_seconds = 3;
    let call = insert_queued_call(&pool, &new).await;
    let dialer =
        RunningDialer::start_with(dialer_config(&pool, &namespace, 0.0), rig.carrier.clone());
    let row = wait_until_ended(&pool, call.id, Duration::from_secs(30)).await;
    let fake = rig
        .fake
        .wait_for(&to, Duration::from_secs(10), |call| call.is_over())
        .await;
    dialer.stop().await.expect("the dialer stops cleanly");

    assert_eq!(row.call.status, CallStatus::InProgress);
    assert_eq!(row.call.hangup_cause.as_deref(), Some("max_duration"));
    assert!(
        matches!(fake.ended_by, Some(EndedBy::RelayEnd | EndedBy::RestHangUp)),
        "{:?}",
        fake.ended_by
    );
    assert_eq!(fake.status, "completed");
    assert_eq!(
        fake.param("TimeLimit"),
        Some("33"),
        "Twilio's own cap backs ours up"
    );
    test.cleanup().await;
}

#[tokio::test]
async fn unsigned_and_forged_requests_are_rejected() {
    // No dialer: the routes alone.
    let rig = TwilioRig::start().await;
    let http = reqwest::Client::new();
    let base = format!("http://{}", rig.ingress);
    let form = |status: &str| {
        vec![
            ("CallSid".to_owned(), "CA0001".to_owned()),
            ("CallStatus".to_owned(), status.to_owned()),
        ]
    };
    let post = |path: &str, params: Vec<(String, String)>, signature: Option<String>| {
        let mut request = http.post(format!("{base}{path}")).form(&params);
        if let Some(signature) = signature {
            request = request.header("X-Twilio-Signature", signature);
        }
        request.send()
    };
    let path = "/twilio/calls/nokey/status";
    let url = format!("{base}{path}");

    let unsigned = post(path, form("completed"), None).await.unwrap();
    assert_eq!(unsigned.status(), 403);
    let forged = twilio_fake::sign("not-the-token", &url, &form("completed"));
    let forged = post(path, form("completed"), Some(forged)).await.unwrap();
    assert_eq!(forged.status(), 403);
    // Signed for other parameters than those sent.
    let replayed = twilio_fake::sign(AUTH_TOKEN, &url, &form("ringing"));
    let replayed = post(path, form("completed"), Some(replayed)).await.unwrap();
    assert_eq!(replayed.status(), 403);
    // Signed for another URL.
    let elsewhere = twilio_fake::sign(
        AUTH_TOKEN,
        &format!("{base}/twilio/calls/other/status"),
        &form("completed"),
    );
    let elsewhere = post(path, form("completed"), Some(elsewhere))
        .await
        .unwrap();
    assert_eq!(elsewhere.status(), 403);
    let amd = post(
        "/twilio/calls/nokey/amd",
        vec![("AnsweredBy".into(), "human".into())],
        None,
    )
    .await
    .unwrap();
    assert_eq!(amd.status(), 403);

    // Correctly signed: accepted (the call is not running here, so nothing happens).
    let genuine = twilio_fake::sign(AUTH_TOKEN, &url, &form("completed"));
    let genuine = post(path, form("completed"), Some(genuine)).await.unwrap();
    assert_eq!(genuine.status(), 204);

    // The WebSocket handshake needs a signature too.
    let handshake = |signature: Option<String>| {
        let mut request = http
            .get(format!("{base}/twilio/calls/nokey/relay"))
            .header("Connection", "Upgrade")
            .header("Upgrade", "websocket")
            .header("Sec-WebSocket-Version", "13")
            .header("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==");
        if let Some(signature) = signature {
            request = request.header("X-Twilio-Signature", signature);
        }
        request.send()
    };
    assert_eq!(handshake(None).await.unwrap().status(), 403);
    let wrong = twilio_fake::sign(
        "not-the-token",
        &format!("ws://{}/twilio/calls/nokey/relay", rig.ingress),
        &[],
    );
    assert_eq!(handshake(Some(wrong)).await.unwrap().status(), 403);
    let right = twilio_fake::sign(
        AUTH_TOKEN,
        &format!("ws://{}/twilio/calls/nokey/relay", rig.ingress),
        &[],
    );
    assert_eq!(
        handshake(Some(right)).await.unwrap().status(),
        404,
        "signed, but no such call"
    );
}
