//! The part of the runtime that owns the tasks and commits: shared with the
//! consumer's rebalance callback, which opens (fences, restores) the tasks of
//! assigned partitions and commits and closes those of revoked ones.
//!
//! A commit of a task writes, in one transaction: the outputs of the records
//! processed since the last commit, the stores' changes, the new input
//! positions and de-duplication entries (all three as changelog records
//! tagged with the commit), then, once all of that is stored, one commit
//! record per changelog. A task without stores writes its positions and
//! commit records to its sub-topology's positions topic. Restoration (see
//! `restore`) relies on these logs alone, so with exactly-once no group
//! offsets are committed (the lag is in the runtime's metrics), and no
//! commit waits on the group's coordinator. A task closed right after a
//! successful commit leaves a local checkpoint (see `checkpoint`).
//!
//! Opening (fencing, restoring) and committing wait mostly on the cluster, so
//! the tasks do them side by side, on a few threads (see [`on_threads`]).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::message::{BorrowedMessage, Headers as _};
use rdkafka::{Message, Offset, TopicPartitionList};

use super::checkpoint::Checkpoint;
use super::crash;
use super::dedupe::Seen;
use super::metrics::{MetricsHandle, TaskStatus};
use super::query::Views;
use super::rebalance::Fetched;
use super::restore;
use super::retry::Waiting;
use super::writer::{self, Writer};
use super::{now_millis, provenance, RuntimeConfig, RuntimeError};
use crate::error::StreamError;
use crate::metrics::TaskMetrics;
use crate::record::{Headers, OutputRecord, RawRecord, RecordMetadata};
use crate::task::{StreamClock, Task};
use crate::topology::{TaskId, Topology};

const TIMEOUT: Duration = Duration::from_secs(30);

/// How long a task's opening waits for where its tables end (see
/// [`Engine::resume_caught_up`]); past it, the end comes from the fetches.
const WATERMARKS_TIMEOUT: Duration = Duration::from_secs(2);

/// Most threads used to open or commit tasks side by side.
const PARALLELISM: usize = 8;

/// Runs `f` on every item, on up to [`PARALLELISM`] threads (the calling one
/// for a single item), and returns the results in order, or the first error.
fn on_threads<T: Send, R: Send>(
    items: Vec<T>,
    f: impl Fn(T) -> Result<R, RuntimeError> + Sync,
) -> Result<Vec<R>, RuntimeError> {
    if items.len() <= 1 {
        return items.into_iter().map(f).collect();
    }
    let per_thread = items.len().div_ceil(PARALLELISM);
    let mut items = items.into_iter().peekable();
    let mut chunks = Vec::new();
    while items.peek().is_some() {
        chunks.push(items.by_ref().take(per_thread).collect::<Vec<T>>());
    }
    let f = &f;
    std::thread::scope(|scope| {
        let threads: Vec<_> = chunks
            .into_iter()
            .map(|chunk| scope.spawn(move || chunk.into_iter().map(f).collect::<Result<Vec<R>, _>>()))
            .collect();
        let mut results = Vec::new();
        for thread in threads {
            results.extend(thread.join().unwrap_or(Err(RuntimeError::Poisoned))?);
        }
        Ok(results)
    })
}

/// `error`, as [`RuntimeError::Fenced`] if it says that task `id` was fenced.
fn fenced(error: RuntimeError, application_id: &str, id: TaskId) -> RuntimeError {
    match error {
        RuntimeError::Kafka(source) if RuntimeError::Kafka(source.clone()).is_fencing() => RuntimeError::Fenced {
            application_id: application_id.to_string(),
            task: id.to_string(),
            source: Box::new(source),
        },
        other => other,
    }
}

/// A task and what the runtime keeps beside it.
struct Running {
    task: Task,
    writer: Writer,
    /// Where it keeps its commits (see `restore::commit_logs`).
    logs: Vec<Arc<str>>,
    /// Identifies this opening of the task in its changelog records.
    session: String,
    /// Number of its last commit in this session.
    commits: u64,
    /// Next offset to commit, per input partition.
    positions: HashMap<(Arc<str>, i32), i64>,
    /// Input positions of its last commit (or of the commit it restored).
    committed: HashMap<(String, i32), i64>,
    seen: Seen,
    /// Stream clock of its last commit (or of the commit it restored).
    clock: Option<StreamClock>,
    restored: u64,
    /// Its table partitions not read up to their end as of its opening, with
    /// that end (`None` until known); its other partitions are paused until
    /// they are.
    catching_up: Vec<((String, i32), Option<i64>)>,
}

