//! Integration-test support for the OPSCI app: a generated dataset (products,
//! events and stock movements with every kind of bad record the course
//! mentions) with what must come out of it, computed here independently of
//! the app; and readers of what the app produced in Strapi and on the error
//! topic.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::Message;
use serde_json::Value;

use crate::strapi::Strapi;
use crate::Broker;

/// A small deterministic generator (no test should depend on luck).
pub struct Lcg(pub u64);

impl Lcg {
    /// The next number below `below`.
    pub fn next(&mut self, below: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % below
    }
}

/// How much to generate.
#[derive(Debug, Clone, Copy)]
pub struct Size {
    /// Products in the catalogue (ids 1..=products).
    pub products: u64,
    /// Ids above those that movements name (unknown products).
    pub unknown: u64,
    /// Events loaded from CSV.
    pub events: u64,
    /// Stock movements.
    pub movements: usize,
    /// Files the movements are split into.
    pub chunks: usize,
}

/// The input files, and what must come out of them.
pub struct Dataset {
    /// The products CSV.
    pub products: String,
    /// The events CSV.
    pub events: String,
    /// The movements, as CSV files.
    pub stock: Vec<String>,
    /// barcode → (stock, status)
    pub catalogue: BTreeMap<String, (i64, String)>,
    /// Events Strapi must hold, as (value or status change, count).
    pub events_expected: BTreeMap<String, usize>,
    /// Rejections by reason code.
    pub rejections: BTreeMap<String, usize>,
    /// Rows the loader itself rejects.
    pub malformed_rows: usize,
}

/// A product's status, as the course defines it (the app's default policy).
pub fn status(stock: i64, reference: i64) -> &'static str {
    if stock == 0 {
        "empty"
    } else if 10 * stock < reference {
        "danger"
    } else {
        "safe"
    }
}

/// The barcode of product `id`.
pub fn barcode(id: u64) -> String {
    format!("400000{id:07}")
}

impl Dataset {
    /// The dataset of `size`, always the same for the same size.
    pub fn generate(size: Size) -> Dataset {
        let mut rng = Lcg(42);
        let mut products = String::from("name,description,stock_available,barcode\n");
        let mut reference = BTreeMap::new();
        for id in 1..=size.products {
            let stock = if id % 50 == 0 { 0 } else { rng.next(120) as i64 };
            products.push_str(&format!("Product {id},\"Made for test, number {id}\",{stock},{}\n", barcode(id)));
            reference.insert(id, stock);
        }
        let mut events = String::from("value;metadata\n");
        let mut events_expected = BTreeMap::new();
        for n in 1..=size.events {
            events.push_str(&format!("Event {n};{{\"n\":{n},\"source\":\"csv\"}}\n"));
            *events_expected.entry(format!("Event {n}")).or_insert(0) += 1;
        }
        events.push_str("Broken event;{not json\n");
        let mut stock_now = reference.clone();
        let mut rejections = BTreeMap::<String, usize>::new();
        let mut malformed_rows = 0;
        let mut lines = Vec::new();
        for i in 0..size.movements {
            let id = 1 + rng.next(size.products + size.unknown);
            let roll = rng.next(100);
            let (line, outcome) = if i % 400 == 7 {
                malformed_rows += 1;
                (format!("{id},lots,IN"), None)
            } else if i % 300 == 11 {
                (format!("{id},5,SIDEWAYS"), Some(Err("bad_type")))
            } else {
                let amount = if roll < 3 {
                    0
                } else if roll < 5 {
                    -4
                } else {
                    1 + rng.next(25) as i64
                };
                let out = rng.next(100) < 55;
                let line = format!("{id},{amount},{}", if out { "OUT" } else { "IN" });
                let outcome = if amount <= 0 {
                    Err("bad_amount")
                } else if id > size.products {
                    Err("unknown_product")
                } else {
                    let before = stock_now[&id];
                    let after = if out { before - amount } else { before + amount };
                    if after < 0 {
                        Err("insufficient_stock")
                    } else {
                        stock_now.insert(id, after);
                        let (old, new) = (status(before, reference[&id]), status(after, reference[&id]));
                        Ok((old != new).then(|| format!("product {id}: {old} -> {new} at {after}")))
                    }
                };
                (line, Some(outcome))
            };
            match outcome {
                Some(Err(code)) => *rejections.entry(code.to_string()).or_insert(0) += 1,
                Some(Ok(Some(change))) => *events_expected.entry(change).or_insert(0) += 1,
                Some(Ok(None)) | None => {}
            }
            lines.push(line);
        }
        let stock = lines
            .chunks(size.movements.div_ceil(size.chunks))
            .map(|chunk| format!("id,amount,type\n{}\n", chunk.join("\n")))
            .collect();
        let catalogue = stock_now
            .iter()
            .map(|(id, stock)| (barcode(*id), (*stock, status(*stock, reference[id]).to_string())))
            .collect();
        Dataset { products, events, stock, catalogue, events_expected, rejections, malformed_rows }
    }
}

