//! The part of the runtime that owns the tasks and commits: shared with the
//! consumer's rebalance callback, which opens (fences, restores) the tasks of
//! assigned partitions and commits and closes those of revoked ones.
//!
//! A commit of a task with stores writes, in one transaction: the outputs of
//! the records processed since the last commit, the stores' changes, the new
//! input positions and de-duplication entries (all three as changelog
//! records tagged with the commit), then, once all of that is stored, one
//! commit record per changelog; and the input offsets for the consumer group.
//! Restoration (see `restore`) relies on the changelogs alone: the group's
//! offsets only position tasks without stores.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, ConsumerContext};
use rdkafka::{Offset, TopicPartitionList};

use super::dedupe::Seen;
use super::metrics::{MetricsHandle, TaskStatus};
use super::restore;
use super::writer::{self, Guarantee, Writer};
use super::{now_millis, provenance, RuntimeConfig, RuntimeError};
use crate::error::StreamError;
use crate::metrics::TaskMetrics;
use crate::record::{OutputRecord, RawRecord, RecordMetadata};
use crate::task::Task;
use crate::topology::{TaskId, Topology};

const TIMEOUT: Duration = Duration::from_secs(30);

/// A task and what the runtime keeps beside it.
struct Running {
    task: Task,
    writer: Writer,
    /// Identifies this opening of the task in its changelog records.
    session: String,
    /// Number of its last commit in this session.
    commits: u64,
    /// Next offset to commit, per input partition.
    positions: HashMap<(Arc<str>, i32), i64>,
    seen: Seen,
    restored: u64,
}

pub(super) struct Engine {
    topology: Topology,
    pub(super) config: RuntimeConfig,
    /// The producer tasks share under [`Guarantee::AtLeastOnce`].
    shared: Option<Arc<writer::TaskProducer>>,
    partitions: Arc<BTreeMap<String, u32>>,
    /// Source topic → the sub-topology reading it.
    readers: HashMap<String, u32>,
    /// Repartition topics, whose records are de-duplicated by provenance.
    repartition: HashSet<String>,
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
}

/// The committed offset of `topic`/`partition` in `committed`, if any.
fn committed_offset(committed: &TopicPartitionList, topic: &str, partition: i32) -> Option<i64> {
    match committed.find_partition(topic, partition)?.offset() {
        Offset::Offset(n) if n >= 0 => Some(n),
        _ => None,
    }
}

impl Engine {
    pub(super) fn new(
        topology: Topology,
        config: RuntimeConfig,
        partitions: BTreeMap<String, u32>,
    ) -> Result<Engine, RuntimeError> {
        let app = config.streams.application_id.clone();
        let mut readers = HashMap::new();
        for (i, sub) in topology.subtopologies.iter().enumerate() {
            for topic in &sub.sources {
                readers.insert(topic.resolve(&app), i as u32);
            }
        }
        let shared = match config.guarantee {
            Guarantee::ExactlyOnce => None,
            Guarantee::AtLeastOnce => Some(writer::shared_producer(&config)?),
        };
        Ok(Engine {
            repartition: topology.repartition_topics(&app).into_iter().collect(),
            topology,
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
            metrics: MetricsHandle::default(),
        })
    }

    /// The topics the consumer subscribes to.
    pub(super) fn source_topics(&self) -> Vec<String> {
        self.readers.keys().cloned().collect()
    }

