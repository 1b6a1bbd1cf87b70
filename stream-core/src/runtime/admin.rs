//! Topics: the internal topics of a topology, checked and created at
//! start-up, and [`ensure_topics`], which an application uses for its own.
//! A topic is used only once every partition of it has a leader: right
//! after its creation, a broker may not know it yet.

use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::metadata::Metadata;

use super::{ClientKind, RuntimeConfig, RuntimeError};
use crate::error::TopologyError;
use crate::topology::{PartitionPlan, Topology};

const TIMEOUT: Duration = Duration::from_secs(10);

/// How long a new topic may take to have a leader for every partition.
const LEADERS_TIMEOUT: Duration = Duration::from_secs(30);

/// A topic to create when it is missing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    /// Its name.
    pub name: String,
    /// Its partition count.
    pub partitions: u32,
    /// Whether it is compacted (`cleanup.policy=compact`), as tables and
    /// changelogs are.
    pub compacted: bool,
}

impl TopicSpec {
    /// A topic named `name` with `partitions` partitions, not compacted.
    pub fn new(name: impl Into<String>, partitions: u32) -> TopicSpec {
        TopicSpec { name: name.into(), partitions, compacted: false }
    }

    /// The same topic, compacted.
    pub fn compacted(mut self) -> TopicSpec {
        self.compacted = true;
        self
    }
}

fn exists(metadata: &Metadata, topic: &str) -> Option<u32> {
    let found = metadata.topics().iter().find(|t| t.name() == topic && t.error().is_none())?;
    Some(found.partitions().len() as u32).filter(|n| *n > 0)
}

/// The partition count of `topic`, `None` when it does not exist.
pub(crate) fn partition_count(consumer: &BaseConsumer, topic: &str) -> Result<Option<u32>, KafkaError> {
    Ok(exists(&consumer.fetch_metadata(Some(topic), TIMEOUT)?, topic))
}

/// Creates the missing ones among `topics` on the cluster `client` points
/// at, leaves existing ones as they are, then waits until every partition
/// of each has a leader. Replication: `replication`, else three, or the
/// number of brokers if fewer; with three or more, `min.insync.replicas` 2.
///
/// Every error it returns is worth retrying unless
/// [`super::is_retriable`] says otherwise (a topic being created
/// elsewhere at the same moment is fine).
pub fn ensure_topics(client: &ClientConfig, topics: &[TopicSpec], replication: Option<i32>) -> Result<(), KafkaError> {
    let consumer: BaseConsumer = client.create()?;
    let metadata = consumer.fetch_metadata(None, TIMEOUT)?;
    let replication = replication.unwrap_or_else(|| metadata.brokers().len().min(3) as i32).max(1);
    let isr = 2.to_string();
    let missing: Vec<NewTopic<'_>> = topics
        .iter()
        .filter(|t| exists(&metadata, &t.name).is_none())
        .map(|t| {
            let mut new = NewTopic::new(&t.name, t.partitions as i32, TopicReplication::Fixed(replication));
            if t.compacted {
                new = new.set("cleanup.policy", "compact");
            }
            if replication >= 3 {
                new = new.set("min.insync.replicas", &isr);
            }
            new
        })
        .collect();
    if !missing.is_empty() {
        let admin: AdminClient<DefaultClientContext> = client.create()?;
        let options = AdminOptions::new().operation_timeout(Some(TIMEOUT));
        // Admin futures are completed by librdkafka's own thread.
        for result in futures::executor::block_on(admin.create_topics(&missing, &options))? {
            match result {
                Ok(topic) => tracing::info!(%topic, replication, "created topic"),
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => {
                    tracing::warn!(%topic, %code, "cannot create topic");
                    return Err(KafkaError::AdminOp(code));
                }
            }
        }
    }
    wait_for_leaders(&consumer, topics)
}

/// Waits until every partition of each of `topics` has a leader.
fn wait_for_leaders(consumer: &BaseConsumer, topics: &[TopicSpec]) -> Result<(), KafkaError> {
    let deadline = Instant::now() + LEADERS_TIMEOUT;
    for topic in topics {
        loop {
            let metadata = consumer.fetch_metadata(Some(&topic.name), TIMEOUT)?;
            let led = metadata.topics().iter().any(|t| {
                t.name() == topic.name
                    && t.error().is_none()
                    && !t.partitions().is_empty()
                    && t.partitions().iter().all(|p| p.leader() >= 0 && p.error().is_none())
            });
            if led {
                break;
            }
            if Instant::now() > deadline {
                tracing::warn!(topic = %topic.name, "a partition of the topic has no leader yet");
                return Err(KafkaError::MetadataFetch(RDKafkaErrorCode::LeaderNotAvailable));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(())
}

/// Lays the topology out on the cluster: reads the source topics' partition
/// counts, creates the missing repartition and changelog topics (changelogs
/// compacted), checks the existing ones, and waits for their leaders.
pub(crate) fn prepare_topics(
    config: &RuntimeConfig,
    topology: &Topology,
    consumer: &BaseConsumer,
) -> Result<PartitionPlan, RuntimeError> {
    let app = &config.streams.application_id;
    let mut counts = std::collections::BTreeMap::new();
    for topic in topology.source_topics() {
        let n = partition_count(consumer, &topic)?.ok_or_else(|| TopologyError::UnknownTopic(topic.clone()))?;
        counts.insert(topic, n);
    }
    let plan = topology.partition_plan(app, |t| counts.get(t).copied())?;
    let mut internal = Vec::new();
    for (topic, &expected) in plan.topics.iter().filter(|(t, _)| !counts.contains_key(*t)) {
        match partition_count(consumer, topic)? {
            Some(found) if found != expected => {
                return Err(RuntimeError::PartitionMismatch { topic: topic.clone(), expected, found })
            }
            _ => {
                let spec = TopicSpec::new(topic.clone(), expected);
                internal.push(if topic.ends_with("-changelog") { spec.compacted() } else { spec });
            }
        }
    }
    ensure_topics(&config.client(ClientKind::Admin), &internal, config.replication_factor)?;
    Ok(plan)
}
