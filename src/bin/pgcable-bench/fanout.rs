//! `fanout` and `single`: one change at a time, N subscribers of one campaign, latency from
//! the writer's COMMIT to each client's receipt.
//!
//! Variants: `pipe` is `SELECT pgcable.broadcast(...)` (for Rails: `SELECT pg_notify(...)` on
//! the channel its postgresql adapter listens on, which is the stream name itself below 64
//! characters); `row` is an UPDATE of a character, which pgcable re-reads and renders;
//! `bridge` is a Redis `PUBLISH <prefix>:campaign_<id>` as Rails' ActionCable Redis adapter
//! does it, which pgcable's bridge delivers (measured from sending the PUBLISH). The
//! commit is stamped right after the writer's statement (autocommit) returns; every receipt is
//! stamped by the worker as its frame is parsed. Each change waits until every subscriber has
//! it (or a timeout), then a short gap, then the next.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_postgres::{Client, Statement};

use crate::db::{campaign_identifier, connect, BenchDb};
use crate::fleet::Fleet;
use crate::report::{ms, num, ratio, Latency, Table};
use crate::sys::now_ns;
use crate::targets::{Kind, Target};
use crate::Ctx;

/// How a change is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Variant {
    /// `pgcable.broadcast` (or `pg_notify` for Rails): no re-read.
    Pipe,
    /// An UPDATE of a character row: re-read and rendered by pgcable.
    Row,
    /// A Redis PUBLISH on the Rails cable's channel, delivered by pgcable's bridge.
    Bridge,
}

impl Variant {
    /// Its name in tables.
    pub fn name(self) -> &'static str {
        match self {
            Variant::Pipe => "pipe",
            Variant::Row => "row",
            Variant::Bridge => "bridge",
        }
    }

    /// Whether a server can be measured with this variant (only pgcable turns rows into
    /// messages).
    pub fn applies_to(self, kind: Kind) -> bool {
        self == Variant::Pipe || kind == Kind::Pgcable
    }
}

/// The Redis side of the `bridge` variant: a connection and the channel Rails would publish to.
pub struct Publisher {
    conn: redis::aio::MultiplexedConnection,
    channel: String,
}

impl Publisher {
    /// Connects to `url`; messages go to `<prefix>:campaign_<campaign>`.
    pub async fn connect(url: &str, prefix: &str, db: &BenchDb) -> Result<Publisher, String> {
        let client = redis::Client::open(url).map_err(|e| format!("bad Redis URL {url}: {e}"))?;
        let conn = tokio::time::timeout(
            Duration::from_secs(5),
            client.get_multiplexed_async_connection(),
        )
        .await
        .map_err(|_| format!("Redis at {url} did not answer"))?
        .map_err(|e| format!("cannot connect to Redis at {url}: {e}"))?;
        Ok(Publisher {
            conn,
            channel: format!("{prefix}:campaign_{}", db.campaign),
        })
    }
}

/// The writer session that makes the changes.
pub struct Writer {
    client: Client,
    broadcast: Statement,
    notify: Statement,
    update: Statement,
    /// For the `bridge` variant.
    pub publisher: Option<Publisher>,
}

