//! One connection's bounded queue of frames waiting to be written.
//!
//! Owns back-pressure: the hub pushes without ever waiting. A connection overflows, and its
//! writer drops it, when its queue passes the byte limit while the client has read nothing for
//! [`STALL`]; a client that keeps reading may go past the limit during a burst (a bulk UPDATE
//! of thousands of rows), up to [`BURST_FACTOR`] times it. Calls nothing.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use super::frame::DisconnectReason;

/// A frame waiting to be written.
#[derive(Debug, Clone)]
pub enum Frame {
    /// A frame of its own (welcome, confirm, reject, presence of one subscription).
    Text(String),
    /// A broadcast frame, built once and shared by every subscription with the same identifier.
    Broadcast(Utf8Bytes),
}

impl Frame {
    /// Bytes this frame occupies on the wire (its payload).
    pub fn len(&self) -> usize {
        match self {
            Frame::Text(s) => s.len(),
            Frame::Broadcast(b) => b.len(),
        }
    }

    /// Whether the frame is empty (never, in practice).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The frame as a WebSocket text message; a broadcast is not copied.
    pub fn into_message(self) -> Message {
        match self {
            Frame::Text(s) => Message::Text(s.into()),
            Frame::Broadcast(b) => Message::Text(b),
        }
    }

    /// A broadcast frame: `prefix` (`{"identifier":…,"message":`), the message, then `}`.
    pub fn broadcast(prefix: &str, message: &str) -> Frame {
        let mut s = String::with_capacity(prefix.len() + message.len() + 1);
        s.push_str(prefix);
        s.push_str(message);
        s.push('}');
        Frame::Broadcast(s.into())
    }
}

/// How the connection is to end, once the queued frames are written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// Send `{"type":"disconnect",…}`, then close 1000.
    Disconnect(DisconnectReason, bool),
    /// Send a close frame with this code and reason (an oversized frame: 1009).
    Close(u16, String),
    /// The client stopped reading and the queue overflowed: drop it now, send nothing more.
    Overflow,
}

/// How long a client over the limit may go without reading before it is dropped.
pub const STALL: Duration = Duration::from_secs(1);
/// How far past the limit a reading client's queue may grow.
pub const BURST_FACTOR: usize = 16;

#[derive(Debug)]
struct State {
    frames: VecDeque<Frame>,
    bytes: usize,
    ending: Option<Ending>,
    /// When the writer last got frames onto the socket.
    progress: Instant,
}

/// The queue. Shared by the hub (producers) and the connection's writer (the one consumer).
#[derive(Debug)]
pub struct Outbox {
    state: Mutex<State>,
    limit: usize,
    work: Notify,
    ended: Notify,
}

