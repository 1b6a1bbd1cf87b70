//! A Strapi started from the repository's project (`strapi/run.sh`) for
//! the embedded-default run: SQLite in a temporary directory, a random API
//! token, a free port; stopped when dropped.

use std::io::Read;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::client::{StrapiClient, Token};

/// The Strapi project: `$STRAPI_DIR`, else `strapi/` beside this crate.
pub fn project_dir() -> PathBuf {
    std::env::var_os("STRAPI_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../strapi")))
}

/// A running local Strapi.
pub struct LocalStrapi {
    child: Child,
    url: String,
    token: Token,
    dir: tempfile::TempDir,
}

fn random_token() -> std::io::Result<String> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

impl LocalStrapi {
    /// Installs the project's node modules when missing (npm's output shown),
    /// starts Strapi and waits up to `timeout` until its REST API answers.
    pub fn start(timeout: Duration) -> Result<LocalStrapi, String> {
        let script = project_dir().join("run.sh");
        let install = Command::new("bash").arg(&script).arg("install").status();
        match install {
            Ok(status) if status.success() => {}
            Ok(status) => return Err(format!("{} install failed ({status})", script.display())),
            Err(e) => return Err(format!("cannot run {}: {e} (is bash installed?)", script.display())),
        }
        let dir = tempfile::Builder::new().prefix("opsci-strapi-").tempdir().map_err(|e| e.to_string())?;
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map_err(|e| e.to_string())?.port();
        let token = random_token().map_err(|e| e.to_string())?;
        let log = std::fs::File::create(dir.path().join("strapi.log")).map_err(|e| e.to_string())?;
        let child = Command::new("bash")
            .arg(&script)
            .env("HOST", "127.0.0.1")
            .env("PORT", port.to_string())
            .env("DATABASE_FILENAME", dir.path().join("data.db"))
            .env("PUBLIC_DIR", dir.path().join("public"))
            .env("STRAPI_TOKEN", &token)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .map_err(|e| format!("cannot start Strapi: {e}"))?;
        let mut strapi = LocalStrapi { child, url: format!("http://127.0.0.1:{port}"), token: Token::new(token), dir };
        let client = StrapiClient::new(&strapi.url, strapi.token.clone(), Arc::default());
        let deadline = Instant::now() + timeout;
        while client.page("products", 1, 1).is_err() {
            if let Ok(Some(status)) = strapi.child.try_wait() {
                return Err(format!("Strapi exited ({status}); its log:\n{}", strapi.log_tail()));
            }
            if Instant::now() > deadline {
                return Err(format!("Strapi did not answer within {timeout:?}; its log:\n{}", strapi.log_tail()));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        Ok(strapi)
    }

    /// Its base URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Its API token.
    pub fn token(&self) -> &Token {
        &self.token
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("strapi.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for LocalStrapi {
    fn drop(&mut self) {
        // The script execs Strapi in its own process group: stop the group.
        let group = format!("-{}", self.child.id());
        let kill = |signal: &str| Command::new("kill").args([signal, "--", &group]).stderr(Stdio::null()).status();
        let _ = kill("-TERM");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = kill("-KILL");
        let _ = self.child.wait();
    }
}
