//! Task execution: one task per (sub-topology, input partition) runs the
//! processors of that sub-topology on the records of that partition, with its
//! own state stores. The test driver and the Kafka runtime both drive tasks.

pub(crate) mod node;

use std::any::Any;
use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use crate::config::{dead_letter, ErrorPolicy, StreamsConfig};
use crate::error::{Result, StoreError, StreamError};
use crate::metrics::TaskMetrics;
use crate::processor::PunctuationType;
use crate::record::{OutputRecord, RawRecord, RecordMetadata};
use crate::state::{KeyValueStore, StoreView};
use crate::topology::{TaskId, Topology};
use node::Node;

/// Most changelog records restored into a store before they are written to
/// its committed base: restoration runs in memory bounded by this, not by the
/// changelog's length. (A restoration cut short leaves no local checkpoint,
/// so the stores it wrote to are rebuilt from empty.)
const RESTORE_BATCH: usize = 10_000;

/// A punctuation registered by a processor.
struct Schedule {
    node: usize,
    interval: i64,
    kind: PunctuationType,
    /// When it is due next; `None` for stream time before the first record.
    next: Option<i64>,
}

/// Buffers for encoding store keys and values without allocating each time.
#[derive(Default)]
pub(crate) struct Scratch {
    pub(crate) key: Cell<Vec<u8>>,
    pub(crate) value: Cell<Vec<u8>>,
}

/// What processors reach through their context.
pub(crate) struct TaskCore {
    /// Taken out (`None`) while the node runs, put back afterwards.
    nodes: Vec<Option<Box<dyn Node>>>,
    /// For each node, the indices of the stores connected to it.
    node_stores: Vec<Vec<usize>>,
    pub(crate) stores: Vec<Box<dyn KeyValueStore>>,
    /// Encode buffers reused by typed store access.
    pub(crate) scratch: Scratch,
    pub(crate) output: Vec<OutputRecord>,
    /// The record being processed, for source nodes and error reports.
    pub(crate) raw: Option<RawRecord>,
    pub(crate) current: Option<RecordMetadata>,
    pub(crate) stream_time: i64,
    pub(crate) wall_clock: i64,
    schedules: Vec<Schedule>,
    pub(crate) metrics: TaskMetrics,
    pub(crate) partition: u32,
    pub(crate) application_id: Arc<str>,
    /// Partition counts of the topics the host knows.
    pub(crate) partitions: Arc<BTreeMap<String, u32>>,
}

impl TaskCore {
    /// Runs node `id` on `record` (an `Option<Record<K, V>>`).
    pub(crate) fn dispatch(&mut self, id: usize, record: &mut dyn Any) -> Result<()> {
        let mut node = self.nodes[id]
            .take()
            .ok_or_else(|| StreamError::processing(format!("internal error: node {id} re-entered")))?;
        let result = node.process(self, id, record);
        self.nodes[id] = Some(node);
        result
    }

    fn with_node(&mut self, id: usize, f: impl FnOnce(&mut dyn Node, &mut TaskCore) -> Result<()>) -> Result<()> {
        let Some(mut node) = self.nodes[id].take() else {
            return Ok(());
        };
        let result = f(node.as_mut(), self);
        self.nodes[id] = Some(node);
        result
    }

    pub(crate) fn store_index(&self, node: usize, name: &str) -> Result<usize, StoreError> {
        self.node_stores[node]
            .iter()
            .copied()
            .find(|&i| self.stores[i].name() == name)
            .ok_or_else(|| StoreError::NotConnected(name.to_string()))
    }

    pub(crate) fn schedule(&mut self, node: usize, interval: Duration, kind: PunctuationType) {
        let interval = (interval.as_millis() as i64).max(1);
        let next = match kind {
            PunctuationType::StreamTime if self.stream_time == i64::MIN => None,
            PunctuationType::StreamTime => Some(self.stream_time.saturating_add(interval)),
            PunctuationType::WallClock => Some(self.wall_clock.saturating_add(interval)),
        };
        self.schedules.push(Schedule { node, interval, kind, next });
    }

