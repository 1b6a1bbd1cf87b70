//! `opsci-app`:
//! - `opsci-app` (or `opsci-app demo`) runs the whole pipeline on embedded
//!   defaults and prints the product table (see [`opsci_app::demo`]);
//! - `opsci-app produce products|events|stock FILE` loads a CSV file onto its topic;
//! - `opsci-app run` runs the topology, the Strapi sync and the HTTP
//!   endpoint until SIGINT or SIGTERM;
//! - `opsci-app status [ID]` prints stock and status from a running app.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use opsci_app::app::{self, AppConfig};
use opsci_app::kafka::KafkaConfig;
use opsci_app::model::ProductState;
use opsci_app::policy::StatusPolicy;
use opsci_app::sources::{self, Kind};
use opsci_app::strapi::Token;
use opsci_app::topology::Topics;
use stream_core::runtime::Guarantee;

type Error = Box<dyn std::error::Error>;

#[derive(Parser)]
#[command(version, about = "The OPSCI stream processing app")]
struct Cli {
    /// Log format on stderr.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
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
    /// Runs the topology, the Strapi sync and the HTTP endpoint until SIGINT or SIGTERM.
    Run(RunArgs),
    /// Prints stock and status per product, from a running app's HTTP endpoint.
    Status {
        /// Only this product.
        id: Option<u64>,
        /// The app's HTTP endpoint.
        #[arg(long, env = "HTTP_ADDR", default_value = "127.0.0.1:8080")]
        http_addr: SocketAddr,
    },
    /// Runs the whole pipeline on embedded defaults (the default command).
    Demo {
        /// Bootstrap servers; an in-process, non-durable cluster when unset.
        #[arg(long, env = "KAFKA_BROKERS")]
        brokers: Option<String>,
        #[command(flatten)]
        strapi: StrapiArgs,
    },
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
    /// The latest stock and status of each product (compacted; read by the Strapi sync).
    #[arg(long, env = "CATALOGUE_TOPIC", default_value = "catalogue")]
    catalogue_topic: String,
    /// An extra librdkafka property, `KEY=VALUE` (security.protocol, sasl.*,
    /// ssl.*, ...; prefixed `consumer.`, `producer.` or `admin.` for one kind
    /// of the runtime's clients only); repeatable, or separated by `;` in the
    /// variable.
    #[arg(long = "kafka-property", env = "KAFKA_PROPERTIES", hide_env_values = true, value_delimiter = ';', value_parser = property)]
    kafka_properties: Vec<(String, String)>,
}

/// `KEY=VALUE`, as a librdkafka property (the value is never shown: it may be a secret).
fn property(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => Ok((key.trim().to_string(), value.to_string())),
        _ => Err("expected KEY=VALUE".to_string()),
    }
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
                catalogue: self.catalogue_topic,
            },
            properties: self.kafka_properties,
        }
    }
}

#[derive(Args)]
struct StrapiArgs {
    /// Strapi's base URL, such as http://localhost:1337.
    #[arg(long, env = "STRAPI_URL")]
    strapi_url: Option<String>,
    /// A full-access Strapi API token (never printed).
    #[arg(long, env = "STRAPI_TOKEN", hide_env_values = true)]
    strapi_token: Option<String>,
}

