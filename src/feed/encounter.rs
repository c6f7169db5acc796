//! Live combat: which active fights a batch of changes touched, and one `{"encounter":…}` per
//! fight per batch (payloads.md §2.1).
//!
//! Owns the fight queue: a fight named by any number of changes that arrive together is
//! rendered once; one that keeps changing is rendered at most every [`HOT_FIGHT`], never with a
//! delay on its first change, and always again after its last change. An encounter is rendered
//! at once but sent only after the row messages of the notifications that named it (the
//! [`Ledger`]), so a client sees `{"character":…}` and its reload before the encounter they
//! belong to, and the render overlaps with sending those.
//! Calls the render station (through the coalescer's snapshot read), the pool and the hub.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool_postgres::ClientWrapper;
use tokio::sync::Notify;
use tokio_postgres::types::{ToSql, Type};
use uuid::Uuid;

use super::coalesce::{reread, Read};
use super::event::Table;
use super::queue::{drive, earliest, Ledger, Queue};
use super::send_encoded;
use crate::render;
use crate::state::State;

/// Least time between two renders of one fight that keeps changing.
pub const HOT_FIGHT: Duration = Duration::from_millis(50);
/// Most fights rendered in one batch.
const BATCH: usize = 100;
/// How often a fight whose render failed (database unreachable) is tried again.
const ATTEMPTS: u8 = 3;

/// What is owed for one fight.
#[derive(Debug, Default, Clone, Copy)]
struct Work {
    /// Send only once the row work up to this [`Ledger`] mark has sent its messages.
    after: u64,
    /// When the oldest change folded in here was written (µs since the epoch).
    since: Option<i64>,
    /// Renders already tried and failed.
    failures: u8,
}

/// The fight queue and its worker.
#[derive(Debug)]
pub struct Encounters {
    queue: Mutex<Queue<Uuid, Work>>,
    wake: Notify,
    ledger: Arc<Ledger>,
    /// Per active fight, the campaign and a hash of the last encounter sent: a render that
    /// finds the same state again (a change already shown by an earlier render) sends nothing,
    /// so each state goes out once.
    last_sent: Mutex<HashMap<Uuid, (Uuid, u64)>>,
}

