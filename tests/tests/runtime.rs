//! stream-core's Kafka runtime on the real broker: a keyed fold, stopped and
//! restarted with its local state gone, restores from the changelog and ends
//! with the same table as an independent fold of the input.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use integration_tests::Broker;
use rdkafka::message::Headers as _;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::Message;
use stream_core::runtime::{provenance, Runtime, RuntimeConfig, RuntimeMetrics};
use stream_core::serdes::{Utf8, I64};
use stream_core::state::StateBackend;
use stream_core::{Consumed, Grouped, Materialized, Produced, StreamsBuilder, StreamsConfig, Topology};

const PARTITIONS: i32 = 4;
const SCALE_PARTITIONS: i32 = 8;

fn topology() -> Topology {
    fold_topology("movements", "totals")
}

fn fold_topology(input: &str, output: &str) -> Topology {
    let builder = StreamsBuilder::new();
    builder
        .stream(input, Consumed::with(Utf8, I64))
        .group_by_key(Grouped::with(Utf8, I64))
        .aggregate(|| 0, |_, amount, total| total + amount, Materialized::new("totals", I64))
        .to_stream()
        .to(output, Produced::with(Utf8, I64));
    builder.build().expect("topology")
}

/// Produces `count` movements starting at sequence `from`; returns them.
fn produce(broker: &Broker, from: i64, count: i64) -> Vec<(String, i64)> {
    produce_to(broker, "movements", from, count)
}

fn produce_to(broker: &Broker, topic: &str, from: i64, count: i64) -> Vec<(String, i64)> {
    let producer: BaseProducer =
        broker.client_config().set("partitioner", "murmur2_random").create().expect("producer");
    let movements: Vec<(String, i64)> =
        (from..from + count).map(|i| (format!("product-{}", i % 30), i % 17 - 8)).collect();
    for (key, amount) in &movements {
        let value = amount.to_be_bytes();
        producer.send(BaseRecord::to(topic).key(key.as_str()).payload(&value[..])).expect("send");
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(30)).expect("flush");
    movements
}

/// Runs the application until it has read `count` records (or 60 s pass).
fn run(broker: &Broker, count: u64) -> u64 {
    run_with(broker, count, StreamsConfig::new("fold-app")).totals.records_in
}

/// Runs the application with `streams` until it has read `count` records
/// (or 60 s pass); returns its metrics.
fn run_with(broker: &Broker, count: u64, streams: StreamsConfig) -> RuntimeMetrics {
    let config = RuntimeConfig::new(streams, broker.bootstrap());
    let mut runtime = Runtime::new(topology(), config).expect("runtime");
    let deadline = Instant::now() + Duration::from_secs(60);
    runtime.run(|m| m.totals.records_in >= count || Instant::now() > deadline).expect("run");
    runtime.metrics()
}

/// The latest total per key on the `totals` topic, once `expected` records
/// were read; checks that each record names a distinct input record.
fn read_totals(broker: &Broker, expected: usize) -> BTreeMap<String, i64> {
    read_outputs(broker, "totals", PARTITIONS, "movements", expected)
}

fn read_outputs(broker: &Broker, topic: &str, partitions: i32, source: &str, expected: usize) -> BTreeMap<String, i64> {
    let consumer = broker.reader(topic, partitions, &[]);
    let (mut totals, mut read, mut sources) = (BTreeMap::new(), 0, std::collections::BTreeSet::new());
    let deadline = Instant::now() + Duration::from_secs(30);
    while read < expected && Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
            let value = i64::from_be_bytes(m.payload().unwrap_or_default().try_into().expect("8 bytes"));
            totals.insert(key, value);
            read += 1;
            let headers = m.headers().expect("provenance headers");
            let header = |name: &str| {
                let h = headers.iter().find(|h| h.key == name).unwrap_or_else(|| panic!("header {name}"));
                String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned()
            };
            assert_eq!(header(provenance::TOPIC), source);
            assert!(
                sources.insert((header(provenance::PARTITION), header(provenance::OFFSET))),
                "one output per input"
            );
        }
    }
    assert_eq!(read, expected, "records on the totals topic");
    totals
}

fn fold(movements: &[(String, i64)]) -> BTreeMap<String, i64> {
    movements.iter().fold(BTreeMap::new(), |mut totals, (key, amount)| {
        *totals.entry(key.clone()).or_insert(0) += amount;
        totals
    })
}

