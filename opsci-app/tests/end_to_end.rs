//! `opsci-app produce` and `opsci-app run` against the real broker: the
//! catalogue, then stock movements (valid ones, unknown products, zero
//! amounts, overdraws and malformed rows) are loaded; the running app folds
//! them; the stock it keeps (read from its changelog) equals an independent
//! fold of the CSV, and every rejected row is on the error topic. SIGTERM
//! stops the app cleanly.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use integration_tests::Broker;
use opsci_app::sources::{produce, KafkaConfig, Kind};
use opsci_app::topology::Topics;
use rdkafka::Message;

const PARTITIONS: i32 = 3;
const PRODUCTS: u64 = 20;

/// Latest value per key of `topic` and the number of records read, polled
/// until `done` holds and no record came for a second (or 60 s pass).
fn latest(
    broker: &Broker,
    topic: &str,
    partitions: i32,
    done: impl Fn(&BTreeMap<Vec<u8>, Vec<u8>>, usize) -> bool,
) -> (BTreeMap<Vec<u8>, Vec<u8>>, usize) {
    let consumer = broker.reader(topic, partitions, &[]);
    let (mut values, mut count) = (BTreeMap::new(), 0);
    let (deadline, mut last_record) = (Instant::now() + Duration::from_secs(60), Instant::now());
    while Instant::now() < deadline && !(done(&values, count) && last_record.elapsed() > Duration::from_secs(1)) {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            let key = m.key().unwrap_or_default().to_vec();
            // Keys starting with 0xff are the runtime's changelog markers.
            if !key.starts_with(b"\xff") {
                values.insert(key, m.payload().unwrap_or_default().to_vec());
            }
            count += 1;
            last_record = Instant::now();
        }
    }
    (values, count)
}

fn start_app(broker: &Broker) -> Child {
    Command::new(env!("CARGO_BIN_EXE_opsci-app"))
        .args(["run", "--application-id", "e2e", "--commit-interval-ms", "50"])
        .env("KAFKA_BROKERS", broker.bootstrap())
        .env("HTTP_ADDR", "127.0.0.1:0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start opsci-app")
}

#[test]
fn the_app_folds_the_loaded_csv_files_exactly() {
    let broker = Broker::start();
    for topic in ["product", "stock"] {
        broker.create_topic(topic, PARTITIONS);
    }
    for topic in ["event", "error"] {
        broker.create_topic(topic, 1);
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let config =
        KafkaConfig { brokers: broker.bootstrap().to_string(), topics: Topics::default(), properties: Vec::new() };

    // The catalogue first, and the app has it before any movement arrives.
    let mut products = String::from("name,description,stock_available,barcode\n");
    let reference: BTreeMap<u64, i64> = (1..=PRODUCTS).map(|id| (id, (id as i64 * 7) % 40 + 5)).collect();
    for (id, stock) in &reference {
        products.push_str(&format!("\"Product {id}, fresh\",desc,{stock},{id:013}\n"));
    }
    std::fs::write(dir.path().join("products.csv"), products).expect("write");
    let loaded = produce(&config, Kind::Products, &dir.path().join("products.csv")).expect("load products");
    assert_eq!((loaded.sent, loaded.rejected), (PRODUCTS, 0));
    let mut app = start_app(&broker);
    let (catalogue, _) = latest(&broker, "e2e-products-changelog", PARTITIONS, |v, _| v.len() as u64 == PRODUCTS);
    assert_eq!(catalogue.len() as u64, PRODUCTS, "the app loaded the catalogue");

    // Movements, with unknown products, zero amounts, overdraws and bad rows.
    let mut stock_csv = String::from("id,amount,type\n");
    let mut levels = reference.clone();
    // The app stores a stock once a movement of the product was applied.
    let mut touched = std::collections::BTreeSet::new();
    let (mut rejected, mut malformed) = (0, 0);
    for i in 0..2_000u64 {
        let id = i * 7 % (PRODUCTS + 3) + 1; // ids PRODUCTS+1.. are unknown
        let amount = (i * 13 % 23) as i64; // zero now and then
        let out = i % 3 != 0;
        if i % 250 == 0 {
            stock_csv.push_str(&format!("{id},{amount}x,IN\n"));
            malformed += 1;
            continue;
        }
        stock_csv.push_str(&format!("{id},{amount},{}\n", if out { "OUT" } else { "IN" }));
        match levels.get_mut(&id) {
            Some(level) if amount > 0 && (!out || *level >= amount) => {
                *level += if out { -amount } else { amount };
                touched.insert(id);
            }
            _ => rejected += 1,
        }
    }
    std::fs::write(dir.path().join("stock.csv"), stock_csv).expect("write");
    let loaded = produce(&config, Kind::Stock, &dir.path().join("stock.csv")).expect("load stock");
    assert_eq!(loaded.rejected, malformed);

    let expected: BTreeMap<Vec<u8>, Vec<u8>> = levels
        .iter()
        .filter(|(id, _)| touched.contains(*id))
        .map(|(id, level)| (id.to_string().into_bytes(), level.to_be_bytes().to_vec()))
        .collect();
    let (stock, _) = latest(&broker, "e2e-stock-changelog", PARTITIONS, |v, _| *v == expected);
    let (_, errors) = latest(&broker, "error", 1, |_, n| n >= (rejected + malformed) as usize);

    Command::new("kill").args(["-TERM", &app.id().to_string()]).status().expect("kill -TERM");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = app.try_wait().expect("wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "the app did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(100));
    };
    let output = app.wait_with_output().expect("output");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(status.success(), "{stderr}");
    assert!(stderr.lines().any(|l| l.contains("stopped") && l.contains("records_in")), "{stderr}");

    let decoded = |m: &BTreeMap<Vec<u8>, Vec<u8>>| -> BTreeMap<String, i64> {
        m.iter()
            .map(|(k, v)| (String::from_utf8_lossy(k).into_owned(), i64::from_be_bytes(v[..8].try_into().unwrap())))
            .collect()
    };
    assert_eq!(decoded(&stock), decoded(&expected), "stock per product");
    assert_eq!(errors, (rejected + malformed) as usize, "every rejected row is on the error topic, once");
}