    /// Opens the tasks of the `assigned` partitions: fences their earlier
    /// owners, restores their stores to their last complete commit, and sets
    /// `assigned`'s offsets to that commit's positions (the group's committed
    /// offsets for tasks without stores).
    pub(super) fn open_tasks<C: ConsumerContext>(
        &mut self,
        consumer: &impl Consumer<C>,
        assigned: &mut TopicPartitionList,
    ) -> Result<(), RuntimeError> {
        let ids: BTreeSet<TaskId> = assigned
            .elements()
            .iter()
            .filter_map(|e| {
                let subtopology = *self.readers.get(e.topic())?;
                Some(TaskId { subtopology, partition: e.partition() as u32 })
            })
            .filter(|id| !self.tasks.contains_key(id))
            .collect();
        for id in ids {
            self.metrics.update(|m| {
                m.tasks.insert(id, TaskStatus { restoring: true, ..TaskStatus::default() });
            });
            // Local state may hold writes of a commit the cluster lost or never
            // saw; it is rebuilt from the changelogs (a local checkpoint that
            // would spare the replay is not built).
            let streams = &self.config.streams;
            streams.state.wipe_task(&streams.application_id, &id.to_string()).map_err(StreamError::from)?;
            let mut task = Task::new(&self.topology, id, streams, self.partitions.clone(), now_millis())?;
            let mut writer = match &self.shared {
                Some(producer) => Writer::Shared(producer.clone()),
                None => Writer::transactional(&self.config, id)?,
            };
            // From here on no earlier owner can write any more.
            let session = restore::session_id(id);
            let restored = restore::restore(&self.config, &mut writer, &mut task, id, &session)?;
            self.restored += restored.records;
            let partition = id.partition as i32;
            // A task with stores resumes where the commit it restored left its
            // inputs (from the beginning if none): state and positions come from
            // the same commit. The group's offsets may lag behind or lose
            // commits on the test broker; they only serve stateless tasks, which
            // at worst process some records again.
            let committed = if task.changelogs().is_empty() {
                let mut query = TopicPartitionList::new();
                for topic in task.source_topics() {
                    query.add_partition(topic, partition);
                }
                Some(consumer.committed_offsets(query, TIMEOUT)?)
            } else {
                None
            };
            for topic in task.source_topics() {
                let position = match &committed {
                    Some(committed) => committed_offset(committed, topic, partition),
                    None => restored.positions.get(&(topic.to_string(), partition)).copied(),
                };
                let offset = position.map_or(Offset::Beginning, Offset::Offset);
                if assigned.find_partition(topic, partition).is_some() {
                    assigned.set_partition_offset(topic, partition, offset)?;
                }
            }
            tracing::info!(task = %id, %session, positions = ?assigned, "task opened");
            self.tasks.insert(
                id,
                Running {
                    task,
                    writer,
                    session,
                    commits: 0,
                    positions: HashMap::new(),
                    seen: restored.seen,
                    restored: restored.records,
                },
            );
        }
        self.publish_metrics(None);
        Ok(())
    }

    /// Runs one input record through its task and sends what it output, with
    /// the record's provenance.
    pub(super) fn process(&mut self, meta: RecordMetadata, raw: RawRecord) -> Result<(), RuntimeError> {
        let Some(&subtopology) = self.readers.get(&*meta.topic) else {
            return Ok(());
        };
        let id = TaskId { subtopology, partition: meta.partition };
        let running = self.tasks.get_mut(&id).ok_or_else(|| {
            StreamError::processing(format!("no task for {} partition {}", meta.topic, meta.partition))
        })?;
        running.positions.insert((meta.topic.clone(), meta.partition as i32), meta.offset + 1);
        if self.repartition.contains(&*meta.topic) && running.seen.is_duplicate(&raw.headers) {
            self.duplicates += 1;
            return Ok(());
        }
        running.task.process(meta.clone(), raw)?;
        running.task.swap_output(&mut self.buffer);
        let (partition, offset) = (meta.partition.to_string(), meta.offset.to_string());
        let source = [
            (provenance::TOPIC, meta.topic.as_bytes()),
            (provenance::PARTITION, partition.as_bytes()),
            (provenance::OFFSET, offset.as_bytes()),
        ];
        for (rank, record) in self.buffer.drain(..).enumerate() {
            // The rank is left out when 0, the common case.
            if rank == 0 {
                running.writer.send(&record, &source)?;
            } else {
                let rank = rank.to_string();
                let mut headers = source.to_vec();
                headers.push((provenance::RANK, rank.as_bytes()));
                running.writer.send(&record, &headers)?;
            }
        }
        running.writer.poll();
        Ok(())
    }

    /// Runs the wall-clock punctuations due at `now` in every task.
    pub(super) fn advance_wall_clock(&mut self, now: i64) -> Result<(), RuntimeError> {
        for running in self.tasks.values_mut() {
            running.task.advance_wall_clock(now)?;
        }
        Ok(())
    }

