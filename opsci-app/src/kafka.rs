//! Kafka settings shared by the loaders, the topology and the Strapi sync,
//! and the creation of the app's topics.

use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord};
use stream_core::runtime::{ensure_topics, TopicSpec};

use crate::topology::Topics;

/// Where the app's topics are.
#[derive(Clone)]
pub struct KafkaConfig {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// Topic names.
    pub topics: Topics,
    /// Extra librdkafka properties (security.protocol, sasl.*, ssl.*, ...).
    /// Their values are never logged.
    pub properties: Vec<(String, String)>,
}

/// Sends `record` and waits until the broker has acknowledged it.
pub fn deliver(producer: &FutureProducer, record: FutureRecord<'_, str, str>) -> Result<(), KafkaError> {
    let delivery = producer.send_result(record).map_err(|(e, _)| e)?;
    match futures::executor::block_on(delivery) {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((error, _))) => Err(error),
        Err(_) => Err(KafkaError::Canceled),
    }
}

impl std::fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaConfig")
            .field("brokers", &self.brokers)
            .field("topics", &self.topics)
            .field("properties", &stream_core::runtime::PropertyKeys(&self.properties))
            .finish()
    }
}

impl KafkaConfig {
    /// A client configuration: the brokers and the extra properties, but
    /// those for one kind of the runtime's clients (prefixed `consumer.`,
    /// `producer.` or `admin.`).
    pub fn client(&self) -> ClientConfig {
        let mut client = ClientConfig::new();
        client.set("bootstrap.servers", &self.brokers);
        let prefixed = |key: &str| ["consumer.", "producer.", "admin."].iter().any(|p| key.starts_with(p));
        for (key, value) in self.properties.iter().filter(|(key, _)| !prefixed(key)) {
            client.set(key, value);
        }
        client
    }

    /// A producer configuration with stream-core's producer settings (keys
    /// partitioned with murmur2, idempotent, acknowledged by all replicas).
    pub fn producer(&self) -> ClientConfig {
        let mut client = self.client();
        stream_core::runtime::producer_settings(&mut client);
        client
    }

    /// Creates the missing ones among `topics` (name, compacted) with
    /// `partitions` partitions each, and waits until every partition of
    /// each has a leader; existing topics are left as they are.
    pub fn ensure_topics(&self, topics: &[(&str, bool)], partitions: u32) -> Result<(), KafkaError> {
        let specs: Vec<TopicSpec> = topics
            .iter()
            .map(|&(name, compacted)| {
                let spec = TopicSpec::new(name, partitions);
                if compacted {
                    spec.compacted()
                } else {
                    spec
                }
            })
            .collect();
        ensure_topics(&self.client(), &specs, None)
    }
}