/// The assigned partitions whose tasks wait to be opened, because opening
/// them failed (the cluster did not answer) or their commit did (rewound).
struct Pending {
    since: Instant,
    next_try: Instant,
    waiting: Waiting,
    /// Whether they were reported stuck (waiting longer than the task timeout).
    reported: bool,
}

pub(super) struct Engine {
    topology: Topology,
    /// The partitions the group assigned to this instance.
    assignment: Vec<(String, i32)>,
    pending: Option<Pending>,
    pub(super) config: RuntimeConfig,
    /// The producer tasks share under [`super::Guarantee::AtLeastOnce`].
    shared: Option<Arc<writer::TaskProducer>>,
    partitions: Arc<BTreeMap<String, u32>>,
    /// Source topic → who reads it.
    readers: HashMap<Arc<str>, Reader>,
    tasks: BTreeMap<TaskId, Running>,
    pub(super) last_commit: Instant,
    /// Reused for each record's output.
    buffer: Vec<OutputRecord>,
    /// Metrics of tasks already closed.
    closed: TaskMetrics,
    duplicates: u64,
    /// Store records restored, over all restorations.
    restored: u64,
    pub(super) metrics: MetricsHandle,
    /// The stores of the open tasks, for [`super::StoreReader`].
    pub(super) views: Views,
}

/// Who reads a source topic.
struct Reader {
    subtopology: u32,
    /// Whether it is a repartition topic, whose records are de-duplicated by provenance.
    repartition: bool,
    /// Whether it is read as a table (see [`Engine::resume_caught_up`]).
    table: bool,
}

/// Copies what a task needs out of a consumed message.
fn raw_record(message: &BorrowedMessage<'_>) -> RawRecord {
    let mut headers = Headers::new();
    if let Some(h) = message.headers() {
        for header in h.iter() {
            headers.add(header.key, header.value.unwrap_or_default());
        }
    }
    RawRecord {
        key: message.key().map(<[u8]>::to_vec),
        value: message.payload().map(<[u8]>::to_vec),
        timestamp: message.timestamp().to_millis().unwrap_or_else(now_millis),
        headers,
    }
}

/// `n` in decimal, written into `buffer`.
fn decimal(n: i64, buffer: &mut [u8; 20]) -> &[u8] {
    use std::io::Write as _;
    let mut rest = &mut buffer[..];
    // 20 bytes hold any i64.
    let _ = write!(rest, "{n}");
    let written = 20 - rest.len();
    &buffer[..written]
}

/// The committed offset of `topic`/`partition` in `committed`, if any.
fn committed_offset(committed: &TopicPartitionList, topic: &str, partition: i32) -> Option<i64> {
    match committed.find_partition(topic, partition)?.offset() {
        Offset::Offset(n) if n >= 0 => Some(n),
        _ => None,
    }
}

/// Whether the group gives and takes back partitions one by one (the
/// `cooperative-sticky` assignor, or `group.protocol=consumer`), rather
/// than all of them at each rebalance.
fn incremental<C: ConsumerContext>(consumer: &BaseConsumer<C>) -> bool {
    matches!(consumer.rebalance_protocol(), RebalanceProtocol::Cooperative)
}

/// What opening a task needs of the engine, shared by the threads that open tasks.
struct Opener<'a> {
    topology: &'a Topology,
    config: &'a RuntimeConfig,
    partitions: &'a Arc<BTreeMap<String, u32>>,
    shared: &'a Option<Arc<writer::TaskProducer>>,
    metrics: &'a MetricsHandle,
}

