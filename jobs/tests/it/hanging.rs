//! Hanging transactions, made on purpose on a broker of the test's own, found
//! and aborted by `lifecycle_connectors::kafka::transactions` (what every stage
//! runs in the background), while a transaction its coordinator is working on
//! is left alone.
//!
//! The hanging one is made the way old clients made them (KIP-664): a
//! transactional producer writes to a partition it never registered with its
//! coordinator, on a broker that does not verify that
//! (`transaction.partition.verification.enable=false`); the coordinator never
//! sends that partition a marker, so its last stable offset stays put.

use std::time::Duration;

use bytes::BytesMut;
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    FindCoordinatorRequest, InitProducerIdRequest, ListOffsetsRequest, ProduceRequest, ProducerId, TopicName,
    TransactionalId,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType};
use lifecycle_connectors::kafka::admin::{TopicSpec, apply_topics};
use lifecycle_connectors::kafka::transactions::{self as txn, Verdict};
use lifecycle_connectors::kafka::wire::Connection;
use lifecycle_jobs::LifecycleConfig;
use lifecycle_jobs::stack::KafkaCluster;
use rdkafka::Message as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

const TIMEOUT: Duration = Duration::from_secs(10);

/// The last stable offset (what read_committed readers may read up to) and the
/// high watermark of `topic`-`partition`.
async fn lso_and_hwm(conn: &mut Connection, topic: &str, partition: i32) -> (i64, i64) {
    let mut out = [0; 2];
    for (i, isolation) in [1i8, 0].into_iter().enumerate() {
        let req = ListOffsetsRequest::default()
            .with_replica_id(kafka_protocol::messages::BrokerId(-1))
            .with_isolation_level(isolation)
            .with_topics(vec![
                ListOffsetsTopic::default()
                    .with_name(TopicName(StrBytes::from_string(topic.to_owned())))
                    .with_partitions(vec![
                        ListOffsetsPartition::default().with_partition_index(partition).with_timestamp(-1),
                    ]),
            ]);
        let (_, resp) = conn.call(&req).await.expect("ListOffsets");
        let p = &resp.topics[0].partitions[0];
        assert_eq!(p.error_code, 0, "ListOffsets {topic}-{partition}");
        out[i] = p.offset;
    }
    (out[0], out[1])
}

/// A transaction open in `topic`-`partition` that its coordinator never heard
/// of: InitProducerId for `tid`, then a transactional batch produced straight
/// to the partition without AddPartitionsToTxn. Returns the producer id.
async fn unregistered_transaction(conn: &mut Connection, tid: &str, topic: &str, partition: i32) -> i64 {
    let key = StrBytes::from_string(tid.to_owned());
    let find = FindCoordinatorRequest::default().with_key_type(1).with_coordinator_keys(vec![key]);
    // The first transactional id of a cluster creates __transaction_state: retried meanwhile.
    for _ in 0..100 {
        let (_, found) = conn.call(&find).await.expect("FindCoordinator");
        match found.coordinators[0].error_code {
            0 => break,
            14..=16 => tokio::time::sleep(Duration::from_millis(200)).await,
            e => panic!("FindCoordinator {tid}: error {e}"),
        }
    }
    let init = InitProducerIdRequest::default()
        .with_transactional_id(Some(TransactionalId(StrBytes::from_string(tid.to_owned()))))
        .with_transaction_timeout_ms(60_000)
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1);
    // Retried while the coordinator loads its partition.
    let (pid, epoch) = loop {
        let (_, r) = conn.call(&init).await.expect("InitProducerId");
        match r.error_code {
            0 => break (r.producer_id.0, r.producer_epoch),
            14..=16 => tokio::time::sleep(Duration::from_millis(200)).await,
            e => panic!("InitProducerId: error {e}"),
        }
    };
    let record = Record {
        transactional: true,
        control: false,
        delete_horizon: false,
        partition_leader_epoch: -1,
        producer_id: pid,
        producer_epoch: epoch,
        timestamp_type: TimestampType::Creation,
        offset: 0,
        sequence: 0,
        timestamp: chrono::Utc::now().timestamp_millis(),
        key: Some(bytes::Bytes::from_static(b"k")),
        value: Some(bytes::Bytes::from_static(b"never committed")),
        headers: indexmap::IndexMap::new(),
    };
    let mut batch = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut batch,
        [&record],
        &RecordEncodeOptions { version: 2, compression: Compression::None },
    )
    .expect("a record batch");
    let produce = ProduceRequest::default()
        .with_transactional_id(Some(TransactionalId(StrBytes::from_string(tid.to_owned()))))
        .with_acks(-1)
        .with_timeout_ms(10_000)
        .with_topic_data(vec![
            TopicProduceData::default()
                .with_name(TopicName(StrBytes::from_string(topic.to_owned())))
                .with_partition_data(vec![
                    PartitionProduceData::default().with_index(partition).with_records(Some(batch.freeze())),
                ]),
        ]);
    // Version 11: the last before brokers add partitions to transactions themselves (KIP-890).
    let resp = conn.call_version(&produce, 11).await.expect("Produce");
    let code = resp.responses[0].partition_responses[0].error_code;
    assert_eq!(code, 0, "the unverified transactional write is accepted");
    pid
}

