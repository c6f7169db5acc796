//! The hub: which subscriptions listen to which stream, and which sessions are open.
//!
//! Owns the stream → subscriptions map and the session registry. A broadcast's message is
//! encoded once by the caller and shared; the hub only pushes it into each subscriber's
//! [`Outbox`], which never waits, so a slow socket can't hold up anyone else.
//! Calls only the outbox.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use uuid::Uuid;

use crate::cable::frame::DisconnectReason;
use crate::cable::outbox::{Ending, Frame, Outbox};

/// A unique number for each session (one WebSocket connection).
pub type SessionId = u64;

/// A unique number for each subscription.
pub type SubscriptionId = u64;

/// One subscription's place in a stream.
#[derive(Debug, Clone)]
struct Subscriber {
    /// `{"identifier":…,"message":` of that subscription.
    prefix: Arc<str>,
    outbox: Arc<Outbox>,
    /// Whose session it belongs to (live authorization finds subscriptions by these).
    session: SessionId,
    user: Uuid,
}

/// A session holding a subscription to a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// The session.
    pub session: SessionId,
    /// Its user.
    pub user: Uuid,
    /// The stream.
    pub stream: String,
}

/// A connected, authenticated session as the hub sees it.
#[derive(Debug)]
pub struct Session {
    /// Its number.
    pub id: SessionId,
    /// Whose it is.
    pub user_id: Uuid,
    /// Where its frames go.
    pub outbox: Arc<Outbox>,
}

/// The hub. One per relay, shared by every connection and the feed.
#[derive(Debug, Default)]
pub struct Hub {
    streams: RwLock<HashMap<String, HashMap<SubscriptionId, Subscriber>>>,
    sessions: Mutex<HashMap<SessionId, Arc<Session>>>,
    next_session: AtomicU64,
    next_subscription: AtomicU64,
}

impl Hub {
    /// An empty hub.
    pub fn new() -> Hub {
        Hub::default()
    }

    /// Registers a new session and returns it.
    pub fn open_session(&self, user_id: Uuid, outbox: Arc<Outbox>) -> Arc<Session> {
        let id = self.next_session.fetch_add(1, Ordering::Relaxed) + 1;
        let session = Arc::new(Session {
            id,
            user_id,
            outbox,
        });
        self.sessions_lock().insert(id, session.clone());
        session
    }

    /// Forgets a session. Its subscriptions must have been removed already.
    pub fn close_session(&self, id: SessionId) {
        self.sessions_lock().remove(&id);
    }

    fn sessions_lock(&self) -> std::sync::MutexGuard<'_, HashMap<SessionId, Arc<Session>>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Number of open sessions.
    pub fn session_count(&self) -> usize {
        self.sessions_lock().len()
    }

