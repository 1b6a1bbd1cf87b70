//! Restoring a task's stores from their changelog topics, to exactly the
//! state of its last commit.
//!
//! Every changelog record carries the number of the commit that wrote it
//! (header [`COMMIT_HEADER`]); the number of a task's last successful commit
//! is stored atomically with that commit (see [`super::commit`]). A record is
//! applied when its commit succeeded, which the restorer decides without
//! relying on the broker hiding aborted transactions:
//!
//! - a commit numbered above the last successful one was abandoned;
//! - each restoration appends a *restore marker* (key [`MARKER_KEY`]) naming
//!   the last successful commit at that moment, after fencing the previous
//!   owner of the task. Commits that failed before it and were numbered above
//!   it were abandoned, even when a later commit reuses their number.
//!
//! The marker also shows where the partition ends (the test broker's high
//! watermark cannot be trusted): restoration reads up to its own marker, in
//! two passes: the first finds the markers, the second applies the records.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers as _};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Message, Offset, TopicPartitionList};

use super::dedupe::Seen;
use super::writer::Writer;
use super::{RuntimeConfig, RuntimeError};
use crate::task::Task;
use crate::topology::TaskId;

const TIMEOUT: Duration = Duration::from_secs(30);

/// Key of the restore markers in changelog topics: not valid UTF-8, JSON,
/// bincode of common types or an 8-byte integer, so no store key collides.
pub(crate) const MARKER_KEY: &[u8] = b"\xffstream-core\xffmarker";

/// Header of changelog records: the number of the commit that wrote them.
pub(crate) const COMMIT_HEADER: &str = "stream.commit";

/// Key prefix of the input positions a task writes to its first changelog at
/// each commit: the source topic, 0xff, the partition (4 bytes, big-endian);
/// the value is the next offset to read (8 bytes, big-endian). Restoring them
/// with the stores keeps state and positions from one and the same commit.
const POSITION_PREFIX: &[u8] = b"\xffstream-core\xffposition\xff";

/// The key of a changelog entry about source partition `topic`/`partition`:
/// `prefix`, the topic, 0xff, the partition (4 bytes, big-endian).
pub(crate) fn source_key(prefix: &[u8], topic: &str, partition: u32) -> Vec<u8> {
    let mut key = prefix.to_vec();
    key.extend_from_slice(topic.as_bytes());
    key.push(0xff);
    key.extend_from_slice(&partition.to_be_bytes());
    key
}

/// The source partition named by a key made with [`source_key`] and `prefix`.
pub(crate) fn parse_source_key(prefix: &[u8], key: &[u8]) -> Option<(String, u32)> {
    let rest = key.strip_prefix(prefix)?;
    let split = rest.len().checked_sub(5)?;
    let topic = std::str::from_utf8(&rest[..split]).ok()?.to_string();
    Some((topic, u32::from_be_bytes(rest[split + 1..].try_into().ok()?)))
}

/// The changelog record (key, value) saying that `topic`/`partition` resumes at `offset`.
pub(crate) fn position_entry(topic: &str, partition: i32, offset: i64) -> (Vec<u8>, Vec<u8>) {
    (source_key(POSITION_PREFIX, topic, partition as u32), offset.to_be_bytes().to_vec())
}

fn parse_position(key: &[u8], value: &[u8]) -> Option<((String, i32), i64)> {
    let (topic, partition) = parse_source_key(POSITION_PREFIX, key)?;
    Some(((topic, partition as i32), i64::from_be_bytes(value.try_into().ok()?)))
}

/// What restoration found besides the stores' contents.
pub(crate) struct Restored {
    /// Where the task's last commit left each input partition.
    pub(crate) positions: HashMap<(String, i32), i64>,
    /// The provenance already processed by the task (see [`Seen`]).
    pub(crate) seen: Seen,
    /// Records applied to stores.
    pub(crate) records: u64,
}

#[derive(serde::Deserialize)]
struct Marker {
    token: String,
    /// The task's last successful commit when restoration started.
    head: u64,
}

/// A token no other restoration uses.
fn token() -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("restore-{}-{nanos}", std::process::id())
}

/// Decides which commits' records to apply, from the restore markers read.
struct Validity {
    /// Offsets of the restore markers, ascending, with the lowest `head` of
    /// that marker and every later one.
    markers: Vec<(i64, u64)>,
    head: u64,
}

impl Validity {
    fn new(mut markers: Vec<(i64, u64)>, head: u64) -> Self {
        let mut lowest = head;
        for marker in markers.iter_mut().rev() {
            lowest = lowest.min(marker.1);
            marker.1 = lowest;
        }
        Validity { markers, head }
    }

    /// Whether the record at `offset`, written by commit `commit`, was committed.
    fn applies(&self, offset: i64, commit: u64) -> bool {
        let next = self.markers.partition_point(|(o, _)| *o < offset);
        let bound = self.markers.get(next).map_or(self.head, |(_, h)| *h);
        commit <= bound
    }
}

