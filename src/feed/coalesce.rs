//! Row changes → re-reads → messages, with bursts folded together (payloads.md §2).
//!
//! Owns the per-row work queue: at most one re-read of a row in flight and one pending, so a
//! burst of changes to one row costs a few re-reads, and the last message for a row always
//! reflects a committed state at least as new as its last notification. Rows that arrive
//! together are re-read together. The first change to a row is re-read at once; a row that
//! changes again while it is being re-read (a hot row) is re-read at most every [`HOT_ROW`].
//! Calls the render station, the query pool and the hub.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use uuid::Uuid;

use super::encounter::{self, Encounters};
use super::event::{Action, RowChange, Table};
use super::queue::{drive, earliest, Ledger, Queue};
use super::{reload_message, send_encoded};
use crate::render;
use crate::state::State;

/// Most rows re-read in one batch.
const BATCH: usize = 500;
/// Least time between two re-reads of one row that keeps changing.
pub const HOT_ROW: Duration = Duration::from_millis(50);

type Key = (Table, Uuid);

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
    /// A fight ended: `fight_ended` to its campaign and `{"fight":"ended"}` to `fight_<id>`.
    fight_ended: bool,
    /// When the oldest change folded in here was written (µs since the epoch).
    since: Option<i64>,
    /// The [`Ledger`] mark of the push that made this work.
    mark: u64,
}

/// The coalescing queue and its worker.
#[derive(Debug)]
pub struct Coalescer {
    queue: Mutex<Queue<Key, Work>>,
    wake: Notify,
    ledger: Arc<Ledger>,
    encounters: Arc<Encounters>,
}

