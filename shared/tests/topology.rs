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

/// A TCP relay to RabbitMQ that can go silent: once `silence` is set, what
/// the broker sends is swallowed (the socket stays open, as with a broker
/// that hangs or a connection lapin saw fail mid-close).
async fn silenceable_relay(silence: std::sync::Arc<std::sync::atomic::AtomicBool>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (client, _) = listener.accept().await.unwrap();
        let broker = tokio::net::TcpStream::connect("127.0.0.1:5672")
            .await
            .unwrap();
        let (mut client_read, mut client_write) = client.into_split();
        let (mut broker_read, mut broker_write) = broker.into_split();
        tokio::spawn(async move { tokio::io::copy(&mut client_read, &mut broker_write).await });
        let mut buffer = vec![0u8; 16 * 1024];
        loop {
            let read = match broker_read.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(read) => read,
            };
            if silence.load(std::sync::atomic::Ordering::SeqCst) {
                continue;
            }
            if client_write.write_all(&buffer[..read]).await.is_err() {
                return;
            }
        }
    });
    format!("amqp://guest:guest@{addr}/%2f")
}

/// Shutting down closes the broker connection; a broker that no longer
/// answers must not hold the process's exit for ever.
#[tokio::test]
async fn closing_a_connection_the_broker_no_longer_answers_ends_in_time() {
    let silence = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let url = silenceable_relay(silence.clone()).await;
    let broker =
        ringer::broker::Broker::connect(&url, Names::new(&random_namespace()), "close-test")
            .await
            .unwrap();
    silence.store(true, std::sync::atomic::Ordering::SeqCst);

    let started = std::time::Instant::now();
    tokio::time::timeout(
        ringer::broker::CLOSE_TIMEOUT + std::time::Duration::from_secs(5),
        broker.close(),
    )
    .await
    .expect("close gives up after CLOSE_TIMEOUT");
    assert!(
        started.elapsed() >= ringer::broker::CLOSE_TIMEOUT / 2,
        "it did wait for an answer"
    );
}
