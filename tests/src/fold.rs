//! The harness of the exactly-once tests: fold-worker processes
//! (`src/bin/fold-worker.rs`) to start, kill and restart, the movements they
//! read with an independent fold of them, and readers of what the workers
//! wrote.
//!
//! On Apache Kafka, outputs are read `read_committed` as a Kafka Streams
//! user reads them and every result must be there exactly once; on nisshi,
//! which shows aborted records, outputs are read uncommitted and
//! de-duplicated by provenance, copies of one output having to be identical.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::message::{BorrowedMessage, Headers as _};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;
use rdkafka::Message;
use stream_core::dead_letter;
use stream_core::runtime::provenance;

use crate::{Broker, BrokerKind};

/// How many keys the movements spread over.
pub const KEYS: u64 = 500;

/// What a worker's stores held when it stopped: store → key → value.
pub type Dump = BTreeMap<String, BTreeMap<String, i64>>;

/// The fold-worker binary, built beside the test binaries (in `deps/`).
fn binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let dir = exe.parent().and_then(Path::parent).expect("the target directory");
    let binary = dir.join("fold-worker");
    assert!(binary.exists(), "{} is not built (cargo test builds it)", binary.display());
    binary
}

/// A fold-worker process.
pub struct Worker {
    child: Child,
    /// Gets `()` once the worker has processed its first record.
    pub running: mpsc::Receiver<()>,
    log: PathBuf,
}

impl Worker {
    /// Starts a worker on `broker` with its state in `state` and the extra
    /// environment `env`; its standard error goes to a log beside `state`.
    pub fn start(broker: &Broker, state: &Path, env: &[(&str, &str)]) -> Worker {
        let log = state.with_extension(format!("{}.log", nanos()));
        let file = std::fs::File::create(&log).expect("worker log");
        let mut child = Command::new(binary())
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
    pub fn wait_running(&self, within: Duration) {
        self.running.recv_timeout(within).unwrap_or_else(|_| panic!("worker not running:\n{}", self.log()));
    }

    /// What the worker has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends it `signal` (`STOP`, `CONT`, …).
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill").arg(format!("-{signal}")).arg(self.child.id().to_string()).status();
        assert!(status.expect("kill").success(), "kill -{signal}");
    }

    /// Kills it with SIGKILL.
    pub fn kill(mut self) {
        self.child.kill().expect("SIGKILL");
        let _ = self.child.wait();
    }

