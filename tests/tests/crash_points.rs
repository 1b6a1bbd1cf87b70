//! Exactly-once at each step of a commit and of a restore: the fold worker
//! runs a topology with two stores (two changelogs) behind a repartition
//! hop, and a task without stores reading a repartition topic
//! (`TOPOLOGY=hops`), and aborts at a crash point (`STREAM_CORE_CRASH_AT`,
//! stream-core's test-only feature `crash-points`). Its successor must end
//! with both stores and the three output topics equal to an independent
//! fold of the input, and every poison record on the error topic once.
//!
//! Each point runs on Apache Kafka (`kafka::`) and on nisshi (`nisshi::`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use integration_tests::fold::{final_run, read_errors, read_outputs, setup, Input, Worker};
use integration_tests::{on_each_broker, BrokerKind};

const PARTITIONS: i32 = 4;
const HOPS: (&str, &str) = ("TOPOLOGY", "hops");

/// Crashes a worker the `n`-th time it reaches `point`, while it works
/// through 20 000 movements and more as they come, then checks that its
/// successor ends exact.
fn crash_at(kind: BrokerKind, point: &str, n: u32) {
    let (broker, dir) = setup(kind, PARTITIONS);
    let state = dir.path().join("state");
    let mut input = Input::produce(&broker, 0, 20_000, Duration::ZERO);
    if point == "mid_restore" {
        // A predecessor that left changelogs but no local state: the
        // crashing worker restores its stores from the changelogs alone.
        final_run(&broker, &state, "2000", &[HOPS]);
        std::fs::remove_dir_all(&state).expect("remove the local state");
    }
    let at = format!("{point}:{n}");
    let mut env = vec![HOPS, ("STREAM_CORE_CRASH_AT", at.as_str())];
    if point == "checkpoint_writing" {
        // Checkpoints are written when tasks close: at the end of an idle run.
        env.push(("IDLE_EXIT_MS", "2000"));
    }
    // For the points of a commit, movements keep coming until the worker
    // crashes, so that it commits as often as the point needs. The other
    // points are reached with the input there is.
    let feeding = !matches!(point, "checkpoint_writing" | "mid_restore");
    let stop = AtomicBool::new(!feeding);
    let (status, log, (more, next)) = std::thread::scope(|scope| {
        let feed = scope.spawn(|| Input::produce_until(&broker, 20_000, &stop));
        let stopping = Stop(&stop);
        let worker = Worker::start(&broker, &state, &env);
        let (status, log) = worker.wait(Duration::from_secs(120));
        drop(stopping);
        (status, log, feed.join().expect("producer"))
    });
    input.extend(more);
    assert!(
        !status.success() && log.contains(&format!("crash point {point}")),
        "no crash at {point} ({status}):\n{log}"
    );

    input.extend(Input::produce(&broker, next, 5_000, Duration::ZERO));
    let stores = final_run(&broker, &state, "3000", &[HOPS]);
    assert_eq!(stores["totals"], input.fold(), "store totals after a crash at {point}");
    assert_eq!(stores["counts"], input.counts(), "store counts after a crash at {point}");
    let outputs = input.good.len();
    assert_eq!(read_outputs(&broker, "totals", outputs, PARTITIONS), input.fold(), "topic totals");
    assert_eq!(read_outputs(&broker, "counts", outputs, PARTITIONS), input.counts(), "topic counts");
    read_outputs(&broker, "echo", outputs, PARTITIONS);
    read_errors(&broker, input.poison);
}

/// Stops the producer when dropped, also when the test fails.
struct Stop<'a>(&'a AtomicBool);

impl Drop for Stop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

on_each_broker!(
    after_the_outputs_are_flushed,
    between_the_commit_records_of_two_changelogs,
    before_commit_transaction,
    after_commit_transaction,
    after_the_local_store_is_written,
    while_the_local_checkpoint_is_written,
    in_the_middle_of_a_restore,
);

fn after_the_outputs_are_flushed(kind: BrokerKind) {
    crash_at(kind, "outputs_flushed", 12);
}

fn between_the_commit_records_of_two_changelogs(kind: BrokerKind) {
    crash_at(kind, "between_commit_records", 12);
}

fn before_commit_transaction(kind: BrokerKind) {
    crash_at(kind, "before_commit_transaction", 30);
}

fn after_commit_transaction(kind: BrokerKind) {
    crash_at(kind, "after_commit_transaction", 30);
}

fn after_the_local_store_is_written(kind: BrokerKind) {
    crash_at(kind, "stores_written", 12);
}

fn while_the_local_checkpoint_is_written(kind: BrokerKind) {
    crash_at(kind, "checkpoint_writing", 2);
}

fn in_the_middle_of_a_restore(kind: BrokerKind) {
    crash_at(kind, "mid_restore", 200);
}
