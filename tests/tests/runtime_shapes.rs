//! Topology shapes and histories the Kafka runtime must handle exactly, on
//! Apache Kafka: each test is one rule a code review found broken, checked
//! against an independent computation of the input.
//!
//! - a task reading two repartition topics fed from the same source partition;
//! - input records that already carry provenance headers (the output of
//!   another stream-core application);
//! - a task without stores that reads a repartition topic, through commits
//!   with nothing to write;
//! - stream time across a restart (a late record stays late);
//! - a store added to a sub-topology that already has state.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use integration_tests::Broker;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::Message;
use stream_core::runtime::{provenance, Runtime, RuntimeConfig, RuntimeError, RuntimeMetrics};
use stream_core::serdes::{Utf8, I64};
use stream_core::{
    Consumed, Grouped, Materialized, Produced, Repartitioned, StreamsBuilder, StreamsConfig, TimeWindows, Topology,
};

const PARTITIONS: i32 = 4;

/// Produces `(key, value, timestamp)` records to `topic`, each with `headers`.
fn produce(broker: &Broker, topic: &str, records: &[(String, i64, i64)], headers: &[(&str, &str)]) {
    let producer: BaseProducer =
        broker.client_config().set("partitioner", "murmur2_random").create().expect("producer");
    for (key, value, timestamp) in records {
        let mut h = OwnedHeaders::new();
        for (name, text) in headers {
            h = h.insert(Header { key: name, value: Some(text.as_bytes()) });
        }
        let payload = value.to_be_bytes();
        let record = BaseRecord::to(topic).key(key.as_str()).payload(&payload[..]).timestamp(*timestamp).headers(h);
        producer.send(record).expect("send");
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(30)).expect("flush");
}

/// `count` records over 20 keys, values 1.
fn movements(from: i64, count: i64) -> Vec<(String, i64, i64)> {
    let now = now_millis();
    (from..from + count).map(|i| (format!("key-{}", i % 20), 1, now)).collect()
}

fn now_millis() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis() as i64
}

/// Runs `topology` as application `app` until `done` holds for its metrics,
/// then `linger` longer (quiet commits happen then), or 60 s pass.
fn run(
    broker: &Broker,
    app: &str,
    topology: Topology,
    linger: Duration,
    done: impl Fn(&RuntimeMetrics) -> bool,
) -> Result<RuntimeMetrics, RuntimeError> {
    let config = RuntimeConfig::new(StreamsConfig::new(app), broker.bootstrap());
    let mut runtime = Runtime::new(topology, config)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut done_at = None;
    runtime.run(|m| {
        if done_at.is_none() && done(m) {
            done_at = Some(Instant::now());
        }
        done_at.is_some_and(|at| at.elapsed() >= linger) || Instant::now() > deadline
    })?;
    Ok(runtime.metrics())
}

/// Every record of `topic` a `read_committed` reader gets, in partition
/// order: (key, value); stops after 3 s without records.
fn read_all(broker: &Broker, topic: &str) -> Vec<(String, i64)> {
    let consumer = broker.reader(topic, PARTITIONS, &[("isolation.level", "read_committed")]);
    let mut records = Vec::new();
    let mut last = Instant::now();
    while last.elapsed() < Duration::from_secs(3) {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
            let value = i64::from_be_bytes(m.payload().unwrap_or_default().try_into().expect("8 bytes"));
            records.push((key, value));
            last = Instant::now();
        }
    }
    records
}

/// The last value of each key.
fn latest(records: &[(String, i64)]) -> BTreeMap<String, i64> {
    records.iter().cloned().collect()
}

/// Per key, `times` × the number of records.
fn counts(records: &[(String, i64, i64)], times: i64) -> BTreeMap<String, i64> {
    records.iter().fold(BTreeMap::new(), |mut counts, (key, _, _)| {
        *counts.entry(key.clone()).or_insert(0) += times;
        counts
    })
}

fn topics(broker: &Broker, names: &[&str]) {
    for name in names {
        broker.create_topic(name, PARTITIONS);
    }
}

/// Each input goes through two repartition topics into one task, which
/// counts both copies: what a task has seen must be tracked per repartition
/// topic, not only per upstream partition, or the second copy looks replayed.
#[test]
fn a_task_reading_two_repartition_topics_fed_from_one_partition_counts_every_record() {
    let broker = Broker::start();
    topics(&broker, &["two-in", "two-out"]);
    let builder = StreamsBuilder::new();
    let input = builder.stream("two-in", Consumed::with(Utf8, I64));
    let left = input.repartition(Repartitioned::with(Utf8, I64).named("left"));
    let right = input.repartition(Repartitioned::with(Utf8, I64).named("right"));
    left.merge(&right)
        .group_by_key(Grouped::with(Utf8, I64))
        .count("copies")
        .to_stream()
        .to("two-out", Produced::with(Utf8, I64));
    let records = movements(0, 4_000);
    produce(&broker, "two-in", &records, &[]);
    let metrics =
        run(&broker, "two-app", builder.build().expect("topology"), Duration::ZERO, |m| m.totals.records_in >= 12_000)
            .expect("run");
    assert_eq!(metrics.duplicates_skipped, 0, "Apache Kafka hides aborted records: nothing is a duplicate");
    assert_eq!(metrics.rewinds, 0);
    assert_eq!(latest(&read_all(&broker, "two-out")), counts(&records, 2));
}

