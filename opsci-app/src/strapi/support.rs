//! What the two syncs share: a consumer-group client that reports partition
//! changes, the sink of the records Strapi refuses, and sleeping until stopped.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientContext, Message};

use super::client::StrapiError;
use crate::kafka::{deliver, KafkaConfig};
use crate::metrics::AppMetrics;
use crate::topology::{Reason, Rejection, Source};

/// Remembers the partitions revoked from a consumer, and that its
/// assignment changed.
#[derive(Default)]
pub struct Tracked {
    revoked: Mutex<Vec<i32>>,
    changed: AtomicBool,
}

impl ClientContext for Tracked {}

impl ConsumerContext for Tracked {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(partitions) = rebalance {
            if let Ok(mut revoked) = self.revoked.lock() {
                revoked.extend(partitions.elements().iter().map(|p| p.partition()));
            }
        }
        self.changed.store(true, Ordering::Relaxed);
    }
}

impl Tracked {
    /// The partitions revoked since the last call.
    pub fn take_revoked(&self) -> Vec<i32> {
        self.revoked.lock().map(|mut r| std::mem::take(&mut *r)).unwrap_or_default()
    }

    /// Whether the assignment changed since the last call.
    pub fn take_changed(&self) -> bool {
        self.changed.swap(false, Ordering::Relaxed)
    }
}

/// Removes static member `member` (if any) from `group` once its consumer
/// is closed, so that another instance takes its partitions over at once
/// (see [`stream_core::runtime::leave_group`]); a failure only delays that.
pub fn leave(kafka: &KafkaConfig, group: &str, member: Option<&str>) {
    let Some(member) = member else { return };
    let protocol = kafka
        .properties
        .iter()
        .find(|(key, _)| key == "security.protocol" || key == "consumer.security.protocol")
        .map(|(_, value)| value.as_str());
    if let Err(error) = stream_core::runtime::leave_group(&kafka.brokers, protocol, group, member) {
        tracing::warn!(%error, group, "could not leave the group: the others take over at its session timeout");
    }
}

/// A consumer of `topic` in consumer group `group` (a static member when
/// `member` is its `group.instance.id`), committing only the offsets stored
/// by the caller; a new group starts at the beginning of the topic, or at
/// its end when `beginning` is false.
pub fn group_consumer(
    kafka: &KafkaConfig,
    group: &str,
    member: Option<&str>,
    topic: &str,
    beginning: bool,
) -> Result<BaseConsumer<Tracked>, KafkaError> {
    let mut client = kafka.client();
    if let Some(member) = member {
        client.set("group.instance.id", member);
    }
    let consumer: BaseConsumer<Tracked> = client
        .set("group.id", group)
        .set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", if beginning { "earliest" } else { "latest" })
        .set("isolation.level", "read_committed")
        .create_with_context(Tracked::default())?;
    consumer.subscribe(&[topic])?;
    Ok(consumer)
}

/// Where a record was read.
pub fn source_of(message: &impl Message) -> Source {
    Source { topic: message.topic().to_string(), partition: message.partition() as u32, offset: message.offset() }
}

/// Whether retrying cannot help: Strapi understood the request and refused
/// it (a 4xx other than 404, 408 and 429).
pub fn is_refusal(error: &StrapiError) -> bool {
    matches!(error, StrapiError::Status { status, .. } if (400..500).contains(status) && ![404, 408, 429].contains(status))
}

/// Sends records that cannot be applied to the error topic.
pub struct ErrorSink {
    producer: FutureProducer,
    topic: String,
    metrics: Arc<AppMetrics>,
}

impl ErrorSink {
    /// A sink writing to the error topic, counting in `metrics`.
    pub fn new(kafka: &KafkaConfig, metrics: Arc<AppMetrics>) -> Result<ErrorSink, KafkaError> {
        Ok(ErrorSink { producer: kafka.producer().create()?, topic: kafka.topics.error.clone(), metrics })
    }

    /// Writes `rejection` under `key` and waits for the broker's acknowledgement.
    pub fn send(&self, key: &str, rejection: &Rejection) -> Result<(), KafkaError> {
        tracing::warn!(%key, source = ?rejection.source, reason = %rejection.message, "sent to the error topic");
        self.metrics.rejected(&rejection.reason);
        let value = serde_json::to_string(rejection).unwrap_or_default();
        deliver(&self.producer, FutureRecord::to(&self.topic).key(key).payload(&value))
    }

    /// Builds and sends the rejection of `message` for `reason`.
    pub fn reject(&self, message: &impl Message, reason: Reason) -> Result<(), KafkaError> {
        let key = message.key().map(String::from_utf8_lossy).unwrap_or_default();
        let record = message.payload().map(String::from_utf8_lossy).unwrap_or_default().into_owned();
        self.send(&key, &Rejection::new(reason, record, source_of(message)))
    }
}

/// Sleeps `delay`, waking early when `stop` is set; returns whether it was.
pub fn sleep_unless(stop: &AtomicBool, delay: Duration) -> bool {
    let until = Instant::now() + delay;
    while Instant::now() < until {
        if stop.load(Ordering::Relaxed) {
            return true;
        }
        std::thread::sleep((until - Instant::now()).min(Duration::from_millis(50)));
    }
    stop.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_client_errors_are_refusals() {
        let status = |status| StrapiError::Status { method: "PUT", path: "/".into(), status, message: String::new() };
        assert!(is_refusal(&status(400)));
        assert!(!is_refusal(&status(404)) && !is_refusal(&status(429)) && !is_refusal(&status(503)));
        let down = StrapiError::Unreachable { method: "PUT", path: "/".into(), reason: "refused".into() };
        assert!(!is_refusal(&down));
    }
}
