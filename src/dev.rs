//! `pgcable dev`: the whole loop on one machine, with a working default.
//!
//! Owns the demo's throwaway database (a fresh `pgcable_demo_<random>` database on a reachable
//! server, or a private cluster started from the machine's PostgreSQL binaries), the demo token,
//! the instructions it prints, the `/demo` page, and cleaning all of it up again.
//! Calls `db` for connection settings, `triggers::install`, `server::start`/`termination` to run
//! the relay exactly as `serve` does, and `db::error_text` to describe database errors.
//!
//! It never writes into an existing database: a user's `DATABASE_URL` may point at production.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Args;
use tokio::process::Command;
use tokio_postgres::Client;

use crate::config::{Config, DbArgs};
use crate::server::{self, Server};
use crate::{db, shutdown, triggers};

/// The JWT secret `pgcable dev` uses when `DEVISE_JWT_SECRET_KEY` is not set. Dev only.
pub const DEV_SECRET: &str = "pgcable-dev-secret";
/// The demo user (`sql/demo_seed.sql`), owner of the demo campaign.
pub const DEMO_USER_ID: &str = "00000000-0000-4000-8000-000000000001";
/// The demo user's `jti` (so tokens pass `PGCABLE_CHECK_JTI` too).
pub const DEMO_USER_JTI: &str = "demo-gm-jti-00000000000000000001";
/// The demo campaign (`sql/demo_seed.sql`).
pub const DEMO_CAMPAIGN_ID: &str = "00000000-0000-4000-8000-0000000000c1";
/// The demo character "Johnny Tso" that the printed `psql` command edits.
pub const DEMO_CHARACTER_ID: &str = "00000000-0000-4000-8000-000000000101";
/// The demo's active fight "Showdown at the Docks", which a printed command ends.
pub const DEMO_FIGHT_ID: &str = "00000000-0000-4000-8000-000000000301";
/// Johnny Tso's shot in the demo fight (14 on the counter), which a printed command moves.
pub const DEMO_SHOT_ID: &str = "00000000-0000-4000-8000-000000000311";
/// The last line `pgcable dev` prints once everything runs (scripts and tests wait for it).
pub const READY_LINE: &str = "pgcable dev: ready";
/// The live page served at `GET /demo`.
pub const DEMO_HTML: &str = include_str!("demo.html");

const SCHEMA_SQL: &str = include_str!("../sql/schema.sql");
const SEED_SQL: &str = include_str!("../sql/demo_seed.sql");
const APPLICATION_NAME: &str = "pgcable-dev";
/// How long the demo token is valid.
const TOKEN_TTL_SECS: u64 = 24 * 3600;

/// Limits on every external step, so that `pgcable dev` never hangs.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const SQL_TIMEOUT: Duration = Duration::from_secs(60);
const INITDB_TIMEOUT: Duration = Duration::from_secs(120);
const PG_START_TIMEOUT_SECS: u64 = 60;
const PG_STOP_TIMEOUT_SECS: u64 = 20;
const LISTENER_TIMEOUT: Duration = Duration::from_secs(20);
const RELAY_STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// What the live page's data endpoint (`GET /demo/state`, [`crate::demo_state`]) needs besides
/// the database. Only `pgcable dev` puts one in [`Config::demo`].
#[derive(Debug, Clone)]
pub struct Demo {
    /// The campaign the page shows unless it names another.
    pub campaign_id: uuid::Uuid,
    /// The changes to try, as printed (without a password), for the page's "try this" box.
    pub commands: Vec<TryCommand>,
}

/// One change to try: what it does and the shell command that makes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TryCommand {
    /// What the command does, in a few words.
    pub label: String,
    /// A `psql` command line, ready to paste into a shell.
    pub command: String,
}

/// The changes `pgcable dev` suggests, each a `psql` command against `demo_url`: rename a
/// character, move a combatant on the fight's shot counter, end the fight.
pub fn try_commands(demo_url: &str) -> Vec<TryCommand> {
    let psql = format!("psql {}", shell_quote(demo_url));
    [
        (
            "rename a character",
            format!("UPDATE characters SET name = 'Johnny Tso (edited)' WHERE id = '{DEMO_CHARACTER_ID}'"),
        ),
        (
            "move Johnny Tso 3 shots down the shot counter",
            format!("UPDATE shots SET shot = shot - 3 WHERE id = '{DEMO_SHOT_ID}'"),
        ),
        (
            "end the fight",
            format!("UPDATE fights SET ended_at = now() WHERE id = '{DEMO_FIGHT_ID}'"),
        ),
    ]
    .into_iter()
    .map(|(label, sql)| TryCommand {
        label: label.to_string(),
        command: format!("{psql} -c \"{sql}\""),
    })
    .collect()
}

