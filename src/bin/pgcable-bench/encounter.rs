//! `encounter`: live combat. A started fight of 40 combatants ([`crate::combat`]), N subscribers
//! of its campaign, combat actions one after another; pgcable only (the floor and Rails do not
//! send encounters).
//!
//! 1. **Render time**: `pgcable::render::load_encounters` of the fight, called directly on one
//!    warm pooled connection (deadpool, as the relay uses it, so its prepared statements are
//!    cached), before the relay starts; and the relay's own `pgcable_encounter_render_seconds`
//!    from /metrics over the closed loop.
//! 2. **fanout row at the same N**, same relay, same subscribers, just before: the reference of
//!    the latency target ([`crate::fanout::measure`], variant `row`). Then **a pipe message of
//!    the encounter's size** (`pgcable.broadcast`, which hands a message that large over through
//!    its table: one NOTIFY, one read, one frame per subscriber): what the same bytes cost
//!    without the rows, the render and the row messages.
//! 3. **Closed loop**: the writer commits action k+1 as soon as every subscriber has action k's
//!    encounter (recognised by the `action_id` the action set, [`crate::worker::action_id`]), or
//!    after a timeout that counts as a miss. Per action: commit → last subscriber, encounters
//!    per subscriber (duplicates, stale and missing ones counted), other frames per subscriber.
//!    Every tenth action's encounter, as one extra subscriber in this process received it, is
//!    compared byte for byte with a direct render of the committed state.
//! 4. **Burst**: actions back to back as fast as one writer commits them. The relay re-renders
//!    a fight that keeps changing at most every 50 ms, so subscribers get fewer encounters than
//!    actions by design; what matters is that every subscriber's last encounter is the final
//!    state (its `action_id`, and byte for byte for the extra subscriber).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pgcable::render::RenderConfig;
use serde::Serialize;
use uuid::Uuid;

use crate::combat::{CombatWriter, Fight, CHARACTERS, VEHICLES};
use crate::db::campaign_identifier;
use crate::fanout::{self, Plan, Round, Variant, Writer};
use crate::fleet::{Collected, Fleet};
use crate::report::{ms, num, ratio, Latency, Table};
use crate::sys::now_ns;
use crate::targets::{http_body, metric, Kind, Target};
use crate::worker::{message, message_seq, subscribed, KINDS};
use crate::Ctx;

/// Options of the scenario.
#[derive(Debug, Clone, Copy)]
pub struct EncounterPlan {
    /// Subscribers of the campaign (load client).
    pub subscribers: usize,
    /// Combat actions in the closed loop, and in the burst.
    pub actions: usize,
    /// Direct renders to time.
    pub renders: usize,
    /// Longest wait for one action's encounter to reach every subscriber.
    pub action_timeout: Duration,
    /// Longest time for the closed loop (and for the row reference).
    pub budget: Duration,
}

/// Render time of the fight's encounter.
#[derive(Debug, Clone, Serialize)]
pub struct RenderTime {
    /// Renders timed (after 10 untimed).
    pub renders: usize,
    /// Median, ms.
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Slowest, ms.
    pub max_ms: f64,
    /// Size of the payload (the encounter object), bytes.
    pub payload_bytes: usize,
}

/// The relay's `pgcable_encounter_render_seconds` over a phase.
#[derive(Debug, Clone, Serialize)]
pub struct RelayRender {
    /// Batches rendered.
    pub batches: f64,
    /// Mean, ms.
    pub mean_ms: f64,
    /// Upper bound of the bucket holding the median, ms.
    pub p50_le_ms: f64,
}

/// The closed loop.
#[derive(Debug, Clone, Serialize)]
pub struct ClosedLoop {
    /// Actions committed.
    pub actions: usize,
    /// Actions whose encounter did not reach every subscriber within the timeout.
    pub timeouts: usize,
    /// Per action, commit → the last subscriber's receipt of its encounter.
    pub last_subscriber: Latency,
    /// Every receipt of an action's encounter.
    pub receipts: Latency,
    /// Encounter frames per subscriber per action (target: exactly 1).
    pub encounters_per_action: f64,
    /// Encounters received again by a connection.
    pub duplicates: u64,
    /// Encounters older than one already received.
    pub stale: u64,
    /// (action, subscriber) pairs that never got the action's encounter.
    pub missed: usize,
    /// Encounter frames whose `action_id` is not one of the bench's.
    pub unmarked: u64,
    /// Frames of other kinds per subscriber per action, by kind.
    pub other_per_action: Vec<(String, f64)>,
    /// Average encounter frame, bytes.
    pub encounter_frame_bytes: f64,
    /// Encounters the relay sent per action (its `pgcable_encounters_total`).
    pub relay_encounters_per_action: Option<f64>,
    /// The relay's render time over the loop.
    pub relay_render: Option<RelayRender>,
    /// Relay CPU per action, ms.
    pub relay_cpu_ms_per_action: f64,
    /// Load-client CPU per received frame, µs.
    pub client_us_per_frame: f64,
    /// Encounters compared with a direct render of the committed state: (equal, compared).
    pub equal_to_render: (usize, usize),
    /// Mean time from sending COMMIT to its acknowledgement, ms.
    pub commit_ms: f64,
}

