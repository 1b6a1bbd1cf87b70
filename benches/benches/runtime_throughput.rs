//! End-to-end records per second of a keyed fold on the Kafka runtime
//! (at-least-once), beside raw consumption of the same topic from the same
//! broker, alternating in one run so that the ratio holds on a noisy machine.
//!
//! Run with `cargo bench -p benches --bench runtime_throughput` (needs the
//! test broker, as the integration tests do). Prints one line per round and
//! the median ratio.

use std::time::{Duration, Instant};

use integration_tests::Broker;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use stream_core::runtime::{Runtime, RuntimeConfig};
use stream_core::serdes::{Utf8, I64};
use stream_core::{Consumed, Grouped, Materialized, Produced, StreamsBuilder, StreamsConfig};

const RECORDS: u64 = 200_000;
const PARTITIONS: i32 = 4;
const ROUNDS: usize = 3;

fn produce(broker: &Broker) {
    let producer: BaseProducer = broker
        .client_config()
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "20")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .expect("producer");
    for i in 0..RECORDS {
        let key = format!("product-{}", i % 1_000);
        let value = ((i % 13) as i64 - 6).to_be_bytes();
        let mut record = BaseRecord::to("bench-in").key(key.as_str()).payload(&value[..]);
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

/// Seconds to read every record of the input topic with a plain consumer.
fn raw_consumption(broker: &Broker) -> f64 {
    let started = Instant::now();
    let consumer = broker.reader("bench-in", PARTITIONS, &[]);
    let mut read = 0;
    while read < RECORDS {
        if let Some(Ok(_)) = consumer.poll(Duration::from_millis(100)) {
            read += 1;
        }
    }
    started.elapsed().as_secs_f64()
}

/// Seconds for a fresh application to fold every record of the input topic.
fn runtime_fold(broker: &Broker, round: usize) -> f64 {
    let builder = StreamsBuilder::new();
    builder
        .stream("bench-in", Consumed::with(Utf8, I64))
        .group_by_key(Grouped::with(Utf8, I64))
        .aggregate(|| 0, |_, amount, total| total + amount, Materialized::new("totals", I64))
        .to_stream()
        .to("bench-out", Produced::with(Utf8, I64));
    let topology = builder.build().expect("topology");
    let started = Instant::now();
    let config = RuntimeConfig::new(StreamsConfig::new(format!("bench-{round}")), broker.bootstrap());
    let mut runtime = Runtime::new(topology, config).expect("runtime");
    runtime.run(|m| m.totals.records_in >= RECORDS).expect("run");
    started.elapsed().as_secs_f64()
}

fn main() {
    let broker = Broker::start();
    broker.create_topic("bench-in", PARTITIONS);
    broker.create_topic("bench-out", PARTITIONS);
    produce(&broker);
    println!("{RECORDS} records, {PARTITIONS} partitions; rates in records/s");
    let mut ratios = Vec::new();
    for round in 0..ROUNDS {
        let raw = raw_consumption(&broker);
        let fold = runtime_fold(&broker, round);
        let (raw_rate, fold_rate) = (RECORDS as f64 / raw, RECORDS as f64 / fold);
        ratios.push(fold_rate / raw_rate);
        println!(
            "round {round}: raw consumption {raw_rate:>10.0}  at-least-once fold {fold_rate:>10.0}  ratio {:.2}",
            fold_rate / raw_rate
        );
    }
    ratios.sort_by(f64::total_cmp);
    println!("median ratio fold / raw: {:.2}", ratios[ROUNDS / 2]);
}
