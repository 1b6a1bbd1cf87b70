//! `opsci-app run` on Apache Kafka when Kafka does what Kafka does: a broker
//! not up yet, a broker just started, a broker killed and restarted, the
//! network cut for 60 s, each node of a three-node cluster killed in turn.
//! In each case the app never exits, its stock per product (read back from
//! its changelog) equals an independent fold of the movements loaded, and
//! the outputs, read `read_committed`, hold every result exactly once: one
//! catalogue record per product loaded and per movement applied, one error
//! record per rejected movement.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use integration_tests::proxy::Mode;
use integration_tests::Broker;
use opsci_app::sources::{produce, KafkaConfig, Kind};
use opsci_app::topology::Topics;
use rdkafka::consumer::Consumer;
use rdkafka::Message;

const PARTITIONS: u32 = 3;
const PRODUCTS: u64 = 20;
const APP: &str = "faults";

/// The movements loaded so far, folded independently of the app.
struct Fold {
    levels: BTreeMap<u64, i64>,
    /// Products with at least one applied movement (the app stores a stock
    /// once a movement of the product was applied).
    touched: BTreeSet<u64>,
    applied: usize,
    /// Rejected by the app (unknown product, zero amount, overdraw), or by
    /// the loader (malformed rows): each on the error topic once.
    rejected: usize,
    next: u64,
    dir: PathBuf,
}

impl Fold {
    fn new(dir: &Path) -> Fold {
        let levels = (1..=PRODUCTS).map(|id| (id, (id as i64 * 7) % 40 + 5)).collect();
        Fold { levels, touched: BTreeSet::new(), applied: 0, rejected: 0, next: 0, dir: dir.to_path_buf() }
    }

    fn load_products(&self, kafka: &KafkaConfig) {
        let mut csv = String::from("name,description,stock_available,barcode\n");
        for (id, stock) in &self.levels {
            csv.push_str(&format!("Product {id},desc,{stock},{id:013}\n"));
        }
        let path = self.dir.join("products.csv");
        std::fs::write(&path, csv).expect("write products");
        let loaded = produce(kafka, Kind::Products, &path).expect("load products");
        assert_eq!((loaded.sent, loaded.rejected, loaded.failed), (PRODUCTS, 0, 0));
    }

    /// Loads `count` more movements, valid and not, and folds them.
    fn load_movements(&mut self, kafka: &KafkaConfig, count: u64) {
        let mut csv = String::from("id,amount,type\n");
        let mut malformed = 0;
        for i in self.next..self.next + count {
            let id = i * 7 % (PRODUCTS + 3) + 1; // ids PRODUCTS+1.. are unknown
            let amount = (i * 13 % 23) as i64; // zero now and then
            let out = i % 3 != 0;
            if i % 250 == 0 {
                csv.push_str(&format!("{id},{amount}x,IN\n"));
                malformed += 1;
                continue;
            }
            csv.push_str(&format!("{id},{amount},{}\n", if out { "OUT" } else { "IN" }));
            match self.levels.get_mut(&id) {
                Some(level) if amount > 0 && (!out || *level >= amount) => {
                    *level += if out { -amount } else { amount };
                    self.touched.insert(id);
                    self.applied += 1;
                }
                _ => self.rejected += 1,
            }
        }
        let path = self.dir.join(format!("stock-{}.csv", self.next));
        std::fs::write(&path, csv).expect("write movements");
        let loaded = produce(kafka, Kind::Stock, &path).expect("load movements");
        assert_eq!((loaded.rejected, loaded.failed), (malformed, 0));
        self.rejected += malformed as usize;
        self.next += count;
    }

    fn stock(&self) -> BTreeMap<u64, i64> {
        self.levels.iter().filter(|(id, _)| self.touched.contains(id)).map(|(id, l)| (*id, *l)).collect()
    }
}

/// What the app holds and wrote, read `read_committed` from the beginning
/// until `done` holds and nothing came for 2 s (or `within` passes).
struct Outputs {
    stock: BTreeMap<u64, i64>,
    catalogue: usize,
    errors: usize,
    /// When `done` first held (the 2 s after it only check that nothing more comes).
    done_at: Option<Instant>,
}

