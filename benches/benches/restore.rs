//! Restore speed and memory: how fast a task's RocksDB store is rebuilt from
//! its changelog, and how much memory that takes, for a store of 1 M keys
//! restored from a changelog of 1 M records and from one of 5 M records
//! (every key updated five times, in five commits).
//!
//! One run starts the broker of the integration tests (`TEST_BROKER`,
//! Apache Kafka by default) and, for each changelog length, loads the input
//! topic (4 partitions), folds it with the Kafka runtime (exactly-once, a
//! sum per key into the store `totals`, no output topic), then starts a
//! fresh process of this benchmark with an empty state directory under the
//! same application id: it restores the four tasks' stores from the
//! changelog and reports the records restored, the time from
//! `Runtime::new` until every task runs, and its peak resident memory
//! (`VmHWM`). Restoring in bounded memory means that peak does not grow
//! with the changelog's length, only with the store.
//!
//! Run with `cargo bench -p benches --bench restore`; `BENCH_KEYS` (default
//! 1 000 000) and `BENCH_UPDATES` (the longer changelog's updates per key,
//! default 5) change the sizes.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use integration_tests::Broker;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use stream_core::runtime::{Membership, Runtime, RuntimeConfig};
use stream_core::serdes::{Utf8, I64};
use stream_core::state::StateBackend;
use stream_core::{Consumed, Grouped, Materialized, StreamsBuilder, StreamsConfig, Topology};

const PARTITIONS: i32 = 4;

fn setting(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(text) => text.trim().parse().unwrap_or_else(|_| panic!("{name}={text} is not a number")),
        Err(_) => default,
    }
}

fn topology(input: &str) -> Topology {
    let builder = StreamsBuilder::new();
    builder.stream(input, Consumed::with(Utf8, I64)).group_by_key(Grouped::with(Utf8, I64)).aggregate(
        || 0,
        |_, amount, total| total + amount,
        Materialized::new("totals", I64),
    );
    builder.build().expect("topology")
}

fn config(app: &str, bootstrap: &str, state: &Path) -> RuntimeConfig {
    let streams = StreamsConfig::new(app).state(StateBackend::RocksDb(state.to_path_buf()));
    let mut config = RuntimeConfig::new(streams, bootstrap);
    // The restoring process takes the folding one's place in the group at once.
    config.membership = Membership::StaticAs(format!("{app}-instance"));
    config
}

/// `keys` keys, each updated `updates` times, a round of every key at a time.
fn produce(broker: &Broker, topic: &str, keys: u64, updates: u64) {
    let producer: BaseProducer = broker
        .client_config()
        .set("linger.ms", "20")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .expect("producer");
    for round in 0..updates {
        for key in 0..keys {
            let key = format!("key-{key:07}");
            let value = (round as i64 + 1).to_be_bytes();
            let mut record = BaseRecord::to(topic).key(key.as_str()).payload(&value[..]);
            while let Err((_, back)) = producer.send(record) {
                producer.poll(Duration::from_millis(10));
                record = back;
            }
        }
    }
    producer.flush(Duration::from_secs(120)).expect("flush");
}

/// Peak resident memory of this process, in MiB.
fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok());
    kib.unwrap_or(f64::NAN) / 1024.0
}

fn size_mib(dir: &Path) -> f64 {
    fn bytes(dir: &Path) -> u64 {
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| match e.metadata() {
                Ok(m) if m.is_dir() => bytes(&e.path()),
                Ok(m) => m.len(),
                Err(_) => 0,
            })
            .sum()
    }
    bytes(dir) as f64 / (1024.0 * 1024.0)
}

/// In the restoring process: restores, then prints `restored <records>
/// <seconds> <peak MiB> <store MiB>`.
fn restore_child(bootstrap: &str, app: &str, input: &str, state: &Path) {
    let started = Instant::now();
    let mut runtime = Runtime::new(topology(input), config(app, bootstrap, state)).expect("runtime");
    let mut elapsed = None;
    runtime
        .run(|m| {
            let restored = !m.tasks.is_empty() && m.is_running();
            if restored {
                elapsed.get_or_insert_with(|| started.elapsed());
            }
            restored
        })
        .expect("run");
    let elapsed = elapsed.unwrap_or_else(|| started.elapsed());
    let records = runtime.metrics().restored_records;
    println!("restored {records} {} {} {}", elapsed.as_secs_f64(), peak_rss_mib(), size_mib(state));
}

fn main() {
    if let (Ok(bootstrap), Ok(app), Ok(input), Ok(state)) = (
        std::env::var("RESTORE_BOOTSTRAP"),
        std::env::var("RESTORE_APP"),
        std::env::var("RESTORE_INPUT"),
        std::env::var("RESTORE_STATE"),
    ) {
        restore_child(&bootstrap, &app, &input, Path::new(&state));
        return;
    }
    let keys = setting("BENCH_KEYS", 1_000_000);
    let updates = setting("BENCH_UPDATES", 5).max(1);
    std::env::remove_var("RUST_LOG");
    let broker = Broker::start();
    let dir = tempfile::tempdir().expect("temp dir");
    println!("restoring a store of {keys} keys ({PARTITIONS} tasks) from changelogs of different lengths");
    for (i, rounds) in [1, updates].into_iter().enumerate() {
        let (app, input) = (format!("restore-{i}"), format!("restore-in-{i}"));
        broker.create_topic(&input, PARTITIONS);
        let loading = Instant::now();
        produce(&broker, &input, keys, rounds);
        let records = keys * rounds;
        let loaded = loading.elapsed();

        let folding = Instant::now();
        let folded_state = dir.path().join(format!("fold-{i}"));
        let mut runtime =
            Runtime::new(topology(&input), config(&app, broker.bootstrap(), &folded_state)).expect("runtime");
        runtime.run(|m| m.totals.records_in >= records).expect("fold");
        let folded = folding.elapsed();
        drop(runtime);

        let restore_state = dir.path().join(format!("restore-{i}"));
        let output = Command::new(std::env::current_exe().expect("this benchmark"))
            .env("RESTORE_BOOTSTRAP", broker.bootstrap())
            .env("RESTORE_APP", &app)
            .env("RESTORE_INPUT", &input)
            .env("RESTORE_STATE", &restore_state)
            .output()
            .expect("restoring process");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let line = stdout.lines().find_map(|l| l.strip_prefix("restored ")).unwrap_or_else(|| {
            panic!("the restoring process failed:\n{stdout}\n{}", String::from_utf8_lossy(&output.stderr))
        });
        let fields: Vec<f64> = line.split_whitespace().map(|f| f.parse().expect("a number")).collect();
        let [restored, seconds, peak, store] = fields[..] else { panic!("unexpected output {line}") };
        println!(
            "changelog of {records} records (loaded {:.1} s, folded {:.1} s): restored {restored:.0} records in \
             {seconds:.1} s, {:.0} records/s; peak RSS {peak:.0} MiB; store on disk {store:.0} MiB",
            loaded.as_secs_f64(),
            folded.as_secs_f64(),
            restored / seconds
        );
    }
}