    /// Runs the punctuations of `kind` that are due at `now`, once each.
    fn punctuate(&mut self, kind: PunctuationType, now: i64) -> Result<()> {
        for i in 0..self.schedules.len() {
            let schedule = &mut self.schedules[i];
            if schedule.kind != kind {
                continue;
            }
            let next = *schedule.next.get_or_insert(now.saturating_add(schedule.interval));
            if now < next {
                continue;
            }
            let missed = (now - next) / schedule.interval;
            schedule.next = Some(next + (missed + 1) * schedule.interval);
            let node = schedule.node;
            self.metrics.punctuations += 1;
            self.with_node(node, |n, core| n.punctuate(core, node, kind, now))?;
        }
        Ok(())
    }
}

/// A task's stream time and when each of its stream-time punctuations is
/// due next (in the order they were scheduled; `None` before the first
/// record): what a commit keeps so that, after a restart, windows close and
/// punctuations fire as they would have without it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StreamClock {
    pub(crate) time: i64,
    pub(crate) due: Vec<Option<i64>>,
}

/// One task: a sub-topology instantiated for one input partition.
pub(crate) struct Task {
    id: TaskId,
    core: TaskCore,
    /// Source topics (resolved names) and their source nodes; a task reads few topics.
    sources: Vec<(Arc<str>, usize)>,
    /// Changelog topic of each store.
    changelogs: Vec<Arc<str>>,
    /// A view of each store's committed state.
    views: Vec<StoreView>,
    on_deserialization_error: ErrorPolicy,
    on_processing_error: ErrorPolicy,
    /// Records restored since the stores were last committed.
    restored: usize,
}

impl Task {
    /// Instantiates task `id` of `topology`, opens its stores and initialises its processors.
    pub(crate) fn new(
        topology: &Topology,
        id: TaskId,
        config: &StreamsConfig,
        partitions: Arc<BTreeMap<String, u32>>,
        wall_clock: i64,
    ) -> Result<Task> {
        let app = config.application_id.as_str();
        let sub = topology.subtopology(id.subtopology)?;
        let local: HashMap<usize, usize> = sub.nodes.iter().enumerate().map(|(l, &g)| (g, l)).collect();
        let (stores, views) = config.state.open_viewed(app, &id.to_string(), &sub.stores)?.into_iter().unzip();
        let mut nodes = Vec::with_capacity(sub.nodes.len());
        let mut node_stores = Vec::with_capacity(sub.nodes.len());
        let mut sources = Vec::new();
        for (l, &g) in sub.nodes.iter().enumerate() {
            let def = topology.node(g);
            let mut node = (def.factory)(app);
            node.set_children(def.children.iter().map(|c| local[c]).collect());
            nodes.push(Some(node));
            node_stores.push(def.stores.iter().filter_map(|s| sub.stores.iter().position(|n| n == s)).collect());
            for topic in def.source_topics() {
                sources.push((Arc::from(topic.resolve(app)), l));
            }
        }
        let changelogs = sub.stores.iter().map(|s| Arc::from(crate::topology::changelog_topic(app, s))).collect();
        let core = TaskCore {
            nodes,
            node_stores,
            stores,
            scratch: Scratch::default(),
            output: Vec::new(),
            raw: None,
            current: None,
            stream_time: i64::MIN,
            wall_clock,
            schedules: Vec::new(),
            metrics: TaskMetrics::default(),
            partition: id.partition,
            application_id: Arc::from(app),
            partitions,
        };
        let mut task = Task {
            id,
            core,
            sources,
            changelogs,
            views,
            on_deserialization_error: config.on_deserialization_error.clone(),
            on_processing_error: config.on_processing_error.clone(),
            restored: 0,
        };
        for i in 0..task.core.nodes.len() {
            task.core.with_node(i, |n, core| n.init(core, i))?;
        }
        Ok(task)
    }

    /// Processes one record read from `meta.topic`. A failing record has no
    /// effect (its store writes and outputs are undone) and is handled by the
    /// error policy; only `ErrorPolicy::Fail` returns the error.
    pub(crate) fn process(&mut self, meta: RecordMetadata, raw: RawRecord) -> Result<()> {
        let source = self.sources.iter().find(|(t, _)| **t == *meta.topic).map(|(_, node)| *node);
        let source = source
            .ok_or_else(|| StreamError::processing(format!("task {} does not read topic `{}`", self.id, meta.topic)))?;
        self.core.metrics.records_in += 1;
        self.core.stream_time = self.core.stream_time.max(raw.timestamp);
        let output_mark = self.core.output.len();
        let records_out_mark = self.core.metrics.records_out;
        for store in &mut self.core.stores {
            store.begin_record();
        }
        self.core.raw = Some(raw);
        self.core.current = Some(meta);
        let result = self.core.dispatch(source, &mut ());
        let raw = self.core.raw.take();
        let meta = self.core.current.take();
        if let Err(error) = result {
            self.core.output.truncate(output_mark);
            self.core.metrics.records_out = records_out_mark;
            for store in &mut self.core.stores {
                store.rollback_record();
            }
            if let (Some(raw), Some(meta)) = (raw, meta) {
                self.handle_failure(error, raw, meta)?;
            }
        }
        let now = self.core.stream_time;
        self.punctuate(PunctuationType::StreamTime, now)
    }