impl StrapiArgs {
    fn config(self) -> Result<Option<(String, Token)>, Error> {
        match (self.strapi_url, self.strapi_token) {
            (Some(url), Some(token)) => Ok(Some((url, Token::new(token)))),
            (Some(_), None) => Err("STRAPI_URL is set but STRAPI_TOKEN is not".into()),
            (None, _) => Ok(None),
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum GuaranteeArg {
    ExactlyOnce,
    AtLeastOnce,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    kafka: KafkaArgs,
    #[command(flatten)]
    strapi: StrapiArgs,
    /// Application id: consumer group and prefix of internal topics.
    #[arg(long, env = "APPLICATION_ID", default_value = "opsci")]
    application_id: String,
    /// Processing guarantee.
    #[arg(long, env = "GUARANTEE", value_enum, default_value_t = GuaranteeArg::ExactlyOnce)]
    guarantee: GuaranteeArg,
    /// Commit interval in milliseconds (also how long Strapi writes are coalesced).
    #[arg(long, env = "COMMIT_INTERVAL_MS", default_value_t = 100)]
    commit_interval_ms: u64,
    /// A product is in danger under this percentage of its reference stock.
    #[arg(long, env = "DANGER_PERCENT", default_value_t = 10)]
    danger_percent: u32,
    /// A product is in danger under this many units, whatever its reference stock.
    #[arg(long, env = "DANGER_FLOOR", default_value_t = 0)]
    danger_floor: i64,
    /// Where tasks keep their RocksDB stores (rebuilt from changelogs when lost); in memory when unset.
    #[arg(long, env = "STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Partitions of the topics the app creates when they are missing.
    #[arg(long, env = "PARTITIONS", default_value_t = 6)]
    partitions: u32,
    /// Where to serve /metrics, /health and /products.
    #[arg(long, env = "HTTP_ADDR", default_value = "127.0.0.1:8080")]
    http_addr: SocketAddr,
    /// Whether the events already on the event topic when the app first
    /// starts go to Strapi too (true), or only later ones (false).
    #[arg(long, env = "BEGINNING", default_value_t = true, action = clap::ArgAction::Set)]
    beginning: bool,
    /// Seconds to wait for Kafka at start-up before giving up; unset: wait
    /// as long as it takes (logging what it waits for).
    #[arg(long, env = "STARTUP_TIMEOUT_S")]
    startup_timeout_s: Option<u64>,
}

fn produce(kind: Kind, file: PathBuf, kafka: KafkaArgs) -> Result<bool, Error> {
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

fn run(args: RunArgs) -> Result<bool, Error> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone())?;
    }
    let config = AppConfig {
        kafka: args.kafka.config(),
        application_id: args.application_id,
        guarantee: match args.guarantee {
            GuaranteeArg::ExactlyOnce => Guarantee::ExactlyOnce,
            GuaranteeArg::AtLeastOnce => Guarantee::AtLeastOnce,
        },
        commit_interval: Duration::from_millis(args.commit_interval_ms),
        policy: StatusPolicy { danger_percent: args.danger_percent, danger_floor: args.danger_floor },
        state_dir: args.state_dir,
        partitions: args.partitions,
        strapi: args.strapi.config()?,
        beginning: args.beginning,
        http: Some(args.http_addr),
        startup_timeout: args.startup_timeout_s.map(Duration::from_secs),
    };
    tracing::info!(brokers = %config.kafka.brokers, application = %config.application_id, "starting; stop with SIGINT or SIGTERM");
    let totals = app::run(config, stop, |_| tracing::info!("running"))?;
    tracing::info!(
        records_in = totals.records_in,
        records_out = totals.records_out,
        dead_lettered = totals.dead_lettered,
        "stopped"
    );
    Ok(true)
}

fn status(id: Option<u64>, addr: SocketAddr) -> Result<bool, Error> {
    let host = if addr.ip().is_unspecified() { SocketAddr::from(([127, 0, 0, 1], addr.port())) } else { addr };
    let get = |path: &str| -> Result<(String, Option<String>), Error> {
        let url = format!("http://{host}{path}");
        let mut response = ureq::get(&url).call().map_err(|e| format!("{url}: {e} (is `opsci-app run` running?)"))?;
        // `Link: </products?…>; rel="next"` when there are more pages.
        let next =
            response.headers().get("link").and_then(|link| link.to_str().ok()).and_then(|link| {
                link.strip_prefix('<')?.split_once(">; rel=\"next\"").map(|(path, _)| path.to_string())
            });
        Ok((response.body_mut().read_to_string()?, next))
    };
    let mut states: Vec<ProductState> = Vec::new();
    match id {
        Some(id) => states.push(serde_json::from_str(&get(&format!("/products/{id}"))?.0)?),
        None => {
            let mut next = Some("/products".to_string());
            while let Some(path) = next {
                let (body, more) = get(&path)?;
                states.extend(serde_json::from_str::<Vec<ProductState>>(&body)?);
                next = more;
            }
            states.sort_by_key(|s| s.product.id);
        }
    }
    println!("{:>5}  {:<24} {:>7}  status", "id", "name", "stock");
    for s in states {
        println!("{:>5}  {:<24} {:>7}  {}", s.product.id, s.product.name, s.stock, s.status);
    }
    Ok(true)
}

/// Logs on stderr, filtered by `RUST_LOG` (default: `default`).
fn init_logs(format: LogFormat, default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // No subcommand: `demo`, with its settings from the environment.
    let command = cli.command.or_else(|| Cli::try_parse_from(["opsci-app", "demo"]).ok()?.command);
    // The demo prints its own story; the other commands log what they do.
    let quiet = matches!(command, Some(Command::Demo { .. }) | Some(Command::Status { .. }));
    init_logs(cli.log_format, if quiet { "warn" } else { "info" });
    let result = match command {
        Some(Command::Produce { kind, file, kafka }) => produce(kind, file, kafka),
        Some(Command::Run(args)) => run(args),
        Some(Command::Status { id, http_addr }) => status(id, http_addr),
        Some(Command::Demo { brokers, strapi }) => {
            strapi.config().and_then(|strapi| opsci_app::demo::run(brokers, strapi)).map(|()| true)
        }
        None => Err("cannot read the demo's settings".into()),
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