impl Opener<'_> {
    /// The writer of task `id`; creating it fences the task's earlier owners
    /// (with exactly-once), aborting a transaction one of them left open.
    fn fence(&self, id: TaskId) -> Result<Writer, RuntimeError> {
        self.metrics.update(|m| {
            m.tasks.insert(id, TaskStatus { restoring: true, ..TaskStatus::default() });
        });
        Ok(match self.shared {
            Some(producer) => Writer::Shared(producer.clone()),
            None => {
                let app = &self.config.streams.application_id;
                let subtopology = self.topology.subtopologies.get(id.subtopology as usize);
                let source = subtopology.and_then(|s| s.sources.first()).map(|t| t.resolve(app));
                Writer::transactional(self.config, id, &source.unwrap_or_default())?
            }
        })
    }

    /// Opens task `id`, whose earlier owners `writer` fenced: restores its
    /// stores (from their local checkpoint if there is one that fits, else
    /// from empty stores).
    fn open(&self, id: TaskId, mut writer: Writer) -> Result<Running, RuntimeError> {
        let streams = &self.config.streams;
        let mut checkpoint = Checkpoint::take(streams, id).map_err(StreamError::from)?;
        let session = restore::session_id(id);
        loop {
            if checkpoint.is_none() {
                // Local state without a checkpoint may hold writes of a commit
                // the cluster lost or never saw: it is rebuilt.
                streams.state.wipe_task(&streams.application_id, &id.to_string()).map_err(StreamError::from)?;
            }
            let mut task = Task::new(self.topology, id, streams, self.partitions.clone(), now_millis())?;
            let restoring = (id, session.as_str());
            let Some(restored) = restore::restore(self.config, &mut writer, &mut task, restoring, checkpoint.as_ref())?
            else {
                checkpoint = None;
                continue;
            };
            return Ok(Running {
                logs: restore::commit_logs(self.config, id, &task),
                task,
                writer,
                session,
                commits: 0,
                positions: HashMap::new(),
                committed: restored.positions,
                seen: restored.seen,
                clock: restored.clock,
                restored: restored.records,
                catching_up: Vec::new(),
            });
        }
    }
}

impl Engine {
    pub(super) fn new(
        topology: Topology,
        config: RuntimeConfig,
        partitions: BTreeMap<String, u32>,
        shared: Option<Arc<writer::TaskProducer>>,
        metrics: MetricsHandle,
    ) -> Engine {
        let app = config.streams.application_id.clone();
        let repartition: HashSet<String> = topology.repartition_topics(&app).into_iter().collect();
        let mut readers = HashMap::new();
        for (i, sub) in topology.subtopologies.iter().enumerate() {
            for source in &sub.sources {
                let topic = source.resolve(&app);
                let table = sub.tables.contains(source);
                let reader = Reader { subtopology: i as u32, repartition: repartition.contains(&topic), table };
                readers.insert(Arc::from(topic), reader);
            }
        }
        Engine {
            topology,
            assignment: Vec::new(),
            pending: None,
            config,
            shared,
            partitions: Arc::new(partitions),
            readers,
            tasks: BTreeMap::new(),
            last_commit: Instant::now(),
            buffer: Vec::new(),
            closed: TaskMetrics::default(),
            duplicates: 0,
            restored: 0,
            metrics,
            views: Views::default(),
        }
    }

    /// The topics the consumer subscribes to.
    pub(super) fn source_topics(&self) -> Vec<String> {
        self.readers.keys().map(|t| t.to_string()).collect()
    }

