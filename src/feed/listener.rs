//! The one LISTEN connection: notifications in, reconnect with backoff, gap → reloads.
//!
//! Owns the dedicated connection (`application_name` `pgcable-listener`). It never waits on
//! anything downstream: notifications go into an unbounded queue, so Postgres's NOTIFY queue
//! drains whatever clients do. Calls only `db` for its connection settings and the triggers
//! version check.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, NoTls};

use super::event::CHANNEL;
use crate::db;
use crate::shutdown::Shutdown;
use crate::state::State;

/// What the listener hands the dispatcher, in arrival order.
#[derive(Debug)]
pub enum Item {
    /// Notification payloads on channel `pgcable` that arrived together (one transaction's
    /// usually arrive in one read), in order.
    Notifications(Vec<String>),
    /// The listener was reconnected: anything in between was missed.
    Gap,
}

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// How often the listener proves its connection is alive.
const HEARTBEAT: Duration = Duration::from_secs(2);

/// Runs until shutdown: connect, LISTEN, forward, and on any failure start again.
pub async fn run(state: Arc<State>, out: mpsc::UnboundedSender<Item>, mut shutdown: Shutdown) {
    let mut backoff = BACKOFF_MIN;
    let mut connected_before = false;
    let mut logged_down = false;
    loop {
        let session = tokio::select! {
            _ = shutdown.wait() => return,
            s = listen_once(&state, &out, connected_before) => s,
        };
        state.listening.store(false, Ordering::Relaxed);
        match session {
            Ok(()) => {
                connected_before = true;
                backoff = BACKOFF_MIN;
                logged_down = false;
                tracing::warn!("listener connection lost; reconnecting");
            }
            Err(e) => {
                if !logged_down {
                    tracing::warn!(error = %e, "listener cannot connect; retrying with backoff");
                    logged_down = true;
                } else {
                    tracing::debug!(error = %e, "listener still cannot connect");
                }
            }
        }
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// One connection's life. `Err` if it never got to LISTEN; `Ok` once it was listening and then
/// was lost.
async fn listen_once(
    state: &Arc<State>,
    out: &mpsc::UnboundedSender<Item>,
    reconnect: bool,
) -> Result<(), String> {
    let cfg = db::config(&state.config.database_url, db::LISTENER_APPLICATION_NAME)?;
    let (client, mut connection) = cfg.connect(NoTls).await.map_err(|e| e.to_string())?;
    let forward = out.clone();
    let mut driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        let mut next = messages.next().await;
        loop {
            // Everything already read goes to the dispatcher as one item, so that it sees a
            // transaction's notifications together.
            let mut group = Vec::new();
            let end = loop {
                match next {
                    Some(Ok(AsyncMessage::Notification(n))) => group.push(n.payload().to_string()),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "listener connection error");
                        break true;
                    }
                    None => break true,
                }
                match messages.next().now_or_never() {
                    Some(message) => next = message,
                    None => break false,
                }
            };
            if !group.is_empty() && forward.send(Item::Notifications(group)).is_err() {
                return;
            }
            if end {
                return;
            }
            next = messages.next().await;
        }
    });
    let listen = tokio::time::timeout(
        Duration::from_secs(10),
        client.batch_execute(&format!("LISTEN {CHANNEL}")),
    )
    .await;
    match listen {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            driver.abort();
            return Err(e.to_string());
        }
        Err(_) => {
            driver.abort();
            return Err("LISTEN timed out".into());
        }
    }
    let current = crate::triggers::is_usable(&client).await;
    state.triggers_current.store(current, Ordering::Relaxed);
    state.listening.store(true, Ordering::Relaxed);
    if reconnect {
        state.metrics.listener_reconnect();
        tracing::info!("listener reconnected; sending reloads for the gap");
        let _ = out.send(Item::Gap);
    } else {
        tracing::info!("listening on channel {CHANNEL}");
    }
    // Prove the connection is alive now and then: a server that vanished without closing the
    // socket would otherwise leave us listening to nothing.
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    heartbeat.tick().await;
    loop {
        tokio::select! {
            _ = &mut driver => return Ok(()),
            _ = heartbeat.tick() => {
                let alive = tokio::time::timeout(HEARTBEAT * 2, client.simple_query("SELECT 1")).await;
                if !matches!(alive, Ok(Ok(_))) {
                    driver.abort();
                    return Ok(());
                }
            }
        }
    }
}
