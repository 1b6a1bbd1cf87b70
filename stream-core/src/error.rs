//! Typed errors of the library.

use thiserror::Error;

/// A key or value could not be encoded or decoded.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("{format} {direction} failed: {message}")]
pub struct SerdeError {
    /// Name of the format ("json", "bincode", "utf8", ...).
    pub format: &'static str,
    /// "encode" or "decode".
    pub direction: &'static str,
    /// What went wrong, as reported by the format.
    pub message: String,
}

impl SerdeError {
    /// A decoding failure in `format`.
    pub fn decode(format: &'static str, message: impl ToString) -> Self {
        SerdeError { format, direction: "decode", message: message.to_string() }
    }

    /// An encoding failure in `format`.
    pub fn encode(format: &'static str, message: impl ToString) -> Self {
        SerdeError { format, direction: "encode", message: message.to_string() }
    }
}

/// A state store operation failed.
#[derive(Debug, Error)]
pub enum StoreError {
    /// The RocksDB engine reported an error.
    #[error("rocksdb error in store `{store}`: {source}")]
    RocksDb {
        /// The store's name.
        store: String,
        /// The engine's error.
        #[source]
        source: rocksdb::Error,
    },
    /// A file or directory of the local state could not be written or read.
    #[error("local state `{path}`: {source}")]
    Io {
        /// The directory.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The application holding the store stopped with a panic.
    #[error("the store's application is no longer available")]
    Unavailable,
    /// A processor asked for a store that is not connected to it.
    #[error("store `{0}` is not connected to this processor (connect it when adding the processor)")]
    NotConnected(String),
    /// A stored key or value could not be encoded or decoded.
    #[error("store `{store}`: {source}")]
    Serde {
        /// The store's name.
        store: String,
        /// The underlying serde error.
        #[source]
        source: SerdeError,
    },
}

/// The topology description is invalid.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum TopologyError {
    /// Two stores, or two processors, share a name.
    #[error("duplicate name `{0}` in the topology")]
    DuplicateName(String),
    /// A processor refers to a store that was never added.
    #[error("processor `{processor}` refers to unknown store `{store}`")]
    UnknownStore {
        /// The processor's name.
        processor: String,
        /// The missing store.
        store: String,
    },
    /// The same topic is read by two sources.
    #[error("topic `{0}` is read by more than one source")]
    TopicReadTwice(String),
    /// Topics that must be co-partitioned have different partition counts.
    #[error(
        "topics {topics:?} must be co-partitioned (same number of partitions) but have {counts:?} partitions; \
         give them the same partition count"
    )]
    NotCopartitioned {
        /// The topics of the co-partition group.
        topics: Vec<String>,
        /// Their partition counts, in the same order.
        counts: Vec<u32>,
    },
    /// A topic's partition count is unknown to the host.
    #[error("partition count of topic `{0}` is unknown")]
    UnknownTopic(String),
    /// A key-changing operation is followed by an operation that needs the data
    /// partitioned by the new key, without a repartition step.
    #[error("{operation} after a key-changing operation ({changed_by}) needs the stream repartitioned first: call `.repartition(...)` before it")]
    RepartitionRequired {
        /// The operation that needs co-partitioned data.
        operation: &'static str,
        /// The operation that changed the key.
        changed_by: String,
    },
    /// The topology has no source.
    #[error("the topology has no source topic")]
    Empty,
    /// A task names a sub-topology the topology does not have.
    #[error("the topology has no sub-topology {0}")]
    UnknownSubTopology(u32),
}

/// An error raised while processing a record or a punctuation.
#[derive(Debug, Error)]
pub enum StreamError {
    /// A record read from a topic could not be decoded.
    #[error("deserialization failed: {0}")]
    Deserialization(SerdeError),
    /// A key or value could not be encoded or decoded inside the topology.
    #[error(transparent)]
    Serde(#[from] SerdeError),
    /// A state store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The topology is invalid.
    #[error(transparent)]
    Topology(#[from] TopologyError),
    /// A processor reported a failure of its own.
    #[error("processing failed: {0}")]
    Processing(String),
    /// A record failed and the error policy is `Fail`.
    #[error("{stage} error on {topic}[{partition}]@{offset}: {source}")]
    Failed {
        /// "deserialization" or "processing".
        stage: &'static str,
        /// Source topic of the failing record.
        topic: String,
        /// Its partition.
        partition: u32,
        /// Its offset.
        offset: i64,
        /// The cause.
        #[source]
        source: Box<StreamError>,
    },
}

impl StreamError {
    /// A processing failure with a message, for use in user processors.
    pub fn processing(message: impl ToString) -> Self {
        StreamError::Processing(message.to_string())
    }
}

/// Result type of the library.
pub type Result<T, E = StreamError> = std::result::Result<T, E>;