/// Settings of `pgcable dev`.
#[derive(Args, Debug, Clone)]
pub struct DevArgs {
    /// A Postgres server to create the demo database on; if none is reachable there, a
    /// throwaway cluster is started instead. The database named here is never written to.
    #[command(flatten)]
    pub db: DbArgs,

    /// Address the relay listens on.
    #[arg(long, env = "PGCABLE_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// HS256 secret for tokens; defaults to the dev secret `pgcable-dev-secret`.
    #[arg(long, env = "DEVISE_JWT_SECRET_KEY", hide_env_values = true)]
    pub devise_jwt_secret_key: Option<String>,
}

/// Runs the demo until SIGTERM or Ctrl-C, then removes everything it made.
/// Errors are one line a person can act on.
pub async fn run(args: DevArgs) -> Result<(), String> {
    let (trigger, mut stop) = shutdown::channel();
    tokio::spawn(async move {
        server::termination().await;
        trigger.fire();
    });

    let mut made = Made::default();
    let started = tokio::select! {
        r = start(&args, &mut made) => r.map(Some),
        _ = stop.wait() => Ok(None),
    };
    let result = match started {
        Ok(Some(relay)) => {
            stop.wait().await;
            println!("pgcable dev: stopping");
            relay.shutdown();
            if tokio::time::timeout(RELAY_STOP_TIMEOUT, relay.stopped())
                .await
                .is_err()
            {
                eprintln!("pgcable dev: the relay did not stop in time; cleaning up anyway");
            }
            Ok(())
        }
        Ok(None) => {
            println!("pgcable dev: interrupted during start-up; cleaning up");
            Ok(())
        }
        Err(e) => Err(e),
    };
    let cleaned = made.clean_up().await;
    result.and(cleaned)
}

/// Everything `pgcable dev` made, so it can be removed again whatever happened.
#[derive(Default)]
struct Made {
    /// A demo database on the user's server: (admin URL, database name).
    database: Option<(String, String)>,
    /// A throwaway cluster (removing it removes its databases).
    cluster: Option<Cluster>,
}

impl Made {
    async fn clean_up(self) -> Result<(), String> {
        if let Some(cluster) = self.cluster {
            return cluster.remove().await;
        }
        let Some((admin_url, name)) = self.database else {
            return Ok(());
        };
        let dropped = async {
            let admin = connect(&admin_url).await?;
            run_sql(
                &admin,
                &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
                "drop the demo database",
            )
            .await
        }
        .await;
        match dropped {
            Ok(()) => {
                println!("pgcable dev: dropped database {name}");
                Ok(())
            }
            Err(e) => Err(format!(
                "could not drop the demo database {name} ({e}); drop it by hand: psql {} -c 'DROP DATABASE {name} WITH (FORCE)'",
                shell_quote(&admin_url)
            )),
        }
    }
}

