//! The test brokers, over TCP: keyed records land where Kafka's murmur2
//! partitioner (and stream-core's test driver) put them, and transactions
//! behave as documented. Each behaviour in which nisshi departs from Apache
//! Kafka is a test run on both: Apache Kafka's behaviour asserted on Apache
//! Kafka, the deviation on nisshi (if a nisshi run fails, nisshi was fixed:
//! update the README's "Test brokers" section).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use integration_tests::{on_each_broker, Broker, BrokerKind};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::Message;

/// Reads every partition of `topic` from the beginning until `done` holds or 20 s pass.
fn read_all(
    broker: &Broker,
    topic: &str,
    partitions: i32,
    isolation: &str,
    done: impl Fn(&[(i32, String, String)]) -> bool,
) -> Vec<(i32, String, String)> {
    let consumer = broker.reader(topic, partitions, &[("isolation.level", isolation)]);
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done(&seen) && Instant::now() < deadline {
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) {
            let text = |b: Option<&[u8]>| String::from_utf8_lossy(b.unwrap_or_default()).into_owned();
            seen.push((message.partition(), text(message.key()), text(message.payload())));
        }
    }
    seen
}

#[test]
fn keyed_records_land_on_the_murmur2_partition() {
    let broker = Broker::start();
    broker.create_topic("keys", 6);
    let producer: BaseProducer =
        broker.client_config().set("partitioner", "murmur2_random").create().expect("producer");
    let keys: Vec<String> = (0..60).map(|i| format!("product-{i}")).collect();
    for key in &keys {
        producer.send(BaseRecord::to("keys").key(key).payload("v")).expect("send");
    }
    producer.flush(Duration::from_secs(10)).expect("flush");
    let seen = read_all(&broker, "keys", 6, "read_uncommitted", |s| s.len() >= keys.len());
    assert_eq!(seen.len(), keys.len());
    for (partition, key, _) in seen {
        assert_eq!(partition as u32, stream_core::partition_for_key(key.as_bytes(), 6), "key {key}");
    }
}

on_each_broker!(
    aborted_transactions_are_hidden_from_read_committed_consumers_but_not_on_nisshi,
    the_high_watermark_counts_records_but_batches_on_nisshi,
    offsets_of_a_confirmed_commit_are_committed_at_once_but_late_on_nisshi,
);

/// Apache Kafka hides the records of an aborted transaction from
/// `read_committed` consumers; nisshi 0.7.0 shows them. Recovery in
/// stream-core therefore does not rely on the broker hiding aborted records.
fn aborted_transactions_are_hidden_from_read_committed_consumers_but_not_on_nisshi(kind: BrokerKind) {
    let broker = Broker::start_kind(kind);
    broker.create_topic("txn", 1);
    let producer: BaseProducer = broker
        .client_config()
        .set("transactional.id", "deviation-test")
        .set("enable.idempotence", "true")
        .create()
        .expect("transactional producer");
    let timeout = Duration::from_secs(10);
    producer.init_transactions(timeout).expect("init transactions");
    let write = |value: &str, commit: bool| {
        producer.begin_transaction().expect("begin");
        producer.send(BaseRecord::to("txn").key("k").payload(value)).map_err(|(e, _)| e).expect("send");
        producer.flush(timeout).expect("flush");
        if commit {
            producer.commit_transaction(timeout).expect("commit");
        } else {
            producer.abort_transaction(timeout).expect("abort");
        }
    };
    write("committed-1", true);
    write("aborted", false);
    write("committed-2", true);

    let seen = read_all(&broker, "txn", 1, "read_committed", |s| s.iter().any(|(_, _, v)| v == "committed-2"));
    let values: Vec<&str> = seen.iter().map(|(_, _, v)| v.as_str()).collect();
    let counts = values.iter().fold(BTreeMap::new(), |mut m, v| {
        *m.entry(*v).or_insert(0) += 1;
        m
    });
    assert_eq!(counts.get("committed-1"), Some(&1), "{values:?}");
    assert_eq!(counts.get("committed-2"), Some(&1), "{values:?}");
    let aborted = if kind.hides_aborted_records() { None } else { Some(&1) };
    assert_eq!(counts.get("aborted"), aborted, "the aborted record on {kind:?}: {values:?}");
}

