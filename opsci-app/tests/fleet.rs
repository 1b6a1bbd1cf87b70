//! A fleet: three `opsci-app run` instances on 12 partitions, one Apache
//! Kafka broker, Strapi on a real PostgreSQL. The products, the events and
//! the stock movements (with unknown products, bad amounts and types,
//! overdraws and malformed rows mixed in) are loaded while the fleet runs;
//! meanwhile one instance is SIGKILLed and restarted, then another, and the
//! third is stopped for good (SIGTERM). At the end Strapi's products equal an
//! independent fold of the input (stock and status, each product once),
//! Strapi holds every event once (the loaded ones and every status change),
//! and the error topic holds every rejection once.
//!
//! It prints what a fleet costs: the time until Strapi is in sync after the
//! last movement was loaded, Strapi requests per 1 000 movements, each
//! instance's peak RSS, and how long each fault stopped processing on the
//! partitions concerned.
//!
//! The CI size is 1 000 products and 40 000 movements; `FLEET_PRODUCTS` and
//! `FLEET_MOVEMENTS` change it (the full size of the production scenario:
//! `FLEET_PRODUCTS=10000 FLEET_MOVEMENTS=1000000`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use integration_tests::opsci::{error_topic, strapi_catalogue, strapi_events, Dataset, Lcg, Size};
use integration_tests::postgres::Postgres;
use integration_tests::strapi::Strapi;
use integration_tests::{free_port, Broker};
use opsci_app::sources::{produce, KafkaConfig, Kind};
use opsci_app::topology::Topics;

const PARTITIONS: i32 = 12;
const INSTANCES: usize = 3;
const CHUNKS: usize = 10;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// One `opsci-app run` instance: its state directory and HTTP port stay
/// across restarts.
struct Instance {
    name: String,
    child: Option<Child>,
    state: PathBuf,
    http: u16,
    /// The largest peak RSS of its processes so far, in KiB.
    peak_rss_kib: u64,
    /// Strapi requests of its processes that ended.
    strapi_requests: f64,
}

impl Instance {
    fn new(name: &str, dir: &Path) -> Instance {
        let state = dir.join(name);
        Instance {
            name: name.to_string(),
            child: None,
            state,
            http: free_port(),
            peak_rss_kib: 0,
            strapi_requests: 0.0,
        }
    }

