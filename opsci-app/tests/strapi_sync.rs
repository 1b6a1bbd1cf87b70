//! The whole OPSCI pipeline against a real broker and a real Strapi:
//! 200 products, 200 events and 2 400 stock movements (unknown products,
//! zero and negative amounts, bad types, overdraws, malformed rows among
//! them) are loaded with `opsci-app produce`'s loader while `opsci-app run`
//! runs. Afterwards Strapi's products equal an independent fold of the CSV
//! files (stock and status), each once; Strapi holds every event once (the
//! loaded ones and the status changes); every rejected movement is on the
//! error topic with its reason. The same with the app killed by SIGKILL
//! mid-stream and restarted, and with Strapi stopped during part of a run.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use integration_tests::opsci::{error_topic, strapi_catalogue, strapi_events, Dataset, Lcg, Size};
use integration_tests::strapi::Strapi;
use integration_tests::Broker;
use opsci_app::sources::{produce, KafkaConfig, Kind};
use opsci_app::topology::Topics;
use serde_json::Value;

const PARTITIONS: i32 = 3;
const PRODUCTS: u64 = 200;
const EVENTS: u64 = 200;
const CHUNKS: usize = 6;
const SIZE: Size = Size { products: PRODUCTS, unknown: 10, events: EVENTS, movements: 2_400, chunks: CHUNKS };

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

/// `opsci-app run` as a child process.
struct App {
    child: Child,
    http: u16,
}

impl App {
    fn start(broker: &Broker, strapi: &Strapi, state: &Path, http: u16) -> App {
        // The event sync's log (how it found where it stopped) goes to a file
        // beside the state directory; warnings also.
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(state.with_extension("log")).expect("app log");
        let child = Command::new(env!("CARGO_BIN_EXE_opsci-app"))
            .args(["run", "--application-id", "sync-test", "--commit-interval-ms", "100"])
            .env("KAFKA_BROKERS", broker.bootstrap())
            .env("STRAPI_URL", strapi.url())
            .env("STRAPI_TOKEN", strapi.token())
            .env("STATE_DIR", state)
            .env("HTTP_ADDR", format!("127.0.0.1:{http}"))
            .env("PARTITIONS", PARTITIONS.to_string())
            .env("RUST_LOG", "warn,opsci_app::strapi::events=info")
            .env("LOG_FORMAT", "json")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start opsci-app");
        App { child, http }
    }

