//! Topic checks and creation at start-up.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use super::{RuntimeConfig, RuntimeError};
use crate::error::TopologyError;
use crate::topology::{PartitionPlan, Topology};

const TIMEOUT: Duration = Duration::from_secs(10);

/// The partition count of `topic`, `None` when it does not exist.
pub(crate) fn partition_count(consumer: &BaseConsumer, topic: &str) -> Result<Option<u32>, KafkaError> {
    let metadata = consumer.fetch_metadata(Some(topic), TIMEOUT)?;
    Ok(metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .map(|t| t.partitions().len() as u32)
        .filter(|n| *n > 0))
}

/// Lays the topology out on the cluster: reads the source topics' partition
/// counts, creates the missing repartition and changelog topics (changelogs
/// compacted) and checks the existing ones.
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
    let admin: AdminClient<DefaultClientContext> = config.client().create()?;
    let mut missing = Vec::new();
    for (topic, &expected) in plan.topics.iter().filter(|(t, _)| !counts.contains_key(*t)) {
        match partition_count(consumer, topic)? {
            Some(found) if found != expected => {
                return Err(RuntimeError::PartitionMismatch { topic: topic.clone(), expected, found })
            }
            Some(_) => {}
            None => missing.push((topic.clone(), expected)),
        }
    }
    if !missing.is_empty() {
        let topics: Vec<NewTopic<'_>> = missing
            .iter()
            .map(|(topic, n)| {
                let new = NewTopic::new(topic, *n as i32, TopicReplication::Fixed(1));
                if topic.ends_with("-changelog") {
                    new.set("cleanup.policy", "compact")
                } else {
                    new
                }
            })
            .collect();
        let options = AdminOptions::new().operation_timeout(Some(TIMEOUT));
        // Admin futures are completed by librdkafka's own thread.
        for result in futures::executor::block_on(admin.create_topics(&topics, &options))? {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => {
                    tracing::error!(%topic, %code, "cannot create internal topic");
                    return Err(KafkaError::AdminOp(code).into());
                }
            }
        }
        tracing::info!(topics = ?missing, "created internal topics");
    }
    Ok(plan)
}
