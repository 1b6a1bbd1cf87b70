//! Runs a topology on a Kafka cluster, exactly once.
//!
//! One consumer in the group `application_id` reads the topology's source
//! topics (repartition topics included). When the group assigns partitions,
//! the runtime opens their tasks (one per sub-topology and partition) inside
//! the rebalance callback, before any record is read: it fences the task's
//! earlier owners (its transactional producer), restores its stores from
//! their changelogs to the task's last commit that is wholly in them (see
//! `restore`), and starts reading from that commit's input positions, which
//! the changelog holds too. When partitions are revoked, their tasks are
//! committed and closed first; a task closed right after a successful commit
//! leaves a local checkpoint, so that reopening it on this instance reads
//! only what was written to its changelogs since (see `checkpoint`).
//!
//! Every `commit_interval` each active task commits: with
//! [`Guarantee::ExactlyOnce`] one Kafka transaction holds its outputs, its
//! store changes, input positions and de-duplication entries (changelog
//! records tagged with the commit), then, once all of those are stored, a
//! commit record in each changelog, and the input offsets for the consumer
//! group; then the store writes are made durable locally. Any error stops
//! the runtime with the open transactions abandoned; the next owner of each
//! task resumes from its last complete commit. A fenced instance (a zombie)
//! fails its next commit and stops without having written anything that
//! counts.
//!
//! Recovery relies neither on the broker hiding the records of aborted
//! transactions nor on the group's committed offsets (the test broker shows
//! aborted records, and may commit a transaction's offsets after its producer
//! was fenced, or never): a task with stores is restored from its changelogs
//! alone, a commit's records being applied only if its commit records are
//! there; records read from repartition topics are de-duplicated by
//! provenance (see `dedupe`). The group's offsets only position tasks without
//! stores, which at worst process some records again.
//!
//! ```no_run
//! use stream_core::runtime::{Runtime, RuntimeConfig};
//! use stream_core::serdes::{Utf8, I64};
//! use stream_core::{Consumed, Grouped, Materialized, Produced, StreamsBuilder, StreamsConfig};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let builder = StreamsBuilder::new();
//! builder
//!     .stream("movements", Consumed::with(Utf8, I64))
//!     .group_by_key(Grouped::with(Utf8, I64))
//!     .aggregate(|| 0, |_, amount, total| total + amount, Materialized::new("totals", I64))
//!     .to_stream()
//!     .to("totals", Produced::with(Utf8, I64));
//! let config = RuntimeConfig::new(StreamsConfig::new("stock-app"), "localhost:9092");
//! let mut runtime = Runtime::new(builder.build()?, config)?;
//! let stop = std::sync::atomic::AtomicBool::new(false); // set by a signal handler
//! runtime.run(|_metrics| stop.load(std::sync::atomic::Ordering::Relaxed))?;
//! # Ok(())
//! # }
//! ```

mod admin;
mod checkpoint;
mod dedupe;
mod engine;
mod metrics;
mod query;
mod restore;
mod writer;

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, TopicPartitionList};

use crate::config::StreamsConfig;
use crate::error::{StreamError, TopologyError};
use crate::topology::Topology;
use engine::Engine;
pub use metrics::{MetricsHandle, RuntimeMetrics, TaskStatus};
pub use query::StoreReader;
pub use writer::{producer_settings, Guarantee};

/// Most records a step processes before it checks whether to commit.
const STEP_RECORDS: usize = 256;

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
    /// Rank of the record among the outputs of that input, as decimal text;
    /// absent for the first (rank 0).
    pub const RANK: &str = "stream.source.rank";
}

/// Settings of the Kafka runtime.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Application id, error policies, state backend (the state directory).
    pub streams: StreamsConfig,
    /// Exactly-once (the default) or at-least-once.
    pub guarantee: Guarantee,
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
            guarantee: Guarantee::ExactlyOnce,
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
    /// Restoration read nothing from a changelog partition for 30 s before
    /// reaching its own marker: with `read_committed`, an open transaction
    /// of another producer holds back what can be read.
    #[error(
        "restoring `{topic}` partition {partition}: nothing to read for 30 s after offset {offset} (end {end}); \
         a transaction left open on it may be holding back committed readers"
    )]
    RestoreStalled {
        /// The changelog topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// The next offset to read (-1: nothing was read).
        offset: i64,
        /// The partition's high watermark.
        end: i64,
    },
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
    /// Its context owns the tasks (see [`Rebalancing`]).
    consumer: BaseConsumer<Rebalancing>,
}

/// Opens and closes tasks inside librdkafka's rebalance callback (which runs
/// during `poll`, on the runtime's thread), and collects consumer lag.
struct Rebalancing {
    engine: Arc<Mutex<Engine>>,
    metrics: MetricsHandle,
    /// An error met in a callback, returned by the next `step`.
    failure: Mutex<Option<RuntimeError>>,
}

impl ClientContext for Rebalancing {
    fn stats(&self, statistics: Statistics) {
        let lag = statistics.topics.iter().flat_map(|(topic, t)| {
            // The end (last stable offset with read_committed, else the high
            // watermark) minus the position: librdkafka's own `consumer_lag`
            // counts from the group's committed offset, which it does not
            // know when offsets are committed through transactions.
            t.partitions.iter().filter(|(p, s)| **p >= 0 && s.app_offset >= 0).filter_map(move |(p, s)| {
                let end = if s.ls_offset >= 0 { s.ls_offset } else { s.hi_offset };
                (end >= 0).then(|| ((topic.clone(), *p as u32), (end - s.app_offset).max(0)))
            })
        });
        let lag = lag.collect();
        self.metrics.update(|m| m.lag = lag);
    }
}