/// The burst.
#[derive(Debug, Clone, Serialize)]
pub struct Burst {
    /// Actions committed.
    pub actions: usize,
    /// Seconds the writer took.
    pub seconds: f64,
    /// Encounter frames per subscriber per action.
    pub encounters_per_action: f64,
    /// Encounters the relay sent per action.
    pub relay_encounters_per_action: Option<f64>,
    /// Subscribers whose last encounter is the final action's, of all.
    pub final_reached: (usize, usize),
    /// Last action's commit → the last subscriber's receipt of its encounter, ms.
    pub final_ms: f64,
    /// Whether the extra subscriber's last encounter equals a direct render of the final state.
    pub final_equal: Option<bool>,
    /// Encounters received again by a connection.
    pub duplicates: u64,
    /// Encounters older than one already received.
    pub stale: u64,
}

/// The fight measured.
#[derive(Debug, Clone, Serialize)]
pub struct FightShape {
    /// Characters.
    pub characters: usize,
    /// Vehicles.
    pub vehicles: usize,
    /// Shot rows.
    pub shot_rows: usize,
    /// Effects (one on a vehicle).
    pub effects: usize,
    /// Chase relationships: active, ended.
    pub chases: (usize, usize),
}

/// Everything the scenario measured.
#[derive(Debug, Clone, Serialize)]
pub struct EncounterResult {
    /// Subscribers (load client; one more in this process compares payloads).
    pub subscribers: usize,
    /// The fight.
    pub fight: FightShape,
    /// Seconds to open the subscribers.
    pub connect_secs: f64,
    /// Frames per subscriber received after subscribing, before any change, by kind.
    pub on_subscribe: Vec<(String, f64)>,
    /// Direct render time.
    pub render: Option<RenderTime>,
    /// fanout row at the same N.
    pub row: Option<Round>,
    /// Per change of the row reference, commit → last subscriber.
    pub row_last_subscriber: Option<Latency>,
    /// fanout pipe at the same N with a message of the encounter's size.
    pub pipe: Option<Round>,
    /// Per change of that pipe reference, commit → last subscriber.
    pub pipe_last_subscriber: Option<Latency>,
    /// The closed loop.
    pub closed: Option<ClosedLoop>,
    /// The burst.
    pub burst: Option<Burst>,
}

/// What the extra subscriber saw.
#[derive(Debug, Default)]
struct Seen {
    encounters: u64,
    last_seq: Option<u32>,
    /// The newest encounter message, exactly as sent (`{"encounter":…}`).
    last: Option<String>,
}

/// One subscriber in this process that keeps the newest encounter it received.
struct Observer {
    seen: Arc<Mutex<Seen>>,
    task: tokio::task::JoinHandle<()>,
}