#[test]
fn a_restarted_application_restores_its_state_from_the_changelog() {
    let broker = Broker::start();
    broker.create_topic("movements", PARTITIONS);
    broker.create_topic("totals", PARTITIONS);

    let mut movements = produce(&broker, 0, 3_000);
    assert_eq!(run(&broker, 3_000), 3_000);
    assert_eq!(read_totals(&broker, 3_000), fold(&movements));

    // A new instance, with no local state (in-memory stores): what it knows of
    // the first run comes from the changelog topic.
    movements.extend(produce(&broker, 3_000, 1_000));
    assert_eq!(run(&broker, 1_000), 1_000, "the committed offsets were kept");
    assert_eq!(read_totals(&broker, 4_000), fold(&movements));
}

/// RocksDB stores closed cleanly leave local checkpoints: the next start on
/// the same state directory reads only what the changelogs got since. An
/// instance whose checkpoints are older than the changelogs (another
/// instance ran the tasks in between) catches up from them.
#[test]
fn a_cleanly_closed_task_reopens_from_its_local_checkpoint() {
    let broker = Broker::start();
    broker.create_topic("movements", PARTITIONS);
    broker.create_topic("totals", PARTITIONS);
    let dir = tempfile::tempdir().expect("temporary directory");
    let streams = |name: &str| StreamsConfig::new("fold-app").state(StateBackend::RocksDb(dir.path().join(name)));
    let checkpoints = |name: &str| {
        let files = std::fs::read_dir(dir.path().join(name).join("fold-app")).expect("state directory");
        files.filter(|f| f.as_ref().is_ok_and(|f| f.path().extension().is_some_and(|e| e == "checkpoint"))).count()
    };

    let mut movements = produce(&broker, 0, 3_000);
    let first = run_with(&broker, 3_000, streams("a"));
    assert_eq!(first.restored_records, 0, "nothing to restore at first");
    assert_eq!(checkpoints("a"), PARTITIONS as usize, "one checkpoint per task");

    movements.extend(produce(&broker, 3_000, 1_000));
    let second = run_with(&broker, 1_000, streams("a"));
    assert_eq!(second.totals.records_in, 1_000);
    assert_eq!(second.restored_records, 0, "the local stores were up to date");
    assert_eq!(read_totals(&broker, 4_000), fold(&movements));

    // Another state directory: no checkpoint, the changelogs are replayed.
    movements.extend(produce(&broker, 4_000, 1_000));
    let other = run_with(&broker, 1_000, streams("b"));
    assert!(other.restored_records >= 30, "every key restored: {}", other.restored_records);

    // Back on the first directory: its checkpoints predate the other run's
    // commits, which are read from the changelogs on top of the local stores.
    movements.extend(produce(&broker, 5_000, 1_000));
    let third = run_with(&broker, 1_000, streams("a"));
    assert_eq!(third.totals.records_in, 1_000);
    assert!(
        (1..other.restored_records).contains(&third.restored_records),
        "only the other run's changes are read: {} of {}",
        third.restored_records,
        other.restored_records
    );
    assert_eq!(read_totals(&broker, 6_000), fold(&movements));
}

/// Two instances share 8 partitions: the second joins while the first is
/// processing; the partitions that move are committed and closed by the
/// first before the second restores and continues them. No record is lost or
/// processed twice, and the table equals an independent fold.
#[test]
fn a_second_instance_takes_over_partitions_without_loss_or_duplicates() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;

    let broker = Broker::start();
    broker.create_topic("scale-in", SCALE_PARTITIONS);
    broker.create_topic("scale-out", SCALE_PARTITIONS);
    let mut movements = produce_to(&broker, "scale-in", 0, 6_000);
    // Records processed by each instance; records produced; whether production is over.
    let counts: Arc<[AtomicU64; 2]> = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
    let produced = Arc::new(AtomicU64::new(6_000));
    let producing = Arc::new(AtomicBool::new(true));
    let start = |instance: usize| {
        let (counts, produced, producing) = (counts.clone(), produced.clone(), producing.clone());
        let bootstrap = broker.bootstrap().to_string();
        std::thread::spawn(move || {
            let config = RuntimeConfig::new(StreamsConfig::new("scale-app"), bootstrap);
            let mut runtime = Runtime::new(fold_topology("scale-in", "scale-out"), config).expect("runtime");
            let deadline = Instant::now() + Duration::from_secs(90);
            runtime
                .run(|m| {
                    counts[instance].store(m.totals.records_in, Ordering::SeqCst);
                    let total: u64 = counts.iter().map(|c| c.load(Ordering::SeqCst)).sum();
                    let done = !producing.load(Ordering::SeqCst) && total >= produced.load(Ordering::SeqCst);
                    done || Instant::now() > deadline
                })
                .expect("run");
            runtime.metrics().totals.records_in
        })
    };
    let first = start(0);
    let begun = Instant::now();
    while counts[0].load(Ordering::SeqCst) < 500 && begun.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let second = start(1);
    // Keep records coming until the second instance has taken part, so the
    // hand-over happens mid-stream however fast the first instance is.
    while counts[1].load(Ordering::SeqCst) == 0 && begun.elapsed() < Duration::from_secs(60) {
        let from = produced.load(Ordering::SeqCst) as i64;
        movements.extend(produce_to(&broker, "scale-in", from, 200));
        produced.fetch_add(200, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(100));
    }
    producing.store(false, Ordering::SeqCst);
    let (a, b) = (first.join().expect("first instance"), second.join().expect("second instance"));
    let total = produced.load(Ordering::SeqCst);
    assert_eq!(a + b, total, "every record processed once ({a} + {b})");
    eprintln!("records processed: first instance {a}, second {b}");
    assert!(b > 0, "the second instance took over partitions");
    assert_eq!(read_outputs(&broker, "scale-out", SCALE_PARTITIONS, "scale-in", total as usize), fold(&movements));
}

