//! Shadow mode (bridge.md §3): the Rails messages the bridge skips are compared with what
//! pgcable's own feed sent to the same stream, to prove parity on real traffic before cutover.
//!
//! Owns the comparison: a window of messages from each side waiting for their counterpart,
//! keyed by stream, skip-rule key and entity id; the outcomes (`match`, `mismatch`,
//! `rails_only`, `pgcable_only`, the last two with a known reason when there is one) as
//! metrics, log lines and the `GET /shadow` summary.
//!
//! It sees the feed's messages as a subscriber of the hub: for each `campaign_<uuid>` or
//! `fight_<uuid>` stream Rails talks about, it holds a subscription of its own (through an
//! outbox that is not a session, so it counts as no connection) until Rails has been quiet on
//! that stream for [`WATCH_IDLE`]. That also makes the feed render those campaigns when no
//! browser is connected to pgcable yet, which is the point before cutover. With shadow mode
//! off none of this exists: nothing is added to the feed's or the hub's path. Calls the hub
//! (subscribe/unsubscribe) and the metrics.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;
use uuid::Uuid;

use super::skip::SkipRules;
use super::truncate;
use crate::cable::outbox::{Frame, Outbox};
use crate::hub::{Hub, Session, SubscriptionId};
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;

/// How long a stream stays watched after Rails' last message to it.
pub const WATCH_IDLE: Duration = Duration::from_secs(600);
/// Rails messages waiting to be compared; more are dropped (and counted).
const INPUT_QUEUE: usize = 4096;
/// Messages waiting for a counterpart (kept as compact JSON text, about 2 KB for a character);
/// more are dropped (and counted).
const MAX_PENDING: usize = 50_000;
/// Entities whose last pgcable payload is remembered (to recognise Rails' no-op saves); the
/// memory is forgotten at once when full.
const MAX_REMEMBERED: usize = 20_000;
/// Mismatches and unmatched messages kept for `GET /shadow`.
const KEEP: usize = 50;
/// How much of a value a log line or the summary shows.
const SHOW: usize = 300;
/// Bytes the shadow's own subscription may hold between two reads.
const OUTBOX_BYTES: usize = 64 << 20;

/// Which side a message came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Published by the Rails app (through the bridge).
    Rails,
    /// Sent by pgcable's own feed.
    Pgcable,
}

/// How a comparison ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    /// Both sides sent semantically equal messages within the window.
    Match,
    /// Both sides sent a message for the same entity, but they differ.
    Mismatch,
    /// Rails sent it; pgcable sent nothing like it within the window.
    RailsOnly,
    /// pgcable sent it; Rails sent nothing like it within the window.
    PgcableOnly,
}

impl Outcome {
    /// The `outcome` label.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Match => "match",
            Outcome::Mismatch => "mismatch",
            Outcome::RailsOnly => "rails_only",
            Outcome::PgcableOnly => "pgcable_only",
        }
    }
}

/// Known, documented reasons for a message without counterpart (README, "Migrating from the
/// Rails cable").
pub mod reason {
    /// pgcable started watching the stream less than a window before Rails' message: it may
    /// have sent its own before it watched.
    pub const NOT_WATCHED: &str = "not_watched";
    /// Rails sent the same message again (one encounter per shot row, two reload jobs on
    /// create, two update jobs for factions, sites and weapons); pgcable sends each state once.
    pub const DUPLICATE: &str = "duplicate";
    /// Rails broadcast a record equal to what pgcable last sent for it: a save that changed
    /// nothing (Rails broadcasts, no row changed, so the feed is silent).
    pub const NO_OP_SAVE: &str = "no_op_save";
    /// `{"fight":"updated"}` from `PATCH /api/v2/fights/:id/touch`, which broadcasts without
    /// writing the row.
    pub const TOUCH_WITHOUT_WRITE: &str = "touch_without_write";
    /// Rails sent nothing at all to the stream within the window: a write that bypassed its
    /// callbacks (`update_all`, SQL, another program, broadcasts disabled).
    pub const RAILS_SILENT: &str = "rails_silent";
}

