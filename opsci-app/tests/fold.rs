//! The OPSCI stock fold on the test driver: validation, the never-negative
//! rule, rejections with their reason and source, status events; and a
//! property test against an independent fold.

use std::collections::BTreeMap;

use opsci_app::model::{Event, Product, Status};
use opsci_app::policy::StatusPolicy;
use opsci_app::topology::{self, parse_movement, Reason, Rejection, Topics, STOCK_STORE};
use proptest::prelude::*;
use stream_core::serdes::{Bytes, Json, Utf8, I64};
use stream_core::{StreamsConfig, TestDriver};

fn product(id: u64, stock: i64) -> Product {
    Product { id, name: format!("p{id}"), description: String::new(), stock_available: stock, barcode: String::new() }
}

fn driver(partitions: u32, policy: StatusPolicy) -> TestDriver {
    let topics = Topics::default();
    let topology = topology::build(&topics, policy, Default::default()).expect("topology");
    TestDriver::builder(topology)
        .config(StreamsConfig::new("opsci").dead_letter_to("error"))
        .partitions(partitions)
        .build()
        .expect("driver")
}

#[test]
fn parse_rejects_every_malformed_movement_with_its_reason() {
    assert!(parse_movement(br#"{"id":201,"amount":37,"type":"OUT"}"#).is_ok());
    let code = |json: &str| match parse_movement(json.as_bytes()) {
        Ok(m) => format!("ok {m:?}"),
        Err(r) => serde_json::to_value(&r).unwrap()["code"].as_str().unwrap().to_string(),
    };
    assert_eq!(code("{not json"), "malformed_json");
    assert_eq!(code("[1,2]"), "malformed_json");
    assert_eq!(code(r#"{"amount":1,"type":"IN"}"#), "bad_id");
    assert_eq!(code(r#"{"id":"7","amount":1,"type":"IN"}"#), "bad_id");
    assert_eq!(code(r#"{"id":-7,"amount":1,"type":"IN"}"#), "bad_id");
    for amount in ["0", "-3", "2.5", "\"4\"", "null"] {
        assert_eq!(code(&format!(r#"{{"id":7,"amount":{amount},"type":"IN"}}"#)), "bad_amount", "amount {amount}");
    }
    assert_eq!(code(r#"{"id":7,"type":"IN"}"#), "bad_amount");
    assert_eq!(code(r#"{"id":7,"amount":1,"type":"in"}"#), "bad_type");
    assert_eq!(code(r#"{"id":7,"amount":1}"#), "bad_type");
}

#[test]
fn rejections_reach_the_error_topic_with_reason_and_source() -> stream_core::Result<()> {
    let driver = driver(3, StatusPolicy::default());
    let products = driver.input_topic("product", Utf8, Json::<Product>::new());
    products.pipe("1".into(), product(1, 10))?;
    let stock = driver.input_topic("stock", Bytes, Bytes);
    let send = |key: &str, value: &str| stock.pipe(key.as_bytes().to_vec(), value.as_bytes().to_vec());
    send("1", r#"{"id":1,"amount":4,"type":"OUT"}"#)?; // 6 left
    send("1", r#"{"id":1,"amount":7,"type":"OUT"}"#)?; // overdraw: rejected
    send("9", r#"{"id":9,"amount":1,"type":"IN"}"#)?; // unknown product
    send("", r#"{"id":1,"amount":0,"type":"IN"}"#)?; // zero amount, no key
    send("1", "garbage")?;
    send("", r#"{"id":1,"amount":6,"type":"OUT"}"#)?; // keyless but valid: 0 left

    assert_eq!(driver.store(STOCK_STORE, Utf8, I64).get(&"1".to_string())?, Some(0));
    let rejections: Vec<Rejection> = driver
        .output_topic("error", Utf8, Json::<Rejection>::new())
        .read_key_values()?
        .into_iter()
        .map(|(_, r)| r)
        .collect();
    let reasons: Vec<&Reason> = rejections.iter().map(|r| &r.reason).collect();
    assert_eq!(reasons.len(), 4);
    assert!(reasons.contains(&&Reason::InsufficientStock { requested: 7, available: 6 }));
    assert!(reasons.contains(&&Reason::UnknownProduct { id: 9 }));
    assert!(rejections
        .iter()
        .any(|r| matches!(r.reason, Reason::BadAmount { .. }) && r.record.contains("\"amount\":0")));
    assert!(rejections.iter().any(|r| matches!(r.reason, Reason::MalformedJson { .. }) && r.record == "garbage"));
    for r in &rejections {
        assert_eq!(r.source.topic, "stock");
        assert!(!r.message.is_empty());
    }
    // Offsets are those of the stock topic: the overdraw was the 2nd record of key "1".
    let overdraw = rejections.iter().find(|r| matches!(r.reason, Reason::InsufficientStock { .. })).unwrap();
    assert_eq!((overdraw.source.partition, overdraw.source.offset), (stream_core::partition_for_key(b"1", 3), 1));

    let events = driver.output_topic("event", Utf8, Json::<Event>::new()).read_key_values()?;
    let statuses: Vec<_> =
        events.iter().map(|(_, e)| (e.metadata["old_status"].clone(), e.metadata["status"].clone())).collect();
    assert_eq!(
        statuses,
        [(serde_json::json!("safe"), serde_json::json!("empty"))],
        "10 → 6 stays safe, 6 → 0 is empty"
    );
    assert!(events[0].1.value.contains("p1"), "{}", events[0].1.value);
    Ok(())
}

#[test]
fn a_product_record_that_does_not_decode_is_dead_lettered() -> stream_core::Result<()> {
    let driver = driver(1, StatusPolicy::default());
    driver.input_topic("product", Bytes, Bytes).pipe(b"1".to_vec(), b"{\"id\":\"one\"}".to_vec())?;
    let dead = driver.read_raw("error");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].record.headers.get_str(stream_core::dead_letter::TOPIC), Some("product"));
    Ok(())
}

#[derive(Debug, Clone)]
enum Input {
    Product(u64, i64),
    Movement(u64, i64, bool),
    Garbage,
}

fn inputs() -> impl Strategy<Value = Vec<Input>> {
    prop::collection::vec(
        prop_oneof![
            1 => (0u64..6, 0i64..60).prop_map(|(id, s)| Input::Product(id, s)),
            8 => (0u64..8, -3i64..25, any::<bool>()).prop_map(|(id, a, out)| Input::Movement(id, a, out)),
            1 => Just(Input::Garbage),
        ],
        0..120,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn the_fold_equals_an_independent_fold(inputs in inputs(), partitions in 1u32..4, percent in 0u32..40, floor in 0i64..5) {
        let policy = StatusPolicy { danger_percent: percent, danger_floor: floor };
        let driver = driver(partitions, policy);
        let products = driver.input_topic("product", Utf8, Json::<Product>::new());
        let stock = driver.input_topic("stock", Bytes, Bytes);

        // The model: the catalogue, the stock per product, the rejections.
        let mut catalogue: BTreeMap<u64, i64> = BTreeMap::new();
        let mut levels: BTreeMap<u64, i64> = BTreeMap::new();
        let mut rejected = 0;
        let mut changes: Vec<(u64, Status, Status, i64)> = Vec::new();
        for input in &inputs {
            match *input {
                Input::Product(id, s) => {
                    products.pipe(id.to_string(), product(id, s)).unwrap();
                    catalogue.insert(id, s);
                }
                Input::Garbage => {
                    stock.pipe(vec![], b"{\"id\":".to_vec()).unwrap();
                    rejected += 1;
                }
                Input::Movement(id, amount, out) => {
                    let json = format!(r#"{{"id":{id},"amount":{amount},"type":"{}"}}"#, if out { "OUT" } else { "IN" });
                    stock.pipe(id.to_string().into_bytes(), json.into_bytes()).unwrap();
                    let Some(&reference) = catalogue.get(&id) else { rejected += 1; continue };
                    let current = levels.get(&id).copied().unwrap_or(reference);
                    let next = if out { current - amount } else { current + amount };
                    if amount <= 0 || next < 0 {
                        rejected += 1;
                    } else {
                        levels.insert(id, next);
                        let (old, new) = (policy.status(current, reference), policy.status(next, reference));
                        if old != new {
                            changes.push((id, old, new, next));
                        }
                    }
                }
            }
        }
        let mut actual = driver.store(STOCK_STORE, Utf8, I64).all().unwrap();
        actual.sort();
        let mut expected: Vec<(String, i64)> = levels.iter().map(|(id, s)| (id.to_string(), *s)).collect();
        expected.sort();
        prop_assert_eq!(&actual, &expected);
        prop_assert!(actual.iter().all(|(_, s)| *s >= 0), "stock never negative");
        let errors = driver.output_topic("error", Utf8, Json::<Rejection>::new()).read_records().unwrap();
        prop_assert_eq!(errors.len(), rejected);
        // Every status change, and only those, is announced, in order.
        let events: Vec<(u64, Status, Status, i64)> = driver
            .output_topic("event", Utf8, Json::<Event>::new())
            .read_records()
            .unwrap()
            .into_iter()
            .map(|e| {
                let meta = &e.value.metadata;
                let status = |field: &str| serde_json::from_value::<Status>(meta[field].clone()).unwrap();
                (meta["product"].as_u64().unwrap(), status("old_status"), status("status"), meta["stock"].as_i64().unwrap())
            })
            .collect();
        prop_assert_eq!(events, changes);
    }
}
