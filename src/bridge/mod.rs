//! The bridge: what the Rails app broadcasts through ActionCable's Redis adapter, delivered to
//! pgcable's subscribers (bridge.md §2).
//!
//! Owns the Redis pattern subscription to `<prefix>:*` (connecting, liveness pings, reconnecting
//! with backoff) and the routing of each Rails message:
//! - `action_cable/<connection identifier>` `{"type":"disconnect"}` ends every session of that
//!   user with a remote disconnect;
//! - a message pgcable's own feed already produces ([`skip`]) is not forwarded; in shadow mode
//!   it goes to [`shadow`] to be compared with what the feed sent;
//! - anything else is delivered exactly as a `pgcable.broadcast` of the same JSON: the feed's
//!   Rails re-encoding, then the hub.
//!
//! Two inputs, one hub: the bridge knows nothing about sockets, and never waits on the feed or
//! on a client. A dead Redis only stops bridged messages. Calls the feed's delivery functions,
//! the hub (disconnects), shadow and the metrics.

pub mod shadow;
pub mod skip;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use serde::Deserialize;
use uuid::Uuid;

use crate::cable::frame::DisconnectReason;
use crate::config::BridgeConfig;
use crate::feed;
use crate::shutdown::Shutdown;
use crate::state::State;

/// How long connecting and subscribing may take before the attempt counts as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a quiet subscription checks that Redis still answers.
const PING_EVERY: Duration = Duration::from_secs(5);
/// How long a ping may take before the connection is declared dead.
const PING_TIMEOUT: Duration = Duration::from_secs(3);
/// First pause after a failed connection; doubled up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Longest pause between two connection attempts (bridge.md §2: at most 1 s).
pub const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// The prepared settings of a running bridge.
#[derive(Debug)]
pub struct Bridge {
    client: redis::Client,
    /// The PSUBSCRIBE pattern.
    pattern: String,
    /// `<prefix>:` (empty when there is no prefix): stripped from channel names.
    strip: String,
    config: BridgeConfig,
}

impl Bridge {
    /// Checks the settings; the error is one line a person can act on.
    pub fn new(config: BridgeConfig) -> Result<Bridge, String> {
        if config.redis_url.starts_with("rediss://") {
            // The Redis client builds its TLS settings with rustls' process-wide provider:
            // make it the one the relay uses for Postgres (ring). Already set is fine.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let client = redis::Client::open(config.redis_url.as_str()).map_err(|e| {
            format!("PGCABLE_REDIS_URL is not a usable Redis URL (redis://host:port/db): {e}")
        })?;
        let (pattern, strip) = if config.channel_prefix.is_empty() {
            ("*".to_string(), String::new())
        } else {
            (
                format!("{}:*", glob_escape(&config.channel_prefix)),
                format!("{}:", config.channel_prefix),
            )
        };
        Ok(Bridge {
            client,
            pattern,
            strip,
            config,
        })
    }

    /// The PSUBSCRIBE pattern (for logs and tests).
    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    /// Connects and subscribes once, then lets go (`pgcable check`).
    pub async fn probe(&self) -> Result<(), String> {
        match tokio::time::timeout(CONNECT_TIMEOUT, subscribe(self)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {CONNECT_TIMEOUT:?}")),
        }
    }
}

/// Escapes Redis glob characters so a prefix matches only itself.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Runs the bridge until shutdown: subscribes, delivers, and on any loss reconnects with
/// backoff (at most [`MAX_BACKOFF`] between tries).
pub async fn run(state: Arc<State>, bridge: Bridge, mut shutdown: Shutdown) {
    let mut backoff = FIRST_BACKOFF;
    let mut was_up = false;
    let mut failures: u64 = 0;
    state.metrics.bridge_up(false);
    loop {
        let attempt = tokio::select! {
            _ = shutdown.wait() => return,
            r = tokio::time::timeout(CONNECT_TIMEOUT, subscribe(&bridge)) => r,
        };
        let pubsub = match attempt {
            Ok(Ok(pubsub)) => pubsub,
            Ok(Err(e)) => {
                failed(&state, &bridge, &mut failures, &e.to_string());
                if sleep_or_stop(&mut shutdown, &mut backoff).await {
                    return;
                }
                continue;
            }
            Err(_) => {
                failed(&state, &bridge, &mut failures, "timed out");
                if sleep_or_stop(&mut shutdown, &mut backoff).await {
                    return;
                }
                continue;
            }
        };
        failures = 0;
        if was_up {
            state.metrics.bridge_reconnect();
            tracing::info!(pattern = %bridge.pattern, "bridge: Redis is back, subscribed again");
        } else {
            let skip: Vec<&str> = bridge.config.skip.labels().collect();
            tracing::info!(
                pattern = %bridge.pattern,
                skip = %skip.join(","),
                shadow = bridge.config.shadow_window.is_some(),
                "bridge: subscribed to the Rails cable's Redis"
            );
        }
        was_up = true;
        state.bridge_up.store(true, Ordering::Relaxed);
        state.metrics.bridge_up(true);

        let since = tokio::time::Instant::now();
        let lost = serve(&state, &bridge, pubsub, &mut shutdown).await;

        state.bridge_up.store(false, Ordering::Relaxed);
        state.metrics.bridge_up(false);
        match lost {
            None => return,
            Some(why) => tracing::warn!(
                reason = %why,
                "bridge: lost the Redis subscription; Rails broadcasts are not delivered until it is back (reconnecting)"
            ),
        }
        // A subscription that held a while: try again at once. One that was dropped as soon
        // as it was made (a Redis that accepts, then closes): back off as after a failure.
        if since.elapsed() >= MAX_BACKOFF {
            backoff = FIRST_BACKOFF;
        } else if sleep_or_stop(&mut shutdown, &mut backoff).await {
            return;
        }
    }
}