/// Start-up: database, schema, seed, triggers, relay, listener. Records what it made in `made`.
async fn start(args: &DevArgs, made: &mut Made) -> Result<Server, String> {
    let secret = match &args.devise_jwt_secret_key {
        Some(s) if !s.is_empty() => s.clone(),
        _ => DEV_SECRET.to_string(),
    };
    let url = &args.db.database_url;
    let admin_url = match probe(url).await? {
        Some(client) => {
            drop(client);
            url.clone()
        }
        None => {
            let bin = find_postgres_bin().ok_or_else(|| {
                format!(
                    "no Postgres at {} and no PostgreSQL server programs (initdb, pg_ctl) on PATH or in /usr/lib/postgresql/*/bin: \
                     install PostgreSQL (Debian/Ubuntu: apt-get install postgresql; macOS: brew install postgresql@16) \
                     or set DATABASE_URL to a reachable server",
                    db::redact(url)
                )
            })?;
            let cluster = made.cluster.insert(Cluster::new(bin)?);
            cluster.start().await?;
            cluster.url()
        }
    };

    let name = format!(
        "pgcable_demo_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let admin = connect(&admin_url).await?;
    run_sql(
        &admin,
        &format!("CREATE DATABASE {name}"),
        "create the demo database",
    )
    .await
    .map_err(|e| {
        format!(
            "cannot create a demo database on {} ({e}); use a role with CREATEDB in DATABASE_URL",
            db::redact(&admin_url)
        )
    })?;
    made.database = Some((admin_url.clone(), name.clone()));
    drop(admin);
    println!(
        "pgcable dev: demo database {name} on {} (dropped on exit)",
        db::redact(&admin_url)
    );

    let demo_url = with_database(&admin_url, &name);
    let client = connect(&demo_url).await?;
    run_sql(&client, SCHEMA_SQL, "load sql/schema.sql").await?;
    run_sql(&client, SEED_SQL, "load sql/demo_seed.sql").await?;
    match tokio::time::timeout(SQL_TIMEOUT, triggers::install(&client)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            return Err(format!(
                "cannot install the triggers: {}",
                db::error_text(&e)
            ))
        }
        Err(_) => return Err("installing the triggers timed out".into()),
    }
    drop(client);

    let mut config = Config::new(&demo_url, &secret);
    config.listen = args.listen;
    config.shutdown_timeout = Duration::from_secs(2);
    config.pool_size = 4;
    let commands = try_commands(&demo_url);
    config.demo = Some(Demo {
        campaign_id: uuid::Uuid::parse_str(DEMO_CAMPAIGN_ID)
            .map_err(|e| format!("bad demo campaign id: {e}"))?,
        // The page gets the commands without the password: it is served over plain HTTP.
        commands: try_commands(&without_password(&demo_url)),
    });
    let relay = server::start(config).await?;
    let deadline = tokio::time::Instant::now() + LISTENER_TIMEOUT;
    while !relay.state.listening.load(Ordering::Relaxed) {
        if tokio::time::Instant::now() >= deadline {
            relay.shutdown();
            let _ = tokio::time::timeout(RELAY_STOP_TIMEOUT, relay.stopped()).await;
            return Err(format!(
                "the relay's LISTEN connection did not come up within {}s; see the log above",
                LISTENER_TIMEOUT.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let token = demo_token(&secret)?;
    print_instructions(relay.addr, &commands, &token, secret == DEV_SECRET);
    Ok(relay)
}

fn print_instructions(addr: SocketAddr, commands: &[TryCommand], token: &str, dev_secret: bool) {
    use std::io::Write;
    let shown = match addr.ip() {
        ip if ip.is_unspecified() => SocketAddr::new([127, 0, 0, 1].into(), addr.port()),
        _ => addr,
    };
    let secret = if dev_secret {
        format!("the dev secret \"{DEV_SECRET}\"")
    } else {
        "DEVISE_JWT_SECRET_KEY".to_string()
    };
    let mut tries = String::new();
    for c in commands {
        tries.push_str(&format!("  # {}\n  {}\n", c.label, c.command));
    }
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "pgcable dev: relay on ws://{shown}/cable\n\
         \n\
         A token for the demo user {DEMO_USER_ID} (HS256, valid 24 h, signed with {secret}):\n\
         \x20 {token}\n\
         \n\
         Watch the demo campaign and its fight live in a browser:\n\
         \x20 http://{shown}/demo?token={token}\n\
         \n\
         Make a change and watch the page show it (each command runs as printed):\n\
         {tries}\
         \n\
         Ctrl-C stops the relay and removes the demo database.\n\
         {READY_LINE}",
    );
    let _ = out.flush();
}

/// An HS256 token for the demo user, valid for 24 hours.
pub fn demo_token(secret: &str) -> Result<String, String> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let claims = serde_json::json!({
        "sub": DEMO_USER_ID,
        "jti": DEMO_USER_JTI,
        "scp": "user",
        "iat": now,
        "exp": now + TOKEN_TTL_SECS,
    });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|e| format!("cannot sign the demo token: {e}"))
}

/// Connects to `url`: `Some` if a server answered, `None` if nothing is there (refused, no such
/// host, timed out), and an error if a server answered but refused us (wrong password, ...).
async fn probe(url: &str) -> Result<Option<Client>, String> {
    let target = db::Target::new(url, APPLICATION_NAME)?;
    match tokio::time::timeout(CONNECT_TIMEOUT, target.open()).await {
        Err(_) => Ok(None),
        Ok(Ok(db::Opened {
            client, connection, ..
        })) => {
            tokio::spawn(async move {
                let _ = connection.await;
            });
            Ok(Some(client))
        }
        Ok(Err(e)) if nothing_there(&e) => {
            println!(
                "pgcable dev: no Postgres at {} ({}); starting a throwaway cluster",
                db::redact(url),
                db::error_text(&e)
            );
            Ok(None)
        }
        Ok(Err(e)) => Err(target.explain(&e)),
    }
}

/// Whether a connection error means no server is there (as opposed to a server saying no).
fn nothing_there(e: &tokio_postgres::Error) -> bool {
    // A TLS failure comes wrapped in an I/O error, but a server did answer.
    if e.as_db_error().is_some() || crate::tls::is_tls_failure(e) {
        return false;
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = source {
        if s.is::<std::io::Error>() {
            return true;
        }
        source = s.source();
    }
    false
}

async fn connect(url: &str) -> Result<Client, String> {
    db::connect(url, APPLICATION_NAME, CONNECT_TIMEOUT).await
}

async fn run_sql(client: &Client, sql: &str, what: &str) -> Result<(), String> {
    match tokio::time::timeout(SQL_TIMEOUT, client.batch_execute(sql)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("cannot {what}: {}", db::error_text(&e))),
        Err(_) => Err(format!("cannot {what}: timed out")),
    }
}

/// `url` with its database replaced by `name` (URL or key=value form).
pub fn with_database(url: &str, name: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return format!("{url} dbname={name}");
    };
    let (main, query) = match rest.split_once('?') {
        Some((m, q)) => (m, Some(q)),
        None => (rest, None),
    };
    // The authority ends at the first '/' after any user info ('@' may not appear later).
    let authority_start = main.rfind('@').map_or(0, |i| i + 1);
    let authority = match main[authority_start..].find('/') {
        Some(i) => &main[..authority_start + i],
        None => main,
    };
    match query {
        Some(q) => format!("{scheme}://{authority}/{name}?{q}"),
        None => format!("{scheme}://{authority}/{name}"),
    }
}