/// Interactive queries read the stores' committed state without waiting for
/// the runtime: a query made while the tasks restore answers before the
/// restoration ends, and once the tasks run, the table read equals an
/// independent fold.
#[test]
fn queries_answer_while_the_tasks_restore() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    let broker = Broker::start();
    broker.create_topic("query-in", PARTITIONS);
    broker.create_topic("query-out", PARTITIONS);
    // Many keys, so that restoring them takes a while.
    let producer: BaseProducer =
        broker.client_config().set("partitioner", "murmur2_random").create().expect("producer");
    let movements: Vec<(String, i64)> = (0..200_000).map(|i| (format!("product-{}", i % 100_000), i % 7 - 3)).collect();
    for (key, amount) in &movements {
        let value = amount.to_be_bytes();
        while let Err((error, _)) = producer.send(BaseRecord::to("query-in").key(key.as_str()).payload(&value[..])) {
            assert!(format!("{error}").contains("Queue full"), "send: {error}");
            producer.poll(Duration::from_millis(10));
        }
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(30)).expect("flush");
    let config = || RuntimeConfig::new(StreamsConfig::new("query-app"), broker.bootstrap());
    let mut first = Runtime::new(fold_topology("query-in", "query-out"), config()).expect("runtime");
    let deadline = Instant::now() + Duration::from_secs(90);
    first.run(|m| m.totals.records_in >= 200_000 || Instant::now() > deadline).expect("first run");
    assert_eq!(first.metrics().totals.records_in, 200_000);
    drop(first);

    // A new instance with empty (in-memory) stores restores them from the changelog.
    let mut second = Runtime::new(fold_topology("query-in", "query-out"), config()).expect("runtime");
    let (reader, metrics) = (second.store_reader(), second.metrics_handle());
    let done = Arc::new(AtomicBool::new(false));
    let queries = {
        let done = done.clone();
        std::thread::spawn(move || {
            let restoring = || metrics.snapshot().tasks.values().any(|t| t.restoring);
            let mut answered_while_restoring = 0;
            let deadline = Instant::now() + Duration::from_secs(60);
            let running = |m: RuntimeMetrics| !m.tasks.is_empty() && m.is_running();
            while !running(metrics.snapshot()) && Instant::now() < deadline {
                let before = restoring();
                reader.get("totals", &"product-7".to_string(), Utf8, I64).expect("query");
                if before && restoring() {
                    answered_while_restoring += 1;
                }
            }
            let table = reader.all("totals", Utf8, I64).expect("query");
            done.store(true, Ordering::SeqCst);
            (answered_while_restoring, table)
        })
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    second.run(|_| done.load(Ordering::SeqCst) || Instant::now() > deadline).expect("second run");
    let (answered_while_restoring, table) = queries.join().expect("query thread");
    eprintln!("queries answered while restoring: {answered_while_restoring}");
    assert!(answered_while_restoring > 0, "queries waited for the restoration");
    assert_eq!(table.into_iter().collect::<BTreeMap<_, _>>(), fold(&movements));
}