/// A message waiting for its counterpart.
#[derive(Debug)]
struct Entry {
    side: Side,
    /// The message as compact JSON (parsed again when compared: it takes a fraction of the
    /// memory of the parsed tree).
    text: String,
    at: Instant,
    /// Only for Rails entries: the stream was not watched long enough for pgcable's message to
    /// have been seen.
    warming: bool,
}

/// Which messages can be counterparts: same stream, same rule key, same entity.
type Slot = (String, String, Option<String>);

/// One recorded mismatch (for `GET /shadow`).
#[derive(Debug, Clone)]
struct Mismatch {
    at: u64,
    stream: String,
    key: String,
    entity: Option<String>,
    path: String,
    rails: String,
    pgcable: String,
}

/// One recorded message without counterpart (for `GET /shadow`).
#[derive(Debug, Clone)]
struct Unmatched {
    at: u64,
    outcome: Outcome,
    stream: String,
    key: String,
    entity: Option<String>,
    reason: Option<&'static str>,
    message: String,
}

/// What `GET /shadow` reports.
#[derive(Debug, Default)]
struct Report {
    counts: BTreeMap<Outcome, BTreeMap<String, u64>>,
    explained: BTreeMap<Outcome, BTreeMap<&'static str, u64>>,
    mismatches: VecDeque<Mismatch>,
    unmatched: VecDeque<Unmatched>,
    dropped: u64,
    pending: usize,
    streams: usize,
}

/// The comparison engine, without I/O: messages in, outcomes out.
#[derive(Debug)]
pub struct Matcher {
    window: Duration,
    pending: HashMap<Slot, Vec<Entry>>,
    pending_count: usize,
    /// Recently matched or seen Rails messages, per slot (to recognise Rails' duplicates).
    recent_rails: HashMap<Slot, Vec<(String, Instant)>>,
    /// The last message pgcable sent per slot (to recognise no-op saves).
    last_pgcable: HashMap<Slot, String>,
    /// When Rails last sent anything to a stream.
    rails_heard: HashMap<String, Instant>,
}

/// A finished comparison.
#[derive(Debug, Clone, PartialEq)]
pub struct Finished {
    /// How it ended.
    pub outcome: Outcome,
    /// The stream.
    pub stream: String,
    /// The skip-rule key.
    pub key: String,
    /// The entity id, when the message has one.
    pub entity: Option<String>,
    /// For a mismatch: the JSON path of the first difference and both values there.
    pub difference: Option<Difference>,
    /// For rails-only / pgcable-only: a known reason.
    pub reason: Option<&'static str>,
    /// For rails-only / pgcable-only: the message.
    pub message: Option<Value>,
}

/// Where two messages first differ.
#[derive(Debug, Clone, PartialEq)]
pub struct Difference {
    /// `$.character.name`, `$.encounter.shots[2].characters[0].name`, …
    pub path: String,
    /// Rails' value there (`None`: absent).
    pub rails: Option<Value>,
    /// pgcable's value there (`None`: absent).
    pub pgcable: Option<Value>,
}

impl Matcher {
    /// A matcher whose messages wait `window` for their counterpart.
    pub fn new(window: Duration) -> Matcher {
        Matcher {
            window,
            pending: HashMap::new(),
            pending_count: 0,
            recent_rails: HashMap::new(),
            last_pgcable: HashMap::new(),
            rails_heard: HashMap::new(),
        }
    }

    /// Messages waiting for a counterpart.
    pub fn pending(&self) -> usize {
        self.pending_count
    }

