//! Exactly-once on real brokers, proven with processes: the fold worker
//! (`src/bin/fold-worker.rs`) is killed with SIGKILL, stopped and resumed as a
//! zombie, run twice side by side, and restarted with its state directory
//! wiped. Each time, the final table (the worker's store, and the output
//! topic read back) equals an independent fold of the input, and every
//! poison record is on the error topic once.
//!
//! Each test runs on Apache Kafka (`kafka::`), where the outputs are read
//! `read_committed` as a Kafka Streams user reads them and every result must
//! be there exactly once, and on nisshi (`nisshi::`), which shows aborted
//! records: there outputs are read uncommitted and de-duplicated by
//! provenance, copies of one output having to be identical.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use integration_tests::{on_each_broker, Broker, BrokerKind};
use rdkafka::message::{BorrowedMessage, Headers as _};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::Message;
use stream_core::dead_letter;
use stream_core::runtime::provenance;

const KEYS: u64 = 500;

/// A fold-worker process.
struct Worker {
    child: Child,
    running: mpsc::Receiver<()>,
    log: PathBuf,
}

impl Worker {
    fn start(broker: &Broker, state: &Path, env: &[(&str, &str)]) -> Worker {
        let log = state.with_extension(format!("{}.log", nanos()));
        let file = std::fs::File::create(&log).expect("worker log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_fold-worker"))
            .env("BOOTSTRAP", broker.bootstrap())
            .env("STATE_DIR", state)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(file)
            .spawn()
            .expect("start fold-worker");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, running) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line == "running" {
                    let _ = tx.send(());
                }
            }
        });
        Worker { child, running, log }
    }

    /// Waits until the worker has processed records.
    fn wait_running(&self, within: Duration) {
        self.running.recv_timeout(within).unwrap_or_else(|_| panic!("worker not running:\n{}", self.log()));
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill").arg(format!("-{signal}")).arg(self.child.id().to_string()).status();
        assert!(status.expect("kill").success(), "kill -{signal}");
    }

    fn kill(mut self) {
        self.child.kill().expect("SIGKILL");
        let _ = self.child.wait();
    }

    fn wait(mut self, within: Duration) -> (ExitStatus, String) {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return (status, self.log());
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("worker did not stop within {within:?}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn nanos() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos())
}

/// A small deterministic generator (xorshift), seeded from the clock and printed.
struct Random(u64);

impl Random {
    fn new() -> Random {
        let seed = (nanos() as u64) | 1;
        eprintln!("random seed {seed}");
        Random(seed)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// The input: movements keyed `product-N` with JSON integer amounts, and
/// one poison record (bad JSON or a wrong type) every 499.
struct Input {
    good: Vec<(String, i64)>,
    poison: u64,
}

impl Input {
    fn produce(broker: &Broker, from: u64, count: u64, pace: Duration) -> Input {
        let producer: BaseProducer =
            broker.client_config().set("partitioner", "murmur2_random").create().expect("producer");
        let mut input = Input { good: Vec::new(), poison: 0 };
        for i in from..from + count {
            let key = format!("product-{}", i % KEYS);
            let value = if i % 499 == 0 {
                input.poison += 1;
                if i % 2 == 0 {
                    "{not json".to_string()
                } else {
                    "\"seven\"".to_string()
                }
            } else {
                let amount = (i % 23) as i64 - 11;
                input.good.push((key.clone(), amount));
                amount.to_string()
            };
            let record = BaseRecord::to("movements").key(&key).payload(&value);
            producer.send(record).expect("send");
            producer.poll(Duration::ZERO);
            if i % 2_000 == 1_999 {
                std::thread::sleep(pace);
            }
        }
        producer.flush(Duration::from_secs(30)).expect("flush");
        input
    }

    fn extend(&mut self, other: Input) {
        self.good.extend(other.good);
        self.poison += other.poison;
    }

    fn fold(&self) -> BTreeMap<String, i64> {
        self.good.iter().fold(BTreeMap::new(), |mut totals, (key, amount)| {
            *totals.entry(key.clone()).or_insert(0) += amount;
            totals
        })
    }
}

fn header(message: &BorrowedMessage<'_>, name: &str) -> Option<String> {
    let headers = message.headers()?;
    let header = headers.iter().find(|h| h.key == name)?;
    Some(String::from_utf8_lossy(header.value?).into_owned())
}

/// Reads the `totals` topic until one output per good input is there. On
/// Apache Kafka each input's output must be there once; on nisshi, copies
/// of one output (from abandoned commits it shows) must be identical.
/// Returns the latest total per key.
fn read_totals(broker: &Broker, expected: usize, partitions: i32) -> BTreeMap<String, i64> {
    let kind = broker.kind();
    let consumer = broker.reader("totals", partitions, &[("isolation.level", kind.output_isolation())]);
    let mut outputs: BTreeMap<(String, String), (String, i64)> = BTreeMap::new();
    let mut latest = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while outputs.len() < expected && Instant::now() < deadline {
        let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) else { continue };
        let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
        let total = i64::from_be_bytes(m.payload().unwrap_or_default().try_into().expect("8-byte total"));
        let source = (
            header(&m, provenance::PARTITION).expect("provenance partition"),
            header(&m, provenance::OFFSET).expect("provenance offset"),
        );
        if let Some(previous) = outputs.insert(source.clone(), (key.clone(), total)) {
            assert!(!kind.hides_aborted_records(), "two outputs for input {source:?} on Apache Kafka");
            assert_eq!(previous, (key.clone(), total), "two different outputs for input {source:?}");
        }
        latest.insert(key, total);
    }
    assert_eq!(outputs.len(), expected, "one output per input record");
    latest
}

/// Reads the error topic: each poison record once (by source position), with its headers.
fn read_errors(broker: &Broker, expected: u64) {
    let kind = broker.kind();
    let consumer = broker.reader("errors", 1, &[("isolation.level", kind.output_isolation())]);
    let mut sources = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while (sources.len() as u64) < expected && Instant::now() < deadline {
        let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) else { continue };
        assert_eq!(header(&m, dead_letter::STAGE).as_deref(), Some("deserialization"));
        assert!(header(&m, dead_letter::MESSAGE).is_some_and(|msg| !msg.is_empty()));
        assert_eq!(header(&m, dead_letter::TOPIC).as_deref(), Some("movements"));
        let fresh = sources.insert((header(&m, dead_letter::PARTITION), header(&m, dead_letter::OFFSET)));
        assert!(fresh || !kind.hides_aborted_records(), "a poison record twice on the error topic of Apache Kafka");
    }
    assert_eq!(sources.len() as u64, expected, "every poison record on the error topic");
}

fn setup(kind: BrokerKind, partitions: i32) -> (Broker, tempfile::TempDir) {
    let broker = Broker::start_kind(kind);
    broker.create_topic("movements", partitions);
    broker.create_topic("totals", partitions);
    broker.create_topic("errors", 1);
    (broker, tempfile::tempdir().expect("temp dir"))
}

/// Runs a last worker until it is idle and returns its store's contents.
fn final_run(broker: &Broker, state: &Path, idle_ms: &str) -> BTreeMap<String, i64> {
    let dump = state.with_extension("dump.json");
    let dump_text = dump.to_string_lossy().into_owned();
    let worker = Worker::start(broker, state, &[("IDLE_EXIT_MS", idle_ms), ("DUMP", &dump_text)]);
    let (status, log) = worker.wait(Duration::from_secs(180));
    assert!(status.success(), "final worker failed ({status}):\n{log}");
    serde_json::from_slice(&std::fs::read(&dump).expect("dump")).expect("dump JSON")
}

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
    assert_eq!(final_run(&broker, &state, "3000"), input.fold(), "the store equals the fold");
    assert_eq!(read_totals(&broker, input.good.len(), 4), input.fold(), "the output topic equals the fold");
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
    let totals: BTreeMap<String, i64> = serde_json::from_slice(&std::fs::read(&dump).expect("dump")).expect("JSON");
    assert_eq!(totals, input.fold());
    assert_eq!(read_totals(&broker, input.good.len(), 4), input.fold());
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
    let totals: BTreeMap<String, i64> = serde_json::from_slice(&std::fs::read(&dump).expect("dump")).expect("JSON");
    assert_eq!(totals, input.fold(), "the survivor's store holds every partition's exact totals");
    assert_eq!(read_totals(&broker, input.good.len(), 8), input.fold());
    read_errors(&broker, input.poison);
}

fn a_wiped_state_directory_is_rebuilt_from_the_changelog(kind: BrokerKind) {
    let (broker, dir) = setup(kind, 4);
    let state = dir.path().join("state");
    let mut input = Input::produce(&broker, 0, 20_000, Duration::ZERO);
    assert_eq!(final_run(&broker, &state, "2000"), input.fold());
    std::fs::remove_dir_all(&state).expect("wipe the state directory");
    input.extend(Input::produce(&broker, 20_000, 10_000, Duration::ZERO));
    assert_eq!(final_run(&broker, &state, "2000"), input.fold(), "rebuilt from the changelog, then continued");
    assert_eq!(read_totals(&broker, input.good.len(), 4), input.fold());
}
