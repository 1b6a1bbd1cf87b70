//! Exactly-once on real brokers, proven with processes: the fold worker
//! (`src/bin/fold-worker.rs`) is killed with SIGKILL, stopped and resumed as a
//! zombie, run twice side by side, and restarted with its state directory
//! wiped. Each time, the final table (the worker's store, and the output
//! topic read back) equals an independent fold of the input, and every
//! poison record is on the error topic once.
//!
//! Each test runs on Apache Kafka (`kafka::`) and on nisshi (`nisshi::`),
//! which shows aborted records; how outputs are read on each: `fold`.

use std::time::{Duration, Instant};

use integration_tests::fold::{
    final_run, read_dump, read_errors, read_outputs, setup, setup_on, Input, Random, Worker,
};
use integration_tests::{on_each_broker, Broker, BrokerKind};

on_each_broker!(
    a_worker_killed_with_sigkill_ten_times_ends_with_the_exact_fold,
    a_zombie_instance_is_fenced_and_stops_without_effect,
    a_wiped_state_directory_is_rebuilt_from_the_changelog,
    when_one_of_two_instances_is_killed_the_other_takes_over_exactly,
);

/// Ten workers in a row are killed with SIGKILL at random moments, mid-commit
/// or not (164 000 movements); each successor resumes from the last commit
/// wholly in the changelog, so no input is lost, counted twice, or processed
/// from two different states (two different outputs for one provenance).
fn a_worker_killed_with_sigkill_ten_times_ends_with_the_exact_fold(kind: BrokerKind) {
    let (broker, dir) = setup(kind, 4);
    let state = dir.path().join("state");
    let mut input = Input::produce(&broker, 0, 4_000, Duration::ZERO);
    let mut random = Random::new();
    for kill in 0..10u64 {
        // Some movements wait for the worker: its predecessor may have
        // committed everything before it was killed.
        let from = 4_000 + kill * 16_000;
        input.extend(Input::produce(&broker, from, 1_000, Duration::ZERO));
        let worker = Worker::start(&broker, &state, &[]);
        let started = Instant::now();
        worker.wait_running(Duration::from_secs(60));
        eprintln!("kill {kill}: the worker processed its first record {:?} after its start", started.elapsed());
        // More movements arrive while the worker runs; it is killed among them.
        let delay = Duration::from_millis(100 + random.below(900));
        let chunk = std::thread::scope(|scope| {
            let producer = scope.spawn(|| Input::produce(&broker, from + 1_000, 15_000, Duration::from_millis(60)));
            std::thread::sleep(delay);
            eprintln!("kill {kill}: SIGKILL {delay:?} after the worker started processing");
            worker.kill();
            producer.join().expect("producer")
        });
        input.extend(chunk);
    }
    assert_eq!(final_run(&broker, &state, "3000", &[])["totals"], input.fold(), "the store equals the fold");
    assert_eq!(read_outputs(&broker, "totals", input.good.len(), 4), input.fold(), "the output topic equals the fold");
    read_errors(&broker, input.poison);
}

fn a_zombie_instance_is_fenced_and_stops_without_effect(kind: BrokerKind) {
    let (broker, dir) = setup(kind, 4);
    let mut input = Input::produce(&broker, 0, 10_000, Duration::ZERO);
    let zombie = Worker::start(&broker, &dir.path().join("zombie"), &[]);
    zombie.wait_running(Duration::from_secs(60));
    zombie.signal("STOP");
    // The group drops the stopped instance after its session timeout; the new
    // one takes every partition and fences the zombie's producers.
    let dump = dir.path().join("dump.json");
    let dump_text = dump.to_string_lossy().into_owned();
    let successor =
        Worker::start(&broker, &dir.path().join("successor"), &[("IDLE_EXIT_MS", "12000"), ("DUMP", &dump_text)]);
    input.extend(Input::produce(&broker, 10_000, 10_000, Duration::ZERO));
    successor.wait_running(Duration::from_secs(60));
    std::thread::sleep(Duration::from_secs(8));
    zombie.signal("CONT");
    input.extend(Input::produce(&broker, 20_000, 5_000, Duration::ZERO));
    let (status, log) = zombie.wait(Duration::from_secs(120));
    assert!(!status.success(), "the fenced zombie must stop with an error:\n{log}");
    let (status, log) = successor.wait(Duration::from_secs(120));
    assert!(status.success(), "successor failed:\n{log}");
    let totals = read_dump(&dump).remove("totals").expect("totals");
    assert_eq!(totals, input.fold());
    assert_eq!(read_outputs(&broker, "totals", input.good.len(), 4), input.fold());
    read_errors(&broker, input.poison);
}

