//! Support for the renderer's golden tests: a fresh database (random name) holding
//! `sql/schema.sql` and one fixture, and a pool connection to it, as the relay renders on one
//! (its statements are prepared once and cached). The database is dropped at the end, also when
//! the test fails. The server is `postgres://postgres@127.0.0.1:5432/postgres` unless
//! `PGCABLE_TEST_ADMIN_URL` says otherwise.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;

use futures_util::FutureExt as _;
use pgcable::render::Rendered;
use tokio_postgres::{Client, Config, NoTls};
use uuid::Uuid;

/// A file of the project, by its path from the manifest directory.
pub fn read(rel: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn admin_config() -> Config {
    let url = std::env::var("PGCABLE_TEST_ADMIN_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    url.parse().expect("PGCABLE_TEST_ADMIN_URL")
}

async fn connect(config: &Config) -> Client {
    let (client, connection) = config.connect(NoTls).await.expect("connect to Postgres");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// Runs `body` against a fresh database holding the schema and `fixture` (a path from the
/// manifest directory), then drops the database (also if `body` panics).
pub async fn with_db<F, Fut>(fixture: &str, body: F)
where
    F: FnOnce(deadpool_postgres::Client) -> Fut,
    Fut: Future<Output = ()>,
{
    let admin_cfg = admin_config();
    let admin = connect(&admin_cfg).await;
    let name = format!("pgcable_render_{}", Uuid::new_v4().simple());
    admin
        .batch_execute(&format!(
            "CREATE DATABASE {name} ENCODING 'UTF8' TEMPLATE template0"
        ))
        .await
        .expect("create database");
    let result = AssertUnwindSafe(async {
        let mut cfg = admin_cfg.clone();
        cfg.dbname(&name);
        let client = connect(&cfg).await;
        client
            .batch_execute(&read("sql/schema.sql"))
            .await
            .expect("load sql/schema.sql");
        client
            .batch_execute(&read(fixture))
            .await
            .unwrap_or_else(|e| panic!("load {fixture}: {e}"));
        let pool = deadpool_postgres::Pool::builder(deadpool_postgres::Manager::new(cfg, NoTls))
            .max_size(1)
            .build()
            .expect("build pool");
        body(pool.get().await.expect("pool connection")).await;
    })
    .catch_unwind()
    .await;
    let dropped = admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .await;
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
    dropped.expect("drop database");
}

/// Asserts byte equality, reporting the first difference with some context.
pub fn assert_same(label: &str, actual: &str, expected: &str) {
    if actual == expected {
        return;
    }
    let a = actual.as_bytes();
    let e = expected.as_bytes();
    let at = a
        .iter()
        .zip(e)
        .position(|(x, y)| x != y)
        .unwrap_or(a.len().min(e.len()));
    let window = |s: &[u8]| {
        let from = at.saturating_sub(120);
        let to = (at + 120).min(s.len());
        String::from_utf8_lossy(&s[from..to]).into_owned()
    };
    panic!(
        "{label}: payload differs at byte {at} (actual {} bytes, expected {} bytes)\n  actual:   …{}…\n  expected: …{}…",
        a.len(),
        e.len(),
        window(a),
        window(e)
    );
}

/// The rendered row with this id.
pub fn find(rendered: &[Rendered], id: Uuid) -> &Rendered {
    rendered
        .iter()
        .find(|r| r.id == id)
        .unwrap_or_else(|| panic!("{id} not rendered"))
}