    /// Waits until it stops; kills it and fails after `within`.
    pub fn wait(mut self, within: Duration) -> (ExitStatus, String) {
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
pub struct Random(u64);

impl Random {
    /// A generator seeded from the clock; the seed is printed.
    #[allow(clippy::new_without_default)]
    pub fn new() -> Random {
        let seed = (nanos() as u64) | 1;
        eprintln!("random seed {seed}");
        Random(seed)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// The input: movements keyed `product-N` with JSON integer amounts, and
/// one poison record (bad JSON or a wrong type) every 499.
pub struct Input {
    /// The movements that decode, in the order they were produced.
    pub good: Vec<(String, i64)>,
    /// How many records do not decode.
    pub poison: u64,
}

impl Input {
    /// Produces movements `from..from + count` to `movements`, pausing for
    /// `pace` after every 2 000.
    pub fn produce(broker: &Broker, from: u64, count: u64, pace: Duration) -> Input {
        Input::produce_via(broker.client_config(), from, count, pace)
    }

    /// [`Input::produce`] with the client configuration `config` (from
    /// [`Broker::client_config`]); idempotent, so that a broker failing
    /// over adds no duplicate.
    pub fn produce_via(mut config: ClientConfig, from: u64, count: u64, pace: Duration) -> Input {
        let producer: BaseProducer =
            config.set("partitioner", "murmur2_random").set("enable.idempotence", "true").create().expect("producer");
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

    /// Produces movements from `from` on, 500 every 50 ms, until `stop`;
    /// returns them and the number of the next movement.
    pub fn produce_until(broker: &Broker, from: u64, stop: &AtomicBool) -> (Input, u64) {
        let mut input = Input { good: Vec::new(), poison: 0 };
        let mut next = from;
        while !stop.load(Ordering::SeqCst) {
            input.extend(Input::produce(broker, next, 500, Duration::ZERO));
            next += 500;
            std::thread::sleep(Duration::from_millis(50));
        }
        (input, next)
    }

    /// Adds `other`, produced after `self`.
    pub fn extend(&mut self, other: Input) {
        self.good.extend(other.good);
        self.poison += other.poison;
    }

    /// The total of each key.
    pub fn fold(&self) -> BTreeMap<String, i64> {
        self.good.iter().fold(BTreeMap::new(), |mut totals, (key, amount)| {
            *totals.entry(key.clone()).or_insert(0) += amount;
            totals
        })
    }

    /// The number of movements of each key.
    pub fn counts(&self) -> BTreeMap<String, i64> {
        self.good.iter().fold(BTreeMap::new(), |mut counts, (key, _)| {
            *counts.entry(key.clone()).or_insert(0) += 1;
            counts
        })
    }
}

fn header(message: &BorrowedMessage<'_>, name: &str) -> Option<String> {
    let headers = message.headers()?;
    let header = headers.iter().find(|h| h.key == name)?;
    Some(String::from_utf8_lossy(header.value?).into_owned())
}

/// Reads output `topic` (8-byte integers) until one output per good input
/// is there, each identified by its provenance. On Apache Kafka each
/// input's output must be there once; on nisshi, copies of one output (from
/// abandoned commits it shows) must be identical. Returns the latest value
/// per key.
pub fn read_outputs(broker: &Broker, topic: &str, expected: usize, partitions: i32) -> BTreeMap<String, i64> {
    let kind = broker.kind();
    let consumer = broker.reader(topic, partitions, &[("isolation.level", kind.output_isolation())]);
    let mut outputs: BTreeMap<(String, String), (String, i64)> = BTreeMap::new();
    let mut latest = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while outputs.len() < expected && Instant::now() < deadline {
        let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) else { continue };
        let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
        let value = i64::from_be_bytes(m.payload().unwrap_or_default().try_into().expect("an 8-byte integer"));
        let source = (
            header(&m, provenance::PARTITION).expect("provenance partition"),
            header(&m, provenance::OFFSET).expect("provenance offset"),
        );
        if let Some(previous) = outputs.insert(source.clone(), (key.clone(), value)) {
            assert!(!kind.hides_aborted_records(), "two outputs in {topic} for input {source:?} on Apache Kafka");
            assert_eq!(previous, (key.clone(), value), "two different outputs in {topic} for input {source:?}");
        }
        latest.insert(key, value);
    }
    assert_eq!(outputs.len(), expected, "one output in {topic} per input record");
    latest
}

/// Reads the error topic: each poison record once (by source position), with its headers.
pub fn read_errors(broker: &Broker, expected: u64) {
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

/// A broker of `kind` with the topics of both topologies, `movements` and
/// the outputs with `partitions` partitions, and a temporary directory.
pub fn setup(kind: BrokerKind, partitions: i32) -> (Broker, tempfile::TempDir) {
    setup_on(Broker::start_kind(kind), partitions)
}

/// [`setup`] on a broker already started (a cluster, say).
pub fn setup_on(broker: Broker, partitions: i32) -> (Broker, tempfile::TempDir) {
    for topic in ["movements", "totals", "counts", "echo"] {
        broker.create_topic(topic, partitions);
    }
    broker.create_topic("errors", 1);
    (broker, tempfile::tempdir().expect("temp dir"))
}

/// Reads what a worker dumped at `path`.
pub fn read_dump(path: &Path) -> Dump {
    serde_json::from_slice(&std::fs::read(path).expect("dump")).expect("dump JSON")
}

/// Runs a last worker (with the extra environment `env`) until it is idle
/// for `idle_ms` and returns its stores' contents.
pub fn final_run(broker: &Broker, state: &Path, idle_ms: &str, env: &[(&str, &str)]) -> Dump {
    let dump = state.with_extension("dump.json");
    let dump_text = dump.to_string_lossy().into_owned();
    let mut env = env.to_vec();
    env.extend([("IDLE_EXIT_MS", idle_ms), ("DUMP", &dump_text)]);
    let worker = Worker::start(broker, state, &env);
    let (status, log) = worker.wait(Duration::from_secs(180));
    assert!(status.success(), "final worker failed ({status}):\n{log}");
    read_dump(&dump)
}