impl Writer {
    /// A writer on the bench database.
    pub async fn new(db: &BenchDb) -> Result<Writer, String> {
        let client = connect(&db.url).await?;
        let prep = |sql: &'static str| {
            let client = &client;
            async move {
                client
                    .prepare(sql)
                    .await
                    .map_err(|e| format!("prepare {sql}: {e}"))
            }
        };
        let broadcast = prep("SELECT pgcable.broadcast($1, $2::text::jsonb)").await?;
        let notify = prep("SELECT pg_notify($1, $2)").await?;
        let update =
            prep("UPDATE characters SET name = $1, updated_at = now() WHERE id = $2").await?;
        Ok(Writer {
            client,
            broadcast,
            notify,
            update,
            publisher: None,
        })
    }

    /// Makes change `seq` in a transaction of its own and returns when its COMMIT was sent and
    /// when it was acknowledged (ns).
    pub async fn fire(
        &mut self,
        kind: Kind,
        variant: Variant,
        seq: u32,
        db: &BenchDb,
        pad: &str,
    ) -> Result<(u64, u64), String> {
        let stream = format!("campaign_{}", db.campaign);
        let message = format!(r#"{{"q":{seq},"pad":"{pad}"}}"#);
        let name = format!("bench-{seq}");
        let row = db.rows[seq as usize % db.rows.len()];
        let fail = |e: tokio_postgres::Error| format!("writer: {e}");
        if variant == Variant::Bridge {
            let p = self
                .publisher
                .as_mut()
                .ok_or("bridge: no Redis connection")?;
            let sent = now_ns();
            let receivers: redis::RedisResult<i64> = redis::cmd("PUBLISH")
                .arg(&p.channel)
                .arg(&message)
                .query_async(&mut p.conn)
                .await;
            let acked = now_ns();
            receivers.map_err(|e| format!("bridge: PUBLISH failed: {e}"))?;
            return Ok((sent, acked));
        }
        self.client.batch_execute("BEGIN").await.map_err(fail)?;
        let change = match (variant, kind) {
            (Variant::Pipe, Kind::Rails) => {
                self.client
                    .execute(&self.notify, &[&stream, &message])
                    .await
            }
            (Variant::Pipe, _) => {
                self.client
                    .execute(&self.broadcast, &[&stream, &message])
                    .await
            }
            (Variant::Row | Variant::Bridge, _) => {
                self.client.execute(&self.update, &[&name, &row]).await
            }
        };
        if let Err(e) = change {
            let _ = self.client.batch_execute("ROLLBACK").await;
            return Err(fail(e));
        }
        let sent = now_ns();
        let commit = self.client.batch_execute("COMMIT").await;
        let acked = now_ns();
        commit.map_err(fail)?;
        Ok((sent, acked))
    }
}

/// One measured (server, variant, N).
#[derive(Debug, Clone, Serialize)]
pub struct Round {
    /// Server.
    pub target: Kind,
    /// Variant.
    pub variant: Variant,
    /// Subscribers.
    pub n: usize,
    /// Changes made.
    pub changes: usize,
    /// Changes not fully delivered within the timeout.
    pub timeouts: usize,
    /// Commit-to-client latency over every receipt.
    pub latency: Latency,
    /// Load-client CPU per received frame, µs.
    pub client_us_per_frame: f64,
    /// Server CPU per delivered frame, µs.
    pub server_us_per_frame: f64,
    /// Seconds spent opening the connections up to this N.
    pub connect_secs: f64,
    /// Average size of a received frame, bytes.
    pub frame_bytes: f64,
    /// Mean time from sending the writer's COMMIT to its acknowledgement, ms.
    pub commit_ms: f64,
    /// Per change, in order: its slowest receipt, ms.
    pub per_change_max_ms: Vec<f64>,
}

/// How a measurement runs.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Changes per (variant, N).
    pub changes: usize,
    /// Pause after a change has been delivered everywhere.
    pub gap: Duration,
    /// Longest time for one change to reach everyone.
    pub change_timeout: Duration,
    /// Longest time for all changes of one (variant, N).
    pub budget: Duration,
    /// Bytes of padding in a pipe message (None: `--payload-bytes`).
    pub pad: Option<usize>,
}

