//! `pgcable-bench`: pgcable against Rails ActionCable and against a floor server, side by side,
//! in one run. A benchmark prints tables; it is not a test.
//!
//! ```text
//! cargo run --release --bin pgcable-bench -- all            # everything, < 15 minutes
//! cargo run --release --bin pgcable-bench -- fanout --n 1000 --changes 20 --target pgcable,floor
//! cargo run --release --bin pgcable-bench -- connections --n 50000 --json
//! cargo run --release --bin pgcable-bench -- bridge --n 1000          # Redis PUBLISH → client
//! cargo run --release --bin pgcable-bench -- encounter      # live combat, 1,000 subscribers
//! ```
//!
//! Each run creates its own database (`pgcable_bench_<random>`, dropped at the end), starts the
//! servers as child processes (so their memory and CPU can be read from /proc) and drives them
//! with a load client of worker processes. See BENCHMARKS.md for what each scenario measures.
//!
//! Modules: [`db`] the database and tokens, [`targets`] the servers, [`floor`] the floor server,
//! [`fleet`] and [`worker`] the load client, [`ws`] its WebSocket framing, [`fanout`],
//! [`connections`], [`ingest`], [`writer`] and [`encounter`] the scenarios ([`combat`] is the
//! encounter's fight and its combat actions), [`report`] tables and JSON, [`sys`] clocks, limits
//! and /proc.

mod combat;
mod connections;
mod db;
mod encounter;
mod fanout;
mod fleet;
mod floor;
mod ingest;
mod report;
mod sys;
mod targets;
mod worker;
mod writer;
mod ws;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use serde::Serialize;

use crate::db::BenchDb;
use crate::fanout::{Plan, Round, Variant};
use crate::report::{ms, num, ratio, Table};
use crate::targets::{Env, Kind};

/// Benchmarks pgcable against Rails ActionCable and a floor server.
#[derive(Parser, Debug)]
#[command(name = "pgcable-bench", about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Every scenario in one go (bounded: < 15 minutes on a 2-core machine).
    All(RunArgs),
    /// One change, N subscribers of one campaign: commit-to-client latency per N.
    Fanout(RunArgs),
    /// Idle subscribed connections: server memory per connection and the most it holds.
    Connections(RunArgs),
    /// Sustained row changes from several writers with subscribers watching (pgcable only).
    Ingest(RunArgs),
    /// What the triggers cost writers (runs triggers/bench.sh).
    Writer(RunArgs),
    /// Commit-to-client latency with one subscriber.
    Single(RunArgs),
    /// Rails bridge: Redis PUBLISH (as Rails' ActionCable does) to N subscribers through
    /// pgcable's bridge, beside pgcable.broadcast at the same N (pgcable only; needs Redis).
    Bridge(RunArgs),
    /// Live combat: a started fight of 40 combatants, N subscribers of its campaign, combat
    /// actions; encounter render time and commit-to-client latency (pgcable only).
    Encounter(RunArgs),
    /// (internal) The floor server.
    #[command(hide = true)]
    FloorServe {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        database_url: String,
    },
    /// (internal) A load-client worker process.
    #[command(hide = true)]
    ClientWorker(worker::WorkerArgs),
}

