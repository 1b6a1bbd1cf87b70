//! `opsci-app`: for now, runs the OPSCI topology in process (stream-core's
//! test driver, no broker) on the embedded sample products and stock
//! movements, and prints the resulting product table.

use std::collections::BTreeMap;
use std::process::ExitCode;

use opsci_app::model::{Event, Product};
use opsci_app::policy::StatusPolicy;
use opsci_app::topology::{self, Rejection, Topics, PRODUCTS_STORE, STOCK_STORE};
use stream_core::serdes::{Bytes, Json, Utf8, I64};
use stream_core::{StreamsConfig, TestDriver};

/// Sample products, `name,description,stock_available,barcode`; ids 1..N.
const PRODUCTS: &str = include_str!("../data/products.csv");
/// Sample movements, `id,amount,type`, some of them invalid on purpose.
const STOCK: &str = include_str!("../data/stock.csv");

/// The data rows of a small CSV sample (no quoted fields).
fn rows(csv: &str) -> impl Iterator<Item = Vec<&str>> {
    csv.lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.split(',').map(str::trim).collect())
}

/// A sample movement row as the course's producers would send it; an amount
/// that is not a number is sent as text, for the topology to reject.
fn movement_json(row: &[&str]) -> String {
    let field = |i: usize| row.get(i).copied().unwrap_or_default();
    let amount = field(1)
        .parse::<i64>()
        .map_or_else(|_| format!("{:?}", field(1)), |a| a.to_string());
    format!(
        r#"{{"id":{},"amount":{},"type":{:?}}}"#,
        field(0),
        amount,
        field(2)
    )
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let topics = Topics::default();
    let config = StreamsConfig::new("opsci").dead_letter_to(topics.error.clone());
    let topology = topology::build(&topics, StatusPolicy::default())?;
    let driver = TestDriver::builder(topology)
        .config(config)
        .partitions(3)
        .build()?;

    let products = driver.input_topic(&topics.product, Utf8, Json::<Product>::new());
    for (i, row) in rows(PRODUCTS).enumerate() {
        let [name, description, stock, barcode] = row[..] else {
            continue;
        };
        let id = i as u64 + 1;
        let stock_available = stock.parse()?;
        let product = Product {
            id,
            name: name.into(),
            description: description.into(),
            stock_available,
            barcode: barcode.into(),
        };
        products.pipe(id.to_string(), product)?;
    }
    let stock = driver.input_topic(&topics.stock, Bytes, Bytes);
    for row in rows(STOCK) {
        stock.pipe(row[0].as_bytes().to_vec(), movement_json(&row).into_bytes())?;
    }

    let catalogue = driver
        .store(PRODUCTS_STORE, Utf8, Json::<Product>::new())
        .all()?;
    let levels: BTreeMap<String, i64> = driver
        .store(STOCK_STORE, Utf8, I64)
        .all()?
        .into_iter()
        .collect();
    let policy = StatusPolicy::default();
    let mut table: Vec<_> = catalogue
        .into_iter()
        .map(|(key, p)| {
            let stock = levels.get(&key).copied().unwrap_or(p.stock_available);
            (p.id, p.name, stock, policy.status(stock, p.stock_available))
        })
        .collect();
    table.sort_by_key(|row| row.0);
    println!("{:>3}  {:<8} {:>5}  status", "id", "name", "stock");
    for (id, name, stock, status) in table {
        println!("{id:>3}  {name:<8} {stock:>5}  {status}");
    }
    let rejections = driver
        .output_topic(&topics.error, Utf8, Json::<Rejection>::new())
        .read_records()?;
    let events = driver
        .output_topic(&topics.event, Utf8, Json::<Event>::new())
        .read_records()?;
    println!(
        "\n{} movements read, {} rejected:",
        rows(STOCK).count(),
        rejections.len()
    );
    for r in &rejections {
        let s = &r.value.source;
        println!(
            "  {}[{}]@{}: {}",
            s.topic, s.partition, s.offset, r.value.message
        );
    }
    println!(
        "{} status changes sent as events, for example:",
        events.len()
    );
    for e in events.iter().take(3) {
        println!("  {}", e.value.value);
    }
    println!("(in process, no broker: stream-core's test driver)");
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("opsci-app: {error}");
            ExitCode::FAILURE
        }
    }
}