impl Observer {
    async fn start(addr: SocketAddr, path: &str, identifier: &str) -> Result<Observer, String> {
        let subscribe = serde_json::json!({"command": "subscribe", "identifier": identifier})
            .to_string()
            .into_bytes();
        let mut sock = subscribed(None, addr, path, &subscribe).await?;
        let seen = Arc::new(Mutex::new(Seen::default()));
        let shared = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok(crate::ws::Incoming::Text(t)) = sock.next().await {
                let Some(msg) = message(t) else { continue };
                if !msg.starts_with(b"{\"encounter\":") {
                    continue;
                }
                // The frame's closing brace follows the message.
                let msg = &msg[..msg.len().saturating_sub(1)];
                let mut s = shared.lock().unwrap_or_else(|p| p.into_inner());
                s.encounters += 1;
                s.last_seq = message_seq(msg);
                s.last = Some(String::from_utf8_lossy(msg).into_owned());
            }
        });
        Ok(Observer { seen, task })
    }

    fn last(&self) -> (Option<u32>, Option<String>) {
        let s = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        (s.last_seq, s.last.clone())
    }

    /// Waits (up to `wait`) until the newest encounter carries `seq`; returns it.
    async fn wait_for(&self, seq: u32, wait: Duration) -> Option<String> {
        let deadline = Instant::now() + wait;
        loop {
            let (at, text) = self.last();
            if at == Some(seq) {
                return text;
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The render settings the relay runs with (it inherits this environment).
fn render_config(ctx: &Ctx) -> RenderConfig {
    let endpoint = ctx
        .env
        .relay_env
        .iter()
        .find(|(k, _)| k == "IMAGEKIT_URL_ENDPOINT")
        .map(|(_, v)| v.clone())
        .or_else(|| std::env::var("IMAGEKIT_URL_ENDPOINT").ok())
        .filter(|s| !s.trim().is_empty());
    RenderConfig {
        imagekit_endpoint: endpoint,
    }
}

/// The fight's encounter message (`{"encounter":…}`) as the relay would render it now; None if
/// the renderer rendered nothing.
async fn render_now(
    client: &deadpool_postgres::Object,
    fight: Uuid,
    cfg: &RenderConfig,
) -> Result<Option<String>, String> {
    let (rendered, _failed) = pgcable::render::load_encounters(client, &[fight], cfg)
        .await
        .map_err(|e| format!("load_encounters: {}", pgcable::db::error_text(&e)))?;
    Ok(rendered
        .into_iter()
        .find(|r| r.id == fight)
        .map(|r| format!("{{\"encounter\":{}}}", r.payload)))
}

/// Times `renders` direct renders on one warm pooled connection.
async fn time_renders(
    client: &deadpool_postgres::Object,
    fight: Uuid,
    cfg: &RenderConfig,
    renders: usize,
) -> Result<Option<RenderTime>, String> {
    let mut bytes = 0;
    for _ in 0..10 {
        match render_now(client, fight, cfg).await? {
            Some(m) => bytes = m.len() - "{\"encounter\":}".len(),
            None => return Ok(None),
        }
    }
    let mut took = Vec::with_capacity(renders);
    for _ in 0..renders.max(1) {
        let t0 = now_ns();
        let (rendered, _) = pgcable::render::load_encounters(client, &[fight], cfg)
            .await
            .map_err(|e| format!("load_encounters: {}", pgcable::db::error_text(&e)))?;
        took.push(now_ns().saturating_sub(t0) as i64);
        if rendered.is_empty() {
            return Err("load_encounters rendered nothing for the started fight".into());
        }
    }
    let l = Latency::from_ns(took, renders);
    Ok(Some(RenderTime {
        renders: l.samples,
        p50_ms: l.p50_ms,
        p99_ms: l.p99_ms,
        max_ms: l.max_ms,
        payload_bytes: bytes,
    }))
}

/// A Prometheus histogram: count, sum and cumulative buckets (upper bound, count).
#[derive(Debug, Default, Clone)]
struct Histogram {
    count: f64,
    sum: f64,
    buckets: Vec<(f64, f64)>,
}

fn histogram(text: &str, name: &str) -> Histogram {
    let mut h = Histogram {
        count: metric(text, &format!("{name}_count")).unwrap_or(0.0),
        sum: metric(text, &format!("{name}_sum")).unwrap_or(0.0),
        buckets: Vec::new(),
    };
    let prefix = format!("{name}_bucket{{le=\"");
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(&prefix) else {
            continue;
        };
        let Some((le, value)) = rest.split_once("\"}") else {
            continue;
        };
        let le = if le == "+Inf" {
            f64::INFINITY
        } else {
            match le.parse() {
                Ok(v) => v,
                Err(_) => continue,
            }
        };
        if let Ok(v) = value.trim().parse::<f64>() {
            h.buckets.push((le, v));
        }
    }
    h.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    h
}

/// The relay's render time between two /metrics snapshots.
fn relay_render(before: &str, after: &str) -> Option<RelayRender> {
    let name = "pgcable_encounter_render_seconds";
    let (a, b) = (histogram(before, name), histogram(after, name));
    let count = b.count - a.count;
    if count <= 0.0 {
        return None;
    }
    let p50 = b
        .buckets
        .iter()
        .find(|(le, n)| {
            let was = a
                .buckets
                .iter()
                .find(|(l, _)| l == le)
                .map(|x| x.1)
                .unwrap_or(0.0);
            n - was >= count / 2.0
        })
        .map(|(le, _)| le * 1e3)
        .unwrap_or(f64::NAN);
    Some(RelayRender {
        batches: count,
        mean_ms: (b.sum - a.sum) * 1e3 / count,
        p50_le_ms: p50,
    })
}

fn encounters_sent(before: &str, after: &str) -> Option<f64> {
    if after.is_empty() {
        return None;
    }
    let name = "pgcable_encounters_total";
    Some(metric(after, name).unwrap_or(0.0) - metric(before, name).unwrap_or(0.0))
}

/// Frames per subscriber per step between two collections, by kind (kinds with none left out),
/// `skip` kinds first.
fn per_kind(a: &Collected, b: &Collected, per: f64, skip: usize) -> Vec<(String, f64)> {
    KINDS
        .iter()
        .enumerate()
        .skip(skip)
        .filter_map(|(i, k)| {
            let n = b.kinds[i].0.saturating_sub(a.kinds[i].0) as f64;
            (n > 0.0).then(|| (k.to_string(), n / per.max(1.0)))
        })
        .collect()
}

/// Waits until no frame arrived for `quiet` (at most `most`); the last collection, with the
/// receipts of every collection made meanwhile.
async fn settle(fleet: &mut Fleet, quiet: Duration, most: Duration) -> Result<Collected, String> {
    let t0 = Instant::now();
    let mut last = fleet.collect().await?;
    let mut receipts = std::mem::take(&mut last.receipts);
    let mut changed = Instant::now();
    while t0.elapsed() < most {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut now = fleet.collect().await?;
        receipts.append(&mut now.receipts);
        let moved = now.frames != last.frames;
        last = now;
        if moved {
            changed = Instant::now();
        } else if changed.elapsed() >= quiet {
            break;
        }
    }
    last.receipts = receipts;
    Ok(last)
}

/// Runs the scenario (pgcable only).
pub async fn run(ctx: &mut Ctx, plan: EncounterPlan) -> Option<EncounterResult> {
    if !ctx.targets().contains(&Kind::Pgcable) {
        ctx.problem(
            "encounter: only pgcable sends encounters (the floor and Rails targets do not); skipped"
                .into(),
        );
        return None;
    }
    match one(ctx, plan).await {
        Ok(r) => Some(r),
        Err(e) => {
            ctx.problem(format!("encounter: {e}"));
            None
        }
    }
}

async fn one(ctx: &mut Ctx, plan: EncounterPlan) -> Result<EncounterResult, String> {
    ctx.progress("encounter: building the fight");
    let fight = Fight::create(&ctx.db.url, ctx.db.campaign, ctx.db.user).await?;
    let shape = FightShape {
        characters: CHARACTERS,
        vehicles: VEHICLES,
        shot_rows: fight.shot_rows,
        effects: fight.effects,
        chases: fight.chases,
    };
    let cfg = render_config(ctx);
    let pool = pgcable::db::pool(&ctx.db.url, 1)?;
    let client = pool
        .get()
        .await
        .map_err(|e| format!("pool: {}", pgcable::db::error_text(&e)))?;

    ctx.progress(&format!("encounter: {} direct renders", plan.renders));
    let render = time_renders(&client, fight.id, &cfg, plan.renders).await?;
    if render.is_none() {
        ctx.problem(
            "encounter: pgcable::render::load_encounters rendered nothing for the started fight \
             (is the encounter renderer merged?): no encounter can be measured"
                .into(),
        );
    }

    ctx.progress("encounter: starting pgcable");
    let target = Target::start(Kind::Pgcable, &ctx.env, &ctx.db).await?;
    let path = ctx.db.cable_path()?;
    let identifier = campaign_identifier(ctx.db.campaign);
    let mut fleet = Fleet::new(&ctx.env.self_bin, target.addr, path.clone());
    let t0 = Instant::now();
    let grown = fleet
        .grow_to(plan.subscribers, &identifier, 64, ctx.connect_budget())
        .await;
    let connect_secs = t0.elapsed().as_secs_f64();
    let result = async {
        match grown {
            Ok(_) if fleet.connections() >= plan.subscribers => {}
            Ok((_, failed, e)) => {
                return Err(format!(
                    "reached only {} of {} subscribers ({failed} failed: {e})",
                    fleet.connections(),
                    plan.subscribers
                ))
            }
            Err(e) => return Err(e),
        }
        let observer = Observer::start(target.addr, &path, &identifier).await?;
        let n = fleet.connections();
        let quiet = settle(
            &mut fleet,
            Duration::from_millis(500),
            Duration::from_secs(20),
        )
        .await?;
        let on_subscribe = per_kind(&Collected::default(), &quiet, n as f64, 0);

        let mut seq = 1000u32;
        ctx.progress(&format!("encounter: fanout row reference, N={n}"));
        let mut ref_plan = Plan {
            changes: plan.actions,
            gap: Duration::from_millis(25),
            change_timeout: Duration::from_secs(30),
            budget: plan.budget,
            pad: None,
        };
        let mut writer = Writer::new(&ctx.db).await?;
        let row = match fanout::measure(
            ctx,
            &target,
            &mut fleet,
            &mut writer,
            Variant::Row,
            ref_plan,
            &mut seq,
            connect_secs,
        )
        .await
        {
            Ok(r) => Some(r),
            Err(e) => {
                ctx.problem(format!("encounter: fanout row reference: {e}"));
                None
            }
        };
        settle(
            &mut fleet,
            Duration::from_millis(300),
            Duration::from_secs(10),
        )
        .await?;
        let pipe = match &render {
            Some(r) => {
                ctx.progress(&format!(
                    "encounter: fanout pipe reference of {} bytes, N={n}",
                    r.payload_bytes
                ));
                ref_plan.pad = Some(r.payload_bytes);
                match fanout::measure(
                    ctx,
                    &target,
                    &mut fleet,
                    &mut writer,
                    Variant::Pipe,
                    ref_plan,
                    &mut seq,
                    connect_secs,
                )
                .await
                {
                    Ok(r) => Some(r),
                    Err(e) => {
                        ctx.problem(format!("encounter: fanout pipe reference: {e}"));
                        None
                    }
                }
            }
            None => None,
        };
        settle(
            &mut fleet,
            Duration::from_millis(300),
            Duration::from_secs(10),
        )
        .await?;

        let combat = CombatWriter::new(&ctx.db.url).await?;
        let closed = if render.is_some() {
            ctx.progress(&format!(
                "encounter: closed loop, {} actions, N={n}",
                plan.actions
            ));
            Some(
                closed_loop(
                    ctx, &plan, &target, &mut fleet, &combat, &fight, &observer, &client, &cfg,
                    &mut seq,
                )
                .await?,
            )
        } else {
            None
        };
        let burst = if render.is_some() {
            settle(
                &mut fleet,
                Duration::from_millis(300),
                Duration::from_secs(10),
            )
            .await?;
            ctx.progress(&format!("encounter: burst, {} actions", plan.actions));
            Some(
                burst(
                    &plan, &target, &mut fleet, &combat, &fight, &observer, &client, &cfg, &mut seq,
                )
                .await?,
            )
        } else {
            None
        };
        Ok(EncounterResult {
            subscribers: n,
            fight: shape,
            connect_secs,
            on_subscribe,
            render,
            row_last_subscriber: row.as_ref().map(last_subscriber),
            row,
            pipe_last_subscriber: pipe.as_ref().map(last_subscriber),
            pipe,
            closed,
            burst,
        })
    }
    .await;
    fleet.close().await;
    target.stop().await;
    result
}

/// Per change of a fanout round, commit → its last subscriber.
fn last_subscriber(r: &Round) -> Latency {
    let v: Vec<i64> = r
        .per_change_max_ms
        .iter()
        .filter(|v| v.is_finite())
        .map(|v| (v * 1e6) as i64)
        .collect();
    Latency::from_ns(v, r.changes)
}

#[allow(clippy::too_many_arguments)]
async fn closed_loop(
    ctx: &Ctx,
    plan: &EncounterPlan,
    target: &Target,
    fleet: &mut Fleet,
    combat: &CombatWriter,
    fight: &Fight,
    observer: &Observer,
    client: &deadpool_postgres::Object,
    cfg: &RenderConfig,
    seq: &mut u32,
) -> Result<ClosedLoop, String> {
    let n = fleet.connections();
    let metrics0 = http_body(target.addr, "/metrics").await.unwrap_or_default();
    let relay_cpu0 = target.cpu_secs();
    let client_cpu0 = fleet.cpu_secs();
    let before = fleet.collect().await?;
    let started = Instant::now();
    let mut commits: HashMap<u32, (u64, u64)> = HashMap::new();
    let mut order = Vec::new();
    let mut timeouts = 0;
    let (mut equal, mut compared) = (0, 0);
    for i in 0..plan.actions {
        if started.elapsed() > plan.budget {
            ctx.progress("encounter: closed loop stopped at its budget");
            break;
        }
        *seq += 1;
        let s = *seq;
        fleet.expect(s).await?;
        let at = combat.fire(fight, s).await?;
        commits.insert(s, at);
        order.push(s);
        let deadline = tokio::time::Instant::now() + plan.action_timeout;
        if !fleet.wait_done(s, deadline).await {
            timeouts += 1;
        }
        // Every tenth action: the extra subscriber's encounter against a direct render of the
        // committed state (nothing changes until the next action).
        if i % 10 == 9 {
            compared += 1;
            let got = observer.wait_for(s, Duration::from_secs(2)).await;
            let want = render_now(client, fight.id, cfg).await?;
            if got.is_some() && got == want {
                equal += 1;
            }
        }
    }
    let after = fleet.collect().await?;
    let metrics1 = http_body(target.addr, "/metrics").await.unwrap_or_default();
    let relay_cpu = (target.cpu_secs() - relay_cpu0).max(0.0);
    let client_cpu = (fleet.cpu_secs() - client_cpu0).max(0.0);
    let actions = commits.len();

    let mut worst: HashMap<u32, i64> = HashMap::new();
    let mut got: HashMap<u32, usize> = HashMap::new();
    let mut lat = Vec::with_capacity(after.receipts.len());
    for (s, at) in &after.receipts {
        if let Some((sent, _)) = commits.get(s) {
            let l = *at as i64 - *sent as i64;
            lat.push(l);
            let w = worst.entry(*s).or_insert(l);
            *w = (*w).max(l);
            *got.entry(*s).or_default() += 1;
        }
    }
    let missed: usize = order
        .iter()
        .map(|s| n.saturating_sub(got.get(s).copied().unwrap_or(0)))
        .sum();
    let marked: usize = got.values().sum();
    let per_action: Vec<i64> = order.iter().filter_map(|s| worst.get(s).copied()).collect();
    let enc = after.kinds[0].0.saturating_sub(before.kinds[0].0);
    let enc_bytes = after.kinds[0].1.saturating_sub(before.kinds[0].1);
    let duplicates = after.duplicates.saturating_sub(before.duplicates);
    let stale = after.stale.saturating_sub(before.stale);
    let frames = after.frames.saturating_sub(before.frames).max(1) as f64;
    let sent = encounters_sent(&metrics0, &metrics1);
    let per = (n * actions.max(1)) as f64;
    Ok(ClosedLoop {
        actions,
        timeouts,
        last_subscriber: Latency::from_ns(per_action, actions),
        receipts: Latency::from_ns(lat, actions * n),
        encounters_per_action: enc as f64 / per,
        duplicates,
        stale,
        missed,
        unmarked: enc.saturating_sub(marked as u64 + duplicates + stale),
        other_per_action: per_kind(&before, &after, per, 1),
        encounter_frame_bytes: enc_bytes as f64 / enc.max(1) as f64,
        relay_encounters_per_action: sent.map(|s| s / actions.max(1) as f64),
        relay_render: relay_render(&metrics0, &metrics1),
        relay_cpu_ms_per_action: relay_cpu * 1e3 / actions.max(1) as f64,
        client_us_per_frame: client_cpu * 1e6 / frames,
        equal_to_render: (equal, compared),
        commit_ms: commits
            .values()
            .map(|(s, a)| a.saturating_sub(*s) as f64 / 1e6)
            .sum::<f64>()
            / actions.max(1) as f64,
    })
}

#[allow(clippy::too_many_arguments)]
async fn burst(
    plan: &EncounterPlan,
    target: &Target,
    fleet: &mut Fleet,
    combat: &CombatWriter,
    fight: &Fight,
    observer: &Observer,
    client: &deadpool_postgres::Object,
    cfg: &RenderConfig,
    seq: &mut u32,
) -> Result<Burst, String> {
    let metrics0 = http_body(target.addr, "/metrics").await.unwrap_or_default();
    let before = fleet.collect().await?;
    let t0 = Instant::now();
    let mut last_sent = 0;
    for _ in 0..plan.actions {
        *seq += 1;
        last_sent = combat.fire(fight, *seq).await?.0;
    }
    let seconds = t0.elapsed().as_secs_f64();
    let last = *seq;
    // Until every subscriber's newest encounter is the final action's (or 10 s).
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut reached = (0, fleet.connections());
    while Instant::now() < deadline {
        reached = fleet.at_last(last).await?;
        if reached.0 >= reached.1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let after = settle(fleet, Duration::from_millis(300), Duration::from_secs(5)).await?;
    let metrics1 = http_body(target.addr, "/metrics").await.unwrap_or_default();
    let final_ms = after
        .receipts
        .iter()
        .filter(|(s, _)| *s == last)
        .map(|(_, at)| at.saturating_sub(last_sent) as f64 / 1e6)
        .fold(f64::NAN, f64::max);
    let final_equal = match observer.wait_for(last, Duration::from_secs(2)).await {
        Some(got) => Some(render_now(client, fight.id, cfg).await?.as_deref() == Some(&got)),
        None => Some(false),
    };
    let n = fleet.connections().max(1);
    let actions = plan.actions.max(1);
    let enc = after.kinds[0].0.saturating_sub(before.kinds[0].0);
    Ok(Burst {
        actions: plan.actions,
        seconds,
        encounters_per_action: enc as f64 / (n * actions) as f64,
        relay_encounters_per_action: encounters_sent(&metrics0, &metrics1)
            .map(|s| s / actions as f64),
        final_reached: reached,
        final_ms,
        final_equal,
        duplicates: after.duplicates.saturating_sub(before.duplicates),
        stale: after.stale.saturating_sub(before.stale),
    })
}

fn kinds_text(v: &[(String, f64)]) -> String {
    if v.is_empty() {
        return "none".into();
    }
    v.iter()
        .map(|(k, n)| format!("{k} {}", num(Some(*n), 2)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The scenario's tables.
pub fn tables(r: &EncounterResult, others: &[Kind]) -> Vec<Table> {
    let mut out = Vec::new();
    let mut t = Table::new(
        "encounter: render time of one fight's encounter (ms)",
        &["how", "renders", "p50", "p99", "max", "payload B"],
    );
    match &r.render {
        Some(x) => t.row(vec![
            "load_encounters, one warm pooled connection".into(),
            x.renders.to_string(),
            ms(x.p50_ms),
            ms(x.p99_ms),
            ms(x.max_ms),
            x.payload_bytes.to_string(),
        ]),
        None => t.row(vec![
            "load_encounters rendered nothing".into(),
            "0".into(),
            "-".into(),
            "-".into(),
            "-".into(),
            "-".into(),
        ]),
    }
    if let Some(rr) = r.closed.as_ref().and_then(|c| c.relay_render.as_ref()) {
        t.row(vec![
            "relay, pgcable_encounter_render_seconds (closed loop)".into(),
            num(Some(rr.batches), 0),
            format!("≤ {}", ms(rr.p50_le_ms)),
            "-".into(),
            format!("mean {}", ms(rr.mean_ms)),
            "-".into(),
        ]);
    }
    t.note(format!(
        "The fight: {} characters and {} vehicles on {} shot rows, {} effects (one on a vehicle), \
         {} active and {} ended chase relationships. The relay's figure is per batch and includes \
         BEGIN (pipelined) and getting a pool connection; its p50 is the upper bound of the \
         histogram bucket holding the median.",
        r.fight.characters,
        r.fight.vehicles,
        r.fight.shot_rows,
        r.fight.effects,
        r.fight.chases.0,
        r.fight.chases.1
    ));
    out.push(t);

    let mut t = Table::new(
        &format!(
            "encounter: combat actions, closed loop, N = {} (pgcable)",
            r.subscribers
        ),
        &["measure", "value"],
    );
    let mut rows: Vec<(String, String)> = Vec::new();
    if let Some(c) = &r.closed {
        rows.push((
            "actions (timeouts)".into(),
            format!("{} ({})", c.actions, c.timeouts),
        ));
        rows.push((
            "commit → last subscriber p50 / p99 / max (ms)".into(),
            format!(
                "{} / {} / {}",
                ms(c.last_subscriber.p50_ms),
                ms(c.last_subscriber.p99_ms),
                ms(c.last_subscriber.max_ms)
            ),
        ));
        rows.push((
            "commit → each subscriber p50 / p99 / max (ms)".into(),
            format!(
                "{} / {} / {}",
                ms(c.receipts.p50_ms),
                ms(c.receipts.p99_ms),
                ms(c.receipts.max_ms)
            ),
        ));
        rows.push((
            "encounters per subscriber per action".into(),
            num(Some(c.encounters_per_action), 3),
        ));
        rows.push((
            "duplicates / stale / missed / unmarked".into(),
            format!(
                "{} / {} / {} / {}",
                c.duplicates, c.stale, c.missed, c.unmarked
            ),
        ));
        rows.push((
            "encounters the relay sent per action (/metrics)".into(),
            num(c.relay_encounters_per_action, 2),
        ));
        rows.push((
            "other frames per subscriber per action".into(),
            kinds_text(&c.other_per_action),
        ));
        rows.push((
            "encounter frame (bytes)".into(),
            num(Some(c.encounter_frame_bytes), 0),
        ));
        rows.push((
            "encounters equal to a direct render".into(),
            format!("{} of {}", c.equal_to_render.0, c.equal_to_render.1),
        ));
        rows.push((
            "relay CPU per action (ms)".into(),
            num(Some(c.relay_cpu_ms_per_action), 1),
        ));
        rows.push((
            "load client CPU per frame (µs)".into(),
            num(Some(c.client_us_per_frame), 1),
        ));
    } else {
        rows.push((
            "actions".into(),
            "not measured (no encounter rendered)".into(),
        ));
    }
    let mut reference = |name: &str, round: &Option<Round>, last: &Option<Latency>| {
        if let (Some(x), Some(last)) = (round, last) {
            rows.push((
                format!(
                    "{name}: {} changes, {} B frames; each subscriber p50 / p99; last subscriber p50 / p99 (ms)",
                    x.changes,
                    num(Some(x.frame_bytes), 0)
                ),
                format!(
                    "{} / {}; {} / {}",
                    ms(x.latency.p50_ms),
                    ms(x.latency.p99_ms),
                    ms(last.p50_ms),
                    ms(last.p99_ms)
                ),
            ));
        }
    };
    reference("fanout row reference", &r.row, &r.row_last_subscriber);
    reference(
        "pipe of the encounter's size",
        &r.pipe,
        &r.pipe_last_subscriber,
    );
    if let Some(c) = &r.closed {
        let q = r
            .row
            .as_ref()
            .and_then(|row| ratio(c.last_subscriber.p99_ms, row.latency.p99_ms));
        rows.push((
            "encounter last-subscriber p99 / fanout row p99 (target ≤ 2)".into(),
            num(q, 2),
        ));
        let q = r
            .pipe_last_subscriber
            .as_ref()
            .and_then(|p| ratio(c.last_subscriber.p99_ms, p.p99_ms));
        rows.push((
            "encounter / same-size pipe, last-subscriber p99".into(),
            num(q, 2),
        ));
    }
    rows.push((
        "subscribe: connect s; frames per subscriber before any change".into(),
        format!(
            "{}; {}",
            num(Some(r.connect_secs), 1),
            kinds_text(&r.on_subscribe)
        ),
    ));
    for (k, v) in rows {
        t.row(vec![k, v]);
    }
    t.note(
        "One action is one transaction: three shots UPDATEd (shot value and count), one or two \
         characters (wounds and impairments, Fortune), and the fight's action_id, which marks the \
         encounter. The next action is committed as soon as every subscriber has the encounter \
         (timeout 5 s: a miss). Latency is from the moment the writer sent COMMIT. Every tenth \
         encounter is compared with a direct render by one extra subscriber in the bench process.",
    );
    if !others.is_empty() {
        t.note(format!(
            "Not measured for {}: only pgcable sends encounters.",
            others
                .iter()
                .map(|k| k.name())
                .collect::<Vec<_>>()
                .join(" and ")
        ));
    }
    out.push(t);

    if let Some(b) = &r.burst {
        let mut t = Table::new(
            "encounter: burst of actions as fast as one writer commits (pgcable)",
            &["measure", "value"],
        );
        let rows: Vec<(&str, String)> = vec![
            (
                "actions / seconds / per second",
                format!(
                    "{} / {} / {}",
                    b.actions,
                    num(Some(b.seconds), 2),
                    num(Some(b.actions as f64 / b.seconds.max(1e-9)), 0)
                ),
            ),
            (
                "encounters per subscriber per action",
                num(Some(b.encounters_per_action), 3),
            ),
            (
                "encounters the relay sent per action",
                num(b.relay_encounters_per_action, 3),
            ),
            (
                "subscribers whose last encounter is the final state",
                format!("{} of {}", b.final_reached.0, b.final_reached.1),
            ),
            (
                "final action's commit → last subscriber (ms)",
                ms(b.final_ms),
            ),
            (
                "last encounter equal to a direct render of the final state",
                match b.final_equal {
                    Some(true) => "yes".into(),
                    Some(false) => "NO".into(),
                    None => "-".into(),
                },
            ),
            (
                "duplicates / stale",
                format!("{} / {}", b.duplicates, b.stale),
            ),
        ];
        for (k, v) in rows {
            t.row(vec![k.into(), v]);
        }
        t.note(
            "A fight that keeps changing is re-rendered at most every 50 ms, so fewer encounters \
             than actions is by design; every subscriber must end on the final state.",
        );
        out.push(t);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_render_histogram() {
        let before = "pgcable_encounter_render_seconds_bucket{le=\"0.002\"} 1\n\
                      pgcable_encounter_render_seconds_bucket{le=\"0.005\"} 2\n\
                      pgcable_encounter_render_seconds_bucket{le=\"+Inf\"} 2\n\
                      pgcable_encounter_render_seconds_sum 0.006\n\
                      pgcable_encounter_render_seconds_count 2\n";
        let after = "pgcable_encounter_render_seconds_bucket{le=\"0.002\"} 2\n\
                     pgcable_encounter_render_seconds_bucket{le=\"0.005\"} 8\n\
                     pgcable_encounter_render_seconds_bucket{le=\"+Inf\"} 12\n\
                     pgcable_encounter_render_seconds_sum 0.106\n\
                     pgcable_encounter_render_seconds_count 12\n\
                     pgcable_encounters_total 7\n";
        let r = relay_render(before, after).expect("ten renders");
        assert_eq!(r.batches, 10.0);
        assert!((r.mean_ms - 10.0).abs() < 1e-9);
        // 1 of 10 at ≤ 2 ms, 7 of 10 at ≤ 5 ms.
        assert_eq!(r.p50_le_ms, 5.0);
        assert_eq!(relay_render(after, after).map(|r| r.batches), None);
        assert_eq!(encounters_sent("", after), Some(7.0));
        assert_eq!(encounters_sent(after, ""), None);
    }
}