    fn get(&self, path: &str) -> Option<Value> {
        let mut response = ureq::get(&format!("http://127.0.0.1:{}{path}", self.http)).call().ok()?;
        serde_json::from_str(&response.body_mut().read_to_string().ok()?).ok()
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits for a clean exit.
    fn stop(mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let status = self.child.wait().expect("wait for opsci-app");
        assert!(status.success(), "opsci-app did not stop cleanly: {status}");
    }
}

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn setup() -> (Broker, Strapi, KafkaConfig, Dataset, tempfile::TempDir) {
    let broker = Broker::start();
    for topic in ["product", "stock", "event", "error", "catalogue"] {
        broker.create_topic(topic, PARTITIONS);
    }
    let strapi = Strapi::start();
    let kafka =
        KafkaConfig { brokers: broker.bootstrap().to_string(), topics: Topics::default(), properties: Vec::new() };
    (broker, strapi, kafka, Dataset::generate(SIZE), tempfile::tempdir().expect("temp dir"))
}

fn load(kafka: &KafkaConfig, dir: &Path, kind: Kind, name: &str, text: &str) {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write CSV");
    let summary = produce(kafka, kind, &path).expect("produce");
    assert_eq!(summary.failed, 0, "{name}: {summary:?}");
}

/// Loads the products and waits until the running app holds all of them.
fn load_products(kafka: &KafkaConfig, dir: &Path, data: &Dataset, app: &App) {
    load(kafka, dir, Kind::Products, "products.csv", &data.products);
    wait_until("the app holds every product", Duration::from_secs(120), || {
        app.get("/products").and_then(|p| p.as_array().map(Vec::len)) == Some(PRODUCTS as usize)
    });
}

fn check(broker: &Broker, strapi: &Strapi, data: &Dataset) {
    wait_until("Strapi's catalogue and events equal the fold", Duration::from_secs(300), || {
        strapi_catalogue(strapi).0 == data.catalogue && strapi_events(strapi) == data.events_expected
    });
    // Nothing more arrives later, and nothing is there twice.
    std::thread::sleep(Duration::from_secs(2));
    let (catalogue, counts) = strapi_catalogue(strapi);
    assert_eq!(catalogue, data.catalogue);
    assert!(counts.values().all(|n| *n == 1), "duplicate products in Strapi: {counts:?}");
    assert_eq!(strapi_events(strapi), data.events_expected);
    let (codes, rows) = error_topic(broker, PARTITIONS);
    assert_eq!(codes, data.rejections, "rejections on the error topic, by reason");
    assert_eq!(rows, data.malformed_rows, "rows rejected by the loader");
}

fn run(kills: usize) {
    let (broker, strapi, kafka, data, dir) = setup();
    let state = dir.path().join("state");
    let http = free_port();
    let mut app = App::start(&broker, &strapi, &state, http);
    load_products(&kafka, dir.path(), &data, &app);
    load(&kafka, dir.path(), Kind::Events, "events.csv", &data.events);
    let mut rng = Lcg(7);
    for (n, chunk) in data.stock.iter().enumerate() {
        load(&kafka, dir.path(), Kind::Stock, &format!("stock-{n}.csv"), chunk);
        if n < kills {
            // Somewhere while the chunk is folded and Strapi is written.
            std::thread::sleep(Duration::from_millis(100 + rng.next(1500)));
            app.kill();
            app = App::start(&broker, &strapi, &state, http);
        }
    }
    check(&broker, &strapi, &data);
    app.stop();

    // Each start found where the event sync stopped with a few lookups per
    // partition, not by listing Strapi's hundreds of events.
    let log = std::fs::read_to_string(state.with_extension("log")).expect("app log");
    let reads: Vec<Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .map(|l| l["fields"].clone())
        .filter(|f| f["message"] == "read the events already in Strapi")
        .collect();
    if kills > 0 {
        assert!(reads.iter().any(|r| r["partitions"] != 0), "a restart found events in Strapi:\n{log}");
    }
    // Per partition of the event topic: its last event, the source topics
    // (one, and the lookup that finds no other), the last event of each
    // source partition (`PARTITIONS`, and the lookup that finds no other).
    let per_partition = 1 + 2 + PARTITIONS as u64 + 1;
    for read in reads {
        assert_eq!(read["how"], "by position", "{read}");
        let requests = read["requests"].as_u64().unwrap_or(u64::MAX);
        assert!(requests <= per_partition * PARTITIONS as u64, "{requests} requests: {read}");
        println!("{read}");
    }
}

#[test]
fn strapi_ends_equal_to_an_independent_fold_of_the_csv_files() {
    let data = Dataset::generate(SIZE);
    assert!(data.rejections.len() == 4 && data.rejections.values().all(|n| *n > 5), "{:?}", data.rejections);
    assert!(data.events_expected.len() > EVENTS as usize + 50, "enough status changes");
    run(0);
}

#[test]
fn killed_with_sigkill_mid_stream_and_restarted_the_result_is_the_same() {
    run(CHUNKS - 1);
}

#[test]
fn while_strapi_is_down_the_fold_goes_on_and_strapi_catches_up() {
    let (broker, mut strapi, kafka, data, dir) = setup();
    let app = App::start(&broker, &strapi, &dir.path().join("state"), free_port());
    load_products(&kafka, dir.path(), &data, &app);
    load(&kafka, dir.path(), Kind::Events, "events.csv", &data.events);
    load(&kafka, dir.path(), Kind::Stock, "stock-0.csv", &data.stock[0]);
    strapi.stop();
    for (n, chunk) in data.stock.iter().enumerate().skip(1) {
        load(&kafka, dir.path(), Kind::Stock, &format!("stock-{n}.csv"), chunk);
    }
    // The fold is not held back: the app's own state reaches the result.
    wait_until("the app's state equals the fold while Strapi is down", Duration::from_secs(120), || {
        let Some(products) = app.get("/products") else { return false };
        let state: BTreeMap<String, (i64, String)> = products
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                let barcode = p["product"]["barcode"].as_str().unwrap_or_default().to_string();
                (barcode, (p["stock"].as_i64().unwrap_or(-1), p["status"].as_str().unwrap_or_default().to_string()))
            })
            .collect();
        state == data.catalogue
    });
    let metrics = ureq::get(&format!("http://127.0.0.1:{}/metrics", app.http))
        .call()
        .and_then(|mut r| r.body_mut().read_to_string())
        .expect("metrics");
    let failed = metrics.lines().find(|l| l.starts_with("opsci_strapi_requests_total{outcome=\"error\"}"));
    assert!(failed.is_some_and(|l| !l.ends_with(" 0")), "failed Strapi requests are counted: {failed:?}");
    strapi.start_again();
    check(&broker, &strapi, &data);
    app.stop();
}