/// Options of every scenario.
#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// Servers to measure: pgcable, floor, rails or all (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "all")]
    target: Vec<String>,
    /// Subscribers (fanout: a list, default 1,100,1000,10000; connections: default 50000;
    /// ingest and encounter: default 1000).
    #[arg(long, value_delimiter = ',')]
    n: Vec<usize>,
    /// Changes per (server, variant, N) (fanout: 100, single: 200; encounter: combat actions in
    /// the closed loop and in the burst, and changes of its fanout row reference, 100).
    #[arg(long)]
    changes: Option<usize>,
    /// Fanout/single variants: pipe, row or all.
    #[arg(long, value_delimiter = ',', default_value = "all")]
    variant: Vec<String>,
    /// Seconds one (server, variant, N) may take for its changes.
    #[arg(long, default_value_t = 60)]
    budget: u64,
    /// Seconds to open the connections of one step.
    #[arg(long, default_value_t = 120)]
    connect_budget: u64,
    /// Seconds the connections scenario may spend opening, per server.
    #[arg(long, default_value_t = 150)]
    connections_budget: u64,
    /// Bytes of padding in a pipe message (default: its frame is about the size of a
    /// rendered character's, ~2.1 KB).
    #[arg(long, default_value_t = 2000)]
    payload_bytes: usize,
    /// Ingest: seconds of writing. Writer: pgbench seconds per run.
    #[arg(long)]
    duration: Option<u64>,
    /// Ingest: writer sessions. Writer: pgbench clients.
    #[arg(long, default_value_t = 4)]
    writers: usize,
    /// Ingest: row changes per second over all writers (0: as fast as they go).
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Ingest: rows each UPDATE changes. With few rows per statement the writers' commits,
    /// one at a time behind Postgres's NOTIFY lock, limit the rate before the relay does.
    #[arg(long, default_value_t = 100)]
    rows_per_statement: usize,
    /// Ingest: campaigns the subscribers are spread over.
    #[arg(long, default_value_t = 100)]
    campaigns: usize,
    /// Ingest: how many of the campaigns have subscribers (default: all); the writers change
    /// rows of every campaign.
    #[arg(long)]
    watched: Option<usize>,
    /// Ingest: the writer sessions commit with synchronous_commit = off (their commits then
    /// do not wait for the WAL flush while holding Postgres's NOTIFY lock).
    #[arg(long)]
    async_commit: bool,
    /// Ingest: characters per campaign.
    #[arg(long, default_value_t = 100)]
    rows_per_campaign: usize,
    /// Encounter: direct renders of the fight's encounter to time.
    #[arg(long, default_value_t = 200)]
    renders: usize,
    /// Writer: pgbench rounds (best is taken).
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Writer: bulk UPDATE runs (median is taken).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Postgres server (a maintenance database URL; the bench creates its own database there).
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    database_url: String,
    /// The pgcable binary (default: target/release/pgcable, built first with cargo).
    #[arg(long)]
    relay_bin: Option<PathBuf>,
    /// Extra settings for the relay, KEY=VALUE (repeatable), e.g. RUST_LOG=warn.
    #[arg(long = "relay-env")]
    relay_env: Vec<String>,
    /// Postgres session options for the relay's connections, e.g.
    /// "-c log_min_duration_statement=0" (for profiling its queries).
    #[arg(long)]
    relay_db_options: Option<String>,
    /// Bridge: the Redis the relay's bridge subscribes to and the bench publishes on (the
    /// channel prefix is the bench database's name).
    #[arg(long, default_value = "redis://127.0.0.1:6379/0")]
    redis_url: String,
    /// Where server logs go (default target/pgcable-bench/<time>).
    #[arg(long)]
    log_dir: Option<PathBuf>,
    /// Print the results as JSON on stdout (tables then go to stderr).
    #[arg(long)]
    json: bool,
}

/// Everything a run measured.
#[derive(Debug, Default, Serialize)]
pub struct Results {
    /// The machine.
    pub machine: Option<sys::Machine>,
    /// When (UTC, from `date`).
    pub date: String,
    /// The command line.
    pub command: String,
    /// single.
    pub single: Vec<Round>,
    /// fanout.
    pub fanout: Vec<Round>,
    /// bridge.
    pub bridge: Vec<Round>,
    /// connections.
    pub connections: Vec<connections::ConnResult>,
    /// ingest.
    pub ingest: Option<ingest::IngestResult>,
    /// writer.
    pub writer: Option<writer::WriterResult>,
    /// encounter.
    pub encounter: Option<encounter::EncounterResult>,
    /// Targets of the issue, met or not.
    pub targets: Vec<Check>,
    /// What went wrong along the way.
    pub problems: Vec<String>,
    /// Every table printed.
    pub tables: Vec<Table>,
    /// Seconds the run took.
    pub seconds: f64,
}

/// One target and whether it was met.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// What.
    pub target: String,
    /// Measured.
    pub measured: String,
    /// Met, missed, or not measured (None).
    pub met: Option<bool>,
}

/// The run's shared state.
pub struct Ctx {
    /// Paths and settings of the servers.
    pub env: Env,
    /// The bench database.
    pub db: BenchDb,
    /// Options.
    pub args: RunArgs,
    /// What has been measured.
    pub results: Results,
    started: Instant,
}

