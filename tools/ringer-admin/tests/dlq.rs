use std::process::Command;
use std::time::Duration;

use ringer::broker::{Broker, Names};
use ringer::testing::{amqp_url, database_url, insert_queued_call, new_call, seed_org};
use ringer_admin::dlq::{self, DlqReader, Republisher, Selection};
use sqlx::PgPool;

use crate::helpers::*;

async fn queued_call(pool: &PgPool) -> uuid::Uuid {
    let org = seed_org(pool, 1_000_000).await;
    insert_queued_call(pool, &new_call(&org, "+14155550100"))
        .await
        .id
}

fn admin(pool: &PgPool, names: &Names, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ringer-admin"))
        .args(args)
        .env("DATABASE_URL", database_url(pool))
        .env("AMQP_URL", amqp_url())
        .env("RINGER_NAMESPACE", names.namespace())
        .output()
        .expect("ringer-admin runs")
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_message_failing_past_the_delivery_limit_lands_in_the_dlq_and_show_describes_it(
    pool: PgPool,
) {
    let call_id = queued_call(&pool).await;
    in_namespace(2, async |broker| {
        let (ids, deliveries) = dead_letter(broker, Behaviour::FailTransiently, &[call_id]).await;
        assert_eq!(
            deliveries, 3,
            "delivered once, then redelivered up to the limit of 2"
        );

        let report = dlq::show(&broker.broker, Some(&pool), dialer_dlq(broker), 10, 2)
            .await
            .unwrap();
        assert_eq!(report.depth, 1);
        let [message] = report.messages.as_slice() else {
            panic!("one message expected: {report:?}");
        };
        let work_queue = broker.names.queue("dialer");
        assert_eq!(message.message_id.as_deref(), Some(ids[0].as_str()));
        assert_eq!(message.reason.as_deref(), Some("delivery_limit"));
        assert_eq!(
            message.first_death_reason.as_deref(),
            Some("delivery_limit")
        );
        assert_eq!(message.original_queue.as_deref(), Some(work_queue.as_str()));
        assert_eq!(
            message.original_exchange.as_deref(),
            Some(broker.names.events_exchange().as_str())
        );
        assert_eq!(message.original_routing_keys, ["call.queued"]);
        assert_eq!(message.death_count, 1);
        assert_eq!(message.attempts, Some(3));
        assert!(message.dead_lettered_at.is_some());
        assert_eq!(message.payload["call_id"], call_id.to_string());
        assert_eq!(
            message.headers["traceparent"],
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        );
        let call = message.call.as_ref().expect("the call was looked up");
        assert_eq!((call.id, call.status.as_str()), (call_id, "queued"));
        assert_eq!(
            depth(broker, &dialer_dlq(broker).dlq).await,
            1,
            "show leaves it in place"
        );

        // The binary, as an operator runs it.
        let output = admin(
            &pool,
            &broker.names,
            &["--json", "dlq", "show", "dialer", "--delivery-limit", "2"],
        );
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON output");
        assert_eq!(json["queue"], dialer_dlq(broker).dlq);
        assert_eq!(json["messages"][0]["message_id"], ids[0]);
        assert_eq!(json["messages"][0]["reason"], "delivery_limit");
        assert_eq!(json["messages"][0]["attempts"], 3);
        assert_eq!(json["messages"][0]["call"]["status"], "queued");
        assert_eq!(json["messages"][0]["payload"]["type"], "call.queued");

        let output = admin(&pool, &broker.names, &["dlq", "show", "dialer.dlq"]);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let text = String::from_utf8(output.stdout).unwrap();
        assert!(text.contains("delivery_limit in"), "{text}");
        assert!(text.contains(&format!("{call_id} status queued")), "{text}");
        assert_eq!(
            depth(broker, &dialer_dlq(broker).dlq).await,
            1,
            "still in place"
        );
    })
    .await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_message_declared_poison_is_dead_lettered_at_once(pool: PgPool) {
    let call_id = queued_call(&pool).await;
    in_namespace(5, async |broker| {
        let (_, deliveries) = dead_letter(broker, Behaviour::DeclarePoison, &[call_id]).await;
        assert_eq!(deliveries, 1);
        let report = dlq::show(&broker.broker, None, dialer_dlq(broker), 10, 5)
            .await
            .unwrap();
        let message = &report.messages[0];
        assert_eq!(message.reason.as_deref(), Some("rejected"));
        assert_eq!(message.attempts, None, "unknown for a rejected message");
        assert!(message.call.is_none(), "no database given");
    })
    .await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn list_shows_each_dlq_with_its_depth_and_oldest_age(pool: PgPool) {
    let call_id = queued_call(&pool).await;
    in_namespace(5, async |broker| {
        dead_letter(broker, Behaviour::DeclarePoison, &[call_id, call_id]).await;
        let summaries = dlq::list(&broker.broker).await.unwrap();
        assert_eq!(summaries.len(), 5);
        for summary in &summaries {
            if summary.queue == dialer_dlq(broker).dlq {
                assert_eq!(summary.depth, 2);
                let age = summary.oldest_age_seconds.expect("an age");
                assert!((0.0..60.0).contains(&age), "{age}");
            } else {
                assert_eq!(summary.depth, 0, "{}", summary.queue);
                assert!(summary.oldest_dead_lettered_at.is_none());
            }
        }
        assert_eq!(
            depth(broker, &dialer_dlq(broker).dlq).await,
            2,
            "list takes nothing"
        );
    })
    .await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn replay_sends_a_message_back_to_its_queue_exactly_once(pool: PgPool) {
    let call_id = queued_call(&pool).await;
    in_namespace(5, async |broker| {
        let (ids, _) = dead_letter(broker, Behaviour::DeclarePoison, &[call_id, call_id]).await;
        let queue = dialer_dlq(broker);
        let first = Selection::Id(ids[0].clone());

        let dry = dlq::replay(&broker.broker, queue.clone(), &first, true)
            .await
            .unwrap();
        assert_eq!(dry.replayed.len(), 1);
        assert_eq!(dry.replayed[0].outcome, "would replay");
        assert_eq!(
            depth(broker, &queue.dlq).await,
            2,
            "a dry run changes nothing"
        );
        assert_eq!(depth(broker, &queue.work_queue).await, 0);

        let report = dlq::replay(&broker.broker, queue.clone(), &first, false)
            .await
            .unwrap();
        assert_eq!(report.replayed.len(), 1);
        assert_eq!(
            report.replayed[0].message_id.as_deref(),
            Some(ids[0].as_str())
        );
        assert_eq!(report.replayed[0].to_queue, queue.work_queue);

        let received = drain(broker, &queue.work_queue, Duration::from_millis(500)).await;
        assert_eq!(received.len(), 1, "exactly once");
        let delivery = &received[0];
        assert_eq!(
            delivery
                .properties
                .message_id()
                .as_ref()
                .map(|id| id.as_str()),
            Some(ids[0].as_str())
        );
        let headers = delivery.properties.headers().clone().unwrap();
        assert!(headers.contains_key("traceparent"));
        assert!(
            headers.contains_key("x-death"),
            "the history travels with it"
        );
        let body: serde_json::Value = serde_json::from_slice(&delivery.data).unwrap();
        assert_eq!(body["id"], ids[0]);

        // The other message was left untouched.
        let remaining = dlq::show(&broker.broker, None, queue.clone(), 10, 5)
            .await
            .unwrap();
        assert_eq!(remaining.messages.len(), 1);
        assert_eq!(
            remaining.messages[0].message_id.as_deref(),
            Some(ids[1].as_str())
        );

        let report = dlq::replay(&broker.broker, queue.clone(), &Selection::All, false)
            .await
            .unwrap();
        assert_eq!(report.replayed.len(), 1);
        assert_eq!(depth(broker, &queue.dlq).await, 0);
        let received = drain(broker, &queue.work_queue, Duration::from_millis(500)).await;
        assert_eq!(received.len(), 1);
        assert_eq!(
            received[0]
                .properties
                .message_id()
                .as_ref()
                .map(|id| id.as_str()),
            Some(ids[1].as_str())
        );

        let missing = dlq::replay(&broker.broker, queue.clone(), &first, false).await;
        assert!(
            missing
                .unwrap_err()
                .to_string()
                .contains("no message with id")
        );
    })
    .await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn an_interrupted_replay_loses_nothing(pool: PgPool) {
    let call_id = queued_call(&pool).await;
    in_namespace(5, async |broker| {
        let (ids, _) = dead_letter(broker, Behaviour::DeclarePoison, &[call_id]).await;
        let queue = dialer_dlq(broker);

        // What `replay` does, cut between the confirmed republish and the ack.
        let doomed = Broker::connect(&amqp_url(), broker.names.clone(), "interrupted")
            .await
            .unwrap();
        let mut reader = DlqReader::open(&doomed, queue.clone(), None).await.unwrap();
        let letter = reader.next().await.unwrap().expect("a dead letter");
        let republisher = Republisher::open(&doomed).await.unwrap();
        republisher
            .republish(&letter, &queue.work_queue)
            .await
            .unwrap();
        drop(reader);
        doomed.close().await;

        wait_for_depth(broker, &queue.dlq, 1).await;
        wait_for_depth(broker, &queue.work_queue, 1).await;
        let received = drain(broker, &queue.work_queue, Duration::from_millis(300)).await;
        assert_eq!(
            received[0]
                .properties
                .message_id()
                .as_ref()
                .map(|id| id.as_str()),
            Some(ids[0].as_str())
        );
        let still_dead = dlq::show(&broker.broker, None, queue, 10, 5).await.unwrap();
        assert_eq!(
            still_dead.messages[0].message_id.as_deref(),
            Some(ids[0].as_str())
        );
    })
    .await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_replay_that_cannot_be_routed_leaves_the_message_in_the_dlq(pool: PgPool) {
    let call_id = queued_call(&pool).await;
    in_namespace(5, async |broker| {
        dead_letter(broker, Behaviour::DeclarePoison, &[call_id]).await;
        let queue = dialer_dlq(broker);
        let channel = broker.broker.channel().await.unwrap();
        channel
            .queue_delete(queue.work_queue.as_str().into(), Default::default())
            .await
            .unwrap();

        let error = dlq::replay(&broker.broker, queue.clone(), &Selection::All, false)
            .await
            .unwrap_err();
        assert!(format!("{error:#}").contains("unroutable"), "{error:#}");
        assert_eq!(depth(broker, &queue.dlq).await, 1);
    })
    .await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn purge_empties_a_dlq_and_refuses_without_yes(pool: PgPool) {
    let call_id = queued_call(&pool).await;
    in_namespace(5, async |broker| {
        dead_letter(broker, Behaviour::DeclarePoison, &[call_id, call_id]).await;
        let queue = dialer_dlq(broker);

        let refused = admin(&pool, &broker.names, &["dlq", "purge", "dialer"]);
        assert!(!refused.status.success());
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(
            stderr.contains("refusing to purge 2 message(s)"),
            "{stderr}"
        );
        assert_eq!(depth(broker, &queue.dlq).await, 2);

        assert_eq!(dlq::purge(&broker.broker, &queue).await.unwrap(), 2);
        assert_eq!(depth(broker, &queue.dlq).await, 0);
    })
    .await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_message_read_many_times_is_re_enqueued_not_dropped(pool: PgPool) {
    let call_id = queued_call(&pool).await;
    in_namespace(5, async |broker| {
        let (ids, _) = dead_letter(broker, Behaviour::DeclarePoison, &[call_id, call_id]).await;
        let queue = dialer_dlq(broker);
        let mut moved = 0;
        for _ in 0..dlq::REFRESH_AFTER_READS + 2 {
            let report = dlq::show(&broker.broker, None, queue.clone(), 10, 5)
                .await
                .unwrap();
            assert_eq!(report.messages.len(), 2, "nothing is ever lost");
            for message in &report.messages {
                assert!(message.dlq_delivery_count.unwrap_or(0) < dlq::REFRESH_AFTER_READS);
                assert_eq!(message.reason.as_deref(), Some("rejected"), "history kept");
            }
            moved += report.moved_to_tail;
        }
        assert_eq!(moved, 2, "each was re-enqueued once");
        let report = dlq::show(&broker.broker, None, queue, 10, 5).await.unwrap();
        let mut seen: Vec<String> = report
            .messages
            .iter()
            .filter_map(|m| m.message_id.clone())
            .collect();
        seen.sort();
        let mut expected = ids.clone();
        expected.sort();
        assert_eq!(seen, expected);
    })
    .await;
}

#[tokio::test]
async fn a_message_a_service_dead_lettered_itself_is_described_and_replayed() {
    in_namespace(5, async |broker| {
        let queue = dlq::resolve(&broker.names, "webhooks.deliveries.dlq").unwrap();
        let mut headers = lapin::types::FieldTable::default();
        headers.insert(
            "x-ringer-reason".into(),
            lapin::types::AMQPValue::LongString("exhausted".into()),
        );
        let payload = serde_json::json!({"version": 1, "delivery_id": uuid::Uuid::now_v7()});
        broker
            .broker
            .publish_confirmed(ringer::broker::Outgoing {
                exchange: &broker.names.dead_letter_exchange(),
                routing_key: &queue.work_queue,
                payload: &serde_json::to_vec(&payload).unwrap(),
                message_id: Some("job-1".into()),
                headers,
            })
            .await
            .unwrap();
        wait_for_depth(broker, &queue.dlq, 1).await;

        let report = dlq::show(&broker.broker, None, queue.clone(), 10, 5)
            .await
            .unwrap();
        let message = &report.messages[0];
        assert_eq!(message.reason.as_deref(), Some("exhausted"));
        assert_eq!(message.original_queue, None);
        assert!(message.deaths.is_empty());
        assert_eq!(message.call_id, None);
        assert_eq!(message.payload, payload);

        let replayed = dlq::replay(&broker.broker, queue.clone(), &Selection::All, false)
            .await
            .unwrap();
        assert_eq!(replayed.replayed[0].to_queue, queue.work_queue);
        assert_eq!(depth(broker, &queue.dlq).await, 0);
        assert_eq!(depth(broker, &queue.work_queue).await, 1);
    })
    .await;
}
