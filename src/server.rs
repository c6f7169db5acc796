//! Wires the stations together and owns the relay's life: start, serve, shut down.
//!
//! Calls every station once to start it; afterwards only the shutdown signal flows from here.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::cable::auth::AuthPolicy;
use crate::cable::channels::Access;
use crate::cable::connection::unix_now;
use crate::cable::frame::DisconnectReason;
use crate::cable::presence::Presence;
use crate::config::Config;
use crate::feed::coalesce::Coalescer;
use crate::feed::encounter::Encounters;
use crate::feed::queue::Ledger;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::render::RenderConfig;
use crate::shutdown::{self, Shutdown, Trigger};
use crate::state::State;
use crate::{db, feed, http, triggers};

/// Seconds between pings (protocol.md §3).
const PING_EVERY: Duration = Duration::from_secs(3);

/// A running relay.
#[derive(Debug)]
pub struct Server {
    /// The address it listens on.
    pub addr: SocketAddr,
    /// Shared state (for tests and tools).
    pub state: Arc<State>,
    trigger: Trigger,
    task: JoinHandle<()>,
}

/// Starts the relay: checks the database, binds, and spawns every station.
/// Errors are one line a person can act on.
pub async fn start(config: Config) -> Result<Server, String> {
    let pool = db::pool(&config.database_url, config.pool_size)?;
    db::check(&pool, &config.database_url).await?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AddrInUse => format!(
                "cannot listen on {}: the address is already in use; stop the other process or set PGCABLE_LISTEN",
                config.listen
            ),
            _ => format!("cannot listen on {}: {e}", config.listen),
        })?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("cannot read the bound address: {e}"))?;
    if config.allowed_origins.is_none() {
        tracing::warn!(
            "ALLOWED_ORIGINS is not set: WebSocket connections from every origin are accepted"
        );
    }

    let current = match pool.get().await {
        Ok(client) => triggers::is_usable(&client).await,
        Err(_) => false,
    };
    let metrics = Metrics::install();
    let hub = Arc::new(Hub::new());
    let (pings, _) = watch::channel(unix_now());
    let presence = Presence::start(pool.clone(), hub.clone(), config.imagekit_endpoint.clone());
    let state = Arc::new(State {
        auth: AuthPolicy {
            secret: config.jwt_secret.clone(),
            require_exp: config.require_exp,
            check_jti: config.check_jti,
            require_active_user: config.require_active_user,
        },
        access: Access::new(pool.clone(), config.access_cache_ttl, config.pool_size / 2),
        render: RenderConfig {
            imagekit_endpoint: config.imagekit_endpoint.clone(),
        },
        pool,
        hub,
        presence,
        metrics,
        pings,
        listening: AtomicBool::new(false),
        triggers_current: AtomicBool::new(current),
        config,
    });

    let (trigger, shutdown) = shutdown::channel();
    let (items_tx, items_rx) = mpsc::unbounded_channel();
    // Leave one pool connection for authorization and access checks.
    let parallel = state.config.pool_size.saturating_sub(1).max(1);
    let ledger = Arc::new(Ledger::default());
    let encounters = Encounters::start(state.clone(), parallel, ledger.clone());
    let rows = Coalescer::start(state.clone(), parallel, ledger, encounters.clone());
    tokio::spawn(feed::listener::run(
        state.clone(),
        items_tx,
        shutdown.clone(),
    ));
    tokio::spawn(feed::dispatch(state.clone(), items_rx, rows, encounters));
    tokio::spawn(feed::clean_stored(state.clone(), shutdown.clone()));
    tokio::spawn(tick(state.clone(), shutdown.clone()));
    tokio::spawn(watch_queue(state.clone(), shutdown.clone()));

    let serve = http::serve(listener, state.clone(), shutdown.clone());
    let task = tokio::spawn(drive(state.clone(), serve, shutdown));
    tracing::info!(%addr, "listening on {addr}");
    Ok(Server {
        addr,
        state,
        trigger,
        task,
    })
}

async fn drive(
    state: Arc<State>,
    serve: impl std::future::Future<Output = ()>,
    mut shutdown: Shutdown,
) {
    tokio::pin!(serve);
    // Both fire on the same signal; remember whether the server already finished, because
    // polling a finished `async fn` again panics.
    let served = tokio::select! {
        _ = &mut serve => true,
        _ = shutdown.wait() => false,
    };
    // Stop accepting first (the listener is dropped by the graceful server), then tell every
    // client to come back later and wait for them to go.
    state
        .hub
        .disconnect_all(DisconnectReason::ServerRestart, true);
    let deadline = tokio::time::Instant::now() + state.config.shutdown_timeout;
    while state.hub.session_count() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if !served {
        let _ = tokio::time::timeout_at(deadline, serve).await;
    }
    let left = state.hub.session_count();
    if left > 0 {
        tracing::warn!(
            connections = left,
            "shutdown timeout: closing the remaining connections"
        );
    }
}

impl Server {
    /// Asks the relay to stop (as SIGTERM does).
    pub fn shutdown(&self) {
        self.trigger.fire();
    }

    /// Waits until the relay has stopped.
    pub async fn stopped(self) {
        let _ = self.task.await;
    }
}

/// The ping clock: one timer for every connection; writers send a ping when it moves.
async fn tick(state: Arc<State>, mut shutdown: Shutdown) {
    let mut every = tokio::time::interval(PING_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    every.tick().await;
    loop {
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = every.tick() => { state.pings.send_replace(unix_now()); }
        }
    }
}

/// Samples `pg_notification_queue_usage()` for the metrics, and re-reads the installed trigger
/// version so `/ready` follows a DBA's install or uninstall without a restart.
async fn watch_queue(state: Arc<State>, mut shutdown: Shutdown) {
    let mut every = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = every.tick() => {}
        }
        if let Ok(client) = state.pool.get().await {
            if let Ok(row) = client
                .query_one("SELECT pg_notification_queue_usage()", &[])
                .await
            {
                state.metrics.notify_queue_usage(row.get(0));
            }
            let current = matches!(
                triggers::installed_version(&client).await,
                Ok(Some(v)) if triggers::usable(v)
            );
            if state.triggers_current.swap(current, Ordering::Relaxed) != current {
                if current {
                    tracing::info!("triggers are installed");
                } else {
                    // Logs what is wrong and what to do.
                    triggers::is_usable(&client).await;
                }
            }
        }
    }
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
pub async fn termination() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
