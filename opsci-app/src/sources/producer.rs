//! Sends parsed CSV rows to Kafka.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::ClientContext;

use super::csv::{parse, Kind};
use crate::kafka::KafkaConfig;
use crate::topology::Topics;

/// What a load did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    /// Data rows read.
    pub rows: u64,
    /// Rows sent to their topic.
    pub sent: u64,
    /// Rows that did not parse, sent to the error topic.
    pub rejected: u64,
    /// Records the broker did not acknowledge.
    pub failed: u64,
}

/// A load that could not run.
#[derive(Debug, thiserror::Error)]
pub enum ProduceError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The producer failed.
    #[error("kafka producer: {0}")]
    Kafka(#[from] KafkaError),
}

/// Counts delivery failures.
#[derive(Default)]
struct Deliveries {
    failed: AtomicU64,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((error, _)) = result {
            eprintln!("opsci-app: delivery failed: {error}");
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn topic_of<'a>(kind: Kind, topics: &'a Topics) -> &'a str {
    match kind {
        Kind::Products => &topics.product,
        Kind::Events => &topics.event,
        Kind::Stock => &topics.stock,
    }
}

/// Sends `record`, waiting for room in the producer's queue when it is full.
fn send(producer: &BaseProducer<Deliveries>, mut record: BaseRecord<'_, str, str>) -> Result<(), KafkaError> {
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                producer.poll(Duration::from_millis(50));
                record = back;
            }
            Err((error, _)) => return Err(error),
        }
    }
}

/// Loads the CSV file `path` of `kind` onto its topic. Keys are partitioned
/// with murmur2, as Java clients and stream-core do; rows that do not parse
/// go to the error topic as JSON naming the file, line and reason. Shows a
/// progress bar when stderr is a terminal.
pub fn produce(config: &KafkaConfig, kind: Kind, path: &Path) -> Result<Summary, ProduceError> {
    let io = |source| ProduceError::Io { path: path.display().to_string(), source };
    let rows = parse(kind, std::fs::File::open(path).map_err(io)?);
    let producer: BaseProducer<Deliveries> = config.producer().create_with_context(Deliveries::default())?;
    let topic = topic_of(kind, &config.topics);
    let bar = ProgressBar::new(rows.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} rows {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let file = path.display().to_string();
    let mut summary = Summary { rows: rows.len() as u64, ..Summary::default() };
    for row in rows {
        match row {
            Ok(row) => {
                let mut record = BaseRecord::to(topic).payload(row.value.as_str());
                if let Some(key) = row.key.as_deref() {
                    record = record.key(key);
                }
                send(&producer, record)?;
                summary.sent += 1;
            }
            Err(error) => {
                let value = serde_json::json!({
                    "file": file, "line": error.line, "reason": error.reason, "row": error.text, "topic": topic,
                })
                .to_string();
                send(&producer, BaseRecord::to(&config.topics.error).payload(value.as_str()))?;
                summary.rejected += 1;
            }
        }
        producer.poll(Duration::ZERO);
        bar.inc(1);
    }
    producer.flush(Duration::from_secs(60))?;
    bar.finish_and_clear();
    summary.failed = producer.context().failed.load(Ordering::Relaxed);
    Ok(summary)
}