fn outputs(broker: &Broker, within: Duration, done: impl Fn(&Outputs) -> bool) -> Outputs {
    let settings = [("isolation.level", "read_committed")];
    let changelog = broker.reader(&format!("{APP}-stock-changelog"), PARTITIONS as i32, &settings);
    let catalogue = broker.reader("catalogue", PARTITIONS as i32, &settings);
    let errors = broker.reader("error", PARTITIONS as i32, &settings);
    let mut seen = Outputs { stock: BTreeMap::new(), catalogue: 0, errors: 0, done_at: None };
    let (deadline, mut last) = (Instant::now() + within, Instant::now());
    while Instant::now() < deadline && !(done(&seen) && last.elapsed() > Duration::from_secs(2)) {
        let mut any = false;
        while let Some(Ok(m)) = changelog.poll(Duration::from_millis(20)) {
            any = true;
            let key = std::str::from_utf8(m.key().unwrap_or_default()).ok().and_then(|k| k.parse().ok());
            let value = m.payload().and_then(|v| v.get(..8)).map(|v| i64::from_be_bytes(v.try_into().unwrap()));
            // Keys that are not product ids are the runtime's own records.
            if let (Some(key), Some(value)) = (key, value) {
                seen.stock.insert(key, value);
            }
        }
        while let Some(Ok(_)) = catalogue.poll(Duration::from_millis(20)) {
            (any, seen.catalogue) = (true, seen.catalogue + 1);
        }
        while let Some(Ok(_)) = errors.poll(Duration::from_millis(20)) {
            (any, seen.errors) = (true, seen.errors + 1);
        }
        if any {
            last = Instant::now();
            seen.done_at = done(&seen).then(|| seen.done_at.unwrap_or(last));
        }
    }
    seen
}

/// Checks the app's results against `fold`; returns how long they took to
/// come (until the last of them was read).
fn check(broker: &Broker, fold: &Fold, within: Duration) -> Duration {
    let started = Instant::now();
    let expected = fold.stock();
    let seen = outputs(broker, within, |o| {
        o.stock == expected && o.catalogue >= PRODUCTS as usize + fold.applied && o.errors >= fold.rejected
    });
    let took = seen.done_at.map_or_else(|| started.elapsed(), |done| done - started);
    let changelog = format!("{APP}-stock-changelog");
    assert_eq!(seen.stock, expected, "stock per product; {}; {}", visibility(broker, &changelog), leaders(broker));
    assert_eq!(
        seen.catalogue,
        PRODUCTS as usize + fold.applied,
        "one catalogue record per product and movement applied; {}",
        visibility(broker, "catalogue")
    );
    assert_eq!(seen.errors, fold.rejected, "one error record per rejected movement");
    took
}

/// What readers of `topic` get, per partition: records read committed,
/// records read uncommitted, high watermark (for a failing check's message).
fn visibility(broker: &Broker, topic: &str) -> String {
    let count = |isolation: &str| {
        let reader = broker.reader(topic, PARTITIONS as i32, &[("isolation.level", isolation)]);
        let mut counts = [0u64; PARTITIONS as usize];
        let mut last = Instant::now();
        while last.elapsed() < Duration::from_secs(3) {
            if let Some(Ok(m)) = reader.poll(Duration::from_millis(100)) {
                counts[m.partition() as usize] += 1;
                last = Instant::now();
            }
        }
        (reader, counts)
    };
    let (reader, committed) = count("read_committed");
    let (_, uncommitted) = count("read_uncommitted");
    let ends: Vec<i64> = (0..PARTITIONS as i32)
        .map(|p| reader.fetch_watermarks(topic, p, Duration::from_secs(10)).map_or(-1, |(_, high)| high))
        .collect();
    format!(
        "{topic} per partition: read committed {committed:?}, uncommitted {uncommitted:?}, high watermarks {ends:?}"
    )
}

/// The partitions that lack a leader or replicas in sync, per topic (for a
/// failing check's message: what the cluster could not serve).
fn leaders(broker: &Broker) -> String {
    let client: rdkafka::consumer::BaseConsumer = broker.client_config().create().expect("metadata client");
    let Ok(metadata) = rdkafka::consumer::Consumer::fetch_metadata(&client, None, Duration::from_secs(10)) else {
        return "no metadata".to_string();
    };
    let mut degraded = Vec::new();
    for topic in metadata.topics() {
        for p in topic.partitions().iter().filter(|p| p.leader() < 0 || p.isr().len() < p.replicas().len()) {
            degraded.push(format!("{}/{} leader {} isr {:?}", topic.name(), p.id(), p.leader(), p.isr()));
        }
    }
    format!("partitions without a leader or with replicas out of sync: {degraded:?}")
}

