//! The OPSCI pipeline end to end: movements per second through
//! `opsci-app run` (exactly-once, on the test broker), and Strapi HTTP
//! requests per 1 000 movements (the course's stock consumer makes 2 per
//! movement: a GET then a PUT).
//!
//! One run starts the test broker and a real Strapi (as the integration
//! tests do), loads 200 products and waits until they are in Strapi, then
//! loads `MOVEMENTS` valid movements and measures:
//! - **fold**: from the start of the load until the app has applied every
//!   movement (its `/metrics`), i.e. movements per second through the
//!   topology;
//! - **Strapi**: from the same start until Strapi holds the final stock of
//!   every product, and the Strapi requests made meanwhile (from `/metrics`).
//!
//! Run with `cargo bench -p benches --bench pipeline` (needs the test broker
//! and the Strapi project's node modules, as the tests do).

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use integration_tests::strapi::Strapi;
use integration_tests::Broker;

const PRODUCTS: u64 = 200;
const MOVEMENTS: u64 = 50_000;

fn metric(port: u16, line_start: &str) -> Option<f64> {
    let text = ureq::get(&format!("http://127.0.0.1:{port}/metrics")).call().ok()?.body_mut().read_to_string().ok()?;
    text.lines().find(|l| l.starts_with(line_start)).and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

fn strapi_requests(port: u16) -> f64 {
    let ok = metric(port, "opsci_strapi_requests_total{outcome=\"ok\"}").unwrap_or(0.0);
    ok + metric(port, "opsci_strapi_requests_total{outcome=\"error\"}").unwrap_or(0.0)
}

fn strapi_stock(strapi: &Strapi) -> BTreeMap<String, i64> {
    let mut stock = BTreeMap::new();
    for page in 1..=PRODUCTS.div_ceil(100) {
        let reply = strapi.get(&format!("/api/products?pagination[page]={page}&pagination[pageSize]=100"));
        for p in reply.body["data"].as_array().cloned().unwrap_or_default() {
            stock.insert(
                p["barcode"].as_str().unwrap_or_default().to_string(),
                p["stock_available"].as_i64().unwrap_or(-1),
            );
        }
    }
    stock
}

fn produce(opsci: &str, broker: &Broker, kind: &str, path: &std::path::Path) {
    let status = Command::new(opsci)
        .args(["produce", kind])
        .arg(path)
        .env("KAFKA_BROKERS", broker.bootstrap())
        .stdout(Stdio::null())
        .status()
        .expect("opsci-app produce");
    assert!(status.success());
}

fn main() {
    let target = std::env::current_exe().expect("bench path");
    let opsci = target.parent().and_then(|d| d.parent()).expect("target dir").join("opsci-app");
    assert!(opsci.exists(), "build the app first: cargo build --release -p opsci-app");
    let opsci = opsci.to_string_lossy().into_owned();

    let broker = Broker::start();
    for topic in ["product", "stock", "event", "error", "catalogue"] {
        broker.create_topic(topic, 4);
    }
    let strapi = Strapi::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("port").port();
    let mut app: Child = Command::new(&opsci)
        .args(["run", "--application-id", "bench"])
        .env("KAFKA_BROKERS", broker.bootstrap())
        .env("STRAPI_URL", strapi.url())
        .env("STRAPI_TOKEN", strapi.token())
        .env("STATE_DIR", dir.path().join("state"))
        .env("HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "error")
        .stdin(Stdio::null())
        .spawn()
        .expect("start opsci-app");

    // Products, each with 1 000 units; movements of 1..5 units never overdraw.
    let mut products = String::from("name,description,stock_available,barcode\n");
    let mut stock: BTreeMap<String, i64> = BTreeMap::new();
    for id in 1..=PRODUCTS {
        products.push_str(&format!("P{id},bench,1000,{id}\n"));
        stock.insert(id.to_string(), 1000);
    }
    let mut movements = String::from("id,amount,type\n");
    for n in 0..MOVEMENTS {
        let id = 1 + (n * 7919) % PRODUCTS;
        let amount = 1 + (n % 5) as i64;
        // Each product sees OUT then IN of the same amount, in turn.
        let out = (n / PRODUCTS) % 2 == 0;
        movements.push_str(&format!("{id},{amount},{}\n", if out { "OUT" } else { "IN" }));
        *stock.get_mut(&id.to_string()).expect("product") += if out { -amount } else { amount };
    }
    std::fs::write(dir.path().join("products.csv"), products).expect("write");
    std::fs::write(dir.path().join("stock.csv"), movements).expect("write");

    produce(&opsci, &broker, "products", &dir.path().join("products.csv"));
    let deadline = Instant::now() + Duration::from_secs(300);
    while strapi_stock(&strapi).len() < PRODUCTS as usize {
        assert!(Instant::now() < deadline, "products did not reach Strapi");
        std::thread::sleep(Duration::from_millis(200));
    }
    let requests_before = strapi_requests(port);

    let start = Instant::now();
    produce(&opsci, &broker, "stock", &dir.path().join("stock.csv"));
    let loaded = start.elapsed();
    let applied = "opsci_movements_total{outcome=\"applied\"}";
    while metric(port, applied).unwrap_or(0.0) < MOVEMENTS as f64 {
        assert!(Instant::now() < deadline, "the app did not apply every movement");
        std::thread::sleep(Duration::from_millis(20));
    }
    let folded = start.elapsed();
    while strapi_stock(&strapi) != stock {
        assert!(Instant::now() < deadline, "Strapi did not catch up");
        std::thread::sleep(Duration::from_millis(100));
    }
    let synced = start.elapsed();
    let requests = strapi_requests(port) - requests_before;
    let _ = app.kill();
    let _ = app.wait();

    let per_second = |d: Duration| MOVEMENTS as f64 / d.as_secs_f64();
    println!("pipeline: {MOVEMENTS} movements over {PRODUCTS} products, 4 partitions, commit interval 100 ms");
    println!("  load (opsci-app produce): {:>8.2} s  {:>9.0} movements/s", loaded.as_secs_f64(), per_second(loaded));
    println!("  folded by the app:        {:>8.2} s  {:>9.0} movements/s", folded.as_secs_f64(), per_second(folded));
    println!("  Strapi in sync:           {:>8.2} s  {:>9.0} movements/s", synced.as_secs_f64(), per_second(synced));
    println!(
        "  Strapi requests: {requests:.0} = {:.1} per 1 000 movements (course's consumer: 2 000 per 1 000)",
        requests * 1000.0 / MOVEMENTS as f64
    );
}
