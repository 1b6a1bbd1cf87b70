//! What a running [`super::Runtime`] reports about itself.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::metrics::TaskMetrics;
use crate::topology::TaskId;

/// A snapshot of a runtime's metrics.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RuntimeMetrics {
    /// Counters summed over every task this runtime has run, closed ones included.
    pub totals: TaskMetrics,
    /// The tasks currently assigned.
    pub tasks: BTreeMap<TaskId, TaskStatus>,
    /// Successful commits.
    pub commits: u64,
    /// Time taken by the last commit (all tasks).
    pub commit_latency_last: Duration,
    /// Longest commit.
    pub commit_latency_max: Duration,
    /// Time spent committing, in total.
    pub commit_latency_total: Duration,
    /// Repartition records skipped because they were already applied (see
    /// the runtime's module docs); zero with a broker that hides aborted records.
    pub duplicates_skipped: u64,
    /// Store records applied from changelogs, over all restorations.
    pub restored_records: u64,
    /// Tasks opened (fenced, restored) so far. With an incremental
    /// rebalance protocol, a rebalance opens only the tasks this instance gains.
    pub tasks_opened: u64,
    /// Tasks closed so far (revoked, rewound, or at the end of a run); with
    /// an incremental protocol, a rebalance closes only the tasks that move.
    pub tasks_closed: u64,
    /// Consumer lag per source partition (topic, partition), as last
    /// reported by the consumer (about once a second): the partition's last
    /// stable offset (what `read_committed` can read) minus the position.
    pub lag: BTreeMap<(String, u32), i64>,
    /// Whether assigned tasks wait for the cluster to be opened (after a
    /// failure to open them, or a rewind); they count as restoring.
    pub waiting: bool,
    /// Whether they have waited longer than [`super::RuntimeConfig::task_timeout`].
    pub stuck: bool,
    /// Attempts that failed for a retriable reason and were retried (start-up, opening tasks).
    pub kafka_retries: u64,
    /// Times the tasks were rewound to their last commit after a failed commit
    /// or send.
    pub rewinds: u64,
}

/// State of one assigned task.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TaskStatus {
    /// Its counters.
    pub metrics: TaskMetrics,
    /// Whether its stores are being restored (it processes nothing until done).
    pub restoring: bool,
    /// Store records restored when it was opened.
    pub restored_records: u64,
}

impl RuntimeMetrics {
    /// Whether every assigned task is restored and processing.
    pub fn is_running(&self) -> bool {
        !self.tasks.values().any(|t| t.restoring)
    }
}

/// A handle on a runtime's metrics, for another thread (an HTTP endpoint,
/// say); cheap to clone. Updated at each commit and when tasks change.
#[derive(Debug, Clone, Default)]
pub struct MetricsHandle(pub(crate) Arc<Mutex<RuntimeMetrics>>);

impl MetricsHandle {
    /// The latest snapshot.
    pub fn snapshot(&self) -> RuntimeMetrics {
        self.0.lock().map(|m| m.clone()).unwrap_or_default()
    }

    pub(crate) fn update(&self, f: impl FnOnce(&mut RuntimeMetrics)) {
        if let Ok(mut metrics) = self.0.lock() {
            f(&mut metrics);
        }
    }
}
