//! Connections to Postgres: the query pool and the settings every connection shares.
//!
//! Owns connection configuration (application names, timeouts) and the pool. Calls nothing else.

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;

/// The query pool (re-reads, authorization). Application name `pgcable`.
pub type Pool = deadpool_postgres::Pool;

/// Application name of pool connections, as seen in `pg_stat_activity`.
pub const POOL_APPLICATION_NAME: &str = "pgcable";
/// Application name of the one LISTEN connection.
pub const LISTENER_APPLICATION_NAME: &str = "pgcable-listener";

/// Parses a connection string and applies the relay's settings to it.
pub fn config(url: &str, application_name: &str) -> Result<tokio_postgres::Config, String> {
    let mut cfg: tokio_postgres::Config = url
        .parse()
        .map_err(|e| format!("DATABASE_URL is not a valid Postgres connection string: {e}"))?;
    cfg.application_name(application_name);
    // A dead or unreachable server must fail fast, never hang.
    cfg.connect_timeout(Duration::from_secs(5));
    cfg.keepalives(true);
    cfg.keepalives_idle(Duration::from_secs(30));
    Ok(cfg)
}

/// Builds the query pool. Connections are opened lazily; see [`check`].
pub fn pool(url: &str, size: usize) -> Result<Pool, String> {
    let cfg = config(url, POOL_APPLICATION_NAME)?;
    let manager = Manager::from_config(
        cfg,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(Duration::from_secs(10)))
        .create_timeout(Some(Duration::from_secs(5)))
        .recycle_timeout(Some(Duration::from_secs(5)))
        .build()
        .map_err(|e| format!("cannot build the connection pool: {e}"))
}

/// Connects once and runs a trivial query, turning failures into a line a person can act on.
pub async fn check(pool: &Pool, url: &str) -> Result<(), String> {
    let client = pool
        .get()
        .await
        .map_err(|e| explain(url, &error_text(&e)))?;
    client
        .simple_query("SELECT 1")
        .await
        .map_err(|e| explain(url, &error_text(&e)))?;
    Ok(())
}

/// An error with every cause, e.g. `db error: FATAL: password authentication failed for user
/// "x"` (a `tokio_postgres::Error` alone displays only `db error`).
pub fn error_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}

/// Opens one connection (not from the pool), driven by a task of its own. Gives up after
/// `timeout`; the error is one line a person can act on.
pub async fn connect(
    url: &str,
    application_name: &str,
    timeout: Duration,
) -> Result<tokio_postgres::Client, String> {
    let cfg = config(url, application_name)?;
    match tokio::time::timeout(timeout, cfg.connect(NoTls)).await {
        Ok(Ok((client, connection))) => {
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(error = %e, "connection ended");
                }
            });
            Ok(client)
        }
        Ok(Err(e)) => Err(explain(url, &error_text(&e))),
        Err(_) => Err(explain(url, "connecting timed out")),
    }
}

/// One line that says what is wrong with the database connection and what to do.
pub fn explain(url: &str, error: &str) -> String {
    let shown = redact(url);
    if error.contains("password authentication failed") {
        format!("cannot log in to Postgres at {shown}: wrong user or password ({error}); fix DATABASE_URL")
    } else if error.contains("does not exist") {
        format!("Postgres at {shown} says: {error}; create it or fix DATABASE_URL")
    } else {
        format!("cannot reach Postgres at {shown} ({error}); start PostgreSQL or set DATABASE_URL to a reachable server")
    }
}

/// The connection string without its password, for messages and logs.
pub fn redact(url: &str) -> String {
    // postgres://user:password@host/db → postgres://user:***@host/db
    if let Some((scheme, rest)) = url.split_once("://") {
        if let Some((creds, host)) = rest.rsplit_once('@') {
            if let Some((user, _)) = creds.split_once(':') {
                return format!("{scheme}://{user}:***@{host}");
            }
        }
    }
    url.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact("postgres://u:secret@h:5432/d"),
            "postgres://u:***@h:5432/d"
        );
        assert_eq!(redact("postgres://u@h/d"), "postgres://u@h/d");
        assert_eq!(redact("host=x user=y"), "host=x user=y");
    }
}