fn when_one_of_two_instances_is_killed_the_other_takes_over_exactly(kind: BrokerKind) {
    let (broker, dir) = setup(kind, 8);
    let mut input = Input::produce(&broker, 0, 20_000, Duration::ZERO);
    let dump = dir.path().join("dump.json");
    let dump_text = dump.to_string_lossy().into_owned();
    let first = Worker::start(&broker, &dir.path().join("first"), &[]);
    let second = Worker::start(&broker, &dir.path().join("second"), &[("IDLE_EXIT_MS", "12000"), ("DUMP", &dump_text)]);
    // Keep records coming until both instances have processed some: the one
    // that joins the group first may well read the first 20 000 alone.
    let (mut from, started) = (20_000, Instant::now());
    let (mut first_running, mut second_running) = (false, false);
    while !(first_running && second_running) {
        first_running |= first.running.try_recv().is_ok();
        second_running |= second.running.try_recv().is_ok();
        for (running, worker, name) in [(first_running, &first, "first"), (second_running, &second, "second")] {
            assert!(
                running || started.elapsed() < Duration::from_secs(90),
                "{name} instance not running:\n{}",
                worker.log()
            );
        }
        input.extend(Input::produce(&broker, from, 2_000, Duration::ZERO));
        from += 2_000;
        std::thread::sleep(Duration::from_millis(200));
    }
    input.extend(Input::produce(&broker, from, 10_000, Duration::from_millis(50)));
    from += 10_000;
    first.kill();
    input.extend(Input::produce(&broker, from, 10_000, Duration::ZERO));
    let (status, log) = second.wait(Duration::from_secs(120));
    assert!(status.success(), "second instance failed:\n{log}");
    let totals = read_dump(&dump).remove("totals").expect("totals");
    assert_eq!(totals, input.fold(), "the survivor's store holds every partition's exact totals");
    assert_eq!(read_outputs(&broker, "totals", input.good.len(), 8), input.fold());
    read_errors(&broker, input.poison);
}

/// Three Apache Kafka brokers, two instances, 200 000 movements: mid-stream
/// one broker is killed with SIGKILL, then one instance; the instance comes
/// back, then the broker. Internal topics are replicated three times
/// (`min.insync.replicas` 2), so the runtime goes on with two brokers. A last
/// run over both instances' partitions ends with the stores and the output
/// topic equal to an independent fold.
#[test]
fn three_brokers_and_two_instances_each_lose_one_and_end_exact() {
    const PARTITIONS: i32 = 8;
    let (mut broker, dir) = setup_on(Broker::cluster(3), PARTITIONS);
    let (first_state, second_state) = (dir.path().join("first"), dir.path().join("second"));
    let mut input = Input::produce(&broker, 0, 100_000, Duration::ZERO);
    let first = Worker::start(&broker, &first_state, &[]);
    let second = Worker::start(&broker, &second_state, &[]);
    first.wait_running(Duration::from_secs(90));
    second.wait_running(Duration::from_secs(90));
    // 100 000 more arrive over about 10 s while the faults happen.
    let (first, more) = std::thread::scope(|scope| {
        let config = broker.client_config();
        let producer = scope.spawn(move || Input::produce_via(config, 100_000, 100_000, Duration::from_millis(200)));
        std::thread::sleep(Duration::from_secs(2));
        eprintln!("SIGKILL broker node 1");
        broker.kill_node(1);
        std::thread::sleep(Duration::from_secs(3));
        eprintln!("SIGKILL the first instance");
        first.kill();
        std::thread::sleep(Duration::from_secs(3));
        let first = Worker::start(&broker, &first_state, &[]);
        std::thread::sleep(Duration::from_secs(5));
        eprintln!("broker node 1 restarted");
        broker.restart_node(1);
        (first, producer.join().expect("producer"))
    });
    input.extend(more);
    broker.wait_ready(3);
    assert!(input.good.len() >= 190_000, "{} good movements", input.good.len());
    // Let both instances work on with three brokers, then stop them.
    std::thread::sleep(Duration::from_secs(5));
    first.kill();
    second.kill();
    // The group forgets both (static) members after their session timeout
    // (6 s): the last run then gets every partition.
    std::thread::sleep(Duration::from_secs(8));
    let stores = final_run(&broker, &first_state, "3000", &[]);
    assert_eq!(stores["totals"], input.fold(), "the store equals the fold");
    assert_eq!(read_outputs(&broker, "totals", input.good.len(), PARTITIONS), input.fold(), "the output topic");
    read_errors(&broker, input.poison);
}

fn a_wiped_state_directory_is_rebuilt_from_the_changelog(kind: BrokerKind) {
    let (broker, dir) = setup(kind, 4);
    let state = dir.path().join("state");
    let mut input = Input::produce(&broker, 0, 20_000, Duration::ZERO);
    assert_eq!(final_run(&broker, &state, "2000", &[])["totals"], input.fold());
    std::fs::remove_dir_all(&state).expect("wipe the state directory");
    input.extend(Input::produce(&broker, 20_000, 10_000, Duration::ZERO));
    assert_eq!(
        final_run(&broker, &state, "2000", &[])["totals"],
        input.fold(),
        "rebuilt from the changelog, then continued"
    );
    assert_eq!(read_outputs(&broker, "totals", input.good.len(), 4), input.fold());
}
