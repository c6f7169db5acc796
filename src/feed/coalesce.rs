//! Row changes → re-reads → messages, with bursts folded together (payloads.md §2).
//!
//! Owns the per-row work queue: at most one re-read of a row in flight and one pending, so a
//! burst of changes to one row costs a few re-reads, and the last message for a row always
//! reflects a committed state at least as new as its last notification. Rows that arrive
//! together are re-read together. The first change to a row is re-read at once; a row that
//! changes again while it is being re-read (a hot row) is re-read at most every [`HOT_ROW`].
//! Calls the render station, the query pool and the hub.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, Semaphore};
use uuid::Uuid;

use super::event::{Action, RowChange, Table};
use super::{reload_message, send_encoded};
use crate::render;
use crate::state::State;

/// Most rows re-read in one batch.
const BATCH: usize = 500;
/// Least time between two re-reads of one row that keeps changing.
pub const HOT_ROW: Duration = Duration::from_millis(50);

type Key = (Table, Uuid);
/// Rows of one table to re-read together, with what each is owed.
type Batch = (Table, Vec<(Uuid, Work)>);

/// What is owed to subscribers for one row.
#[derive(Debug, Default, Clone)]
struct Work {
    /// Re-read and send the payload.
    render: bool,
    /// The row's campaign as last notified (gets the reload if the row is gone).
    campaign: Option<Uuid>,
    /// Campaigns the row left (moves, deletes): they get a reload.
    left: BTreeSet<Uuid>,
    /// A fight changed more than `updated_at`: `{"fight":"updated"}` to `fight_<id>`.
    fight_updated: bool,
    /// When the oldest change folded in here was written (µs since the epoch).
    since: Option<i64>,
}

#[derive(Debug, Default)]
struct Queue {
    pending: HashMap<Key, Work>,
    order: VecDeque<Key>,
    in_flight: HashSet<Key>,
    /// Hot rows and when they may be re-read again.
    not_before: HashMap<Key, Instant>,
}

/// The coalescing queue and its worker.
#[derive(Debug)]
pub struct Coalescer {
    queue: Mutex<Queue>,
    wake: Notify,
}

