//! Restoring a task's stores from their changelog topics, to the state of
//! a commit that is wholly in the log, with the input positions of that
//! same commit.
//!
//! What a commit writes (see `Engine::commit`): each opening of a task is a
//! *session* with an id of its own; its commits are numbered from 1, and
//! every changelog record a commit writes carries the header
//! [`COMMIT_HEADER`] `<session>/<number>`. Once everything else the commit
//! wrote (outputs included) is stored, which the writer checks, it appends
//! to each of the task's changelogs a *commit record* (same header; the key
//! names the session, see [`commit_key`]).
//!
//! A commit is *complete* when its commit record is in every changelog the
//! commit wrote to (each commit record names them: a store added to the
//! task since holds no commit records of earlier sessions, and does not make
//! their commits incomplete). A session only starts a commit once the
//! previous one is committed, so its complete commits are 1 to the last one
//! with commit records; restoration applies, in log order, the records of
//! those and nothing else. Neither the consumer group's committed offsets nor the
//! broker hiding aborted records are needed:
//!
//! - with Apache Kafka, which hides aborted records from `read_committed`
//!   readers, a commit record is visible only when its transaction committed,
//!   so the complete commits are exactly the committed ones;
//! - the test broker shows aborted records, and finishes the offset commit of
//!   some transactions long after they committed (or never): there a complete
//!   commit whose transaction was then abandoned is applied too. Everything it
//!   wrote is in the log, outputs included, and its inputs are not processed
//!   again, so state, positions and outputs still agree. An incomplete commit
//!   is never applied: its inputs are processed again from the last complete
//!   commit, deterministically, so outputs it left behind are written again
//!   identically.
//!
//! A task without stores writes its commits (positions, de-duplication
//! entries, stream clock and commit records) to its sub-topology's
//! positions topic instead, restored the same way: no task depends on the
//! consumer group's coordinator to commit, nor to reopen once it has
//! committed.
//!
//! Compaction keeps what restoration needs: the last commit record of each
//! session (one key per session) and, on Apache Kafka, whose cleaner drops
//! aborted records, the last committed value of every other key.
//!
//! Where a partition ends is shown by a *restore marker* (key
//! [`MARKER_KEY`]) that restoration appends first, after fencing the task's
//! earlier owners, so nothing they wrote can follow it (the test broker's
//! high watermark cannot be trusted). Restoration reads each changelog up to
//! its marker twice: first to find the complete commits, then to apply them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{BorrowedMessage, Headers as _};
use rdkafka::{Message, Offset, TopicPartitionList};

use super::checkpoint::Checkpoint;
use super::dedupe::Seen;
use super::writer::Writer;
use super::{ClientKind, RuntimeConfig, RuntimeError};
use crate::record::Headers;
use crate::task::{StreamClock, Task};
use crate::topology::{positions_topic, TaskId};

const TIMEOUT: Duration = Duration::from_secs(30);

/// How long a committed reader may get nothing before restoration reads on
/// uncommitted (see [`replay`]).
const STALL: Duration = Duration::from_secs(5);

/// Key of the restore markers in changelog topics: not valid UTF-8, JSON,
/// bincode of common types or an 8-byte integer, so no store key collides.
pub(crate) const MARKER_KEY: &[u8] = b"\xffstream-core\xffmarker";

/// Key prefix of the commit records in changelog topics (see [`MARKER_KEY`]).
const COMMIT_PREFIX: &[u8] = b"\xffstream-core\xffcommit\xff";

/// Header of changelog records: the commit that wrote them, `<session>/<number>`.
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

/// Key of the stream clock a task writes to its first changelog when it
/// changed since its last commit; the value is the stream time, then when
/// each stream-time punctuation is due (8 bytes each, big-endian; `i64::MIN`
/// for none). Restored with the stores, as Kafka Streams keeps partition time
/// with the committed offsets.
const CLOCK_KEY: &[u8] = b"\xffstream-core\xffclock";

/// The changelog record (key, value) keeping `clock`.
pub(crate) fn clock_entry(clock: &StreamClock) -> (Vec<u8>, Vec<u8>) {
    let times = std::iter::once(clock.time).chain(clock.due.iter().map(|due| due.unwrap_or(i64::MIN)));
    (CLOCK_KEY.to_vec(), times.flat_map(i64::to_be_bytes).collect())
}

