//! `ingest`: sustained row changes from several writer sessions while subscribers watch; what
//! the relay delivers, what it costs in CPU, the commit-to-client latency of what arrives, and
//! whether Postgres's NOTIFY queue stays flat (`pg_notification_queue_usage()` over time).
//!
//! Only pgcable turns row changes into messages, so only pgcable runs it. The subscribers are
//! spread evenly over the ingest campaigns; every UPDATE names its rows `bench-<seq>`, so a
//! delivered payload tells which committed statement it shows.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use uuid::Uuid;

use crate::db::{campaign_identifier, connect, insert_campaign, insert_characters};
use crate::fleet::Fleet;
use crate::report::{ms, num, Latency, Table};
use crate::sys::now_ns;
use crate::targets::{http_body, metric, Kind, Target};
use crate::Ctx;

/// `application_name` of the writer sessions (to tell their CPU from the relay's).
const WRITER_APP: &str = "pgcable-bench-writer";

/// The result.
#[derive(Debug, Clone, Serialize)]
pub struct IngestResult {
    /// Writer sessions.
    pub writers: usize,
    /// Rows each UPDATE changes.
    pub rows_per_statement: usize,
    /// Writers committed with synchronous_commit = off.
    pub async_commit: bool,
    /// Target rate (rows/s; 0 = as fast as the writers go).
    pub target_rate: f64,
    /// Subscribers.
    pub subscribers: usize,
    /// Campaigns whose rows change.
    pub campaigns: usize,
    /// Campaigns the subscribers are spread over.
    pub watched: usize,
    /// Seconds of writing.
    pub seconds: f64,
    /// Row changes committed per second.
    pub rows_per_sec: f64,
    /// Statements (NOTIFYs) per second.
    pub statements_per_sec: f64,
    /// Writer errors (deadlocks and the like).
    pub writer_errors: u64,
    /// Frames delivered per second over the writing window plus drain.
    pub frames_per_sec: f64,
    /// Row payload frames per second.
    pub payloads_per_sec: f64,
    /// Commit-to-client latency of payload frames.
    pub latency: Latency,
    /// Relay CPU, percent of one core.
    pub relay_cpu_pct: f64,
    /// Load-client CPU, percent of one core.
    pub client_cpu_pct: f64,
    /// Postgres CPU (every postgres process: writers, re-reads, other users), percent of one core.
    pub postgres_cpu_pct: f64,
    /// Of which the writers' sessions.
    pub postgres_writers_cpu_pct: f64,
    /// Of which the relay's sessions (re-reads, authorization, LISTEN).
    pub postgres_relay_cpu_pct: f64,
    /// Relay VmRSS at the end, MiB.
    pub relay_rss_mib: f64,
    /// `pg_notification_queue_usage()` samples (seconds since start, fraction).
    pub queue: Vec<(f64, f64)>,
    /// Largest queue usage seen.
    pub queue_max: f64,
    /// Queue usage at the end of writing minus at its start.
    pub queue_growth: f64,
    /// Notifications the relay processed (from /metrics).
    pub relay_notifications: Option<f64>,
    /// Events folded into a pending re-read (from /metrics).
    pub relay_coalesced: Option<f64>,
    /// Slow clients the relay dropped (from /metrics).
    pub relay_slow_drops: Option<f64>,
    /// Seconds after the writers stopped until the last frame arrived.
    pub drain_secs: f64,
}

/// Options of the scenario.
#[derive(Debug, Clone, Copy)]
pub struct IngestPlan {
    /// Subscribers.
    pub subscribers: usize,
    /// Campaigns.
    pub campaigns: usize,
    /// Campaigns with subscribers (the first ones).
    pub watched: usize,
    /// Characters per campaign.
    pub rows_per_campaign: usize,
    /// Writer sessions.
    pub writers: usize,
    /// Rows per UPDATE.
    pub rows_per_statement: usize,
    /// Writers commit with synchronous_commit = off.
    pub async_commit: bool,
    /// Rows/s over all writers; 0 for as fast as they go.
    pub rate: f64,
    /// Seconds of writing.
    pub duration: Duration,
}

/// Runs the scenario against pgcable (if it is among the targets).
pub async fn run(ctx: &mut Ctx, plan: IngestPlan) -> Option<IngestResult> {
    if !ctx.targets().contains(&Kind::Pgcable) {
        ctx.problem("ingest: only pgcable turns row changes into messages; skipped".into());
        return None;
    }
    match one(ctx, plan).await {
        Ok(r) => Some(r),
        Err(e) => {
            ctx.problem(format!("ingest: {e}"));
            None
        }
    }
}