/// Connects and pattern-subscribes.
async fn subscribe(bridge: &Bridge) -> redis::RedisResult<redis::aio::PubSub> {
    let mut pubsub = bridge.client.get_async_pubsub().await?;
    pubsub.psubscribe(&bridge.pattern).await?;
    Ok(pubsub)
}

/// Logs a failed attempt: the first one of a streak as a warning, the rest at debug.
fn failed(state: &State, bridge: &Bridge, failures: &mut u64, error: &str) {
    state.bridge_up.store(false, Ordering::Relaxed);
    *failures += 1;
    if *failures == 1 {
        tracing::warn!(
            error = %error,
            pattern = %bridge.pattern,
            "bridge: cannot subscribe to the Rails cable's Redis; retrying every second at most"
        );
    } else {
        tracing::debug!(error = %error, attempt = *failures, "bridge: Redis still unreachable");
    }
}

/// Sleeps the backoff (then doubles it, up to the maximum); true if shutdown came first.
async fn sleep_or_stop(shutdown: &mut Shutdown, backoff: &mut Duration) -> bool {
    let pause = *backoff;
    *backoff = (*backoff * 2).min(MAX_BACKOFF);
    tokio::select! {
        _ = shutdown.wait() => true,
        _ = tokio::time::sleep(pause) => false,
    }
}

/// Delivers the messages of one subscription in arrival order until it is lost (returns why)
/// or shutdown (returns `None`). A ping every few seconds finds a Redis that stopped
/// answering without closing the connection.
async fn serve(
    state: &State,
    bridge: &Bridge,
    pubsub: redis::aio::PubSub,
    shutdown: &mut Shutdown,
) -> Option<String> {
    let (sink, mut messages) = pubsub.split();
    let mut pings = tokio::time::interval(PING_EVERY);
    pings.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    pings.tick().await;
    // One ping in flight at a time, polled alongside the messages.
    let mut ping: Option<BoxFuture<'static, Result<(), String>>> = None;
    loop {
        tokio::select! {
            _ = shutdown.wait() => return None,
            msg = messages.next() => match msg {
                Some(msg) => deliver(state, bridge, msg.get_channel_name(), msg.get_payload_bytes()),
                None => return Some("connection closed".into()),
            },
            _ = pings.tick(), if ping.is_none() => {
                let mut s = sink.clone();
                ping = Some(Box::pin(async move {
                    match tokio::time::timeout(PING_TIMEOUT, s.ping::<redis::Value>()).await {
                        Ok(Ok(_)) => Ok(()),
                        Ok(Err(e)) => Err(format!("ping failed: {e}")),
                        Err(_) => Err(format!("no answer to a ping within {PING_TIMEOUT:?}")),
                    }
                }));
            }
            r = async { match ping.as_mut() { Some(p) => p.await, None => std::future::pending().await } } => {
                ping = None;
                if let Err(e) = r {
                    return Some(e);
                }
            }
        }
    }
}

