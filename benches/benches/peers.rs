//! stream-core beside Kafka Streams 4.4 and Quix Streams 3.28: the same
//! work on the same input in the same broker, in alternating rounds.
//!
//! The broker is the integration tests' (`integration_tests::Broker`:
//! Apache Kafka 4.4 by default). One run loads the inputs once, then in each
//! round runs every system in turn (the order rotates from round to round),
//! each as a process of its own, with a fresh application id (so a fresh
//! consumer group, from the beginning), an empty state directory and output
//! topics of its own. Every system is exactly-once with a 100 ms commit
//! interval and writes one output per input. Two workloads
//! (`BENCH_WORKLOAD`):
//!
//! - `fold` (the default): JSON movements `{"id":7,"amount":3,"type":"IN"}`
//!   keyed by product id over 1 000 products (`BENCH_KEYS`) and 4 partitions, folded into
//!   the stock per product in a RocksDB store, each new stock written out;
//!   stream-core (`src/bin/stock-fold.rs`), Kafka Streams
//!   (`peers/kafka-streams`, `groupByKey().aggregate()`, no record cache)
//!   and Quix Streams (`peers/quix/fold.py`, a stateful `apply`);
//! - `opsci`: the whole OPSCI topology (product table, validation,
//!   repartition by product id, fold, rejections, catalogue, status events)
//!   of `opsci-app run`, beside its port to Kafka Streams
//!   (`peers/kafka-streams/.../Opsci.java`); 1 % of the movements are
//!   malformed, and some take more than the stock: they go to the error
//!   topic. Quix Streams has no port of it.
//!
//! Per system and round it prints: the time from process start to the first
//! output ("start"), to the last ("total"), the rate in between ("steady",
//! records/s), CPU seconds and peak RSS of the process (from
//! `/proc/<pid>`, read just before it is killed once every output is in),
//! and checks the outputs: exactly one per input, and for the fold the last
//! stock of each product equals an independent fold of the input. Then the
//! medians over the rounds, and each rate as a ratio to stream-core's.
//!
//! With `BENCH_RESTORE=1` (fold only), each run is then restarted without
//! its state directory, so that it restores its store from the changelog,
//! and one new movement is sent to each partition: it prints how long after
//! the restart their outputs are in, and the peak RSS meanwhile. For the
//! restore of 1 M keys: `BENCH_RESTORE=1 BENCH_KEYS=1000000 BENCH_RECORDS=1000000`.
//!
//! Run with `cargo bench -p benches --bench peers` after
//! `benches/peers/peers.sh install` (Maven and Python 3; the broker is
//! installed as for the tests). Environment: `BENCH_RECORDS` (movements,
//! 200 000), `BENCH_ROUNDS` (3: each system runs first once), `BENCH_SYSTEMS` (a comma-separated subset
//! of `stream-core,kafka-streams,quix`), `BENCH_WORKLOAD`, `KS_HEAP` (the
//! Kafka Streams JVM's `-Xmx`, 512m).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use integration_tests::Broker;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Message, Offset, TopicPartitionList};
use stream_core::partition_for_key;

const PRODUCTS: u64 = 1_000;
const PARTITIONS: i32 = 4;
const MOVEMENTS: &str = "peers-movements";
const PRODUCT: &str = "peers-product";
const STOCK: &str = "peers-stock";
/// How long one system may take to write every output.
const RUN_TIMEOUT: Duration = Duration::from_secs(900);