    /// Advances the wall clock to `now` and runs the wall-clock punctuations due.
    pub(crate) fn advance_wall_clock(&mut self, now: i64) -> Result<()> {
        self.core.wall_clock = self.core.wall_clock.max(now);
        let now = self.core.wall_clock;
        self.punctuate(PunctuationType::WallClock, now)
    }

    fn punctuate(&mut self, kind: PunctuationType, now: i64) -> Result<()> {
        match self.core.punctuate(kind, now) {
            Ok(()) => Ok(()),
            Err(error) if self.on_processing_error == ErrorPolicy::Fail => Err(error),
            Err(error) => {
                tracing::warn!(task = %self.id, %error, "punctuation failed; continuing");
                self.core.metrics.skipped += 1;
                Ok(())
            }
        }
    }

    fn handle_failure(&mut self, error: StreamError, raw: RawRecord, meta: RecordMetadata) -> Result<()> {
        let (stage, policy) = match error {
            StreamError::Deserialization(_) => ("deserialization", &self.on_deserialization_error),
            _ => ("processing", &self.on_processing_error),
        };
        match policy {
            ErrorPolicy::Fail => Err(StreamError::Failed {
                stage,
                topic: meta.topic.to_string(),
                partition: meta.partition,
                offset: meta.offset,
                source: Box::new(error),
            }),
            ErrorPolicy::Skip => {
                tracing::warn!(task = %self.id, topic = %meta.topic, partition = meta.partition,
                    offset = meta.offset, stage, %error, "skipping record");
                self.core.metrics.skipped += 1;
                Ok(())
            }
            ErrorPolicy::DeadLetter(topic) => {
                tracing::warn!(task = %self.id, topic = %meta.topic, partition = meta.partition,
                    offset = meta.offset, stage, %error, dead_letter_topic = %topic, "dead-lettering record");
                let mut headers = raw.headers;
                headers
                    .add(dead_letter::TOPIC, meta.topic.as_bytes())
                    .add(dead_letter::PARTITION, meta.partition.to_string())
                    .add(dead_letter::OFFSET, meta.offset.to_string())
                    .add(dead_letter::STAGE, stage)
                    .add(dead_letter::MESSAGE, error.to_string());
                let record = RawRecord { key: raw.key, value: raw.value, timestamp: raw.timestamp, headers };
                self.core.output.push(OutputRecord { topic: Arc::from(topic.as_str()), partition: None, record });
                self.core.metrics.dead_lettered += 1;
                Ok(())
            }
        }
    }

    /// Swaps the records produced since the last call into `buffer` (which
    /// should be empty; the task keeps it to fill next, so no allocation).
    pub(crate) fn swap_output(&mut self, buffer: &mut Vec<OutputRecord>) {
        std::mem::swap(&mut self.core.output, buffer);
    }

    /// Appends the stores' staged changes to the output, as changelog records
    /// for this task's partition, with `headers`. Call before producing a
    /// commit's output.
    pub(crate) fn prepare_commit(&mut self, headers: &crate::record::Headers) {
        for (store, topic) in self.core.stores.iter().zip(&self.changelogs) {
            for (key, value) in store.pending_changes() {
                let record = RawRecord {
                    key: Some(key),
                    value,
                    timestamp: self.core.stream_time.max(0),
                    headers: headers.clone(),
                };
                self.core.output.push(OutputRecord {
                    topic: topic.clone(),
                    partition: Some(self.id.partition),
                    record,
                });
            }
        }
    }

    /// Makes the stores' staged writes durable (after the output is committed).
    pub(crate) fn commit(&mut self) -> Result<()> {
        for store in &mut self.core.stores {
            store.commit()?;
        }
        Ok(())
    }

    /// Makes what the stores committed survive a power loss.
    pub(crate) fn sync(&mut self) -> Result<()> {
        for store in &mut self.core.stores {
            store.sync()?;
        }
        Ok(())
    }