/// Every entry of a Strapi collection (Strapi 5: flat attributes).
pub fn strapi_all(strapi: &Strapi, collection: &str) -> Vec<Value> {
    let mut all = Vec::new();
    for page in 1.. {
        let reply = strapi.get(&format!("/api/{collection}?pagination[page]={page}&pagination[pageSize]=100"));
        assert_eq!(reply.status, 200, "{:?}", reply.body);
        all.extend(reply.body["data"].as_array().cloned().unwrap_or_default());
        if page >= reply.body["meta"]["pagination"]["pageCount"].as_u64().unwrap_or(1) {
            return all;
        }
    }
    all
}

/// barcode → (stock, status), and how many entries each barcode has.
pub fn strapi_catalogue(strapi: &Strapi) -> (BTreeMap<String, (i64, String)>, BTreeMap<String, usize>) {
    let (mut catalogue, mut counts) = (BTreeMap::new(), BTreeMap::new());
    for p in strapi_all(strapi, "products") {
        let barcode = p["barcode"].as_str().unwrap_or_default().to_string();
        *counts.entry(barcode.clone()).or_insert(0) += 1;
        catalogue
            .insert(barcode, (p["stock_available"].as_i64().unwrap_or(-1), p["status"].as_str().unwrap_or("").into()));
    }
    (catalogue, counts)
}

/// The events in Strapi, in the dataset's notation.
pub fn strapi_events(strapi: &Strapi) -> BTreeMap<String, usize> {
    let mut events = BTreeMap::new();
    for e in strapi_all(strapi, "events") {
        let m = &e["metadata"];
        let key = match m.get("old_status") {
            Some(old) => format!(
                "product {}: {} -> {} at {}",
                m["product"],
                old.as_str().unwrap_or("?"),
                m["status"].as_str().unwrap_or("?"),
                m["stock"]
            ),
            None => e["value"].as_str().unwrap_or_default().to_string(),
        };
        *events.entry(key).or_insert(0) += 1;
    }
    events
}

/// The error topic: rejections by reason code, each movement counted once
/// (by its source offset: a broker may show records of aborted
/// transactions), and rows rejected by the loader.
pub fn error_topic(broker: &Broker, partitions: i32) -> (BTreeMap<String, usize>, usize) {
    let consumer = broker.reader("error", partitions, &[]);
    let mut seen = BTreeMap::new();
    let mut rows = 0;
    let mut last = Instant::now();
    while last.elapsed() < Duration::from_secs(3) {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            last = Instant::now();
            let value: Value =
                serde_json::from_slice(m.payload().unwrap_or_default()).expect("JSON on the error topic");
            if value["file"].as_str().is_some_and(|f| f.contains("stock")) {
                rows += 1;
            } else if let Some(code) = value["reason"]["code"].as_str() {
                let source = &value["source"];
                assert_eq!(source["topic"], "stock", "{value}");
                assert!(value["message"].as_str().is_some_and(|m| !m.is_empty()), "{value}");
                seen.insert((source["partition"].as_u64(), source["offset"].as_i64()), code.to_string());
            }
        }
    }
    let mut codes = BTreeMap::new();
    for code in seen.into_values() {
        *codes.entry(code).or_insert(0) += 1;
    }
    (codes, rows)
}