impl Rebalancing {
    fn engine(&self) -> Result<MutexGuard<'_, Engine>, RuntimeError> {
        self.engine.lock().map_err(|_| RuntimeError::Poisoned)
    }

    fn assign(&self, consumer: &BaseConsumer<Self>, partitions: &mut TopicPartitionList) -> Result<(), RuntimeError> {
        self.engine()?.open_tasks(consumer, partitions)?;
        consumer.assign(partitions)?;
        Ok(())
    }

    fn revoke(&self, consumer: &BaseConsumer<Self>, partitions: &TopicPartitionList) -> Result<(), RuntimeError> {
        let mut engine = self.engine()?;
        let result = engine.commit(consumer);
        engine.close_partitions(partitions, result.is_ok());
        consumer.unassign()?;
        result
    }
}

impl ConsumerContext for Rebalancing {
    fn rebalance(&self, consumer: &BaseConsumer<Self>, event: RDKafkaRespErr, partitions: &mut TopicPartitionList) {
        let result = match event {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => self.assign(consumer, partitions),
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => self.revoke(consumer, partitions),
            other => Err(KafkaError::Rebalance(other.into()).into()),
        };
        if let Err(error) = result {
            tracing::error!(%error, "rebalance failed");
            if let Ok(mut failure) = self.failure.lock() {
                failure.get_or_insert(error);
            }
        }
    }
}
pub(crate) fn now_millis() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

impl Runtime {
    /// Checks the topology against the cluster, creates the missing internal
    /// topics and joins the consumer group.
    pub fn new(topology: Topology, config: RuntimeConfig) -> Result<Runtime, RuntimeError> {
        let metadata: BaseConsumer = config.client().create()?;
        let plan = admin::prepare_topics(&config, &topology, &metadata)?;
        let mut partitions = plan.topics.clone();
        for topic in topology.sink_topics() {
            if let Some(n) = admin::partition_count(&metadata, &topic)? {
                partitions.insert(topic, n);
            }
        }
        let engine = Engine::new(topology, config.clone(), partitions)?;
        let topics = engine.source_topics();
        let metrics = engine.metrics.clone();
        let context = Rebalancing { engine: Arc::new(Mutex::new(engine)), metrics, failure: Mutex::new(None) };
        let mut client = config.client();
        if !config.properties.iter().any(|(key, _)| key == "fetch.queue.backoff.ms") {
            // After its local queue was full, librdkafka waits 1 s by default
            // before fetching again, though a busy task empties it sooner.
            client.set("fetch.queue.backoff.ms", "20");
        }
        let consumer: BaseConsumer<Rebalancing> = client
            .set("group.id", &config.streams.application_id)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("isolation.level", "read_committed")
            .set("statistics.interval.ms", "1000")
            .create_with_context(context)?;
        consumer.subscribe(&topics.iter().map(String::as_str).collect::<Vec<_>>())?;
        Ok(Runtime { consumer })
    }

    fn engine(&self) -> Result<MutexGuard<'_, Engine>, RuntimeError> {
        self.consumer.context().engine()
    }

    /// Processes records until `stop` returns true (it is given the current
    /// metrics), then commits, closes the tasks and leaves the group.
    pub fn run(&mut self, mut stop: impl FnMut(&RuntimeMetrics) -> bool) -> Result<(), RuntimeError> {
        // The shared snapshot changes at commits only: copy it again once per
        // commit interval, not for every record.
        let interval = self.engine()?.config.commit_interval;
        let (mut metrics, mut copied) = (self.metrics(), Instant::now());
        while !stop(&metrics) {
            self.step(Duration::from_millis(50))?;
            if copied.elapsed() >= interval {
                (metrics, copied) = (self.metrics_handle().snapshot(), Instant::now());
            }
            metrics.totals = self.engine()?.totals();
        }
        let mut engine = self.engine()?;
        engine.commit(&self.consumer)?;
        engine.close_all();
        drop(engine);
        self.consumer.unsubscribe();
        Ok(())
    }

    /// A snapshot of the metrics (as of the last commit, with current totals).
    pub fn metrics(&self) -> RuntimeMetrics {
        let mut metrics = self.metrics_handle().snapshot();
        if let Ok(engine) = self.engine() {
            metrics.totals = engine.totals();
        }
        metrics
    }

    /// A reader of this runtime's stores for another thread (interactive queries).
    pub fn store_reader(&self) -> StoreReader {
        StoreReader(self.consumer.context().engine.clone())
    }

    /// A handle on the metrics for another thread.
    pub fn metrics_handle(&self) -> MetricsHandle {
        self.consumer.context().metrics.clone()
    }

    /// Processes the records that come within `timeout`, up to
    /// [`STEP_RECORDS`], then commits if the commit interval is over.
    fn step(&mut self, timeout: Duration) -> Result<(), RuntimeError> {
        let mut timeout = timeout;
        for _ in 0..STEP_RECORDS {
            // The rebalance callback, which may run during `poll`, takes the
            // engine: it is not held while polling.
            let polled = self.consumer.poll(timeout);
            timeout = Duration::ZERO;
            if let Some(error) = self.consumer.context().failure.lock().ok().and_then(|mut f| f.take()) {
                return Err(error);
            }
            match polled {
                None => break,
                // librdkafka retries on its own; a consumer error is reported, not fatal.
                Some(Err(error)) => {
                    tracing::warn!(%error, "consumer error");
                    break;
                }
                Some(Ok(message)) => self.consumer.context().engine()?.process(&message)?,
            }
        }
        let mut engine = self.engine()?;
        engine.serve_deliveries();
        if engine.last_commit.elapsed() >= engine.config.commit_interval {
            engine.advance_wall_clock(now_millis())?;
            engine.commit(&self.consumer)?;
        }
        Ok(())
    }
}