    /// Adds a message; returns the comparison it completes, if any (only matches finish at
    /// once: a message that differs from what waits may still find its equal in time).
    /// `warming` (Rails side only): pgcable had not been watching the stream for a window.
    pub fn add(
        &mut self,
        side: Side,
        stream: &str,
        key: &str,
        value: Value,
        at: Instant,
        warming: bool,
    ) -> Option<Finished> {
        let entity = entity_of(&value);
        let text = value.to_string();
        let slot: Slot = (stream.to_string(), key.to_string(), entity.clone());
        if side == Side::Rails {
            self.rails_heard.insert(stream.to_string(), at);
        }
        if side == Side::Pgcable {
            if self.last_pgcable.len() >= MAX_REMEMBERED {
                self.last_pgcable.clear();
            }
            self.last_pgcable.insert(slot.clone(), text.clone());
        }
        let waiting = self.pending.entry(slot.clone()).or_default();
        let equal = waiting
            .iter()
            .position(|e| e.side != side && first_difference(&parse(&e.text), &value).is_none());
        if let Some(i) = equal {
            let other = waiting.remove(i);
            self.pending_count -= 1;
            if waiting.is_empty() {
                self.pending.remove(&slot);
            }
            let rails = if side == Side::Rails {
                text
            } else {
                other.text
            };
            self.recent_rails
                .entry(slot.clone())
                .or_default()
                .push((rails, at));
            return Some(Finished {
                outcome: Outcome::Match,
                stream: slot.0,
                key: slot.1,
                entity,
                difference: None,
                reason: None,
                message: None,
            });
        }
        if self.pending_count >= MAX_PENDING {
            return None;
        }
        waiting.push(Entry {
            side,
            text,
            at,
            warming: warming && side == Side::Rails,
        });
        self.pending_count += 1;
        None
    }

    /// Whether a message was refused because too many wait.
    pub fn is_full(&self) -> bool {
        self.pending_count >= MAX_PENDING
    }

    /// Ends every comparison whose oldest message has waited a whole window by `now`: paired
    /// with the other side's nearest message of the same entity as a mismatch, or alone.
    pub fn expire(&mut self, now: Instant) -> Vec<Finished> {
        let window = self.window;
        let mut done = Vec::new();
        let due: Vec<Slot> = self
            .pending
            .iter()
            .filter(|(_, entries)| entries.iter().any(|e| now.duration_since(e.at) >= window))
            .map(|(slot, _)| slot.clone())
            .collect();
        for slot in due {
            let Some(mut entries) = self.pending.remove(&slot) else {
                continue;
            };
            entries.sort_by_key(|e| e.at);
            let mut keep = Vec::new();
            while let Some(first) = (!entries.is_empty()).then(|| entries.remove(0)) {
                if now.duration_since(first.at) < window {
                    keep.push(first);
                    continue;
                }
                self.pending_count -= 1;
                let other = entries
                    .iter()
                    .enumerate()
                    .filter(|(_, e)| e.side != first.side)
                    .min_by_key(|(_, e)| {
                        if e.at > first.at {
                            e.at - first.at
                        } else {
                            first.at - e.at
                        }
                    })
                    .map(|(i, _)| i);
                match (other, &slot.2) {
                    // Two messages about the same entity that never became equal.
                    (Some(i), Some(_)) => {
                        let second = entries.remove(i);
                        self.pending_count -= 1;
                        let (rails, pgcable) = match first.side {
                            Side::Rails => (first.text, second.text),
                            Side::Pgcable => (second.text, first.text),
                        };
                        let difference = first_difference(&parse(&rails), &parse(&pgcable));
                        done.push(Finished {
                            outcome: Outcome::Mismatch,
                            stream: slot.0.clone(),
                            key: slot.1.clone(),
                            entity: slot.2.clone(),
                            difference,
                            reason: None,
                            message: None,
                        });
                    }
                    _ => done.push(self.alone(&slot, first, now)),
                }
            }
            if !keep.is_empty() {
                self.pending.insert(slot, keep);
            }
        }
        // Forget what can no longer matter: a Rails message is a duplicate of one seen up to a
        // window before it, and is classified a window after it arrived.
        self.recent_rails.retain(|_, seen| {
            seen.retain(|(_, at)| now.duration_since(*at) < window * 2);
            !seen.is_empty()
        });
        self.rails_heard
            .retain(|_, at| now.duration_since(*at) < window * 2);
        done
    }