/// `url` without its password (URL or key=value form), for text that leaves the terminal.
pub fn without_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url
            .split_whitespace()
            .filter(|w| !w.starts_with("password="))
            .collect::<Vec<_>>()
            .join(" ");
    };
    let (main, query) = match rest.split_once('?') {
        Some((m, q)) => (m, Some(q)),
        None => (rest, None),
    };
    let main = match main.rsplit_once('@') {
        Some((creds, host)) => match creds.split_once(':') {
            Some((user, _password)) => format!("{user}@{host}"),
            None => main.to_string(),
        },
        None => main.to_string(),
    };
    let query = query.map(|q| {
        q.split('&')
            .filter(|p| !p.starts_with("password="))
            .collect::<Vec<_>>()
            .join("&")
    });
    match query {
        Some(q) if !q.is_empty() => format!("{scheme}://{main}?{q}"),
        _ => format!("{scheme}://{main}"),
    }
}

/// `s` quoted for a POSIX shell.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The directory holding `initdb` and `pg_ctl`: from PATH, else the newest
/// `/usr/lib/postgresql/<version>/bin`.
fn find_postgres_bin() -> Option<PathBuf> {
    let has_both = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if has_both(&dir) {
                // Resolve symlinks: pg_ctl finds `postgres` next to its real location.
                let real = std::fs::canonicalize(dir.join("initdb"))
                    .ok()
                    .and_then(|p| p.parent().map(Path::to_path_buf))
                    .filter(|d| has_both(d));
                return Some(real.unwrap_or(dir));
            }
        }
    }
    let mut best: Option<(Vec<u32>, PathBuf)> = None;
    for entry in std::fs::read_dir("/usr/lib/postgresql").ok()?.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let Some(version) = name
            .split('.')
            .map(|p| p.parse::<u32>().ok())
            .collect::<Option<Vec<u32>>>()
        else {
            continue;
        };
        let bin = entry.path().join("bin");
        if has_both(&bin) && best.as_ref().is_none_or(|(v, _)| version > *v) {
            best = Some((version, bin));
        }
    }
    best.map(|(_, bin)| bin)
}