fn read_committed(cfg: &LifecycleConfig, group: &str, topic: &str) -> Vec<String> {
    let consumer: BaseConsumer = cfg.kafka.consumer(group).create().expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let mut values = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::time::Instant::now() < deadline && values.len() < 2 {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            values.push(String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned());
        }
    }
    values
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_transaction_is_found_and_aborted_and_a_live_one_is_left_alone() {
    let port = crate::common::free_port();
    let shared = LifecycleConfig::default().stack;
    let _broker = KafkaCluster::start_with(
        &shared,
        &shared.data_dir.join(format!("kafka-hanging-{port}")),
        port,
        1,
        384,
        &[],
        &["transaction.partition.verification.enable=false"],
    )
    .await
    .expect("a Kafka broker of the test's own");
    let mut cfg = LifecycleConfig::default();
    cfg.kafka.bootstrap_servers = format!("127.0.0.1:{port}");
    let topic = "hang".to_owned();
    let spec = TopicSpec { name: topic.clone(), partitions: 2, replication_factor: 1, configs: Vec::new() };
    apply_topics(&cfg.kafka, &[spec], true).await.expect("topic");
    let mut conn = Connection::bootstrap(&cfg.kafka, TIMEOUT).await.expect("connection");

    // Partition 0: a transaction no coordinator knows, then a plain record after it.
    let hanging_pid = unregistered_transaction(&mut conn, "t-hanging", &topic, 0).await;
    let plain: ThreadedProducer<DefaultProducerContext> = cfg.kafka.producer().create().expect("producer");
    plain.send(BaseRecord::to(&topic).partition(0).key("k").payload("after")).expect("send");
    plain.flush(TIMEOUT).expect("flush");
    // Partition 1: a transaction in progress, its coordinator waiting for the commit.
    let live: ThreadedProducer<DefaultProducerContext> = {
        let mut c = cfg.kafka.transactional_producer("t-live");
        c.set("transaction.timeout.ms", "60000");
        c.set("message.timeout.ms", "60000");
        c.create().expect("transactional producer")
    };
    live.init_transactions(TIMEOUT).expect("init");
    live.begin_transaction().expect("begin");
    live.send(BaseRecord::to(&topic).partition(1).key("k").payload("live")).expect("send");
    live.flush(TIMEOUT).expect("flush");

    let (lso, hwm) = lso_and_hwm(&mut conn, &topic, 0).await;
    assert_eq!((lso, hwm), (0, 2), "read_committed readers are stuck at the open transaction");

    let found = txn::find(&cfg.kafka, Duration::ZERO).await.expect("find");
    let on = |p: i32| found.iter().find(|f| f.open.topic == topic && f.open.partition == p).cloned();
    let hanging = on(0).expect("the unregistered transaction is found");
    assert_eq!(hanging.open.producer_id, hanging_pid);
    assert_eq!(hanging.open.start_offset, 0);
    assert_eq!(hanging.transactional_id.as_deref(), Some("t-hanging"));
    let Verdict::Hanging(why) = &hanging.verdict else { panic!("hanging: {hanging:?}") };
    assert!(why.contains("Empty") || why.contains("does not include"), "{why}");
    let live_found = on(1).expect("the live transaction is found");
    assert!(matches!(live_found.verdict, Verdict::Live(_)), "{live_found:?}");

    let repaired = txn::repair(&cfg.kafka, Duration::ZERO).await.expect("repair");
    assert!(repaired.failed.is_empty(), "{repaired:?}");
    assert_eq!(repaired.aborted.len(), 1, "only the hanging one: {repaired:?}");
    assert_eq!(repaired.aborted[0].open.partition, 0);
    // A second round finds nothing left to do.
    let again = txn::repair(&cfg.kafka, Duration::ZERO).await.expect("repair");
    assert!(again.aborted.is_empty() && again.failed.is_empty(), "{again:?}");

    let (lso, hwm) = lso_and_hwm(&mut conn, &topic, 0).await;
    assert_eq!(lso, hwm, "the partition is stable again");
    // The live transaction still commits, and readers see it and the record
    // after the aborted one, never the aborted record.
    live.commit_transaction(TIMEOUT).expect("the live transaction was left alone and commits");
    let mut read = read_committed(&cfg, "t-hanging-reader", &topic);
    read.sort();
    assert_eq!(read, vec!["after".to_owned(), "live".to_owned()]);
}