impl Ctx {
    /// Servers to measure, in a fixed order.
    pub fn targets(&self) -> Vec<Kind> {
        let all = self.args.target.iter().any(|t| t == "all");
        [Kind::Pgcable, Kind::Floor, Kind::Rails]
            .into_iter()
            .filter(|k| all || self.args.target.iter().any(|t| t == k.name()))
            .collect()
    }

    /// Fanout variants to run (`bridge` only when named).
    pub fn variants(&self) -> Vec<Variant> {
        let all = self.args.variant.iter().any(|v| v == "all");
        [Variant::Pipe, Variant::Row, Variant::Bridge]
            .into_iter()
            .filter(|v| {
                (all && *v != Variant::Bridge) || self.args.variant.iter().any(|x| x == v.name())
            })
            .collect()
    }

    /// Time to open one step of connections.
    pub fn connect_budget(&self) -> Duration {
        Duration::from_secs(self.args.connect_budget)
    }

    /// Time the connections scenario may spend opening, per server.
    pub fn connections_budget(&self) -> Duration {
        Duration::from_secs(self.args.connections_budget)
    }

    /// A progress line on stderr.
    pub fn progress(&self, what: &str) {
        eprintln!("[{:>6.1} s] {what}", self.started.elapsed().as_secs_f64());
    }

    /// Something that kept a figure from being measured.
    pub fn problem(&mut self, what: String) {
        eprintln!(
            "[{:>6.1} s] problem: {what}",
            self.started.elapsed().as_secs_f64()
        );
        self.results.problems.push(what);
    }

    /// Prints a table (stdout, or stderr with --json) and keeps it.
    pub fn print(&mut self, table: Table) {
        let text = table.render();
        if self.args.json {
            eprintln!("\n{text}");
        } else {
            println!("\n{text}");
        }
        self.results.tables.push(table);
    }
}

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The relay binary: given, or target/release/pgcable next to this binary, built first.
fn relay_bin(args: &RunArgs, self_bin: &Path) -> Result<PathBuf, String> {
    if let Some(p) = &args.relay_bin {
        return Ok(p.clone());
    }
    let bin = self_bin
        .parent()
        .map(|d| d.join("pgcable"))
        .ok_or("cannot locate the pgcable binary")?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let profile_is_release = self_bin
        .parent()
        .and_then(|d| d.file_name())
        .is_some_and(|n| n == "release");
    eprintln!("building the relay: cargo build --release --bin pgcable");
    let status = std::process::Command::new(cargo)
        .args(["build", "--release", "--quiet", "--bin", "pgcable"])
        .current_dir(crate_dir())
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => eprintln!("warning: building pgcable failed ({s}); using the binary there is"),
        Err(e) => eprintln!("warning: cannot run cargo ({e}); using the binary there is"),
    }
    let bin = if profile_is_release {
        bin
    } else {
        crate_dir().join("target/release/pgcable")
    };
    if bin.exists() {
        Ok(bin)
    } else {
        Err(format!(
            "{} does not exist: run cargo build --release --bin pgcable",
            bin.display()
        ))
    }
}

/// Runs bench/rails/setup.sh if the Rails side is to be measured and puma is missing.
fn rails_ready(ctx: &mut Ctx) {
    if !ctx.targets().contains(&Kind::Rails) {
        return;
    }
    let script = ctx.env.rails_dir.join("setup.sh");
    let ok = std::process::Command::new("bash")
        .arg(&script)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        ctx.problem(format!(
            "{} failed: Rails is not measured (install ruby-actioncable, ruby-activerecord, ruby-pg and puma)",
            script.display()
        ));
        ctx.args.target.retain(|t| t != "rails");
        if ctx.args.target.iter().any(|t| t == "all") {
            ctx.args.target = vec!["pgcable".into(), "floor".into()];
        }
    }
}