/// Makes `plan.changes` changes and measures them at the fleet's current size.
#[allow(clippy::too_many_arguments)]
pub async fn measure(
    ctx: &Ctx,
    target: &Target,
    fleet: &mut Fleet,
    writer: &mut Writer,
    variant: Variant,
    plan: Plan,
    seq: &mut u32,
    connect_secs: f64,
) -> Result<Round, String> {
    let n = fleet.connections();
    let pad = "x".repeat(plan.pad.unwrap_or(ctx.args.payload_bytes));
    let client_cpu0 = fleet.cpu_secs();
    let server_cpu0 = target.cpu_secs();
    let before = fleet.collect().await?;
    let (frames0, bytes0) = (before.frames, before.bytes);
    let started = Instant::now();
    let mut commits: HashMap<u32, (u64, u64)> = HashMap::new();
    let mut order: Vec<u32> = Vec::new();
    let mut timeouts = 0;
    for _ in 0..plan.changes {
        if started.elapsed() > plan.budget {
            break;
        }
        *seq += 1;
        let s = *seq;
        fleet.expect(s).await?;
        let at = writer.fire(target.kind, variant, s, &ctx.db, &pad).await?;
        commits.insert(s, at);
        order.push(s);
        let deadline = tokio::time::Instant::now() + plan.change_timeout;
        if !fleet.wait_done(s, deadline).await {
            timeouts += 1;
        }
        tokio::time::sleep(plan.gap).await;
    }
    let collected = fleet.collect().await?;
    let client_cpu = (fleet.cpu_secs() - client_cpu0).max(0.0);
    let server_cpu = (target.cpu_secs() - server_cpu0).max(0.0);
    let frames = collected.frames.saturating_sub(frames0).max(1) as f64;
    let frame_bytes = collected.bytes.saturating_sub(bytes0) as f64 / frames;
    // Measured from the moment the writer sent COMMIT: it does not depend on how soon this
    // process gets to see the acknowledgement (Postgres signals listeners before it answers).
    let mut worst: HashMap<u32, i64> = HashMap::new();
    let mut early = 0;
    let mut lat: Vec<i64> = Vec::with_capacity(collected.receipts.len());
    for (s, at) in &collected.receipts {
        if let Some((sent, acked)) = commits.get(s) {
            let l = *at as i64 - *sent as i64;
            lat.push(l);
            let w = worst.entry(*s).or_insert(l);
            *w = (*w).max(l);
            if at < acked {
                early += 1;
            }
        }
    }
    let commit_ms = commits
        .values()
        .map(|(sent, acked)| acked.saturating_sub(*sent) as f64 / 1e6)
        .sum::<f64>()
        / commits.len().max(1) as f64;
    let per_change_max_ms = order
        .iter()
        .map(|s| worst.get(s).map(|w| *w as f64 / 1e6).unwrap_or(f64::NAN))
        .collect();
    let mut latency = Latency::from_ns(lat, commits.len() * n);
    latency.before_commit_ack = early;
    Ok(Round {
        target: target.kind,
        variant,
        n,
        changes: commits.len(),
        timeouts,
        latency,
        client_us_per_frame: client_cpu * 1e6 / frames,
        server_us_per_frame: server_cpu * 1e6 / frames,
        connect_secs,
        frame_bytes,
        commit_ms,
        per_change_max_ms,
    })
}

