//! Settings of the Kafka runtime, and the client settings derived from them.

use std::time::Duration;

use rdkafka::config::ClientConfig;

use super::membership::Membership;
use super::writer::Guarantee;
use crate::config::StreamsConfig;

/// Settings of the Kafka runtime.
#[derive(Clone)]
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
    /// Static (the default, with a state directory) or dynamic group
    /// membership: how soon a restarted instance gets its partitions back,
    /// and how soon the others take over from a stopped one.
    pub membership: Membership,
    /// Whether a static member removes itself from the group when it stops
    /// cleanly (true, the default), so that the others take its partitions
    /// over at once; false: they wait for its session timeout, and an
    /// instance restarted within it (a rolling restart) gets them back
    /// without a rebalance. See [`super::membership`].
    pub leave_group_on_stop: bool,
    /// librdkafka properties passed to every client (security.protocol,
    /// sasl.*, ssl.*, ...). As in Kafka Streams, a key prefixed `consumer.`,
    /// `producer.` or `admin.` goes to that kind of client only, without the
    /// prefix (`consumer.session.timeout.ms`). Values are never logged.
    pub properties: Vec<(String, String)>,
}

impl std::fmt::Debug for RuntimeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuntimeConfig")
            .field("streams", &self.streams)
            .field("guarantee", &self.guarantee)
            .field("bootstrap_servers", &self.bootstrap_servers)
            .field("commit_interval", &self.commit_interval)
            .field("replication_factor", &self.replication_factor)
            .field("startup_timeout", &self.startup_timeout)
            .field("task_timeout", &self.task_timeout)
            .field("membership", &self.membership)
            .field("properties", &PropertyKeys(&self.properties))
            .finish()
    }
}

/// Shows librdkafka properties' keys, never their values (which may be
/// secrets): `{"sasl.password": ..}`.
pub struct PropertyKeys<'a>(pub &'a [(String, String)]);

impl std::fmt::Debug for PropertyKeys<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        struct Hidden;
        impl std::fmt::Debug for Hidden {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("..")
            }
        }
        f.debug_map().entries(self.0.iter().map(|(key, _)| (key, Hidden))).finish()
    }
}

/// The kind of client a configuration is made for (see [`RuntimeConfig::properties`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClientKind {
    Consumer,
    Producer,
    Admin,
}

impl ClientKind {
    const ALL: [(ClientKind, &'static str); 3] =
        [(ClientKind::Consumer, "consumer."), (ClientKind::Producer, "producer."), (ClientKind::Admin, "admin.")];

    /// The key under which `key` applies to this kind of client, if it does.
    fn key(self, key: &str) -> Option<&str> {
        for (kind, prefix) in ClientKind::ALL {
            if let Some(rest) = key.strip_prefix(prefix) {
                return (kind == self).then_some(rest);
            }
        }
        Some(key)
    }
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
            membership: Membership::Static,
            leave_group_on_stop: true,
            properties: Vec::new(),
        }
    }

    /// Whether the user set librdkafka property `key` for `kind`'s clients.
    pub(crate) fn has_property(&self, kind: ClientKind, key: &str) -> bool {
        self.properties.iter().any(|(k, _)| kind.key(k) == Some(key))
    }

    /// A configuration for a client of `kind`: the brokers and the user's
    /// properties for it.
    pub(crate) fn client(&self, kind: ClientKind) -> ClientConfig {
        let mut client = ClientConfig::new();
        client.set("bootstrap.servers", &self.bootstrap_servers);
        // librdkafka waits up to 10 s between attempts to reconnect to a
        // broker by default: after a broker restart, processing would resume
        // that much later.
        client.set("reconnect.backoff.max.ms", "1000");
        // A client learns that a partition's leader moved off a broker that
        // died from a metadata refresh, every 5 min by default: until then
        // its fetches or produce requests for that partition wait (measured
        // on a three-node cluster: 4-6 s after the new leaders were elected
        // with the default, 1-3 s with this).
        client.set("topic.metadata.refresh.interval.ms", "1000");
        for (key, value) in &self.properties {
            if let Some(key) = kind.key(key) {
                client.set(key, value);
            }
        }
        client
    }
}

#[cfg(test)]
mod tests {
    use super::{ClientKind, RuntimeConfig};
    use crate::config::StreamsConfig;

    #[test]
    fn debug_output_shows_property_keys_not_values() {
        let mut config = RuntimeConfig::new(StreamsConfig::new("app"), "localhost:9092");
        config.properties.push(("sasl.password".into(), "hunter2".into()));
        let shown = format!("{config:?}");
        assert!(shown.contains("sasl.password") && !shown.contains("hunter2"), "{shown}");
    }

    #[test]
    fn a_prefixed_property_goes_to_its_kind_of_client_only() {
        let mut config = RuntimeConfig::new(StreamsConfig::new("app"), "localhost:9092");
        config.properties.push(("consumer.session.timeout.ms".into(), "6000".into()));
        config.properties.push(("security.protocol".into(), "ssl".into()));
        let consumer = config.client(ClientKind::Consumer);
        assert_eq!(consumer.get("session.timeout.ms"), Some("6000"));
        assert_eq!(consumer.get("security.protocol"), Some("ssl"));
        let producer = config.client(ClientKind::Producer);
        assert_eq!(producer.get("session.timeout.ms"), None);
        assert_eq!(producer.get("consumer.session.timeout.ms"), None);
        assert_eq!(producer.get("security.protocol"), Some("ssl"));
        assert!(config.has_property(ClientKind::Consumer, "session.timeout.ms"));
        assert!(!config.has_property(ClientKind::Admin, "session.timeout.ms"));
    }
}