impl Coalescer {
    /// A queue whose worker, spawned here, re-reads through at most `parallel` pool connections.
    /// Its row work is kept in `ledger`; the fights its changes touch go to `encounters`.
    pub fn start(
        state: Arc<State>,
        parallel: usize,
        ledger: Arc<Ledger>,
        encounters: Arc<Encounters>,
    ) -> Arc<Coalescer> {
        let this = Arc::new(Coalescer {
            queue: Mutex::new(Queue::default()),
            wake: Notify::new(),
            ledger,
            encounters,
        });
        let rows = this.clone();
        let waker = this.clone();
        tokio::spawn(async move {
            let taker = rows.clone();
            drive(
                &waker.wake,
                parallel,
                move || taker.lock().take(BATCH, |k| k.0, |_| true),
                move |batch: Vec<(Key, Work)>| {
                    let rows = rows.clone();
                    let state = state.clone();
                    async move {
                        let Some(((table, _), _)) = batch.first() else {
                            return;
                        };
                        let table = *table;
                        let done: Vec<(Uuid, u64)> =
                            batch.iter().map(|((_, id), w)| (*id, w.mark)).collect();
                        let batch = batch.into_iter().map(|((_, id), w)| (id, w)).collect();
                        process(&state, &rows.encounters, table, batch).await;
                        rows.done(table, &done);
                    }
                },
            )
            .await;
        });
        this
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue<Key, Work>> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds the changes of one statement, written at `at` (µs since the epoch).
    pub fn push(&self, changes: Vec<RowChange>, at: Option<i64>) -> (usize, usize) {
        let mark = self.ledger.next();
        let mut queue = self.lock();
        let (mut added, mut folded) = (0, 0);
        for change in changes {
            if change.new_campaign.is_none() && change.old_campaign.is_none() {
                tracing::debug!(table = change.table.plural(), id = %change.id, "change to a row without a campaign: nothing to send");
                continue;
            }
            let (work, made) = queue.entry((change.table, change.id));
            fold(work, &change);
            work.since = earliest(work.since, at);
            if made {
                work.mark = mark;
                self.ledger.open(mark);
                added += 1;
            } else {
                folded += 1;
            }
        }
        drop(queue);
        self.wake.notify_one();
        (added, folded)
    }

    /// The mark of the latest push: an encounter pushed with it follows that push's messages.
    pub fn mark(&self) -> u64 {
        self.ledger.last()
    }

    fn done(&self, table: Table, rows: &[(Uuid, u64)]) {
        self.lock()
            .done(rows.iter().map(|(id, _)| (table, *id)), HOT_ROW);
        for (_, mark) in rows {
            self.ledger.close(*mark);
        }
        self.wake.notify_one();
        self.encounters.wake();
    }

    /// Rows waiting or being re-read (for tests and metrics).
    pub fn backlog(&self) -> usize {
        self.lock().len()
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
    work.fight_ended |= change.ended;
}

/// Re-reads a batch and sends, per campaign, each payload and then one reload; then finds the
/// fights the batch touched and hands them to the encounter queue.
///
/// A row is re-read only if its campaign as last notified has subscribers now: its payload
/// goes nowhere else. If the row has moved since, the move has a notification of its own,
/// folded into the row's next re-read. A subscriber that arrives after this check missed a
/// change committed before it subscribed, as with Rails (ActionCable has no replay); it still
/// gets the reload, which costs nothing when nobody listens.
async fn process(
    state: &State,
    encounters: &Encounters,
    table: Table,
    mut batch: Vec<(Uuid, Work)>,
) {
    let started = Instant::now();
    // Characters and vehicles that still exist may be in active fights, watched or not (a
    // fight's campaign is usually, but not always, the row's).
    let combatants: Vec<Uuid> = if table == Table::Fights {
        Vec::new()
    } else {
        batch
            .iter()
            .filter(|(_, w)| w.render)
            .map(|(id, _)| *id)
            .collect()
    };
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
    let mut loaded = Loaded::default();
    if !wanted.is_empty() {
        let read = Read::Rows {
            table,
            render: &wanted,
        };
        match reread(state, read).await {
            Ok(found) => loaded = found,
            Err(e) => {
                // Without the rows we can't build payloads; a reload makes clients refetch, so
                // nothing committed is lost to them.
                tracing::warn!(table = table.plural(), rows = wanted.len(), error = %e, "re-read failed; sending reloads only");
            }
        }
        state.metrics.reread(started.elapsed());
    }
    let mut rendered = loaded.rows;

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
        if work.fight_ended {
            fight_ended(state, *id, rendered.get(id));
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

    // The encounters follow this batch's messages: the batch's marks stay open until the
    // caller's `done`, which the encounter queue waits for.
    let mark = batch.iter().map(|(_, w)| w.mark).max().unwrap_or_default();
    let since = batch.iter().filter_map(|(_, w)| w.since).min();
    let fights: Vec<Uuid> = if table == Table::Fights {
        // A fight changed: its own encounter, if it is active (and watched: its campaign is
        // known here, and an encounter goes nowhere else).
        batch
            .iter()
            .filter(|(_, w)| {
                w.campaign
                    .is_some_and(|c| state.hub.is_watched(&format!("campaign_{c}")))
            })
            .map(|(id, _)| *id)
            .collect()
    } else {
        // Off the latency path: asked after this batch's messages went out.
        match active_fights_of(state, table, &combatants).await {
            Ok(fights) => fights,
            Err(e) => {
                tracing::warn!(table = table.plural(), error = %e, "cannot find the fights these rows are in; their encounters wait for the next change");
                Vec::new()
            }
        }
    };
    encounters.push(&fights, mark, since);
}

/// `{"type":"fight_ended",…}` to the fight's campaign (when it was re-read: that is when its
/// campaign is watched and the row still exists), then `{"fight":"ended"}` to `fight_<id>`.
fn fight_ended(state: &State, id: Uuid, rendered: Option<&(Option<Uuid>, Option<String>)>) {
    if let Some((Some(campaign), Some(payload))) = rendered {
        match render::fight_name(payload) {
            Some(name) => {
                let message =
                    format!(r#"{{"type":"fight_ended","fight_id":"{id}","fight_name":{name}}}"#);
                send_encoded(state, &format!("campaign_{campaign}"), Arc::from(message));
            }
            None => tracing::error!(%id, "rendered fight has no name field: fight_ended not sent"),
        }
    }
    send_encoded(
        state,
        &format!("fight_{id}"),
        Arc::from(r#"{"fight":"ended"}"#),
    );
}

/// What one snapshot read is for.
#[derive(Clone, Copy)]
pub(super) enum Read<'a> {
    /// Re-read and render rows of `table`.
    Rows { table: Table, render: &'a [Uuid] },
    /// Render the encounters of these fights (inactive ones are left out).
    Encounters(&'a [Uuid]),
}

/// What a snapshot read found.
#[derive(Debug, Default)]
pub(super) struct Loaded {
    /// Row (or fight) id → (its campaign now, its payload if it rendered).
    pub(super) rows: HashMap<Uuid, (Option<Uuid>, Option<String>)>,
}

/// Reads in one snapshot, pipelined: one round trip once the statements are cached.
pub(super) async fn reread(state: &State, read: Read<'_>) -> Result<Loaded, String> {
    let client = state.pool.get().await.map_err(|e| e.to_string())?;
    let mut loaded = snapshot_load(state, &client, read).await;
    if matches!(&loaded, Err(Failure::Query(e)) if render::stale_statement(e)) {
        // A schema change invalidated a statement this connection prepared (or the server
        // forgot it): prepare afresh and try once more.
        tracing::info!("re-read statements invalidated; preparing them again");
        state.metrics.statements_reprepared();
        client.statement_cache.clear();
        loaded = snapshot_load(state, &client, read).await;
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
    let mut rows = HashMap::with_capacity(ok.len() + failed.len());
    for r in ok {
        rows.insert(r.id, (r.campaign_id, Some(r.payload)));
    }
    for (id, campaign) in failed {
        rows.insert(id, (campaign, None));
    }
    Ok(Loaded { rows })
}

/// Why [`snapshot_load`] failed.
enum Failure {
    /// `BEGIN` or a query failed; the transaction was rolled back.
    Query(tokio_postgres::Error),
    /// The `ROLLBACK` after a failure failed too: the connection's state is unknown.
    End(tokio_postgres::Error),
}

type Rendering = (Vec<render::Rendered>, render::Failed);

/// Loads in one snapshot, so a payload never mixes two committed states. `BEGIN` and the
/// queries go out together (tokio-postgres sends a request when its future is first polled,
/// and `join` polls `BEGIN` first), so a read whose statements are cached costs one round
/// trip. On success the transaction is left open for the caller to `COMMIT`.
async fn snapshot_load(
    state: &State,
    client: &deadpool_postgres::ClientWrapper,
    read: Read<'_>,
) -> Result<Rendering, Failure> {
    let began = client.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY");
    let result = match read {
        Read::Rows { table, render: ids } => {
            let (began, rows) = tokio::join!(
                began,
                render::load(client, render_table(table), ids, &state.render)
            );
            began.and(rows)
        }
        Read::Encounters(ids) => {
            let (began, rows) =
                tokio::join!(began, render::load_encounters(client, ids, &state.render));
            began.and(rows)
        }
    };
    // Rows read outside the snapshot (BEGIN failed) are not used either.
    match result {
        Ok(r) => Ok(r),
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

/// The active fights these characters or vehicles have a shot in (none for fights).
async fn active_fights_of(state: &State, table: Table, ids: &[Uuid]) -> Result<Vec<Uuid>, String> {
    if ids.is_empty() || table == Table::Fights {
        return Ok(Vec::new());
    }
    let client = state.pool.get().await.map_err(|e| e.to_string())?;
    encounter::active_fights_of(&client, table, ids)
        .await
        .map_err(|e| crate::db::error_text(&e))
}