fn setting(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

fn number(name: &str, default: u64) -> u64 {
    let text = setting(name, &default.to_string());
    text.trim().parse().unwrap_or_else(|_| panic!("{name}={text} is not a number"))
}

#[derive(Clone, Copy, PartialEq)]
enum Workload {
    Fold,
    Opsci,
}

/// The `i`-th movement: its product, its change of stock, and the record;
/// in the opsci workload, one in a hundred is malformed (its change is not made).
fn movement(i: u64, workload: Workload, keys: u64) -> (u64, i64, String) {
    // 7919 is prime: with fewer movements than keys, every product is new.
    let id = (i * 7919) % keys;
    let amount = 1 + (i * 31) % 9;
    let (direction, delta) = if i % 3 == 0 { ("OUT", -(amount as i64)) } else { ("IN", amount as i64) };
    if workload == Workload::Opsci && i % 100 == 99 {
        return (id, 0, format!(r#"{{"id":{id},"amount":"lots","type":"{direction}"}}"#));
    }
    (id, delta, format!(r#"{{"id":{id},"amount":{amount},"type":"{direction}"}}"#))
}

fn send(producer: &BaseProducer, topic: &str, key: &str, value: &str) {
    let mut record = BaseRecord::to(topic).key(key).payload(value);
    loop {
        match producer.send(record) {
            Ok(()) => return,
            Err((_, back)) => {
                producer.poll(Duration::from_millis(10));
                record = back;
            }
        }
    }
}

/// Loads the inputs; returns how many outputs each system must write, and
/// for the fold the stock each product must end with.
fn load(broker: &Broker, records: u64, workload: Workload, keys: u64) -> (u64, HashMap<String, i64>) {
    let producer: BaseProducer = broker
        .client_config()
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "20")
        .set("enable.idempotence", "true")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .expect("producer");
    let mut stock = HashMap::new();
    match workload {
        Workload::Fold => {
            broker.create_topic(MOVEMENTS, PARTITIONS);
            for i in 0..records {
                let (id, delta, value) = movement(i, workload, keys);
                *stock.entry(id.to_string()).or_default() += delta;
                send(&producer, MOVEMENTS, &id.to_string(), &value);
            }
        }
        Workload::Opsci => {
            broker.create_topic(PRODUCT, PARTITIONS);
            broker.create_topic(STOCK, PARTITIONS);
            for id in 0..PRODUCTS {
                let product = format!(r#"{{"id":{id},"name":"product {id}","stock_available":{}}}"#, 20 + id % 50);
                send(&producer, PRODUCT, &id.to_string(), &product);
            }
            producer.flush(Duration::from_secs(60)).expect("flush");
            for i in 0..records {
                let (id, _, value) = movement(i, workload, PRODUCTS);
                send(&producer, STOCK, &id.to_string(), &value);
            }
        }
    }
    producer.flush(Duration::from_secs(120)).expect("flush");
    let outputs = match workload {
        Workload::Fold => records,
        // One catalogue record per product loaded, and per movement one
        // catalogue or error record.
        Workload::Opsci => records + PRODUCTS,
    };
    (outputs, stock)
}

/// The systems compared.
const SYSTEMS: [&str; 3] = ["stream-core", "kafka-streams", "quix"];

/// The output topics of one run: the counted ones (their records sum to
/// one per input), and for the fold the one whose last value per key is the stock.
struct Outputs {
    counted: Vec<String>,
    others: Vec<String>,
}

fn command(system: &str, workload: Workload, broker: &Broker, app: &str, state: &Path) -> (Command, Outputs) {
    let peers = integration_tests::repository().join("benches/peers/peers.sh");
    let state = state.to_string_lossy().into_owned();
    let bootstrap = broker.bootstrap();
    match workload {
        Workload::Fold => {
            let output = format!("{app}-totals");
            let mut command = match system {
                "stream-core" => Command::new(env!("CARGO_BIN_EXE_stock-fold")),
                "kafka-streams" => {
                    let mut c = Command::new(&peers);
                    c.args(["kafka-streams", "fold"]);
                    c
                }
                _ => {
                    let mut c = Command::new(&peers);
                    c.arg("quix");
                    c
                }
            };
            command.args([bootstrap, app, &state, MOVEMENTS, &output]);
            // A static member: restarted, it takes its place in the group at
            // once instead of waiting for the killed one's session to expire.
            command.env("GROUP_INSTANCE_ID", format!("{app}-instance"));
            (command, Outputs { counted: vec![output], others: Vec::new() })
        }
        Workload::Opsci => {
            let [error, catalogue, event] = ["error", "catalogue", "event"].map(|t| format!("{app}-{t}"));
            let mut command = if system == "stream-core" {
                let mut c = Command::new(opsci_app());
                c.args(["run", "--brokers", bootstrap, "--application-id", app, "--state-dir", &state]);
                c.args(["--product-topic", PRODUCT, "--stock-topic", STOCK, "--error-topic", &error]);
                c.args(["--catalogue-topic", &catalogue, "--event-topic", &event, "--http-addr", "127.0.0.1:0"]);
                c.args(["--partitions", &PARTITIONS.to_string()]).env_remove("STRAPI_URL");
                c
            } else {
                let mut c = Command::new(&peers);
                c.args(["kafka-streams", "opsci", bootstrap, app, &state, PRODUCT, STOCK, &error, &catalogue, &event]);
                c
            };
            command.env_remove("RUST_LOG");
            (command, Outputs { counted: vec![catalogue, error], others: vec![event] })
        }
    }
}

/// opsci-app's release binary, beside this bench's (`target/release`).
fn opsci_app() -> PathBuf {
    let exe = std::env::current_exe().expect("bench path");
    let release = exe.parent().and_then(Path::parent).expect("target/release");
    let app = release.join("opsci-app");
    assert!(app.exists(), "{} is missing: build it with `cargo build --release -p opsci-app`", app.display());
    app
}

/// CPU seconds and peak RSS (MiB) of a running process.
fn usage(pid: u32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): utime is the 12th, stime the 13th.
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or_default().split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    let cpu = (ticks(11) + ticks(12)) / 100.0;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm = status.lines().find_map(|l| l.strip_prefix("VmHWM:")).and_then(|v| v.trim().split(' ').next());
    (cpu, hwm.and_then(|k| k.parse::<f64>().ok()).unwrap_or(0.0) / 1024.0)
}

/// One run of one system.
struct Run {
    outputs: u64,
    start: f64,
    total: f64,
    steady: f64,
    cpu: f64,
    rss: f64,
    /// With `BENCH_RESTORE`: seconds from the restart without local state
    /// to the outputs of the probes, and the restarted process's peak RSS.
    restore: Option<(f64, f64)>,
}

fn run(
    system: &str,
    workload: Workload,
    broker: &Broker,
    round: u64,
    expected: (u64, &HashMap<String, i64>),
    restore: bool,
) -> Run {
    let dir = tempfile::tempdir().expect("temp dir");
    let app = format!("peers-{system}-{round}");
    let state = dir.path().join("state");
    let (mut command, outputs) = command(system, workload, broker, &app, &state);
    for topic in outputs.counted.iter().chain(&outputs.others) {
        broker.create_topic(topic, PARTITIONS);
    }
    let readers: Vec<BaseConsumer> = outputs
        .counted
        .iter()
        .map(|t| broker.reader(t, PARTITIONS, &[("isolation.level", "read_committed"), ("fetch.wait.max.ms", "10")]))
        .collect();
    let log = dir.path().join("log");
    let file = std::fs::File::create(&log).expect("log file");
    let started = Instant::now();
    let mut child: Child = command
        .stdin(Stdio::null())
        .stdout(file.try_clone().expect("log"))
        .stderr(file)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {system}: {e} (run benches/peers/peers.sh install)"));
    let (mut count, mut first, mut last) = (0u64, None, None);
    let mut stock: HashMap<String, i64> = HashMap::new();
    while count < expected.0 {
        let mut any = false;
        for reader in &readers {
            while let Some(Ok(message)) = reader.poll(Duration::from_millis(5)) {
                any = true;
                count += 1;
                if workload == Workload::Fold {
                    let key = String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned();
                    let value = std::str::from_utf8(message.payload().unwrap_or_default()).unwrap_or_default();
                    stock.insert(key, value.parse().unwrap_or(i64::MIN));
                }
            }
        }
        if any {
            first.get_or_insert_with(|| started.elapsed());
            last = Some(started.elapsed());
        }
        if let Ok(Some(status)) = child.try_wait() {
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            panic!("{system} exited ({status}) after {count} outputs:\n{log}");
        }
        if started.elapsed() > RUN_TIMEOUT {
            let _ = child.kill();
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            panic!("{system}: {count} of {} outputs after {RUN_TIMEOUT:?}:\n{log}", expected.0);
        }
    }
    let (cpu, rss) = usage(child.id());
    // A duplicate would come right behind the last output: read on a moment.
    std::thread::sleep(Duration::from_secs(1));
    for reader in &readers {
        while let Some(Ok(_)) = reader.poll(Duration::from_millis(50)) {
            count += 1;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(count, expected.0, "{system}: one output per input");
    if workload == Workload::Fold {
        assert!(stock == *expected.1, "{system}: the last stock of each product is not the fold's");
    }
    let (first, last) = (first.unwrap_or_default(), last.unwrap_or_default());
    let steady = (expected.0 - 1) as f64 / (last - first).as_secs_f64().max(1e-3);
    let restore = restore.then(|| restart(system, workload, broker, &app, &state, &outputs.counted[0]));
    Run { outputs: expected.0, start: first.as_secs_f64(), total: last.as_secs_f64(), steady, cpu, rss, restore }
}

/// The keys of the probes of [`restart`], one per partition; each probe
/// adds 1 to its key's stock.
fn probes() -> Vec<String> {
    (0..PARTITIONS as u32)
        .map(|p| (0..).map(|n| format!("probe-{n}")).find(|k| partition_for_key(k.as_bytes(), PARTITIONS as u32) == p))
        .map(|k| k.expect("a key for every partition"))
        .collect()
}

/// Starts `system` again as `app` without its local state, so that it
/// restores its store from the changelog, sends one new movement (a probe)
/// to each input partition, and returns the seconds from the restart until
/// the probes' outputs are in `output`, and the process's peak RSS.
fn restart(system: &str, workload: Workload, broker: &Broker, app: &str, state: &Path, output: &str) -> (f64, f64) {
    std::fs::remove_dir_all(state).expect("remove the state directory");
    let reader: BaseConsumer = broker
        .client_config()
        .set("group.id", format!("probes-{app}"))
        .set("isolation.level", "read_committed")
        .set("fetch.wait.max.ms", "10")
        .create()
        .expect("probe reader");
    let mut assignment = TopicPartitionList::new();
    for partition in 0..PARTITIONS {
        assignment.add_partition_offset(output, partition, Offset::End).expect("partition");
    }
    reader.assign(&assignment).expect("assign");
    // Resolves the end offsets before anything new is written.
    for _ in 0..10 {
        reader.poll(Duration::from_millis(50));
    }
    let probes = probes();
    let (mut command, _) = command(system, workload, broker, app, state);
    let started = Instant::now();
    let mut child = command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("restart");
    let producer: BaseProducer =
        broker.client_config().set("partitioner", "murmur2_random").create().expect("producer");
    for key in &probes {
        send(&producer, MOVEMENTS, key, r#"{"id":0,"amount":1,"type":"IN"}"#);
    }
    producer.flush(Duration::from_secs(30)).expect("flush");
    let mut seen = std::collections::HashSet::new();
    while seen.len() < probes.len() {
        if let Some(Ok(message)) = reader.poll(Duration::from_millis(10)) {
            seen.insert(String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned());
        }
        assert!(started.elapsed() < RUN_TIMEOUT, "{system}: the probes' outputs did not come");
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{system} exited ({status}) while restoring");
        }
    }
    let took = started.elapsed().as_secs_f64();
    let (_, rss) = usage(child.id());
    let _ = child.kill();
    let _ = child.wait();
    (took, rss)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    (values[(n - 1) / 2] + values[n / 2]) / 2.0
}

fn main() {
    // The broker inherits the environment: RUST_LOG would make nisshi log every request.
    std::env::remove_var("RUST_LOG");
    let records = number("BENCH_RECORDS", 200_000);
    let rounds = number("BENCH_ROUNDS", 3);
    let workload = match setting("BENCH_WORKLOAD", "fold").as_str() {
        "fold" => Workload::Fold,
        "opsci" => Workload::Opsci,
        other => panic!("BENCH_WORKLOAD={other}: fold or opsci"),
    };
    let default = if workload == Workload::Fold { SYSTEMS.join(",") } else { "stream-core,kafka-streams".into() };
    let systems: Vec<String> = setting("BENCH_SYSTEMS", &default).split(',').map(str::to_string).collect();
    for system in &systems {
        assert!(SYSTEMS.contains(&system.as_str()), "unknown system {system}: one of {SYSTEMS:?}");
        assert!(workload == Workload::Fold || system != "quix", "Quix Streams has no OPSCI topology");
    }
    let keys = number("BENCH_KEYS", PRODUCTS);
    let restore = number("BENCH_RESTORE", 0) == 1;
    assert!(!restore || workload == Workload::Fold, "BENCH_RESTORE is for the fold");
    let broker = Broker::start();
    let loaded = Instant::now();
    let (mut outputs, mut stock) = load(&broker, records, workload, keys);
    println!(
        "{records} movements loaded in {:.1} s ({} outputs expected per system), broker {:?}",
        loaded.elapsed().as_secs_f64(),
        outputs,
        broker.kind()
    );
    let mut results: HashMap<String, Vec<Run>> = HashMap::new();
    for round in 0..rounds {
        for i in 0..systems.len() {
            let system = &systems[(i + round as usize) % systems.len()];
            let r = run(system, workload, &broker, round, (outputs, &stock), restore);
            if restore {
                // The next runs read the probes too.
                outputs += PARTITIONS as u64;
                for key in probes() {
                    *stock.entry(key).or_default() += 1;
                }
            }
            let restored = r.restore.map_or(String::new(), |(s, rss)| {
                format!("; restarted without local state: probes out after {s:.2} s, peak RSS {rss:.1} MiB")
            });
            println!(
                "round {round} {system:>13}: start {:5.2} s, total {:6.2} s, steady {:8.0} records/s, CPU {:6.2} s, peak RSS {:6.1} MiB{restored}",
                r.start, r.total, r.steady, r.cpu, r.rss
            );
            results.entry(system.clone()).or_default().push(r);
        }
    }
    println!(
        "\nmedians over {rounds} rounds ({records} movements, {workload_name}):",
        workload_name = setting("BENCH_WORKLOAD", "fold")
    );
    let base = results.get("stream-core").map(|r| median(r.iter().map(|r| r.outputs as f64 / r.total).collect()));
    for system in &systems {
        let runs = &results[system];
        let overall = median(runs.iter().map(|r| r.outputs as f64 / r.total).collect());
        let ratio = base.map_or(String::new(), |b| format!(", stream-core/this {:.2}", b / overall));
        let restores: Vec<(f64, f64)> = runs.iter().filter_map(|r| r.restore).collect();
        let restored = if restores.is_empty() {
            String::new()
        } else {
            let took = median(restores.iter().map(|r| r.0).collect());
            let rss = median(restores.iter().map(|r| r.1).collect());
            format!("; restore {took:.2} s, peak RSS {rss:.1} MiB")
        };
        println!(
            "{system:>13}: {overall:8.0} records/s start to end{ratio}; steady {:8.0} records/s; start {:5.2} s; CPU {:6.2} s ({:.1} µs/record); peak RSS {:6.1} MiB{restored}",
            median(runs.iter().map(|r| r.steady).collect()),
            median(runs.iter().map(|r| r.start).collect()),
            median(runs.iter().map(|r| r.cpu).collect()),
            median(runs.iter().map(|r| r.cpu * 1e6 / r.outputs as f64).collect()),
            median(runs.iter().map(|r| r.rss).collect()),
        );
    }
}
