//! A deterministic, in-process host for topologies: no broker, no threads.
//!
//! Like Kafka Streams' `TopologyTestDriver`: pipe records into input topics,
//! read output topics in order, read any store, advance the wall clock. Keys
//! land on the partition Kafka's default (murmur2) partitioner picks for the
//! configured partition count, so a topology runs with one task per partition
//! exactly as it does on a cluster. Records written to a topic the topology
//! reads (repartition topics included) are processed before `pipe` returns;
//! each `pipe` ends with a commit of every task (stores' staged writes become
//! durable and their changes are written to the changelog topics).

mod topics;

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use topics::Binding;
pub use topics::{TestInputTopic, TestOutputTopic, TestRecord, TestStore};

use crate::config::StreamsConfig;
use crate::error::Result;
use crate::metrics::TaskMetrics;
use crate::partitioner::partition_for_key;
use crate::record::{Headers, OutputRecord, RawRecord, RecordMetadata};
use crate::serdes::Serde;
use crate::task::Task;
use crate::topology::{PartitionPlan, TaskId, Topology};

/// Configures a [`TestDriver`].
pub struct TestDriverBuilder {
    topology: Topology,
    config: StreamsConfig,
    default_partitions: u32,
    partitions: BTreeMap<String, u32>,
    wall_clock: i64,
}

impl TestDriverBuilder {
    /// Application id, error policies and state backend (default: `test-app`,
    /// fail on errors, stores in memory).
    pub fn config(mut self, config: StreamsConfig) -> Self {
        self.config = config;
        self
    }

    /// The partition count of every topic not given one with
    /// [`TestDriverBuilder::topic_partitions`] (default 1).
    pub fn partitions(mut self, count: u32) -> Self {
        self.default_partitions = count.max(1);
        self
    }

    /// The partition count of `topic`.
    pub fn topic_partitions(mut self, topic: &str, count: u32) -> Self {
        self.partitions.insert(topic.to_string(), count.max(1));
        self
    }

    /// The initial wall-clock time in milliseconds (default 0).
    pub fn wall_clock(mut self, millis: i64) -> Self {
        self.wall_clock = millis;
        self
    }

    /// Checks co-partitioning and creates (and initialises) every task.
    pub fn build(self) -> Result<TestDriver> {
        let app = self.config.application_id.clone();
        let default = self.default_partitions;
        let given = self.partitions;
        let plan = self.topology.partition_plan(&app, |t| Some(given.get(t).copied().unwrap_or(default)))?;
        let mut partitions = given;
        for topic in self.topology.sink_topics() {
            partitions.entry(topic).or_insert(default);
        }
        partitions.extend(plan.topics.iter().map(|(t, n)| (t.clone(), *n)));
        let partitions = Arc::new(partitions);
        let mut topics = HashMap::new();
        for (i, sub) in self.topology.subtopologies.iter().enumerate() {
            for topic in &sub.sources {
                let name: Arc<str> = Arc::from(topic.resolve(&app));
                let count = partitions.get(&*name).copied().unwrap_or(default);
                topics.insert(name, TopicState::new(count, Some(i as u32)));
            }
        }
        let mut tasks = BTreeMap::new();
        for &id in &plan.tasks {
            tasks.insert(id, Task::new(&self.topology, id, &self.config, partitions.clone(), self.wall_clock)?);
        }
        let state = DriverState {
            plan,
            partitions,
            default_partitions: default,
            topics,
            tasks,
            queue: VecDeque::new(),
            spare: Vec::new(),
            wall_clock: self.wall_clock,
        };
        Ok(TestDriver { state: Rc::new(RefCell::new(state)) })
    }
}

/// Runs a topology in process, deterministically. See the [module docs](self).
pub struct TestDriver {
    state: Rc<RefCell<DriverState>>,
}

/// A record in a topic's log, with its position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedRecord {
    /// Its partition.
    pub partition: u32,
    /// Its offset in that partition.
    pub offset: i64,
    /// The record.
    pub record: RawRecord,
}

