//! Connections to Postgres: the query pool, single connections, and the settings every
//! connection shares (application names, timeouts, TLS).
//!
//! Owns connection configuration and the pool; every connection pgcable makes (pool, listener,
//! `check`, `triggers`, `dev`) is opened here, with the TLS settings of `DATABASE_URL`. Calls
//! `tls` for `sslmode`/`sslrootcert`, the connector and the wording of TLS failures.

use std::error::Error;
use std::sync::atomic::Ordering;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, RecyclingMethod, Runtime};

use crate::tls;

/// The query pool (re-reads, authorization). Application name `pgcable`.
pub type Pool = deadpool_postgres::Pool;
/// A connection's I/O half, to be polled (or awaited) for it to make progress.
pub type Connection = tokio_postgres::Connection<tokio_postgres::Socket, tls::Stream>;

/// Application name of pool connections, as seen in `pg_stat_activity`.
pub const POOL_APPLICATION_NAME: &str = "pgcable";
/// Application name of the one LISTEN connection.
pub const LISTENER_APPLICATION_NAME: &str = "pgcable-listener";

/// Where and how to connect: `DATABASE_URL` parsed, with the relay's settings and TLS.
#[derive(Clone)]
pub struct Target {
    /// tokio-postgres's settings (TLS negotiation included, its TLS options taken out).
    pub config: tokio_postgres::Config,
    /// `sslmode` and `sslrootcert` as understood by pgcable.
    pub tls: tls::Settings,
    connector: tls::MakeTls,
    url: String,
}

/// One connection just opened.
pub struct Opened {
    pub client: tokio_postgres::Client,
    pub connection: Connection,
    /// Whether it is encrypted (a TLS handshake completed).
    pub encrypted: bool,
}

impl Target {
    /// Parses `url`, applies the relay's settings and builds the TLS connector (reading the CA
    /// certificates it needs). The error is one line a person can act on.
    pub fn new(url: &str, application_name: &str) -> Result<Target, String> {
        let (rest, tls) = tls::split(url)?;
        let mut config = parse(&rest)?;
        config.application_name(application_name);
        // A dead or unreachable server must fail fast, never hang.
        config.connect_timeout(Duration::from_secs(5));
        config.keepalives(true);
        config.keepalives_idle(Duration::from_secs(30));
        config.ssl_mode(if only_unix_sockets(&config) {
            // The server never offers TLS on a Unix socket; libpq ignores sslmode there too.
            tokio_postgres::config::SslMode::Disable
        } else {
            tls.mode.negotiation()
        });
        let connector = tls::connector(&tls).map_err(|e| format!("DATABASE_URL: {e}"))?;
        Ok(Target {
            config,
            tls,
            connector,
            url: url.to_string(),
        })
    }

    /// Opens one connection, with no time limit of its own beyond the connect timeout of the
    /// socket; the caller drives [`Opened::connection`].
    pub async fn open(&self) -> Result<Opened, tokio_postgres::Error> {
        let (connector, seen) = self.connector.watched();
        let (client, connection) = self.config.connect(connector).await?;
        Ok(Opened {
            client,
            connection,
            encrypted: seen.load(Ordering::Relaxed),
        })
    }

