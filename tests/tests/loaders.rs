//! `opsci-app produce` against the real broker: rows land on their topic,
//! keyed and partitioned by murmur2; rows that do not parse land on the error
//! topic with file, line and reason; nothing else is lost.

use std::time::{Duration, Instant};

use integration_tests::Broker;
use opsci_app::sources::{produce, KafkaConfig, Kind};
use opsci_app::topology::Topics;
use rdkafka::Message;

/// (partition, key, value) of the first `count` records of `topic`.
fn read(broker: &Broker, topic: &str, partitions: i32, count: usize) -> Vec<(i32, Option<String>, serde_json::Value)> {
    let consumer = broker.reader(topic, partitions, &[]);
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while seen.len() < count && Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            let key = m.key().map(|k| String::from_utf8_lossy(k).into_owned());
            let value = serde_json::from_slice(m.payload().unwrap_or_default()).expect("JSON value");
            seen.push((m.partition(), key, value));
        }
    }
    seen
}

#[test]
fn stock_csv_loads_with_bad_rows_on_the_error_topic() {
    let broker = Broker::start();
    broker.create_topic("stock", 4);
    broker.create_topic("error", 1);
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("stock.csv");
    let mut csv = String::from("id,amount,type\n");
    for i in 0..200 {
        csv.push_str(&format!("{},{},{}\n", i % 25 + 1, i % 9 + 1, if i % 3 == 0 { "OUT" } else { "IN" }));
    }
    csv.push_str("7,ten,IN\nseven,1,OUT\n3\n");
    std::fs::write(&file, csv).expect("write csv");
    let config =
        KafkaConfig { brokers: broker.bootstrap().to_string(), topics: Topics::default(), properties: Vec::new() };

    let summary = produce(&config, Kind::Stock, &file).expect("load");
    assert_eq!((summary.rows, summary.sent, summary.rejected, summary.failed), (203, 200, 3, 0));

    let records = read(&broker, "stock", 4, 200);
    assert_eq!(records.len(), 200);
    for (partition, key, value) in &records {
        let key = key.as_deref().expect("keyed by product id");
        assert_eq!(value["id"].to_string(), key);
        assert_eq!(*partition as u32, stream_core::partition_for_key(key.as_bytes(), 4));
    }
    let errors = read(&broker, "error", 1, 3);
    let lines: Vec<(u64, &str)> =
        errors.iter().map(|(_, _, v)| (v["line"].as_u64().unwrap(), v["reason"].as_str().unwrap())).collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0].0, 202);
    assert!(lines[0].1.contains("amount"), "{lines:?}");
    assert_eq!(lines[1].0, 203);
    assert!(lines[1].1.contains("id"), "{lines:?}");
    assert_eq!(lines[2].0, 204);
    assert!(lines[2].1.contains("expected 3 fields"), "{lines:?}");
    assert!(errors.iter().all(|(_, _, v)| v["file"].as_str().unwrap().ends_with("stock.csv")));
}

#[test]
fn an_unreadable_file_is_a_clear_error() {
    let config = KafkaConfig { brokers: "127.0.0.1:1".into(), topics: Topics::default(), properties: Vec::new() };
    let error = produce(&config, Kind::Products, std::path::Path::new("/nonexistent/products.csv")).unwrap_err();
    assert!(error.to_string().contains("/nonexistent/products.csv"), "{error}");
}