pub(crate) struct DriverState {
    plan: PartitionPlan,
    partitions: Arc<BTreeMap<String, u32>>,
    default_partitions: u32,
    /// Every topic written so far, by real name.
    topics: HashMap<Arc<str>, TopicState>,
    tasks: BTreeMap<TaskId, Task>,
    /// Records waiting to be processed by a task.
    queue: VecDeque<(TaskId, RecordMetadata, RawRecord)>,
    /// An empty buffer swapped with tasks' output, to reuse allocations.
    spare: Vec<OutputRecord>,
    wall_clock: i64,
}

impl TestDriver {
    /// A driver with the default configuration; see [`TestDriver::builder`].
    pub fn new(topology: Topology) -> Result<TestDriver> {
        Self::builder(topology).build()
    }

    /// Configures a driver for `topology`.
    pub fn builder(topology: Topology) -> TestDriverBuilder {
        TestDriverBuilder {
            topology,
            config: StreamsConfig::new("test-app"),
            default_partitions: 1,
            partitions: BTreeMap::new(),
            wall_clock: 0,
        }
    }

    /// A handle to pipe records into `topic`.
    pub fn input_topic<K: 'static, V: 'static>(
        &self,
        topic: &str,
        keys: impl Serde<K>,
        values: impl Serde<V>,
    ) -> TestInputTopic<K, V> {
        TestInputTopic(Binding::new(self.state.clone(), topic, keys, values))
    }

    /// A handle to read the records written to `topic`.
    pub fn output_topic<K: 'static, V: 'static>(
        &self,
        topic: &str,
        keys: impl Serde<K>,
        values: impl Serde<V>,
    ) -> TestOutputTopic<K, V> {
        TestOutputTopic(Binding::new(self.state.clone(), topic, keys, values))
    }

    /// A typed view of store `name` across all tasks.
    pub fn store<K: 'static, V: 'static>(
        &self,
        name: &str,
        keys: impl Serde<K>,
        values: impl Serde<V>,
    ) -> TestStore<K, V> {
        TestStore(Binding::new(self.state.clone(), name, keys, values))
    }

    /// Advances the wall clock and runs the wall-clock punctuations due, then commits.
    pub fn advance_wall_clock(&self, by: Duration) -> Result<()> {
        let mut state = self.state.borrow_mut();
        state.wall_clock = state.wall_clock.saturating_add(by.as_millis() as i64);
        let now = state.wall_clock;
        let result = (0..state.plan.tasks.len()).try_for_each(|i| {
            let id = state.plan.tasks[i];
            if let Some(task) = state.tasks.get_mut(&id) {
                task.advance_wall_clock(now)?;
            }
            state.route_output(id);
            state.drain()
        });
        state.finish(result)
    }

    /// The current wall-clock time in milliseconds.
    pub fn wall_clock(&self) -> i64 {
        self.state.borrow().wall_clock
    }

    /// The topics and tasks of the topology as the driver laid them out.
    pub fn plan(&self) -> PartitionPlan {
        self.state.borrow().plan.clone()
    }

    /// The metrics summed over all tasks.
    pub fn metrics(&self) -> TaskMetrics {
        let mut total = TaskMetrics::default();
        for task in self.state.borrow().tasks.values() {
            total.add(task.metrics());
        }
        total
    }

    /// The metrics of each task.
    pub fn task_metrics(&self) -> BTreeMap<TaskId, TaskMetrics> {
        self.state.borrow().tasks.iter().map(|(id, t)| (*id, *t.metrics())).collect()
    }

    /// Takes the unread records of `topic` as bytes, in write order.
    pub fn read_raw(&self, topic: &str) -> Vec<LoggedRecord> {
        self.state.borrow_mut().log_mut(topic).map(|log| log.drain(..).collect()).unwrap_or_default()
    }
}

