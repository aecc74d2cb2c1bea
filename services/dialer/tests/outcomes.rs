//! Every simulated outcome end to end: status sequence, timestamps, events
//! (each once), transcript; and a redelivered `call.queued` that changes nothing.

use std::time::Duration;

use ringer::call::{CallStatus, Language, VoicemailAction};
use ringer::events::EventType;
use ringer::testing::{insert_queued_call, new_call, random_namespace, seed_org};
use ringer_dialer::sim::SimOutcome;
use serde_json::json;
use sqlx::PgPool;

use crate::helpers::*;

struct Case {
    name: &'static str,
    to: String,
    voicemail_action: VoicemailAction,
    metadata: Option<serde_json::Value>,
    language: Language,
    max_duration_seconds: i32,
    status: CallStatus,
    hangup_cause: &'static str,
    answered_by: Option<&'static str>,
    error_code: Option<&'static str>,
}

fn case(
    name: &'static str,
    outcome: SimOutcome,
    status: CallStatus,
    hangup_cause: &'static str,
) -> Case {
    Case {
        name,
        to: outcome.test_number(),
        voicemail_action: VoicemailAction::Hangup,
        metadata: None,
        language: Language::En,
        max_duration_seconds: 300,
        status,
        hangup_cause,
        answered_by: None,
        error_code: None,
    }
}

fn cases() -> Vec<Case> {
    use CallStatus::*;
    let human = Some("human");
    vec![
        Case {
            answered_by: human,
            ..case("answered", SimOutcome::Answered, InProgress, "completed")
        },
        Case {
            to: "+14155551234".to_owned(),
            answered_by: human,
            ..case(
                "any other number",
                SimOutcome::Answered,
                InProgress,
                "completed",
            )
        },
        case("busy", SimOutcome::Busy, Busy, "busy"),
        case("no answer", SimOutcome::NoAnswer, NoAnswer, "no_answer"),
        Case {
            answered_by: Some("machine"),
            ..case(
                "voicemail, hang up",
                SimOutcome::Voicemail,
                NoAnswer,
                "voicemail",
            )
        },
        Case {
            voicemail_action: VoicemailAction::LeaveMessage,
            answered_by: Some("machine"),
            ..case(
                "voicemail, leave a message",
                SimOutcome::Voicemail,
                InProgress,
                "completed",
            )
        },
        Case {
            error_code: Some("carrier_error"),
            ..case(
                "carrier failure",
                SimOutcome::Failed,
                Failed,
                "carrier_error",
            )
        },
        Case {
            answered_by: human,
            ..case(
                "hangs up mid-call",
                SimOutcome::HangupEarly,
                InProgress,
                "callee_hangup",
            )
        },
        Case {
            answered_by: human,
            max_duration_seconds: 30,
            ..case(
                "never hangs up",
                SimOutcome::OnHold,
                InProgress,
                "max_duration",
            )
        },
        Case {
            answered_by: human,
            ..case("unhelpful", SimOutcome::Unhelpful, InProgress, "completed")
        },
        Case {
            metadata: Some(json!({"sim": {"outcome": "busy"}})),
            ..case(
                "metadata.sim.outcome wins over the number",
                SimOutcome::Answered,
                Busy,
                "busy",
            )
        },
        Case {
            language: Language::Es,
            metadata: Some(json!({"sim": {"answers": {"preferred_time": "las tres"}}})),
            answered_by: human,
            ..case(
                "spanish, answers from metadata.sim.answers",
                SimOutcome::Answered,
                InProgress,
                "completed",
            )
        },
    ]
}