fn parse_clock(key: &[u8], value: &[u8]) -> Option<StreamClock> {
    if key != CLOCK_KEY || value.is_empty() || !value.len().is_multiple_of(8) {
        return None;
    }
    let mut times = value.chunks_exact(8).map(|c| i64::from_be_bytes(c.try_into().unwrap_or_default()));
    let time = times.next()?;
    Some(StreamClock { time, due: times.map(|t| (t != i64::MIN).then_some(t)).collect() })
}

/// A new session id for an opening of task `id`, used by no other opening.
pub(crate) fn session_id(id: TaskId) -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("{id}-{}-{nanos}", std::process::id())
}

/// The headers of the records of commit `number` of `session`.
pub(crate) fn commit_headers(session: &str, number: u64) -> Headers {
    Headers::new().with(COMMIT_HEADER, format!("{session}/{number}"))
}

/// The commit record (key, value) of commit `number` of `session`, which
/// wrote to `changelogs`: the key is [`COMMIT_PREFIX`] and the session; the
/// value the number (8 bytes, big-endian; so never empty, which compaction
/// would take for a deletion), then the changelogs' names, each followed by
/// a newline (which no topic name holds).
pub(crate) fn commit_record(session: &str, number: u64, changelogs: &[impl AsRef<str>]) -> (Vec<u8>, Vec<u8>) {
    let mut value = number.to_be_bytes().to_vec();
    for changelog in changelogs {
        value.extend_from_slice(changelog.as_ref().as_bytes());
        value.push(b'\n');
    }
    (commit_key(session), value)
}

/// Whether `key` is that of a restore marker or a commit record: where a
/// writer's records end for now (see `checkpoint`).
pub(crate) fn is_boundary(key: &[u8]) -> bool {
    key == MARKER_KEY || key.starts_with(COMMIT_PREFIX)
}

/// The key of the commit records of `session`.
fn commit_key(session: &str) -> Vec<u8> {
    [COMMIT_PREFIX, session.as_bytes()].concat()
}

/// The commit (session, number) named by a changelog record's headers.
fn commit_of<'a>(message: &'a BorrowedMessage<'_>) -> Option<(&'a str, u64)> {
    let headers = message.headers()?;
    let value = headers.iter().find(|h| h.key == COMMIT_HEADER)?.value?;
    let (session, number) = std::str::from_utf8(value).ok()?.rsplit_once('/')?;
    Some((session, number.parse().ok()?))
}

/// The topics where task `id` keeps its commits: its stores' changelogs,
/// or, for a task without stores, its sub-topology's positions topic.
pub(crate) fn commit_logs(config: &RuntimeConfig, id: TaskId, task: &Task) -> Vec<Arc<str>> {
    match task.changelogs() {
        [] => vec![Arc::from(positions_topic(&config.streams.application_id, id.subtopology))],
        changelogs => changelogs.to_vec(),
    }
}

/// What restoration found besides the stores' contents.
pub(crate) struct Restored {
    /// Where the last complete commit left each input partition.
    pub(crate) positions: HashMap<(String, i32), i64>,
    /// The provenance already processed by the task (see [`Seen`]).
    pub(crate) seen: Seen,
    /// The stream clock of that commit, if the task kept one.
    pub(crate) clock: Option<StreamClock>,
    /// Records applied to stores.
    pub(crate) records: u64,
}

#[derive(serde::Deserialize)]
struct Marker {
    token: String,
}

/// The commit records found in one changelog partition: the last commit of
/// each session, and the changelogs that session's commits wrote to.
#[derive(Default)]
struct Completion {
    last: HashMap<String, u64>,
    /// Absent for commit records that do not name their changelogs (written
    /// by earlier versions: they spanned every changelog of the task).
    spans: HashMap<String, Vec<String>>,
}

impl Completion {
    /// Takes a record (`key`, `value`) written by commit `number` of `session`.
    fn read(&mut self, session: &str, number: u64, key: &[u8], value: &[u8]) {
        if !key.starts_with(COMMIT_PREFIX) {
            return;
        }
        let last = self.last.entry(session.to_string()).or_default();
        *last = (*last).max(number);
        let names = value.get(8..).unwrap_or_default().split(|b| *b == b'\n').filter(|n| !n.is_empty());
        let names: Vec<String> = names.map(|n| String::from_utf8_lossy(n).into_owned()).collect();
        if !names.is_empty() {
            self.spans.insert(session.to_string(), names);
        }
    }
}