async fn scenario_single(ctx: &mut Ctx) {
    let plan = Plan {
        changes: ctx.args.changes.unwrap_or(200),
        gap: Duration::from_millis(10),
        change_timeout: Duration::from_secs(10),
        budget: Duration::from_secs(ctx.args.budget),
        pad: None,
    };
    let rounds = fanout::run(ctx, &[1], plan, "single").await;
    let mut t = Table::new(
        "single: one subscriber, commit-to-client latency (ms)",
        &["server", "variant", "changes", "p50", "p95", "p99", "max"],
    );
    for r in &rounds {
        t.row(vec![
            r.target.name().into(),
            r.variant.name().into(),
            r.changes.to_string(),
            ms(r.latency.p50_ms),
            ms(r.latency.p95_ms),
            ms(r.latency.p99_ms),
            ms(r.latency.max_ms),
        ]);
    }
    t.note(
        "Measured from the moment the writer sent COMMIT (the change was made just before, in the \
         same transaction) to the client's receipt.",
    );
    ctx.print(t);
    ctx.results.single = rounds;
}

async fn scenario_fanout(ctx: &mut Ctx) {
    let ns = if ctx.args.n.is_empty() {
        vec![1, 100, 1000, 10_000]
    } else {
        ctx.args.n.clone()
    };
    let plan = Plan {
        changes: ctx.args.changes.unwrap_or(100),
        gap: Duration::from_millis(25),
        change_timeout: Duration::from_secs(30),
        budget: Duration::from_secs(ctx.args.budget),
        pad: None,
    };
    let rounds = fanout::run(ctx, &ns, plan, "fanout").await;
    for t in fanout::tables(&rounds, "fanout") {
        ctx.print(t);
    }
    ctx.results.fanout = rounds;
}

async fn scenario_bridge(ctx: &mut Ctx) {
    let ns = if ctx.args.n.is_empty() {
        vec![1000]
    } else {
        ctx.args.n.clone()
    };
    let plan = Plan {
        changes: ctx.args.changes.unwrap_or(100),
        gap: Duration::from_millis(25),
        change_timeout: Duration::from_secs(30),
        budget: Duration::from_secs(ctx.args.budget),
        pad: None,
    };
    let saved = (ctx.args.target.clone(), ctx.args.variant.clone());
    ctx.args.target = vec!["pgcable".into()];
    ctx.args.variant = vec!["pipe".into(), "bridge".into()];
    let bridge_env = [
        ("PGCABLE_REDIS_URL".to_string(), ctx.args.redis_url.clone()),
        (
            "PGCABLE_REDIS_CHANNEL_PREFIX".to_string(),
            ctx.db.name.clone(),
        ),
    ];
    ctx.env.relay_env.extend(bridge_env.iter().cloned());
    let rounds = fanout::run(ctx, &ns, plan, "bridge").await;
    ctx.env.relay_env.retain(|e| !bridge_env.contains(e));
    (ctx.args.target, ctx.args.variant) = saved;
    // The first table only: the p99 ratios against floor and Rails do not apply here.
    for mut t in fanout::tables(&rounds, "bridge").into_iter().take(1) {
        t.note(
            "bridge: from sending PUBLISH <prefix>:campaign_<id> (the message Rails' ActionCable Redis adapter \
             publishes) to each client's receipt; pipe: from sending the COMMIT of pgcable.broadcast. \
             Same relay process, same N subscribers, same message.",
        );
        ctx.print(t);
    }
    ctx.results.bridge = rounds;
}

async fn scenario_connections(ctx: &mut Ctx) {
    let goal = ctx.args.n.first().copied().unwrap_or(50_000);
    let results = connections::run(ctx, goal).await;
    let mut t = connections::table(&results);
    let hard = sys::nofile_hard();
    t.note(format!(
        "Every process here may hold at most {hard} file descriptors (hard RLIMIT_NOFILE; raising it needs CAP_SYS_RESOURCE). \
         The load client spreads its connections over worker processes and source addresses; each server is one process."
    ));
    ctx.print(t);
    ctx.results.connections = results;
}

async fn scenario_ingest(ctx: &mut Ctx) {
    let plan = ingest::IngestPlan {
        subscribers: ctx.args.n.first().copied().unwrap_or(1000),
        campaigns: ctx.args.campaigns,
        watched: ctx.args.watched.unwrap_or(ctx.args.campaigns),
        rows_per_campaign: ctx.args.rows_per_campaign,
        writers: ctx.args.writers,
        rows_per_statement: ctx.args.rows_per_statement,
        async_commit: ctx.args.async_commit,
        rate: ctx.args.rate,
        duration: Duration::from_secs(ctx.args.duration.unwrap_or(10)),
    };
    if let Some(r) = ingest::run(ctx, plan).await {
        ctx.print(ingest::table(&r));
        ctx.results.ingest = Some(r);
    }
}