    /// A message without counterpart, with its reason when one is known.
    fn alone(&mut self, slot: &Slot, entry: Entry, now: Instant) -> Finished {
        let value = parse(&entry.text);
        let (outcome, reason) = match entry.side {
            Side::Rails => {
                let duplicate = self.recent_rails.get(slot).is_some_and(|seen| {
                    seen.iter().any(|(v, at)| {
                        entry.at.saturating_duration_since(*at) < self.window
                            && first_difference(&parse(v), &value).is_none()
                    })
                });
                let no_op = slot.2.is_some()
                    && self
                        .last_pgcable
                        .get(slot)
                        .is_some_and(|v| first_difference(&parse(v), &value).is_none());
                let reason = if duplicate {
                    Some(reason::DUPLICATE)
                } else if no_op {
                    Some(reason::NO_OP_SAVE)
                } else if entry.warming {
                    Some(reason::NOT_WATCHED)
                } else if slot.1 == "fight=updated" {
                    Some(reason::TOUCH_WITHOUT_WRITE)
                } else {
                    None
                };
                self.recent_rails
                    .entry(slot.clone())
                    .or_default()
                    .push((entry.text, entry.at));
                (Outcome::RailsOnly, reason)
            }
            Side::Pgcable => {
                let silent = self.rails_heard.get(&slot.0).is_none_or(|heard| {
                    let gap = if *heard > entry.at {
                        *heard - entry.at
                    } else {
                        entry.at - *heard
                    };
                    gap >= self.window
                });
                let _ = now;
                (Outcome::PgcableOnly, silent.then_some(reason::RAILS_SILENT))
            }
        };
        Finished {
            outcome,
            stream: slot.0.clone(),
            key: slot.1.clone(),
            entity: slot.2.clone(),
            difference: None,
            reason,
            message: Some(value),
        }
    }
}

/// A message stored by [`Matcher`] (always valid JSON: it was serialized from a parsed value).
fn parse(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or(Value::Null)
}

/// The entity a message is about: the `id` of the record it carries (`{"character":{"id":…}}`,
/// `{"encounter":{"id":…}}`), else its own `id` or first `…_id` member (`fight_ended`'s
/// `fight_id`); `None` for reloads and `{"fight":"updated"}`.
fn entity_of(value: &Value) -> Option<String> {
    let obj = value.as_object()?;
    let id_text = |v: &Value| match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    };
    if obj.len() == 1 {
        if let Some(id) = obj.values().next().and_then(|v| v.get("id")) {
            return id_text(id);
        }
    }
    obj.get("id")
        .or_else(|| obj.iter().find(|(k, _)| k.ends_with("_id")).map(|(_, v)| v))
        .and_then(id_text)
}

/// Whether Rails leaves the order of the array under `key` undefined (payloads.md §0, §2.1):
/// id arrays, has_many arrays, and within an encounter `vehicles`, `effects` and
/// `chase_relationships`; `characters` is unordered except within a shot, and `shots` is
/// ordered.
fn unordered(key: Option<&str>, in_shot: bool) -> bool {
    match key {
        Some(k) if k.ends_with("_ids") => true,
        Some("effects" | "chase_relationships" | "vehicles" | "image_positions") => true,
        Some("characters") => !in_shot,
        _ => false,
    }
}

/// Where `rails` and `pgcable` first differ, or `None` if they are semantically equal: object
/// key order aside, arrays that Rails leaves unordered compared as multisets, numbers by value.
pub fn first_difference(rails: &Value, pgcable: &Value) -> Option<Difference> {
    walk(rails, pgcable, "$".to_string(), None, false)
}

fn child(path: &str, key: &str) -> String {
    if !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        format!("{path}.{key}")
    } else {
        format!("{path}[{}]", Value::String(key.to_string()))
    }
}

fn walk(
    a: &Value,
    b: &Value,
    path: String,
    key: Option<&str>,
    in_shot: bool,
) -> Option<Difference> {
    let differ = |path: String| {
        Some(Difference {
            path,
            rails: Some(a.clone()),
            pgcable: Some(b.clone()),
        })
    };
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => object_difference(x, y, &path, in_shot),
        (Value::Array(x), Value::Array(y)) => {
            if unordered(key, in_shot) {
                if same_multiset(x, y, key, in_shot) {
                    None
                } else {
                    differ(path)
                }
            } else {
                let inner = in_shot || key == Some("shots");
                for (i, (va, vb)) in x.iter().zip(y.iter()).enumerate() {
                    if let Some(d) = walk(va, vb, format!("{path}[{i}]"), key, inner) {
                        return Some(d);
                    }
                }
                let n = x.len().min(y.len());
                (x.len() != y.len()).then(|| Difference {
                    path: format!("{path}[{n}]"),
                    rails: x.get(n).cloned(),
                    pgcable: y.get(n).cloned(),
                })
            }
        }
        (Value::Number(x), Value::Number(y)) => {
            let equal = match (x.as_i64(), y.as_i64(), x.as_u64(), y.as_u64()) {
                (Some(p), Some(q), _, _) => p == q,
                (_, _, Some(p), Some(q)) => p == q,
                _ => x.as_f64() == y.as_f64(),
            };
            if equal {
                None
            } else {
                differ(path)
            }
        }
        _ if a == b => None,
        _ => differ(path),
    }
}