/// [`check`], printing the end of `app`'s log if it fails.
fn check_app(app: &App, broker: &Broker, fold: &Fold, within: Duration) -> Duration {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(broker, fold, within))).unwrap_or_else(|panic| {
        let log = app.log();
        // The runtime's lines: librdkafka's own repeat connection errors.
        let tail: Vec<&str> = log.lines().rev().filter(|l| !l.contains("librdkafka")).take(150).collect();
        eprintln!(
            "the app's log, last lines but librdkafka's:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
        std::panic::resume_unwind(panic)
    })
}

/// A running `opsci-app run`, its log in a file.
struct App {
    child: Child,
    log: PathBuf,
}

impl App {
    fn start(bootstrap: &str, dir: &Path) -> App {
        let log = dir.join(format!("app-{}.log", std::process::id()));
        let file = std::fs::File::create(&log).expect("app log");
        let child = Command::new(env!("CARGO_BIN_EXE_opsci-app"))
            .args(["run", "--application-id", APP, "--commit-interval-ms", "50"])
            .args(["--partitions", &PARTITIONS.to_string()])
            .env("KAFKA_BROKERS", bootstrap)
            .env("HTTP_ADDR", "127.0.0.1:0")
            .env("STATE_DIR", dir.join("state"))
            .env_remove("STRAPI_URL")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("start opsci-app");
        App { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Panics if the app has exited.
    fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().expect("wait") {
            panic!("the app exited ({status}):\n{}", self.log());
        }
    }

    /// Stops the app with SIGTERM; it must stop cleanly.
    fn stop(mut self) {
        self.assert_running();
        Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().expect("kill -TERM");
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.child.try_wait().expect("wait").is_none() {
            assert!(Instant::now() < deadline, "the app did not stop on SIGTERM:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(100));
        }
        let status = self.child.wait().expect("wait");
        assert!(status.success(), "the app failed ({status}):\n{}", self.log());
    }
}

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The app's settings for the loader, once the app has created its topics
/// (a producer would otherwise create them with one partition).
fn kafka_config(broker: &Broker) -> KafkaConfig {
    let consumer: rdkafka::consumer::BaseConsumer = broker.client_config().create().expect("metadata client");
    let deadline = Instant::now() + Duration::from_secs(120);
    let created = |topic: &str| {
        rdkafka::consumer::Consumer::fetch_metadata(&consumer, Some(topic), Duration::from_secs(5)).is_ok_and(|m| {
            m.topics().iter().any(|t| t.error().is_none() && t.partitions().len() == PARTITIONS as usize)
        })
    };
    while !(created("product") && created("stock") && created("error")) {
        assert!(Instant::now() < deadline, "the app did not create its topics within 120 s");
        std::thread::sleep(Duration::from_millis(200));
    }
    KafkaConfig { brokers: broker.bootstrap().to_string(), topics: Topics::default(), properties: Vec::new() }
}

/// Sleeps `total`, checking every second that the app still runs.
fn watch(app: &mut App, total: Duration) {
    let until = Instant::now() + total;
    while Instant::now() < until {
        app.assert_running();
        std::thread::sleep(Duration::from_secs(1).min(until - Instant::now()));
    }
}

#[test]
fn the_app_started_with_a_fresh_broker_never_exits() {
    for start in 0..10 {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut broker = Broker::not_started();
        broker.start_nodes();
        // As soon as the broker listens: before it is registered, before any
        // topic exists (the app creates them).
        let mut app = App::start(broker.bootstrap(), dir.path());
        broker.wait_ready(1);
        let kafka = kafka_config(&broker);
        let mut fold = Fold::new(dir.path());
        watch(&mut app, Duration::from_secs(2));
        fold.load_products(&kafka);
        fold.load_movements(&kafka, 300);
        let took = check_app(&app, &broker, &fold, Duration::from_secs(60));
        eprintln!("start {start}: results complete {took:?} after the check began");
        app.stop();
    }
}

#[test]
fn the_app_started_before_its_broker_waits_for_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut broker = Broker::not_started();
    let mut app = App::start(broker.bootstrap(), dir.path());
    watch(&mut app, Duration::from_secs(15));
    assert!(app.log().contains("waiting for Kafka at"), "the wait is logged:\n{}", app.log());
    let started = Instant::now();
    broker.start_nodes();
    broker.wait_ready(1);
    let kafka = kafka_config(&broker);
    let mut fold = Fold::new(dir.path());
    fold.load_products(&kafka);
    fold.load_movements(&kafka, 500);
    let checking = Instant::now();
    let took = check_app(&app, &broker, &fold, Duration::from_secs(90));
    eprintln!("results complete {:?} after the broker started", checking + took - started);
    app.stop();
}

#[test]
fn the_app_survives_its_broker_killed_and_restarted_mid_stream() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut broker = Broker::start();
    let mut app = App::start(broker.bootstrap(), dir.path());
    let kafka = kafka_config(&broker);
    let mut fold = Fold::new(dir.path());
    fold.load_products(&kafka);
    fold.load_movements(&kafka, 2_000);
    // Mid-stream: the app is still folding the movements just loaded.
    std::thread::sleep(Duration::from_millis(300));
    broker.kill_node(0);
    watch(&mut app, Duration::from_secs(8));
    let restarted = Instant::now();
    broker.restart_node(0);
    broker.wait_ready(1);
    fold.load_movements(&kafka, 2_000);
    let checking = Instant::now();
    let took = check_app(&app, &broker, &fold, Duration::from_secs(120));
    eprintln!("results complete {:?} after the broker restarted ({took:?} after loading)", checking + took - restarted);
    app.stop();
}

