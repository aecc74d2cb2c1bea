//! Happy paths: fan-out, order, signatures, headers, rotation, redelivery.

use std::collections::HashMap;
use std::time::Duration;

use ringer::events::{Event, EventType};
use sqlx::PgPool;
use uuid::Uuid;

use crate::helpers::*;

const LIFECYCLE: [EventType; 3] = [
    EventType::CallRinging,
    EventType::CallAnswered,
    EventType::CallCompleted,
];

#[test]
fn the_test_signer_matches_the_standard_webhooks_specification_vector() {
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let id = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    let body = br#"{"test": 2432232314}"#;
    let header = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
    assert_eq!(standard_matches(id, "1614265330", header, secret, body), 1);
    // And the code under test agrees with the independent implementation.
    assert_eq!(
        ringer::signing::standard_v1(secret, id, 1_614_265_330, body).unwrap(),
        header
    );
    let callingbox = ringer::signing::callingbox_header(&[secret], 1_614_265_330, body);
    assert_eq!(callingbox_matches(&callingbox, secret, body), 1);
}

#[sqlx::test(migrations = "../../migrations")]
async fn every_event_reaches_each_destination_once_in_order_and_signed(pool: PgPool) {
    let namespace = Namespace::new();
    let mut config = dispatcher_config(&pool, &namespace, 0.0);
    // Exactly once is the promise while attempts succeed: an attempt timed
    // out on a starved test machine would rightly be retried, so the timeout
    // is far above the receivers' 40 ms.
    config.attempt_timeout_seconds = 15;
    let dispatcher = Dispatcher::start(config).await;
    // Slow answers make the events of a call overlap in the dispatcher.
    let slow = Plan {
        delay: Duration::from_millis(40),
        ..Plan::default()
    };
    let mut inline = Receiver::start(slow.clone()).await;
    let mut everything = Receiver::start(slow).await;
    let mut completed_only = Receiver::start(Plan::default()).await;
    let org = seed_org(&pool).await;
    let (_, everything_secret) = create_endpoint(&pool, &org, &everything.url, &["*"]).await;
    let (_, completed_secret) =
        create_endpoint(&pool, &org, &completed_only.url, &["call.completed"]).await;
    let org_secret = org_secret(&pool, &org).await;

    let calls = 3;
    let mut call_ids = Vec::new();
    for _ in 0..calls {
        let call = queued_call(&pool, &org, Some(&inline.url)).await;
        call_ids.push(call.id);
        emit(&pool, &org, &call, &LIFECYCLE).await;
    }

    let expected: Vec<String> = std::iter::once("call.queued")
        .chain(LIFECYCLE.iter().map(|e| e.as_str()))
        .map(str::to_owned)
        .collect();
    for (receiver, secret) in [
        (&mut inline, &org_secret),
        (&mut everything, &everything_secret),
    ] {
        let got = receiver.take(calls * 4, Duration::from_secs(20)).await;
        let mut per_call: HashMap<String, Vec<&Received>> = HashMap::new();
        for received in &got {
            assert_signed(received, secret);
            per_call
                .entry(received.header("x-callingbox-call-id").to_owned())
                .or_default()
                .push(received);
        }
        assert_eq!(per_call.len(), calls);
        for (call_id, received) in per_call {
            let types: Vec<String> = received.iter().map(|r| r.event_type()).collect();
            if types != expected {
                panic!(
                    "order of call {call_id}: {types:?}, deliveries: {:#?}",
                    deliveries(&pool).await
                );
            }
            assert!(
                received
                    .iter()
                    .all(|r| r.json()["data"]["call"]["id"] == call_id.as_str())
            );
        }
        assert!(receiver.drain(Duration::from_millis(500)).await.is_empty());
    }
    let got = completed_only.take(calls, Duration::from_secs(10)).await;
    for received in &got {
        assert_eq!(received.event_type(), "call.completed");
        assert_signed(received, &completed_secret);
    }
    assert!(
        completed_only
            .drain(Duration::from_millis(300))
            .await
            .is_empty()
    );

    // Headers and body as documented.
    let sample = &got[0];
    let body = sample.json();
    let keys: Vec<&str> = body
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys.len(), 5, "{body}");
    assert_eq!(body["api_version"], "2026-04");
    assert_eq!(body["type"], "call.completed");
    assert!(body["created"].as_i64().unwrap() > 1_700_000_000);
    assert!(body["id"].as_str().unwrap().parse::<uuid::Uuid>().is_ok());
    assert_eq!(
        body["data"]["call"]["id"],
        sample.header("x-callingbox-call-id")
    );
    let raw = std::str::from_utf8(&sample.body).unwrap();
    assert!(
        raw.starts_with(r#"{"id":"#),
        "documented field order: {raw}"
    );
    assert_eq!(sample.header("content-type"), "application/json");
    assert!(sample.header("user-agent").starts_with("ringer-webhooks/"));
    assert_eq!(sample.header("callingbox-event-type"), "call.completed");
    assert_eq!(sample.header("x-callingbox-event"), "call.completed");
    assert_eq!(
        sample.header("callingbox-event-id"),
        sample.header("webhook-id")
    );
    let delivery_id: uuid::Uuid = sample.header("webhook-id").parse().unwrap();
    let (event_type, status): (String, String) =
        sqlx::query_as("SELECT event_type, status FROM webhook_deliveries WHERE id = $1")
            .bind(delivery_id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(
        (event_type.as_str(), status.as_str()),
        ("call.completed", "delivered")
    );

    // One delivery per (event, destination): 3 calls × (4 inline + 4 endpoint + 1 completed).
    let rows = wait_for_deliveries(&pool, Duration::from_secs(5), "all delivered", |rows| {
        rows.iter().all(|row| row.status == "delivered")
    })
    .await;
    assert_eq!(rows.len(), calls * 9);
    assert!(rows.iter().all(|row| row.attempt_count == 1));
    let statuses: Vec<(String,)> =
        sqlx::query_as("SELECT webhook_status FROM calls WHERE id = ANY($1)")
            .bind(&call_ids)
            .fetch_all(&pool)
            .await
            .unwrap();
    assert!(
        statuses.iter().all(|(status,)| status == "delivered"),
        "{statuses:?}"
    );

    dispatcher.stop().await;
    namespace.cleanup().await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_redelivered_event_does_not_fan_out_twice(pool: PgPool) {
    let namespace = Namespace::new();
    let dispatcher = Dispatcher::start(dispatcher_config(&pool, &namespace, 0.0)).await;
    let mut receiver = Receiver::start(Plan::default()).await;
    let org = seed_org(&pool).await;
    create_endpoint(&pool, &org, &receiver.url, &["*"]).await;
    let call = queued_call(&pool, &org, Some(&receiver.url)).await;
    assert_eq!(receiver.take(2, Duration::from_secs(10)).await.len(), 2);

    // The relay publishes the same outbox row again (as after a crash before its commit).
    sqlx::query("UPDATE outbox SET published_at = NULL")
        .execute(&pool)
        .await
        .unwrap();
    let broker = namespace.broker().await;
    ringer::outbox::relay_batch(&pool, &broker, 10)
        .await
        .unwrap();
    broker.close().await;
    assert!(receiver.drain(Duration::from_millis(800)).await.is_empty());
    let rows = deliveries(&pool).await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    let (messages,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM webhook_messages WHERE call_id = $1")
            .bind(call.id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(messages, 1);

    dispatcher.stop().await;
    namespace.cleanup().await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_rotation_signs_with_both_secrets_until_the_overlap_ends(pool: PgPool) {
    let namespace = Namespace::new();
    let dispatcher = Dispatcher::start(dispatcher_config(&pool, &namespace, 0.0)).await;
    let mut receiver = Receiver::start(Plan::default()).await;
    let org = seed_org(&pool).await;
    let (endpoint_id, old_secret) = create_endpoint(&pool, &org, &receiver.url, &["*"]).await;

    // What POST /v1/webhook_endpoints/{id}/rotate_secret does, with a 2-second overlap.
    let new_secret = ringer::orgs::generate_webhook_secret();
    sqlx::query(
        "UPDATE webhook_endpoint_secrets SET expires_at = now() + interval '2 seconds' \
         WHERE endpoint_id = $1 AND expires_at IS NULL",
    )
    .bind(endpoint_id)
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("INSERT INTO webhook_endpoint_secrets (endpoint_id, secret) VALUES ($1, $2)")
        .bind(endpoint_id)
        .bind(&new_secret)
        .execute(&pool)
        .await
        .unwrap();

    queued_call(&pool, &org, None).await;
    let during = receiver
        .next(Duration::from_secs(10))
        .await
        .expect("a delivery");
    assert_eq!(assert_signed(&during, &new_secret), (2, 2));
    assert_eq!(assert_signed(&during, &old_secret), (2, 2));
    let header = during.header("callingbox-signature");
    let first_v1 = header.split(',').nth(1).unwrap();
    assert_eq!(
        callingbox_matches(
            &format!("t={},{first_v1}", during.header("webhook-timestamp")),
            &new_secret,
            &during.body
        ),
        1,
        "the newest secret signs first"
    );

    tokio::time::sleep(Duration::from_millis(2200)).await;
    queued_call(&pool, &org, None).await;
    let after = receiver
        .next(Duration::from_secs(10))
        .await
        .expect("a delivery");
    assert_eq!(assert_signed(&after, &new_secret), (1, 1));
    assert_eq!(
        callingbox_matches(
            after.header("callingbox-signature"),
            &old_secret,
            &after.body
        ),
        0
    );

    dispatcher.stop().await;
    namespace.cleanup().await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_redelivery_keeps_the_id_and_counts_manual_retries(pool: PgPool) {
    let namespace = Namespace::new();
    let dispatcher = Dispatcher::start(dispatcher_config(&pool, &namespace, 0.0)).await;
    let mut receiver = Receiver::start(Plan::default()).await;
    let org = seed_org(&pool).await;
    let (_, secret) = create_endpoint(&pool, &org, &receiver.url, &["*"]).await;
    queued_call(&pool, &org, None).await;
    let first = receiver
        .next(Duration::from_secs(10))
        .await
        .expect("delivered");
    let rows = wait_for_deliveries(&pool, Duration::from_secs(5), "delivered", |rows| {
        rows.len() == 1 && rows[0].status == "delivered"
    })
    .await;
    let delivery_id = rows[0].id;

    // What POST /v1/webhook_deliveries/{id}/redeliver does.
    sqlx::query(
        "UPDATE webhook_deliveries SET \
           max_attempts = CASE WHEN status = 'pending' THEN max_attempts ELSE attempt_count + 1 END, \
           status = 'pending', manual_retry_count = manual_retry_count + 1, \
           next_attempt_at = now(), enqueued_at = NULL, updated_at = now() WHERE id = $1",
    )
    .bind(delivery_id)
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(ringer_webhook_dispatcher::sweeper::NOTIFY_CHANNEL)
        .execute(&pool)
        .await
        .unwrap();

    let again = receiver
        .next(Duration::from_secs(5))
        .await
        .expect("redelivered");
    assert_eq!(again.header("webhook-id"), first.header("webhook-id"));
    assert_eq!(again.header("callingbox-event-id"), delivery_id.to_string());
    assert_eq!(again.body, first.body, "the same envelope");
    assert_signed(&again, &secret);
    let rows = wait_for_deliveries(&pool, Duration::from_secs(5), "delivered again", |rows| {
        rows[0].status == "delivered" && rows[0].attempt_count == 2
    })
    .await;
    assert_eq!(rows[0].manual_retry_count, 1);
    assert!(receiver.drain(Duration::from_millis(500)).await.is_empty());

    dispatcher.stop().await;
    namespace.cleanup().await;
}

/// Publishes `event` straight to the events exchange, bypassing the outbox (as
/// a message redelivered late after a dispatcher died would arrive).
async fn publish_event(namespace: &Namespace, event: &ringer::events::Event) {
    let broker = namespace.broker().await;
    let payload = serde_json::to_vec(event).unwrap();
    broker
        .publish_confirmed(ringer::broker::Outgoing {
            exchange: &namespace.names.events_exchange(),
            routing_key: event.event_type.routing_key(),
            payload: &payload,
            message_id: Some(event.id.to_string()),
            headers: Default::default(),
        })
        .await
        .unwrap();
    broker.close().await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn an_earlier_event_arriving_late_is_still_delivered_first(pool: PgPool) {
    let namespace = Namespace::new();
    let dispatcher = Dispatcher::start(dispatcher_config(&pool, &namespace, 0.0)).await;
    let mut everything = Receiver::start(Plan::default()).await;
    let mut completed_only = Receiver::start(Plan::default()).await;
    let org = seed_org(&pool).await;
    create_endpoint(&pool, &org, &everything.url, &["*"]).await;
    create_endpoint(&pool, &org, &completed_only.url, &["call.completed"]).await;
    let call = queued_call(&pool, &org, None).await;
    let first = everything.take(1, Duration::from_secs(10)).await;
    assert_eq!(first[0].event_type(), "call.queued");

    let [ringing, answered, completed] = dialer_events(&org, &call);
    publish_event(&namespace, &ringing).await;
    assert_eq!(
        everything.take(1, Duration::from_secs(10)).await[0].event_type(),
        "call.ringing"
    );
    // `call.answered` is late (its first delivery died with a dispatcher, say):
    // `call.completed` must wait for it, even where no delivery of it exists yet.
    publish_event(&namespace, &completed).await;
    assert!(
        everything
            .drain(Duration::from_millis(800))
            .await
            .is_empty(),
        "call.completed is held back until call.answered has been fanned out"
    );
    assert!(
        completed_only
            .drain(Duration::from_millis(100))
            .await
            .is_empty(),
        "also at an endpoint that does not receive call.answered"
    );
    publish_event(&namespace, &answered).await;
    let rest: Vec<String> = everything
        .take(2, Duration::from_secs(10))
        .await
        .iter()
        .map(Received::event_type)
        .collect();
    assert_eq!(rest, ["call.answered", "call.completed"]);
    let completed_only: Vec<String> = completed_only
        .take(1, Duration::from_secs(10))
        .await
        .iter()
        .map(Received::event_type)
        .collect();
    assert_eq!(completed_only, ["call.completed"]);
    dispatcher.stop().await;
    namespace.cleanup().await;
}

/// The dialer's public events of `call`, with the Call as each carries it:
/// ringing (sequence 2), answered (3) and completed (7; the internal events
/// ended, result ready and billed take 4 to 6).
fn dialer_events(org: &ringer::testing::TestOrg, call: &ringer::call::Call) -> [Event; 3] {
    use ringer::call::CallStatus;
    let now = chrono::Utc::now();
    let event = |event_type, sequence, call: &ringer::call::Call| Event {
        id: Uuid::now_v7(),
        event_type,
        version: ringer::events::EVENT_VERSION,
        org_id: org.id,
        call_id: call.id,
        sequence,
        occurred_at: now,
        call: call.clone(),
    };
    let mut ringing = call.clone();
    ringing.status = CallStatus::Ringing;
    ringing.started_at = Some(now);
    let mut answered = ringing.clone();
    answered.status = CallStatus::InProgress;
    answered.answered_at = Some(now);
    let mut completed = answered.clone();
    completed.status = CallStatus::Completed;
    completed.ended_at = Some(now);
    [
        event(EventType::CallRinging, 2, &ringing),
        event(EventType::CallAnswered, 3, &answered),
        event(EventType::CallCompleted, 7, &completed),
    ]
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_delivery_parked_for_a_late_event_goes_even_if_its_wake_up_is_missed(pool: PgPool) {
    let namespace = Namespace::new();
    let mut config = dispatcher_config(&pool, &namespace, 0.0);
    // The sweeper is out of reach: only the dispatcher's own look-again counts.
    config.sweep_after_seconds = 600;
    let dispatcher = Dispatcher::start(config).await;
    let mut receiver = Receiver::start(Plan::default()).await;
    let org = seed_org(&pool).await;
    create_endpoint(&pool, &org, &receiver.url, &["call.completed"]).await;
    let call = queued_call(&pool, &org, None).await;
    let [ringing, answered, completed] = dialer_events(&org, &call);
    publish_event(&namespace, &ringing).await;
    publish_event(&namespace, &completed).await;
    assert!(
        receiver.drain(Duration::from_millis(800)).await.is_empty(),
        "call.completed waits for call.answered"
    );
    // call.answered's fan-out commits without waking the parked delivery, as
    // one racing the claim that parked it does (its snapshot predates the mark).
    sqlx::query(
        "INSERT INTO webhook_messages (event_id, org_id, call_id, event_type, sequence, body) \
         VALUES ($1, $2, $3, $4, $5, '{}')",
    )
    .bind(answered.id)
    .bind(org.id)
    .bind(call.id)
    .bind(answered.event_type.as_str())
    .bind(answered.sequence)
    .execute(&pool)
    .await
    .unwrap();
    let got = receiver.take(1, Duration::from_secs(10)).await;
    assert_eq!(got[0].event_type(), "call.completed");
    dispatcher.stop().await;
    namespace.cleanup().await;
}
