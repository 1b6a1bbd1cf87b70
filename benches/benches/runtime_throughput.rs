//! End-to-end records per second of a keyed fold on the Kafka runtime, with
//! exactly-once and with at-least-once, beside raw consumption of the same
//! topic from the same broker.
//!
//! One run starts the broker of the integration tests
//! (`integration_tests::Broker`: Apache Kafka, or nisshi with
//! `TEST_BROKER=nisshi`), loads `bench-in` once with 200 000 records
//! (1 000 keys, 4 partitions; 8-byte big-endian amounts) and then, in each of
//! 3 rounds, measures alternately (the order rotates from round to round):
//!
//! - **raw**: a plain rdkafka `BaseConsumer` assigned every partition from the
//!   beginning, polling until it has read every record: the ceiling. It learns
//!   the partitions' leaders before it is assigned them and fetches again as
//!   soon as its queue has room (`fetch.queue.backoff.ms` 10), as the runtime's
//!   consumers do;
//! - **raw-defaults**: the same consumer with librdkafka's defaults: assigned
//!   before it knows the leaders (its first offset query fails and is retried
//!   500 ms later) and waiting 1 s before fetching again once its queue was
//!   full, which a fast reader meets;
//! - **exactly-once**: a fresh application (new application id, so it starts
//!   from the beginning with empty state) folding the amounts per key with
//!   `Guarantee::ExactlyOnce` and the default 100 ms commit interval, writing
//!   each new total to `bench-out`;
//! - **at-least-once**: the same with `Guarantee::AtLeastOnce`.
//!
//! A fold's time runs from `Runtime::new` (topic checks, group join, fencing,
//! restoration of the empty changelogs) until `Runtime::run` returns, which it
//! does once the runtime's metrics count every input record read
//! (`totals.records_in`) and the final commit is done: the outputs are then
//! committed. The raw time runs from creating the consumer until the last
//! record. Each line also splits the time into start-up (until the first
//! record is read), the final commit and close, the rate in between
//! ("steady"), and the commits on the way (count, share of the time, mean and
//! longest, from `RuntimeMetrics`), and counts the fold's outputs.
//!
//! At the default size fixed costs weigh heavily (a fold's start-up joins the
//! group and fences and restores its tasks); `BENCH_RECORDS=1000000` gives
//! more weight to the steady state.
//!
//! Ratios are taken within a round (the four measurements follow each other
//! on the same broker, so a noisy machine affects them alike); the summary
//! gives the median over the rounds of each rate and each ratio.
//!
//! Run with `cargo bench -p benches --bench runtime_throughput` (a release
//! build; the broker is installed as for the tests, see `tests/src/lib.rs`;
//! it takes about a minute). Environment variables change the defaults:
//! `BENCH_RECORDS`, `BENCH_ROUNDS`, and `BENCH_COMMIT_INTERVAL_MS` (the
//! folds' commit interval). `RUST_LOG` is cleared: the broker would inherit
//! it and log every request, which slows it down many times over.

use std::time::{Duration, Instant};

use integration_tests::Broker;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Message, Offset, TopicPartitionList};
use stream_core::runtime::{Guarantee, Runtime, RuntimeConfig};
use stream_core::serdes::{Utf8, I64};
use stream_core::{Consumed, Grouped, Materialized, Produced, StreamsBuilder, StreamsConfig};

const KEYS: u64 = 1_000;
const PARTITIONS: i32 = 4;
const INPUT: &str = "bench-in";
const OUTPUT: &str = "bench-out";

/// `name` from the environment as a number, else `default`.
fn setting(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(text) => text.trim().parse().unwrap_or_else(|_| panic!("{name}={text} is not a number")),
        Err(_) => default,
    }
}

fn produce(broker: &Broker, records: u64) {
    let producer: BaseProducer = broker
        .client_config()
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "20")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .expect("producer");
    for i in 0..records {
        let key = format!("product-{}", i % KEYS);
        let value = ((i % 13) as i64 - 6).to_be_bytes();
        let mut record = BaseRecord::to(INPUT).key(key.as_str()).payload(&value[..]);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, back)) => {
                    producer.poll(Duration::from_millis(10));
                    record = back;
                }
            }
        }
    }
    producer.flush(Duration::from_secs(60)).expect("flush");
}

