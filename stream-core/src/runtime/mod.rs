//! Runs a topology on a Kafka cluster, exactly once.
//!
//! One consumer in the group `application_id` reads the topology's source
//! topics (repartition topics included). When the group assigns partitions,
//! the runtime opens their tasks (one per sub-topology and partition) inside
//! the rebalance callback, before any record is read: it fences the task's
//! earlier owners (its transactional producer), restores its stores from
//! their changelogs to the task's last complete commit (see `restore`), and
//! starts reading from that commit's input positions. When partitions are
//! revoked, their tasks are committed and closed first; a task closed right
//! after a successful commit leaves a local checkpoint (see `checkpoint`).
//! Every `commit_interval` each active task commits (the protocol: `engine`).
//! By default the consumer is a static member of the group, under an id kept
//! in the state directory, so that an instance restarted after a crash gets
//! its partitions back at once (see [`Membership`]).
//!
//! **Tables first.** A task that reads tables and streams (a stream–table
//! join) reads its table partitions up to where they end at its opening
//! before its stream partitions, which stay paused until then: after
//! downtime, or while a table's leader is down, the join does not run ahead
//! of its table. (Kafka Streams orders a task's records by timestamp across
//! its partitions; stream-core processes them in the order they come.)
//!
//! **Rebalancing.** With Kafka's classic group protocol and its default
//! assignors, every rebalance revokes every partition: each instance commits
//! and closes all its tasks, then opens (restores) those it is given. With an
//! incremental protocol, only the partitions that move are revoked, and the
//! other tasks keep running: `consumer.group.protocol=consumer` (KIP-848,
//! Apache Kafka 4 and later; `consumer.group.remote.assignor=range` keeps the
//! partitions of co-partitioned topics together, which a task reading
//! several topics needs). Which partitions move is the assignor's choice —
//! Kafka 4's `range` deals ranges in member order, so a member joining can
//! also move a partition between two others — and each instance closes
//! exactly the tasks it gives up. The runtime follows whichever protocol
//! its consumer reports.
//!
//! **Faults.** Every error is classified once (see `error`): the runtime
//! waits out what can be waited out — no broker yet, a broker restarting, a
//! topic's metadata propagating, a request timing out — and stops only on
//! what cannot (fenced by a newer instance, not authorized, refused
//! configuration, a processing error under [`crate::ErrorPolicy::Fail`]).
//! [`Runtime::new`] waits for the cluster (up to
//! [`RuntimeConfig::startup_timeout`]); a task that cannot be opened is
//! retried with backoff; a task whose commit fails is *rewound*: its open
//! transaction is abandoned and it is reopened from its last commit, as it
//! would be after a crash. Waits are logged once per episode (see `retry`)
//! and counted in [`RuntimeMetrics`]; while tasks wait, they count as
//! restoring, so [`RuntimeMetrics::is_running`] is false.
//!
//! Recovery relies neither on the broker hiding the records of aborted
//! transactions nor on the group's committed offsets (the test broker nisshi
//! shows aborted records and commits some transactions' offsets late): a
//! task is restored from its changelogs alone (a task without stores from
//! its sub-topology's positions topic), a commit's records being applied
//! only if its commit records are there; records read from repartition
//! topics are de-duplicated by provenance (see `dedupe`). No commit waits
//! on the group's coordinator.
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

pub mod admin;
mod checkpoint;
mod config;
mod crash;
mod dedupe;
mod engine;
mod error;
mod membership;
mod metrics;
mod query;
mod rebalance;
mod restore;
mod retry;
mod writer;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::error::StreamError;
use crate::topology::Topology;
pub use admin::{ensure_topics, TopicSpec};
use config::ClientKind;
pub use config::{PropertyKeys, RuntimeConfig};
use engine::Engine;
pub use error::{is_retriable, RuntimeError};
pub use membership::{leave_group, LeaveError, Membership};
pub use metrics::{MetricsHandle, RuntimeMetrics, TaskStatus};
pub use query::StoreReader;
use rebalance::Rebalancing;
pub use retry::{Backoff, Waiting};
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

    /// Whether `header` is one of these names. The runtime replaces them on
    /// every output: an output never inherits its input's provenance.
    pub fn is_named(header: &str) -> bool {
        [TOPIC, PARTITION, OFFSET, RANK].contains(&header)
    }
}

/// A topology running on Kafka; see the [module docs](self).
pub struct Runtime {
    /// Its context owns the tasks (see [`Rebalancing`]).
    consumer: BaseConsumer<Rebalancing>,
    /// The stores of the open tasks, read without the engine (see [`StoreReader`]).
    views: query::Views,
    /// Its `group.instance.id` (see [`Membership`]).
    instance_id: Option<String>,
}