fn object_difference(
    x: &Map<String, Value>,
    y: &Map<String, Value>,
    path: &str,
    in_shot: bool,
) -> Option<Difference> {
    for (k, va) in x {
        match y.get(k) {
            Some(vb) => {
                if let Some(d) = walk(va, vb, child(path, k), Some(k), in_shot) {
                    return Some(d);
                }
            }
            None => {
                return Some(Difference {
                    path: child(path, k),
                    rails: Some(va.clone()),
                    pgcable: None,
                })
            }
        }
    }
    y.iter()
        .find(|(k, _)| !x.contains_key(*k))
        .map(|(k, vb)| Difference {
            path: child(path, k),
            rails: None,
            pgcable: Some(vb.clone()),
        })
}

fn same_multiset(x: &[Value], y: &[Value], key: Option<&str>, in_shot: bool) -> bool {
    if x.len() != y.len() {
        return false;
    }
    let mut used = vec![false; y.len()];
    x.iter().all(|va| {
        let found = y
            .iter()
            .enumerate()
            .position(|(j, vb)| !used[j] && walk(va, vb, String::new(), key, in_shot).is_none());
        match found {
            Some(j) => {
                used[j] = true;
                true
            }
            None => false,
        }
    })
}

/// A Rails message handed over by the bridge.
#[derive(Debug)]
struct RailsMessage {
    stream: String,
    key: String,
    text: String,
    at: Instant,
}

/// A stream the shadow holds a subscription to.
#[derive(Debug)]
struct Watch {
    id: SubscriptionId,
    /// Rails messages that arrive before this are compared while pgcable may have missed its
    /// own (it was not rendering the stream).
    warm_until: Option<Instant>,
    last_rails: Instant,
}