impl Drop for TestDriver {
    fn drop(&mut self) {
        if let Ok(mut state) = self.state.try_borrow_mut() {
            for task in state.tasks.values_mut() {
                task.close();
            }
        }
    }
}

/// A topic of the driver.
struct TopicState {
    /// Next offset of each partition.
    next_offsets: Vec<i64>,
    /// The sub-topology reading it, if any.
    reader: Option<u32>,
    /// Unread records (of topics the topology does not read), in write order.
    log: VecDeque<LoggedRecord>,
}

impl TopicState {
    fn new(partitions: u32, reader: Option<u32>) -> Self {
        TopicState { next_offsets: vec![0; partitions as usize], reader, log: VecDeque::new() }
    }
}

impl DriverState {
    /// Appends a record to its topic (choosing the partition as Kafka's
    /// default partitioner would) and queues it when the topology reads it.
    fn route(&mut self, output: OutputRecord) {
        let (partitions, default) = (&self.partitions, self.default_partitions);
        let topic = self
            .topics
            .entry(output.topic.clone())
            .or_insert_with(|| TopicState::new(partitions.get(&*output.topic).copied().unwrap_or(default), None));
        let count = topic.next_offsets.len() as u32;
        let partition = match (output.partition, &output.record.key) {
            (Some(p), _) => p % count,
            (None, Some(key)) => partition_for_key(key, count),
            (None, None) => 0,
        };
        let offset = topic.next_offsets[partition as usize];
        topic.next_offsets[partition as usize] += 1;
        match topic.reader {
            Some(subtopology) => {
                let meta = RecordMetadata { topic: output.topic, partition, offset };
                self.queue.push_back((TaskId { subtopology, partition }, meta, output.record));
            }
            None => topic.log.push_back(LoggedRecord { partition, offset, record: output.record }),
        }
    }

    /// Takes the unread records of `topic`.
    fn log_mut(&mut self, topic: &str) -> Option<&mut VecDeque<LoggedRecord>> {
        self.topics.get_mut(topic).map(|t| &mut t.log)
    }

    /// Processes queued records until none is left.
    fn drain(&mut self) -> Result<()> {
        while let Some((id, meta, record)) = self.queue.pop_front() {
            let Some(task) = self.tasks.get_mut(&id) else {
                continue;
            };
            task.process(meta, record)?;
            self.route_output(id);
        }
        Ok(())
    }

    /// Routes what task `id` produced since the last call.
    fn route_output(&mut self, id: TaskId) {
        let mut output = std::mem::take(&mut self.spare);
        if let Some(task) = self.tasks.get_mut(&id) {
            task.swap_output(&mut output);
        }
        for record in output.drain(..) {
            self.route(record);
        }
        self.spare = output;
    }

    /// Commits every task after a successful step; on failure, discards
    /// what the tasks staged since their last commit.
    fn finish(&mut self, result: Result<()>) -> Result<()> {
        if result.is_err() {
            self.queue.clear();
            for task in self.tasks.values_mut() {
                task.abort();
            }
            return result;
        }
        for i in 0..self.plan.tasks.len() {
            let id = self.plan.tasks[i];
            if let Some(task) = self.tasks.get_mut(&id) {
                task.prepare_commit(&Headers::new());
                task.commit()?;
            }
            self.route_output(id);
        }
        Ok(())
    }

    /// Pipes records into `topic`, processes everything that follows, commits.
    pub(crate) fn pipe(&mut self, topic: &str, records: impl IntoIterator<Item = Result<RawRecord>>) -> Result<()> {
        let topic: Arc<str> = Arc::from(topic);
        let mut result = Ok(());
        for record in records {
            result = record.map(|record| self.route(OutputRecord { topic: topic.clone(), partition: None, record }));
            if result.is_ok() {
                result = self.drain();
            }
            if result.is_err() {
                break;
            }
        }
        self.finish(result)
    }
}