/// Inputs written by another stream-core application carry its provenance
/// headers, a rank among them. Each input here becomes two repartition
/// records; the first must not keep the upstream rank, or the second is
/// taken for a duplicate downstream.
#[test]
fn provenance_headers_on_inputs_are_replaced_not_inherited() {
    let broker = Broker::start();
    topics(&broker, &["ranked-in", "ranked-out"]);
    let builder = StreamsBuilder::new();
    builder
        .stream("ranked-in", Consumed::with(Utf8, I64))
        .flat_map_values(|v| [v, v])
        .repartition(Repartitioned::with(Utf8, I64).named("twice"))
        .group_by_key(Grouped::with(Utf8, I64))
        .count("copies")
        .to_stream()
        .to("ranked-out", Produced::with(Utf8, I64));
    let records = movements(0, 2_000);
    let upstream = [
        (provenance::TOPIC, "upstream"),
        (provenance::PARTITION, "0"),
        (provenance::OFFSET, "7"),
        (provenance::RANK, "3"),
    ];
    produce(&broker, "ranked-in", &records, &upstream);
    let metrics = run(&broker, "ranked-app", builder.build().expect("topology"), Duration::ZERO, |m| {
        m.totals.records_in >= 6_000
    })
    .expect("run");
    assert_eq!(metrics.duplicates_skipped, 0);
    assert_eq!(latest(&read_all(&broker, "ranked-out")), counts(&records, 2));
}

/// A sub-topology without stores reading a repartition topic: once its
/// records are processed, the commits that follow have nothing to write,
/// and none fails (a failed commit rewinds every task of the instance).
#[test]
fn a_stateless_task_reading_a_repartition_topic_survives_quiet_commits() {
    let broker = Broker::start();
    topics(&broker, &["hop-in", "hop-out"]);
    let builder = StreamsBuilder::new();
    builder
        .stream("hop-in", Consumed::with(Utf8, I64))
        .repartition(Repartitioned::with(Utf8, I64).named("hop"))
        .map_values(|v| v * 2)
        .to("hop-out", Produced::with(Utf8, I64));
    let records = movements(0, 1_000);
    produce(&broker, "hop-in", &records, &[]);
    let topology = builder.build().expect("topology");
    let metrics = run(&broker, "hop-app", topology, Duration::from_secs(2), |m| m.totals.records_in >= 2_000)
        .expect("the runtime survives commits with nothing to write");
    assert_eq!(metrics.totals.records_in, 2_000);
    assert_eq!(metrics.rewinds, 0, "no commit failed");
    let outputs = read_all(&broker, "hop-out");
    assert_eq!(outputs.len(), records.len(), "one output per input");
    assert!(outputs.iter().all(|(_, v)| *v == 2));
}

fn windowed_topology() -> Topology {
    let builder = StreamsBuilder::new();
    builder
        .stream("ticks", Consumed::with(Utf8, I64))
        .group_by_key(Grouped::with(Utf8, I64))
        .windowed_by(TimeWindows::tumbling(Duration::from_secs(10)).grace(Duration::ZERO))
        .count("per-window")
        .to_stream()
        .map(|windowed, count| (format!("{}@{}", windowed.key, windowed.window.start), count))
        .to("ticks-out", Produced::with(Utf8, I64));
    builder.build().expect("topology")
}

/// Stream time is part of a task's committed state: a record too late for
/// its window before a restart is still too late after it, as it would be
/// without the restart.
#[test]
fn stream_time_survives_a_restart() {
    let broker = Broker::start();
    topics(&broker, &["ticks", "ticks-out"]);
    // Every key lands in one task; the first record moves its stream time to 50 s.
    produce(&broker, "ticks", &[("a".into(), 1, 50_000)], &[]);
    run(&broker, "ticks-app", windowed_topology(), Duration::ZERO, |m| m.totals.records_in >= 1).expect("first run");
    // A record of the window [0 s, 10 s), which closed at 10 s (no grace).
    produce(&broker, "ticks", &[("a".into(), 1, 5_000)], &[]);
    let second = run(&broker, "ticks-app", windowed_topology(), Duration::ZERO, |m| m.totals.records_in >= 1)
        .expect("second run");
    assert_eq!(second.totals.records_in, 1, "the second run read the late record only");
    let outputs = read_all(&broker, "ticks-out");
    assert_eq!(outputs, vec![("a@50000".to_string(), 1)], "the late record was dropped");
}

/// Version 1 counts per key; version 2 of the same application also sums
/// per key, in a second store of the same sub-topology. The first store's
/// state carries over: its changelog's commits are complete though the new
/// store's changelog holds none of them.
#[test]
fn adding_a_store_keeps_the_state_of_the_others() {
    let broker = Broker::start();
    topics(&broker, &["adds-in", "adds-count", "adds-sum"]);
    let version = |with_sum: bool| {
        let builder = StreamsBuilder::new();
        let grouped = builder.stream("adds-in", Consumed::with(Utf8, I64)).group_by_key(Grouped::with(Utf8, I64));
        grouped.count("count").to_stream().to("adds-count", Produced::with(Utf8, I64));
        if with_sum {
            grouped
                .aggregate(|| 0, |_, v, sum| sum + v, Materialized::new("sum", I64))
                .to_stream()
                .to("adds-sum", Produced::with(Utf8, I64));
        }
        builder.build().expect("topology")
    };
    let first = movements(0, 1_000);
    produce(&broker, "adds-in", &first, &[]);
    run(&broker, "adds-app", version(false), Duration::ZERO, |m| m.totals.records_in >= 1_000).expect("version 1");
    let second = movements(1_000, 1_000);
    produce(&broker, "adds-in", &second, &[]);
    run(&broker, "adds-app", version(true), Duration::ZERO, |m| m.totals.records_in >= 1_000).expect("version 2");
    let all: Vec<_> = first.iter().chain(&second).cloned().collect();
    assert_eq!(latest(&read_all(&broker, "adds-count")), counts(&all, 1), "counts over both versions");
    assert_eq!(latest(&read_all(&broker, "adds-sum")), counts(&second, 1), "sums since the store was added");
}
