//! `pgcable check` verdicts against real databases: the binary's output and exit code.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::TestDb;

const LONG_SECRET: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

struct Report {
    code: i32,
    stdout: String,
}

impl Report {
    /// The line of check `name` (e.g. `triggers`).
    fn line(&self, name: &str) -> &str {
        self.stdout
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(name))
            .unwrap_or_else(|| panic!("no {name} line in:\n{}", self.stdout))
    }
}

/// Runs `pgcable check` against `url`, with or without a secret; at most 60 s.
fn check(url: &str, secret: Option<&str>) -> Report {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgcable"));
    cmd.arg("check")
        .env("DATABASE_URL", url)
        .env_remove("DEVISE_JWT_SECRET_KEY")
        .env_remove("PGCABLE_REDIS_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(s) = secret {
        cmd.env("DEVISE_JWT_SECRET_KEY", s);
    }
    let mut child = cmd.spawn().expect("run pgcable check");
    let deadline = Instant::now() + Duration::from_secs(60);
    while matches!(child.try_wait(), Ok(None)) {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("pgcable check hung");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!stderr.contains("panicked"), "no panic:\n{stderr}");
    Report {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).to_string(),
    }
}

#[tokio::test]
async fn healthy_database_is_a_go() {
    let db = TestDb::create().await;
    let r = check(&db.url, Some(LONG_SECRET));
    assert_eq!(r.code, 0, "{}", r.stdout);
    for name in [
        "connect", "triggers", "listen", "pooler", "queue", "secret", "bridge",
    ] {
        assert!(r.line(name).starts_with("ok "), "{}", r.stdout);
    }
    assert!(r
        .stdout
        .lines()
        .last()
        .unwrap_or_default()
        .starts_with("go"));
}

#[tokio::test]
async fn missing_triggers_are_a_no_go() {
    let db = TestDb::empty().await;
    db.client()
        .await
        .batch_execute(include_str!("../sql/schema.sql"))
        .await
        .expect("schema");
    let r = check(&db.url, Some(LONG_SECRET));
    assert_eq!(r.code, 1, "{}", r.stdout);
    let line = r.line("triggers");
    assert!(
        line.starts_with("FAIL") && line.contains("pgcable triggers install"),
        "{line}"
    );
    assert!(r.line("listen").starts_with("ok "), "{}", r.stdout);
    assert!(r.stdout.contains("no-go"));
}

#[tokio::test]
async fn old_triggers_are_a_no_go() {
    let db = TestDb::create().await;
    db.client()
        .await
        .batch_execute(
            "CREATE OR REPLACE FUNCTION pgcable.version() RETURNS integer LANGUAGE sql AS $$ SELECT 0 $$",
        )
        .await
        .expect("redefine version");
    let r = check(&db.url, Some(LONG_SECRET));
    assert_eq!(r.code, 1, "{}", r.stdout);
    let line = r.line("triggers");
    assert!(
        line.starts_with("FAIL")
            && line.contains("older")
            && line.contains("pgcable triggers install"),
        "{line}"
    );
}

#[tokio::test]
async fn a_table_without_triggers_is_a_no_go() {
    let db = TestDb::create().await;
    db.client()
        .await
        .batch_execute(
            "DROP TRIGGER pgcable_insert ON vehicles; DROP TRIGGER pgcable_update ON vehicles; \
             DROP TRIGGER pgcable_delete ON vehicles",
        )
        .await
        .expect("drop triggers");
    let r = check(&db.url, Some(LONG_SECRET));
    assert_eq!(r.code, 1, "{}", r.stdout);
    let line = r.line("triggers");
    assert!(
        line.starts_with("FAIL") && line.contains("vehicles"),
        "{line}"
    );
}

#[tokio::test]
async fn missing_secret_is_reported() {
    let db = TestDb::create().await;
    let r = check(&db.url, None);
    assert_eq!(r.code, 1, "{}", r.stdout);
    let line = r.line("secret");
    assert!(
        line.starts_with("FAIL") && line.contains("DEVISE_JWT_SECRET_KEY"),
        "{line}"
    );
    assert!(r.line("triggers").starts_with("ok "), "{}", r.stdout);
}

#[test]
fn unreachable_database_is_a_no_go() {
    let r = check(
        "postgres://postgres@127.0.0.1:1/postgres",
        Some(LONG_SECRET),
    );
    assert_eq!(r.code, 1, "{}", r.stdout);
    let line = r.line("connect");
    assert!(
        line.starts_with("FAIL") && line.contains("cannot reach Postgres"),
        "{line}"
    );
}
