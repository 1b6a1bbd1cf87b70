//! `opsci-app` with no subcommand: the whole pipeline on embedded defaults.
//!
//! 1. Kafka: `KAFKA_BROKERS` when set, else an in-process Kafka-protocol
//!    cluster (librdkafka's mock cluster: NOT durable, gone when the command
//!    ends);
//! 2. Strapi: `STRAPI_URL` and `STRAPI_TOKEN` when set, else the
//!    repository's Strapi project on SQLite in a temporary directory,
//!    installed (once) and started by this command;
//! 3. loads the embedded sample products, events and stock movements with
//!    the same loader as `opsci-app produce`;
//! 4. runs the app (topology, Strapi sync) until Strapi's catalogue equals
//!    the app's state and the events are written, then prints the product
//!    table as Strapi holds it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use stream_core::runtime::Guarantee;
use stream_core::serdes::{Json, Utf8, I64};

use crate::app::{self, AppConfig, Running};
use crate::kafka::KafkaConfig;
use crate::model::Product;
use crate::policy::StatusPolicy;
use crate::sources::{self, Kind};
use crate::strapi::client::{Entry, StrapiProduct};
use crate::strapi::local::LocalStrapi;
use crate::strapi::{StrapiClient, Token};
use crate::topology::{product_states, Topics, PRODUCTS_STORE, STOCK_STORE};

/// The samples: products (`name,description,stock_available,barcode`, ids
/// 1..N), events (`value;metadata`) and movements (`id,amount,type`), some
/// of them invalid on purpose.
const SAMPLES: [(Kind, &str, &str); 3] = [
    (Kind::Products, "products.csv", include_str!("../data/products.csv")),
    (Kind::Events, "events.csv", include_str!("../data/events.csv")),
    (Kind::Stock, "stock.csv", include_str!("../data/stock.csv")),
];

type Error = Box<dyn std::error::Error>;

/// Runs the demo; see the [module docs](self).
pub fn run(brokers: Option<String>, strapi: Option<(String, Token)>) -> Result<(), Error> {
    let topics = Topics::default();
    let application_id = format!("opsci-demo-{}", std::process::id());
    const PARTITIONS: u32 = 3;
    // 1. Kafka.
    let _cluster;
    let (brokers, guarantee) = match brokers {
        Some(brokers) => (brokers, Guarantee::ExactlyOnce),
        None => {
            let cluster = rdkafka::mocking::MockCluster::new(1)?;
            // It does not implement topic creation: make every topic now.
            let plan = crate::topology::build(&topics, StatusPolicy::default(), Arc::default())?
                .partition_plan(&application_id, |_| Some(PARTITIONS))?;
            let entries = format!("{application_id}-strapi-entries");
            let app_topics = [&topics.event, &topics.error, &topics.catalogue].map(|t| (t.clone(), PARTITIONS));
            for (topic, partitions) in plan.topics.into_iter().chain(app_topics).chain([(entries, 1)]) {
                cluster.create_topic(&topic, partitions as i32, 1)?;
            }
            let brokers = cluster.bootstrap_servers();
            _cluster = cluster;
            eprintln!("Kafka: in-process cluster at {brokers} (librdkafka's mock: NOT durable, gone at exit; set KAFKA_BROKERS to use a real one)");
            // The mock cluster does not store transactional offset commits.
            (brokers, Guarantee::AtLeastOnce)
        }
    };
    // 2. Strapi.
    let local;
    let (url, token) = match strapi {
        Some(strapi) => strapi,
        None => {
            eprintln!("Strapi: starting the project in strapi/ on SQLite (the first run installs its node modules)");
            local = LocalStrapi::start(Duration::from_secs(180))?;
            (local.url().to_string(), local.token().clone())
        }
    };
    eprintln!("Strapi: {url}");
    // 3. Samples.
    let kafka = KafkaConfig { brokers, topics, properties: Vec::new() };
    let config = AppConfig {
        kafka: kafka.clone(),
        application_id,
        guarantee,
        commit_interval: Duration::from_millis(100),
        policy: StatusPolicy::default(),
        state_dir: None,
        partitions: PARTITIONS,
        strapi: Some((url.clone(), token.clone())),
        beginning: true,
        http: None,
        // The demo's cluster is in process (or given): it is there or it is not.
        startup_timeout: Some(Duration::from_secs(60)),
    };
    let topics = &kafka.topics;
    let all_topics = [&topics.product, &topics.stock, &topics.event, &topics.error, &topics.catalogue];
    kafka.ensure_topics(&all_topics.map(|t| (t.as_str(), t == &topics.catalogue)), PARTITIONS)?;
    let samples = tempfile::tempdir()?;
    for (kind, name, text) in SAMPLES {
        let path = samples.path().join(name);
        std::fs::write(&path, text)?;
        let s = sources::produce(&kafka, kind, &path)?;
        eprintln!("loaded {name}: {} rows, {} sent, {} rejected to `{}`", s.rows, s.sent, s.rejected, topics.error);
    }
    // 4. The app, until Strapi has caught up.
    let stop = Arc::new(AtomicBool::new(false));
    let client = StrapiClient::new(&url, token, Arc::default());
    let watcher = {
        let (stop, client) = (stop.clone(), client.clone());
        let policy = config.policy;
        move |running: Running| {
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(120);
                let mut events = (0, Instant::now());
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(300));
                    let written = running.app.strapi_events();
                    if written != events.0 {
                        events = (written, Instant::now());
                    }
                    let settled = events.1.elapsed() > Duration::from_secs(2) && running.app.strapi_backlog() == 0;
                    if (settled && in_sync(&running, &client, &policy)) || Instant::now() > deadline {
                        stop.store(true, Ordering::Relaxed);
                    }
                }
            });
        }
    };
    let totals = app::run(config, stop, watcher)?;

    let mut rows: Vec<StrapiProduct> = client.all("products")?.iter().map(Entry::product).collect();
    rows.sort_by(|a, b| a.barcode.cmp(&b.barcode));
    println!("\nProducts in Strapi ({url}):");
    println!("{:<14} {:<8} {:>5}  status", "barcode", "name", "stock");
    for p in &rows {
        let (barcode, status) = (p.barcode.as_deref().unwrap_or("-"), p.status.as_deref().unwrap_or("-"));
        println!("{barcode:<14} {:<8} {:>5}  {status}", p.name, p.stock_available);
    }
    let events = client.all("events")?.len();
    println!(
        "\n{events} events in Strapi; {} records processed, {} sent on; rejected rows and movements are on the `{}` topic.",
        totals.records_in, totals.records_out, topics.error
    );
    Ok(())
}

/// Whether Strapi's products equal the app's state (name, stock, status).
fn in_sync(running: &Running, client: &StrapiClient, policy: &StatusPolicy) -> bool {
    let (Ok(products), Ok(stock)) =
        (running.stores.all(PRODUCTS_STORE, Utf8, Json::<Product>::new()), running.stores.all(STOCK_STORE, Utf8, I64))
    else {
        return false;
    };
    let expected: BTreeMap<Option<String>, (i64, Option<String>)> = product_states(products, stock, policy)
        .into_iter()
        .map(|s| (Some(s.product.barcode), (s.stock, Some(s.status.to_string()))))
        .collect();
    let Ok(entries) = client.all("products") else { return false };
    let actual: BTreeMap<Option<String>, (i64, Option<String>)> =
        entries.iter().map(Entry::product).map(|p| (p.barcode, (p.stock_available, p.status))).collect();
    !expected.is_empty() && expected == actual
}
