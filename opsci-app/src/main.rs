//! `opsci-app`:
//! - `opsci-app produce products|events|stock FILE` loads a CSV file onto its topic;
//! - `opsci-app run` runs the OPSCI topology on Kafka until SIGINT or SIGTERM;
//! - `opsci-app` (or `opsci-app demo`) runs the OPSCI topology in process
//!   (stream-core's test driver, no broker) on the embedded sample products
//!   and stock movements, and prints the resulting product table.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use opsci_app::sources::{self, KafkaConfig, Kind};

use opsci_app::model::{Event, Product};
use opsci_app::policy::StatusPolicy;
use opsci_app::topology::{self, Rejection, Topics, PRODUCTS_STORE, STOCK_STORE};
use stream_core::runtime::{Runtime, RuntimeConfig};
use stream_core::serdes::{Bytes, Json, Utf8, I64};
use stream_core::{StreamsConfig, TestDriver};

/// Sample products, `name,description,stock_available,barcode`; ids 1..N.
const PRODUCTS: &str = include_str!("../data/products.csv");
/// Sample movements, `id,amount,type`, some of them invalid on purpose.
const STOCK: &str = include_str!("../data/stock.csv");

/// Pipes a CSV sample into `topic` as `produce` would load it; returns the
/// rows that did not parse (named `file:line`), as `produce` would send them
/// to the error topic.
fn load(
    driver: &TestDriver,
    kind: Kind,
    topic: &str,
    file: &str,
    csv: &str,
) -> Result<Vec<String>, stream_core::StreamError> {
    let input = driver.input_topic(topic, Bytes, Bytes);
    let mut errors = Vec::new();
    for row in sources::parse(kind, csv.as_bytes()) {
        match row {
            Ok(row) => input.pipe(row.key.unwrap_or_default().into_bytes(), row.value.into_bytes())?,
            Err(error) => errors.push(format!("{file}:{}: {}", error.line, error.reason)),
        }
    }
    Ok(errors)
}

#[derive(Parser)]
#[command(version, about = "The OPSCI stream processing app")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Loads a CSV file (the course's formats) onto its topic.
    Produce {
        /// Which file format.
        kind: Kind,
        /// The CSV file.
        file: PathBuf,
        #[command(flatten)]
        kafka: KafkaArgs,
    },
    /// Runs the topology on Kafka until SIGINT or SIGTERM.
    Run {
        #[command(flatten)]
        kafka: KafkaArgs,
        /// Application id: consumer group and prefix of internal topics.
        #[arg(long, env = "APPLICATION_ID", default_value = "opsci")]
        application_id: String,
        /// Commit interval in milliseconds.
        #[arg(long, env = "COMMIT_INTERVAL_MS", default_value_t = 100)]
        commit_interval_ms: u64,
        /// A product is in danger under this percentage of its reference stock.
        #[arg(long, env = "DANGER_PERCENT", default_value_t = 10)]
        danger_percent: u32,
        /// A product is in danger under this many units, whatever its reference stock.
        #[arg(long, env = "DANGER_FLOOR", default_value_t = 0)]
        danger_floor: i64,
    },
    /// Runs the topology in process on the embedded samples (the default).
    Demo,
}

#[derive(Args)]
struct KafkaArgs {
    /// Bootstrap servers; defaults to the course's BROKER_1..BROKER_3, then localhost:9092.
    #[arg(long, env = "KAFKA_BROKERS")]
    brokers: Option<String>,
    #[arg(long, env = "PRODUCT_TOPIC", default_value = "product")]
    product_topic: String,
    #[arg(long, env = "EVENT_TOPIC", default_value = "event")]
    event_topic: String,
    #[arg(long, env = "STOCK_TOPIC", default_value = "stock")]
    stock_topic: String,
    #[arg(long, env = "ERROR_TOPIC", default_value = "error")]
    error_topic: String,
}

