//! Integration-test support: real brokers over TCP, and the harnesses that
//! start Strapi and read the deployment files.
//!
//! [`Broker::start`] runs a broker on free loopback ports in a temporary
//! directory and stops it when dropped. Which broker is [`BrokerKind::from_env`]:
//!
//! - **Apache Kafka 4.4.0** (the default): a KRaft node started by
//!   `kafka/kafka.sh node` from the jars `kafka/kafka.sh install` resolves;
//!   [`Broker::cluster`] starts three, and a node can be killed and restarted.
//! - **nisshi 0.7.0** (`TEST_BROKER=nisshi`), in-memory storage: a broker
//!   that shows the records of aborted transactions, on which stream-core's
//!   exactly-once must hold too (`tests/tests/broker.rs` documents its deviations).

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

pub mod deploy;
pub mod fold;
pub mod opsci;
pub mod postgres;
pub mod proxy;
pub mod strapi;

/// Declares, for each test function `name(kind: BrokerKind)`, the tests
/// `kafka::name` and `nisshi::name`, which run it on each broker.
#[macro_export]
macro_rules! on_each_broker {
    ($($name:ident),* $(,)?) => {
        mod kafka {
            $(#[test]
            fn $name() {
                super::$name($crate::BrokerKind::Kafka)
            })*
        }
        mod nisshi {
            $(#[test]
            fn $name() {
                super::$name($crate::BrokerKind::Nisshi)
            })*
        }
    };
}

/// The nisshi version the tests are written against.
pub const NISSHI_VERSION: &str = "0.7.0";

/// Which broker a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerKind {
    /// Apache Kafka 4.4.0, the reference.
    Kafka,
    /// nisshi 0.7.0, which shows aborted records to `read_committed` readers.
    Nisshi,
}

impl BrokerKind {
    /// `TEST_BROKER` (`kafka`, the default, or `nisshi`).
    ///
    /// # Panics
    /// On another value.
    pub fn from_env() -> BrokerKind {
        match std::env::var("TEST_BROKER").as_deref() {
            Err(_) | Ok("") | Ok("kafka") => BrokerKind::Kafka,
            Ok("nisshi") => BrokerKind::Nisshi,
            Ok(other) => panic!("TEST_BROKER={other}: expected kafka or nisshi"),
        }
    }

    /// Whether `read_committed` readers see each committed result exactly
    /// once, aborted records hidden (Apache Kafka). On nisshi, outputs are
    /// read uncommitted and de-duplicated by provenance instead.
    pub fn hides_aborted_records(self) -> bool {
        self == BrokerKind::Kafka
    }

    /// The isolation level with which tests read outputs on this broker.
    pub fn output_isolation(self) -> &'static str {
        if self.hides_aborted_records() {
            "read_committed"
        } else {
            "read_uncommitted"
        }
    }
}

/// A free loopback port.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free loopback port")
}

