//! `pgcable check`: a go/no-go report on the deployment's database and settings.
//!
//! Owns the checks and their wording: connectivity, the installed triggers, a LISTEN/NOTIFY
//! round trip, the NOTIFY queue, transaction pooling, and the JWT secret. Each yields one line
//! (`ok` / `warn` / `FAIL`, what was seen, what to do). Calls `db` for connection settings and
//! `triggers` for the installed version and per-table state; it writes nothing to the database.
//!
//! Decision: `serve` does not refuse to start when the triggers are missing or old; it logs one
//! warning and `/ready` answers 503, so a relay deployed before its migration does not
//! crash-loop. `pgcable check` is the go/no-go (exit 1) for deploy pipelines.

use std::fmt;
use std::time::{Duration, Instant};

use clap::Args;
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, Client, NoTls};

use crate::config::DbArgs;
use crate::{db, triggers};

const APPLICATION_NAME: &str = "pgcable-check";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const QUERY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the LISTEN/NOTIFY round trip may take.
const ROUND_TRIP_TIMEOUT: Duration = Duration::from_secs(5);
/// NOTIFY queue usage above which the report warns, and above which it fails.
const QUEUE_WARN: f64 = 0.5;
const QUEUE_FAIL: f64 = 0.9;
/// PgBouncer's customary port.
const PGBOUNCER_PORT: u16 = 6432;

/// Settings of `pgcable check`.
#[derive(Args, Debug, Clone)]
pub struct CheckArgs {
    /// The database the relay will use.
    #[command(flatten)]
    pub db: DbArgs,

    /// The JWT secret `serve` will use (only whether it is set is checked).
    #[arg(long, env = "DEVISE_JWT_SECRET_KEY", hide_env_values = true)]
    pub devise_jwt_secret_key: Option<String>,
}

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Fine.
    Ok,
    /// Works, but worth a look.
    Warn,
    /// The relay will not work properly: no-go.
    Fail,
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Short name of the check.
    pub name: &'static str,
    /// The outcome.
    pub verdict: Verdict,
    /// What was seen and, unless ok, what to do.
    pub detail: String,
}

impl Finding {
    fn new(name: &'static str, verdict: Verdict, detail: impl Into<String>) -> Finding {
        Finding {
            name,
            verdict,
            detail: detail.into(),
        }
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = match self.verdict {
            Verdict::Ok => "ok",
            Verdict::Warn => "warn",
            Verdict::Fail => "FAIL",
        };
        write!(f, "{verdict:<4}  {:<9} {}", self.name, self.detail)
    }
}

/// Whether the findings are a go (nothing failed).
pub fn go(findings: &[Finding]) -> bool {
    findings.iter().all(|f| f.verdict != Verdict::Fail)
}

/// Runs every check, prints one line each and a verdict; returns whether it is a go.
pub async fn report(args: &CheckArgs) -> bool {
    let findings = run(args).await;
    for f in &findings {
        println!("{f}");
    }
    let failed = findings
        .iter()
        .filter(|f| f.verdict == Verdict::Fail)
        .count();
    if failed == 0 {
        println!(
            "go: pgcable can run against {}",
            db::redact(&args.db.database_url)
        );
        true
    } else {
        println!(
            "no-go: {failed} check{} failed",
            if failed == 1 { "" } else { "s" }
        );
        false
    }
}

/// Runs every check. If the database cannot be reached, the database checks are left out.
pub async fn run(args: &CheckArgs) -> Vec<Finding> {
    let url = &args.db.database_url;
    let mut findings = Vec::new();
    match connect(url).await {
        Err(e) => findings.push(Finding::new("connect", Verdict::Fail, e)),
        Ok(client) => {
            findings.push(connectivity(&client, url).await);
            findings.push(trigger_state(&client).await);
            findings.extend(listen_round_trip(url, &client).await);
            findings.push(queue_usage(&client).await);
        }
    }
    findings.push(secret(args.devise_jwt_secret_key.as_deref()));
    findings
}

async fn connectivity(client: &Client, url: &str) -> Finding {
    match timeout(client.query_one("SHOW server_version", &[])).await {
        Ok(row) => {
            let version: String = row.get(0);
            Finding::new(
                "connect",
                Verdict::Ok,
                format!("PostgreSQL {version} at {}", db::redact(url)),
            )
        }
        Err(e) => Finding::new(
            "connect",
            Verdict::Fail,
            format!("connected, but a query failed: {e}"),
        ),
    }
}