/// A private PostgreSQL cluster in a temporary directory: trust auth, 127.0.0.1 only, its
/// socket inside the directory. Removed (stopped and deleted) by [`Cluster::remove`].
/// Tests use it too, to stop and start a server of their own.
#[derive(Debug)]
pub struct Cluster {
    dir: PathBuf,
    bin: PathBuf,
    /// uid and gid to run the server programs as (initdb refuses to run as root).
    run_as: Option<(u32, u32)>,
    port: u16,
}

impl Cluster {
    /// A cluster from the machine's own PostgreSQL binaries, if it has any.
    pub fn from_machine() -> Result<Cluster, String> {
        let bin = find_postgres_bin().ok_or(
            "no PostgreSQL server binaries (initdb, pg_ctl) on PATH or under /usr/lib/postgresql/*/bin",
        )?;
        Cluster::new(bin)
    }

    /// Makes the directory and picks a port; nothing runs yet.
    fn new(bin: PathBuf) -> Result<Cluster, String> {
        let run_as = if effective_uid() == Some(0) {
            Some(postgres_user().ok_or(
                "initdb refuses to run as root and there is no `postgres` user to run it as: \
                 run `pgcable dev` as an ordinary user, or create one (useradd --system postgres)",
            )?)
        } else {
            None
        };
        let port = std::net::TcpListener::bind(("127.0.0.1", 0))
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .map_err(|e| format!("cannot find a free port for the throwaway cluster: {e}"))?;
        let dir = std::env::temp_dir().join(format!(
            "pgcable-dev-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        ));
        make_private_dir(&dir).map_err(|e| {
            format!(
                "cannot create the temporary directory {}: {e}",
                dir.display()
            )
        })?;
        let cluster = Cluster {
            dir,
            bin,
            run_as,
            port,
        };
        if let Some((uid, gid)) = run_as {
            if let Err(e) = chown(&cluster.dir, uid, gid) {
                let _ = std::fs::remove_dir_all(&cluster.dir);
                return Err(format!(
                    "cannot hand {} to the postgres user: {e}",
                    cluster.dir.display()
                ));
            }
        }
        Ok(cluster)
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn log(&self) -> PathBuf {
        self.dir.join("postgres.log")
    }

    /// The `postgres` database of the cluster.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bin.join(program));
        cmd.current_dir(&self.dir)
            .env("LC_ALL", "C")
            .env_remove("PGDATA")
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        #[cfg(unix)]
        if let Some((uid, gid)) = self.run_as {
            cmd.uid(uid).gid(gid);
        }
        cmd
    }

    /// initdb, configure, pg_ctl start.
    pub async fn start(&self) -> Result<(), String> {
        self.init().await?;
        self.start_server().await
    }

    /// initdb and the settings of a private cluster; the server is not started (tests add
    /// settings and files with [`Cluster::configure`] and [`Cluster::write_file`] first).
    pub async fn init(&self) -> Result<(), String> {
        println!(
            "pgcable dev: throwaway cluster in {} on 127.0.0.1:{} ({})",
            self.dir.display(),
            self.port,
            self.bin.display()
        );
        let mut initdb = self.command("initdb");
        initdb.arg("-D").arg(self.data()).args([
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
            "-N",
        ]);
        run_program(initdb, INITDB_TIMEOUT, "initdb").await?;

        let dir = self.dir.to_string_lossy().replace('\'', "''");
        let settings = format!(
            "\n# pgcable dev: a private throwaway cluster\n\
             listen_addresses = '127.0.0.1'\n\
             port = {}\n\
             unix_socket_directories = '{dir}'\n\
             fsync = off\n\
             synchronous_commit = off\n\
             full_page_writes = off\n",
            self.port
        );
        self.configure(&settings)
    }

    /// Appends `settings` to postgresql.conf; they take effect at the next start or reload.
    pub fn configure(&self, settings: &str) -> Result<(), String> {
        append(&self.data().join("postgresql.conf"), settings)
            .map_err(|e| format!("cannot configure the throwaway cluster: {e}"))
    }

    /// Writes (or replaces) a file in the data directory, readable only by the server's user
    /// (mode 0600, as PostgreSQL insists for `ssl_key_file`), e.g. `pg_hba.conf` or a TLS key.
    /// Returns its path.
    pub fn write_file(&self, name: &str, contents: &[u8]) -> Result<PathBuf, String> {
        let path = self.data().join(name);
        let written = write_private(&path, contents).and_then(|()| match self.run_as {
            Some((uid, gid)) => chown(&path, uid, gid),
            None => Ok(()),
        });
        written.map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        Ok(path)
    }

    /// Makes the running server read its configuration files again (`pg_ctl reload`).
    pub async fn reload(&self) -> Result<(), String> {
        let mut pg_ctl = self.command("pg_ctl");
        pg_ctl.arg("-D").arg(self.data()).arg("reload");
        run_program(
            pg_ctl,
            Duration::from_secs(PG_STOP_TIMEOUT_SECS),
            "pg_ctl reload",
        )
        .await
    }

    /// Starts the (initialized) server again.
    pub async fn start_server(&self) -> Result<(), String> {
        let mut pg_ctl = self.command("pg_ctl");
        pg_ctl
            .arg("-D")
            .arg(self.data())
            .arg("-l")
            .arg(self.log())
            .args(["-w", "-t", &PG_START_TIMEOUT_SECS.to_string(), "start"]);
        let started = run_program(
            pg_ctl,
            Duration::from_secs(PG_START_TIMEOUT_SECS + 10),
            "pg_ctl start",
        )
        .await;
        started.map_err(|e| match last_line(&self.log()) {
            Some(line) => format!("{e}; the server log says: {line}"),
            None => e,
        })
    }

    /// Stops the server (fast) and keeps its data.
    pub async fn stop_server(&self) -> Result<(), String> {
        let mut pg_ctl = self.command("pg_ctl");
        pg_ctl.arg("-D").arg(self.data()).args([
            "-m",
            "fast",
            "-w",
            "-t",
            &PG_STOP_TIMEOUT_SECS.to_string(),
            "stop",
        ]);
        run_program(
            pg_ctl,
            Duration::from_secs(PG_STOP_TIMEOUT_SECS + 5),
            "pg_ctl stop",
        )
        .await
    }

    /// Stops the server (fast, then immediate) and deletes the directory.
    pub async fn remove(self) -> Result<(), String> {
        if self.data().join("postmaster.pid").exists() {
            let mut stopped = false;
            for mode in ["fast", "immediate"] {
                let mut pg_ctl = self.command("pg_ctl");
                pg_ctl.arg("-D").arg(self.data()).args([
                    "-m",
                    mode,
                    "-w",
                    "-t",
                    &PG_STOP_TIMEOUT_SECS.to_string(),
                    "stop",
                ]);
                let timeout = Duration::from_secs(PG_STOP_TIMEOUT_SECS + 5);
                match run_program(pg_ctl, timeout, "pg_ctl stop").await {
                    Ok(()) => {
                        stopped = true;
                        break;
                    }
                    Err(e) => eprintln!("pgcable dev: {e}"),
                }
            }
            if !stopped {
                return Err(format!(
                    "could not stop the throwaway cluster; stop it with: {} -D {} -m immediate stop, then rm -rf {}",
                    self.bin.join("pg_ctl").display(),
                    self.data().display(),
                    self.dir.display()
                ));
            }
        }
        std::fs::remove_dir_all(&self.dir).map_err(|e| {
            format!(
                "could not remove {} ({e}); remove it by hand",
                self.dir.display()
            )
        })?;
        println!(
            "pgcable dev: stopped the throwaway cluster and removed {}",
            self.dir.display()
        );
        Ok(())
    }
}

/// Runs a program to completion within `timeout`; the error carries its last line of output.
async fn run_program(mut cmd: Command, timeout: Duration, what: &str) -> Result<(), String> {
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = cmd.spawn().map_err(|e| format!("cannot run {what}: {e}"))?;
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Err(_) => Err(format!(
            "{what} did not finish within {}s",
            timeout.as_secs()
        )),
        Ok(Err(e)) => Err(format!("{what} failed: {e}")),
        Ok(Ok(out)) if out.status.success() => Ok(()),
        Ok(Ok(out)) => {
            let text = String::from_utf8_lossy(&out.stderr).to_string()
                + &String::from_utf8_lossy(&out.stdout);
            let line = text
                .lines()
                .map(str::trim)
                .rfind(|l| !l.is_empty())
                .unwrap_or("no output")
                .to_string();
            Err(format!("{what} failed ({}): {line}", out.status))
        }
    }
}

fn last_line(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .map(str::to_string)
}

fn append(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().append(true).open(path)?;
    f.write_all(text.as_bytes())
}

#[cfg(unix)]
fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    // An existing file keeps its mode on open: set it.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(contents)
}

