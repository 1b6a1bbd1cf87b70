//! Integration-test support: a real Strapi 5 (the project in `strapi/`).
//!
//! [`Strapi::start`] runs `strapi/run.sh` (production mode, no admin panel) on
//! a free loopback port with a fresh temporary directory holding its SQLite
//! database (or on PostgreSQL: [`Strapi::start_on_postgres`]), its
//! public/uploads directory and its log, provisions a random
//! full-access API token ([`Strapi::token`]) and waits until the REST API
//! answers with it. Several instances may run at once: nothing an instance
//! writes at run time is shared (Strapi's update notifier rewrites a constant
//! `strapi/.strapi-updater.json`, atomically). [`Strapi::stop`] and
//! [`Strapi::start_again`] (or [`Strapi::restart`]) stop and start the same
//! instance on the same port and database, for tests where Strapi goes away
//! during a run; dropping it kills it.
//!
//! The project is `$STRAPI_DIR`, else `strapi/` of this workspace. Its node
//! modules are installed (`run.sh install`, npm ci) once per test process
//! when missing; `.ci/run` installs them beforehand.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{free_port, signal_group};

/// How long a start may take before the harness gives up, unless
/// `STRAPI_START_TIMEOUT_SECS` says otherwise.
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// How long `run.sh install` (npm ci, which compiles better-sqlite3) may take.
const INSTALL_TIMEOUT: Duration = Duration::from_secs(1200);
/// How long [`Strapi::stop`] waits after SIGTERM before it kills.
const STOP_GRACE: Duration = Duration::from_secs(15);
/// Lines of Strapi's log shown when it fails.
const LOG_TAIL_LINES: usize = 80;

/// The Strapi project directory.
pub fn strapi_dir() -> PathBuf {
    match std::env::var_os("STRAPI_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("strapi"),
    }
}

fn run_script() -> PathBuf {
    strapi_dir().join("run.sh")
}

/// Installs the project's node modules (`run.sh install`) unless they are
/// there already; once per process, whichever test gets here first.
///
/// # Panics
/// When the installation fails, with its output.
pub fn install() {
    static INSTALLED: OnceLock<Result<(), String>> = OnceLock::new();
    let result = INSTALLED.get_or_init(|| {
        let log = tempfile::NamedTempFile::new().map_err(|e| format!("install log: {e}"))?;
        let script = run_script();
        let mut child = Command::new(&script)
            .arg("install")
            .stdin(Stdio::null())
            .stdout(log.reopen().map_err(|e| e.to_string())?)
            .stderr(log.reopen().map_err(|e| e.to_string())?)
            .process_group(0)
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
        let deadline = Instant::now() + INSTALL_TIMEOUT;
        loop {
            match child.try_wait() {
                Ok(Some(status)) if status.success() => return Ok(()),
                Ok(Some(status)) => {
                    return Err(format!("{} install failed ({status}):\n{}", script.display(), tail(log.path())))
                }
                Ok(None) if Instant::now() > deadline => {
                    signal_group(&child, "KILL");
                    let _ = child.wait();
                    return Err(format!(
                        "{} install took more than {} s:\n{}",
                        script.display(),
                        INSTALL_TIMEOUT.as_secs(),
                        tail(log.path())
                    ));
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(200)),
                Err(e) => return Err(format!("waiting for {} install: {e}", script.display())),
            }
        }
    });
    if let Err(message) = result {
        panic!("{message}");
    }
}

/// 32 random bytes from the kernel, as hex: a fresh API token.
fn random_token() -> String {
    let mut bytes = [0u8; 32];
    File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes)).expect("random bytes");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The last lines of a log file.
fn tail(path: &Path) -> String {
    let mut text = String::new();
    if let Ok(mut file) = File::open(path) {
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = file.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
        let mut bytes = Vec::new();
        let _ = file.read_to_end(&mut bytes);
        text = String::from_utf8_lossy(&bytes).into_owned();
    }
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
}