/// Routes one Rails message. Never waits.
pub fn deliver(state: &State, bridge: &Bridge, channel: &str, payload: &[u8]) {
    state.metrics.bridge_received();
    let Some(stream) = channel.strip_prefix(bridge.strip.as_str()) else {
        state.metrics.bridge_message("ignored");
        return;
    };
    let Ok(text) = std::str::from_utf8(payload) else {
        tracing::warn!(%stream, bytes = payload.len(), "bridge: Rails message dropped: not UTF-8");
        state.metrics.bridge_message("invalid");
        return;
    };
    if let Some(identifier) = stream.strip_prefix("action_cable/") {
        remote(state, identifier, text);
        return;
    }
    if let Some(key) = bridge.config.skip.matches(stream, text) {
        state.metrics.bridge_message("skipped");
        if let Some(shadow) = &state.shadow {
            shadow.rails(stream, key, text);
        }
        return;
    }
    match feed::encode(text) {
        Ok(message) => {
            feed::send_encoded(state, stream, message);
            state.metrics.bridge_message("forwarded");
        }
        Err(e) => {
            tracing::warn!(%stream, error = %e, bytes = text.len(), start = %truncate(text, 80), "bridge: Rails message dropped: not valid JSON");
            state.metrics.bridge_message("invalid");
        }
    }
}

/// What Rails' internal channel carries (`RemoteConnections#disconnect`).
#[derive(Deserialize)]
struct Internal {
    #[serde(rename = "type")]
    kind: Option<String>,
    reconnect: Option<bool>,
}

/// `action_cable/<identifier>`: a remote disconnect of a user's connections.
fn remote(state: &State, identifier: &str, text: &str) {
    let Some(user) = user_of(identifier, &state.config.app_name) else {
        tracing::debug!(%identifier, "bridge: internal message for a connection that is not one of this app's users");
        state.metrics.bridge_message("ignored");
        return;
    };
    match serde_json::from_str::<Internal>(text) {
        Ok(Internal {
            kind: Some(kind),
            reconnect,
        }) if kind == "disconnect" => {
            let reconnect = reconnect.unwrap_or(true);
            let n = state
                .hub
                .disconnect_user(user, DisconnectReason::Remote, reconnect);
            tracing::info!(%user, connections = n, reconnect, "disconnect requested by the Rails app");
            state.metrics.bridge_message("disconnect");
        }
        Ok(_) => {
            tracing::debug!(%user, message = %truncate(text, 80), "bridge: internal message ignored");
            state.metrics.bridge_message("ignored");
        }
        Err(e) => {
            tracing::warn!(%user, error = %e, start = %truncate(text, 80), "bridge: internal message dropped: not valid JSON");
            state.metrics.bridge_message("invalid");
        }
    }
}

/// The user of a connection identifier `base64url(gid://<app>/User/<uuid>)` (padding
/// optional), if it is one of `app`'s.
pub fn user_of(identifier: &str, app: &str) -> Option<Uuid> {
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let bytes = engine.decode(identifier.trim_end_matches('=')).ok()?;
    let gid = String::from_utf8(bytes).ok()?;
    let id = gid
        .strip_prefix("gid://")?
        .strip_prefix(app)?
        .strip_prefix("/User/")?;
    Uuid::parse_str(id).ok()
}

/// At most `max` bytes of `s`, cut at a character boundary, with `…` when cut.
pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cable::channels::connection_identifier;

    #[test]
    fn connection_identifiers_round_trip() {
        let user = Uuid::new_v4();
        let id = connection_identifier("shot-server", user);
        assert_eq!(user_of(&id, "shot-server"), Some(user));
        assert_eq!(user_of(&format!("{id}=="), "shot-server"), Some(user));
        assert_eq!(user_of(&id, "other-app"), None);
        assert_eq!(user_of("not base64!", "shot-server"), None);
        let account = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(format!("gid://shot-server/Account/{user}"));
        assert_eq!(user_of(&account, "shot-server"), None);
    }

    #[test]
    fn patterns() {
        let b = Bridge::new(BridgeConfig::new("redis://127.0.0.1:6379/0")).expect("bridge");
        assert_eq!(b.pattern(), "shot_server_production:*");
        let mut c = BridgeConfig::new("redis://127.0.0.1:6379/0");
        c.channel_prefix = "a*b?[c]".into();
        assert_eq!(Bridge::new(c).expect("bridge").pattern(), r"a\*b\?\[c\]:*");
        let mut c = BridgeConfig::new("redis://127.0.0.1:6379/0");
        c.channel_prefix = String::new();
        assert_eq!(Bridge::new(c).expect("bridge").pattern(), "*");
        assert!(Bridge::new(BridgeConfig::new("http://nope")).is_err());
        assert!(Bridge::new(BridgeConfig::new("rediss://h:6380/0")).is_ok());
        assert_eq!(truncate("ab✓cd", 3), "ab…");
    }
}