pub(crate) fn now_millis() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Calls `attempt` until it succeeds, waiting out retriable errors (see
/// `error`) with backoff for up to `timeout` (`None`: as long as it takes).
fn wait_for<T>(
    config: &RuntimeConfig,
    metrics: &MetricsHandle,
    mut attempt: impl FnMut() -> Result<T, RuntimeError>,
) -> Result<T, RuntimeError> {
    let mut waiting = Waiting::new(format!("Kafka at {}", config.bootstrap_servers));
    let started = Instant::now();
    loop {
        match attempt() {
            Ok(value) => {
                waiting.succeeded();
                return Ok(value);
            }
            Err(error) if error.is_retriable() => {
                if let Some(timeout) = config.startup_timeout.filter(|t| started.elapsed() >= *t) {
                    return Err(RuntimeError::StartupTimeout {
                        bootstrap: config.bootstrap_servers.clone(),
                        seconds: timeout.as_secs(),
                        last: Box::new(error),
                    });
                }
                metrics.update(|m| m.kafka_retries += 1);
                std::thread::sleep(waiting.failed(&error));
            }
            Err(error) => return Err(error),
        }
    }
}

impl Runtime {
    /// Checks the topology against the cluster, creates the missing internal
    /// topics and joins the consumer group. Waits for the cluster while it
    /// does not answer, up to [`RuntimeConfig::startup_timeout`].
    pub fn new(topology: Topology, config: RuntimeConfig) -> Result<Runtime, RuntimeError> {
        let metrics = MetricsHandle::default();
        let (partitions, shared) = wait_for(&config, &metrics, || {
            let metadata: BaseConsumer = config.client(ClientKind::Consumer).create()?;
            let plan = admin::prepare_topics(&config, &topology, &metadata)?;
            let mut partitions: BTreeMap<String, u32> = plan.topics.clone();
            for topic in topology.sink_topics() {
                if let Some(n) = admin::partition_count(&metadata, &topic)? {
                    partitions.insert(topic, n);
                }
            }
            let shared = match config.guarantee {
                Guarantee::ExactlyOnce => None,
                Guarantee::AtLeastOnce => {
                    let any_source = plan.topics.keys().next().map_or("", String::as_str);
                    Some(writer::shared_producer(&config, any_source)?)
                }
            };
            Ok((partitions, shared))
        })?;
        let engine = Engine::new(topology, config.clone(), partitions, shared, metrics.clone());
        let topics = engine.source_topics();
        let views = engine.views.clone();
        let context = Rebalancing::new(Arc::new(Mutex::new(engine)), metrics);
        let mut client = config.client(ClientKind::Consumer);
        if !config.has_property(ClientKind::Consumer, "fetch.queue.backoff.ms") {
            // After its local queue was full, librdkafka waits 1 s by default
            // before fetching again, though a busy task empties it sooner.
            client.set("fetch.queue.backoff.ms", "20");
        }
        let instance_id = config.membership.instance_id(&config.streams).map_err(StreamError::from)?;
        if let Some(id) = &instance_id {
            tracing::info!(group_instance_id = %id, "static group membership");
            client.set("group.instance.id", id);
        }
        let consumer: BaseConsumer<Rebalancing> = client
            .set("group.id", &config.streams.application_id)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("isolation.level", "read_committed")
            .set("statistics.interval.ms", "1000")
            .create_with_context(context)?;
        consumer.subscribe(&topics.iter().map(String::as_str).collect::<Vec<_>>())?;
        Ok(Runtime { consumer, views, instance_id })
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
        engine.shut_down(&self.consumer)?;
        let config = engine.config.clone();
        drop(engine);
        self.consumer.unsubscribe();
        if let Some(id) = self.instance_id.as_deref().filter(|_| config.leave_group_on_stop) {
            let protocol = config.client(ClientKind::Consumer).get("security.protocol").map(str::to_string);
            let group = &config.streams.application_id;
            match leave_group(&config.bootstrap_servers, protocol.as_deref(), group, id) {
                Ok(()) => tracing::info!(group_instance_id = %id, "left the group"),
                Err(error) => {
                    tracing::warn!(%error, "could not leave the group: the others take over at its session timeout")
                }
            }
        }
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

    /// Its static group member id, when it is one (see [`Membership`]): an
    /// application's other consumers may derive theirs from it.
    pub fn group_instance_id(&self) -> Option<&str> {
        self.instance_id.as_deref()
    }

    /// A reader of this runtime's stores for another thread (interactive queries).
    pub fn store_reader(&self) -> StoreReader {
        StoreReader(self.views.clone())
    }

    /// A handle on the metrics for another thread.
    pub fn metrics_handle(&self) -> MetricsHandle {
        self.consumer.context().metrics.clone()
    }

    /// Processes the records that come within `timeout`, up to
    /// [`STEP_RECORDS`], then commits if the commit interval is over. Tasks
    /// waiting to be opened are tried again when their backoff is over.
    fn step(&mut self, timeout: Duration) -> Result<(), RuntimeError> {
        let mut timeout = timeout;
        for _ in 0..STEP_RECORDS {
            // The rebalance callback, which may run during `poll`, takes the
            // engine: it is not held while polling.
            let polled = self.consumer.poll(timeout);
            timeout = Duration::ZERO;
            self.consumer.context().take_failure()?;
            match polled {
                None => break,
                // librdkafka retries on its own; a consumer error is reported, not fatal.
                Some(Err(error)) => {
                    tracing::warn!(%error, "consumer error");
                    break;
                }
                Some(Ok(message)) => {
                    let mut engine = self.engine()?;
                    if let Err(error) = engine.process(&message) {
                        engine.rewind(&self.consumer, error)?;
                        break;
                    }
                }
            }
        }
        let mut engine = self.engine()?;
        engine.open_pending(&self.consumer)?;
        engine.resume_caught_up(&self.consumer, || self.consumer.context().fetched())?;
        engine.serve_deliveries();
        if engine.last_commit.elapsed() >= engine.config.commit_interval {
            engine.advance_wall_clock(now_millis())?;
            if let Err(error) = engine.commit(&self.consumer) {
                engine.rewind(&self.consumer, error)?;
            }
        }
        Ok(())
    }
}