/// Sends `signal` (`TERM`, `KILL`, …) to the process group the child leads
/// (it and the processes it started: Strapi's under run.sh, PostgreSQL's backends).
pub(crate) fn signal_group(child: &Child, signal: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg("--")
        .arg(format!("-{}", child.id()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// The repository's root.
pub fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace root").to_path_buf()
}

/// Where the nisshi binary is: `$NISSHI_BIN`, else `nisshi` in cargo's bin
/// directory, else on `PATH`; `.ci/run` installs it.
pub fn nisshi_binary() -> PathBuf {
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

/// One broker process (a Kafka node, or nisshi), restartable on the same
/// ports and data.
struct Node {
    command: Command,
    child: Option<Child>,
    /// The port it listens on for clients.
    port: u16,
    log: PathBuf,
}

impl Node {
    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("broker log file");
        let child = self
            .command
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start the test broker {:?}: {e} (run .ci/run to install it)", self.command)
            });
        self.child = Some(child);
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits until the node accepts connections.
    fn wait_listening(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("the test broker exited ({status}):\n{}", read(&self.log));
            }
            assert!(
                Instant::now() < deadline,
                "the test broker did not listen within {within:?}:\n{}",
                read(&self.log)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn read(path: &Path) -> String {
    let mut text = String::new();
    if let Ok(mut file) = std::fs::File::open(path) {
        let _ = file.read_to_string(&mut text);
    }
    text
}

/// A running broker or cluster; stopped (killed) on drop.
pub struct Broker {
    kind: BrokerKind,
    nodes: Vec<Node>,
    /// What clients are given: each node's port, or the proxy in front of it.
    bootstrap: String,
    proxies: Vec<proxy::Proxy>,
    dir: tempfile::TempDir,
}

impl Broker {
    /// Starts the broker of [`BrokerKind::from_env`] and waits until it
    /// serves metadata.
    ///
    /// # Panics
    /// When the broker is not installed or does not come up: the tests that
    /// need it cannot run, and say why.
    pub fn start() -> Broker {
        Broker::start_kind(BrokerKind::from_env())
    }

    /// Starts one broker of `kind`.
    pub fn start_kind(kind: BrokerKind) -> Broker {
        match kind {
            BrokerKind::Kafka => Broker::kafka(1, false).started(),
            BrokerKind::Nisshi => Broker::nisshi(),
        }
    }

    /// Starts an Apache Kafka cluster of `nodes` KRaft nodes (each broker
    /// and controller).
    pub fn cluster(nodes: usize) -> Broker {
        Broker::kafka(nodes, false).started()
    }

    /// Starts one Apache Kafka node behind a [`proxy::Proxy`]: its
    /// advertised listener is the proxy, so every client connection goes
    /// through it.
    pub fn behind_proxy() -> Broker {
        Broker::kafka(1, true).started()
    }

    /// One Apache Kafka node, its ports chosen but not started yet (see
    /// [`Broker::start_nodes`]): a client can be pointed at it first.
    pub fn not_started() -> Broker {
        Broker::kafka(1, false)
    }

    /// Starts every node and waits until each listens, without waiting for
    /// the cluster to be ready: what a client started right away meets.
    pub fn start_nodes(&mut self) {
        for node in &mut self.nodes {
            node.spawn();
        }
        for node in &mut self.nodes {
            node.wait_listening(Duration::from_secs(90));
        }
    }

    fn started(mut self) -> Broker {
        self.start_nodes();
        self.wait_ready(self.nodes.len());
        self
    }

    fn kafka(count: usize, proxied: bool) -> Broker {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let ports: Vec<(u16, u16)> = (0..count).map(|_| (free_port(), free_port())).collect();
        let voters: Vec<String> =
            ports.iter().enumerate().map(|(i, (_, controller))| format!("{}@127.0.0.1:{controller}", i + 1)).collect();
        let proxies: Vec<proxy::Proxy> =
            if proxied { ports.iter().map(|(port, _)| proxy::Proxy::start(*port)).collect() } else { Vec::new() };
        let script = repository().join("kafka").join("kafka.sh");
        let nodes = ports
            .iter()
            .enumerate()
            .map(|(i, (port, controller))| {
                let node_dir = dir.path().join(format!("node-{}", i + 1));
                let advertised = proxies.get(i).map_or(*port, proxy::Proxy::port);
                let mut command = Command::new("bash");
                command
                    .arg(&script)
                    .arg("node")
                    .args(["--dir", &node_dir.to_string_lossy()])
                    .args(["--port", &port.to_string()])
                    .args(["--controller-port", &controller.to_string()])
                    .args(["--node-id", &(i + 1).to_string()])
                    .args(["--voters", &voters.join(",")])
                    .args(["--advertised", &format!("127.0.0.1:{advertised}")])
                    .args(["--nodes", &count.to_string()]);
                Node { command, child: None, port: *port, log: dir.path().join(format!("node-{}.log", i + 1)) }
            })
            .collect();
        let bootstrap = match proxies.is_empty() {
            true => ports.iter().map(|(p, _)| format!("127.0.0.1:{p}")).collect::<Vec<_>>().join(","),
            false => proxies.iter().map(|p| format!("127.0.0.1:{}", p.port())).collect::<Vec<_>>().join(","),
        };
        Broker { kind: BrokerKind::Kafka, nodes, bootstrap, proxies, dir }
    }

    fn nisshi() -> Broker {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let port = free_port();
        let mut command = Command::new(nisshi_binary());
        command
            .arg("broker")
            .args(["--listener-url", &format!("tcp://127.0.0.1:{port}")])
            .args(["--advertised-listener-url", &format!("tcp://127.0.0.1:{port}")])
            .args(["--storage-engine", "memory://nisshi/"])
            .args(["--group-initial-rebalance-delay", "0s"])
            .current_dir(dir.path())
            // With a test's RUST_LOG the broker logs every request: slow, and
            // gigabytes of log.
            .env_remove("RUST_LOG");
        let log = dir.path().join("broker.log");
        let node = Node { command, child: None, port, log };
        let mut broker = Broker {
            kind: BrokerKind::Nisshi,
            nodes: vec![node],
            bootstrap: format!("127.0.0.1:{port}"),
            proxies: Vec::new(),
            dir,
        };
        broker.nodes[0].spawn();
        broker.nodes[0].wait_listening(Duration::from_secs(30));
        broker
    }

    /// Waits until the metadata lists `count` brokers: a KRaft node listens
    /// before it is registered and unfenced.
    pub fn wait_ready(&self, count: usize) {
        let consumer: BaseConsumer = self.client_config().create().expect("metadata client");
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            match consumer.fetch_metadata(None, Duration::from_secs(5)) {
                Ok(metadata) if metadata.brokers().len() >= count => return,
                _ if Instant::now() > deadline => panic!("the cluster is not ready after 90 s:\n{}", self.log()),
                _ => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// Which broker this is.
    pub fn kind(&self) -> BrokerKind {
        self.kind
    }

    /// `host:port,...` to give clients as `bootstrap.servers`.
    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    /// The number of nodes.
    pub fn nodes(&self) -> usize {
        self.nodes.len()
    }

    /// The proxy in front of node `i`, for a broker started [`Broker::behind_proxy`].
    pub fn proxy(&self, i: usize) -> &proxy::Proxy {
        &self.proxies[i]
    }

    /// Kills node `i` (0-based) with SIGKILL.
    pub fn kill_node(&mut self, i: usize) {
        self.nodes[i].kill();
    }

    /// Starts node `i` again on its ports and data (nisshi's memory storage
    /// starts empty) and waits until it listens.
    pub fn restart_node(&mut self, i: usize) {
        self.nodes[i].spawn();
        self.nodes[i].wait_listening(Duration::from_secs(90));
    }

    /// What the nodes have printed so far.
    pub fn log(&self) -> String {
        self.nodes.iter().map(|n| read(&n.log)).collect::<Vec<_>>().join("\n")
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

    /// Creates `topic` with `partitions` partitions, replicated on up to
    /// three nodes, and waits until every partition has a leader.
    pub fn create_topic(&self, topic: &str, partitions: i32) {
        let admin: AdminClient<DefaultClientContext> = self.client_config().create().expect("admin client");
        let replication = self.nodes.len().min(3) as i32;
        let new_topic = NewTopic::new(topic, partitions, TopicReplication::Fixed(replication));
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let results = futures::executor::block_on(admin.create_topics([&new_topic], &options)).expect("create topics");
        for result in results {
            if let Err((name, code)) = result {
                panic!("cannot create topic {name}: {code}");
            }
        }
        let consumer: BaseConsumer = self.client_config().create().expect("metadata client");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let led = consumer.fetch_metadata(Some(topic), Duration::from_secs(5)).ok().is_some_and(|m| {
                m.topics().iter().any(|t| {
                    t.error().is_none()
                        && t.partitions().len() == partitions as usize
                        && t.partitions().iter().all(|p| p.leader() >= 0 && p.error().is_none())
                })
            });
            if led {
                return;
            }
            assert!(Instant::now() < deadline, "topic {topic} has no leader for every partition after 30 s");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.kill();
        }
        // Keep the logs of a failed test's brokers for a look afterwards.
        if std::thread::panicking() {
            let kept = self.dir.path().to_path_buf();
            eprintln!("broker logs kept in {}", kept.display());
            std::mem::forget(std::mem::replace(&mut self.dir, tempfile::tempdir().expect("temp dir")));
        }
    }
}