    /// Commits every task that did something since its last commit (see the
    /// [module docs](self)), then makes the store writes durable locally.
    pub(super) fn commit<C: ConsumerContext>(&mut self, consumer: &impl Consumer<C>) -> Result<(), RuntimeError> {
        let started = Instant::now();
        let mut committed = false;
        for (id, running) in &mut self.tasks {
            committed |= Self::commit_task(*id, running, &mut self.buffer, consumer)?;
        }
        self.last_commit = Instant::now();
        self.publish_metrics(committed.then(|| started.elapsed()));
        Ok(())
    }

    fn commit_task<C: ConsumerContext>(
        id: TaskId,
        running: &mut Running,
        buffer: &mut Vec<OutputRecord>,
        consumer: &impl Consumer<C>,
    ) -> Result<bool, RuntimeError> {
        let number = running.commits + 1;
        let tag = restore::commit_headers(&running.session, number);
        running.task.prepare_commit(&tag);
        running.task.swap_output(buffer);
        let idle = buffer.is_empty() && running.positions.is_empty() && !running.seen.has_changes();
        if idle && !running.writer.is_open() {
            return Ok(false);
        }
        for record in buffer.drain(..) {
            running.writer.send(&record, &[])?;
        }
        let changelogs = running.task.changelogs();
        let entry = |topic: &Arc<str>, key: Vec<u8>, value: Vec<u8>| OutputRecord {
            topic: topic.clone(),
            partition: Some(id.partition),
            record: RawRecord { key: Some(key), value: Some(value), timestamp: now_millis(), headers: tag.clone() },
        };
        if let Some(first) = changelogs.first() {
            let positions = running.positions.iter().map(|((t, p), o)| restore::position_entry(t, *p, *o));
            for (key, value) in running.seen.take_changes().into_iter().chain(positions) {
                running.writer.send(&entry(first, key, value), &[])?;
            }
            // The commit records go last, once everything else is stored: a
            // commit record in the log means the whole commit is, outputs
            // included, even if the transaction is then abandoned.
            running.writer.flush()?;
            for changelog in changelogs {
                let (key, value) = restore::commit_record(&running.session, number);
                running.writer.send(&entry(changelog, key, value), &[])?;
            }
        }
        let mut offsets = TopicPartitionList::new();
        for ((topic, partition), offset) in &running.positions {
            offsets.add_partition_offset(topic, *partition, Offset::Offset(*offset))?;
        }
        running.writer.commit(&offsets, consumer)?;
        tracing::debug!(task = %id, number, ?offsets, "committed");
        running.commits = number;
        running.positions.clear();
        running.task.commit()?;
        Ok(true)
    }

    /// Closes the tasks that read one of `partitions` (being revoked).
    pub(super) fn close_partitions(&mut self, partitions: &TopicPartitionList) {
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
                self.close(running);
            }
        }
        self.publish_metrics(None);
    }

    /// Closes every task.
    pub(super) fn close_all(&mut self) {
        for (_, running) in std::mem::take(&mut self.tasks) {
            self.close(running);
        }
        self.publish_metrics(None);
    }

    fn close(&mut self, mut running: Running) {
        self.closed.add(running.task.metrics());
        running.task.close();
    }

    /// Refreshes the shared metrics; `commit` is the latency of a commit just made.
    fn publish_metrics(&self, commit: Option<Duration>) {
        let mut totals = self.closed;
        let tasks: BTreeMap<TaskId, TaskStatus> = self
            .tasks
            .iter()
            .map(|(id, r)| {
                totals.add(r.task.metrics());
                (*id, TaskStatus { metrics: *r.task.metrics(), restoring: false, restored_records: r.restored })
            })
            .collect();
        self.metrics.update(|m| {
            m.totals = totals;
            // Tasks being opened (restoring) stay listed.
            m.tasks.retain(|id, t| t.restoring && !tasks.contains_key(id));
            m.tasks.extend(tasks);
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

    /// Runs `f` on store `name` of every task that has one.
    pub(super) fn for_each_store(
        &mut self,
        name: &str,
        mut f: impl FnMut(&mut dyn crate::state::KeyValueStore) -> Result<(), crate::error::StoreError>,
    ) -> Result<(), crate::error::StoreError> {
        for running in self.tasks.values_mut() {
            if let Some(store) = running.task.store_mut(name) {
                f(store)?;
            }
        }
        Ok(())
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
