//! The process that the exactly-once tests start, kill and restart: a keyed
//! fold on stream-core's Kafka runtime.
//!
//! Reads JSON integers keyed by text from `movements`, sums them per key into
//! the RocksDB store `totals` and writes each new total to `totals`; records
//! that do not decode go to `errors`. With `TOPOLOGY=hops`, the movements
//! first go through the repartition topic `hop`, are summed into `totals` and
//! counted into `counts` (two stores, two changelogs, written to the topics
//! `totals` and `counts`), and are also copied through the repartition topic
//! `echo-hop` to `echo` (a task without stores reading a repartition topic).
//! Settings come from the environment:
//!
//! - `BOOTSTRAP` (required), `APPLICATION_ID` (default `fold-worker`);
//! - `TOPOLOGY`: `fold` (default) or `hops`;
//! - `STATE_DIR`: RocksDB state directory (required);
//! - `GUARANTEE`: `exactly_once` (default) or `at_least_once`;
//! - `SESSION_TIMEOUT_MS`: the consumer group session timeout (default 6000);
//! - `IDLE_EXIT_MS`: when set, stop cleanly once every task runs and no record
//!   came for that long (counted again after each change of assignment), after
//!   writing the stores' contents as JSON to `DUMP` (`{"<store>": {"<key>": n}}`). A worker whose predecessor
//!   committed everything stops without having processed a record.
//!
//! It prints `running` once it has processed its first record.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use stream_core::runtime::{Guarantee, Runtime, RuntimeConfig};
use stream_core::serdes::{Json, Utf8, I64};
use stream_core::state::StateBackend;
use stream_core::{Consumed, Grouped, Materialized, Produced, Repartitioned, StreamsBuilder, StreamsConfig, Topology};

/// The stores of each topology, which `DUMP` holds.
fn stores(hops: bool) -> &'static [&'static str] {
    if hops {
        &["totals", "counts"]
    } else {
        &["totals"]
    }
}

fn topology(hops: bool) -> Result<Topology, stream_core::TopologyError> {
    let builder = StreamsBuilder::new();
    let movements = builder.stream("movements", Consumed::with(Utf8, Json::<i64>::new()));
    let sum = |_: &String, amount: i64, total: i64| total + amount;
    if hops {
        let grouped = movements.group_by(|key, _| key.clone(), Grouped::with(Utf8, I64).named("hop"));
        grouped
            .aggregate(|| 0, sum, Materialized::new("totals", I64))
            .to_stream()
            .to("totals", Produced::with(Utf8, I64));
        grouped.count("counts").to_stream().to("counts", Produced::with(Utf8, I64));
        movements.repartition(Repartitioned::with(Utf8, I64).named("echo-hop")).to("echo", Produced::with(Utf8, I64));
    } else {
        movements
            .group_by_key(Grouped::with(Utf8, I64))
            .aggregate(|| 0, sum, Materialized::new("totals", I64))
            .to_stream()
            .to("totals", Produced::with(Utf8, I64));
    }
    builder.build()
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let bootstrap = var("BOOTSTRAP").ok_or("BOOTSTRAP is not set")?;
    let state_dir = var("STATE_DIR").ok_or("STATE_DIR is not set")?;
    let app = var("APPLICATION_ID").unwrap_or_else(|| "fold-worker".into());
    let streams = StreamsConfig::new(app).dead_letter_to("errors").state(StateBackend::RocksDb(state_dir.into()));
    let mut config = RuntimeConfig::new(streams, bootstrap);
    config.guarantee = match var("GUARANTEE").as_deref() {
        None | Some("exactly_once") => Guarantee::ExactlyOnce,
        Some("at_least_once") => Guarantee::AtLeastOnce,
        Some(other) => return Err(format!("unknown GUARANTEE {other}").into()),
    };
    let session = var("SESSION_TIMEOUT_MS").unwrap_or_else(|| "6000".into());
    config.properties.push(("consumer.session.timeout.ms".into(), session));
    config.properties.push(("consumer.heartbeat.interval.ms".into(), "500".into()));
    if let Some(debug) = var("KAFKA_DEBUG") {
        config.properties.push(("debug".into(), debug));
    }
    let hops = match var("TOPOLOGY").as_deref() {
        None | Some("fold") => false,
        Some("hops") => true,
        Some(other) => return Err(format!("unknown TOPOLOGY {other}").into()),
    };
    let idle_exit = var("IDLE_EXIT_MS").map(|ms| ms.parse().map(Duration::from_millis)).transpose()?;

    let mut runtime = Runtime::new(topology(hops)?, config)?;
    let reader = runtime.store_reader();
    let (mut last_count, mut last_change, mut announced) = (0, Instant::now(), false);
    let mut last_tasks = Vec::new();
    let mut dumped = Ok(());
    runtime.run(|metrics| {
        let count = metrics.totals.records_in;
        let tasks: Vec<_> = metrics.tasks.keys().copied().collect();
        if tasks.is_empty() || !metrics.is_running() || tasks != last_tasks {
            last_tasks = tasks;
            // Idle time counts once the tasks run, and again after each change
            // of assignment.
            last_change = Instant::now();
        }
        if count != last_count {
            (last_count, last_change) = (count, Instant::now());
            if !announced {
                println!("running");
                announced = true;
            }
        }
        let idle = idle_exit.is_some_and(|idle| last_change.elapsed() > idle);
        if idle {
            // Before stopping: the tasks and their stores close with the runtime.
            dumped = dump(&reader, stores(hops));
        }
        idle
    })?;
    dumped?;
    Ok(())
}

/// Writes the contents of `stores` as JSON to `DUMP`, if set.
fn dump(reader: &stream_core::runtime::StoreReader, stores: &[&str]) -> Result<(), Box<dyn std::error::Error>> {
    if let Some(path) = var("DUMP") {
        let mut dump = BTreeMap::new();
        for store in stores {
            let contents: BTreeMap<String, i64> = reader.all(store, Utf8, I64)?.into_iter().collect();
            dump.insert(*store, contents);
        }
        std::fs::write(path, serde_json::to_vec(&dump)?)?;
    }
    Ok(())
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("fold-worker: {error}");
            ExitCode::FAILURE
        }
    }
}