/// Of each session, the last commit whose commit record is in every
/// changelog it wrote to, given the commit records of each changelog of the
/// task. A changelog it wrote to that the task no longer has is not read.
fn complete_commits(logs: &[(&String, Completion)]) -> HashMap<String, u64> {
    let sessions: std::collections::HashSet<&String> = logs.iter().flat_map(|(_, c)| c.last.keys()).collect();
    let mut complete = HashMap::new();
    for session in sessions {
        let spans = logs.iter().find_map(|(_, c)| c.spans.get(session));
        let spanned = logs.iter().filter(|(topic, _)| spans.is_none_or(|s| s.contains(topic)));
        let last = spanned.map(|(_, c)| c.last.get(session).copied().unwrap_or(0)).min().unwrap_or(0);
        if last > 0 {
            complete.insert(session.clone(), last);
        }
    }
    complete
}

/// The two readers of a restoration: `read_committed`, and
/// `read_uncommitted` for what a broker holds back behind a transaction that
/// stays open after its producer was fenced (see [`replay`]).
struct Readers {
    committed: BaseConsumer,
    uncommitted: BaseConsumer,
}

impl Readers {
    fn new(config: &RuntimeConfig) -> Result<Readers, RuntimeError> {
        let reader = |isolation: &str| {
            config
                .client(ClientKind::Consumer)
                .set("group.id", format!("{}-restore", config.streams.application_id))
                .set("enable.auto.commit", "false")
                .set("isolation.level", isolation)
                .set("fetch.wait.max.ms", "20")
                .create()
        };
        Ok(Readers { committed: reader("read_committed")?, uncommitted: reader("read_uncommitted")? })
    }
}

/// Assigns `topic`'s `partition` from `offset` to `consumer`, alone.
fn assign(consumer: &BaseConsumer, (topic, partition): (&str, i32), offset: Offset) -> Result<(), RuntimeError> {
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(topic, partition, offset)?;
    Ok(consumer.assign(&assignment)?)
}

/// Reads `topic`'s `partition` from `start`, giving each message to `each`,
/// until the restore marker with `token`.
///
/// It reads `read_committed`, so that, on Apache Kafka, records of aborted
/// transactions are never seen. Every transaction on a changelog partition
/// is its task's, and fencing the task's earlier owners (before the marker
/// was written) completed theirs: on Apache Kafka, the only transaction
/// that can still hold the last stable offset back is the marker's own,
/// until its commit reaches the partition. Some brokers (nisshi 0.7.0) hold
/// it back for good behind a transaction a killed owner left open. So when
/// nothing comes for [`STALL`] and the last stable offset is where the
/// reader is (the reader has everything committed readers may read, yet not
/// the marker), the rest is read `read_uncommitted`: on Apache Kafka that
/// is the marker alone; on those brokers, which show aborted records to
/// committed readers anyway, what a killed owner left, of which the commit
/// records still decide what applies. A later pass switches at `stall`,
/// where an earlier one did. Returns where the reading switched, if it did;
/// fails when nothing comes for [`TIMEOUT`].
fn replay(
    readers: &Readers,
    (topic, partition, start): (&str, i32, Offset),
    token: &str,
    stall: Option<Offset>,
    mut each: impl FnMut(&BorrowedMessage<'_>) -> Result<(), RuntimeError>,
) -> Result<Option<Offset>, RuntimeError> {
    let switch = |at: Offset| -> Result<&BaseConsumer, RuntimeError> {
        readers.committed.unassign()?;
        assign(&readers.uncommitted, (topic, partition), at)?;
        Ok(&readers.uncommitted)
    };
    let (mut last_message, mut next, mut switched) = (Instant::now(), start, None);
    let mut last_check = Instant::now();
    let mut reader = &readers.committed;
    if stall == Some(start) {
        (reader, switched) = (switch(start)?, stall);
    } else {
        assign(reader, (topic, partition), start)?;
    }
    loop {
        let message = match reader.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => Some(message),
            // librdkafka reports a broker it cannot reach (a new reader, a
            // node down) and retries on its own: the wait goes on.
            Some(Err(error)) if super::is_retriable(&error) => {
                tracing::debug!(%topic, partition, %error, "restore reader");
                None
            }
            Some(Err(error)) => return Err(error.into()),
            None => None,
        };
        let Some(message) = message else {
            let quiet = last_message.elapsed();
            if switched.is_none() && quiet > STALL && last_check.elapsed() > STALL {
                last_check = Instant::now();
                // For a committed reader, the high watermark is the last stable
                // offset. Fails if the leader does not answer: an outage, retried.
                let (low, stable) = reader.fetch_watermarks(topic, partition, TIMEOUT)?;
                let at = match next {
                    Offset::Offset(offset) => offset,
                    _ => low,
                };
                if stable <= at {
                    tracing::warn!(%topic, partition, offset = at, stable,
                        "the last stable offset is held back before the restore marker: reading on uncommitted");
                    (reader, switched, last_message) = (switch(next)?, Some(next), Instant::now());
                }
            }
            if last_message.elapsed() > TIMEOUT {
                let (_, end) = reader.fetch_watermarks(topic, partition, TIMEOUT)?;
                let offset = match next {
                    Offset::Offset(offset) => offset,
                    _ => -1,
                };
                return Err(RuntimeError::RestoreStalled { topic: topic.to_string(), partition, offset, end });
            }
            continue;
        };
        (last_message, next) = (Instant::now(), Offset::Offset(message.offset() + 1));
        if message.key() == Some(MARKER_KEY) {
            let marker: Option<Marker> = message.payload().and_then(|p| serde_json::from_slice(p).ok());
            if marker.is_some_and(|m| m.token == token) {
                reader.unassign()?;
                return Ok(switched);
            }
            continue;
        }
        each(&message)?;
        if switched.is_none() && stall == Some(next) {
            (reader, switched) = (switch(next)?, stall);
        }
    }
}

