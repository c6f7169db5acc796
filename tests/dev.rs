//! `pgcable dev` as a newcomer runs it: the real binary, a real Postgres (a throwaway cluster or
//! the machine's server), a real WebSocket client and `psql`, then SIGTERM and a clean machine.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{campaign_channel, http_get, Cable, ADMIN_URL};
use uuid::Uuid;

const DEMO_CAMPAIGN: &str = "00000000-0000-4000-8000-0000000000c1";
const READY: &str = "pgcable dev: ready";
const UNREACHABLE: &str = "postgres://postgres@127.0.0.1:1/postgres";

/// A running `pgcable dev`, terminated (and waited for) on drop if a test fails half way.
struct Dev {
    child: Child,
    lines: mpsc::Receiver<String>,
    stdout: Vec<String>,
    stderr: Arc<Mutex<String>>,
}

impl Dev {
    fn start(database_url: &str, listen: SocketAddr) -> Dev {
        let mut child = Command::new(env!("CARGO_BIN_EXE_pgcable"))
            .arg("dev")
            .env("DATABASE_URL", database_url)
            .env("PGCABLE_LISTEN", listen.to_string())
            .env_remove("DEVISE_JWT_SECRET_KEY")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run pgcable dev");
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let err = child.stderr.take().expect("stderr");
        let sink = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if let Ok(mut s) = sink.lock() {
                    s.push_str(&line);
                    s.push('\n');
                }
            }
        });
        Dev {
            child,
            lines,
            stdout: Vec::new(),
            stderr,
        }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Reads stdout until the ready line; panics (with both outputs) after `within`.
    fn wait_ready(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let ready = line == READY;
                    self.stdout.push(line);
                    if ready {
                        return;
                    }
                }
                Err(_) => panic!(
                    "no `{READY}` within {within:?}\nstdout:\n{}\nstderr:\n{}",
                    self.stdout.join("\n"),
                    self.stderr()
                ),
            }
        }
    }

    /// The first stdout line containing `needle`.
    fn line(&self, needle: &str) -> &str {
        self.stdout
            .iter()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no line with {needle:?} in:\n{}", self.stdout.join("\n")))
    }

    /// Waits for the process to exit by itself.
    fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                // Collect the rest of stdout.
                while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(200)) {
                    self.stdout.push(line);
                }
                return status;
            }
            if Instant::now() >= deadline {
                panic!(
                    "pgcable dev did not exit within {within:?}\nstdout:\n{}\nstderr:\n{}",
                    self.stdout.join("\n"),
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends SIGTERM and waits for the exit.
    fn terminate(&mut self, within: Duration) -> ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed");
        self.wait_exit(within)
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(20);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

/// Whether any process's command line mentions `needle`.
fn process_mentions(needle: &str) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return false;
    };
    entries.flatten().any(|e| {
        std::fs::read(e.path().join("cmdline"))
            .map(|c| String::from_utf8_lossy(&c).contains(needle))
            .unwrap_or(false)
    })
}

async fn demo_databases() -> Vec<String> {
    common::connect(ADMIN_URL)
        .await
        .query(
            "SELECT datname::text FROM pg_database WHERE datname LIKE 'pgcable_demo_%'",
            &[],
        )
        .await
        .expect("list databases")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// The word after `marker` in `line`.
fn word_after<'a>(line: &'a str, marker: &str) -> &'a str {
    line.split_once(marker)
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no {marker:?} in {line:?}"))
}

