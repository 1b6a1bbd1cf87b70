//! Restoring a task's stores from their changelog topics.
//!
//! The end of a changelog partition is found with a marker, not with the
//! broker's high watermark (the test broker under-reports it): the task
//! appends a marker record carrying a fresh token and replays the partition
//! until it reads that token. Marker records (key [`MARKER_KEY`]) are never
//! applied to stores.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Message, Offset, TopicPartitionList};

use super::{RuntimeConfig, RuntimeError};
use crate::task::Task;
use crate::topology::TaskId;

const TIMEOUT: Duration = Duration::from_secs(30);

/// Key of the marker records in changelog topics: not valid UTF-8, JSON,
/// bincode of common types or an 8-byte integer, so no store key collides.
pub(crate) const MARKER_KEY: &[u8] = b"\xffstream-core\xffmarker";

/// A token no other restore uses.
fn token() -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("restore-{}-{nanos}", std::process::id())
}

/// Replays each store's changelog partition into the task's stores, up to
/// a marker appended when restoration starts, then commits them.
/// The markers are written with the runtime's own `producer`.
pub(crate) fn restore(
    config: &RuntimeConfig,
    producer: &BaseProducer,
    task: &mut Task,
    id: TaskId,
) -> Result<(), RuntimeError> {
    let changelogs: Vec<String> = task.changelogs().iter().map(|t| t.to_string()).collect();
    if changelogs.is_empty() {
        return Ok(());
    }
    let consumer: BaseConsumer = config
        .client()
        .set("group.id", format!("{}-restore", config.streams.application_id))
        .set("enable.auto.commit", "false")
        .create()?;
    let partition = id.partition as i32;
    let started = Instant::now();
    let mut restored = 0u64;
    for (store, topic) in changelogs.iter().enumerate() {
        let token = token();
        let marker = BaseRecord::to(topic).partition(partition).key(MARKER_KEY).payload(token.as_str());
        producer.send(marker).map_err(|(e, _)| e)?;
        producer.flush(TIMEOUT)?;
        let mut assignment = TopicPartitionList::new();
        assignment.add_partition_offset(topic, partition, Offset::Beginning)?;
        consumer.assign(&assignment)?;
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if Instant::now() > deadline {
                return Err(KafkaError::MessageConsumption(RDKafkaErrorCode::OperationTimedOut).into());
            }
            let Some(message) = consumer.poll(Duration::from_millis(100)) else {
                continue;
            };
            let message = message?;
            match message.key() {
                Some(MARKER_KEY) if message.payload() == Some(token.as_bytes()) => break,
                Some(MARKER_KEY) | None => {}
                Some(key) => {
                    task.restore(store, key, message.payload())?;
                    restored += 1;
                }
            }
        }
    }
    task.commit()?;
    tracing::info!(task = %id, records = restored, elapsed_ms = started.elapsed().as_millis() as u64, "restored stores from changelogs");
    Ok(())
}
