//! The database side: notifications in, encoded messages to the hub out.
//!
//! [`listener`] holds the LISTEN connection; [`event`] decodes payloads; this module dispatches
//! them in arrival order (which is commit order); [`coalesce`] turns row changes into re-reads,
//! and [`encounter`] the fights they touch into encounters ([`queue`] is the machinery both
//! share). Calls the render station (through `coalesce`), the query pool and the hub.

pub mod access;
pub mod coalesce;
pub mod encounter;
pub mod event;
pub mod listener;
pub mod queue;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use uuid::Uuid;

use self::coalesce::Coalescer;
use self::encounter::Encounters;
use self::event::{AccessChange, Action, Event, Table};
use self::listener::Item;
use self::queue::earliest;
use crate::cable::frame::DisconnectReason;
use crate::render::json::reencode;
use crate::state::State;

/// Reads items from the listener and acts on each, in order, until the listener is gone.
///
/// The fights that a group of notifications names (combat-table changes) are owed encounters
/// that follow the group's row messages: they are queued at the group's end.
pub async fn dispatch(
    state: Arc<State>,
    mut items: mpsc::UnboundedReceiver<Item>,
    rows: Arc<Coalescer>,
    encounters: Arc<Encounters>,
) {
    while let Some(item) = items.recv().await {
        match item {
            Item::Gap => {
                reload_everything(&state);
                tokio::spawn(encounter::refresh_watched(
                    state.clone(),
                    encounters.clone(),
                    rows.mark(),
                ));
            }
            Item::Notifications(group) => {
                let events: Vec<Result<Event, String>> =
                    group.iter().map(|p| event::parse(p)).collect();
                // Revocations first: nothing committed with or after them may reach what they
                // forbid (a group is normally one transaction's notifications).
                let changes = access_changes(&events);
                if !changes.is_empty() {
                    access::apply(&state, &changes).await;
                }
                let mut fights: Vec<Uuid> = Vec::new();
                let mut since: Option<i64> = None;
                for event in events {
                    notification(&state, &rows, &encounters, event, &mut fights, &mut since).await;
                }
                fights.sort_unstable();
                fights.dedup();
                encounters.push(&fights, rows.mark(), since);
            }
        }
    }
}

/// The access changes among `events`: the reported ones, and fights that moved to another
/// campaign (their FightChannel subscribers are decided again).
fn access_changes(events: &[Result<Event, String>]) -> Vec<AccessChange> {
    let mut out = Vec::new();
    for event in events {
        match event {
            Ok(Event::Access(changes)) => out.extend(changes.iter().cloned()),
            Ok(Event::Rows(rows, _)) => out.extend(
                rows.iter()
                    .filter(|r| {
                        r.table == Table::Fights
                            && r.action == Action::Update
                            && r.old_campaign != r.new_campaign
                    })
                    .map(|r| AccessChange::FightMoved(r.id)),
            ),
            _ => {}
        }
    }
    out
}

/// Acts on one notification; adds the fights it names to `fights`.
async fn notification(
    state: &Arc<State>,
    rows: &Coalescer,
    encounters: &Arc<Encounters>,
    event: Result<Event, String>,
    fights: &mut Vec<Uuid>,
    since: &mut Option<i64>,
) {
    state.metrics.notification();
    match event {
        Ok(Event::Broadcast {
            stream,
            message,
            at,
        }) => {
            broadcast(state, &stream, &message);
            state.metrics.commit_to_send(at);
        }
        Ok(Event::Stored { id, at }) => stored_broadcast(state, id, at).await,
        Ok(Event::Disconnect { user, reconnect }) => {
            let n = state
                .hub
                .disconnect_user(user, DisconnectReason::Remote, reconnect);
            tracing::info!(%user, connections = n, "disconnect requested from SQL");
        }
        Ok(Event::Truncated(table, at)) => {
            let n = reload_campaigns(state, &[table]);
            tracing::info!(
                table = table.plural(),
                campaigns = n,
                "table truncated: reloads sent"
            );
            state.metrics.commit_to_send(at);
        }
        Ok(Event::Rows(changes, at)) => {
            let (_, folded) = rows.push(changes, at);
            state.metrics.coalesced(folded as u64);
        }
        Ok(Event::Fights(ids, at)) => {
            fights.extend(ids);
            *since = earliest(*since, at);
        }
        // Applied before the group's other notifications.
        Ok(Event::Access(_)) => {}
        Ok(Event::CombatTruncated(_)) => {
            tracing::info!("a combat table was truncated: re-rendering watched active fights");
            tokio::spawn(encounter::refresh_watched(
                state.clone(),
                encounters.clone(),
                rows.mark(),
            ));
        }
        Err(e) => tracing::warn!(error = %e, "notification ignored"),
    }
}