#[cfg(not(unix))]
fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, contents)
}

#[cfg(unix)]
fn make_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().mode(0o700).create(dir)
}

#[cfg(not(unix))]
fn make_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir(dir)
}

#[cfg(unix)]
fn chown(dir: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
    std::os::unix::fs::chown(dir, Some(uid), Some(gid))
}

#[cfg(not(unix))]
fn chown(_dir: &Path, _uid: u32, _gid: u32) -> std::io::Result<()> {
    Ok(())
}

/// The effective uid of this process (Linux: /proc/self/status; elsewhere `id -u`).
fn effective_uid() -> Option<u32> {
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        let line = status.lines().find(|l| l.starts_with("Uid:"))?;
        return line.split_whitespace().nth(2)?.parse().ok();
    }
    let out = std::process::Command::new("id").arg("-u").output().ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

/// The uid and gid of the `postgres` user, from /etc/passwd.
fn postgres_user() -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.first() != Some(&"postgres") || fields.len() < 4 {
            return None;
        }
        Some((fields[2].parse().ok()?, fields[3].parse().ok()?))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_database() {
        assert_eq!(
            with_database("postgres://u:p@h:5432/prod", "demo"),
            "postgres://u:p@h:5432/demo"
        );
        assert_eq!(
            with_database("postgresql://h/prod?sslmode=disable", "demo"),
            "postgresql://h/demo?sslmode=disable"
        );
        assert_eq!(
            with_database("postgres://h:1", "demo"),
            "postgres://h:1/demo"
        );
        assert_eq!(
            with_database("postgres://u:a/b@h/prod", "demo"),
            "postgres://u:a/b@h/demo"
        );
        assert_eq!(
            with_database("host=h dbname=prod", "demo"),
            "host=h dbname=prod dbname=demo"
        );
    }

    #[test]
    fn drops_the_password() {
        assert_eq!(
            without_password("postgres://u:secret@h:5432/d"),
            "postgres://u@h:5432/d"
        );
        assert_eq!(
            without_password("postgres://u@h/d?sslmode=disable&password=x"),
            "postgres://u@h/d?sslmode=disable"
        );
        assert_eq!(
            without_password("postgres://u:p@h/d?password=x"),
            "postgres://u@h/d"
        );
        assert_eq!(
            without_password("host=h password=x dbname=d"),
            "host=h dbname=d"
        );
    }

    #[test]
    fn suggests_three_changes() {
        let commands = try_commands("postgres://postgres@127.0.0.1:5432/demo");
        let lines: Vec<&str> = commands.iter().map(|c| c.command.as_str()).collect();
        assert_eq!(
            lines,
            [
                format!("psql 'postgres://postgres@127.0.0.1:5432/demo' -c \"UPDATE characters SET name = 'Johnny Tso (edited)' WHERE id = '{DEMO_CHARACTER_ID}'\""),
                format!("psql 'postgres://postgres@127.0.0.1:5432/demo' -c \"UPDATE shots SET shot = shot - 3 WHERE id = '{DEMO_SHOT_ID}'\""),
                format!("psql 'postgres://postgres@127.0.0.1:5432/demo' -c \"UPDATE fights SET ended_at = now() WHERE id = '{DEMO_FIGHT_ID}'\""),
            ]
        );
    }

    #[test]
    fn quotes_for_the_shell() {
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn token_names_the_demo_user() {
        let token = demo_token(DEV_SECRET).unwrap_or_default();
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        let data = jsonwebtoken::decode::<serde_json::Value>(
            &token,
            &jsonwebtoken::DecodingKey::from_secret(DEV_SECRET.as_bytes()),
            &validation,
        );
        assert_eq!(
            data.ok().map(|d| d.claims["sub"].clone()),
            Some(serde_json::json!(DEMO_USER_ID))
        );
    }
}