    /// The connection string as given (with its password: see [`redact`]).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// One line that says what went wrong connecting and what to do.
    pub fn explain(&self, e: &(dyn Error + 'static)) -> String {
        match tls::explain(&self.tls, e) {
            Some(why) => format!("cannot connect to Postgres at {}: {why}", redact(&self.url)),
            None => explain(&self.url, &error_text(e)),
        }
    }
}

fn parse(url: &str) -> Result<tokio_postgres::Config, String> {
    url.parse()
        .map_err(|e| format!("DATABASE_URL is not a valid Postgres connection string: {e}"))
}

fn only_unix_sockets(config: &tokio_postgres::Config) -> bool {
    #[cfg(unix)]
    {
        let hosts = config.get_hosts();
        !hosts.is_empty()
            && hosts
                .iter()
                .all(|h| matches!(h, tokio_postgres::config::Host::Unix(_)))
    }
    #[cfg(not(unix))]
    {
        let _ = config;
        false
    }
}

/// Parses a connection string and applies the relay's settings to it (TLS included).
pub fn config(url: &str, application_name: &str) -> Result<tokio_postgres::Config, String> {
    Target::new(url, application_name).map(|t| t.config)
}

/// Builds the query pool. Connections are opened lazily; see [`check`].
pub fn pool(url: &str, size: usize) -> Result<Pool, String> {
    let target = Target::new(url, POOL_APPLICATION_NAME)?;
    let manager = Manager::from_config(
        target.config,
        target.connector,
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
    let client = pool.get().await.map_err(|e| explain_error(url, &e))?;
    client
        .simple_query("SELECT 1")
        .await
        .map_err(|e| explain_error(url, &e))?;
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

/// Opens one connection (not from the pool), with the TLS settings of `url`. Gives up after
/// `timeout`; the error is one line a person can act on. The caller drives the connection.
pub async fn open(url: &str, application_name: &str, timeout: Duration) -> Result<Opened, String> {
    let target = Target::new(url, application_name)?;
    match tokio::time::timeout(timeout, target.open()).await {
        Ok(Ok(opened)) => Ok(opened),
        Ok(Err(e)) => Err(target.explain(&e)),
        Err(_) => Err(explain(url, "connecting timed out")),
    }
}

/// Opens one connection (not from the pool), driven by a task of its own. Gives up after
/// `timeout`; the error is one line a person can act on.
pub async fn connect(
    url: &str,
    application_name: &str,
    timeout: Duration,
) -> Result<tokio_postgres::Client, String> {
    let opened = open(url, application_name, timeout).await?;
    let connection = opened.connection;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "connection ended");
        }
    });
    Ok(opened.client)
}

/// [`explain`] for an error value: TLS failures are told as such (what failed and why).
pub fn explain_error(url: &str, e: &(dyn Error + 'static)) -> String {
    let settings = tls::split(url).map(|(_, s)| s).unwrap_or_default();
    match tls::explain(&settings, e) {
        Some(why) => format!("cannot connect to Postgres at {}: {why}", redact(url)),
        None => explain(url, &error_text(e)),
    }
}

/// One line that says what is wrong with the database connection and what to do.
pub fn explain(url: &str, error: &str) -> String {
    let shown = redact(url);
    if error.contains("password authentication failed") {
        format!("cannot log in to Postgres at {shown}: wrong user or password ({error}); fix DATABASE_URL")
    } else if error.contains("no pg_hba.conf entry") {
        format!("Postgres at {shown} refused this connection ({error}); the server's pg_hba.conf must allow this host, user and database, or fix DATABASE_URL")
    } else if error.contains("does not exist") {
        format!("Postgres at {shown} says: {error}; create it or fix DATABASE_URL")
    } else {
        format!("cannot reach Postgres at {shown} ({error}); start PostgreSQL or set DATABASE_URL to a reachable server")
    }
}

/// The connection string without its password, for messages and logs.
pub fn redact(url: &str) -> String {
    // postgres://user:password@host/db?password=x → postgres://user:***@host/db?password=***
    if let Some((scheme, rest)) = url.split_once("://") {
        let (main, query) = match rest.split_once('?') {
            Some((m, q)) => (m, Some(q)),
            None => (rest, None),
        };
        let main = match main.rsplit_once('@') {
            Some((creds, host)) => match creds.split_once(':') {
                Some((user, _)) => format!("{user}:***@{host}"),
                None => main.to_string(),
            },
            None => main.to_string(),
        };
        let query = query.map(|q| {
            q.split('&')
                .map(|pair| match pair.split_once('=') {
                    Some(("password", _)) => "password=***",
                    _ => pair,
                })
                .collect::<Vec<_>>()
                .join("&")
        });
        return match query {
            Some(q) => format!("{scheme}://{main}?{q}"),
            None => format!("{scheme}://{main}"),
        };
    }
    tls::redact_key_values(url)
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
        assert_eq!(
            redact("host=x password='s e' user=y"),
            "host=x password=*** user=y"
        );
        assert_eq!(
            redact("postgres://h/d?sslmode=require&password=p"),
            "postgres://h/d?sslmode=require&password=***"
        );
    }
}
