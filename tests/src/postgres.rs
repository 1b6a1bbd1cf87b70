//! Integration-test support: a real PostgreSQL server (Debian's
//! `postgresql` package).
//!
//! [`Postgres::start`] creates a cluster (`initdb`, trust authentication for
//! the user `test`) in a fresh temporary directory and runs `postgres` on a
//! free loopback port, its socket in that directory; [`Postgres::database`]
//! creates a database for one client (a Strapi, a sink). [`Postgres::stop`],
//! [`Postgres::kill`] and [`Postgres::start_again`] take it away and bring
//! it back on the same port and data, for tests where the database goes away
//! during a run; dropping it kills it.
//!
//! The server binaries are those of `$PG_BIN`, else of the newest
//! `/usr/lib/postgresql/<version>/bin`. PostgreSQL refuses to run as root:
//! as root, the harness runs it as the `postgres` user (which the package
//! creates) through `setpriv`.

use std::fs::OpenOptions;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{free_port, signal_group};

/// How long a start may take before the harness gives up.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The superuser of the test cluster.
pub const USER: &str = "test";

/// The directory holding `initdb`, `postgres` and `psql`.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, bin)| bin.join("postgres").exists())
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).unwrap_or_else(|| {
        panic!("no PostgreSQL server in /usr/lib/postgresql (apt-get install postgresql, or set PG_BIN)")
    })
}

/// Whether this process runs as root (`/proc/self` belongs to its user).
fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// `program` of the server's binaries, run as `postgres` when we are root.
fn server_command(program: &str) -> Command {
    let path = bin_dir().join(program);
    if is_root() {
        let mut command = Command::new("setpriv");
        command.args(["--reuid=postgres", "--regid=postgres", "--init-groups", "--"]).arg(path);
        command
    } else {
        Command::new(path)
    }
}

/// A running PostgreSQL server; killed on drop.
pub struct Postgres {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl Postgres {
    /// Creates a cluster and starts it.
    ///
    /// # Panics
    /// When `initdb` fails or the server does not accept connections within
    /// 60 s, with its log.
    pub fn start() -> Postgres {
        let dir = tempfile::Builder::new().prefix("postgres-test-").tempdir().expect("a temporary directory");
        if is_root() {
            let status = Command::new("chown").args(["postgres:postgres"]).arg(dir.path()).status();
            assert!(status.is_ok_and(|s| s.success()), "cannot give {} to the postgres user", dir.path().display());
        }
        let postgres = Postgres { child: None, port: free_port(), dir };
        let output = server_command("initdb")
            .arg("-D")
            .arg(postgres.data())
            .args(["-U", USER, "--auth=trust", "-E", "UTF8", "--no-sync", "--no-instructions"])
            .output()
            .unwrap_or_else(|e| panic!("cannot run initdb from {}: {e}", bin_dir().display()));
        assert!(
            output.status.success(),
            "initdb failed:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let mut postgres = postgres;
        postgres.start_again();
        postgres
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// Starts the server again after [`Postgres::stop`] or [`Postgres::kill`]:
    /// same port, same data. Waits until it accepts connections.
    ///
    /// # Panics
    /// As [`Postgres::start`]; also when it is running.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "PostgreSQL is already running");
        let log = OpenOptions::new().create(true).append(true).open(self.log_path()).expect("PostgreSQL log file");
        if is_root() {
            let _ = Command::new("chown").args(["postgres:postgres"]).arg(self.log_path()).status();
        }
        // No fsync: a test survives a killed server (the kernel keeps what
        // it wrote), not a lost machine.
        let child = server_command("postgres")
            .arg("-D")
            .arg(self.data())
            .args(["-p", &self.port.to_string(), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
            .arg("-k")
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start postgres from {}: {e}", bin_dir().display()));
        self.child = Some(child);
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                self.child = None;
                panic!("postgres exited at start-up ({status}):\n{}", self.log());
            }
            if self.psql("postgres", "SELECT 1").is_ok() {
                return;
            }
            if started.elapsed() > START_TIMEOUT {
                self.kill();
                panic!("postgres did not accept connections within {} s:\n{}", START_TIMEOUT.as_secs(), self.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs `sql` in `database` with `psql`; its output (unaligned, tuples
    /// only), or its error.
    pub fn psql(&self, database: &str, sql: &str) -> Result<String, String> {
        let output = Command::new(bin_dir().join("psql"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", USER, "-d", database])
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run psql: {e}"))?;
        match output.status.success() {
            true => Ok(String::from_utf8_lossy(&output.stdout).into_owned()),
            false => Err(String::from_utf8_lossy(&output.stderr).into_owned()),
        }
    }

    /// Creates database `name`; its connection URL.
    ///
    /// # Panics
    /// When PostgreSQL refuses.
    pub fn database(&self, name: &str) -> String {
        self.psql("postgres", &format!("CREATE DATABASE \"{name}\""))
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
        self.url(name)
    }

    /// The connection URL of database `name`.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/{name}", self.port)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the server (fast shutdown: SIGINT) and waits for it to end.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal_group(&child, "INT");
            let _ = child.wait();
        }
    }

    /// Kills the server and its backends at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal_group(&child, "KILL");
            let _ = child.wait();
            // The next start must not find the old postmaster's pid file valid.
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The server's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Its temporary directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.kill();
    }
}
