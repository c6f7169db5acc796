//! The official `@rails/actioncable` client against the relay, end to end.
//!
//! Each test creates a fresh database (schema and triggers loaded), a non-admin user who owns one
//! campaign and a second campaign owned by someone else, then runs a Node script from `tests/js/`
//! that starts `pgcable serve` itself, drives the client, broadcasts with `pgcable.broadcast`
//! through `pg`, restarts the relay with SIGTERM and checks that the client reconnects by itself:
//!
//! * `official_client.mjs`: the client in Node, with `ws` as its WebSocket;
//! * `live_auth.mjs`: live authorization: each revoking change disconnects, the client comes
//!   back by itself and the forbidden subscription is rejected; a grant is seen at once;
//! * `encounter.mjs`: live combat in Node: a `psql` UPDATE of a shot arrives as one encounter;
//! * `browser.mjs`: the client in headless Chromium (Debian's `/usr/bin/chromium`, driven by
//!   `playwright-core`; `apt-get install chromium`).
//!
//! Needs `node`/`npm` (the Node packages are installed from `tests/js/package-lock.json` with
//! `npm ci` on first use) and Postgres at 127.0.0.1:5432 (see `common`).

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::{TestDb, SECRET};

/// Upper bound for one script; each script has its own 60 s global timeout and kills its relay.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);

async fn run_script(script: &str) {
    if let Err(e) = tokio::task::spawn_blocking(common::ensure_node_modules).await {
        std::panic::resume_unwind(e.into_panic());
    }

    let db = TestDb::create().await;
    let user = db.user(false).await;
    let campaign = db.campaign(user).await;
    let stranger = db.user(false).await;
    let forbidden = db.campaign(stranger).await;

    let js_dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("js");
    let mut cmd = tokio::process::Command::new("node");
    cmd.arg(script)
        .current_dir(&js_dir)
        .env("PGCABLE_BIN", env!("CARGO_BIN_EXE_pgcable"))
        .env("DATABASE_URL", &db.url)
        .env("SECRET", SECRET)
        .env("USER_ID", user.to_string())
        .env("CAMPAIGN_ID", campaign.to_string())
        .env("FORBIDDEN_CAMPAIGN_ID", forbidden.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd.spawn().unwrap_or_else(|e| {
        panic!(
            "cannot run `node {script}` in {}: {e} (is Node.js installed?)",
            js_dir.display()
        )
    });

    let output = match tokio::time::timeout(SCRIPT_TIMEOUT, child.wait_with_output()).await {
        Ok(Ok(output)) => output,
        Ok(Err(e)) => panic!("waiting for `node {script}` failed: {e}"),
        Err(_) => panic!("`node {script}` did not finish within {SCRIPT_TIMEOUT:?} (killed)"),
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        let reason = stdout
            .lines()
            .chain(stderr.lines())
            .find(|l| l.starts_with("FAIL: "))
            .unwrap_or("(no FAIL line)");
        panic!(
            "`node tests/js/{script}` exited with {}: {reason}\n\
             ----- stderr -----\n{stderr}\n----- stdout -----\n{stdout}\n------------------",
            output.status
        );
    }
    drop(db);
}

/// The official client in Node (`ws`): two subscriptions, broadcast, unsubscribe, rejection,
/// SIGTERM (`server_restart`) and automatic reconnect after the relay restarts on the same port.
#[tokio::test]
async fn official_client_in_node() {
    run_script("official_client.mjs").await;
}

/// The same flow with the official client in headless Chromium.
#[tokio::test]
async fn official_client_in_chromium() {
    run_script("browser.mjs").await;
}

/// Live combat with the official client in Node: a `psql` UPDATE of a shot gives one encounter.
#[tokio::test]
async fn official_client_receives_an_encounter() {
    run_script("encounter.mjs").await;
}

/// Live authorization with the official client in Node: revocations and a grant.
#[tokio::test]
async fn official_client_live_authorization() {
    run_script("live_auth.mjs").await;
}