async fn trigger_state(client: &Client) -> Finding {
    const NAME: &str = "triggers";
    let install = "run `pgcable triggers install`";
    let version = match timeout(triggers::installed_version(client)).await {
        Ok(v) => v,
        Err(e) => {
            return Finding::new(
                NAME,
                Verdict::Fail,
                format!("cannot read the installed version: {e}"),
            )
        }
    };
    let expected = triggers::VERSION;
    let problem = match version {
        None => format!("not installed in this database: {install}"),
        Some(v) if v < expected && triggers::usable(v) => {
            return Finding::new(
                NAME,
                Verdict::Warn,
                format!(
                    "installed version {v} is older than this binary's ({expected}): the relay works, but {} need it: {install}",
                    triggers::OLDER_LACKS
                ),
            );
        }
        Some(v) if v < expected => {
            format!("installed version {v} is older than this binary's ({expected}): {install}")
        }
        Some(v) if v > expected => {
            format!(
                "installed version {v} is newer than this binary's ({expected}): upgrade pgcable"
            )
        }
        Some(_) => String::new(),
    };
    if !problem.is_empty() {
        return Finding::new(NAME, Verdict::Fail, problem);
    }
    let v = expected;
    let tables = match timeout(triggers::status(client)).await {
        Ok(t) => t,
        Err(e) => {
            return Finding::new(
                NAME,
                Verdict::Fail,
                format!("cannot read the triggers of the watched tables: {e}"),
            )
        }
    };
    if let Some(t) = tables.iter().find(|t| !t.exists) {
        return Finding::new(
            NAME,
            Verdict::Fail,
            format!(
                "table public.{} does not exist: is DATABASE_URL the application's database?",
                t.table
            ),
        );
    }
    if let Some((t, missing)) = tables
        .iter()
        .map(|t| (t, t.missing()))
        .find(|(_, missing)| !missing.is_empty())
    {
        return Finding::new(
            NAME,
            Verdict::Fail,
            format!(
                "version {v} installed, but public.{} lacks the pgcable triggers {}: {install}",
                t.table,
                missing.join(", ")
            ),
        );
    }
    let names: Vec<&str> = tables.iter().map(|t| t.table.as_str()).collect();
    Finding::new(
        NAME,
        Verdict::Ok,
        format!("version {v} (current) on {}", names.join(", ")),
    )
}

/// LISTEN on a private channel, NOTIFY it from a second connection, and see it arrive; then
/// look for signs of a transaction pooler (session state lost between statements).
async fn listen_round_trip(url: &str, notifier: &Client) -> Vec<Finding> {
    let channel = format!("pgcable_check_{}", uuid::Uuid::new_v4().simple());
    let payload = uuid::Uuid::new_v4().to_string();
    let cfg = match db::config(url, APPLICATION_NAME) {
        Ok(c) => c,
        Err(e) => return vec![Finding::new("listen", Verdict::Fail, e)],
    };
    let (listener, mut connection) =
        match tokio::time::timeout(CONNECT_TIMEOUT, cfg.connect(NoTls)).await {
            Ok(Ok(pair)) => pair,
            Ok(Err(e)) => {
                return vec![Finding::new(
                    "listen",
                    Verdict::Fail,
                    format!("cannot open a second connection: {}", db::error_text(&e)),
                )]
            }
            Err(_) => {
                return vec![Finding::new(
                    "listen",
                    Verdict::Fail,
                    "opening a second connection timed out",
                )]
            }
        };
    let (tx, mut rx) = mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = messages.next().await {
            if let AsyncMessage::Notification(n) = message {
                let _ = tx.send((n.channel().to_string(), n.payload().to_string()));
            }
        }
    });

    let session_before = session_probe(&listener).await;
    let round_trip = async {
        timeout(listener.batch_execute(&format!("LISTEN {channel}"))).await?;
        let sent = Instant::now();
        timeout(notifier.execute("SELECT pg_notify($1, $2)", &[&channel, &payload])).await?;
        let deadline = tokio::time::Instant::now() + ROUND_TRIP_TIMEOUT;
        loop {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some((c, p))) if c == channel && p == payload => return Ok(sent.elapsed()),
                Ok(Some(_)) => continue,
                Ok(None) => return Err("the listening connection closed".to_string()),
                Err(_) => {
                    return Err(format!(
                        "no notification within {}s",
                        ROUND_TRIP_TIMEOUT.as_secs()
                    ))
                }
            }
        }
    }
    .await;
    let session_after = session_probe(&listener).await;
    let _ = timeout(listener.batch_execute("UNLISTEN *")).await;
    drop(listener);
    driver.abort();

    let listen = match &round_trip {
        Ok(took) => Finding::new(
            "listen",
            Verdict::Ok,
            format!("LISTEN/NOTIFY round trip in {} ms", took.as_millis()),
        ),
        Err(e) => Finding::new(
            "listen",
            Verdict::Fail,
            format!(
                "{e}: LISTEN does not work through this connection (a transaction pooler such as \
                 PgBouncer in transaction mode?); point DATABASE_URL at Postgres itself or at a \
                 session-mode pool"
            ),
        ),
    };
    let pooler = pooler_finding(
        url,
        &session_before,
        &session_after,
        round_trip.is_ok(),
        cfg.get_ports().first().copied(),
    );
    vec![listen, pooler]
}

