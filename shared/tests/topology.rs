use ringer::broker::{Names, WORK_QUEUES, declare_topology};
use ringer::testing::{TestBroker, random_namespace};

#[tokio::test]
async fn declaring_the_topology_twice_is_harmless() {
    let test = TestBroker::start(&random_namespace(), 5).await;
    let channel = test.broker.channel().await.unwrap();
    declare_topology(&channel, &test.names, 5, 0.0)
        .await
        .expect("same arguments: idempotent");
    for queue in WORK_QUEUES {
        let name = test.names.queue(queue);
        assert!(name.starts_with(test.names.namespace()));
    }
    test.cleanup().await;
}

#[test]
fn names_carry_the_namespace() {
    let names = Names::new("ns");
    assert_eq!(names.events_exchange(), "ns.ringer.events");
    assert_eq!(names.dead_letter_queue("billing"), "ns.billing.dlq");
    assert_eq!(Names::new("").queue("dialer"), "dialer");
}

/// A process carries one name, new at each start, in Postgres and RabbitMQ.
#[sqlx::test(migrations = "../migrations")]
async fn a_process_is_named_once_for_postgres_and_rabbitmq(pool: sqlx::PgPool) {
    let namespace = random_namespace();
    let config = ringer::testing::common_config(&pool, &namespace);
    let first = ringer::service::Infrastructure::connect(&config, "dialer")
        .await
        .unwrap();
    let second = ringer::service::Infrastructure::connect(&config, "dialer")
        .await
        .unwrap();

    let (service, random) = first.instance.split_once('/').unwrap();
    assert_eq!(service, "ringer-dialer");
    assert!(
        random.len() == 8 && random.chars().all(|c| c.is_ascii_hexdigit()),
        "{}",
        first.instance
    );
    assert_ne!(first.instance, second.instance, "replicas are told apart");

    let mut session = first.db.acquire().await.unwrap();
    let named: String = sqlx::query_scalar("SELECT current_setting('application_name')")
        .fetch_one(&mut *session)
        .await
        .unwrap();
    assert_eq!(named, first.instance);
    drop(session);

    first.db.close().await;
    second.db.close().await;
    second.broker.close().await;
    let test = TestBroker {
        broker: first.broker,
        names: Names::new(&namespace),
    };
    test.cleanup().await;
}
