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
use serde_json::{json, Value};
use uuid::Uuid;

const DEMO_CAMPAIGN: &str = "00000000-0000-4000-8000-0000000000c1";
const JOHNNY: &str = "00000000-0000-4000-8000-000000000101";
const JOHNNYS_SHOT: &str = "00000000-0000-4000-8000-000000000311";
const FIGHT: &str = "00000000-0000-4000-8000-000000000301";
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

    /// The printed `psql` commands, in order (each on a line of its own).
    fn commands(&self) -> Vec<String> {
        self.stdout
            .iter()
            .map(|l| l.trim())
            .filter(|l| l.starts_with("psql '"))
            .map(str::to_string)
            .collect()
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

/// Runs a printed command as a person would paste it into a shell.
fn run_printed(command: &str) {
    let out = Command::new("sh")
        .args(["-c", command])
        .output()
        .expect("run sh");
    assert!(
        out.status.success(),
        "{command} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Reads frames until a message on the campaign stream satisfies `wanted`; returns it.
async fn message_where(cable: &mut Cable, what: &str, wanted: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        let frame: Value = serde_json::from_str(&cable.next_text().await).expect("json frame");
        let message = frame["message"].clone();
        if wanted(&message) {
            return message;
        }
        seen.push(message);
    }
    panic!("no {what} within 15 s; saw {seen:#?}");
}

/// `GET /demo/state?<query>` of a `pgcable dev` relay → (status, JSON body).
async fn demo_state(addr: SocketAddr, query: &str) -> (u16, Value) {
    let (status, body) = http_get(addr, &format!("/demo/state?{query}")).await;
    let json = serde_json::from_str(&body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"));
    (status, json)
}

/// The shot counter of an encounter: each shot value with the names on it.
fn counter(encounter: &Value) -> Vec<(Value, Vec<String>)> {
    let names = |v: &Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .map(|c| c["name"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    encounter["shots"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            let mut on = names(&s["characters"]);
            on.extend(names(&s["vehicles"]));
            (s["shot"].clone(), on)
        })
        .collect()
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

/// The three printed commands (rename a character, move a shot, end the fight), each run as
/// printed, each with its visible effect on a subscribed client and on `/demo/state`, which
/// serves the page what the relay pushes, to the demo token only.
#[tokio::test]
async fn dev_prints_three_changes_that_each_show() {
    let addr = free_addr();
    let mut dev = Dev::start(ADMIN_URL, addr);
    dev.wait_ready(Duration::from_secs(60));
    let token = word_after(dev.line("/demo?token="), "/demo?token=").to_string();

    let commands = dev.commands();
    assert_eq!(
        commands.len(),
        3,
        "three psql commands in:\n{}",
        dev.stdout.join("\n")
    );
    for (i, label) in [
        "# rename a character",
        "# move Johnny Tso 3 shots down the shot counter",
        "# end the fight",
    ]
    .iter()
    .enumerate()
    {
        let at = dev
            .stdout
            .iter()
            .position(|l| l.trim() == *label)
            .unwrap_or_else(|| panic!("no {label:?} in:\n{}", dev.stdout.join("\n")));
        assert_eq!(
            dev.stdout[at + 1].trim(),
            commands[i],
            "{label} comes before its command"
        );
    }
    assert!(commands[0].ends_with(&format!(
        "-c \"UPDATE characters SET name = 'Johnny Tso (edited)' WHERE id = '{JOHNNY}'\""
    )));
    assert!(commands[1].ends_with(&format!(
        "-c \"UPDATE shots SET shot = shot - 3 WHERE id = '{JOHNNYS_SHOT}'\""
    )));
    assert!(commands[2].ends_with(&format!(
        "-c \"UPDATE fights SET ended_at = now() WHERE id = '{FIGHT}'\""
    )));

    // The page's data: only with the demo token (or another token /cable accepts).
    let (status, body) = demo_state(addr, "").await;
    assert_eq!((status, body), (401, json!({"error": "unauthorized"})));
    let (status, _) = demo_state(addr, "token=Bearer%20not.a.jwt").await;
    assert_eq!(status, 401);
    let (status, _) = demo_state(addr, &format!("token={token}&campaign=nope")).await;
    assert_eq!(status, 400);
    let other = Uuid::new_v4();
    let (status, body) = demo_state(addr, &format!("token={token}&campaign={other}")).await;
    assert_eq!((status, body), (403, json!({"error": "forbidden"})));
    let (status, state) = demo_state(addr, &format!("token=Bearer%20{token}")).await;
    assert_eq!(status, 200, "{state}");
    assert_eq!(state["campaign_id"], DEMO_CAMPAIGN);
    let names = |list: &Value| -> Vec<String> {
        list.as_array()
            .into_iter()
            .flatten()
            .map(|r| r["name"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    assert_eq!(
        names(&state["characters"]),
        ["Johnny Tso", "Big Bruiser", "Ninja"]
    );
    assert_eq!(names(&state["vehicles"]), ["Yellow Taxi", "Black Sedan"]);
    let served: Vec<&str> = state["commands"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| c["command"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(served, commands, "the page offers the printed commands");
    assert_eq!(
        state["encounters"].as_array().map(Vec::len),
        Some(1),
        "{state}"
    );
    let before = counter(&state["encounters"][0]);
    assert_eq!(
        before,
        [
            (
                json!(14),
                vec!["Johnny Tso".to_string(), "Yellow Taxi".into()]
            ),
            (json!(12), vec!["Big Bruiser".into()]),
            (json!(8), vec!["Ninja".into()]),
        ]
    );

    let mut cable = Cable::welcomed(addr, &token).await;
    cable
        .subscribed(&campaign_channel(
            Uuid::parse_str(DEMO_CAMPAIGN).expect("uuid"),
        ))
        .await;

    // 1. Rename: the client gets the character, and the page's state renders it the same.
    run_printed(&commands[0]);
    let message = message_where(&mut cable, "renamed character", |m| {
        m["character"]["name"] == "Johnny Tso (edited)"
    })
    .await;
    let (_, state) = demo_state(addr, &format!("token={token}")).await;
    assert_eq!(
        state["characters"][0], message["character"],
        "/demo/state renders what the relay pushes"
    );

    // 2. Move the shot: an encounter with Johnny three shots down, below Big Bruiser.
    run_printed(&commands[1]);
    let moved = [
        (json!(14), vec!["Yellow Taxi".to_string()]),
        (json!(12), vec!["Big Bruiser".into()]),
        (json!(11), vec!["Johnny Tso (edited)".into()]),
        (json!(8), vec!["Ninja".into()]),
    ];
    let message = message_where(&mut cable, "encounter with the moved shot", |m| {
        m.get("encounter").is_some_and(|e| counter(e) == moved)
    })
    .await;
    assert_eq!(message["encounter"]["id"], FIGHT);
    let (_, state) = demo_state(addr, &format!("token={token}")).await;
    assert_eq!(state["encounters"][0], message["encounter"]);

    // 3. End the fight: fight_ended, and no active fight left for the page.
    run_printed(&commands[2]);
    let message = message_where(&mut cable, "fight_ended", |m| m["type"] == "fight_ended").await;
    assert_eq!(
        message,
        json!({"type": "fight_ended", "fight_id": FIGHT, "fight_name": "Showdown at the Docks"})
    );
    let (_, state) = demo_state(addr, &format!("token={token}")).await;
    assert_eq!(state["encounters"], json!([]));
    drop(cable);

    let status = dev.terminate(Duration::from_secs(15));
    assert!(
        status.success(),
        "exit status {status}; stderr:\n{}",
        dev.stderr()
    );
}

/// The live page in real headless Chromium (`tests/js/demo_page.mjs`): it shows the seeded
/// campaign as cards and the fight's shot counter, then each printed command's change. On
/// failure the script saves a screenshot under `target/test-artifacts/` and prints its path.
#[tokio::test]
async fn dev_demo_page_in_chromium_shows_each_printed_change() {
    if let Err(e) = tokio::task::spawn_blocking(common::ensure_node_modules).await {
        std::panic::resume_unwind(e.into_panic());
    }
    let addr = free_addr();
    let mut dev = Dev::start(ADMIN_URL, addr);
    dev.wait_ready(Duration::from_secs(60));
    let page = format!(
        "http://{addr}/demo?token={}",
        word_after(dev.line("/demo?token="), "/demo?token=")
    );
    let name = word_after(dev.line("demo database "), "demo database ").to_string();
    let commands = dev.commands();
    assert_eq!(commands.len(), 3, "three psql commands");
    let artifacts = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .map(|target| target.join("test-artifacts"))
        .expect("target dir");

    let js_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/js");
    let mut cmd = tokio::process::Command::new("node");
    cmd.arg("demo_page.mjs")
        .current_dir(&js_dir)
        .env("PAGE_URL", &page)
        .env("RENAME", &commands[0])
        .env("MOVE", &commands[1])
        .env("END", &commands[2])
        .env(
            "DATABASE_URL",
            format!("postgres://postgres@127.0.0.1:5432/{name}"),
        )
        .env("ARTIFACTS", &artifacts)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run `node demo_page.mjs`: {e} (is Node.js installed?)"));
    let output =
        match tokio::time::timeout(Duration::from_secs(120), child.wait_with_output()).await {
            Ok(Ok(output)) => output,
            Ok(Err(e)) => panic!("waiting for `node demo_page.mjs` failed: {e}"),
            Err(_) => panic!("`node demo_page.mjs` did not finish within 120 s (killed)"),
        };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        let pick = |prefix: &str| {
            stdout
                .lines()
                .chain(stderr.lines())
                .find(|l| l.starts_with(prefix))
                .unwrap_or("")
                .to_string()
        };
        panic!(
            "`node tests/js/demo_page.mjs` exited with {}: {}\n{}\n\
             ----- stderr -----\n{stderr}\n----- stdout -----\n{stdout}\n\
             ----- pgcable dev stderr -----\n{}",
            output.status,
            pick("FAIL: "),
            pick("screenshot: "),
            dev.stderr()
        );
    }
    let status = dev.terminate(Duration::from_secs(15));
    assert!(
        status.success(),
        "exit status {status}; stderr:\n{}",
        dev.stderr()
    );
}