    /// Discards staged writes and pending output.
    pub(crate) fn abort(&mut self) {
        self.core.output.clear();
        for store in &mut self.core.stores {
            store.abort();
        }
    }

    /// Closes the processors.
    pub(crate) fn close(&mut self) {
        for node in self.core.nodes.iter_mut().flatten() {
            node.close();
        }
    }

    pub(crate) fn metrics(&self) -> &TaskMetrics {
        &self.core.metrics
    }

    /// The task's stream clock (see [`StreamClock`]).
    pub(crate) fn stream_clock(&self) -> StreamClock {
        let stream_time = self.core.schedules.iter().filter(|s| s.kind == PunctuationType::StreamTime);
        StreamClock { time: self.core.stream_time, due: stream_time.map(|s| s.next).collect() }
    }

    /// Sets the stream clock a commit kept (before processing starts). The
    /// punctuations keep their schedule unless they are the same number as
    /// when it was kept.
    pub(crate) fn set_stream_clock(&mut self, clock: &StreamClock) {
        self.core.stream_time = clock.time;
        let stream_time = |s: &&mut Schedule| s.kind == PunctuationType::StreamTime;
        let mut schedules: Vec<&mut Schedule> = self.core.schedules.iter_mut().filter(stream_time).collect();
        if schedules.len() == clock.due.len() {
            for (schedule, due) in schedules.iter_mut().zip(&clock.due) {
                schedule.next = *due;
            }
        }
    }

    /// The changelog topic of each store of this task, by store index (the
    /// partition is the task's).
    pub(crate) fn changelogs(&self) -> &[Arc<str>] {
        &self.changelogs
    }

    /// The source topics of this task.
    pub(crate) fn source_topics(&self) -> impl Iterator<Item = &str> {
        self.sources.iter().map(|(t, _)| &**t)
    }

    /// Applies one changelog record to store `store` (before processing
    /// starts); every [`RESTORE_BATCH`] records, commits the stores.
    pub(crate) fn restore(&mut self, store: usize, key: &[u8], value: Option<&[u8]>) -> Result<()> {
        let store = &mut self.core.stores[store];
        // No record is being processed: nothing to undo.
        store.begin_record();
        match value {
            Some(value) => store.put(key, value)?,
            None => store.delete(key)?,
        }
        self.restored += 1;
        if self.restored >= RESTORE_BATCH {
            self.restored = 0;
            self.commit()?;
        }
        Ok(())
    }

    /// The name and a view of the committed state of each store.
    pub(crate) fn views(&self) -> Vec<(String, StoreView)> {
        let names = self.core.stores.iter().map(|s| s.name().to_string());
        names.zip(self.views.iter().cloned()).collect()
    }

    /// The store `name` of this task, if it has one.
    pub(crate) fn store_mut(&mut self, name: &str) -> Option<&mut dyn KeyValueStore> {
        self.core.stores.iter_mut().find(|s| s.name() == name).map(|s| &mut **s as &mut dyn KeyValueStore)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use super::{Task, RESTORE_BATCH};
    use crate::serdes::{Utf8, I64};
    use crate::topology::TaskId;
    use crate::{Consumed, Grouped, StreamsBuilder, StreamsConfig};

    #[test]
    fn restoration_holds_a_bounded_number_of_records_in_memory() {
        let builder = StreamsBuilder::new();
        builder.stream("in", Consumed::with(Utf8, I64)).group_by_key(Grouped::with(Utf8, I64)).count("counts");
        let topology = builder.build().expect("topology");
        let config = StreamsConfig::new("app");
        let id = TaskId { subtopology: 0, partition: 0 };
        let mut task = Task::new(&topology, id, &config, Arc::new(BTreeMap::new()), 0).expect("task");
        let records = 5 * RESTORE_BATCH + 17;
        for i in 0..records {
            task.restore(0, format!("key-{i}").as_bytes(), Some(&[1])).expect("restore");
        }
        let store = task.store_mut("counts").expect("store");
        assert!(store.pending_changes().len() <= RESTORE_BATCH, "staged: {}", store.pending_changes().len());
        task.commit().expect("commit");
        let store = task.store_mut("counts").expect("store");
        let restored = store.range(std::ops::Bound::Unbounded, std::ops::Bound::Unbounded).expect("range").count();
        assert_eq!(restored, records, "every record reached the store");
    }
}