    /// Takes the partitions the group just assigned and opens their tasks
    /// (see [`Engine::open_pending`]).
    pub(super) fn assigned<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        partitions: &TopicPartitionList,
    ) -> Result<(), RuntimeError> {
        let added: Vec<(String, i32)> =
            partitions.elements().iter().map(|e| (e.topic().to_string(), e.partition())).collect();
        if incremental(consumer) {
            // Added to what the instance has, whose tasks keep running.
            for partition in added {
                if !self.assignment.contains(&partition) {
                    self.assignment.push(partition);
                }
            }
        } else {
            self.assignment = added;
        }
        let now = Instant::now();
        let waiting = Waiting::new(format!("Kafka at {} to open tasks", self.config.bootstrap_servers));
        self.pending = Some(Pending { since: now, next_try: now, waiting, reported: false });
        self.open_pending(consumer)
    }

    /// Commits and closes the tasks of the revoked `partitions` (with the
    /// eager protocol, all of them; with an incremental one, those that move
    /// to another instance, the others going on). A commit that fails for a
    /// retriable reason leaves them closed without a checkpoint: their next
    /// owner restores their last complete commit.
    pub(super) fn revoked<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        partitions: &TopicPartitionList,
    ) -> Result<(), RuntimeError> {
        let result = self.commit(consumer).map_err(|error| self.cause(error));
        self.close_partitions(partitions, result.is_ok());
        if incremental(consumer) {
            let revoked: BTreeSet<(String, i32)> =
                partitions.elements().iter().map(|e| (e.topic().to_string(), e.partition())).collect();
            self.assignment.retain(|p| !revoked.contains(p));
            if self.assignment.is_empty() {
                self.pending = None;
            }
            let mut consumed = TopicPartitionList::new();
            for element in consumer.assignment()?.elements() {
                if revoked.contains(&(element.topic().to_string(), element.partition())) {
                    consumed.add_partition(element.topic(), element.partition());
                }
            }
            consumer.incremental_unassign(&consumed)?;
        } else {
            self.assignment.clear();
            self.pending = None;
            consumer.unassign()?;
        }
        match result {
            Err(error) if error.is_retriable() => {
                tracing::warn!(%error, "commit before the revocation failed; the tasks' next owners resume from their last commit");
                Ok(())
            }
            other => other,
        }
    }

    /// Opens the tasks of the assigned partitions, if some wait to be opened
    /// and their backoff is over, and assigns the partitions to `consumer`
    /// at the positions restored. While the cluster does not answer, the
    /// consumer reads nothing, and opening is tried again later.
    pub(super) fn open_pending<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>) -> Result<(), RuntimeError> {
        let Some(pending) = &self.pending else { return Ok(()) };
        if Instant::now() < pending.next_try {
            return Ok(());
        }
        let incremental = incremental(consumer);
        let mut partitions = TopicPartitionList::new();
        for (topic, partition) in &self.assignment {
            // With an incremental protocol, the partitions of running tasks
            // stay as they are.
            let open = self.readers.get(topic.as_str()).is_some_and(|reader| {
                self.tasks.contains_key(&TaskId { subtopology: reader.subtopology, partition: *partition as u32 })
            });
            if !(incremental && open) {
                partitions.add_partition(topic, *partition);
            }
        }
        let result = self.open_tasks(consumer, &mut partitions).and_then(|()| {
            if incremental {
                consumer.incremental_assign(&partitions)?;
            } else {
                consumer.assign(&partitions)?;
            }
            Ok(consumer.pause(&self.streams_catching_up())?)
        });
        if result.is_err() {
            // Tasks opened before the failure are opened again with the
            // others, so that every task's position comes from its opening.
            if incremental {
                self.close_partitions(&partitions, false);
            } else {
                self.close_dirty();
            }
        }
        let Some(pending) = &mut self.pending else { return Ok(()) };
        match result {
            Ok(()) => {
                pending.waiting.succeeded();
                self.pending = None;
                self.publish_metrics(None);
                Ok(())
            }
            Err(error) if error.is_retriable() => {
                if incremental {
                    // Answers the rebalance, if one waits; nothing is added.
                    consumer.incremental_assign(&TopicPartitionList::new())?;
                } else {
                    consumer.assign(&TopicPartitionList::new())?;
                }
                pending.next_try = Instant::now() + pending.waiting.failed(&error);
                if !pending.reported && pending.since.elapsed() > self.config.task_timeout {
                    pending.reported = true;
                    tracing::error!(%error, waited_s = pending.since.elapsed().as_secs(),
                        "tasks stuck for longer than the task timeout; still waiting for Kafka");
                }
                let stuck = pending.reported;
                self.metrics.update(|m| {
                    m.kafka_retries += 1;
                    m.stuck = stuck;
                });
                self.publish_metrics(None);
                Ok(())
            }
            Err(error) => Err(error),
        }
    }

    /// The stream partitions (those not read as tables) of the tasks still
    /// reading their tables up to where they ended at their opening.
    fn streams_catching_up(&self) -> TopicPartitionList {
        let mut streams = TopicPartitionList::new();
        for (id, running) in self.tasks.iter().filter(|(_, r)| !r.catching_up.is_empty()) {
            for topic in running.task.source_topics().filter(|t| !self.readers.get(*t).is_some_and(|r| r.table)) {
                streams.add_partition(topic, id.partition as i32);
            }
        }
        streams
    }

    /// Resumes the streams of the tasks whose tables were read up to where
    /// they ended at their opening: processed past it, or `fetched` past
    /// it (per partition, the next offset the consumer fetches, which passes
    /// the transaction markers that end a partition written transactionally,
    /// and the partition's end, as of the last fetches).
    pub(super) fn resume_caught_up<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        fetched: impl FnOnce() -> HashMap<(String, i32), Fetched>,
    ) -> Result<(), RuntimeError> {
        if self.tasks.values().all(|r| r.catching_up.is_empty()) {
            return Ok(());
        }
        let fetched = fetched();
        let mut resumed = TopicPartitionList::new();
        for (id, running) in self.tasks.iter_mut().filter(|(_, r)| !r.catching_up.is_empty()) {
            let (positions, committed) = (&running.positions, &running.committed);
            running.catching_up.retain_mut(|(partition, end)| {
                let seen = fetched.get(partition);
                let Some(end) = end.or_else(|| seen.map(|f| f.end)) else { return true };
                let processed = positions.get(&(Arc::from(partition.0.as_str()), partition.1));
                let reached = [processed, committed.get(partition), seen.map(|f| &f.next)];
                reached.into_iter().flatten().all(|offset| *offset < end)
            });
            if running.catching_up.is_empty() {
                tracing::info!(task = %id, "tables read up to their end at opening: streams resumed");
                for topic in running.task.source_topics().filter(|t| !self.readers.get(*t).is_some_and(|r| r.table)) {
                    resumed.add_partition(topic, id.partition as i32);
                }
            }
        }
        if resumed.count() > 0 {
            consumer.resume(&resumed)?;
        }
        Ok(())
    }

    /// What `error` (retriable, met by a task) comes from: a send or commit
    /// may only say "purged" or "erroneous state" while its producer was
    /// fenced, which the task's writer knows.
    fn cause(&self, error: RuntimeError) -> RuntimeError {
        if !error.is_retriable() {
            return error;
        }
        let app = &self.config.streams.application_id;
        match self.tasks.iter().find_map(|(id, r)| Some((*id, r.writer.fatal_error()?))) {
            Some((id, fatal)) => fenced(RuntimeError::Kafka(fatal), app, id),
            None => error,
        }
    }

    /// Handles an error met while processing or committing: a retriable one
    /// rewinds every task to its last commit (its open transaction is
    /// abandoned, and it is reopened, as after a crash, once the cluster
    /// answers); any other is returned.
    pub(super) fn rewind<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        error: RuntimeError,
    ) -> Result<(), RuntimeError> {
        let error = self.cause(error);
        if !error.is_retriable() {
            return Err(error);
        }
        tracing::warn!(%error, tasks = self.tasks.len(), "tasks rewound to their last commit");
        self.close_dirty();
        if incremental(consumer) {
            consumer.incremental_unassign(&consumer.assignment()?)?;
        } else {
            consumer.assign(&TopicPartitionList::new())?;
        }
        let now = Instant::now();
        let mut waiting = Waiting::new(format!("Kafka at {} to reopen tasks", self.config.bootstrap_servers));
        let delay = waiting.failed(&error);
        self.pending = Some(Pending { since: now, next_try: now + delay, waiting, reported: false });
        self.metrics.update(|m| m.rewinds += 1);
        self.publish_metrics(None);
        Ok(())
    }

    /// Commits and closes every task, at the end of a run. A commit that
    /// fails for a retriable reason leaves them closed without checkpoints.
    pub(super) fn shut_down<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>) -> Result<(), RuntimeError> {
        match self.commit(consumer) {
            Ok(()) => self.close_all(),
            Err(error) if error.is_retriable() => {
                tracing::warn!(%error, "last commit failed; the tasks' next owners resume from their last commit");
                self.close_dirty();
            }
            Err(error) => {
                self.close_dirty();
                return Err(error);
            }
        }
        Ok(())
    }

    /// Opens the tasks of the `assigned` partitions: fences their earlier
    /// owners, restores their stores to their last complete commit, and sets
    /// `assigned`'s offsets to that commit's positions.
    fn open_tasks<C: ConsumerContext>(
        &mut self,
        consumer: &impl Consumer<C>,
        assigned: &mut TopicPartitionList,
    ) -> Result<(), RuntimeError> {
        let ids: BTreeSet<TaskId> = assigned
            .elements()
            .iter()
            .filter_map(|e| {
                let subtopology = self.readers.get(e.topic())?.subtopology;
                Some(TaskId { subtopology, partition: e.partition() as u32 })
            })
            .filter(|id| !self.tasks.contains_key(id))
            .collect();
        // Fencing and restoring wait mostly on the cluster: tasks open side by side.
        let ids: Vec<TaskId> = ids.into_iter().collect();
        let opener = Opener {
            topology: &self.topology,
            config: &self.config,
            partitions: &self.partitions,
            shared: &self.shared,
            metrics: &self.metrics,
        };
        // Every task is fenced before any is restored: a transaction a dead
        // owner left open on a partition several tasks write to (the error
        // topic) could otherwise hold back what a restoration can read.
        let fenced = on_threads(ids, |id| Ok((id, opener.fence(id)?)))?;
        let opened = on_threads(fenced, |(id, writer)| Ok((id, opener.open(id, writer)?)))?;
        let count = opened.len() as u64;
        self.metrics.update(|m| m.tasks_opened += count);
        for (id, running) in opened {
            self.restored += running.restored;
            let partition = id.partition as i32;
            // A task resumes where the commit it restored left its inputs:
            // state and positions come from the same commit. A task without
            // stores that never committed to its positions topic starts where
            // the group's offsets say (earlier versions kept its positions
            // there, and at-least-once still commits them), else from the
            // beginning.
            let committed = if running.task.changelogs().is_empty() && running.committed.is_empty() {
                let mut query = TopicPartitionList::new();
                for topic in running.task.source_topics() {
                    query.add_partition(topic, partition);
                }
                Some(consumer.committed_offsets(query, TIMEOUT)?)
            } else {
                None
            };
            let mut positions = Vec::new();
            for topic in running.task.source_topics() {
                let position = match &committed {
                    Some(committed) => committed_offset(committed, topic, partition),
                    None => running.committed.get(&(topic.to_string(), partition)).copied(),
                };
                let offset = position.map_or(Offset::Beginning, Offset::Offset);
                if assigned.find_partition(topic, partition).is_some() {
                    assigned.set_partition_offset(topic, partition, offset)?;
                    let at = position.map_or_else(|| "beginning".to_string(), |p| p.to_string());
                    positions.push(format!("{topic}/{partition}@{at}"));
                }
            }
            // Its tables are read up to where they end now before its streams,
            // so that a stream-table join does not run ahead of its table:
            // when a task opens after downtime, or its table's leader is down.
            let mut running = running;
            let (tables, streams): (Vec<String>, Vec<String>) = running
                .task
                .source_topics()
                .map(str::to_string)
                .partition(|t| self.readers.get(t.as_str()).is_some_and(|r| r.table));
            for topic in tables.into_iter().filter(|_| !streams.is_empty()) {
                // A leader just elected may not answer yet (its high watermark
                // not caught up): the end then comes from the first fetches.
                let end = match consumer.fetch_watermarks(&topic, partition, WATERMARKS_TIMEOUT) {
                    Ok((low, end)) => {
                        let from = running.committed.get(&(topic.clone(), partition)).copied().unwrap_or(low);
                        if from >= end {
                            continue;
                        }
                        Some(end)
                    }
                    Err(_) => None,
                };
                running.catching_up.push(((topic, partition), end));
            }
            tracing::info!(task = %id, session = %running.session, positions = %positions.join(" "),
                catching_up = running.catching_up.len(), "task opened");
            if let Ok(mut views) = self.views.write() {
                views.insert(id, running.task.views());
            }
            self.tasks.insert(id, running);
        }
        self.publish_metrics(None);
        Ok(())
    }

    /// Runs one input record through its task and sends what it output, with
    /// the record's provenance.
    pub(super) fn process(&mut self, message: &BorrowedMessage<'_>) -> Result<(), RuntimeError> {
        let Some((topic, reader)) = self.readers.get_key_value(message.topic()) else {
            return Ok(());
        };
        let meta =
            RecordMetadata { topic: topic.clone(), partition: message.partition() as u32, offset: message.offset() };
        let id = TaskId { subtopology: reader.subtopology, partition: meta.partition };
        // A record fetched before its task was rewound: it is read again
        // once the task is open.
        let Some(running) = self.tasks.get_mut(&id) else {
            return Ok(());
        };
        running.positions.insert((meta.topic.clone(), meta.partition as i32), meta.offset + 1);
        let raw = raw_record(message);
        if reader.repartition && running.seen.is_duplicate(&meta.topic, &raw.headers) {
            self.duplicates += 1;
            return Ok(());
        }
        running.task.process(meta.clone(), raw)?;
        running.task.swap_output(&mut self.buffer);
        let (mut partition, mut offset) = ([0; 20], [0; 20]);
        let source = [
            (provenance::TOPIC, meta.topic.as_bytes()),
            (provenance::PARTITION, decimal(meta.partition.into(), &mut partition)),
            (provenance::OFFSET, decimal(meta.offset, &mut offset)),
        ];
        for (rank, record) in self.buffer.drain(..).enumerate() {
            // The rank is left out when 0, the common case.
            if rank == 0 {
                running.writer.send(&record, &source)?;
            } else {
                let mut buffer = [0; 20];
                let mut headers = source.to_vec();
                headers.push((provenance::RANK, decimal(rank as i64, &mut buffer)));
                running.writer.send(&record, &headers)?;
            }
        }
        Ok(())
    }

    /// Serves the delivery reports that arrived, without waiting for more
    /// (commits wait for all of them).
    pub(super) fn serve_deliveries(&self) {
        match &self.shared {
            Some(producer) => producer.poll(Duration::ZERO),
            None => self.tasks.values().for_each(|r| r.writer.poll()),
        }
    }

    /// Runs the wall-clock punctuations due at `now` in every task.
    pub(super) fn advance_wall_clock(&mut self, now: i64) -> Result<(), RuntimeError> {
        for running in self.tasks.values_mut() {
            running.task.advance_wall_clock(now)?;
        }
        Ok(())
    }

    /// Commits every task that did something since its last commit (see the
    /// [module docs](self)), on up to [`PARALLELISM`] threads so that the
    /// tasks' round trips to the cluster overlap; with at-least-once, then
    /// commits their input offsets through the consumer.
    pub(super) fn commit<C: ConsumerContext>(&mut self, consumer: &impl Consumer<C>) -> Result<(), RuntimeError> {
        let started = Instant::now();
        let tasks: Vec<(TaskId, &mut Running)> = self.tasks.iter_mut().map(|(id, r)| (*id, r)).collect();
        let app = &self.config.streams.application_id;
        let committed =
            on_threads(tasks, |(id, running)| Self::commit_task(id, running).map_err(|error| fenced(error, app, id)))?;
        let committed: Vec<TopicPartitionList> = committed.into_iter().flatten().collect();
        if self.shared.is_some() {
            let mut offsets = TopicPartitionList::new();
            for element in committed.iter().flat_map(TopicPartitionList::elements) {
                offsets.add_partition_offset(element.topic(), element.partition(), element.offset())?;
            }
            if offsets.count() > 0 {
                consumer.commit(&offsets, CommitMode::Sync)?;
            }
        }
        self.last_commit = Instant::now();
        self.publish_metrics((!committed.is_empty()).then(|| started.elapsed()));
        Ok(())
    }

    /// Commits one task; returns its input offsets, or `None` if the task
    /// had nothing to commit.
    fn commit_task(id: TaskId, running: &mut Running) -> Result<Option<TopicPartitionList>, RuntimeError> {
        let number = running.commits + 1;
        let tag = restore::commit_headers(&running.session, number);
        running.task.prepare_commit(&tag);
        let mut outputs = Vec::new();
        running.task.swap_output(&mut outputs);
        let changelogs = &running.logs;
        let idle = outputs.is_empty() && running.positions.is_empty() && !running.seen.has_changes();
        if idle && !running.writer.is_open() {
            return Ok(None);
        }
        for record in outputs {
            running.writer.send(&record, &[])?;
        }
        let entry = |topic: &Arc<str>, key: Vec<u8>, value: Vec<u8>| OutputRecord {
            topic: topic.clone(),
            partition: Some(id.partition),
            record: RawRecord { key: Some(key), value: Some(value), timestamp: now_millis(), headers: tag.clone() },
        };
        let clock = running.task.stream_clock();
        let positions = running.positions.iter().map(|((t, p), o)| restore::position_entry(t, *p, *o));
        let clock_entry = (running.clock.as_ref() != Some(&clock)).then(|| restore::clock_entry(&clock));
        if let Some(first) = changelogs.first() {
            for (key, value) in running.seen.take_changes().into_iter().chain(positions).chain(clock_entry) {
                running.writer.send(&entry(first, key, value), &[])?;
            }
        }
        // The commit records go last, once everything else is stored: a
        // commit record in the log means the whole commit is, outputs
        // included, even if the transaction is then abandoned.
        running.writer.flush()?;
        crash::at("outputs_flushed");
        for (i, changelog) in changelogs.iter().enumerate() {
            let (key, value) = restore::commit_record(&running.session, number, changelogs);
            running.writer.send(&entry(changelog, key, value), &[])?;
            if i == 0 && changelogs.len() > 1 && crash::reached("between_commit_records") {
                running.writer.flush()?;
                crash::now("between_commit_records");
            }
        }
        let mut offsets = TopicPartitionList::new();
        for ((topic, partition), offset) in &running.positions {
            offsets.add_partition_offset(topic, *partition, Offset::Offset(*offset))?;
        }
        running.writer.commit()?;
        tracing::debug!(task = %id, number, ?offsets, "committed");
        running.commits = number;
        running.clock = Some(clock);
        for ((topic, partition), offset) in running.positions.drain() {
            running.committed.insert((topic.to_string(), partition), offset);
        }
        running.task.commit()?;
        crash::at("stores_written");
        Ok(Some(offsets))
    }

    /// Closes the tasks that read one of `partitions` (being revoked), with a
    /// local checkpoint if they were `committed` just before.
    pub(super) fn close_partitions(&mut self, partitions: &TopicPartitionList, committed: bool) {
        let revoked: Vec<(String, u32)> =
            partitions.elements().iter().map(|e| (e.topic().to_string(), e.partition() as u32)).collect();
        let closing: Vec<TaskId> = self
            .tasks
            .iter()
            .filter(|(id, r)| r.task.source_topics().any(|t| revoked.contains(&(t.to_string(), id.partition))))
            .map(|(id, _)| *id)
            .collect();
        for id in closing {
            if let Some(running) = self.tasks.remove(&id) {
                tracing::info!(task = %id, "partition revoked: task closed");
                self.close(id, running, committed);
            }
        }
        self.publish_metrics(None);
    }

    /// Closes every task after a successful commit, with local checkpoints.
    fn close_all(&mut self) {
        for (id, running) in std::mem::take(&mut self.tasks) {
            self.close(id, running, true);
        }
        self.publish_metrics(None);
    }

    /// Closes every task without a checkpoint, abandoning its open transaction.
    fn close_dirty(&mut self) {
        for (id, running) in std::mem::take(&mut self.tasks) {
            self.close(id, running, false);
        }
    }

    /// Closes a task; if it was `committed` just before, its stores hold
    /// the state of its last commit, which a local checkpoint records.
    fn close(&mut self, id: TaskId, mut running: Running, committed: bool) {
        // Waits for the queries reading its stores (see `StoreReader::each`).
        if let Ok(mut views) = self.views.write() {
            views.remove(&id);
        }
        self.closed.add(running.task.metrics());
        self.metrics.update(|m| m.tasks_closed += 1);
        running.task.close();
        let partition = id.partition as i32;
        let changelogs: Option<BTreeMap<String, i64>> = running
            .logs
            .iter()
            .map(|topic| Some((topic.to_string(), running.writer.boundary(topic, partition)?)))
            .collect();
        let Some(changelogs) = changelogs.filter(|c| committed && !c.is_empty() && !running.writer.is_open()) else {
            return;
        };
        let positions =
            running.committed.iter().map(|((topic, p), offset)| restore::position_entry(topic, *p, *offset));
        let clock = running.clock.as_ref().map(restore::clock_entry);
        let entries = positions.chain(running.seen.entries()).chain(clock).collect();
        let checkpoint = Checkpoint { changelogs, entries };
        // The stores are synced and closed before the checkpoint says what they hold.
        if let Err(error) = running.task.sync() {
            tracing::warn!(task = %id, %error, "cannot sync the stores: no local checkpoint");
            return;
        }
        drop(running.task);
        if let Err(error) = checkpoint.write(&self.config.streams, id) {
            tracing::warn!(task = %id, %error, "cannot write the local checkpoint");
        }
    }

    /// Refreshes the shared metrics; `commit` is the latency of a commit just made.
    fn publish_metrics(&self, commit: Option<Duration>) {
        let mut totals = self.closed;
        let mut tasks: BTreeMap<TaskId, TaskStatus> = self
            .tasks
            .iter()
            .map(|(id, r)| {
                totals.add(r.task.metrics());
                (*id, TaskStatus { metrics: *r.task.metrics(), restoring: false, restored_records: r.restored })
            })
            .collect();
        // Tasks waiting to be opened count as restoring.
        if self.pending.is_some() {
            for (topic, partition) in &self.assignment {
                if let Some(reader) = self.readers.get(topic.as_str()) {
                    let id = TaskId { subtopology: reader.subtopology, partition: *partition as u32 };
                    tasks.entry(id).or_insert(TaskStatus { restoring: true, ..TaskStatus::default() });
                }
            }
        }
        let waiting = self.pending.is_some();
        self.metrics.update(|m| {
            m.totals = totals;
            m.tasks = tasks;
            m.waiting = waiting;
            if !waiting {
                m.stuck = false;
            }
            m.duplicates_skipped = self.duplicates;
            m.restored_records = self.restored;
            if let Some(latency) = commit {
                m.commits += 1;
                m.commit_latency_last = latency;
                m.commit_latency_max = m.commit_latency_max.max(latency);
                m.commit_latency_total += latency;
            }
        });
    }

    /// Counters summed over all tasks run so far, without copying the rest.
    pub(super) fn totals(&self) -> TaskMetrics {
        let mut total = self.closed;
        for running in self.tasks.values() {
            total.add(running.task.metrics());
        }
        total
    }
}