    fn start(&mut self, broker: &Broker, strapi: &Strapi) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.state.with_extension("log"))
            .expect("app log");
        let child = Command::new(env!("CARGO_BIN_EXE_opsci-app"))
            .args(["run", "--application-id", "fleet", "--commit-interval-ms", "100"])
            .env("KAFKA_BROKERS", broker.bootstrap())
            .env("STRAPI_URL", strapi.url())
            .env("STRAPI_TOKEN", strapi.token())
            .env("STATE_DIR", &self.state)
            .env("HTTP_ADDR", format!("127.0.0.1:{}", self.http))
            .env("PARTITIONS", PARTITIONS.to_string())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start opsci-app");
        self.child = Some(child);
    }

    /// Strapi requests of all its processes so far.
    fn strapi_requests(&self) -> f64 {
        self.strapi_requests + self.metric("opsci_strapi_requests_total{").unwrap_or(0.0)
    }

    /// Notes what the running process counted, before it ends.
    fn note_end(&mut self) {
        self.note_rss();
        self.strapi_requests = self.strapi_requests();
    }

    /// The peak RSS of the running process (`VmHWM`), noted.
    fn note_rss(&mut self) {
        let Some(child) = &self.child else { return };
        let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap_or_default();
        let hwm = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        self.peak_rss_kib = self.peak_rss_kib.max(hwm);
    }

    fn kill(&mut self) {
        self.note_end();
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits for a clean exit.
    fn stop(&mut self) {
        self.note_end();
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
            let status = child.wait().expect("wait for opsci-app");
            assert!(status.success(), "{} did not stop cleanly: {status}\n{}", self.name, self.log_tail());
        }
    }

    /// The value of the metric line starting with `prefix` (summed when
    /// several match), if the instance answers.
    fn metric(&self, prefix: &str) -> Option<f64> {
        self.child.as_ref()?;
        let text = ureq::get(&format!("http://127.0.0.1:{}/metrics", self.http))
            .call()
            .ok()?
            .body_mut()
            .read_to_string()
            .ok()?;
        let values: Vec<f64> =
            text.lines().filter(|l| l.starts_with(prefix)).filter_map(|l| l.rsplit(' ').next()?.parse().ok()).collect();
        (!values.is_empty()).then(|| values.iter().sum())
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.state.with_extension("log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Tasks running in the whole fleet.
fn tasks(fleet: &[Instance]) -> f64 {
    fleet.iter().filter_map(|i| i.metric("opsci_tasks{state=\"running\"}")).sum()
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < timeout, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
    started.elapsed()
}

/// How long after `fault` instance `which` (restarted) processed movements
/// again: its counters start at zero in the new process.
fn resumed(fleet: &[Instance], which: usize, fault: Instant) -> Duration {
    wait_until("the restarted instance processes movements", Duration::from_secs(120), || {
        fleet[which].metric("opsci_movements_total{").is_some_and(|n| n > 0.0)
    });
    fault.elapsed()
}

fn load(kafka: &KafkaConfig, dir: &Path, kind: Kind, name: &str, text: &str) {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write CSV");
    let summary = produce(kafka, kind, &path).expect("produce");
    assert_eq!(summary.failed, 0, "{name}: {summary:?}");
}

#[test]
fn a_fleet_of_three_loses_two_and_stops_one_and_strapi_on_postgres_ends_exact() {
    let size = Size {
        products: env_or("FLEET_PRODUCTS", 1_000),
        unknown: 50,
        events: 200,
        movements: env_or("FLEET_MOVEMENTS", 40_000),
        chunks: CHUNKS,
    };
    let data = Dataset::generate(size);
    let broker = Broker::start();
    for topic in ["product", "stock", "event", "error", "catalogue"] {
        broker.create_topic(topic, PARTITIONS);
    }
    let postgres = Postgres::start();
    let strapi = Strapi::start_on_postgres(&postgres.database("strapi"));
    let kafka =
        KafkaConfig { brokers: broker.bootstrap().to_string(), topics: Topics::default(), properties: Vec::new() };
    let dir = tempfile::tempdir().expect("temp dir");
    let mut fleet: Vec<Instance> =
        (0..INSTANCES).map(|n| Instance::new(&format!("instance-{n}"), dir.path())).collect();
    for instance in &mut fleet {
        instance.start(&broker, &strapi);
    }

    load(&kafka, dir.path(), Kind::Products, "products.csv", &data.products);
    wait_until("the fleet holds every product", Duration::from_secs(180), || {
        fleet.iter().filter_map(|i| i.metric("opsci_products{")).sum::<f64>() == size.products as f64
    });
    let all_tasks = tasks(&fleet);
    load(&kafka, dir.path(), Kind::Events, "events.csv", &data.events);

    // The movements are loaded a chunk a second by a thread of their own;
    // faults come after chunks 2, 5 and 7, each at a random moment while
    // the next ones are loaded and folded.
    let started = Instant::now();
    let (loaded_tx, loaded_rx) = std::sync::mpsc::channel();
    let loader = {
        let (kafka, dir, chunks) = (kafka.clone(), dir.path().to_path_buf(), data.stock.clone());
        std::thread::spawn(move || {
            for (n, chunk) in chunks.iter().enumerate() {
                load(&kafka, &dir, Kind::Stock, &format!("stock-{n}.csv"), chunk);
                let _ = loaded_tx.send(n);
                if n + 1 < chunks.len() {
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
            Instant::now()
        })
    };
    let mut rng = Lcg(11);
    let mut pauses = Vec::new();
    for n in loaded_rx.iter() {
        let which = match n {
            2 => 0,
            5 => 1,
            7 => 2,
            _ => continue,
        };
        std::thread::sleep(Duration::from_millis(100 + rng.next(800)));
        let fault = Instant::now();
        if which < 2 {
            fleet[which].kill();
            fleet[which].start(&broker, &strapi);
            pauses.push((format!("{} SIGKILLed and restarted", fleet[which].name), resumed(&fleet, which, fault)));
        } else {
            fleet[which].stop();
            // It removes itself from the group as it stops: the others take
            // its partitions over at once (timed from the SIGTERM).
            wait_until("the others run every task", Duration::from_secs(120), || tasks(&fleet) == all_tasks);
            pauses.push((format!("{} stopped for good, its tasks taken over", fleet[which].name), fault.elapsed()));
        }
    }
    let loaded_at = loader.join().expect("the loader");
    let loaded = loaded_at - started;

    // Listing every product and event costs Strapi hundreds of requests at
    // full size: only once it holds as many events as expected.
    let expected_events = data.events_expected.values().sum::<usize>() as u64;
    let events_held = || strapi.get("/api/events?pagination[pageSize]=1").body["meta"]["pagination"]["total"].as_u64();
    wait_until("Strapi's catalogue and events equal the fold", Duration::from_secs(3600), || {
        let held = events_held();
        assert!(held.is_none_or(|n| n <= expected_events), "{held:?} events in Strapi, {expected_events} expected");
        if held != Some(expected_events) {
            std::thread::sleep(Duration::from_millis(400));
            return false;
        }
        strapi_catalogue(&strapi).0 == data.catalogue && strapi_events(&strapi) == data.events_expected
    });
    let in_sync = loaded_at.elapsed();
    for instance in &mut fleet {
        instance.note_rss();
    }
    let requests = fleet.iter().map(Instance::strapi_requests).sum::<f64>();

    // Nothing more arrives later, and nothing is there twice.
    std::thread::sleep(Duration::from_secs(2));
    let (catalogue, counts) = strapi_catalogue(&strapi);
    assert_eq!(catalogue, data.catalogue, "Strapi's products");
    assert!(counts.values().all(|n| *n == 1), "duplicate products in Strapi");
    assert_eq!(strapi_events(&strapi), data.events_expected, "Strapi's events");
    let (codes, rows) = error_topic(&broker, PARTITIONS);
    assert_eq!(codes, data.rejections, "rejections on the error topic, by reason");
    assert_eq!(rows, data.malformed_rows, "rows rejected by the loader");

    println!(
        "fleet: {} products, {} movements, {} events expected in Strapi, {} instances, {PARTITIONS} partitions",
        size.products, size.movements, expected_events, INSTANCES
    );
    println!(
        "movements loaded in {:.1} s; Strapi in sync {:.1} s after the last one",
        loaded.as_secs_f64(),
        in_sync.as_secs_f64()
    );
    // Counted by the instances until they were killed or stopped, and at the
    // end: a killed process's last requests before its death may be missing.
    println!("Strapi requests: {requests} ({:.0} per 1 000 movements)", 1000.0 * requests / size.movements as f64);
    for instance in &fleet {
        println!("{}: peak RSS {:.0} MiB", instance.name, instance.peak_rss_kib as f64 / 1024.0);
    }
    for (fault, pause) in &pauses {
        println!("{fault}: processing again after {:.2} s", pause.as_secs_f64());
    }
    for instance in &mut fleet {
        instance.stop();
    }
}
