//! Operator endpoints (`/health`, `/ready`, `/metrics`) of in-process relays, the one-line
//! errors of `pgcable serve` (the real binary) that a newcomer hits first, and what `serve` does
//! not serve (`/demo/state` is `pgcable dev`'s only).

mod common;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{campaign_channel, delivery, Cable, HttpResponse, TestDb};

/// `GET path`, checking that the body is not chunked (the helper reads fixed-length bodies).
async fn get(addr: SocketAddr, path: &str) -> HttpResponse {
    let r = common::http_request(addr, path).await;
    assert!(
        r.header("transfer-encoding").is_none(),
        "this helper reads fixed-length bodies only"
    );
    r
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// The sum of every sample of metric `name` in a Prometheus text exposition (0 if absent).
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn health_is_200_json() {
    let db = TestDb::create().await;
    let relay = common::relay(&db).await;
    let r = get(relay.addr, "/health").await;
    assert_eq!(r.status, 200);
    assert!(r
        .header("content-type")
        .unwrap_or_default()
        .starts_with("application/json"));
    assert_eq!(json(&r.body)["status"], "ok");
    relay.shutdown();
    relay.stopped().await;
}

#[tokio::test]
async fn ready_when_listening_with_current_triggers() {
    let db = TestDb::create().await;
    let relay = common::relay(&db).await;
    let r = get(relay.addr, "/ready").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r
        .header("content-type")
        .unwrap_or_default()
        .starts_with("application/json"));
    let body = json(&r.body);
    assert_eq!(body["ready"], true);
    assert_eq!(body["listener"], true);
    assert_eq!(body["triggers_current"], true);
    relay.shutdown();
    relay.stopped().await;
}

#[tokio::test]
async fn not_ready_without_triggers() {
    let db = TestDb::empty().await;
    db.client()
        .await
        .batch_execute(include_str!("../sql/schema.sql"))
        .await
        .expect("schema");
    // `serve` keeps running without triggers (it logs a warning); /ready says it is not ready.
    let relay = common::relay(&db).await;
    let r = get(relay.addr, "/ready").await;
    assert_eq!(r.status, 503, "{}", r.body);
    let body = json(&r.body);
    assert_eq!(body["ready"], false);
    assert_eq!(body["listener"], true);
    assert_eq!(body["triggers_current"], false);
    assert_eq!(get(relay.addr, "/health").await.status, 200);
    relay.shutdown();
    relay.stopped().await;
}

#[tokio::test]
async fn metrics_move_with_traffic() {
    const COUNTERS: [&str; 4] = [
        "pgcable_connections_opened_total",
        "pgcable_broadcasts_total",
        "pgcable_messages_out_total",
        "pgcable_notifications_total",
    ];
    let db = TestDb::create().await;
    let relay = common::relay(&db).await;
    let before = get(relay.addr, "/metrics").await;
    assert_eq!(before.status, 200);
    assert!(before
        .header("content-type")
        .unwrap_or_default()
        .starts_with("text/plain"));

    let user = db.user(false).await;
    let campaign = db.campaign(user).await;
    let mut cable = Cable::welcomed(relay.addr, &common::token(user)).await;
    let identifier = campaign_channel(campaign);
    cable.subscribed(&identifier).await;
    db.broadcast(&format!("campaign_{campaign}"), r#"{"hello":"metrics"}"#)
        .await;
    assert_eq!(
        cable.next_text().await,
        delivery(&identifier, r#"{"hello":"metrics"}"#)
    );

    // The recorder is process-wide (other tests add to it too): compare deltas.
    let after = get(relay.addr, "/metrics").await;
    for name in COUNTERS {
        let (b, a) = (metric(&before.body, name), metric(&after.body, name));
        assert!(a > b, "{name} went from {b} to {a}:\n{}", after.body);
    }
    assert!(after.body.contains("pgcable_connections"));
    relay.shutdown();
    relay.stopped().await;
}

/// Runs `pgcable serve` to its exit (at most 30 s): (exit code, stderr).
fn serve(env: &[(&str, &str)]) -> (i32, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgcable"));
    cmd.arg("serve")
        .env_remove("DEVISE_JWT_SECRET_KEY")
        .env_remove("DATABASE_URL")
        .env_remove("PGCABLE_LISTEN")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("run pgcable serve");
    let deadline = Instant::now() + Duration::from_secs(30);
    while matches!(child.try_wait(), Ok(None)) {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("pgcable serve did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// Asserts one `pgcable: ...` line containing `what`, and no panic.
fn one_clear_line(code: i32, stderr: &str, what: &str) {
    assert_ne!(code, 0, "non-zero exit");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("pgcable: "))
        .collect();
    assert_eq!(lines.len(), 1, "one line, got:\n{stderr}");
    assert!(lines[0].contains(what), "{:?} mentions {what:?}", lines[0]);
}

#[test]
fn serve_without_a_secret_says_so() {
    let (code, stderr) = serve(&[("DATABASE_URL", common::ADMIN_URL)]);
    one_clear_line(code, &stderr, "DEVISE_JWT_SECRET_KEY is not set");
}

#[test]
fn serve_without_postgres_says_so() {
    let (code, stderr) = serve(&[
        ("DATABASE_URL", "postgres://postgres@127.0.0.1:1/postgres"),
        ("DEVISE_JWT_SECRET_KEY", common::SECRET),
        ("PGCABLE_LISTEN", "127.0.0.1:0"),
    ]);
    one_clear_line(code, &stderr, "cannot reach Postgres");
}

#[test]
fn serve_on_a_busy_port_says_so() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = busy.local_addr().expect("addr").to_string();
    let (code, stderr) = serve(&[
        ("DATABASE_URL", common::ADMIN_URL),
        ("DEVISE_JWT_SECRET_KEY", common::SECRET),
        ("PGCABLE_LISTEN", &addr),
    ]);
    one_clear_line(code, &stderr, "already in use");
    drop(busy);
}

/// `GET /demo/state` is the live page's data under `pgcable dev` only: the real `serve` binary
/// answers it like any unknown path, even to a token that may see the campaign.
#[tokio::test]
async fn serve_does_not_serve_the_demo_state() {
    let db = TestDb::create().await;
    let user = db.user(false).await;
    let campaign = db.campaign(user).await;
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port");
    let mut child = Command::new(env!("CARGO_BIN_EXE_pgcable"))
        .arg("serve")
        .env("DATABASE_URL", &db.url)
        .env("DEVISE_JWT_SECRET_KEY", common::SECRET)
        .env("PGCABLE_LISTEN", addr.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run pgcable serve");
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(Instant::now() < deadline, "pgcable serve did not listen");
        assert!(matches!(child.try_wait(), Ok(None)), "pgcable serve exited");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let token = common::token(user);
    for path in [
        "/demo/state".to_string(),
        format!("/demo/state?token=Bearer%20{token}"),
        format!("/demo/state?token={token}&campaign={campaign}"),
    ] {
        let r = get(addr, &path).await;
        assert_eq!(
            (r.status, r.body.as_str()),
            (404, "Page not found"),
            "{path}"
        );
    }
    // The page itself is static and stays (it shows live messages only there).
    assert_eq!(get(addr, "/demo").await.status, 200);
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(15);
    while matches!(child.try_wait(), Ok(None)) {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("pgcable serve did not stop on SIGTERM");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = child.wait();
}