async fn scenario_writer(ctx: &mut Ctx) {
    ctx.progress("writer: triggers/bench.sh");
    let result = writer::run(
        &crate_dir(),
        &ctx.args.database_url,
        ctx.args.writers,
        ctx.args.duration.unwrap_or(5),
        ctx.args.rounds,
        ctx.args.runs,
    )
    .await;
    match result {
        Ok(r) => {
            ctx.print(writer::table(&r));
            ctx.results.writer = Some(r);
        }
        Err(e) => ctx.problem(format!("writer: {e}")),
    }
}

async fn scenario_encounter(ctx: &mut Ctx) {
    let plan = encounter::EncounterPlan {
        subscribers: ctx.args.n.first().copied().unwrap_or(1000),
        actions: ctx.args.changes.unwrap_or(100),
        renders: ctx.args.renders,
        action_timeout: Duration::from_secs(5),
        budget: Duration::from_secs(ctx.args.budget),
    };
    let others: Vec<Kind> = ctx
        .targets()
        .into_iter()
        .filter(|k| *k != Kind::Pgcable)
        .collect();
    if let Some(r) = encounter::run(ctx, plan).await {
        for t in encounter::tables(&r, &others) {
            ctx.print(t);
        }
        ctx.results.encounter = Some(r);
    }
}

