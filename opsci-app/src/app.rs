//! `opsci-app run`: the topology on the Kafka runtime, the Strapi sync and
//! the HTTP endpoint, together, until stopped.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use stream_core::runtime::{
    is_retriable, Guarantee, MetricsHandle, Runtime, RuntimeConfig, RuntimeError, StoreReader, Waiting,
};
use stream_core::state::StateBackend;
use stream_core::{StreamsConfig, TaskMetrics, TopologyError};

use crate::http::{self, ApiState};
use crate::kafka::KafkaConfig;
use crate::metrics::AppMetrics;
use crate::policy::StatusPolicy;
use crate::strapi::{self, SyncConfig, SyncError};
use crate::topology;

/// Everything `run` needs.
#[derive(Debug, Clone)]
pub struct AppConfig {
    /// Brokers, topics, client properties.
    pub kafka: KafkaConfig,
    /// Consumer group and prefix of internal topics.
    pub application_id: String,
    /// Exactly-once (default) or at-least-once.
    pub guarantee: Guarantee,
    /// Commit interval; also the Strapi sync's coalescing interval.
    pub commit_interval: Duration,
    /// The status policy.
    pub policy: StatusPolicy,
    /// Where tasks keep their RocksDB stores; in memory when `None`.
    pub state_dir: Option<PathBuf>,
    /// Partitions of the topics the app creates when they are missing.
    pub partitions: u32,
    /// Strapi, when the catalogue is to be kept in sync.
    pub strapi: Option<(String, strapi::Token)>,
    /// Whether the events already on the event topic at the first start go
    /// to Strapi too (see [`SyncConfig::beginning`]).
    pub beginning: bool,
    /// Where to serve `/metrics`, `/health` and `/products`.
    pub http: Option<SocketAddr>,
    /// How long to wait for Kafka at start-up; `None`: as long as it takes.
    pub startup_timeout: Option<Duration>,
}

/// Why `run` failed.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The topology could not be built.
    #[error("topology: {0}")]
    Topology(#[from] TopologyError),
    /// The runtime failed.
    #[error("runtime: {0}")]
    Runtime(#[from] RuntimeError),
    /// Topics could not be created.
    #[error("creating topics: {0}")]
    Topics(rdkafka::error::KafkaError),
    /// The Strapi sync failed.
    #[error("Strapi sync: {0}")]
    Sync(#[from] SyncError),
    /// The HTTP endpoint could not start.
    #[error("HTTP endpoint on {addr}: {source}")]
    Http {
        /// Where.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// A thread panicked.
    #[error("the {0} thread panicked")]
    Panicked(&'static str),
}

/// Handles on a running app, for its caller.
#[derive(Clone)]
pub struct Running {
    /// The runtime's stores.
    pub stores: StoreReader,
    /// The runtime's metrics.
    pub metrics: MetricsHandle,
    /// The app's counters.
    pub app: Arc<AppMetrics>,
}

/// Runs the app until `stop` is set; `started` is called once everything
/// runs. Returns the runtime's totals.
pub fn run(config: AppConfig, stop: Arc<AtomicBool>, started: impl FnOnce(Running)) -> Result<TaskMetrics, AppError> {
    let topics = &config.kafka.topics;
    let app = &config.application_id;
    let all = [
        (topics.product.as_str(), false),
        (&topics.stock, false),
        (&topics.event, false),
        (&topics.error, false),
        (&topics.catalogue, true),
    ];
    let mut waiting = Waiting::new(format!("Kafka at {}", config.kafka.brokers));
    let since = Instant::now();
    while let Err(error) = config.kafka.ensure_topics(&all, config.partitions) {
        let timed_out = config.startup_timeout.is_some_and(|t| since.elapsed() >= t);
        if !is_retriable(&error) || timed_out || stop.load(Ordering::Relaxed) {
            return Err(AppError::Topics(error));
        }
        std::thread::sleep(waiting.failed(&error));
    }
    waiting.succeeded();

    let metrics = Arc::new(AppMetrics::default());
    let topology = topology::build(topics, config.policy, metrics.clone())?;
    let mut streams = StreamsConfig::new(app.clone()).dead_letter_to(topics.error.clone());
    if let Some(dir) = &config.state_dir {
        streams = streams.state(StateBackend::RocksDb(dir.clone()));
    }
    let mut runtime_config = RuntimeConfig::new(streams, config.kafka.brokers.clone());
    runtime_config.guarantee = config.guarantee;
    runtime_config.commit_interval = config.commit_interval;
    runtime_config.properties = config.kafka.properties.clone();
    runtime_config.startup_timeout = config.startup_timeout;
    let mut runtime = Runtime::new(topology, runtime_config)?;
    let running = Running { stores: runtime.store_reader(), metrics: runtime.metrics_handle(), app: metrics.clone() };

    let http = match config.http {
        Some(addr) => {
            let state = ApiState {
                stores: running.stores.clone(),
                runtime: running.metrics.clone(),
                app: metrics.clone(),
                policy: config.policy,
            };
            Some((addr, http::serve(addr, state, stop.clone()).map_err(|source| AppError::Http { addr, source })?))
        }
        None => None,
    };
    let syncs = match &config.strapi {
        Some((url, token)) => {
            let sync = SyncConfig {
                url: url.clone(),
                token: token.clone(),
                application_id: app.clone(),
                instance_id: runtime.group_instance_id().map(str::to_string),
                interval: config.commit_interval,
                beginning: config.beginning,
            };
            strapi::start(&config.kafka, &sync, metrics.clone(), stop.clone())?
        }
        None => {
            tracing::warn!("STRAPI_URL is not set: Strapi is not kept in sync");
            Vec::new()
        }
    };
    started(running);

    let result = runtime.run(|_| stop.load(Ordering::Relaxed));
    // Whatever ended the runtime ends the rest too.
    stop.store(true, Ordering::Relaxed);
    for sync in syncs {
        sync.join().map_err(|_| AppError::Panicked("Strapi sync"))??;
    }
    if let Some((addr, http)) = http {
        http.join().map_err(|_| AppError::Panicked("HTTP"))?.map_err(|source| AppError::Http { addr, source })?;
    }
    result?;
    Ok(runtime.metrics().totals)
}