fn commit_of(message: &BorrowedMessage<'_>) -> u64 {
    let header = message.headers().and_then(|h| h.iter().find(|h| h.key == COMMIT_HEADER));
    header.and_then(|h| std::str::from_utf8(h.value?).ok()?.parse().ok()).unwrap_or(0)
}

/// Reads `topic`'s `partition` from the beginning, giving each message to
/// `each`, until the restore marker with `token`.
fn replay(
    consumer: &BaseConsumer,
    topic: &str,
    partition: i32,
    token: &str,
    mut each: impl FnMut(&BorrowedMessage<'_>) -> Result<(), RuntimeError>,
) -> Result<(), RuntimeError> {
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(topic, partition, Offset::Beginning)?;
    consumer.assign(&assignment)?;
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let Some(message) = consumer.poll(Duration::from_millis(100)) else {
            if Instant::now() > deadline {
                return Err(KafkaError::MessageConsumption(RDKafkaErrorCode::OperationTimedOut).into());
            }
            continue;
        };
        let message = message?;
        if message.key() == Some(MARKER_KEY) {
            let marker: Option<Marker> = message.payload().and_then(|p| serde_json::from_slice(p).ok());
            if marker.is_some_and(|m| m.token == token) {
                return Ok(());
            }
        }
        each(&message)?;
    }
}

/// Restores task `id`'s stores to the state of its commit number `head`
/// (the last successful one), writing the restore markers with `writer`,
/// which must already have fenced the task's previous owner.
pub(crate) fn restore(
    config: &RuntimeConfig,
    writer: &mut Writer,
    task: &mut Task,
    id: TaskId,
    head: u64,
) -> Result<Restored, RuntimeError> {
    let mut restored = Restored { positions: HashMap::new(), seen: Seen::default(), records: 0 };
    let changelogs: Vec<String> = task.changelogs().iter().map(|t| t.to_string()).collect();
    if changelogs.is_empty() {
        return Ok(restored);
    }
    let consumer: BaseConsumer = config
        .client()
        .set("group.id", format!("{}-restore", config.streams.application_id))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("fetch.wait.max.ms", "20")
        .create()?;
    let partition = id.partition as i32;
    let started = Instant::now();
    let mut seen_records = HashMap::new();
    for (store, topic) in changelogs.iter().enumerate() {
        let token = token();
        let marker = format!(r#"{{"token":"{token}","head":{head}}}"#);
        writer.write_marker(topic, partition, MARKER_KEY, marker.as_bytes())?;

        let mut markers = Vec::new();
        replay(&consumer, topic, partition, &token, |message| {
            if message.key() == Some(MARKER_KEY) {
                if let Some(marker) = message.payload().and_then(|p| serde_json::from_slice::<Marker>(p).ok()) {
                    markers.push((message.offset(), marker.head));
                }
            }
            Ok(())
        })?;
        let validity = Validity::new(markers, head);
        let mut last_log = Instant::now();
        replay(&consumer, topic, partition, &token, |message| {
            let Some(key) = message.key().filter(|k| *k != MARKER_KEY) else {
                return Ok(());
            };
            if !validity.applies(message.offset(), commit_of(message)) {
                return Ok(());
            }
            if let Some((source, offset)) = parse_position(key, message.payload().unwrap_or_default()) {
                restored.positions.insert(source, offset);
            } else if Seen::is_entry(key) {
                seen_records.insert(key.to_vec(), message.payload().map(<[u8]>::to_vec));
            } else {
                task.restore(store, key, message.payload())?;
                restored.records += 1;
            }
            if last_log.elapsed() > Duration::from_secs(5) {
                tracing::info!(task = %id, %topic, records = restored.records, "restoring");
                last_log = Instant::now();
            }
            Ok(())
        })?;
    }
    for (key, value) in seen_records {
        if let Some(value) = value {
            restored.seen.restore(&key, &value);
        }
    }
    task.commit()?;
    tracing::info!(task = %id, head, records = restored.records,
        elapsed_ms = started.elapsed().as_millis() as u64, "restored stores from changelogs");
    Ok(restored)
}

#[cfg(test)]
mod tests {
    use super::Validity;

    #[test]
    fn commits_abandoned_before_a_restore_marker_are_not_applied() {
        // Commits 1 and 2 succeeded; 3 was abandoned (records at offsets 20..25);
        // a restore marker at 30 named head 2; commit 3 was done again (40..45)
        // and 4 abandoned (50); the last successful commit is 3.
        let validity = Validity::new(vec![(30, 2)], 3);
        assert!(validity.applies(5, 1));
        assert!(validity.applies(15, 2));
        assert!(!validity.applies(22, 3), "abandoned before the marker");
        assert!(validity.applies(42, 3), "done again after the marker");
        assert!(!validity.applies(50, 4), "above the last successful commit");
    }
}
