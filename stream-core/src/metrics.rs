//! Counters kept by every task.

/// What a task (or, summed, a whole application) has done.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TaskMetrics {
    /// Records read from source topics.
    pub records_in: u64,
    /// Records written by sinks (outputs and repartition topics).
    pub records_out: u64,
    /// Failing records dropped by [`crate::ErrorPolicy::Skip`], and failed punctuations.
    pub skipped: u64,
    /// Failing records written to the dead-letter topic.
    pub dead_lettered: u64,
    /// Records dropped from at least one window because it had closed.
    pub late_dropped: u64,
    /// Punctuations run.
    pub punctuations: u64,
}

impl TaskMetrics {
    /// Adds `other` into `self`.
    pub fn add(&mut self, other: &TaskMetrics) {
        self.records_in += other.records_in;
        self.records_out += other.records_out;
        self.skipped += other.skipped;
        self.dead_lettered += other.dead_lettered;
        self.late_dropped += other.late_dropped;
        self.punctuations += other.punctuations;
    }
}
