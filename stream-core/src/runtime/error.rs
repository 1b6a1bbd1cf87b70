//! Why the runtime stops, and the one place where every Kafka error is
//! classified: what waiting can cure, and what it cannot.
//!
//! - **Retriable** (the default for a Kafka error): the cluster is not
//!   there yet, a broker restarts, a topic's metadata is still propagating,
//!   a coordinator moves, a request or a transaction times out. The runtime
//!   waits with capped exponential backoff (see `retry`); a task whose
//!   commit failed is *rewound*: its open transaction is abandoned, and it
//!   is reopened from its last commit (fenced, restored), as after a crash.
//! - **Fatal**: fenced by a newer instance, not authorized, a configuration
//!   the cluster refuses, or an error of the topology or of processing
//!   (error policy `Fail`, a store that cannot be written). The runtime
//!   stops with an error that names the fix.

use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use crate::error::{StreamError, TopologyError};

/// Why the runtime stopped.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// A Kafka client failed.
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    /// A newer instance took over this instance's tasks (it was presumed
    /// dead: stopped, or cut off longer than its session timeout).
    #[error(
        "fenced: another instance of `{application_id}` took over task {task} ({source}); this instance stops. \
         Restart it to rejoin the group; if it keeps happening, raise session.timeout.ms or find what stalls it"
    )]
    Fenced {
        /// The application id.
        application_id: String,
        /// The task whose producer was fenced.
        task: String,
        /// The error Kafka gave (boxed: it would make every result of the
        /// runtime larger).
        source: Box<KafkaError>,
    },
    /// Processing failed (error policy `Fail`, or a store failure).
    #[error(transparent)]
    Stream(#[from] StreamError),
    /// The topology does not fit the cluster.
    #[error(transparent)]
    Topology(#[from] TopologyError),
    /// A thread panicked while holding the runtime's state.
    #[error("the runtime's state was poisoned by a panic")]
    Poisoned,
    /// Restoration read nothing from a changelog partition for 30 s before
    /// reaching its own marker: with `read_committed`, an open transaction
    /// of another producer holds back what can be read. Retried.
    #[error(
        "restoring `{topic}` partition {partition}: nothing to read for 30 s after offset {offset} (end {end}); \
         a transaction left open on it may be holding back committed readers"
    )]
    RestoreStalled {
        /// The changelog topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// The next offset to read (-1: nothing was read).
        offset: i64,
        /// The partition's high watermark.
        end: i64,
    },
    /// An internal topic exists with another partition count.
    #[error("topic `{topic}` has {found} partitions, {expected} expected; delete it or fix the source topics")]
    PartitionMismatch {
        /// The topic.
        topic: String,
        /// What the topology needs.
        expected: u32,
        /// What the cluster has.
        found: u32,
    },
    /// The cluster did not answer within the start-up timeout.
    #[error("no answer from Kafka at {bootstrap} within {seconds} s (the start-up timeout): {last}")]
    StartupTimeout {
        /// `bootstrap.servers`.
        bootstrap: String,
        /// The timeout.
        seconds: u64,
        /// The last error.
        last: Box<RuntimeError>,
    },
}

impl RuntimeError {
    /// Whether waiting and trying again can cure this error (see the
    /// [module docs](self)).
    pub fn is_retriable(&self) -> bool {
        match self {
            RuntimeError::Kafka(error) => is_retriable(error),
            RuntimeError::RestoreStalled { .. } => true,
            _ => false,
        }
    }

    /// Whether this is Kafka saying that a newer producer with this task's
    /// transactional id exists.
    pub(crate) fn is_fencing(&self) -> bool {
        let RuntimeError::Kafka(error) = self else { return false };
        matches!(
            code(error),
            Some(
                RDKafkaErrorCode::Fenced
                    | RDKafkaErrorCode::ProducerFenced
                    | RDKafkaErrorCode::InvalidProducerEpoch
                    | RDKafkaErrorCode::Fatal
            )
        )
    }
}

fn code(error: &KafkaError) -> Option<RDKafkaErrorCode> {
    match error {
        KafkaError::AdminOp(code) => Some(*code),
        other => other.rdkafka_error_code(),
    }
}

/// Whether waiting and trying again can cure a Kafka error: everything but
/// fencing, authorization and authentication failures, configurations the
/// client or the cluster refuses, and records too large to write.
pub fn is_retriable(error: &KafkaError) -> bool {
    use RDKafkaErrorCode as Code;
    match error {
        KafkaError::ClientConfig(..) | KafkaError::ClientCreation(_) | KafkaError::Nul(_) => false,
        KafkaError::MessageConsumptionFatal(_) => false,
        _ => !matches!(
            code(error),
            Some(
                Code::Fenced
                    | Code::ProducerFenced
                    | Code::InvalidProducerEpoch
                    | Code::FencedInstanceId
                    | Code::Fatal
                    | Code::Authentication
                    | Code::SaslAuthenticationFailed
                    | Code::TopicAuthorizationFailed
                    | Code::GroupAuthorizationFailed
                    | Code::ClusterAuthorizationFailed
                    | Code::TransactionalIdAuthorizationFailed
                    | Code::DelegationTokenAuthorizationFailed
                    | Code::InvalidConfig
                    | Code::InvalidArgument
                    | Code::InvalidReplicationFactor
                    | Code::InvalidPartitions
                    | Code::InvalidTopic
                    | Code::InvalidRequiredAcks
                    | Code::InvalidTransactionTimeout
                    | Code::PolicyViolation
                    | Code::UnsupportedVersion
                    | Code::UnsupportedFeature
                    | Code::MessageSizeTooLarge
            )
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outages_are_retriable_and_fencing_or_refusals_are_not() {
        let retriable = [
            KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut),
            KafkaError::MetadataFetch(RDKafkaErrorCode::BrokerTransportFailure),
            KafkaError::MetadataFetch(RDKafkaErrorCode::UnknownPartition),
            KafkaError::AdminOp(RDKafkaErrorCode::NotController),
            KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull),
            KafkaError::ConsumerCommit(RDKafkaErrorCode::CoordinatorLoadInProgress),
        ];
        for error in retriable {
            assert!(RuntimeError::Kafka(error.clone()).is_retriable(), "{error}");
        }
        let fatal = [
            KafkaError::MessageProduction(RDKafkaErrorCode::ProducerFenced),
            KafkaError::AdminOp(RDKafkaErrorCode::TopicAuthorizationFailed),
            KafkaError::MetadataFetch(RDKafkaErrorCode::SaslAuthenticationFailed),
            KafkaError::ClientCreation("bad".into()),
        ];
        for error in fatal {
            assert!(!RuntimeError::Kafka(error.clone()).is_retriable(), "{error}");
        }
        assert!(RuntimeError::Kafka(KafkaError::MessageProduction(RDKafkaErrorCode::ProducerFenced)).is_fencing());
        let stalled = RuntimeError::RestoreStalled { topic: "t".into(), partition: 0, offset: 0, end: 1 };
        assert!(stalled.is_retriable());
        assert!(!RuntimeError::Poisoned.is_retriable());
    }
}