async fn one(ctx: &mut Ctx, plan: IngestPlan) -> Result<IngestResult, String> {
    ctx.progress("ingest: loading campaigns");
    let setup = connect(&ctx.db.url).await?;
    let mut campaigns = Vec::new();
    let mut rows: Vec<Uuid> = Vec::new();
    for i in 0..plan.campaigns.max(1) {
        let c = insert_campaign(&setup, ctx.db.user, &format!("Ingest {i}")).await?;
        rows.extend(
            insert_characters(&setup, c, ctx.db.user, plan.rows_per_campaign.max(1)).await?,
        );
        campaigns.push(c);
    }
    setup
        .batch_execute("VACUUM ANALYZE characters")
        .await
        .map_err(|e| format!("vacuum: {e}"))?;
    let rows = Arc::new(rows);

    ctx.progress("ingest: starting pgcable");
    let target = Target::start(Kind::Pgcable, &ctx.env, &ctx.db).await?;
    let mut fleet = Fleet::new(&ctx.env.self_bin, target.addr, ctx.db.cable_path()?);
    let watched = plan.watched.clamp(1, campaigns.len());
    let per = plan.subscribers.div_ceil(watched);
    for (i, c) in campaigns.iter().take(watched).enumerate() {
        let want = ((i + 1) * per).min(plan.subscribers);
        let (_, failed, err) = fleet
            .grow_to(want, &campaign_identifier(*c), 64, ctx.connect_budget())
            .await?;
        if failed > 0 {
            fleet.close().await;
            target.stop().await;
            return Err(format!("subscribers: {failed} failed: {err}"));
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let frames0 = fleet.collect().await?.frames;

    // Writers.
    ctx.progress(&format!(
        "ingest: {} writers, {} s",
        plan.writers,
        plan.duration.as_secs()
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let seq = Arc::new(AtomicU64::new(1_000_000));
    let errors = Arc::new(AtomicU64::new(0));
    let committed_rows = Arc::new(AtomicU64::new(0));
    let commits: Arc<Mutex<Vec<(u32, u64)>>> = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    let per_writer_rate = plan.rate / plan.writers.max(1) as f64;
    let mut handles = Vec::new();
    for w in 0..plan.writers.max(1) {
        let client = connect(&ctx.db.url).await?;
        client
            .batch_execute(&format!("SET application_name = '{WRITER_APP}'"))
            .await
            .map_err(|e| format!("writer: {e}"))?;
        if plan.async_commit {
            client
                .batch_execute("SET synchronous_commit = off")
                .await
                .map_err(|e| format!("writer: {e}"))?;
        }
        let stmt = client
            .prepare("UPDATE characters SET name = $1, updated_at = now() WHERE id = ANY($2)")
            .await
            .map_err(|e| format!("prepare: {e}"))?;
        let (stop, seq, errors, committed_rows, commits, rows) = (
            stop.clone(),
            seq.clone(),
            errors.clone(),
            committed_rows.clone(),
            commits.clone(),
            rows.clone(),
        );
        let k = plan.rows_per_statement.clamp(1, rows.len());
        let duration = plan.duration;
        handles.push(tokio::spawn(async move {
            let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ ((w as u64 + 1) << 32);
            let mut mine = Vec::new();
            let mut done_rows = 0f64;
            let t0 = Instant::now();
            while !stop.load(Ordering::Relaxed) && t0.elapsed() < duration {
                if per_writer_rate > 0.0
                    && done_rows >= t0.elapsed().as_secs_f64() * per_writer_rate
                {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                }
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let start = (rng as usize) % (rows.len() - k + 1);
                let ids: Vec<Uuid> = rows[start..start + k].to_vec();
                let s = seq.fetch_add(1, Ordering::Relaxed) as u32;
                let name = format!("bench-{s}");
                // As in fanout: latency counts from the moment the statement is sent.
                let sent = now_ns();
                match client.execute(&stmt, &[&name, &ids]).await {
                    Ok(_) => {
                        mine.push((s, sent));
                        committed_rows.fetch_add(k as u64, Ordering::Relaxed);
                    }
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                done_rows += k as f64;
            }
            if let Ok(mut c) = commits.lock() {
                c.extend(mine);
            }
            // Handed back so that its backend lives (and its CPU time counts) until the end.
            client
        }));
    }

    // Sampler: NOTIFY queue usage and relay CPU while writing.
    let sampler_db = connect(&ctx.db.url).await?;
    let relay_cpu0 = target.cpu_secs();
    let client_cpu0 = fleet.cpu_secs();
    let pg_cpu0 = crate::sys::postgres_cpu();
    let mut queue = Vec::new();
    while started.elapsed() < plan.duration {
        if let Ok(row) = sampler_db
            .query_one("SELECT pg_notification_queue_usage()", &[])
            .await
        {
            queue.push((started.elapsed().as_secs_f64(), row.get::<_, f64>(0)));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut writer_sessions = Vec::new();
    for h in handles {
        if let Ok(client) = h.await {
            writer_sessions.push(client);
        }
    }
    let write_secs = started.elapsed().as_secs_f64();
    let writing_end_queue = queue.last().map(|q| q.1).unwrap_or(0.0);

    // Drain: until no frame arrived for 1 s (at most 20 s).
    let drain_start = Instant::now();
    let mut last = fleet.collect().await?;
    let mut receipts = std::mem::take(&mut last.receipts);
    let mut last_change = Instant::now();
    while drain_start.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if let Ok(row) = sampler_db
            .query_one("SELECT pg_notification_queue_usage()", &[])
            .await
        {
            queue.push((started.elapsed().as_secs_f64(), row.get::<_, f64>(0)));
        }
        let mut c = fleet.collect().await?;
        receipts.append(&mut c.receipts);
        if c.frames != last.frames {
            last_change = Instant::now();
            last = c;
        } else if last_change.elapsed() > Duration::from_secs(1) {
            break;
        }
    }
    let drain_secs = last_change.duration_since(drain_start).as_secs_f64();
    let total_secs = write_secs + drain_secs;
    let relay_cpu = (target.cpu_secs() - relay_cpu0).max(0.0);
    let client_cpu = (fleet.cpu_secs() - client_cpu0).max(0.0);
    let pg_by_pid = crate::sys::postgres_cpu_since(&pg_cpu0);
    let apps: HashMap<u32, String> = match sampler_db
        .query(
            "SELECT pid, application_name FROM pg_stat_activity WHERE datname = current_database()",
            &[],
        )
        .await
    {
        Ok(rows) => rows
            .iter()
            .filter_map(|r| {
                let pid: i32 = r.try_get(0).ok()?;
                let app: String = r.try_get(1).ok()?;
                Some((pid as u32, app))
            })
            .collect(),
        Err(_) => HashMap::new(),
    };
    let pg_cpu: f64 = pg_by_pid.values().sum();
    let pg_app = |prefix: &str| -> f64 {
        pg_by_pid
            .iter()
            .filter(|(pid, _)| apps.get(pid).is_some_and(|a| a.starts_with(prefix)))
            .map(|(_, v)| v)
            .sum()
    };
    let pg_writers = pg_app(WRITER_APP);
    let pg_relay = pg_app("pgcable-listener")
        + apps
            .iter()
            .filter(|(_, a)| *a == "pgcable")
            .map(|(pid, _)| pg_by_pid.get(pid).copied().unwrap_or(0.0))
            .sum::<f64>();
    drop(writer_sessions);
    let metrics = http_body(target.addr, "/metrics").await.unwrap_or_default();
    let relay_rss = target.rss_kib().unwrap_or(0) as f64 / 1024.0;

    let commits = commits.lock().map(|c| c.clone()).unwrap_or_default();
    let by_seq: HashMap<u32, u64> = commits.iter().copied().collect();
    let lat: Vec<i64> = receipts
        .iter()
        .filter_map(|(s, at)| by_seq.get(s).map(|c| *at as i64 - *c as i64))
        .collect();
    let payloads = lat.len();
    let first_queue = queue.first().map(|q| q.1).unwrap_or(0.0);
    let result = IngestResult {
        writers: plan.writers,
        rows_per_statement: plan.rows_per_statement,
        async_commit: plan.async_commit,
        target_rate: plan.rate,
        subscribers: fleet.connections(),
        campaigns: campaigns.len(),
        watched,
        seconds: write_secs,
        rows_per_sec: committed_rows.load(Ordering::Relaxed) as f64 / write_secs,
        statements_per_sec: commits.len() as f64 / write_secs,
        writer_errors: errors.load(Ordering::Relaxed),
        frames_per_sec: last.frames.saturating_sub(frames0) as f64 / total_secs,
        payloads_per_sec: payloads as f64 / total_secs,
        latency: Latency::from_ns(lat, payloads),
        relay_cpu_pct: relay_cpu * 100.0 / total_secs,
        client_cpu_pct: client_cpu * 100.0 / total_secs,
        postgres_cpu_pct: pg_cpu * 100.0 / total_secs,
        postgres_writers_cpu_pct: pg_writers * 100.0 / total_secs,
        postgres_relay_cpu_pct: pg_relay * 100.0 / total_secs,
        relay_rss_mib: relay_rss,
        queue_max: queue.iter().map(|q| q.1).fold(0.0, f64::max),
        queue_growth: writing_end_queue - first_queue,
        queue,
        // A counter that never moved is not exported at all.
        relay_notifications: counter(&metrics, "pgcable_notifications_total"),
        relay_coalesced: counter(&metrics, "pgcable_coalesced_events_total"),
        relay_slow_drops: counter(&metrics, "pgcable_slow_client_disconnects_total"),
        drain_secs,
    };
    fleet.close().await;
    target.stop().await;
    Ok(result)
}

/// A counter from /metrics text: its value, 0 if absent, None without metrics at all.
fn counter(text: &str, name: &str) -> Option<f64> {
    if text.is_empty() {
        None
    } else {
        Some(metric(text, name).unwrap_or(0.0))
    }
}

/// Whether the queue stayed flat: it grew by less than 0.01 % (~800 KiB of the 8 GiB queue)
/// over the writing window and never passed 0.1 %.
pub fn queue_flat(r: &IngestResult) -> bool {
    r.queue_growth < 1e-4 && r.queue_max < 1e-3
}

/// The ingest table.
pub fn table(r: &IngestResult) -> Table {
    let mut t = Table::new(
        "ingest: sustained row changes (pgcable)",
        &["measure", "value"],
    );
    let rows: Vec<(&str, String)> = vec![
        (
            "writers × rows per UPDATE",
            format!(
                "{} × {}{}",
                r.writers,
                r.rows_per_statement,
                if r.async_commit {
                    ", synchronous_commit = off"
                } else {
                    ""
                }
            ),
        ),
        (
            "target rate (rows/s)",
            if r.target_rate > 0.0 {
                num(Some(r.target_rate), 0)
            } else {
                "as fast as possible".into()
            },
        ),
        (
            "subscribers / watched campaigns / campaigns written",
            format!("{} / {} / {}", r.subscribers, r.watched, r.campaigns),
        ),
        ("row changes committed /s", num(Some(r.rows_per_sec), 0)),
        (
            "UPDATE statements (NOTIFYs) /s",
            num(Some(r.statements_per_sec), 0),
        ),
        ("writer errors", r.writer_errors.to_string()),
        ("frames delivered /s", num(Some(r.frames_per_sec), 0)),
        ("row payload frames /s", num(Some(r.payloads_per_sec), 0)),
        (
            "commit-to-client p50 / p95 / p99 / max (ms)",
            format!(
                "{} / {} / {} / {}",
                ms(r.latency.p50_ms),
                ms(r.latency.p95_ms),
                ms(r.latency.p99_ms),
                ms(r.latency.max_ms)
            ),
        ),
        ("relay CPU (% of one core)", num(Some(r.relay_cpu_pct), 0)),
        (
            "load client CPU (% of one core)",
            num(Some(r.client_cpu_pct), 0),
        ),
        (
            "Postgres CPU (% of one core): all / writers / relay's sessions",
            format!(
                "{} / {} / {}",
                num(Some(r.postgres_cpu_pct), 0),
                num(Some(r.postgres_writers_cpu_pct), 0),
                num(Some(r.postgres_relay_cpu_pct), 0)
            ),
        ),
        ("relay RSS at end (MiB)", num(Some(r.relay_rss_mib), 1)),
        (
            "NOTIFY queue usage max / growth (%)",
            format!(
                "{} / {}",
                num(Some(r.queue_max * 100.0), 4),
                num(Some(r.queue_growth * 100.0), 4)
            ),
        ),
        (
            "queue flat",
            if queue_flat(r) { "yes" } else { "no" }.into(),
        ),
        (
            "drain after writers stopped (s)",
            num(Some(r.drain_secs), 1),
        ),
        (
            "relay notifications / coalesced / slow-client drops",
            format!(
                "{} / {} / {}",
                num(r.relay_notifications, 0),
                num(r.relay_coalesced, 0),
                num(r.relay_slow_drops, 0)
            ),
        ),
    ];
    for (k, v) in rows {
        t.row(vec![k.into(), v]);
    }
    t
}