/// Percent-encodes what the HTTP client would refuse in a path and query
/// (Strapi's `filters[name][$eq]=a b` style), leaving `%` escapes as they are.
fn encode_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for byte in path.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' => out.push(byte as char),
            b'-' | b'.' | b'_' | b'~' | b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'='
            | b':' | b'@' | b'/' | b'?' | b'%' => out.push(byte as char),
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

/// A response of Strapi's REST API: the status and the JSON body
/// (`Value::Null` when empty, a string when not JSON).
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
}

impl Reply {
    /// `body.data`.
    pub fn data(&self) -> &Value {
        &self.body["data"]
    }

    /// `body.error.name`, such as `ValidationError`, or "".
    pub fn error_name(&self) -> &str {
        self.body["error"]["name"].as_str().unwrap_or("")
    }
}

/// A running Strapi; killed on drop.
pub struct Strapi {
    child: Option<Child>,
    port: u16,
    token: String,
    dir: tempfile::TempDir,
    agent: ureq::Agent,
    /// The PostgreSQL database's URL, when not SQLite.
    postgres: Option<String>,
}

impl Strapi {
    /// Starts a Strapi with an empty database and waits until its REST API
    /// answers with [`Strapi::token`].
    ///
    /// # Panics
    /// When the project cannot be installed or Strapi does not answer within
    /// 120 s (`STRAPI_START_TIMEOUT_SECS`), with the tail of its log.
    pub fn start() -> Strapi {
        Strapi::start_with(None)
    }

    /// Starts a Strapi on the (empty) PostgreSQL database at `url`
    /// (`postgres://user@host:port/name`, as [`crate::postgres::Postgres::database`]
    /// gives), as in production.
    ///
    /// # Panics
    /// As [`Strapi::start`].
    pub fn start_on_postgres(url: &str) -> Strapi {
        Strapi::start_with(Some(url.to_string()))
    }

    fn start_with(postgres: Option<String>) -> Strapi {
        install();
        let dir = tempfile::Builder::new().prefix("strapi-test-").tempdir().expect("a temporary directory");
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .into();
        let mut strapi = Strapi { child: None, port: free_port(), token: random_token(), dir, agent, postgres };
        strapi.start_again();
        strapi
    }

    /// Starts this instance again after [`Strapi::stop`]: same port, same
    /// database, same token. Waits until the REST API answers.
    ///
    /// # Panics
    /// As [`Strapi::start`]; also when it is still running.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "Strapi is already running");
        let log_path = self.log_path();
        let mut log = OpenOptions::new().create(true).append(true).open(&log_path).expect("Strapi log file");
        let _ = writeln!(log, "---- harness: starting Strapi on port {}", self.port);
        let script = run_script();
        let mut command = Command::new(&script);
        match &self.postgres {
            Some(url) => command.env("DATABASE_CLIENT", "postgres").env("DATABASE_URL", url),
            None => command.env("DATABASE_CLIENT", "sqlite").env("DATABASE_FILENAME", self.database_path()),
        };
        let child = command
            .current_dir(self.dir.path())
            .env("NODE_ENV", "production")
            .env("HOST", "127.0.0.1")
            .env("PORT", self.port.to_string())
            .env("PUBLIC_DIR", self.dir.path().join("public"))
            .env("SERVE_ADMIN_PANEL", "false")
            .env("STRAPI_TOKEN", &self.token)
            .env("STRAPI_TELEMETRY_DISABLED", "true")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start Strapi with {}: {e}", script.display()));
        self.child = Some(child);

