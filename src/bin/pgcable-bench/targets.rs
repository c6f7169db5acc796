//! The servers under test, each a child process whose memory and CPU are read from /proc:
//! the release `pgcable serve`, the floor (`pgcable-bench floor-serve`), and the Rails
//! ActionCable app of `bench/rails` under puma. Stdout and stderr go to a log file per start.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

use crate::db::{BenchDb, SECRET};
use crate::sys;

/// Which server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// The relay under test.
    Pgcable,
    /// The least possible relay.
    Floor,
    /// Rails ActionCable with the postgresql adapter.
    Rails,
}

impl Kind {
    /// Its name in tables.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Pgcable => "pgcable",
            Kind::Floor => "floor",
            Kind::Rails => "rails",
        }
    }
}

/// Where things are and how to start them.
#[derive(Debug, Clone)]
pub struct Env {
    /// The release `pgcable` binary.
    pub relay_bin: PathBuf,
    /// This binary (for `floor-serve` and `client-worker`).
    pub self_bin: PathBuf,
    /// `bench/rails`.
    pub rails_dir: PathBuf,
    /// Where logs go.
    pub log_dir: PathBuf,
    /// Extra `KEY=VALUE` settings for the relay.
    pub relay_env: Vec<(String, String)>,
    /// Postgres `options` for the relay's sessions.
    pub relay_db_options: Option<String>,
}

/// A running server.
#[derive(Debug)]
pub struct Target {
    /// Which.
    pub kind: Kind,
    /// Its address.
    pub addr: SocketAddr,
    /// Its process id.
    pub pid: u32,
    /// Its log file.
    pub log: PathBuf,
    child: Child,
}

fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("no free port: {e}"))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}

fn log_file(dir: &Path, name: &str) -> Result<(PathBuf, std::fs::File), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    for i in 1.. {
        let path = dir.join(format!("{name}-{i}.log"));
        if !path.exists() {
            let f = std::fs::File::create(&path)
                .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
            return Ok((path, f));
        }
    }
    Err("no log file name left".into())
}

/// One HTTP GET on a fresh connection; the status code.
pub async fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .ok()?;
        let mut buf = vec![0u8; 512];
        let n = s.read(&mut buf).await.ok()?;
        let head = std::str::from_utf8(&buf[..n]).ok()?;
        head.split_whitespace().nth(1)?.parse().ok()
    };
    tokio::time::timeout(Duration::from_secs(2), fut)
        .await
        .ok()
        .flatten()
}

/// One HTTP GET; the body (for /metrics).
pub async fn http_body(addr: SocketAddr, path: &str) -> Option<String> {
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let (_, body) = text.split_once("\r\n\r\n")?;
        Some(body.to_string())
    };
    tokio::time::timeout(Duration::from_secs(5), fut)
        .await
        .ok()
        .flatten()
}

/// The sum of a Prometheus metric's samples whose line starts with `name`.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with(' ') || rest.starts_with('{')) {
            continue;
        }
        if let Some(v) = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
            found = Some(found.unwrap_or(0.0) + v);
        }
    }
    found
}

impl Target {
    /// Starts a server against the bench database and waits until it is ready.
    pub async fn start(kind: Kind, env: &Env, db: &BenchDb) -> Result<Target, String> {
        let port = free_port()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let (log, file) = log_file(&env.log_dir, kind.name())?;
        let err = file
            .try_clone()
            .map_err(|e| format!("cannot open the log: {e}"))?;
        let mut cmd = match kind {
            Kind::Pgcable => {
                let mut url = db.url.clone();
                if let Some(o) = &env.relay_db_options {
                    let encoded: String = percent_encoding::utf8_percent_encode(
                        o,
                        percent_encoding::NON_ALPHANUMERIC,
                    )
                    .to_string();
                    url.push(if url.contains('?') { '&' } else { '?' });
                    url.push_str("options=");
                    url.push_str(&encoded);
                }
                let mut c = Command::new(&env.relay_bin);
                c.arg("serve")
                    .env("DATABASE_URL", &url)
                    .env("DEVISE_JWT_SECRET_KEY", SECRET)
                    .env("PGCABLE_LISTEN", addr.to_string())
                    .env("PGCABLE_MAX_CONNECTIONS", "1000000")
                    .env("PGCABLE_SHUTDOWN_TIMEOUT", "3")
                    .env(
                        "RUST_LOG",
                        std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
                    );
                for (k, v) in &env.relay_env {
                    c.env(k, v);
                }
                c
            }
            Kind::Floor => {
                let mut c = Command::new(&env.self_bin);
                c.arg("floor-serve")
                    .arg("--listen")
                    .arg(addr.to_string())
                    .arg("--database-url")
                    .arg(&db.url);
                c
            }
            Kind::Rails => {
                let mut c = Command::new("puma");
                c.current_dir(&env.rails_dir)
                    .args(["-e", "production", "-t", "8:8", "-b"])
                    .arg(format!("tcp://{addr}"))
                    .arg("config.ru")
                    .env("DATABASE_URL", &db.url)
                    .env("DEVISE_JWT_SECRET_KEY", SECRET);
                c
            }
        };
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(file))
            .stderr(Stdio::from(err))
            .kill_on_drop(true);
        let child = cmd.spawn().map_err(|e| match kind {
            Kind::Rails => format!(
                "cannot start puma ({e}): run bench/rails/setup.sh to install Ruby, ActionCable and puma"
            ),
            _ => format!("cannot start {}: {e}", kind.name()),
        })?;
        let pid = child.id().ok_or("the server exited at once")?;
        let mut target = Target {
            kind,
            addr,
            pid,
            log,
            child,
        };
        let ready_path = match kind {
            Kind::Pgcable | Kind::Floor => "/ready",
            Kind::Rails => "/health",
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            if http_status(addr, ready_path).await == Some(200) {
                break;
            }
            if let Ok(Some(status)) = target.child.try_wait() {
                return Err(format!(
                    "{} exited during start-up ({status}); see {}",
                    kind.name(),
                    target.log.display()
                ));
            }
            if tokio::time::Instant::now() > deadline {
                let log = target.log.clone();
                target.stop().await;
                return Err(format!(
                    "{} was not ready within 60 s; see {}",
                    kind.name(),
                    log.display()
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(target)
    }

    /// Resident memory in KiB.
    pub fn rss_kib(&self) -> Result<u64, String> {
        sys::rss_kib(self.pid)
    }

    /// CPU seconds used so far.
    pub fn cpu_secs(&self) -> f64 {
        sys::cpu_secs(self.pid).unwrap_or(0.0)
    }

    /// Whether it is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM, then SIGKILL after 5 s.
    pub async fn stop(mut self) {
        sys::signal(self.pid, libc::SIGTERM);
        if tokio::time::timeout(Duration::from_secs(5), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}