/// Encodes a message the Rails way once and hands it to the hub.
pub fn broadcast(state: &State, stream: &str, message_json: &str) {
    let mut encoded = String::with_capacity(message_json.len() + 16);
    if let Err(e) = reencode(&mut encoded, message_json) {
        tracing::warn!(%stream, error = %e, "broadcast dropped: message is not valid JSON");
        return;
    }
    send_encoded(state, stream, Arc::from(encoded));
}

/// Hands an already encoded message to the hub.
pub fn send_encoded(state: &State, stream: &str, message: Arc<str>) {
    let frames = state.hub.broadcast(stream, &message);
    state.metrics.broadcast(frames);
}

async fn stored_broadcast(state: &State, id: i64, at: Option<i64>) {
    for attempt in 0..3 {
        match fetch_stored(state, id).await {
            Ok(Some((stream, message))) => {
                broadcast(state, &stream, &message);
                state.metrics.commit_to_send(at);
                return;
            }
            Ok(None) => {
                tracing::warn!(id, "stored broadcast not found (already cleaned up?)");
                return;
            }
            Err(e) => {
                tracing::warn!(id, attempt, error = %e, "stored broadcast not readable yet");
                tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
            }
        }
    }
    tracing::error!(id, "stored broadcast lost: database unreachable");
}

async fn fetch_stored(state: &State, id: i64) -> Result<Option<(String, String)>, String> {
    let client = state.pool.get().await.map_err(|e| e.to_string())?;
    let row = client
        .query_opt(
            "SELECT stream, message::text FROM pgcable.messages WHERE id = $1",
            &[&id],
        )
        .await
        .map_err(|e| e.to_string())?;
    Ok(row.map(|r| (r.get(0), r.get(1))))
}

/// After a gap in the feed, every campaign with subscribers reloads every table.
fn reload_everything(state: &State) {
    let n = reload_campaigns(state, &Table::ALL);
    tracing::info!(campaigns = n, "gap reloads sent");
}

/// Sends `{"<table>":"reload"}` for each table to every watched campaign; returns how many.
fn reload_campaigns(state: &State, tables: &[Table]) -> usize {
    let streams = state.hub.streams_with_prefix("campaign_");
    // Only `campaign_<uuid>`, not the per-client `campaign_<uuid>_<client>` streams.
    let campaigns: Vec<&String> = streams
        .iter()
        .filter(|s| s.len() == "campaign_".len() + 36)
        .collect();
    for table in tables {
        let message = reload_message(*table);
        for stream in &campaigns {
            send_encoded(state, stream, message.clone());
        }
    }
    campaigns.len()
}

/// `{"<plural>":"reload"}`.
pub fn reload_message(table: Table) -> Arc<str> {
    Arc::from(format!(r#"{{"{}":"reload"}}"#, table.plural()))
}

/// Deletes stored broadcasts every relay has had time to read.
pub async fn clean_stored(state: Arc<State>, mut shutdown: crate::shutdown::Shutdown) {
    let mut every = tokio::time::interval(Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = every.tick() => {}
        }
        let Ok(client) = state.pool.get().await else {
            continue;
        };
        if let Err(e) = client
            .execute(
                "DELETE FROM pgcable.messages WHERE created_at < now() - interval '5 minutes'",
                &[],
            )
            .await
        {
            tracing::debug!(error = %e, "stored broadcast cleanup failed");
        }
    }
}
