//! Integration-test support: a real Kafka-protocol broker over TCP.
//!
//! [`Broker::start`] runs the test broker (nisshi 0.7.0, in-memory storage)
//! on free loopback ports in a temporary directory and stops it when dropped.
//! The binary is `$NISSHI_BIN`, else `nisshi` in cargo's bin directory, else
//! on `PATH`; `.ci/run` installs it.

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

pub mod deploy;
pub mod strapi;

/// The broker version the tests are written against.
pub const BROKER_VERSION: &str = "0.7.0";

/// A running broker; stopped (killed) on drop.
pub struct Broker {
    child: Child,
    bootstrap: String,
    dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free loopback port")
}

/// Where the broker binary is.
pub fn broker_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("NISSHI_BIN") {
        return PathBuf::from(path);
    }
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
    match cargo_home.map(|h| h.join("bin").join("nisshi")) {
        Some(path) if path.exists() => path,
        _ => PathBuf::from("nisshi"),
    }
}

impl Broker {
    /// Starts a broker and waits until it accepts connections.
    ///
    /// # Panics
    /// When the binary is missing or the broker does not come up within 30 s:
    /// the tests that need it cannot run, and say why.
    pub fn start() -> Broker {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("broker.log")).expect("broker log file");
        let binary = broker_binary();
        let child = Command::new(&binary)
            .arg("broker")
            .arg("--listener-url")
            .arg(format!("tcp://127.0.0.1:{port}"))
            .arg("--advertised-listener-url")
            .arg(format!("tcp://127.0.0.1:{port}"))
            .arg("--storage-engine")
            .arg("memory://nisshi/")
            .arg("--group-initial-rebalance-delay")
            .arg("0s")
            .current_dir(dir.path())
            // With a test's RUST_LOG the broker logs every request: slow, and
            // gigabytes of log.
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start the test broker {}: {e} (run .ci/run to install it)", binary.display())
            });
        let mut broker = Broker { child, bootstrap: format!("127.0.0.1:{port}"), dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(&broker.bootstrap).is_err() {
            if let Ok(Some(status)) = broker.child.try_wait() {
                panic!("the test broker exited ({status}):\n{}", broker.log());
            }
            if Instant::now() > deadline {
                panic!("the test broker did not listen within 30 s:\n{}", broker.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        broker
    }

    /// `host:port` to give clients as `bootstrap.servers`.
    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    /// What the broker has printed so far.
    pub fn log(&self) -> String {
        let mut text = String::new();
        if let Ok(mut file) = std::fs::File::open(self.dir.path().join("broker.log")) {
            let _ = file.read_to_string(&mut text);
        }
        text
    }

    /// A client configuration pointing at this broker.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.bootstrap).set("broker.address.family", "v4");
        config
    }

    /// A consumer of every partition of `topic`, from the beginning, with
    /// extra `settings` (such as `isolation.level`).
    pub fn reader(&self, topic: &str, partitions: i32, settings: &[(&str, &str)]) -> BaseConsumer {
        let mut config = self.client_config();
        config.set("group.id", format!("reader-{topic}")).set("enable.auto.commit", "false");
        for (key, value) in settings {
            config.set(*key, *value);
        }
        let consumer: BaseConsumer = config.create().expect("consumer");
        // With the leaders known before the assignment, librdkafka queries the
        // start offsets at once instead of failing and retrying 500 ms later.
        consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).expect("metadata");
        let mut assignment = TopicPartitionList::new();
        for p in 0..partitions {
            assignment.add_partition_offset(topic, p, Offset::Beginning).expect("partition");
        }
        consumer.assign(&assignment).expect("assign");
        consumer
    }

    /// Creates `topic` with `partitions` partitions.
    pub fn create_topic(&self, topic: &str, partitions: i32) {
        let admin: AdminClient<DefaultClientContext> = self.client_config().create().expect("admin client");
        let new_topic = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let results = futures::executor::block_on(admin.create_topics([&new_topic], &options)).expect("create topics");
        for result in results {
            if let Err((name, code)) = result {
                panic!("cannot create topic {name}: {code}");
            }
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