/// The issue's targets against what was measured.
fn checks(r: &Results) -> Vec<Check> {
    let mut out = Vec::new();
    let p99 = |kind: Kind, variant: Variant, n: usize| {
        r.fanout
            .iter()
            .find(|x| x.target == kind && x.variant == variant && x.n == n)
            .map(|x| x.latency.p99_ms)
    };
    let mut check = |target: &str, measured: String, met: Option<bool>| {
        out.push(Check {
            target: target.into(),
            measured,
            met,
        })
    };
    for n in [1000, 10_000] {
        let (pg, fl) = (
            p99(Kind::Pgcable, Variant::Pipe, n),
            p99(Kind::Floor, Variant::Pipe, n),
        );
        let q = pg.zip(fl).and_then(|(a, b)| ratio(a, b));
        check(
            &format!("fanout p99 ≤ 1.5 × floor at N = {n}"),
            match (pg, fl) {
                (Some(a), Some(b)) => format!("{} vs {} ms: {}×", ms(a), ms(b), num(q, 2)),
                _ => "not measured".into(),
            },
            q.map(|q| q <= 1.5),
        );
    }
    let (pg, rails) = (
        p99(Kind::Pgcable, Variant::Pipe, 1000),
        p99(Kind::Rails, Variant::Pipe, 1000),
    );
    let q = pg.zip(rails).and_then(|(a, b)| ratio(b, a));
    check(
        "fanout p99 ≥ 20 × lower than Rails at N = 1,000",
        match (pg, rails) {
            (Some(a), Some(b)) => {
                format!("Rails {} ms / pgcable {} ms = {}×", ms(b), ms(a), num(q, 1))
            }
            _ => "not measured".into(),
        },
        q.map(|q| q >= 20.0),
    );
    let (row, fl) = (
        p99(Kind::Pgcable, Variant::Row, 1000),
        p99(Kind::Floor, Variant::Pipe, 1000),
    );
    let q = row.zip(fl).and_then(|(a, b)| ratio(a, b));
    check(
        "fanout-row p99 ≤ 2 × floor pipe p99 at N = 1,000",
        match (row, fl) {
            (Some(a), Some(b)) => format!("{} vs {} ms: {}×", ms(a), ms(b), num(q, 2)),
            _ => "not measured".into(),
        },
        q.map(|q| q <= 2.0),
    );
    let conn = r.connections.iter().find(|c| c.target == Kind::Pgcable);
    check(
        "≤ 16 KiB RSS per idle subscribed connection",
        conn.map(|c| {
            format!(
                "{} KiB at {} connections",
                num(Some(c.kib_per_conn), 1),
                c.reached
            )
        })
        .unwrap_or_else(|| "not measured".into()),
        conn.map(|c| c.kib_per_conn <= 16.0),
    );
    check(
        "≥ 50,000 connections",
        conn.map(|c| format!("{} ({})", c.reached, c.stopped_by))
            .unwrap_or_else(|| "not measured".into()),
        conn.map(|c| c.reached >= 50_000),
    );
    check(
        "≥ 10,000 row changes/s ingested with a flat NOTIFY queue",
        r.ingest
            .as_ref()
            .map(|i| {
                format!(
                    "{} rows/s ({} writers × {}-row UPDATEs), queue max {} %, growth {} %",
                    num(Some(i.rows_per_sec), 0),
                    i.writers,
                    i.rows_per_statement,
                    num(Some(i.queue_max * 100.0), 4),
                    num(Some(i.queue_growth * 100.0), 4)
                )
            })
            .unwrap_or_else(|| "not measured".into()),
        r.ingest
            .as_ref()
            .map(|i| i.rows_per_sec >= 10_000.0 && ingest::queue_flat(i)),
    );
    let cost = r.writer.as_ref().and_then(|w| w.tps_cost_pct);
    check(
        "≤ 10 % writer TPS cost from the triggers",
        cost.map(|c| format!("{c:.1} %"))
            .unwrap_or_else(|| "not measured".into()),
        cost.map(|c| c <= 10.0),
    );
    let enc = r.encounter.as_ref();
    let render = enc.and_then(|e| e.render.as_ref());
    check(
        "encounter render p50 ≤ 5 ms (40 combatants)",
        render
            .map(|x| format!("{} ms (p99 {} ms)", ms(x.p50_ms), ms(x.p99_ms)))
            .unwrap_or_else(|| "not measured".into()),
        render.map(|x| x.p50_ms <= 5.0),
    );
    let closed = enc.and_then(|e| e.closed.as_ref());
    let row = enc.and_then(|e| e.row.as_ref());
    let q = closed
        .zip(row)
        .and_then(|(c, r)| ratio(c.last_subscriber.p99_ms, r.latency.p99_ms));
    check(
        &format!(
            "encounter commit→last-subscriber p99 ≤ 2 × fanout-row p99 at N = {}",
            enc.map(|e| e.subscribers).unwrap_or(1000)
        ),
        match (closed, row) {
            (Some(c), Some(r)) => format!(
                "{} vs {} ms: {}×",
                ms(c.last_subscriber.p99_ms),
                ms(r.latency.p99_ms),
                num(q, 2)
            ),
            _ => "not measured".into(),
        },
        q.map(|q| q <= 2.0),
    );
    check(
        "exactly 1 encounter per combat action per subscriber",
        closed
            .map(|c| {
                format!(
                    "{} per action ({} duplicates, {} stale, {} missed of {} × {})",
                    num(Some(c.encounters_per_action), 3),
                    c.duplicates,
                    c.stale,
                    c.missed,
                    c.actions,
                    enc.map(|e| e.subscribers).unwrap_or(0)
                )
            })
            .unwrap_or_else(|| "not measured".into()),
        closed.map(|c| {
            c.actions > 0
                && c.duplicates == 0
                && c.stale == 0
                && c.missed == 0
                && c.unmarked == 0
                && c.encounters_per_action == 1.0
        }),
    );
    for variant in [Variant::Pipe, Variant::Row] {
        let s = r
            .single
            .iter()
            .find(|x| x.target == Kind::Pgcable && x.variant == variant);
        check(
            &format!("single-subscriber p50 ≤ 2 ms ({})", variant.name()),
            s.map(|x| {
                format!(
                    "{} ms (p99 {} ms)",
                    ms(x.latency.p50_ms),
                    ms(x.latency.p99_ms)
                )
            })
            .unwrap_or_else(|| "not measured".into()),
            s.map(|x| x.latency.p50_ms <= 2.0),
        );
    }
    out
}

