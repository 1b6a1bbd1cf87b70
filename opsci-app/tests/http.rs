//! `opsci-app run`'s HTTP endpoint against the real broker: `/health`
//! (live, ready), `/products/{id}`, `/products?status=` page by page,
//! `/metrics` (including every metric the Grafana dashboard queries),
//! `opsci-app status`, and JSON logs that never show the Strapi token.

use std::io::Read;
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use integration_tests::Broker;
use opsci_app::sources::{produce, KafkaConfig, Kind};
use opsci_app::topology::Topics;
use serde_json::Value;

const SECRET: &str = "0123456789abcdef-never-in-logs";

fn get(port: u16, path: &str) -> (u16, String) {
    let (code, body, _) = get_with_link(port, path);
    (code, body)
}

/// The status, the body and the `Link` header.
fn get_with_link(port: u16, path: &str) -> (u16, String, Option<String>) {
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    match agent.get(&format!("http://127.0.0.1:{port}{path}")).call() {
        Ok(mut r) => {
            let link = r.headers().get("link").and_then(|l| l.to_str().ok()).map(str::to_string);
            (r.status().as_u16(), r.body_mut().read_to_string().unwrap_or_default(), link)
        }
        Err(_) => (0, String::new(), None),
    }
}

#[test]
fn the_endpoint_answers_from_the_running_app() {
    let broker = Broker::start();
    for topic in ["product", "stock", "event", "error", "catalogue"] {
        broker.create_topic(topic, 2);
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("port").port();
    let log = dir.path().join("app.log");
    let mut app = Command::new(env!("CARGO_BIN_EXE_opsci-app"))
        .args(["run", "--application-id", "http-test"])
        .env("KAFKA_BROKERS", broker.bootstrap())
        .env("HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env("LOG_FORMAT", "json")
        // A Strapi that is not there: the sync retries, the rest works.
        .env("STRAPI_URL", "http://127.0.0.1:9")
        .env("STRAPI_TOKEN", SECRET)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("start opsci-app");

    let kafka =
        KafkaConfig { brokers: broker.bootstrap().to_string(), topics: Topics::default(), properties: Vec::new() };
    let products = dir.path().join("products.csv");
    std::fs::write(&products, "name,description,stock_available,barcode\nPear,p,40,1\nFig,f,50,2\nKiwi,k,30,3\n")
        .expect("write");
    let stock = dir.path().join("stock.csv");
    std::fs::write(&stock, "id,amount,type\n1,37,OUT\n2,50,OUT\n3,5,IN\n9,1,IN\n").expect("write");
    produce(&kafka, Kind::Products, &products).expect("products");
    let deadline = Instant::now() + Duration::from_secs(60);
    while get(port, "/products").1.matches("\"id\"").count() < 3 {
        assert!(Instant::now() < deadline, "the app did not load the products");
        std::thread::sleep(Duration::from_millis(200));
    }
    produce(&kafka, Kind::Stock, &stock).expect("stock");
    let folded = |m: &str| m.contains("opsci_movements_total{outcome=\"applied\"} 3\n");
    while !folded(&get(port, "/metrics").1) {
        assert!(Instant::now() < deadline, "the app did not fold the movements");
        std::thread::sleep(Duration::from_millis(200));
    }

    for (path, status) in [("/health", "ready"), ("/health/ready", "ready"), ("/health/live", "live")] {
        let (code, body) = get(port, path);
        assert_eq!(code, 200, "{path}: {body}");
        assert_eq!(serde_json::from_str::<Value>(&body).expect("JSON")["status"], status, "{path}: {body}");
    }

    // Queries answer from the last commit; the counters count as records are
    // processed, so the fold shows in `/products` at the tasks' next commits.
    let stocks = |body: &str| -> Vec<(i64, i64)> {
        let products: Vec<Value> = serde_json::from_str(body).unwrap_or_default();
        let mut stocks: Vec<(i64, i64)> =
            products.iter().filter_map(|p| Some((p["product"]["id"].as_i64()?, p["stock"].as_i64()?))).collect();
        stocks.sort();
        stocks
    };
    while stocks(&get(port, "/products").1) != [(1, 3), (2, 0), (3, 35)] {
        assert!(Instant::now() < deadline, "the fold is not in /products: {}", get(port, "/products").1);
        std::thread::sleep(Duration::from_millis(200));
    }
    let (code, body) = get(port, "/products/1");
    assert_eq!(code, 200, "{body}");
    let pear: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!((pear["stock"].as_i64(), pear["status"].as_str()), (Some(3), Some("danger")), "{pear}");
    let danger: Vec<Value> = serde_json::from_str(&get(port, "/products?status=danger").1).expect("JSON");
    let names: Vec<&str> = danger.iter().filter_map(|p| p["product"]["name"].as_str()).collect();
    assert_eq!(names, ["Pear"]);
    assert_eq!(get(port, "/products?status=bogus").0, 400);
    for limit in ["0", "10001", "x"] {
        assert_eq!(get(port, &format!("/products?limit={limit}")).0, 400, "limit={limit}");
    }

    // Pages: one product each, the next page's address in `Link`.
    let (mut ids, mut next) = (Vec::new(), Some("/products?limit=1".to_string()));
    while let Some(path) = next.take() {
        let (code, body, link) = get_with_link(port, &path);
        assert_eq!(code, 200, "{path}: {body}");
        let page: Vec<Value> = serde_json::from_str(&body).expect("JSON");
        assert!(page.len() <= 1, "{path}: {body}");
        ids.extend(page.iter().filter_map(|p| p["product"]["id"].as_i64()));
        next = link.map(|l| {
            let (target, rel) = l.split_once(';').expect("Link: <…>; rel");
            assert_eq!(rel.trim(), "rel=\"next\"", "{l}");
            target.trim_matches(['<', '>']).to_string()
        });
        assert!(ids.len() <= 3, "the pages do not end: {ids:?}");
    }
    assert_eq!(ids, [1, 2, 3], "every product once, in order, over the pages");
    let (_, body, link) = get_with_link(port, "/products?status=safe&limit=1");
    assert!(body.contains("Kiwi") && link.as_deref().is_some_and(|l| l.contains("status=safe")), "{body} {link:?}");
    let (_, body, link) = get_with_link(port, "/products?status=safe&limit=1&after=3");
    assert_eq!((body.as_str(), link), ("[]", None), "nothing safe after product 3");
    assert_eq!(get(port, "/products/42").0, 404);

    // Consumer lag comes from the client's statistics, about once a second.
    let lag = "opsci_consumer_lag{topic=\"stock\"";
    while !get(port, "/metrics").1.contains(lag) {
        assert!(Instant::now() < deadline, "no consumer lag in /metrics");
        std::thread::sleep(Duration::from_millis(200));
    }
    let (code, metrics) = get(port, "/metrics");
    assert_eq!(code, 200);
    let exported: Vec<&str> =
        metrics.lines().filter(|l| !l.starts_with('#')).filter_map(|l| l.split(['{', ' ']).next()).collect();
    for metric in integration_tests::deploy::dashboard_metrics() {
        assert!(exported.contains(&metric.as_str()), "the dashboard queries {metric}, not exported:\n{metrics}");
    }
    for line in [
        "opsci_movements_total{outcome=\"applied\"} 3",
        "opsci_movements_total{outcome=\"rejected\"} 1",
        "opsci_rejections_total{reason=\"unknown_product\"} 1",
        "opsci_products{status=\"empty\"} 1",
    ] {
        assert!(metrics.lines().any(|l| l == line), "missing {line:?} in\n{metrics}");
    }

    let status = Command::new(env!("CARGO_BIN_EXE_opsci-app"))
        .args(["status"])
        .env("HTTP_ADDR", format!("0.0.0.0:{port}"))
        .output()
        .expect("opsci-app status");
    let out = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success(), "{out}");
    assert_eq!(out.lines().count(), 4, "a header and the three products: {out}");
    let status = Command::new(env!("CARGO_BIN_EXE_opsci-app"))
        .args(["status", "3"])
        .env("HTTP_ADDR", format!("0.0.0.0:{port}"))
        .output()
        .expect("opsci-app status");
    let out = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success(), "{out}");
    assert!(out.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == ["3", "Kiwi", "35", "safe"]), "{out}");

    let _ = Command::new("kill").args(["-TERM", &app.id().to_string()]).status();
    assert!(app.wait().expect("wait").success(), "opsci-app did not stop cleanly");
    let mut text = String::new();
    std::fs::File::open(&log).and_then(|mut f| f.read_to_string(&mut text)).expect("log");
    assert!(!text.contains(SECRET), "the token is in the logs");
    assert!(text.lines().count() > 3, "{text}");
    for line in text.lines() {
        serde_json::from_str::<Value>(line).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
    }
}
