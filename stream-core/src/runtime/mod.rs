//! Runs a topology on a Kafka cluster.
//!
//! Status: first version, **at-least-once**. One consumer in the group
//! `application_id` reads the topology's source topics (repartition topics
//! included); a task is created, and its stores restored from their changelog
//! topics, when a partition of its sources is first seen; when the group
//! takes partitions away, the rebalance callback commits and closes their
//! tasks before another instance gets them. Every `commit_interval` the runtime writes
//! the tasks' outputs and store changes (changelogs), waits for the broker to
//! acknowledge them, commits the input offsets, then makes the store writes
//! durable. A crash between those steps replays records (duplicates, never
//! losses). Exactly-once (transactions with commit markers in the changelogs)
//! is not built yet.

mod admin;
mod engine;
mod restore;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers as _};
use rdkafka::producer::BaseProducer;
use rdkafka::{ClientContext, Message};

use crate::config::StreamsConfig;
use crate::error::{StreamError, TopologyError};
use crate::metrics::TaskMetrics;
use crate::record::{Headers, RawRecord, RecordMetadata};
use crate::topology::Topology;
use engine::Engine;

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
    /// A thread panicked while holding the runtime's state.
    #[error("the runtime's state was poisoned by a panic")]
    Poisoned,
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
    consumer: BaseConsumer<Rebalancing>,
    engine: Arc<Mutex<Engine>>,
}

/// Commits and closes the tasks of revoked partitions, inside librdkafka's
/// rebalance callback (which runs during `poll`, on the runtime's thread).
struct Rebalancing {
    engine: Arc<Mutex<Engine>>,
    /// An error met in the callback, returned by the next `step`.
    failure: Mutex<Option<RuntimeError>>,
}

impl ClientContext for Rebalancing {}

impl ConsumerContext for Rebalancing {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(partitions) = rebalance else { return };
        let Ok(mut engine) = self.engine.lock() else { return };
        let result = engine.commit(consumer);
        engine.close_partitions(partitions);
        if let Err(error) = result {
            if let Ok(mut failure) = self.failure.lock() {
                failure.get_or_insert(error);
            }
        }
    }
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

pub(crate) fn now_millis() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

impl Runtime {
    /// Checks the topology against the cluster, creates the missing internal
    /// topics and joins the consumer group.
    pub fn new(topology: Topology, config: RuntimeConfig) -> Result<Runtime, RuntimeError> {
        let app = config.streams.application_id.clone();
        let metadata: BaseConsumer = config.client().create()?;
        let plan = admin::prepare_topics(&config, &topology, &metadata)?;
        let mut partitions = plan.topics.clone();
        for topic in topology.sink_topics() {
            if let Some(n) = admin::partition_count(&metadata, &topic)? {
                partitions.insert(topic, n);
            }
        }
        let mut readers = HashMap::new();
        for (i, sub) in topology.subtopologies.iter().enumerate() {
            for topic in &sub.sources {
                readers.insert(topic.resolve(&app), i as u32);
            }
        }
        let producer: BaseProducer = config
            .client()
            .set("partitioner", "murmur2_random")
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .create()?;
        let topics: Vec<String> = readers.keys().cloned().collect();
        let engine = Arc::new(Mutex::new(Engine {
            topology,
            producer,
            partitions: Arc::new(partitions),
            readers,
            tasks: BTreeMap::new(),
            positions: HashMap::new(),
            last_commit: Instant::now(),
            output: Vec::new(),
            closed: TaskMetrics::default(),
            config: config.clone(),
        }));
        let context = Rebalancing { engine: engine.clone(), failure: Mutex::new(None) };
        let consumer: BaseConsumer<Rebalancing> = config
            .client()
            .set("group.id", &app)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("isolation.level", "read_committed")
            .create_with_context(context)?;
        consumer.subscribe(&topics.iter().map(String::as_str).collect::<Vec<_>>())?;
        Ok(Runtime { consumer, engine })
    }

    fn engine(&self) -> Result<MutexGuard<'_, Engine>, RuntimeError> {
        self.engine.lock().map_err(|_| RuntimeError::Poisoned)
    }

    /// Processes records until `stop` returns true (it is given the metrics
    /// summed over all tasks), then commits, closes the tasks and leaves the group.
    pub fn run(&mut self, mut stop: impl FnMut(&TaskMetrics) -> bool) -> Result<(), RuntimeError> {
        while !stop(&self.metrics()) {
            self.step(Duration::from_millis(50))?;
        }
        let mut engine = self.engine()?;
        engine.commit(&self.consumer)?;
        engine.close_all();
        drop(engine);
        self.consumer.unsubscribe();
        Ok(())
    }

    /// The metrics summed over all tasks this runtime has run.
    pub fn metrics(&self) -> TaskMetrics {
        self.engine.lock().map(|e| e.metrics()).unwrap_or_default()
    }

    fn step(&mut self, timeout: Duration) -> Result<(), RuntimeError> {
        let polled = self.consumer.poll(timeout).map(|m| m.map(|m| owned(&m)));
        if let Some(error) = self.consumer.context().failure.lock().ok().and_then(|mut f| f.take()) {
            return Err(error);
        }
        let mut engine = self.engine()?;
        match polled {
            None => {}
            // librdkafka retries on its own; a consumer error is reported, not fatal.
            Some(Err(error)) => tracing::warn!(%error, "consumer error"),
            Some(Ok((meta, raw))) => engine.process(meta, raw)?,
        }
        if engine.last_commit.elapsed() >= engine.config.commit_interval {
            let now = now_millis();
            for task in engine.tasks.values_mut() {
                task.advance_wall_clock(now)?;
            }
            engine.commit(&self.consumer)?;
        }
        Ok(())
    }
}
