//! Settings of the Kafka runtime, and the client settings derived from them.

use std::time::Duration;

use rdkafka::config::ClientConfig;

use super::writer::Guarantee;
use crate::config::StreamsConfig;

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
    /// Replication factor of the internal topics it creates (changelogs,
    /// repartition topics); `None` (the default): three, or the number of
    /// brokers if fewer. With three or more, `min.insync.replicas` is 2.
    pub replication_factor: Option<i32>,
    /// How long [`super::Runtime::new`] waits for the cluster to answer;
    /// `None` (the default): as long as it takes, logging what it waits for.
    pub startup_timeout: Option<Duration>,
    /// How long a task may wait for the cluster (to open, or to commit)
    /// before it is reported stuck (an error log, [`super::RuntimeMetrics::stuck`]);
    /// it still waits, and the instance stays up (default 5 min, Kafka
    /// Streams' `task.timeout.ms`).
    pub task_timeout: Duration,
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
            replication_factor: None,
            startup_timeout: None,
            task_timeout: Duration::from_secs(300),
            properties: Vec::new(),
        }
    }

    /// Whether the user set librdkafka property `key`.
    pub(crate) fn has_property(&self, key: &str) -> bool {
        self.properties.iter().any(|(k, _)| k == key)
    }

    /// A client configuration: the brokers and the user's properties.
    pub(crate) fn client(&self) -> ClientConfig {
        let mut client = ClientConfig::new();
        client.set("bootstrap.servers", &self.bootstrap_servers);
        // librdkafka waits up to 10 s between attempts to reconnect to a
        // broker by default: after a broker restart, processing would resume
        // that much later.
        client.set("reconnect.backoff.max.ms", "1000");
        for (key, value) in &self.properties {
            client.set(key, value);
        }
        client
    }
}
