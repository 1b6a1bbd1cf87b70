//! Configuration shared by every host of a topology (test driver, Kafka runtime).

use crate::state::StateBackend;

/// What to do with a record that cannot be decoded or processed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ErrorPolicy {
    /// Stop with an error (the default, as in Kafka Streams).
    #[default]
    Fail,
    /// Drop the record, log it and count it in [`crate::TaskMetrics::skipped`].
    Skip,
    /// Write the original record to this topic, with headers naming its source
    /// topic, partition, offset, the stage and the error (see [`crate::dead_letter`]),
    /// and count it in [`crate::TaskMetrics::dead_lettered`].
    DeadLetter(String),
}

/// Settings of a streams application.
#[derive(Debug, Clone)]
pub struct StreamsConfig {
    /// The application id: consumer group id and prefix of internal topics.
    pub application_id: String,
    /// Policy for records whose key or value does not decode.
    pub on_deserialization_error: ErrorPolicy,
    /// Policy for records whose processing fails.
    pub on_processing_error: ErrorPolicy,
    /// Where tasks keep their state stores.
    pub state: StateBackend,
}

impl StreamsConfig {
    /// Defaults for `application_id`: fail on errors, state in memory.
    pub fn new(application_id: impl Into<String>) -> Self {
        StreamsConfig {
            application_id: application_id.into(),
            on_deserialization_error: ErrorPolicy::Fail,
            on_processing_error: ErrorPolicy::Fail,
            state: StateBackend::InMemory,
        }
    }

    /// Sends both kinds of failing records to `topic`.
    pub fn dead_letter_to(mut self, topic: impl Into<String>) -> Self {
        let topic = topic.into();
        self.on_deserialization_error = ErrorPolicy::DeadLetter(topic.clone());
        self.on_processing_error = ErrorPolicy::DeadLetter(topic);
        self
    }

    /// Sets both error policies.
    pub fn on_error(mut self, policy: ErrorPolicy) -> Self {
        self.on_deserialization_error = policy.clone();
        self.on_processing_error = policy;
        self
    }

    /// Sets the state backend.
    pub fn state(mut self, backend: StateBackend) -> Self {
        self.state = backend;
        self
    }
}

/// Header names of dead-lettered records.
pub mod dead_letter {
    /// Source topic of the failing record.
    pub const TOPIC: &str = "stream.error.topic";
    /// Its partition, as decimal text.
    pub const PARTITION: &str = "stream.error.partition";
    /// Its offset, as decimal text.
    pub const OFFSET: &str = "stream.error.offset";
    /// `deserialization` or `processing`.
    pub const STAGE: &str = "stream.error.stage";
    /// The error message.
    pub const MESSAGE: &str = "stream.error.message";
}