impl KafkaArgs {
    fn config(self) -> KafkaConfig {
        let course =
            ["BROKER_1", "BROKER_2", "BROKER_3"].iter().filter_map(|v| std::env::var(v).ok()).collect::<Vec<_>>();
        let brokers = self.brokers.or_else(|| (!course.is_empty()).then(|| course.join(",")));
        KafkaConfig {
            brokers: brokers.unwrap_or_else(|| "localhost:9092".to_string()),
            topics: Topics {
                product: self.product_topic,
                event: self.event_topic,
                stock: self.stock_topic,
                error: self.error_topic,
            },
            properties: Vec::new(),
        }
    }
}

fn produce(kind: Kind, file: PathBuf, kafka: KafkaArgs) -> Result<bool, Box<dyn std::error::Error>> {
    let config = kafka.config();
    let summary = sources::produce(&config, kind, &file)?;
    println!(
        "{}: {} rows, {} sent, {} rejected to `{}`, {} not delivered",
        file.display(),
        summary.rows,
        summary.sent,
        summary.rejected,
        config.topics.error,
        summary.failed
    );
    Ok(summary.failed == 0)
}

fn run(
    kafka: KafkaArgs,
    application_id: String,
    commit_interval: Duration,
    policy: StatusPolicy,
) -> Result<bool, Box<dyn std::error::Error>> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone())?;
    }
    let kafka = kafka.config();
    let topology = topology::build(&kafka.topics, policy)?;
    let streams = StreamsConfig::new(application_id).dead_letter_to(kafka.topics.error.clone());
    let mut config = RuntimeConfig::new(streams, kafka.brokers);
    config.commit_interval = commit_interval;
    config.properties = kafka.properties;
    let mut runtime = Runtime::new(topology, config)?;
    eprintln!("opsci-app: running; stop with SIGINT or SIGTERM");
    runtime.run(|_| stop.load(Ordering::Relaxed))?;
    let m = runtime.metrics().totals;
    eprintln!(
        "opsci-app: stopped after {} records in, {} out, {} dead-lettered",
        m.records_in, m.records_out, m.dead_lettered
    );
    Ok(true)
}

fn demo() -> Result<bool, Box<dyn std::error::Error>> {
    let topics = Topics::default();
    let config = StreamsConfig::new("opsci").dead_letter_to(topics.error.clone());
    let topology = topology::build(&topics, StatusPolicy::default())?;
    let driver = TestDriver::builder(topology).config(config).partitions(3).build()?;

    let mut unloaded = load(&driver, Kind::Products, &topics.product, "products.csv", PRODUCTS)?;
    unloaded.extend(load(&driver, Kind::Stock, &topics.stock, "stock.csv", STOCK)?);

    let catalogue = driver.store(PRODUCTS_STORE, Utf8, Json::<Product>::new()).all()?;
    let levels: BTreeMap<String, i64> = driver.store(STOCK_STORE, Utf8, I64).all()?.into_iter().collect();
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
    let rejections = driver.output_topic(&topics.error, Utf8, Json::<Rejection>::new()).read_records()?;
    let events = driver.output_topic(&topics.event, Utf8, Json::<Event>::new()).read_records()?;
    println!("\n{} movements rejected, {} rows not loaded:", rejections.len(), unloaded.len());
    for error in &unloaded {
        println!("  {error}");
    }
    for r in &rejections {
        let s = &r.value.source;
        println!("  {}[{}]@{}: {}", s.topic, s.partition, s.offset, r.value.message);
    }
    println!("{} status changes sent as events, for example:", events.len());
    for e in events.iter().take(3) {
        println!("  {}", e.value.value);
    }
    println!("(in process, no broker: stream-core's test driver)");
    Ok(true)
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Some(Command::Produce { kind, file, kafka }) => produce(kind, file, kafka),
        Some(Command::Run { kafka, application_id, commit_interval_ms, danger_percent, danger_floor }) => {
            let policy = StatusPolicy { danger_percent, danger_floor };
            run(kafka, application_id, Duration::from_millis(commit_interval_ms), policy)
        }
        Some(Command::Demo) | None => demo(),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("opsci-app: {error}");
            ExitCode::FAILURE
        }
    }
}