impl Outbox {
    /// An empty queue that holds at most `limit` bytes.
    pub fn new(limit: usize) -> Outbox {
        Outbox {
            state: Mutex::new(State {
                frames: VecDeque::new(),
                bytes: 0,
                ending: None,
                progress: Instant::now(),
            }),
            limit,
            work: Notify::new(),
            ended: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock only means another thread panicked mid-push; the queue is still sound.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a frame. Returns false if the connection is ending (or has just overflowed).
    pub fn push(&self, frame: Frame) -> bool {
        let mut st = self.lock();
        if st.ending.is_some() {
            return false;
        }
        // One frame larger than the limit still goes through an empty queue, or a big message
        // could never be delivered.
        let after = st.bytes + frame.len();
        let over = st.bytes > 0 && after > self.limit;
        if over && (st.progress.elapsed() >= STALL || after > self.limit * BURST_FACTOR) {
            st.frames.clear();
            st.bytes = 0;
            st.ending = Some(Ending::Overflow);
            drop(st);
            self.ended.notify_waiters();
            self.work.notify_one();
            return false;
        }
        st.bytes += frame.len();
        st.frames.push_back(frame);
        drop(st);
        self.work.notify_one();
        true
    }

    /// Asks the connection to end after what is already queued. The first ending wins.
    pub fn end(&self, ending: Ending) {
        let mut st = self.lock();
        if st.ending.is_none() {
            st.ending = Some(ending);
        }
        drop(st);
        self.ended.notify_waiters();
        self.work.notify_one();
    }

    /// Whether an ending has been requested.
    pub fn is_ending(&self) -> bool {
        self.lock().ending.is_some()
    }

    /// The writer got frames onto the socket: the client is reading.
    pub fn progressed(&self) {
        self.lock().progress = Instant::now();
    }

    /// Whether the queue has overflowed.
    pub fn overflowed_now(&self) -> bool {
        matches!(self.lock().ending, Some(Ending::Overflow))
    }

    /// Moves everything queued into `frames` (which the writer has emptied) and returns the
    /// ending, if one is set. The two queues trade places, so a busy connection allocates none.
    pub fn take(&self, frames: &mut VecDeque<Frame>) -> Option<Ending> {
        let mut st = self.lock();
        st.bytes = 0;
        if frames.is_empty() {
            std::mem::swap(&mut st.frames, frames);
        } else {
            frames.extend(st.frames.drain(..));
        }
        st.ending.clone()
    }

    /// Resolves when there may be something to take.
    pub async fn ready(&self) {
        self.work.notified().await
    }

    /// Resolves when the queue overflowed: the writer stops whatever write it is stuck in.
    pub async fn overflowed(&self) {
        self.wait_for(|e| matches!(e, Some(Ending::Overflow))).await
    }

    /// Resolves when any ending has been requested.
    pub async fn ended(&self) {
        self.wait_for(|e| e.is_some()).await
    }

    async fn wait_for(&self, cond: impl Fn(&Option<Ending>) -> bool) {
        loop {
            let notified = self.ended.notified();
            tokio::pin!(notified);
            // Register before checking, so a wake-up between the check and the await is kept.
            notified.as_mut().enable();
            if cond(&self.lock().ending) {
                return;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reading_client_may_burst_past_the_limit() {
        let outbox = Outbox::new(10);
        for _ in 0..BURST_FACTOR * 2 - 1 {
            assert!(outbox.push(Frame::Text("12345".into())));
        }
        assert!(!outbox.push(Frame::Text("123456".into())));
        assert_eq!(outbox.take(&mut VecDeque::new()), Some(Ending::Overflow));
    }

    #[test]
    fn overflow_drops_the_queue_and_refuses_more() {
        let outbox = Outbox::new(10);
        outbox.lock().progress = Instant::now() - STALL;
        assert!(outbox.push(Frame::Text("12345".into())));
        assert!(outbox.push(Frame::Text("12345".into())));
        assert!(!outbox.push(Frame::Text("1".into())));
        assert!(!outbox.push(Frame::Text("1".into())));
        let mut frames = VecDeque::new();
        assert_eq!(outbox.take(&mut frames), Some(Ending::Overflow));
        assert!(frames.is_empty());
    }

    #[test]
    fn first_ending_wins_and_frames_before_it_are_kept() {
        let outbox = Outbox::new(100);
        assert!(outbox.push(Frame::Text("a".into())));
        outbox.end(Ending::Disconnect(DisconnectReason::ServerRestart, true));
        outbox.end(Ending::Close(1009, String::new()));
        assert!(!outbox.push(Frame::Text("b".into())));
        let mut frames = VecDeque::new();
        assert_eq!(
            outbox.take(&mut frames),
            Some(Ending::Disconnect(DisconnectReason::ServerRestart, true))
        );
        assert_eq!(frames.len(), 1);
    }

    #[test]
    fn broadcast_frame_text() {
        let f = Frame::broadcast(r#"{"identifier":"x","message":"#, r#"{"a":1}"#);
        let want = r#"{"identifier":"x","message":{"a":1}}"#;
        assert_eq!(f.len(), want.len());
        assert_eq!(f.into_message(), Message::text(want));
    }
}