/// With an incremental rebalance protocol (Kafka's `group.protocol=consumer`,
/// KIP-848), a third instance joining two busy ones takes its share of the
/// tasks; each of the others closes only the tasks it gives up and opens
/// only those it is given, the tasks it keeps run on. The outputs still equal an
/// independent fold, each once.
#[test]
fn a_third_instance_joining_moves_only_the_partitions_it_takes() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    const COOP_PARTITIONS: i32 = 6;
    // nisshi does not implement KIP-848's group protocol.
    let broker = Broker::start_kind(integration_tests::BrokerKind::Kafka);
    broker.create_topic("coop-in", COOP_PARTITIONS);
    broker.create_topic("coop-out", COOP_PARTITIONS);
    let mut movements = produce_to(&broker, "coop-in", 0, 3_000);
    // Each instance's latest metrics; whether to stop.
    let latest: Arc<Mutex<[RuntimeMetrics; 3]>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let start = |instance: usize| {
        let (latest, stop) = (latest.clone(), stop.clone());
        let bootstrap = broker.bootstrap().to_string();
        std::thread::spawn(move || {
            let mut config = RuntimeConfig::new(StreamsConfig::new("coop-app"), bootstrap);
            config.properties.push(("consumer.group.protocol".into(), "consumer".into()));
            config.properties.push(("consumer.group.remote.assignor".into(), "range".into()));
            let mut runtime = Runtime::new(fold_topology("coop-in", "coop-out"), config).expect("runtime");
            let deadline = Instant::now() + Duration::from_secs(180);
            runtime
                .run(|m| {
                    latest.lock().expect("metrics")[instance] = m.clone();
                    stop.load(Ordering::SeqCst) || Instant::now() > deadline
                })
                .expect("run");
            runtime.metrics()
        })
    };
    let snapshot = || latest.lock().expect("metrics").clone();
    let running = |m: &RuntimeMetrics| !m.tasks.is_empty() && m.is_running() && m.totals.records_in > 0;
    // Waits, with records coming, until `settled` holds for the metrics.
    let mut from = 3_000;
    let mut keep_producing = |settled: &dyn Fn(&[RuntimeMetrics; 3]) -> bool, what: &str| {
        let begun = Instant::now();
        while !settled(&snapshot()) {
            assert!(begun.elapsed() < Duration::from_secs(90), "{what}: {:?}", snapshot().map(|m| m.tasks));
            movements.extend(produce_to(&broker, "coop-in", from, 200));
            from += 200;
            std::thread::sleep(Duration::from_millis(100));
        }
        // Metrics are copied once per commit interval: let them catch up.
        std::thread::sleep(Duration::from_secs(1));
        snapshot()
    };
    let shared = |m: &[RuntimeMetrics; 3], n: usize| {
        m[..n].iter().all(running) && m.iter().map(|m| m.tasks.len()).sum::<usize>() == COOP_PARTITIONS as usize
    };
    let (first, second) = (start(0), start(1));
    let before = keep_producing(&|m| shared(m, 2), "two instances sharing the tasks");
    let third = start(2);
    let after = keep_producing(&|m| shared(m, 3), "three instances sharing the tasks");
    let begun = Instant::now();
    while snapshot().iter().map(|m| m.totals.records_in).sum::<u64>() < movements.len() as u64 {
        assert!(begun.elapsed() < Duration::from_secs(60), "the instances did not process every record");
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::SeqCst);
    let ends: Vec<RuntimeMetrics> = [first, second, third].into_iter().map(|t| t.join().expect("instance")).collect();

    // What the assignor moves is its choice (Kafka 4's server-side `range`
    // deals ranges in member order, so a partition may also move between
    // the two old instances); the runtime's part is to close exactly the
    // tasks an instance gives up and open exactly those it is given, while
    // the tasks it keeps run on.
    let ids = |m: &RuntimeMetrics| m.tasks.keys().map(ToString::to_string).collect::<BTreeSet<_>>();
    assert!(!after[2].tasks.is_empty(), "the third instance took tasks");
    let mut kept = 0;
    for i in 0..2 {
        let (had, has) = (ids(&before[i]), ids(&after[i]));
        let closed = after[i].tasks_closed - before[i].tasks_closed;
        let opened = after[i].tasks_opened - before[i].tasks_opened;
        eprintln!("instance {i}: tasks {had:?} -> {has:?}, closed {closed}, opened {opened}");
        assert_eq!(closed, had.difference(&has).count() as u64, "instance {i} closed only the tasks it gave up");
        assert_eq!(opened, has.difference(&had).count() as u64, "instance {i} opened only the tasks it was given");
        kept += had.intersection(&has).count();
    }
    assert!(kept > 0, "some tasks stayed where they ran");
    let processed: u64 = ends.iter().map(|m| m.totals.records_in).sum();
    assert_eq!(processed, movements.len() as u64, "every record processed once");
    let outputs = read_outputs(&broker, "coop-out", COOP_PARTITIONS, "coop-in", movements.len());
    assert_eq!(outputs, fold(&movements));
}