#[tokio::test]
async fn dev_without_postgres_runs_a_throwaway_cluster_end_to_end() {
    let addr = free_addr();
    let mut dev = Dev::start(UNREACHABLE, addr);
    dev.wait_ready(Duration::from_secs(60));

    let dir = word_after(dev.line("throwaway cluster in "), "throwaway cluster in ").to_string();
    assert!(
        std::path::Path::new(&dir).is_dir(),
        "cluster dir {dir} exists"
    );
    let page = dev.line("/demo?token=").trim().to_string();
    let token = word_after(&page, "/demo?token=").to_string();
    let psql = dev.line("psql '").trim().to_string();
    assert!(psql.starts_with("psql '"), "a psql command: {psql}");

    // The printed page URL is served by pgcable itself.
    let path = page
        .split_once(&addr.to_string())
        .expect("page on the relay")
        .1;
    let (status, body) = http_get(addr, path).await;
    assert_eq!(status, 200);
    assert!(body.contains("CampaignChannel") && body.contains("actioncable-v1-json"));

    // A client subscribed to the demo campaign sees the change the printed command makes.
    let mut cable = Cable::welcomed(addr, &token).await;
    let identifier = campaign_channel(Uuid::parse_str(DEMO_CAMPAIGN).expect("uuid"));
    cable.subscribed(&identifier).await;
    let out = Command::new("sh")
        .args(["-c", &psql])
        .output()
        .expect("run psql");
    assert!(
        out.status.success(),
        "psql failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut character = false;
    let mut reload = false;
    let deadline = Instant::now() + Duration::from_secs(15);
    while !(character && reload) && Instant::now() < deadline {
        let frame: serde_json::Value =
            serde_json::from_str(&cable.next_text().await).expect("json frame");
        let message = &frame["message"];
        if let Some(c) = message.get("character") {
            assert_eq!(c["name"], "Johnny Tso (edited)");
            character = true;
        }
        if *message == serde_json::json!({"characters": "reload"}) {
            assert!(character, "the payload comes before the reload");
            reload = true;
        }
    }
    assert!(character && reload, "saw the character and the reload");
    drop(cable);

    let status = dev.terminate(Duration::from_secs(15));
    assert!(
        status.success(),
        "exit status {status}; stderr:\n{}",
        dev.stderr()
    );
    assert!(
        !std::path::Path::new(&dir).exists(),
        "the temporary directory {dir} is removed"
    );
    assert!(
        !process_mentions(&dir),
        "no process of the throwaway cluster is left"
    );
}

#[tokio::test]
async fn dev_with_a_reachable_server_creates_and_drops_a_demo_database() {
    let before = demo_databases().await;
    let addr = free_addr();
    let mut dev = Dev::start(ADMIN_URL, addr);
    dev.wait_ready(Duration::from_secs(60));
    assert!(
        !dev.stdout.iter().any(|l| l.contains("throwaway cluster")),
        "no cluster when a server is reachable"
    );
    let name = word_after(dev.line("demo database "), "demo database ").to_string();
    assert!(name.starts_with("pgcable_demo_"));
    assert!(!before.contains(&name), "a fresh database");
    assert!(
        demo_databases().await.contains(&name),
        "{name} exists while dev runs"
    );

    let token = word_after(dev.line("/demo?token="), "/demo?token=").to_string();
    let mut cable = Cable::welcomed(addr, &token).await;
    cable
        .subscribed(&campaign_channel(
            Uuid::parse_str(DEMO_CAMPAIGN).expect("uuid"),
        ))
        .await;
    drop(cable);

    let status = dev.terminate(Duration::from_secs(15));
    assert!(
        status.success(),
        "exit status {status}; stderr:\n{}",
        dev.stderr()
    );
    assert!(
        !demo_databases().await.contains(&name),
        "{name} is dropped on exit"
    );
}

#[tokio::test]
async fn dev_on_a_busy_port_says_so_and_cleans_up() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = busy.local_addr().expect("addr");
    let mut dev = Dev::start(ADMIN_URL, addr);
    let status = dev.wait_exit(Duration::from_secs(60));
    assert!(!status.success(), "non-zero exit");
    let stderr = dev.stderr();
    assert!(!stderr.contains("panicked"), "no panic:\n{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("pgcable: ") && last.contains("already in use"),
        "one clear line, got:\n{stderr}"
    );
    let name = word_after(dev.line("demo database "), "demo database ").to_string();
    assert!(
        !demo_databases().await.contains(&name),
        "{name} is dropped after the failed start"
    );
    drop(busy);
}