/// What is measured.
#[derive(Clone, Copy, PartialEq)]
enum Variant {
    /// Raw consumption, tuned or not.
    Raw(bool),
    Fold(Guarantee),
}

const VARIANTS: [Variant; 4] = [
    Variant::Raw(true),
    Variant::Raw(false),
    Variant::Fold(Guarantee::ExactlyOnce),
    Variant::Fold(Guarantee::AtLeastOnce),
];

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::Raw(true) => "raw",
            Variant::Raw(false) => "raw-defaults",
            Variant::Fold(Guarantee::ExactlyOnce) => "exactly-once",
            Variant::Fold(Guarantee::AtLeastOnce) => "at-least-once",
        }
    }

    fn index(self) -> usize {
        VARIANTS.iter().position(|v| *v == self).expect("a listed variant")
    }
}

/// One measurement.
#[derive(Default)]
struct Measure {
    /// From start to the end (for a fold, `run` returned).
    total: Duration,
    /// Until the first record was read.
    startup: Duration,
    /// After the last record was read: the final commit and closing the tasks.
    finish: Duration,
    commits: u64,
    commit_time: Duration,
    commit_max: Duration,
    records_out: u64,
}

impl Measure {
    fn rate(&self, records: u64) -> f64 {
        records as f64 / self.total.as_secs_f64()
    }

    /// Records per second between the first record read and the last.
    fn steady_rate(&self, records: u64) -> f64 {
        records as f64 / (self.total - self.startup - self.finish).as_secs_f64()
    }
}

/// Reads every record of the input topic with a plain consumer, `tuned` or
/// with librdkafka's defaults.
fn raw_consumption(broker: &Broker, records: u64, tuned: bool) -> Measure {
    let started = Instant::now();
    let consumer = if tuned {
        // `reader` fetches the topic's metadata before assigning it.
        broker.reader(INPUT, PARTITIONS, &[("fetch.queue.backoff.ms", "10")])
    } else {
        let consumer: BaseConsumer =
            broker.client_config().set("group.id", "bench-raw-defaults").create().expect("consumer");
        let mut assignment = TopicPartitionList::new();
        for p in 0..PARTITIONS {
            assignment.add_partition_offset(INPUT, p, Offset::Beginning).expect("partition");
        }
        consumer.assign(&assignment).expect("assign");
        consumer
    };
    let (mut read, mut bytes, mut first) = (0, 0, None);
    while read < records {
        if let Some(message) = consumer.poll(Duration::from_millis(100)) {
            let message = message.expect("consume");
            // Touch what the runtime would copy, so that nothing is skipped.
            bytes += message.key().map_or(0, <[u8]>::len) + message.payload().map_or(0, <[u8]>::len);
            first.get_or_insert_with(|| started.elapsed());
            read += 1;
        }
    }
    let total = started.elapsed();
    std::hint::black_box(bytes);
    consumer.unassign().expect("unassign");
    Measure { total, startup: first.unwrap_or_default(), ..Measure::default() }
}

