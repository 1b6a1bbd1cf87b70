//! The runtime consumer's context: librdkafka's rebalance callback (which
//! runs during `poll`, on the runtime's thread) opens the tasks of assigned
//! partitions and commits and closes those of revoked ones; the statistics
//! callback reports consumer lag and where the consumer fetches.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use rdkafka::consumer::{BaseConsumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, TopicPartitionList};

use super::engine::Engine;
use super::metrics::MetricsHandle;
use super::RuntimeError;

pub(super) struct Rebalancing {
    pub(super) engine: Arc<Mutex<Engine>>,
    pub(super) metrics: MetricsHandle,
    /// A fatal error met in a callback, returned by the next `step`.
    failure: Mutex<Option<RuntimeError>>,
    /// Where the consumer fetches, per partition, as of the last statistics.
    fetched: Mutex<HashMap<(String, i32), Fetched>>,
}

/// Where the consumer fetches a partition.
#[derive(Debug, Clone, Copy)]
pub(super) struct Fetched {
    /// The next offset it fetches.
    pub(super) next: i64,
    /// Where the partition ends: its last stable offset with `read_committed`.
    pub(super) end: i64,
}

impl Rebalancing {
    pub(super) fn new(engine: Arc<Mutex<Engine>>, metrics: MetricsHandle) -> Rebalancing {
        Rebalancing { engine, metrics, failure: Mutex::new(None), fetched: Mutex::default() }
    }

    /// Where the consumer fetches, per partition (from the statistics,
    /// every second).
    pub(super) fn fetched(&self) -> HashMap<(String, i32), Fetched> {
        self.fetched.lock().map(|f| f.clone()).unwrap_or_default()
    }

    pub(super) fn engine(&self) -> Result<MutexGuard<'_, Engine>, RuntimeError> {
        self.engine.lock().map_err(|_| RuntimeError::Poisoned)
    }

    /// The fatal error a callback met, if any.
    pub(super) fn take_failure(&self) -> Result<(), RuntimeError> {
        match self.failure.lock().ok().and_then(|mut f| f.take()) {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
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
        let fetched = statistics.topics.iter().flat_map(|(topic, t)| {
            t.partitions.iter().filter_map(move |(p, s)| {
                let end = if s.ls_offset >= 0 { s.ls_offset } else { s.hi_offset };
                (*p >= 0 && s.next_offset >= 0 && end >= 0)
                    .then(|| ((topic.clone(), *p), Fetched { next: s.next_offset, end }))
            })
        });
        if let Ok(mut positions) = self.fetched.lock() {
            *positions = fetched.collect();
        }
    }
}

impl ConsumerContext for Rebalancing {
    fn rebalance(&self, consumer: &BaseConsumer<Self>, event: RDKafkaRespErr, partitions: &mut TopicPartitionList) {
        let result = self.engine().and_then(|mut engine| match event {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => engine.assigned(consumer, partitions),
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => engine.revoked(consumer, partitions),
            other => Err(KafkaError::Rebalance(other.into()).into()),
        });
        if let Err(error) = result {
            tracing::error!(%error, "rebalance failed");
            if let Ok(mut failure) = self.failure.lock() {
                failure.get_or_insert(error);
            }
        }
    }
}
