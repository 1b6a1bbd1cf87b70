//! Records per second of a keyed fold through the test driver, with the
//! in-memory store and with the RocksDB store: the fold alone (state and
//! changelog), and the fold writing each new value to an output topic.
//!
//! Run with `cargo bench -p benches --bench keyed_fold`. The driver is
//! single-threaded, so the figures are per core.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use stream_core::serdes::{Utf8, I64};
use stream_core::state::StateBackend;
use stream_core::testing::TestRecord;
use stream_core::{Consumed, Grouped, Materialized, Produced, StreamsBuilder, StreamsConfig, TestDriver};

const BATCH: usize = 20_000;
const KEYS: usize = 1_000;

/// Stock movements folded into a stock level per product, optionally
/// written to the topic `levels`.
fn driver(state: StateBackend, with_output: bool) -> TestDriver {
    let builder = StreamsBuilder::new();
    let levels = builder.stream("stock", Consumed::with(Utf8, I64)).group_by_key(Grouped::with(Utf8, I64)).aggregate(
        || 0,
        |_, amount, stock| stock + amount,
        Materialized::new("stock", I64),
    );
    if with_output {
        levels.to_stream().to("levels", Produced::with(Utf8, I64));
    }
    let config = StreamsConfig::new("bench").state(state);
    TestDriver::builder(builder.build().expect("topology")).config(config).partitions(4).build().expect("driver")
}

fn batch() -> Vec<TestRecord<String, i64>> {
    (0..BATCH).map(|i| TestRecord::new(format!("product-{}", i % KEYS), (i % 13) as i64 - 6, i as i64)).collect()
}

fn keyed_fold(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let backends =
        [("in-memory", StateBackend::InMemory), ("rocksdb", StateBackend::RocksDb(dir.path().to_path_buf()))];
    let variants = [("fold", false), ("fold+output", true)];
    let records = batch();
    let mut group = c.benchmark_group("keyed_fold");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.sample_size(20);
    for (backend, state) in backends {
        for (variant, with_output) in variants {
            let driver = driver(state.clone(), with_output);
            let input = driver.input_topic("stock", Utf8, I64);
            group.bench_function(format!("{backend}/{variant}"), |b| {
                b.iter_batched(
                    || records.clone(),
                    |records| {
                        // One commit per batch, as a commit interval would do.
                        input.pipe_batch(records).expect("pipe");
                        driver.read_raw("levels").len()
                    },
                    BatchSize::LargeInput,
                )
            });
        }
    }
    group.finish();
}

criterion_group!(benches, keyed_fold);
criterion_main!(benches);