/// Restores task `id`'s stores to its last complete commit, writing the
/// restore markers of `session` with `writer`, which must already have
/// fenced the task's previous owners. With a local `checkpoint`, the stores
/// hold its state and the changelogs are read from its offsets on; returns
/// `None` if it does not fit the changelogs (the stores must then be emptied
/// and restored without it).
pub(crate) fn restore(
    config: &RuntimeConfig,
    writer: &mut Writer,
    task: &mut Task,
    (id, session): (TaskId, &str),
    checkpoint: Option<&Checkpoint>,
) -> Result<Option<Restored>, RuntimeError> {
    let mut restored = Restored { positions: HashMap::new(), seen: Seen::default(), clock: None, records: 0 };
    let changelogs: Vec<String> = commit_logs(config, id, task).iter().map(|t| t.to_string()).collect();
    let stores = task.changelogs().len();
    let readers = Readers::new(config)?;
    let partition = id.partition as i32;
    let started = Instant::now();
    let marker = format!(r#"{{"token":"{session}"}}"#);
    for topic in &changelogs {
        writer.write_marker(topic, partition, MARKER_KEY, marker.as_bytes())?;
        // Knowing the partition's leader before it is assigned spares the
        // consumer a failed offset query and librdkafka's 500 ms wait to retry.
        readers.committed.fetch_metadata(Some(topic), TIMEOUT)?;
    }
    let mut starts = HashMap::new();
    if let Some(checkpoint) = checkpoint {
        if !checkpoint.fits(&changelogs) {
            tracing::warn!(task = %id, "local checkpoint written for other changelogs");
            return Ok(None);
        }
        for (topic, &offset) in &checkpoint.changelogs {
            // The marker just written is at or after the checkpoint's offset,
            // unless the changelog was recreated since.
            let (_, end) = readers.committed.fetch_watermarks(topic, partition, TIMEOUT)?;
            if end <= offset {
                tracing::warn!(task = %id, %topic, offset, end, "local checkpoint beyond the changelog's end");
                return Ok(None);
            }
            starts.insert(topic.clone(), Offset::Offset(offset));
        }
    }
    let start = |topic: &String| starts.get(topic).copied().unwrap_or(Offset::Beginning);

    // First pass: the last complete commit of each session.
    let mut logs = Vec::new();
    let mut stalls = HashMap::new();
    for topic in &changelogs {
        let mut completion = Completion::default();
        let stall = replay(&readers, (topic, partition, start(topic)), session, None, |message| {
            if let (Some((session, number)), Some(key)) = (commit_of(message), message.key()) {
                completion.read(session, number, key, message.payload().unwrap_or_default());
            }
            Ok(())
        })?;
        stalls.insert(topic, stall);
        logs.push((topic, completion));
    }
    let complete = complete_commits(&logs);
    tracing::debug!(task = %id, ?complete, "last complete commit of each session");

    // Second pass: apply the records of those commits.
    let mut skipped = 0u64;
    let mut seen_records = HashMap::new();
    let mut entry = |key: &[u8], value: &[u8]| {
        if let Some((source, offset)) = parse_position(key, value) {
            restored.positions.insert(source, offset);
            true
        } else if Seen::is_entry(key) {
            seen_records.insert(key.to_vec(), value.to_vec());
            true
        } else if key == CLOCK_KEY {
            restored.clock = parse_clock(key, value);
            true
        } else {
            false
        }
    };
    for (key, value) in checkpoint.iter().flat_map(|c| &c.entries) {
        entry(key, value);
    }
    let mut last_log = Instant::now();
    for (store, topic) in changelogs.iter().enumerate() {
        let stall = stalls.get(topic).copied().flatten();
        replay(&readers, (topic, partition, start(topic)), session, stall, |message| {
            let Some(key) = message.key().filter(|k| !k.starts_with(COMMIT_PREFIX)) else {
                return Ok(());
            };
            let applies = commit_of(message).is_some_and(|(s, n)| complete.get(s).is_some_and(|last| n <= *last));
            if !applies {
                skipped += 1;
                return Ok(());
            }
            if !entry(key, message.payload().unwrap_or_default()) && store < stores {
                task.restore(store, key, message.payload())?;
                restored.records += 1;
                super::crash::at("mid_restore");
            }
            if last_log.elapsed() > Duration::from_secs(5) {
                tracing::info!(task = %id, %topic, records = restored.records, "restoring");
                last_log = Instant::now();
            }
            Ok(())
        })?;
    }
    for (key, value) in seen_records {
        restored.seen.restore(&key, &value);
    }
    if let Some(clock) = &restored.clock {
        task.set_stream_clock(clock);
    }
    task.commit()?;
    tracing::info!(task = %id, records = restored.records, skipped, checkpoint = checkpoint.is_some(),
        elapsed_ms = started.elapsed().as_millis() as u64, "restored stores from changelogs");
    Ok(Some(restored))
}

#[cfg(test)]
mod tests {
    use super::{commit_record, complete_commits, Completion};

    const BOTH: [&str; 2] = ["first", "second"];

    fn read(log: &mut Completion, session: &str, number: u64, key: &[u8]) {
        log.read(session, number, key, b"value");
    }

    fn commit(log: &mut Completion, session: &str, number: u64) {
        commit_spanning(log, session, number, &BOTH);
    }

    fn commit_spanning(log: &mut Completion, session: &str, number: u64, changelogs: &[&str]) {
        let (key, value) = commit_record(session, number, changelogs);
        log.read(session, number, &key, &value);
    }

    #[test]
    fn only_commits_with_a_commit_record_are_complete() {
        let mut log = Completion::default();
        // Session a: commits 1 and 2 complete, 3 cut short by a crash.
        read(&mut log, "a", 1, b"k1");
        commit(&mut log, "a", 1);
        commit(&mut log, "a", 2);
        read(&mut log, "a", 3, b"k1");
        // Session b redoes that work and is cut short before its first commit record.
        read(&mut log, "b", 1, b"k1");
        assert_eq!(log.last.get("a"), Some(&2));
        assert_eq!(log.last.get("b"), None);
    }

    #[test]
    fn a_commit_is_complete_only_when_complete_in_every_changelog() {
        let mut first = Completion::default();
        for number in 1..=3 {
            commit(&mut first, "a", number);
        }
        commit(&mut first, "b", 1);
        let mut second = Completion::default();
        for number in 1..=2 {
            commit(&mut second, "a", number);
        }
        let names = BOTH.map(String::from);
        let complete = complete_commits(&[(&names[0], first), (&names[1], second)]);
        assert_eq!(complete.get("a"), Some(&2));
        assert_eq!(complete.get("b"), None);
    }

    #[test]
    fn a_changelog_added_since_does_not_make_earlier_commits_incomplete() {
        // Session a ran with store "first" only; session b with both.
        let mut first = Completion::default();
        for number in 1..=3 {
            commit_spanning(&mut first, "a", number, &["first"]);
        }
        commit(&mut first, "b", 1);
        let mut second = Completion::default();
        commit(&mut second, "b", 1);
        let names = BOTH.map(String::from);
        let complete = complete_commits(&[(&names[0], first), (&names[1], second)]);
        assert_eq!(complete.get("a"), Some(&3));
        assert_eq!(complete.get("b"), Some(&1));
    }

    #[test]
    fn commit_records_that_name_no_changelog_span_them_all() {
        let mut first = Completion::default();
        first.read("a", 1, &commit_record("a", 1, &[] as &[&str]).0, &1u64.to_be_bytes());
        let names = BOTH.map(String::from);
        let complete = complete_commits(&[(&names[0], first), (&names[1], Completion::default())]);
        assert!(complete.is_empty());
    }
}