/// When records arrive in batches, nisshi under-reports a partition's high
/// watermark (ListOffsets "latest"; it looks like a count of batches), so it
/// cannot tell where a partition ends. stream-core's restoration appends its
/// own marker and reads up to it instead.
fn the_high_watermark_counts_records_but_batches_on_nisshi(kind: BrokerKind) {
    let broker = Broker::start_kind(kind);
    broker.create_topic("marks", 1);
    let producer: BaseProducer = broker.client_config().set("linger.ms", "200").create().expect("producer");
    for i in 0..50 {
        producer.send(BaseRecord::to("marks").key("k").payload(&format!("{i}"))).expect("send");
    }
    producer.flush(Duration::from_secs(10)).expect("flush");
    let seen = read_all(&broker, "marks", 1, "read_uncommitted", |s| s.len() >= 50);
    assert_eq!(seen.len(), 50, "the records are all there");
    let consumer: BaseConsumer = broker.client_config().set("group.id", "marks").create().expect("consumer");
    let (_, high) = consumer.fetch_watermarks("marks", 0, Duration::from_secs(10)).expect("watermarks");
    match kind {
        BrokerKind::Kafka => assert_eq!(high, 50),
        BrokerKind::Nisshi => assert!(high < 50, "Apache Kafka reports 50 here; nisshi reported {high}"),
    }
}

/// nisshi confirms a transaction's commit (EndTxn) without committing its
/// consumer offsets when a transaction opened earlier on one of its
/// partitions is still open. The offsets are committed when a later
/// transaction on one of its partitions ends, which can be after the
/// producer was fenced and its successor read the group's offsets (and if
/// the producer's next transaction is abandoned first, they are lost).
/// Apache Kafka commits them before EndTxn returns. stream-core therefore
/// restores a task from its changelogs alone (see `runtime::restore`).
fn offsets_of_a_confirmed_commit_are_committed_at_once_but_late_on_nisshi(kind: BrokerKind) {
    let broker = Broker::start_kind(kind);
    for topic in ["shared", "own", "inputs"] {
        broker.create_topic(topic, 1);
    }
    let timeout = Duration::from_secs(10);
    let transactional = |id: &str| {
        let producer: BaseProducer = broker
            .client_config()
            .set("transactional.id", id)
            .set("enable.idempotence", "true")
            .create()
            .expect("transactional producer");
        producer.init_transactions(timeout).expect("init transactions");
        producer
    };
    let write = |producer: &BaseProducer, topic: &str| {
        producer.send(BaseRecord::to(topic).key("k").payload("v")).map_err(|(e, _)| e).expect("send");
        producer.flush(timeout).expect("flush");
    };
    let group: BaseConsumer = broker.client_config().set("group.id", "late").create().expect("consumer");
    let committed = || {
        let mut query = rdkafka::TopicPartitionList::new();
        query.add_partition("inputs", 0);
        let offsets = group.committed_offsets(query, timeout).expect("committed offsets");
        offsets.find_partition("inputs", 0).map(|p| p.offset())
    };
    let ten = Some(rdkafka::Offset::Offset(10));

    // `other` opens a transaction on `shared` and leaves it open.
    let other = transactional("other");
    other.begin_transaction().expect("begin");
    write(&other, "shared");
    // `task` writes to `shared` and `own`, and commits input offset 10: confirmed.
    let task = transactional("task");
    task.begin_transaction().expect("begin");
    write(&task, "shared");
    write(&task, "own");
    let mut offsets = rdkafka::TopicPartitionList::new();
    offsets.add_partition_offset("inputs", 0, rdkafka::Offset::Offset(10)).expect("offset");
    let metadata = group.group_metadata().expect("group metadata");
    task.send_offsets_to_transaction(&offsets, &metadata, timeout).expect("send offsets");
    task.commit_transaction(timeout).expect("the commit is confirmed");
    if kind == BrokerKind::Kafka {
        assert_eq!(committed(), ten, "Apache Kafka shows offset 10 once the commit is confirmed");
        return;
    }
    assert_ne!(committed(), ten, "Apache Kafka shows offset 10 once the commit is confirmed");
    // A successor fences `task`: the offsets are still not committed.
    drop(task);
    let successor = transactional("task");
    assert_ne!(committed(), ten, "Apache Kafka shows offset 10 once the fencing completes");
    // The successor's first transaction on `own` commits them.
    successor.begin_transaction().expect("begin");
    write(&successor, "own");
    successor.commit_transaction(timeout).expect("commit successor");
    assert_eq!(committed(), ten, "the fenced producer's offsets are committed late");
}
