//! Kafka settings shared by the loaders, the topology and the Strapi sync,
//! and the creation of the app's topics.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::topology::Topics;

/// Where the app's topics are.
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// Topic names.
    pub topics: Topics,
    /// Extra librdkafka properties (security.protocol, sasl.*, ssl.*, ...).
    /// Their values are never logged.
    pub properties: Vec<(String, String)>,
}

const TIMEOUT: Duration = Duration::from_secs(10);

/// Sends `record` and waits until the broker has acknowledged it.
pub fn deliver(producer: &FutureProducer, record: FutureRecord<'_, str, str>) -> Result<(), KafkaError> {
    let delivery = producer.send_result(record).map_err(|(e, _)| e)?;
    match futures::executor::block_on(delivery) {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((error, _))) => Err(error),
        Err(_) => Err(KafkaError::Canceled),
    }
}

impl KafkaConfig {
    /// A client configuration: the brokers and the extra properties.
    pub fn client(&self) -> ClientConfig {
        let mut client = ClientConfig::new();
        client.set("bootstrap.servers", &self.brokers);
        for (key, value) in &self.properties {
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
    /// `partitions` partitions each; existing topics are left as they are.
    pub fn ensure_topics(&self, topics: &[(&str, bool)], partitions: u32) -> Result<(), KafkaError> {
        let consumer: BaseConsumer = self.client().create()?;
        let metadata = consumer.fetch_metadata(None, TIMEOUT)?;
        let exists = |name: &str| metadata.topics().iter().any(|t| t.name() == name && !t.partitions().is_empty());
        let missing: Vec<NewTopic<'_>> = topics
            .iter()
            .filter(|(name, _)| !exists(name))
            .map(|&(name, compact)| {
                let topic = NewTopic::new(name, partitions as i32, TopicReplication::Fixed(1));
                if compact {
                    topic.set("cleanup.policy", "compact")
                } else {
                    topic
                }
            })
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let admin: AdminClient<DefaultClientContext> = self.client().create()?;
        let options = AdminOptions::new().operation_timeout(Some(TIMEOUT));
        // Admin futures are completed by librdkafka's own thread.
        for result in futures::executor::block_on(admin.create_topics(&missing, &options))? {
            match result {
                Ok(topic) => tracing::info!(%topic, partitions, "created topic"),
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => {
                    tracing::error!(%topic, %code, "cannot create topic");
                    return Err(KafkaError::AdminOp(code));
                }
            }
        }
        Ok(())
    }
}