#[sqlx::test(migrations = "../../migrations")]
async fn every_outcome_runs_end_to_end(pool: PgPool) {
    let namespace = random_namespace();
    let test = test_broker(&namespace, 0.0).await;
    let mut tap = test.observe("#").await;
    let org = seed_org(&pool, 100_000_000).await;

    let mut calls = Vec::new();
    for case in cases() {
        let mut new = new_call(&org, &case.to);
        new.voicemail_action = case.voicemail_action;
        new.metadata = case.metadata.clone();
        new.language = case.language;
        new.max_duration_seconds = case.max_duration_seconds;
        new.context = json!({"name": "Ana", "confirmed": true, "preferred_time": "3pm"});
        new.returns = Some(json!({"confirmed": "boolean", "preferred_time": "string"}));
        let call = insert_queued_call(&pool, &new).await;
        calls.push((case, call));
    }
    let dialer = RunningDialer::start(dialer_config(&pool, &namespace, 0.0));
    let events = collect_until_ended(&mut tap, calls.len(), Duration::from_secs(30)).await;
    dialer.stop().await.expect("the dialer stops cleanly");
    let events = by_call(&events);

    for (case, created) in &calls {
        let name = case.name;
        let row = call_row(&pool, created.id).await;
        let call = &row.call;
        assert_eq!(call.status, case.status, "{name}: status");
        assert_eq!(
            call.hangup_cause.as_deref(),
            Some(case.hangup_cause),
            "{name}: hangup_cause"
        );
        assert_eq!(
            call.answered_by.as_deref(),
            case.answered_by,
            "{name}: answered_by"
        );
        assert_eq!(
            call.error_code.as_deref(),
            case.error_code,
            "{name}: error_code"
        );
        assert_eq!(
            call.error_message.is_some(),
            case.error_code.is_some(),
            "{name}: error_message"
        );
        assert_eq!(row.dial_attempts, 1, "{name}: dialled once");
        assert!(row.dialer_id.is_some(), "{name}: claimed");
        assert_eq!(row.lease_expires_at, None, "{name}: lease released");

        // Timestamps in order.
        let ended_at = call.ended_at.expect("ended");
        let rang = case.status != CallStatus::Failed;
        let answered = call.answered_at.is_some();
        assert_eq!(call.started_at.is_some(), rang, "{name}: started_at");
        assert_eq!(
            row.carrier_call_id.is_some(),
            rang,
            "{name}: carrier_call_id"
        );
        assert_eq!(
            answered,
            case.status == CallStatus::InProgress,
            "{name}: answered_at"
        );
        if let Some(started_at) = call.started_at {
            assert!(call.created_at <= started_at, "{name}: created ≤ started");
            assert!(
                started_at <= call.answered_at.unwrap_or(ended_at),
                "{name}: started ≤ answered"
            );
        }
        if let Some(answered_at) = call.answered_at {
            assert!(answered_at <= ended_at, "{name}: answered ≤ ended");
        }
        assert!(
            call.duration_seconds.is_some_and(|s| s >= 0),
            "{name}: duration_seconds"
        );

        // The status sequence, one event each, in per-call order.
        let mut expected = vec![EventType::CallQueued];
        let mut statuses = vec![CallStatus::Queued];
        if rang {
            expected.push(EventType::CallRinging);
            statuses.push(CallStatus::Ringing);
        }
        if answered {
            expected.push(EventType::CallAnswered);
            statuses.push(CallStatus::InProgress);
        }
        expected.push(EventType::CallEnded);
        statuses.push(case.status);
        let seen = &events[&created.id];
        let types: Vec<EventType> = seen.iter().map(|event| event.event_type).collect();
        assert_eq!(types, expected, "{name}: events, each once");
        let seen_statuses: Vec<CallStatus> = seen.iter().map(|event| event.call.status).collect();
        assert_eq!(seen_statuses, statuses, "{name}: status sequence");
        let sequences: Vec<i64> = seen.iter().map(|event| event.sequence).collect();
        assert_eq!(
            sequences,
            (1..=seen.len() as i64).collect::<Vec<_>>(),
            "{name}: sequence numbers"
        );
        assert_eq!(
            &seen.last().unwrap().call,
            call,
            "{name}: the ended event carries the final call"
        );

        // The transcript: present for answered calls, in order, inside the call.
        let segments = transcript(&pool, created.id).await;
        assert_eq!(
            !segments.is_empty(),
            answered,
            "{name}: transcript present iff answered"
        );
        for (index, segment) in segments.iter().enumerate() {
            assert_eq!(
                segment.sequence_no, index as i32,
                "{name}: contiguous sequence"
            );
            assert!(segment.role == "agent" || segment.role == "callee");
            assert_eq!(segment.source, "simulated");
            assert!(segment.started_at <= segment.ended_at);
            assert!(segment.duration_ms >= 0);
            assert!(
                call.answered_at.unwrap() <= segment.started_at,
                "{name}: after answer"
            );
            assert!(segment.ended_at <= ended_at, "{name}: before the end");
        }
    }

    let (pool, calls) = (&pool, &calls);
    let texts = |index: usize| async move {
        transcript(pool, calls[index].1.id)
            .await
            .into_iter()
            .map(|s| format!("{}: {}", s.role, s.text))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        texts(0).await,
        [
            "callee: Hello?",
            "agent: Hello Ana, this is an automated assistant calling about the following: \
             Confirm the appointment. I have 2 quick questions.",
            "callee: Sure, go ahead.",
            "agent: Could you tell me your confirmed? A yes or no is fine.",
            "callee: Yes.",
            "agent: Could you tell me your preferred time?",
            "callee: It's 3pm.",
            "agent: Thank you, that's everything I needed. Goodbye!",
        ]
    );
    let voicemail = texts(5).await;
    assert_eq!(voicemail.len(), 2, "{voicemail:?}");
    assert!(voicemail[0].starts_with("callee: Hi, you've reached"));
    assert!(voicemail[1].starts_with("agent: Hello, this is an automated assistant calling about the following: Confirm the appointment."));
    let hung_up = texts(7).await;
    let goodbye = hung_up
        .iter()
        .position(|line| line == "callee: Sorry, I have to go.");
    assert_eq!(
        goodbye,
        Some(hung_up.len() - 2),
        "the agent's next line met a dead line: {hung_up:?}"
    );
    let on_hold = texts(8).await;
    assert!(
        on_hold.contains(&"callee: Please hold on a moment.".to_owned()),
        "{on_hold:?}"
    );
    let unhelpful = texts(9).await;
    assert_eq!(
        unhelpful
            .iter()
            .filter(|line| line.contains("I didn't catch that"))
            .count(),
        2,
        "re-asks each question once: {unhelpful:?}"
    );
    let spanish = texts(11).await;
    assert!(
        spanish.contains(&"agent: ¿Me puede decir su preferred time?".to_owned()),
        "{spanish:?}"
    );
    assert!(
        spanish.contains(&"callee: Es las tres.".to_owned()),
        "{spanish:?}"
    );
    assert!(
        spanish.contains(&"callee: Sí.".to_owned()),
        "`confirmed` falls back to the context: {spanish:?}"
    );

    test.cleanup().await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_redelivered_call_queued_for_a_finished_call_does_nothing(pool: PgPool) {
    let namespace = random_namespace();
    let test = test_broker(&namespace, 0.0).await;
    let mut tap = test.observe("#").await;
    let org = seed_org(&pool, 100_000_000).await;
    let call =
        insert_queued_call(&pool, &new_call(&org, &SimOutcome::Answered.test_number())).await;
    let dialer = RunningDialer::start(dialer_config(&pool, &namespace, 0.0));

    let first = collect_until_ended(&mut tap, 1, Duration::from_secs(20)).await;
    let queued = first
        .iter()
        .find(|event| event.event_type == EventType::CallQueued)
        .expect("call.queued was published");
    let before = call_row(&pool, call.id).await;
    let segments_before = transcript(&pool, call.id).await.len();

    republish(&test, queued).await;
    republish(&test, queued).await;
    let after_redelivery = tap.drain(Duration::from_secs(1)).await;
    dialer.stop().await.expect("the dialer stops cleanly");

    let redelivered: Vec<_> = after_redelivery
        .iter()
        .filter(|event| event.event_type != EventType::CallQueued)
        .collect();
    assert!(redelivered.is_empty(), "no new events: {redelivered:?}");
    let after = call_row(&pool, call.id).await;
    assert_eq!(after.dial_attempts, 1);
    assert_eq!(after.call, before.call, "the call is untouched");
    assert_eq!(transcript(&pool, call.id).await.len(), segments_before);
    test.cleanup().await;
}