/// Runs fanout (or single, with one N) for every target; returns the rounds.
pub async fn run(ctx: &mut Ctx, ns: &[usize], plan: Plan, title: &str) -> Vec<Round> {
    let mut rounds = Vec::new();
    let mut seq = 0u32;
    let identifier = campaign_identifier(ctx.db.campaign);
    let mut sorted = ns.to_vec();
    sorted.sort_unstable();
    for kind in ctx.targets() {
        let variants: Vec<Variant> = ctx
            .variants()
            .into_iter()
            .filter(|v| v.applies_to(kind))
            .collect();
        if variants.is_empty() {
            continue;
        }
        ctx.progress(&format!("{title}: starting {}", kind.name()));
        let target = match Target::start(kind, &ctx.env, &ctx.db).await {
            Ok(t) => t,
            Err(e) => {
                ctx.problem(format!("{title}: {} not measured: {e}", kind.name()));
                continue;
            }
        };
        let mut writer = match Writer::new(&ctx.db).await {
            Ok(w) => w,
            Err(e) => {
                ctx.problem(format!("{title}: {e}"));
                target.stop().await;
                continue;
            }
        };
        if variants.contains(&Variant::Bridge) {
            let connected = Publisher::connect(&ctx.args.redis_url, &ctx.db.name, &ctx.db).await;
            match connected {
                Ok(p) => writer.publisher = Some(p),
                Err(e) => {
                    ctx.problem(format!("{title}: {e}"));
                    target.stop().await;
                    continue;
                }
            }
            // The relay's bridge subscribes in the background: wait for /ready to say so.
            let mut up = false;
            for _ in 0..100 {
                let ready = crate::targets::http_body(target.addr, "/ready").await;
                if ready.is_some_and(|r| r.contains(r#""bridge":true"#)) {
                    up = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            if !up {
                ctx.problem(format!(
                    "{title}: the relay's bridge did not subscribe to {}",
                    ctx.args.redis_url
                ));
                target.stop().await;
                continue;
            }
        }
        let path = match ctx.db.cable_path() {
            Ok(p) => p,
            Err(e) => {
                ctx.problem(e);
                target.stop().await;
                continue;
            }
        };
        let mut fleet = Fleet::new(&ctx.env.self_bin, target.addr, path);
        for &n in &sorted {
            let t0 = Instant::now();
            let grown = fleet
                .grow_to(n, &identifier, 64, ctx.connect_budget())
                .await;
            let connect_secs = t0.elapsed().as_secs_f64();
            match grown {
                Ok(_) if fleet.connections() >= n => {}
                Ok((_, failed, err)) => {
                    ctx.problem(format!(
                        "{title}: {} reached only {} of {n} connections ({failed} failed: {err})",
                        kind.name(),
                        fleet.connections()
                    ));
                    break;
                }
                Err(e) => {
                    ctx.problem(format!("{title}: {}: {e}", kind.name()));
                    break;
                }
            }
            // Let the burst of subscriptions settle.
            tokio::time::sleep(Duration::from_millis(if n >= 1000 { 1000 } else { 200 })).await;
            for &variant in &variants {
                ctx.progress(&format!(
                    "{title}: {} {} N={n}",
                    kind.name(),
                    variant.name()
                ));
                match measure(
                    ctx,
                    &target,
                    &mut fleet,
                    &mut writer,
                    variant,
                    plan,
                    &mut seq,
                    connect_secs,
                )
                .await
                {
                    Ok(r) => rounds.push(r),
                    Err(e) => ctx.problem(format!(
                        "{title}: {} {} N={n}: {e}",
                        kind.name(),
                        variant.name()
                    )),
                }
            }
        }
        fleet.close().await;
        target.stop().await;
    }
    rounds
}

fn p99_of(rounds: &[Round], kind: Kind, variant: Variant, n: usize) -> Option<f64> {
    rounds
        .iter()
        .find(|r| r.target == kind && r.variant == variant && r.n == n)
        .map(|r| r.latency.p99_ms)
}

/// The fanout tables: every round, then the ratios per N.
pub fn tables(rounds: &[Round], title: &str) -> Vec<Table> {
    let mut t = Table::new(
        &format!("{title}: commit-to-client latency (ms)"),
        &[
            "server",
            "variant",
            "N",
            "changes",
            "received",
            "p50",
            "p95",
            "p99",
            "max",
            "frame B",
            "client µs/frame",
            "server µs/frame",
            "connect s",
        ],
    );
    for r in rounds {
        let lost = r.latency.expected.saturating_sub(r.latency.samples);
        t.row(vec![
            r.target.name().into(),
            r.variant.name().into(),
            r.n.to_string(),
            r.changes.to_string(),
            if lost == 0 {
                "all".into()
            } else {
                format!("{} of {}", r.latency.samples, r.latency.expected)
            },
            ms(r.latency.p50_ms),
            ms(r.latency.p95_ms),
            ms(r.latency.p99_ms),
            ms(r.latency.max_ms),
            num(Some(r.frame_bytes), 0),
            num(Some(r.client_us_per_frame), 1),
            num(Some(r.server_us_per_frame), 1),
            num(Some(r.connect_secs), 1),
        ]);
    }
    let early: usize = rounds.iter().map(|r| r.latency.before_commit_ack).sum();
    let total: usize = rounds.iter().map(|r| r.latency.samples).sum();
    let commit = rounds.iter().map(|r| r.commit_ms).sum::<f64>() / rounds.len().max(1) as f64;
    t.note(format!(
        "Latency is measured from the moment the writer sent COMMIT (the change was made just before, \
         in the same transaction) to the client's receipt. The COMMIT took {} ms on average to be \
         acknowledged; {early} of {total} receipts arrived before the writer had seen that.",
        ms(commit)
    ));
    let mut ns: Vec<usize> = rounds.iter().map(|r| r.n).collect();
    ns.sort_unstable();
    ns.dedup();
    let mut q = Table::new(
        &format!("{title}: p99 ratios"),
        &[
            "N",
            "floor pipe p99",
            "pgcable pipe p99",
            "pgcable/floor",
            "pgcable row p99",
            "row/floor pipe",
            "rails pipe p99",
            "rails/pgcable",
        ],
    );
    for n in ns {
        let floor = p99_of(rounds, Kind::Floor, Variant::Pipe, n);
        let pipe = p99_of(rounds, Kind::Pgcable, Variant::Pipe, n);
        let row = p99_of(rounds, Kind::Pgcable, Variant::Row, n);
        let rails = p99_of(rounds, Kind::Rails, Variant::Pipe, n);
        let r = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) => num(ratio(a, b), 2),
            _ => "-".into(),
        };
        let m = |v: Option<f64>| v.map(ms).unwrap_or_else(|| "-".into());
        q.row(vec![
            n.to_string(),
            m(floor),
            m(pipe),
            r(pipe, floor),
            m(row),
            r(row, floor),
            m(rails),
            r(rails, pipe),
        ]);
    }
    vec![t, q]
}