/// The backend pid and whether a session setting survived into a later statement.
async fn session_probe(client: &Client) -> Result<(i32, bool), String> {
    let marker = uuid::Uuid::new_v4().simple().to_string();
    timeout(client.batch_execute(&format!("SET pgcable_check.marker = '{marker}'"))).await?;
    let row = timeout(client.query_one(
        "SELECT pg_backend_pid(), current_setting('pgcable_check.marker', true)",
        &[],
    ))
    .await?;
    let kept = row.get::<_, Option<String>>(1).as_deref() == Some(marker.as_str());
    Ok((row.get(0), kept))
}

fn pooler_finding(
    url: &str,
    before: &Result<(i32, bool), String>,
    after: &Result<(i32, bool), String>,
    listen_ok: bool,
    port: Option<u16>,
) -> Finding {
    const NAME: &str = "pooler";
    let advice = "LISTEN needs a direct connection or a session-mode pool: point DATABASE_URL at Postgres itself";
    match (before, after) {
        (Ok((pid_a, kept_a)), Ok((pid_b, kept_b))) => {
            if pid_a != pid_b || !kept_a || !kept_b {
                return Finding::new(
                    NAME,
                    Verdict::Fail,
                    format!(
                        "session state did not survive between statements: a transaction pooler is in the way; {advice}"
                    ),
                );
            }
            if !listen_ok {
                return Finding::new(
                    NAME,
                    Verdict::Warn,
                    "session state survives between statements, yet LISTEN failed: check for a pooler or proxy between pgcable and Postgres",
                );
            }
            if port == Some(PGBOUNCER_PORT) {
                return Finding::new(
                    NAME,
                    Verdict::Warn,
                    format!(
                        "{} uses port {PGBOUNCER_PORT}, PgBouncer's usual port: if it is PgBouncer, it must run pool_mode = session for pgcable",
                        db::redact(url)
                    ),
                );
            }
            Finding::new(
                NAME,
                Verdict::Ok,
                "none seen (session state survives between statements)",
            )
        }
        (Err(e), _) | (_, Err(e)) => Finding::new(
            NAME,
            Verdict::Warn,
            format!("could not probe for a transaction pooler: {e}"),
        ),
    }
}

async fn queue_usage(client: &Client) -> Finding {
    const NAME: &str = "queue";
    match timeout(client.query_one("SELECT pg_notification_queue_usage()", &[])).await {
        Ok(row) => {
            let usage: f64 = row.get(0);
            let shown = format!("NOTIFY queue {:.1}% full", usage * 100.0);
            if usage >= QUEUE_FAIL {
                Finding::new(
                    NAME,
                    Verdict::Fail,
                    format!("{shown}: a listening session is not reading; find it in pg_stat_activity (LISTEN, idle in transaction) and end it"),
                )
            } else if usage >= QUEUE_WARN {
                Finding::new(
                    NAME,
                    Verdict::Warn,
                    format!(
                        "{shown}: a listening session is slow or stuck; look in pg_stat_activity"
                    ),
                )
            } else {
                Finding::new(NAME, Verdict::Ok, shown)
            }
        }
        Err(e) => Finding::new(
            NAME,
            Verdict::Warn,
            format!("cannot read pg_notification_queue_usage(): {e}"),
        ),
    }
}

fn secret(secret: Option<&str>) -> Finding {
    const NAME: &str = "secret";
    match secret {
        Some(s) if !s.is_empty() => Finding::new(
            NAME,
            Verdict::Ok,
            format!("DEVISE_JWT_SECRET_KEY is set (length {})", s.chars().count()),
        ),
        _ => Finding::new(
            NAME,
            Verdict::Fail,
            "DEVISE_JWT_SECRET_KEY is not set: `pgcable serve` will not start; export the secret the Rails app signs its JWTs with",
        ),
    }
}

async fn connect(url: &str) -> Result<Client, String> {
    db::connect(url, APPLICATION_NAME, CONNECT_TIMEOUT).await
}

/// Awaits a query with [`QUERY_TIMEOUT`], turning both failures into text.
async fn timeout<T>(
    query: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, String> {
    match tokio::time::timeout(QUERY_TIMEOUT, query).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(db::error_text(&e)),
        Err(_) => Err(format!("timed out after {}s", QUERY_TIMEOUT.as_secs())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_read_well() {
        let f = Finding::new("secret", Verdict::Fail, "not set");
        assert_eq!(f.to_string(), "FAIL  secret    not set");
        assert!(!go(&[f]));
        assert!(go(&[Finding::new("queue", Verdict::Warn, "x")]));
    }

    #[test]
    fn pooler_verdicts() {
        let url = "postgres://h:6432/d";
        let same = Ok((7, true));
        let lost = Ok((7, false));
        let moved = Ok((8, true));
        assert_eq!(
            pooler_finding(url, &same, &lost, false, Some(5432)).verdict,
            Verdict::Fail
        );
        assert_eq!(
            pooler_finding(url, &same, &moved, true, Some(5432)).verdict,
            Verdict::Fail
        );
        assert_eq!(
            pooler_finding(url, &same, &same, true, Some(6432)).verdict,
            Verdict::Warn
        );
        assert_eq!(
            pooler_finding(url, &same, &same, true, Some(5432)).verdict,
            Verdict::Ok
        );
    }
}