impl Coalescer {
    /// A queue whose worker, spawned here, re-reads through at most `parallel` pool connections.
    pub fn start(state: Arc<State>, parallel: usize) -> Arc<Coalescer> {
        let this = Arc::new(Coalescer {
            queue: Mutex::new(Queue::default()),
            wake: Notify::new(),
        });
        tokio::spawn(worker(
            this.clone(),
            state,
            Arc::new(Semaphore::new(parallel.max(1))),
        ));
        this
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds the changes of one statement, written at `at` (µs since the epoch).
    pub fn push(&self, changes: Vec<RowChange>, at: Option<i64>) -> (usize, usize) {
        let mut queue = self.lock();
        let (mut added, mut folded) = (0, 0);
        for change in changes {
            if change.new_campaign.is_none() && change.old_campaign.is_none() {
                tracing::debug!(table = change.table.plural(), id = %change.id, "change to a row without a campaign: nothing to send");
                continue;
            }
            let key = (change.table, change.id);
            let is_new = !queue.pending.contains_key(&key);
            let work = queue.pending.entry(key).or_default();
            fold(work, &change);
            work.since = match (work.since, at) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            if is_new {
                queue.order.push_back(key);
                added += 1;
            } else {
                folded += 1;
            }
        }
        drop(queue);
        self.wake.notify_one();
        (added, folded)
    }

    /// Takes the next batch: rows of one table that have no re-read in flight and are not
    /// cooling down. `Err` holds when the next cooling row becomes ready, if any.
    fn next_batch(&self) -> Result<Batch, Option<Instant>> {
        let mut queue = self.lock();
        let now = Instant::now();
        let Queue {
            pending,
            order,
            in_flight,
            not_before,
        } = &mut *queue;
        not_before.retain(|_, t| *t > now);
        let ready = |k: &Key| !in_flight.contains(k) && !not_before.contains_key(k);
        let Some(table) = order.iter().find(|k| ready(k)).map(|k| k.0) else {
            return Err(not_before.values().min().copied());
        };
        let mut batch = Vec::new();
        order.retain(|key| {
            if batch.len() >= BATCH || key.0 != table || !ready(key) {
                return true;
            }
            if let Some(work) = pending.remove(key) {
                batch.push((key.1, work));
            }
            false
        });
        in_flight.extend(batch.iter().map(|(id, _)| (table, *id)));
        Ok((table, batch))
    }

    fn done(&self, table: Table, ids: &[Uuid]) {
        let mut queue = self.lock();
        let later = Instant::now() + HOT_ROW;
        for id in ids {
            let key = (table, *id);
            queue.in_flight.remove(&key);
            if queue.pending.contains_key(&key) {
                queue.not_before.insert(key, later);
            }
        }
        drop(queue);
        self.wake.notify_one();
    }

    /// Rows waiting or being re-read (for tests and metrics).
    pub fn backlog(&self) -> usize {
        let q = self.lock();
        q.pending.len() + q.in_flight.len()
    }
}

fn fold(work: &mut Work, change: &RowChange) {
    match change.action {
        Action::Insert | Action::Update | Action::Touch => {
            if let Some(old) = change.old_campaign {
                if Some(old) != change.new_campaign {
                    work.left.insert(old);
                }
            }
            work.render |= change.new_campaign.is_some();
            if let (Some(prev), true) = (work.campaign, work.campaign != change.new_campaign) {
                work.left.insert(prev);
            }
            work.campaign = change.new_campaign;
        }
        Action::Delete => {
            if let Some(old) = change.old_campaign {
                work.left.insert(old);
            }
            if let Some(prev) = work.campaign.take() {
                work.left.insert(prev);
            }
            work.render = false;
        }
    }
    work.fight_updated |= change.table == Table::Fights && change.action == Action::Update;
}

async fn worker(rows: Arc<Coalescer>, state: Arc<State>, permits: Arc<Semaphore>) {
    let mut cooling: Option<Instant> = None;
    loop {
        match cooling {
            Some(at) => {
                tokio::select! {
                    _ = rows.wake.notified() => {}
                    _ = tokio::time::sleep_until(at.into()) => {}
                }
            }
            None => rows.wake.notified().await,
        }
        loop {
            let Ok(permit) = permits.clone().acquire_owned().await else {
                return;
            };
            let (table, batch) = match rows.next_batch() {
                Ok(b) => b,
                Err(next) => {
                    cooling = next;
                    break;
                }
            };
            let rows = rows.clone();
            let state = state.clone();
            tokio::spawn(async move {
                let ids: Vec<Uuid> = batch.iter().map(|(id, _)| *id).collect();
                process(&state, table, batch).await;
                rows.done(table, &ids);
                drop(permit);
            });
        }
    }
}

/// Re-reads a batch and sends, per campaign, each payload and then one reload.
///
/// A row is re-read only if its campaign as last notified has subscribers now: its payload
/// goes nowhere else. If the row has moved since, the move has a notification of its own,
/// folded into the row's next re-read. A subscriber that arrives after this check missed a
/// change committed before it subscribed, as with Rails (ActionCable has no replay); it still
/// gets the reload, which costs nothing when nobody listens.
async fn process(state: &State, table: Table, mut batch: Vec<(Uuid, Work)>) {
    let started = Instant::now();
    let mut watched: HashMap<Uuid, bool> = HashMap::new();
    let mut skipped = 0;
    for (_, work) in batch.iter_mut().filter(|(_, w)| w.render) {
        let campaign_watched = work.campaign.is_some_and(|c| {
            *watched
                .entry(c)
                .or_insert_with(|| state.hub.is_watched(&format!("campaign_{c}")))
        });
        if !campaign_watched {
            // Nobody would receive its payload: no re-read and no latency sample; the reload
            // below still goes (to nobody, at no cost).
            work.render = false;
            work.since = None;
            skipped += 1;
        }
    }
    if skipped > 0 {
        state.metrics.rereads_skipped(skipped);
    }
    let wanted: Vec<Uuid> = batch
        .iter()
        .filter(|(_, w)| w.render)
        .map(|(id, _)| *id)
        .collect();
    let mut rendered: HashMap<Uuid, (Option<Uuid>, Option<String>)> = HashMap::new();
    if !wanted.is_empty() {
        match reread(state, table, &wanted).await {
            Ok(found) => rendered = found,
            Err(e) => {
                // Without the rows we can't build payloads; a reload makes clients refetch, so
                // nothing committed is lost to them.
                tracing::warn!(table = table.plural(), rows = wanted.len(), error = %e, "re-read failed; sending reloads only");
            }
        }
        state.metrics.reread(started.elapsed());
    }

    // Campaign → payloads, in batch order; then every campaign that is owed a reload.
    let mut payloads: Vec<(Uuid, Arc<str>)> = Vec::new();
    let mut reloads: Vec<Uuid> = Vec::new();
    let singular = table.singular();
    for (id, work) in &batch {
        if work.fight_updated {
            send_encoded(
                state,
                &format!("fight_{id}"),
                Arc::from(r#"{"fight":"updated"}"#),
            );
        }
        let mut owed: Vec<Uuid> = work.left.iter().copied().collect();
        match rendered.remove(id) {
            Some((Some(campaign), Some(payload))) => {
                let mut message = String::with_capacity(payload.len() + singular.len() + 5);
                message.push_str("{\"");
                message.push_str(singular);
                message.push_str("\":");
                message.push_str(&payload);
                message.push('}');
                payloads.push((campaign, Arc::from(message)));
                owed.retain(|c| *c != campaign);
                owed.push(campaign);
            }
            // Exists but could not be rendered: logged by the renderer; the reload still goes.
            Some((Some(campaign), None)) => owed.push(campaign),
            // Moved out of every campaign.
            Some((None, _)) => {}
            // Gone before we could read it, the read failed, or nobody watched its campaign.
            None => owed.extend(work.campaign),
        }
        for c in owed {
            if !reloads.contains(&c) {
                reloads.push(c);
            }
        }
    }
    for (campaign, message) in payloads {
        send_encoded(state, &format!("campaign_{campaign}"), message);
    }
    let reload = reload_message(table);
    for campaign in reloads {
        send_encoded(state, &format!("campaign_{campaign}"), reload.clone());
    }
    for (_, work) in &batch {
        state.metrics.commit_to_send(work.since);
    }
}

/// Row id → (its campaign now, its payload if it rendered).
async fn reread(
    state: &State,
    table: Table,
    ids: &[Uuid],
) -> Result<HashMap<Uuid, (Option<Uuid>, Option<String>)>, String> {
    let client = state.pool.get().await.map_err(|e| e.to_string())?;
    let mut loaded = snapshot_load(state, &client, table, ids).await;
    if matches!(&loaded, Err(Failure::Query(e)) if render::stale_statement(e)) {
        // A schema change invalidated a statement this connection prepared (or the server
        // forgot it): prepare afresh and try once more.
        tracing::info!(
            table = table.plural(),
            "re-read statements invalidated; preparing them again"
        );
        state.metrics.statements_reprepared();
        client.statement_cache.clear();
        loaded = snapshot_load(state, &client, table, ids).await;
    }
    let (ok, failed) = match loaded {
        Ok(rows) => rows,
        Err(Failure::Query(e)) => return Err(crate::db::error_text(&e)),
        Err(Failure::End(e)) => {
            // Don't hand a connection stuck in a transaction back to the pool.
            let _ = deadpool_postgres::Object::take(client);
            return Err(crate::db::error_text(&e));
        }
    };
    // The snapshot is read only and already read: end it off the latency path. The connection
    // goes back to the pool once COMMIT is answered (or is dropped if that fails).
    tokio::spawn(async move {
        if client.batch_execute("COMMIT").await.is_err() {
            let _ = deadpool_postgres::Object::take(client);
        }
    });
    let mut out = HashMap::with_capacity(ids.len());
    for r in ok {
        out.insert(r.id, (r.campaign_id, Some(r.payload)));
    }
    for (id, campaign) in failed {
        out.insert(id, (campaign, None));
    }
    Ok(out)
}

/// Why [`snapshot_load`] failed.
enum Failure {
    /// `BEGIN` or a query failed; the transaction was rolled back.
    Query(tokio_postgres::Error),
    /// The `ROLLBACK` after a failure failed too: the connection's state is unknown.
    End(tokio_postgres::Error),
}

/// Loads the rows in one snapshot, so a payload never mixes two committed states. `BEGIN` and
/// the queries go out together (tokio-postgres sends a request when its future is first
/// polled, and `join` polls `BEGIN` first), so a batch whose statements are cached costs one
/// round trip. On success the transaction is left open for the caller to `COMMIT`.
async fn snapshot_load(
    state: &State,
    client: &deadpool_postgres::ClientWrapper,
    table: Table,
    ids: &[Uuid],
) -> Result<(Vec<render::Rendered>, render::Failed), Failure> {
    let (began, loaded) = futures_util::future::join(
        client.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"),
        render::load(client, render_table(table), ids, &state.render),
    )
    .await;
    // Rows read outside the snapshot (BEGIN failed) are not used either.
    match began.and(loaded) {
        Ok(rows) => Ok(rows),
        Err(e) => match client.batch_execute("ROLLBACK").await {
            Ok(()) => Err(Failure::Query(e)),
            Err(end) => Err(Failure::End(end)),
        },
    }
}

fn render_table(table: Table) -> render::Table {
    match table {
        Table::Characters => render::Table::Characters,
        Table::Vehicles => render::Table::Vehicles,
        Table::Fights => render::Table::Fights,
    }
}