/// A task reads its table partitions up to where they end, as of its
/// opening, before its streams: orders loaded after a large price table
/// all find their price, though the consumer fetches the table and the
/// orders side by side, 10 records at a time.
#[test]
fn a_stream_table_join_reads_its_table_to_its_end_before_the_stream() {
    let broker = Broker::start();
    for topic in ["prices", "orders", "priced"] {
        broker.create_topic(topic, 1);
    }
    // Batches of 10 records: the consumer's fetches, of one batch each at least, stay small.
    let producer: BaseProducer = broker.client_config().set("batch.num.messages", "10").create().expect("producer");
    let send = |topic: &str, key: String, value: i64| {
        producer.send(BaseRecord::to(topic).key(&key).payload(&value.to_be_bytes()[..])).expect("send");
        producer.poll(Duration::ZERO);
    };
    const PRICES: i64 = 20_000;
    for i in 0..PRICES {
        send("prices", format!("product-{i}"), i);
    }
    // Orders for the products priced last.
    for i in PRICES - 100..PRICES {
        send("orders", format!("product-{i}"), 2);
    }
    producer.flush(Duration::from_secs(30)).expect("flush");

    let builder = StreamsBuilder::new();
    let prices = builder.table("prices", Consumed::with(Utf8, I64), "prices");
    builder
        .stream("orders", Consumed::with(Utf8, I64))
        .join(&prices, |quantity, price| quantity * price)
        .to("priced", Produced::with(Utf8, I64));
    let mut config = RuntimeConfig::new(StreamsConfig::new("join-app"), broker.bootstrap());
    config.properties.push(("consumer.max.partition.fetch.bytes".into(), "1024".into()));
    let mut runtime = Runtime::new(builder.build().expect("topology"), config).expect("runtime");
    let deadline = Instant::now() + Duration::from_secs(120);
    runtime.run(|m| m.totals.records_in >= PRICES as u64 + 100 || Instant::now() > deadline).expect("run");

    let reader = broker.reader("priced", 1, &[]);
    let mut priced = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while priced.len() < 100 && Instant::now() < deadline {
        if let Some(Ok(m)) = reader.poll(Duration::from_millis(100)) {
            let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
            priced.insert(key, i64::from_be_bytes(m.payload().unwrap_or_default().try_into().expect("8 bytes")));
        }
    }
    let expected: BTreeMap<String, i64> = (PRICES - 100..PRICES).map(|i| (format!("product-{i}"), 2 * i)).collect();
    assert_eq!(priced, expected, "every order joined with its price");
}

/// A static member (the default with a state directory) that stops cleanly
/// removes itself from its group, so the others take over at once; with
/// `leave_group_on_stop` false it stays a member until its session times out.
#[test]
fn a_static_member_that_stops_cleanly_leaves_its_group() {
    use rdkafka::consumer::{BaseConsumer, Consumer};

    let broker = Broker::start();
    broker.create_topic("leave-in", 2);
    produce_to(&broker, "leave-in", 0, 50);
    let members = |group: &str| -> Vec<String> {
        let consumer: BaseConsumer = broker.client_config().create().expect("consumer");
        let groups = consumer.fetch_group_list(Some(group), Duration::from_secs(10)).expect("describe group");
        groups.groups().iter().flat_map(|g| g.members().iter().map(|m| m.id().to_string())).collect()
    };
    for leave in [true, false] {
        let state = tempfile::tempdir().expect("temp dir");
        let group = format!("leave-{leave}");
        let streams = StreamsConfig::new(group.clone()).state(StateBackend::RocksDb(state.path().to_path_buf()));
        let mut config = RuntimeConfig::new(streams, broker.bootstrap());
        config.leave_group_on_stop = leave;
        let mut runtime =
            Runtime::new(fold_topology("leave-in", &format!("leave-out-{leave}")), config).expect("runtime");
        let id = runtime.group_instance_id().expect("a static member").to_string();
        let deadline = Instant::now() + Duration::from_secs(60);
        runtime.run(|m| m.totals.records_in >= 50 || Instant::now() > deadline).expect("run");
        assert_eq!(runtime.metrics().totals.records_in, 50);
        drop(runtime);
        let still = members(&group);
        // Static members' ids start with their group.instance.id.
        let member = still.iter().any(|m| m.starts_with(&id));
        assert_eq!(member, !leave, "leave_group_on_stop {leave}: members {still:?}, instance {id}");
    }
}