/// Shadow mode of a running relay.
#[derive(Debug)]
pub struct Shadow {
    window: Duration,
    skip: SkipRules,
    input: mpsc::Sender<RailsMessage>,
    receiver: Mutex<Option<mpsc::Receiver<RailsMessage>>>,
    outbox: Arc<Outbox>,
    report: Mutex<Report>,
    started: u64,
    metrics: Metrics,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Shadow {
    /// Shadow mode with this window, comparing the messages the skip rules select.
    pub fn new(window: Duration, skip: SkipRules, metrics: Metrics) -> Arc<Shadow> {
        let (input, receiver) = mpsc::channel(INPUT_QUEUE);
        Arc::new(Shadow {
            window,
            skip,
            input,
            receiver: Mutex::new(Some(receiver)),
            outbox: Arc::new(Outbox::new(OUTBOX_BYTES)),
            report: Mutex::new(Report::default()),
            started: unix_now(),
            metrics,
        })
    }

    /// Hands over a Rails message the bridge skipped (never waits; drops it, counted, when
    /// the comparison has fallen behind).
    pub fn rails(&self, stream: &str, key: &str, text: &str) {
        let message = RailsMessage {
            stream: stream.to_string(),
            key: key.to_string(),
            text: text.to_string(),
            at: Instant::now(),
        };
        if self.input.try_send(message).is_err() {
            self.dropped();
        }
    }

    fn dropped(&self) {
        self.metrics.shadow_dropped();
        self.lock().dropped += 1;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Report> {
        self.report.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The `GET /shadow` summary: counts per outcome and key since start, the known reasons,
    /// the last mismatches with their paths and the last messages without counterpart.
    pub fn summary(&self) -> Value {
        let r = self.lock();
        let mut counts = Map::new();
        for outcome in [
            Outcome::Match,
            Outcome::Mismatch,
            Outcome::RailsOnly,
            Outcome::PgcableOnly,
        ] {
            let per_key: Map<String, Value> = r
                .counts
                .get(&outcome)
                .map(|m| m.iter().map(|(k, n)| (k.clone(), json!(n))).collect())
                .unwrap_or_default();
            counts.insert(outcome.label().to_string(), Value::Object(per_key));
        }
        let mut explained = Map::new();
        for outcome in [Outcome::RailsOnly, Outcome::PgcableOnly] {
            let per_reason: Map<String, Value> = r
                .explained
                .get(&outcome)
                .map(|m| m.iter().map(|(k, n)| (k.to_string(), json!(n))).collect())
                .unwrap_or_default();
            explained.insert(outcome.label().to_string(), Value::Object(per_reason));
        }
        let mismatches: Vec<Value> = r
            .mismatches
            .iter()
            .rev()
            .map(|m| {
                json!({
                    "at": m.at, "stream": m.stream, "key": m.key, "entity": m.entity,
                    "path": m.path, "rails": m.rails, "pgcable": m.pgcable,
                })
            })
            .collect();
        let unmatched: Vec<Value> = r
            .unmatched
            .iter()
            .rev()
            .map(|u| {
                json!({
                    "at": u.at, "outcome": u.outcome.label(), "stream": u.stream, "key": u.key,
                    "entity": u.entity, "reason": u.reason, "message": u.message,
                })
            })
            .collect();
        json!({
            "enabled": true,
            "window_secs": self.window.as_secs_f64(),
            "since": self.started,
            "keys": self.skip.labels().collect::<Vec<_>>(),
            "streams_watched": r.streams,
            "pending": r.pending,
            "dropped": r.dropped,
            "counts": counts,
            "explained": explained,
            "mismatches": mismatches,
            "unmatched": unmatched,
        })
    }

    fn record(&self, f: Finished) {
        self.metrics.shadow(f.outcome.label(), &f.key);
        if let Some(reason) = f.reason {
            self.metrics
                .shadow_explained(f.outcome.label(), &f.key, reason);
        }
        let show = |v: &Option<Value>| match v {
            Some(v) => truncate(&v.to_string(), SHOW),
            None => "(absent)".to_string(),
        };
        let mut r = self.lock();
        *r.counts
            .entry(f.outcome)
            .or_default()
            .entry(f.key.clone())
            .or_default() += 1;
        if let Some(reason) = f.reason {
            *r.explained
                .entry(f.outcome)
                .or_default()
                .entry(reason)
                .or_default() += 1;
        }
        match f.outcome {
            Outcome::Match => {}
            Outcome::Mismatch => {
                let (path, rails, pgcable) = match &f.difference {
                    Some(d) => (d.path.clone(), show(&d.rails), show(&d.pgcable)),
                    None => ("$".into(), String::new(), String::new()),
                };
                tracing::warn!(
                    stream = %f.stream, key = %f.key, entity = ?f.entity, path = %path,
                    rails = %rails, pgcable = %pgcable,
                    "shadow: mismatch between Rails and pgcable"
                );
                if r.mismatches.len() == KEEP {
                    r.mismatches.pop_front();
                }
                r.mismatches.push_back(Mismatch {
                    at: unix_now(),
                    stream: f.stream,
                    key: f.key,
                    entity: f.entity,
                    path,
                    rails,
                    pgcable,
                });
            }
            Outcome::RailsOnly | Outcome::PgcableOnly => {
                let message = show(&f.message);
                match f.reason {
                    Some(reason) => tracing::debug!(
                        outcome = f.outcome.label(), stream = %f.stream, key = %f.key,
                        entity = ?f.entity, reason, "shadow: no counterpart (expected)"
                    ),
                    None => tracing::info!(
                        outcome = f.outcome.label(), stream = %f.stream, key = %f.key,
                        entity = ?f.entity, message = %message, "shadow: no counterpart within the window"
                    ),
                }
                if r.unmatched.len() == KEEP {
                    r.unmatched.pop_front();
                }
                r.unmatched.push_back(Unmatched {
                    at: unix_now(),
                    outcome: f.outcome,
                    stream: f.stream,
                    key: f.key,
                    entity: f.entity,
                    reason: f.reason,
                    message,
                });
            }
        }
    }
}

/// A broadcast frame the shadow's subscription received.
#[derive(Deserialize)]
struct Received<'a> {
    identifier: String,
    #[serde(borrow)]
    message: &'a RawValue,
}

/// Runs shadow mode until shutdown: watches the streams Rails talks about, reads what the feed
/// sent to them, compares.
pub async fn run(shadow: Arc<Shadow>, hub: Arc<Hub>, mut shutdown: Shutdown) {
    let receiver = shadow
        .receiver
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    let Some(mut input) = receiver else {
        return;
    };
    // The subscriptions' frames land here; this session is never registered with the hub, so
    // it is not a connection and no disconnect reaches it.
    let session = Session {
        id: 0,
        user_id: Uuid::nil(),
        outbox: shadow.outbox.clone(),
    };
    let mut matcher = Matcher::new(shadow.window);
    let mut watches: HashMap<String, Watch> = HashMap::new();
    let mut frames: VecDeque<Frame> = VecDeque::new();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.wait() => break,
            m = input.recv() => {
                let Some(m) = m else { break };
                let watch = watches.entry(m.stream.clone()).or_insert_with(|| {
                    // Already rendered for browsers connected to pgcable? Then nothing was missed.
                    let warm_until = (!hub.is_watched(&m.stream)).then(|| m.at + shadow.window);
                    let id = hub.subscription_id();
                    let prefix = format!(
                        "{{\"identifier\":{},\"message\":",
                        Value::String(m.stream.clone())
                    );
                    hub.subscribe(&m.stream, id, &session, Arc::from(prefix));
                    Watch { id, warm_until, last_rails: m.at }
                });
                watch.last_rails = m.at;
                let warming = watch.warm_until.is_some_and(|t| m.at < t);
                match serde_json::from_str::<Value>(&m.text) {
                    Ok(value) => {
                        if matcher.is_full() {
                            shadow.dropped();
                        } else if let Some(f) = matcher.add(Side::Rails, &m.stream, &m.key, value, m.at, warming) {
                            shadow.record(f);
                        }
                    }
                    Err(_) => shadow.dropped(),
                }
            }
            _ = shadow.outbox.ready() => {
                shadow.outbox.take(&mut frames);
                shadow.outbox.progressed();
                let now = Instant::now();
                for frame in frames.drain(..) {
                    let Frame::Broadcast(bytes) = frame else { continue };
                    let Ok(received) = serde_json::from_str::<Received>(bytes.as_str()) else { continue };
                    // Only what the skip rules select is compared: bridged messages and
                    // presence lists go by.
                    let Some(key) = shadow.skip.matches(&received.identifier, received.message.get()) else { continue };
                    let Ok(value) = serde_json::from_str::<Value>(received.message.get()) else { continue };
                    if matcher.is_full() {
                        shadow.dropped();
                    } else if let Some(f) = matcher.add(Side::Pgcable, &received.identifier, key, value, now, false) {
                        shadow.record(f);
                    }
                }
            }
            _ = tick.tick() => {
                let now = Instant::now();
                for f in matcher.expire(now) {
                    shadow.record(f);
                }
                watches.retain(|stream, w| {
                    let keep = now.duration_since(w.last_rails) < WATCH_IDLE;
                    if !keep {
                        hub.unsubscribe(stream, w.id);
                    }
                    keep
                });
                let mut r = shadow.lock();
                r.pending = matcher.pending();
                r.streams = watches.len();
            }
        }
    }
    for (stream, w) in watches {
        hub.unsubscribe(&stream, w.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: &str = "campaign_6f1c2a57-7e0e-4c1e-9a55-0d1f5c3b1a2e";

    fn v(s: &str) -> Value {
        serde_json::from_str(s).expect("json")
    }

    #[test]
    fn semantic_equality() {
        assert!(
            first_difference(&v(r#"{"a":1,"b":[1,2]}"#), &v(r#"{"b":[1,2],"a":1.0}"#)).is_none()
        );
        let d = first_difference(&v(r#"{"a":{"b":[1,2]}}"#), &v(r#"{"a":{"b":[2,1]}}"#))
            .expect("ordered");
        assert_eq!(d.path, "$.a.b[0]");
        assert!(first_difference(
            &v(r#"{"x":{"weapon_ids":[1,2]}}"#),
            &v(r#"{"x":{"weapon_ids":[2,1]}}"#)
        )
        .is_none());
        // characters: unordered in a fight payload, ordered within a shot.
        assert!(first_difference(
            &v(r#"{"characters":[{"id":1},{"id":2}]}"#),
            &v(r#"{"characters":[{"id":2},{"id":1}]}"#)
        )
        .is_none());
        let d = first_difference(
            &v(r#"{"shots":[{"characters":[{"id":1},{"id":2}]}]}"#),
            &v(r#"{"shots":[{"characters":[{"id":2},{"id":1}]}]}"#),
        )
        .expect("ordered within a shot");
        assert_eq!(d.path, "$.shots[0].characters[0].id");
        let d = first_difference(&v(r#"{"a":1}"#), &v(r#"{"a":1,"b":null}"#)).expect("extra key");
        assert_eq!(
            (d.path.as_str(), d.rails, d.pgcable),
            ("$.b", None, Some(Value::Null))
        );
        let d = first_difference(&v(r#"{"a b":"x"}"#), &v(r#"{"a b":"y"}"#)).expect("differs");
        assert_eq!(d.path, r#"$["a b"]"#);
        let d = first_difference(&v("[1]"), &v("[1,2]")).expect("length");
        assert_eq!(d.path, "$[1]");
    }

    #[test]
    fn outcomes() {
        let w = Duration::from_secs(10);
        let t = Instant::now();
        let mut m = Matcher::new(w);
        let a = v(r#"{"character":{"id":"c1","name":"A"}}"#);
        // Match, in either order.
        assert!(m
            .add(Side::Pgcable, S, "character", a.clone(), t, false)
            .is_none());
        let f = m
            .add(Side::Rails, S, "character", a.clone(), t, false)
            .expect("match");
        assert_eq!(f.outcome, Outcome::Match);
        assert_eq!(f.entity.as_deref(), Some("c1"));
        // A Rails duplicate half a window later: rails-only, explained, even though the
        // original is more than a window old when the duplicate's own window ends.
        assert!(m
            .add(Side::Rails, S, "character", a.clone(), t + w / 2, false)
            .is_none());
        assert!(m.expire(t + w).is_empty());
        let done = m.expire(t + w / 2 + w);
        assert_eq!(done.len(), 1);
        assert_eq!(
            (done[0].outcome, done[0].reason),
            (Outcome::RailsOnly, Some(reason::DUPLICATE))
        );
        // Mismatch: same entity, different JSON, after the window.
        let b = v(r#"{"character":{"id":"c1","name":"B"}}"#);
        let t2 = t + w * 3;
        assert!(m
            .add(Side::Rails, S, "character", b.clone(), t2, false)
            .is_none());
        assert!(m
            .add(Side::Pgcable, S, "character", a.clone(), t2, false)
            .is_none());
        assert!(m.expire(t2 + w / 2).is_empty());
        let done = m.expire(t2 + w);
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].outcome, Outcome::Mismatch);
        let d = done[0].difference.as_ref().expect("difference");
        assert_eq!(d.path, "$.character.name");
        assert_eq!(d.rails, Some(json!("B")));
        // pgcable-only while Rails was silent on the stream.
        let t3 = t2 + w * 5;
        assert!(m
            .add(
                Side::Pgcable,
                S,
                "characters",
                v(r#"{"characters":"reload"}"#),
                t3,
                false
            )
            .is_none());
        let done = m.expire(t3 + w);
        assert_eq!(
            (done[0].outcome, done[0].reason),
            (Outcome::PgcableOnly, Some(reason::RAILS_SILENT))
        );
        // A no-op save: Rails repeats what pgcable last sent.
        assert!(m
            .add(Side::Rails, S, "character", a.clone(), t3 + w * 3, false)
            .is_none());
        let done = m.expire(t3 + w * 4);
        assert_eq!(
            (done[0].outcome, done[0].reason),
            (Outcome::RailsOnly, Some(reason::NO_OP_SAVE))
        );
        assert_eq!(m.pending(), 0);
    }
}
