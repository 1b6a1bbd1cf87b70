//! Runs a topology on a Kafka cluster.
//!
//! Status: first version, **at-least-once**. One consumer in the group
//! `application_id` reads the topology's source topics (repartition topics
//! included); a task is created, and its stores restored from their changelog
//! topics, when a partition of its sources is first seen, and closed when the
//! group takes the partition away. Every `commit_interval` the runtime writes
//! the tasks' outputs and store changes (changelogs), waits for the broker to
//! acknowledge them, commits the input offsets, then makes the store writes
//! durable. A crash between those steps replays records (duplicates, never
//! losses). Exactly-once (transactions with commit markers in the changelogs)
//! is not built yet.

mod admin;
mod restore;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, Headers as _, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Message, Offset, TopicPartitionList};

use crate::config::StreamsConfig;
use crate::error::{StreamError, TopologyError};
use crate::metrics::TaskMetrics;
use crate::record::{Headers, OutputRecord, RawRecord, RecordMetadata};
use crate::task::Task;
use crate::topology::{TaskId, Topology};

/// Header names of the provenance the runtime adds to every output record
/// produced while processing an input record: where that input was read.
/// A consumer can de-duplicate on them; a reader can trace a result to its input.
pub mod provenance {
    /// Source topic.
    pub const TOPIC: &str = "stream.source.topic";
    /// Source partition, as decimal text.
    pub const PARTITION: &str = "stream.source.partition";
    /// Source offset, as decimal text.
    pub const OFFSET: &str = "stream.source.offset";
}

/// Settings of the Kafka runtime.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Application id, error policies, state backend.
    pub streams: StreamsConfig,
    /// `bootstrap.servers`.
    pub bootstrap_servers: String,
    /// How often outputs, changelogs and offsets are committed (default 100 ms).
    pub commit_interval: Duration,
    /// librdkafka properties passed to every client (security.protocol,
    /// sasl.*, ssl.*, ...). Their values are never logged.
    pub properties: Vec<(String, String)>,
}

impl RuntimeConfig {
    /// Defaults for `streams` on the cluster at `bootstrap_servers`.
    pub fn new(streams: StreamsConfig, bootstrap_servers: impl Into<String>) -> Self {
        RuntimeConfig {
            streams,
            bootstrap_servers: bootstrap_servers.into(),
            commit_interval: Duration::from_millis(100),
            properties: Vec::new(),
        }
    }

    pub(crate) fn client(&self) -> ClientConfig {
        let mut client = ClientConfig::new();
        client.set("bootstrap.servers", &self.bootstrap_servers);
        for (key, value) in &self.properties {
            client.set(key, value);
        }
        client
    }
}