async fn run(which: &str, args: RunArgs) -> Result<Results, String> {
    let started = Instant::now();
    let soft = sys::raise_nofile();
    let self_bin =
        std::env::current_exe().map_err(|e| format!("cannot locate this binary: {e}"))?;
    let needs_relay = which != "writer";
    let relay = if needs_relay {
        relay_bin(&args, &self_bin)?
    } else {
        PathBuf::new()
    };
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let log_dir = args
        .log_dir
        .clone()
        .unwrap_or_else(|| crate_dir().join(format!("target/pgcable-bench/{stamp}")));
    let ctx_options = args.relay_db_options.clone();
    let relay_env = args
        .relay_env
        .iter()
        .filter_map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect();
    eprintln!(
        "pgcable-bench {which}: logs in {}; open-file limit {soft}",
        log_dir.display()
    );
    let db = BenchDb::create(&args.database_url).await?;
    eprintln!("database {}", db.name);
    let date = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let mut ctx = Ctx {
        env: Env {
            relay_bin: relay,
            self_bin,
            rails_dir: crate_dir().join("bench/rails"),
            log_dir,
            relay_env,
            relay_db_options: ctx_options,
        },
        db,
        args,
        results: Results {
            machine: Some(sys::machine()),
            date,
            command: std::env::args().skip(1).collect::<Vec<_>>().join(" "),
            ..Results::default()
        },
        started,
    };
    // Only these scenarios measure Rails.
    if matches!(which, "all" | "single" | "fanout" | "connections") {
        rails_ready(&mut ctx);
    }
    let body = async {
        match which {
            "single" => scenario_single(&mut ctx).await,
            "fanout" => scenario_fanout(&mut ctx).await,
            "connections" => scenario_connections(&mut ctx).await,
            "ingest" => scenario_ingest(&mut ctx).await,
            "writer" => scenario_writer(&mut ctx).await,
            "bridge" => scenario_bridge(&mut ctx).await,
            "encounter" => scenario_encounter(&mut ctx).await,
            _ => {
                scenario_single(&mut ctx).await;
                scenario_fanout(&mut ctx).await;
                scenario_bridge(&mut ctx).await;
                scenario_connections(&mut ctx).await;
                scenario_ingest(&mut ctx).await;
                scenario_writer(&mut ctx).await;
                scenario_encounter(&mut ctx).await;
            }
        }
    };
    let interrupted = tokio::select! {
        _ = body => false,
        _ = tokio::signal::ctrl_c() => true,
    };
    // Child processes are killed when their handles drop; the database goes last.
    ctx.db.drop_database().await;
    if interrupted {
        return Err("interrupted".into());
    }
    ctx.results.targets = checks(&ctx.results);
    if !ctx.results.targets.iter().all(|c| c.met.is_none()) {
        let mut t = Table::new("targets", &["target", "measured", "met"]);
        for c in &ctx.results.targets {
            if c.met.is_some() {
                t.row(vec![
                    c.target.clone(),
                    c.measured.clone(),
                    match c.met {
                        Some(true) => "yes".into(),
                        Some(false) => "NO".into(),
                        None => "-".into(),
                    },
                ]);
            }
        }
        ctx.print(t);
    }
    if let Some(m) = &ctx.results.machine {
        let line = format!(
            "machine: {} cores, {:.1} GiB, {}, Linux {}; {}",
            m.cores, m.mem_gib, m.cpu, m.kernel, ctx.results.date
        );
        if ctx.args.json {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    }
    for p in &ctx.results.problems {
        eprintln!("problem: {p}");
    }
    ctx.results.seconds = started.elapsed().as_secs_f64();
    eprintln!("done in {:.0} s", ctx.results.seconds);
    Ok(ctx.results)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("pgcable-bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (which, args) = match cli.command {
        Command::FloorServe {
            listen,
            database_url,
        } => {
            return match runtime.block_on(floor::serve(listen, database_url)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("floor: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        Command::ClientWorker(args) => {
            return match runtime.block_on(worker::run(args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("client worker: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        Command::All(a) => ("all", a),
        Command::Fanout(a) => ("fanout", a),
        Command::Connections(a) => ("connections", a),
        Command::Ingest(a) => ("ingest", a),
        Command::Writer(a) => ("writer", a),
        Command::Single(a) => ("single", a),
        Command::Bridge(a) => ("bridge", a),
        Command::Encounter(a) => ("encounter", a),
    };
    let json = args.json;
    match runtime.block_on(run(which, args)) {
        Ok(results) => {
            if json {
                match serde_json::to_string_pretty(&results) {
                    Ok(s) => println!("{s}"),
                    Err(e) => {
                        eprintln!("pgcable-bench: cannot encode the results: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("pgcable-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