impl Encounters {
    /// A queue whose worker, spawned here, renders through at most `parallel` pool
    /// connections, each fight once the row work before it in `ledger` is done.
    pub fn start(state: Arc<State>, parallel: usize, ledger: Arc<Ledger>) -> Arc<Encounters> {
        let this = Arc::new(Encounters {
            queue: Mutex::new(Queue::default()),
            wake: Notify::new(),
            ledger,
            last_sent: Mutex::new(HashMap::new()),
        });
        let fights = this.clone();
        let waker = this.clone();
        tokio::spawn(async move {
            let taker = fights.clone();
            drive(
                &waker.wake,
                parallel,
                move || taker.lock().take(BATCH, |_| (), |_| true),
                move |batch: Vec<(Uuid, Work)>| {
                    let fights = fights.clone();
                    let state = state.clone();
                    async move {
                        let retry = process(&state, &fights, &batch).await;
                        fights
                            .lock()
                            .done(batch.iter().map(|(id, _)| *id), HOT_FIGHT);
                        for (id, work) in retry {
                            fights.push_work(id, work);
                        }
                        fights.wake();
                    }
                },
            )
            .await;
        });
        this
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue<Uuid, Work>> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Owes an encounter to each of `fights` (if active when rendered), to be sent once the row
    /// work up to `after` has sent its messages; `since` is when the oldest change was written.
    pub fn push(&self, fights: &[Uuid], after: u64, since: Option<i64>) {
        if fights.is_empty() {
            return;
        }
        for id in fights {
            self.push_work(
                *id,
                Work {
                    after,
                    since,
                    failures: 0,
                },
            );
        }
        self.wake();
    }

    fn push_work(&self, id: Uuid, new: Work) {
        let mut queue = self.lock();
        let (work, made) = queue.entry(id);
        if made {
            *work = new;
        } else {
            // Keep the first mark: waiting for later ones could postpone a busy fight forever,
            // and the render reads the newest committed state anyway.
            work.since = earliest(work.since, new.since);
            work.failures = work.failures.max(new.failures);
        }
    }

    /// Tells the worker that fights may have become ready (row work finished).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Fights waiting or being rendered.
    pub fn backlog(&self) -> usize {
        self.lock().len()
    }
}

/// Renders a batch and sends each active fight's encounter to its campaign. Returns the
/// fights to try again (the read failed).
async fn process(state: &State, fights: &Encounters, batch: &[(Uuid, Work)]) -> Vec<(Uuid, Work)> {
    let ids: Vec<Uuid> = batch.iter().map(|(id, _)| *id).collect();
    let started = std::time::Instant::now();
    let mut loaded = match reread(state, Read::Encounters(&ids)).await {
        Ok(loaded) => loaded,
        Err(e) => {
            let retry: Vec<(Uuid, Work)> = batch
                .iter()
                .filter(|(_, w)| w.failures + 1 < ATTEMPTS)
                .map(|(id, w)| {
                    let mut w = *w;
                    w.failures += 1;
                    w.after = 0;
                    (*id, w)
                })
                .collect();
            tracing::warn!(fights = ids.len(), retrying = retry.len(), error = %e, "encounter render failed");
            return retry;
        }
    };
    state.metrics.encounter_render(started.elapsed());
    // The render read a state at least as new as every change that named these fights; what
    // waits is the send, until the row messages those changes owe have gone out.
    let after = batch.iter().map(|(_, w)| w.after).max().unwrap_or_default();
    fights.ledger.settle(after).await;
    for (id, work) in batch {
        match loaded.rows.remove(id) {
            Some((Some(campaign), Some(payload))) => {
                let mut hasher = DefaultHasher::new();
                payload.hash(&mut hasher);
                let sent = (campaign, hasher.finish());
                let mut last = fights.last_sent.lock().unwrap_or_else(|p| p.into_inner());
                if last.insert(*id, sent) == Some(sent) {
                    state.metrics.encounter_unchanged();
                    continue;
                }
                drop(last);
                let mut message = String::with_capacity(payload.len() + 14);
                message.push_str("{\"encounter\":");
                message.push_str(&payload);
                message.push('}');
                send_encoded(state, &format!("campaign_{campaign}"), Arc::from(message));
                state.metrics.encounter_sent();
                state.metrics.commit_to_send(work.since);
            }
            // Logged by the renderer.
            Some(_) => {}
            // Not active (or gone): no encounter, and nothing to remember.
            None => {
                fights
                    .last_sent
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(id);
            }
        }
    }
    Vec::new()
}

const FIGHTS_OF_CHARACTERS: &str = "SELECT DISTINCT s.fight_id FROM shots s \
     JOIN fights f ON f.id = s.fight_id \
     WHERE s.character_id = ANY($1) AND f.started_at IS NOT NULL AND f.ended_at IS NULL";
const FIGHTS_OF_VEHICLES: &str = "SELECT DISTINCT s.fight_id FROM shots s \
     JOIN fights f ON f.id = s.fight_id \
     WHERE s.vehicle_id = ANY($1) AND f.started_at IS NOT NULL AND f.ended_at IS NULL";

/// The active fights in which these characters or vehicles have a shot.
pub(super) async fn active_fights_of(
    client: &ClientWrapper,
    table: Table,
    ids: &[Uuid],
) -> Result<Vec<Uuid>, tokio_postgres::Error> {
    let sql = match table {
        _ if ids.is_empty() => return Ok(Vec::new()),
        Table::Characters => FIGHTS_OF_CHARACTERS,
        Table::Vehicles => FIGHTS_OF_VEHICLES,
        Table::Fights => return Ok(Vec::new()),
    };
    let params: [&(dyn ToSql + Sync); 1] = [&ids];
    let rows = render::query(client, sql, &[Type::UUID_ARRAY], &params).await?;
    rows.iter().map(|r| r.try_get(0)).collect()
}

/// Queues the encounter of every active fight of every watched campaign: after a gap in the
/// feed or a TRUNCATE of a combat table, any of them may have changed unseen.
pub async fn refresh_watched(state: Arc<State>, encounters: Arc<Encounters>, after: u64) {
    let campaigns: Vec<Uuid> = state
        .hub
        .streams_with_prefix("campaign_")
        .iter()
        .filter_map(|s| s.strip_prefix("campaign_"))
        .filter_map(|c| Uuid::try_parse(c).ok())
        .collect();
    if campaigns.is_empty() {
        return;
    }
    let found = async {
        let client = state.pool.get().await.map_err(|e| e.to_string())?;
        client
            .query(
                "SELECT id FROM fights WHERE campaign_id = ANY($1) \
                 AND started_at IS NOT NULL AND ended_at IS NULL",
                &[&campaigns],
            )
            .await
            .map_err(|e| crate::db::error_text(&e))?
            .iter()
            .map(|r| r.try_get::<_, Uuid>(0).map_err(|e| e.to_string()))
            .collect::<Result<Vec<_>, _>>()
    };
    match found.await {
        Ok(fights) => {
            tracing::info!(fights = fights.len(), "re-rendering active fights");
            encounters.push(&fights, after, None);
        }
        Err(e) => tracing::warn!(error = %e, "cannot list active fights to re-render"),
    }
}