/// Why the runtime stopped.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// A Kafka client failed.
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    /// Processing failed (error policy `Fail`, or a store failure).
    #[error(transparent)]
    Stream(#[from] StreamError),
    /// The topology does not fit the cluster.
    #[error(transparent)]
    Topology(#[from] TopologyError),
    /// An internal topic exists with another partition count.
    #[error("topic `{topic}` has {found} partitions, {expected} expected; delete it or fix the source topics")]
    PartitionMismatch {
        /// The topic.
        topic: String,
        /// What the topology needs.
        expected: u32,
        /// What the cluster has.
        found: u32,
    },
}

/// A topology running on Kafka; see the [module docs](self).
pub struct Runtime {
    topology: Topology,
    config: RuntimeConfig,
    consumer: BaseConsumer,
    producer: BaseProducer,
    partitions: Arc<BTreeMap<String, u32>>,
    /// Source topic → the sub-topology reading it.
    readers: HashMap<String, u32>,
    tasks: BTreeMap<TaskId, Task>,
    /// Next offset to commit, per input partition.
    positions: HashMap<(String, i32), i64>,
    last_commit: Instant,
    output: Vec<OutputRecord>,
    /// Metrics of tasks already closed.
    closed: TaskMetrics,
}

/// Copies what the runtime needs out of a consumed message.
fn owned(message: &BorrowedMessage<'_>) -> (RecordMetadata, RawRecord) {
    let mut headers = Headers::new();
    if let Some(h) = message.headers() {
        for header in h.iter() {
            headers.add(header.key, header.value.unwrap_or_default());
        }
    }
    let meta = RecordMetadata {
        topic: Arc::from(message.topic()),
        partition: message.partition() as u32,
        offset: message.offset(),
    };
    let raw = RawRecord {
        key: message.key().map(<[u8]>::to_vec),
        value: message.payload().map(<[u8]>::to_vec),
        timestamp: message.timestamp().to_millis().unwrap_or_else(now_millis),
        headers,
    };
    (meta, raw)
}

fn now_millis() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

impl Runtime {
    /// Checks the topology against the cluster, creates the missing internal
    /// topics and joins the consumer group.
    pub fn new(topology: Topology, config: RuntimeConfig) -> Result<Runtime, RuntimeError> {
        let app = config.streams.application_id.clone();
        let mut consumer_config = config.client();
        consumer_config
            .set("group.id", &app)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("isolation.level", "read_committed");
        let consumer: BaseConsumer = consumer_config.create()?;
        let plan = admin::prepare_topics(&config, &topology, &consumer)?;
        let mut partitions = plan.topics.clone();
        for topic in topology.sink_topics() {
            if let Some(n) = admin::partition_count(&consumer, &topic)? {
                partitions.insert(topic, n);
            }
        }
        let mut readers = HashMap::new();
        for (i, sub) in topology.subtopologies.iter().enumerate() {
            for topic in &sub.sources {
                readers.insert(topic.resolve(&app), i as u32);
            }
        }
        let topics: Vec<&str> = readers.keys().map(String::as_str).collect();
        consumer.subscribe(&topics)?;
        let producer: BaseProducer = config
            .client()
            .set("partitioner", "murmur2_random")
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .create()?;
        Ok(Runtime {
            topology,
            config,
            consumer,
            producer,
            partitions: Arc::new(partitions),
            readers,
            tasks: BTreeMap::new(),
            positions: HashMap::new(),
            last_commit: Instant::now(),
            output: Vec::new(),
            closed: TaskMetrics::default(),
        })
    }

    /// Processes records until `stop` returns true (it is given the metrics
    /// summed over all tasks), then commits and closes the tasks.
    pub fn run(&mut self, mut stop: impl FnMut(&TaskMetrics) -> bool) -> Result<(), RuntimeError> {
        while !stop(&self.metrics()) {
            self.step(Duration::from_millis(50))?;
        }
        self.commit()?;
        for (_, mut task) in std::mem::take(&mut self.tasks) {
            self.closed.add(task.metrics());
            task.close();
        }
        self.consumer.unsubscribe();
        Ok(())
    }

    /// The metrics summed over all tasks this runtime has run.
    pub fn metrics(&self) -> TaskMetrics {
        let mut total = self.closed;
        for task in self.tasks.values() {
            total.add(task.metrics());
        }
        total
    }

    fn step(&mut self, timeout: Duration) -> Result<(), RuntimeError> {
        match self.consumer.poll(timeout) {
            None => {}
            // librdkafka retries on its own; a consumer error is reported, not fatal.
            Some(Err(error)) => tracing::warn!(%error, "consumer error"),
            Some(Ok(message)) => {
                let (meta, raw) = owned(&message);
                drop(message);
                self.process(meta, raw)?;
            }
        }
        if self.last_commit.elapsed() >= self.config.commit_interval {
            let now = now_millis();
            for task in self.tasks.values_mut() {
                task.advance_wall_clock(now)?;
            }
            self.commit()?;
            self.close_revoked()?;
        }
        Ok(())
    }

    /// Runs one input record through its task (created and restored on its
    /// first record) and produces what it output.
    fn process(&mut self, meta: RecordMetadata, raw: RawRecord) -> Result<(), RuntimeError> {
        let Some(&subtopology) = self.readers.get(&*meta.topic) else {
            return Ok(());
        };
        let id = TaskId { subtopology, partition: meta.partition };
        if !self.tasks.contains_key(&id) {
            self.open_task(id)?;
        }
        if let Some(task) = self.tasks.get_mut(&id) {
            task.process(meta.clone(), raw)?;
            task.swap_output(&mut self.output);
        }
        self.positions.insert((meta.topic.to_string(), meta.partition as i32), meta.offset + 1);
        self.send_output(Some(&meta))
    }

    fn open_task(&mut self, id: TaskId) -> Result<(), RuntimeError> {
        let mut task = Task::new(&self.topology, id, &self.config.streams, self.partitions.clone(), now_millis())?;
        restore::restore(&self.config, &mut task, id)?;
        self.tasks.insert(id, task);
        Ok(())
    }

    /// Produces the records in `self.output`, with the provenance of `source`
    /// (replacing any provenance they carried from upstream).
    fn send_output(&mut self, source: Option<&RecordMetadata>) -> Result<(), RuntimeError> {
        let provenance = source.map(|m| [m.topic.to_string(), m.partition.to_string(), m.offset.to_string()]);
        let names = [provenance::TOPIC, provenance::PARTITION, provenance::OFFSET];
        for record in self.output.drain(..) {
            let mut headers = OwnedHeaders::new_with_capacity(record.record.headers.len() + 3);
            for (key, value) in record.record.headers.iter().filter(|(k, _)| !names.contains(k)) {
                headers = headers.insert(Header { key, value: Some(value) });
            }
            for (key, value) in names.iter().zip(provenance.iter().flatten()) {
                headers = headers.insert(Header { key, value: Some(value.as_bytes()) });
            }
            let mut out = BaseRecord::to(&record.topic).timestamp(record.record.timestamp).headers(headers);
            if let Some(key) = &record.record.key {
                out = out.key(key.as_slice());
            }
            if let Some(value) = &record.record.value {
                out = out.payload(value.as_slice());
            }
            if let Some(partition) = record.partition {
                out = out.partition(partition as i32);
            }
            loop {
                match self.producer.send(out) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        self.producer.poll(Duration::from_millis(10));
                        out = back;
                    }
                    Err((error, _)) => return Err(error.into()),
                }
            }
        }
        self.producer.poll(Duration::ZERO);
        Ok(())
    }

    /// Writes outputs and changelogs, waits for them, commits the input
    /// offsets, then makes the store writes durable.
    fn commit(&mut self) -> Result<(), RuntimeError> {
        for task in self.tasks.values_mut() {
            task.prepare_commit();
            let mut output = Vec::new();
            task.swap_output(&mut output);
            self.output.append(&mut output);
        }
        self.send_output(None)?;
        self.producer.flush(Duration::from_secs(30))?;
        if !self.positions.is_empty() {
            let mut offsets = TopicPartitionList::new();
            for ((topic, partition), offset) in &self.positions {
                offsets.add_partition_offset(topic, *partition, Offset::Offset(*offset))?;
            }
            self.consumer.commit(&offsets, CommitMode::Sync)?;
            self.positions.clear();
        }
        for task in self.tasks.values_mut() {
            task.commit()?;
        }
        self.last_commit = Instant::now();
        Ok(())
    }

    /// Closes the tasks none of whose input partitions is still assigned.
    fn close_revoked(&mut self) -> Result<(), RuntimeError> {
        let assignment = self.consumer.assignment()?;
        let assigned: Vec<(String, u32)> =
            assignment.elements().iter().map(|e| (e.topic().to_string(), e.partition() as u32)).collect();
        let revoked: Vec<TaskId> = self
            .tasks
            .iter()
            .filter(|(id, task)| !task.source_topics().any(|t| assigned.contains(&(t.to_string(), id.partition))))
            .map(|(id, _)| *id)
            .collect();
        for id in revoked {
            if let Some(mut task) = self.tasks.remove(&id) {
                tracing::info!(task = %id, "partition revoked: closing task");
                self.closed.add(task.metrics());
                task.close();
            }
        }
        Ok(())
    }
}