#[test]
fn the_app_survives_a_60_s_network_cut() {
    let dir = tempfile::tempdir().expect("temp dir");
    let broker = Broker::behind_proxy();
    let mut app = App::start(broker.bootstrap(), dir.path());
    let kafka = kafka_config(&broker);
    let mut fold = Fold::new(dir.path());
    fold.load_products(&kafka);
    fold.load_movements(&kafka, 2_000);
    std::thread::sleep(Duration::from_millis(300));
    // Every connection through the proxy holds its bytes: clients see
    // timeouts, not refusals.
    broker.proxy(0).set(Mode::BlackHole);
    watch(&mut app, Duration::from_secs(60));
    broker.proxy(0).set(Mode::Forward);
    let restored = Instant::now();
    fold.load_movements(&kafka, 2_000);
    let checking = Instant::now();
    let took = check_app(&app, &broker, &fold, Duration::from_secs(180));
    eprintln!("results complete {:?} after the network came back", checking + took - restored);
    app.stop();
}

/// Each node of three killed in turn, mid-stream, then restarted: the two
/// others go on (leaders and the controller move to them), and the results
/// are complete before the node comes back. A failure prints the app's
/// log, what readers see of the changelog, and the partitions the cluster
/// could not serve.
#[test]
fn the_app_survives_each_node_of_a_three_node_cluster_killed_in_turn() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut broker = Broker::cluster(3);
    let mut app = App::start(broker.bootstrap(), dir.path());
    let kafka = kafka_config(&broker);
    let mut fold = Fold::new(dir.path());
    fold.load_products(&kafka);
    // The app is at work (its catalogue complete) before the first kill.
    check_app(&app, &broker, &fold, Duration::from_secs(60));
    // Each node in turn leads partitions and, once, the controller quorum.
    for node in 0..3 {
        fold.load_movements(&kafka, 1_500);
        std::thread::sleep(Duration::from_millis(300));
        broker.kill_node(node);
        let killed = Instant::now();
        // The two others go on: the movements loaded meanwhile are folded.
        // The loader's last acknowledgement says when the cluster has moved
        // the leaders off the dead node.
        fold.load_movements(&kafka, 1_500);
        let answered = killed.elapsed();
        let took = check_app(&app, &broker, &fold, Duration::from_secs(120));
        eprintln!("node {node} killed: the cluster answered {answered:?} after the kill (the loader's acks), results complete {took:?} after that");
        app.assert_running();
        broker.restart_node(node);
        broker.wait_ready(3);
    }
    fold.load_movements(&kafka, 1_500);
    let took = check_app(&app, &broker, &fold, Duration::from_secs(180));
    eprintln!("all nodes back: results complete {took:?} after loading");
    app.stop();
}