/// A fresh application (`app`) folds every record of the input topic.
fn runtime_fold(broker: &Broker, records: u64, guarantee: Guarantee, app: String, interval: Duration) -> Measure {
    let builder = StreamsBuilder::new();
    builder
        .stream(INPUT, Consumed::with(Utf8, I64))
        .group_by_key(Grouped::with(Utf8, I64))
        .aggregate(|| 0, |_, amount, total| total + amount, Materialized::new("totals", I64))
        .to_stream()
        .to(OUTPUT, Produced::with(Utf8, I64));
    let topology = builder.build().expect("topology");
    let started = Instant::now();
    let mut config = RuntimeConfig::new(StreamsConfig::new(app), broker.bootstrap());
    config.guarantee = guarantee;
    config.commit_interval = interval;
    let mut runtime = Runtime::new(topology, config).expect("runtime");
    let (mut first, mut last) = (None, None);
    runtime
        .run(|m| {
            if m.totals.records_in > 0 {
                first.get_or_insert_with(|| started.elapsed());
            }
            let done = m.totals.records_in >= records;
            if done {
                last = Some(started.elapsed());
            }
            done
        })
        .expect("run");
    let total = started.elapsed();
    let metrics = runtime.metrics();
    assert!(metrics.totals.records_in >= records, "the fold stopped early");
    Measure {
        total,
        startup: first.unwrap_or_default(),
        finish: total - last.unwrap_or(total),
        commits: metrics.commits,
        commit_time: metrics.commit_latency_total,
        commit_max: metrics.commit_latency_max,
        records_out: metrics.totals.records_out,
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

fn main() {
    let records = setting("BENCH_RECORDS", 200_000);
    let rounds = setting("BENCH_ROUNDS", 3).max(1) as usize;
    let interval = Duration::from_millis(setting("BENCH_COMMIT_INTERVAL_MS", 100));
    // The broker inherits the environment; with RUST_LOG set it logs every
    // request and runs many times slower.
    std::env::remove_var("RUST_LOG");
    let broker = Broker::start();
    broker.create_topic(INPUT, PARTITIONS);
    broker.create_topic(OUTPUT, PARTITIONS);
    let loading = Instant::now();
    produce(&broker, records);
    println!(
        "{records} records ({KEYS} keys, {PARTITIONS} partitions) loaded in {:.1} s; folds commit every {} ms",
        loading.elapsed().as_secs_f64(),
        interval.as_millis()
    );
    println!(
        "rates in records/s; times in ms; steady: the rate between the first record read and the last; \
         commits: count, share of the time, mean, longest"
    );
    // rates[variant][round]
    let mut rates = vec![Vec::new(); VARIANTS.len()];
    for round in 0..rounds {
        for k in 0..VARIANTS.len() {
            let variant = VARIANTS[(round + k) % VARIANTS.len()];
            let measure = match variant {
                Variant::Raw(tuned) => raw_consumption(&broker, records, tuned),
                Variant::Fold(guarantee) => {
                    let app = format!("bench-{}-{round}", variant.name());
                    runtime_fold(&broker, records, guarantee, app, interval)
                }
            };
            let m = &measure;
            print!(
                "round {round} {:<13} {:>9.0}  total {:>6.0}  start-up {:>5.0}  final {:>4.0}  steady {:>8.0}",
                variant.name(),
                m.rate(records),
                ms(m.total),
                ms(m.startup),
                ms(m.finish),
                m.steady_rate(records)
            );
            if let Variant::Fold(_) = variant {
                let mean = m.commit_time.checked_div(m.commits as u32).unwrap_or_default();
                print!(
                    "  commits {:>3} {:>3.0} % {:>5.1} {:>5.1}  out {}",
                    m.commits,
                    100.0 * m.commit_time.as_secs_f64() / m.total.as_secs_f64(),
                    ms(mean),
                    ms(m.commit_max),
                    m.records_out
                );
            }
            println!();
            rates[variant.index()].push(m.rate(records));
        }
    }
    let rate = |v: Variant| median(rates[v.index()].clone());
    let ratio = |v: Variant, raw: Variant| {
        median(rates[v.index()].iter().zip(&rates[raw.index()]).map(|(fold, raw)| fold / raw).collect())
    };
    let (eos, alos) = (Variant::Fold(Guarantee::ExactlyOnce), Variant::Fold(Guarantee::AtLeastOnce));
    print!("median records/s over {rounds} rounds:");
    for variant in VARIANTS {
        print!("  {} {:.0}", variant.name(), rate(variant));
    }
    println!();
    for raw in [Variant::Raw(true), Variant::Raw(false)] {
        println!(
            "median ratio (per round) exactly-once / {name} {:.2}  at-least-once / {name} {:.2}",
            ratio(eos, raw),
            ratio(alos, raw),
            name = raw.name()
        );
    }
}
