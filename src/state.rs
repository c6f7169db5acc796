//! What every station shares while the relay runs.
//!
//! Owns nothing of its own; it is the bundle of handles `server` builds and passes down.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use tokio::sync::watch;

use crate::bridge::shadow::Shadow;
use crate::cable::auth::AuthPolicy;
use crate::cable::channels::Access;
use crate::cable::presence::Presence;
use crate::config::Config;
use crate::db::Pool;
use crate::hub::Hub;
use crate::metrics::Metrics;

/// Shared handles of a running relay.
#[derive(Debug)]
pub struct State {
    /// Settings.
    pub config: Config,
    /// Query pool.
    pub pool: Pool,
    /// Streams and sessions.
    pub hub: Arc<Hub>,
    /// Token rules.
    pub auth: AuthPolicy,
    /// Settings of the renderer.
    pub render: crate::render::RenderConfig,
    /// Access decisions.
    pub access: Access,
    /// FightChannel presence.
    pub presence: Arc<Presence>,
    /// Metrics.
    pub metrics: Metrics,
    /// The ping ticker: unix seconds, updated every 3 s.
    pub pings: watch::Sender<u64>,
    /// Whether the listener holds a live LISTEN connection.
    pub listening: AtomicBool,
    /// Whether the installed triggers match this binary (checked at start-up and on reconnect).
    pub triggers_current: AtomicBool,
    /// Whether the Rails bridge holds a live Redis subscription (false when it is off).
    pub bridge_up: AtomicBool,
    /// Shadow mode, when on.
    pub shadow: Option<Arc<Shadow>>,
}
