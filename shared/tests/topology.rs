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