    /// A new subscription number. The session keeps one per identifier it holds, so the hub
    /// never has to compare identifiers.
    pub fn subscription_id(&self) -> SubscriptionId {
        self.next_subscription.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Adds a subscription to a stream; its frames start with `prefix`.
    pub fn subscribe(&self, stream: &str, id: SubscriptionId, session: &Session, prefix: Arc<str>) {
        let mut streams = self.streams.write().unwrap_or_else(|p| p.into_inner());
        streams.entry(stream.to_string()).or_default().insert(
            id,
            Subscriber {
                prefix,
                outbox: session.outbox.clone(),
                session: session.id,
                user: session.user_id,
            },
        );
    }

    /// Removes a subscription from a stream; drops the stream when nobody is left.
    pub fn unsubscribe(&self, stream: &str, id: SubscriptionId) {
        let mut streams = self.streams.write().unwrap_or_else(|p| p.into_inner());
        if let Some(subs) = streams.get_mut(stream) {
            subs.remove(&id);
            if subs.is_empty() {
                streams.remove(stream);
            }
        }
    }

    /// Sends an encoded message to every subscription of a stream. Returns how many frames were
    /// queued. Never waits on a connection.
    ///
    /// Each distinct identifier's frame is built once and shared: the N subscribers of a
    /// campaign normally hold the same identifier, so a broadcast costs one copy of the message,
    /// not N.
    pub fn broadcast(&self, stream: &str, message: &str) -> usize {
        let streams = self.streams.read().unwrap_or_else(|p| p.into_inner());
        let Some(subs) = streams.get(stream) else {
            return 0;
        };
        let mut frames: HashMap<&str, Frame> = HashMap::new();
        let mut sent = 0;
        for sub in subs.values() {
            let frame = frames
                .entry(&sub.prefix)
                .or_insert_with(|| Frame::broadcast(&sub.prefix, message));
            if sub.outbox.push(frame.clone()) {
                sent += 1;
            }
        }
        sent
    }

    /// Whether anyone is subscribed to `stream` right now.
    pub fn is_watched(&self, stream: &str) -> bool {
        let streams = self.streams.read().unwrap_or_else(|p| p.into_inner());
        streams.contains_key(stream)
    }

    /// Streams that currently have subscribers and whose name starts with `prefix`.
    pub fn streams_with_prefix(&self, prefix: &str) -> Vec<String> {
        let streams = self.streams.read().unwrap_or_else(|p| p.into_inner());
        streams
            .keys()
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .collect()
    }

    /// Number of streams with at least one subscriber.
    pub fn stream_count(&self) -> usize {
        self.streams.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Number of (stream, subscription) pairs.
    pub fn subscription_count(&self) -> usize {
        let streams = self.streams.read().unwrap_or_else(|p| p.into_inner());
        streams.values().map(HashMap::len).sum()
    }

    /// Ends every session of a user with a disconnect frame. Returns how many.
    pub fn disconnect_user(
        &self,
        user_id: Uuid,
        reason: DisconnectReason,
        reconnect: bool,
    ) -> usize {
        let sessions = self.sessions_lock();
        let mut n = 0;
        for s in sessions.values().filter(|s| s.user_id == user_id) {
            s.outbox.end(Ending::Disconnect(reason, reconnect));
            n += 1;
        }
        n
    }

    /// Every subscription to a stream that `wanted` accepts, with its session and user.
    /// Walks every stream: for rare events (a revoked access), not for the broadcast path.
    pub fn holders(&self, wanted: impl Fn(&str) -> bool) -> Vec<Holder> {
        let streams = self.streams.read().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        for (stream, subs) in streams.iter().filter(|(s, _)| wanted(s)) {
            for sub in subs.values() {
                out.push(Holder {
                    session: sub.session,
                    user: sub.user,
                    stream: stream.clone(),
                });
            }
        }
        out
    }

    /// Ends one session with a disconnect frame. Nothing pushed to it afterwards is sent.
    /// Returns whether it was open.
    pub fn disconnect_session(
        &self,
        id: SessionId,
        reason: DisconnectReason,
        reconnect: bool,
    ) -> bool {
        match self.sessions_lock().get(&id) {
            Some(s) => {
                s.outbox.end(Ending::Disconnect(reason, reconnect));
                true
            }
            None => false,
        }
    }

    /// Ends every session (graceful shutdown).
    pub fn disconnect_all(&self, reason: DisconnectReason, reconnect: bool) {
        for s in self.sessions_lock().values() {
            s.outbox.end(Ending::Disconnect(reason, reconnect));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcast_reaches_each_subscription_once() {
        let hub = Hub::new();
        let a = hub.open_session(Uuid::nil(), Arc::new(Outbox::new(1 << 20)));
        let b = hub.open_session(Uuid::nil(), Arc::new(Outbox::new(1 << 20)));
        let (a1, a2, b1) = (
            hub.subscription_id(),
            hub.subscription_id(),
            hub.subscription_id(),
        );
        hub.subscribe("s", a1, &a, Arc::from("A1"));
        hub.subscribe("s", a1, &a, Arc::from("A1"));
        hub.subscribe("s", a2, &a, Arc::from("A2"));
        hub.subscribe("s", b1, &b, Arc::from("B"));
        assert_eq!(hub.broadcast("s", "m"), 3);
        let mut frames = std::collections::VecDeque::new();
        a.outbox.take(&mut frames);
        assert_eq!(frames.len(), 2);
        assert!(hub.is_watched("s"));
        hub.unsubscribe("s", a1);
        assert_eq!(hub.broadcast("s", "m"), 2);
        hub.unsubscribe("s", a2);
        hub.unsubscribe("s", b1);
        assert_eq!(hub.stream_count(), 0);
        assert!(!hub.is_watched("s"));
    }
}
