//! `connections`: idle subscribed connections, opened in steps until the goal, a failure or the
//! time budget; the server's resident memory per connection (VmRSS delta / N) and the most
//! connections it held.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::db::campaign_identifier;
use crate::fleet::Fleet;
use crate::report::{num, Table};
use crate::targets::{Kind, Target};
use crate::Ctx;

/// One server's result.
#[derive(Debug, Clone, Serialize)]
pub struct ConnResult {
    /// Server.
    pub target: Kind,
    /// Connections asked for.
    pub goal: usize,
    /// Connections held (welcomed and subscribed) at the end.
    pub reached: usize,
    /// VmRSS before the first connection, KiB.
    pub rss_start_kib: u64,
    /// VmRSS with `reached` idle connections, KiB.
    pub rss_end_kib: u64,
    /// (end − start) / reached.
    pub kib_per_conn: f64,
    /// The same at the step nearest 10,000 connections (for servers compared at equal N).
    pub kib_per_conn_at_10k: Option<f64>,
    /// Connections opened per second.
    pub open_rate: f64,
    /// Why it stopped.
    pub stopped_by: String,
    /// (connections, VmRSS KiB) after each step.
    pub steps: Vec<(usize, u64)>,
}

/// Runs the scenario for every target.
pub async fn run(ctx: &mut Ctx, goal: usize) -> Vec<ConnResult> {
    let mut out = Vec::new();
    let identifier = campaign_identifier(ctx.db.campaign);
    for kind in ctx.targets() {
        ctx.progress(&format!("connections: starting {}", kind.name()));
        let target = match Target::start(kind, &ctx.env, &ctx.db).await {
            Ok(t) => t,
            Err(e) => {
                ctx.problem(format!("connections: {} not measured: {e}", kind.name()));
                continue;
            }
        };
        match one(ctx, target, goal, &identifier).await {
            Ok(r) => out.push(r),
            Err(e) => ctx.problem(format!("connections: {}: {e}", kind.name())),
        }
    }
    out
}

async fn one(
    ctx: &mut Ctx,
    mut target: Target,
    goal: usize,
    identifier: &str,
) -> Result<ConnResult, String> {
    let kind = target.kind;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_start = target.rss_kib()?;
    let path = ctx.db.cable_path()?;
    let mut fleet = Fleet::new(&ctx.env.self_bin, target.addr, path);
    let budget = ctx.connections_budget();
    let started = Instant::now();
    let step = (goal / 10).clamp(1000, 5000);
    let mut steps = Vec::new();
    let mut stopped_by = "goal reached".to_string();
    while fleet.connections() < goal {
        let left = budget.saturating_sub(started.elapsed());
        if left.is_zero() {
            stopped_by = format!("time budget ({} s)", budget.as_secs());
            break;
        }
        let next = (fleet.connections() + step).min(goal);
        // Modest parallelism: a slow server (Rails) is measured for what it holds, not for how
        // it copes with a connection storm.
        let result = fleet.grow_to(next, identifier, 32, left).await;
        let held = fleet.connections();
        steps.push((held, target.rss_kib().unwrap_or(0)));
        ctx.progress(&format!("connections: {} holds {held}", kind.name()));
        match result {
            Ok((_, 0, _)) => {}
            Ok((_, failed, err)) => {
                stopped_by = format!("{failed} failed: {err}");
                break;
            }
            Err(e) => {
                stopped_by = e;
                break;
            }
        }
        if !target.alive() {
            stopped_by = format!("the server exited; see {}", target.log.display());
            break;
        }
    }
    let open_secs = started.elapsed().as_secs_f64();
    // Idle: let allocations settle, pings go round.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let reached = fleet.collect().await.map(|c| c.live).unwrap_or(0);
    let rss_end = target.rss_kib().unwrap_or(0);
    let per = |held: usize, rss: u64| -> f64 {
        if held == 0 {
            f64::NAN
        } else {
            rss.saturating_sub(rss_start) as f64 / held as f64
        }
    };
    let at_10k = steps
        .iter()
        .filter(|(held, _)| *held >= 5000)
        .min_by_key(|(held, _)| held.abs_diff(10_000))
        .map(|(held, rss)| per(*held, *rss));
    fleet.close().await;
    target.stop().await;
    Ok(ConnResult {
        target: kind,
        goal,
        reached,
        rss_start_kib: rss_start,
        rss_end_kib: rss_end,
        kib_per_conn: per(reached, rss_end),
        kib_per_conn_at_10k: at_10k,
        open_rate: reached as f64 / open_secs.max(0.001),
        stopped_by,
        steps,
    })
}

/// The connections table.
pub fn table(results: &[ConnResult]) -> Table {
    let mut t = Table::new(
        "connections: idle subscribed connections",
        &[
            "server",
            "goal",
            "held",
            "RSS start MiB",
            "RSS end MiB",
            "KiB/conn",
            "KiB/conn @~10k",
            "opened/s",
            "stopped by",
        ],
    );
    for r in results {
        t.row(vec![
            r.target.name().into(),
            r.goal.to_string(),
            r.reached.to_string(),
            num(Some(r.rss_start_kib as f64 / 1024.0), 1),
            num(Some(r.rss_end_kib as f64 / 1024.0), 1),
            num(Some(r.kib_per_conn), 1),
            num(r.kib_per_conn_at_10k, 1),
            num(Some(r.open_rate), 0),
            r.stopped_by.clone(),
        ]);
    }
    t
}