        let timeout = std::env::var("STRAPI_START_TIMEOUT_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .map(Duration::from_secs)
            .unwrap_or(START_TIMEOUT);
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                self.child = None;
                panic!("Strapi exited before answering ({status}):\n{}", self.log_tail());
            }
            if self.answers() {
                break;
            }
            if started.elapsed() > timeout {
                self.kill();
                panic!("Strapi did not answer within {} s:\n{}", timeout.as_secs(), self.log_tail());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Whether the REST API answers an authorised request with 200.
    fn answers(&self) -> bool {
        let url = format!("{}/api/products?pagination%5BpageSize%5D=1", self.url());
        let request = self
            .agent
            .get(&url)
            .header("Authorization", &format!("Bearer {}", self.token))
            .config()
            .timeout_global(Some(Duration::from_secs(2)))
            .build();
        matches!(request.call(), Ok(response) if response.status().as_u16() == 200)
    }

    /// Stops Strapi: SIGTERM (Strapi shuts down cleanly), then SIGKILL after
    /// 15 s. The database stays for [`Strapi::start_again`]. Does nothing
    /// when it is not running.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        signal_group(&child, "TERM");
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                // Its own children (none normally) go with the group.
                signal_group(&child, "KILL");
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        signal_group(&child, "KILL");
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Kills Strapi at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal_group(&child, "KILL");
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// [`Strapi::stop`] then [`Strapi::start_again`].
    pub fn restart(&mut self) {
        self.stop();
        self.start_again();
    }

    /// Whether the process is running (it may not answer yet or any more).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// `http://127.0.0.1:<port>`, without a trailing slash (the REST API is
    /// under `/api`). The same across restarts.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The port Strapi listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The full-access API token: `Authorization: Bearer <token>`.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The SQLite database file.
    pub fn database_path(&self) -> PathBuf {
        self.dir.path().join("data.db")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("strapi.log")
    }

    /// What Strapi has printed so far, across restarts.
    pub fn log(&self) -> String {
        std::fs::read(self.log_path()).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
    }

    /// The last lines of Strapi's log.
    pub fn log_tail(&self) -> String {
        tail(&self.log_path())
    }

    /// A REST request with the token: `method` on `path` (such as
    /// `/api/products?filters[barcode][$eq]=123`), with `body` as JSON.
    ///
    /// # Panics
    /// When Strapi cannot be reached.
    pub fn request(&self, method: &str, path: &str, body: Option<&Value>) -> Reply {
        self.request_as(Some(&self.token), method, path, body)
    }

    /// As [`Strapi::request`], with another token or none.
    ///
    /// # Panics
    /// When Strapi cannot be reached.
    pub fn request_as(&self, token: Option<&str>, method: &str, path: &str, body: Option<&Value>) -> Reply {
        self.try_request_as(token, method, path, body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}; Strapi's log:\n{}", self.log_tail()))
    }

    /// As [`Strapi::request_as`], with an error instead of a panic when
    /// Strapi cannot be reached (for instance while it is stopped).
    pub fn try_request_as(
        &self,
        token: Option<&str>,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Reply, ureq::Error> {
        let url = format!("{}{}", self.url(), encode_path(path));
        let mut request = ureq::http::Request::builder().method(method).uri(url).header("Accept", "application/json");
        if let Some(token) = token {
            request = request.header("Authorization", format!("Bearer {token}"));
        }
        let mut response = match body {
            Some(body) => {
                let request = request.header("Content-Type", "application/json").body(body.to_string())?;
                self.agent.run(request)?
            }
            None => self.agent.run(request.body(())?)?,
        };
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string()?;
        let body = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Ok(Reply { status, body })
    }

    /// `GET path` with the token.
    pub fn get(&self, path: &str) -> Reply {
        self.request("GET", path, None)
    }

    /// `POST path` with the token and a JSON body.
    pub fn post(&self, path: &str, body: &Value) -> Reply {
        self.request("POST", path, Some(body))
    }

    /// `PUT path` with the token and a JSON body.
    pub fn put(&self, path: &str, body: &Value) -> Reply {
        self.request("PUT", path, Some(body))
    }

    /// `DELETE path` with the token.
    pub fn delete(&self, path: &str) -> Reply {
        self.request("DELETE", path, None)
    }
}

impl Drop for Strapi {
    fn drop(&mut self) {
        self.kill();
    }
}
