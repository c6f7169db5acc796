//! One WebSocket's life: authenticate, welcome, commands in order, broadcasts and pings out.
//!
//! Owns a session: its subscriptions, its outbox, its writer task and its ending. The reader
//! (this task) handles commands strictly in arrival order; the writer (spawned) drains the
//! outbox and sends pings from the shared ticker, so a command waiting on the database never
//! delays a ping and a slow socket never delays the hub.
//! Calls auth, channels, presence and the hub.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::error::Error as WsError;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::auth::{self, User};
use super::channels::{parse_identifier, Channel, Rejection};
use super::frame::{self, Command, DisconnectReason};
use super::outbox::{Ending, Frame, Outbox};
use crate::hub::{Session, SubscriptionId};
use crate::state::State;

/// An upgraded `/cable` socket.
pub type WebSocket = WebSocketStream<TokioIo<Upgraded>>;
type Sink = SplitSink<WebSocket, Message>;
type Source = SplitStream<WebSocket>;

/// How long a closing connection waits for the client's side of the close handshake.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Subscribes a connection may have refused by the database within one [`BUDGET_WINDOW`]
/// (auth.md §1, "Budgets"); past that, only answers already known are given until it ends.
const REJECTION_BUDGET: u32 = 20;
/// The fixed window of the rejection budget, from the first refusal in it.
const BUDGET_WINDOW: Duration = Duration::from_secs(60);

/// One subscription held by a session.
#[derive(Debug)]
struct Subscription {
    id: SubscriptionId,
    channel: Channel,
    streams: Vec<String>,
}

/// Runs a connection to its end. `token` is the raw `token` query parameter, if any.
pub async fn run(ws: WebSocket, state: Arc<State>, token: Option<String>) {
    let (mut sink, mut source) = ws.split();
    let user = match auth::authenticate(&state.pool, &state.auth, token.as_deref()).await {
        Ok(user) => user,
        Err(e) => {
            state.metrics.rejected_auth(e.label());
            // A database that cannot be asked says nothing about the token: tell the client to
            // come back (the official client never reconnects after `reconnect:false`).
            let (reason, reconnect) = if matches!(e, auth::AuthError::Database(_)) {
                tracing::warn!(reason = %e, "connection refused for now: the database is unreachable");
                (DisconnectReason::ServerRestart, true)
            } else {
                tracing::info!(reason = %e, "connection refused: unauthorized");
                (DisconnectReason::Unauthorized, false)
            };
            let _ = sink
                .send(Message::text(frame::disconnect(reason, reconnect)))
                .await;
            let _ = sink.send(close(1000, "")).await;
            drain(&mut source).await;
            return;
        }
    };

    let outbox = Arc::new(Outbox::new(state.config.outbox_bytes));
    let session = state.hub.open_session(user.id, outbox.clone());
    tracing::info!(session = session.id, user = %user.id, "connection opened");
    state.metrics.connection_opened();
    outbox.push(Frame::Text(frame::WELCOME.to_string()));
    let writer = tokio::spawn(write_loop(sink, outbox.clone(), state.pings.subscribe()));

    let mut conn = Connection {
        state: state.clone(),
        user,
        session: session.clone(),
        subscriptions: HashMap::new(),
        unreadable: false,
        refusals: 0,
        refusals_since: None,
    };
    let reason = conn.read_loop(&mut source).await;
    conn.unsubscribe_all();
    state.hub.close_session(session.id);
    state.metrics.connection_closed();
    tracing::info!(session = session.id, user = %conn.user.id, %reason, "connection closed");

    // Let the writer finish its close frame, then read what the client still sends so the
    // socket is not reset under unread data (the client would see 1006 instead of our code).
    let mut writer = writer;
    tokio::select! {
        _ = &mut writer => {}
        _ = tokio::time::sleep(CLOSE_GRACE) => writer.abort(),
    }
    if conn.unreadable {
        // The socket can no longer be read (an oversized or invalid frame), so it cannot be
        // drained: hold it open for the grace period instead, so the client reads our close
        // frame before the unread bytes make the kernel reset the connection (the client would
        // see 1006 and lose the close frame).
        tokio::time::sleep(CLOSE_GRACE).await;
    } else {
        let _ = tokio::time::timeout(CLOSE_GRACE, drain(&mut source)).await;
    }
}

async fn drain(source: &mut Source) {
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        while let Some(Ok(_)) = source.next().await {}
    })
    .await;
}

struct Connection {
    state: Arc<State>,
    user: User,
    session: Arc<Session>,
    subscriptions: HashMap<String, Subscription>,
    /// A bad frame ended the connection: the socket can no longer be read, so it cannot be
    /// drained before closing.
    unreadable: bool,
    /// Subscribes the database refused in the current budget window, and when it began.
    refusals: u32,
    refusals_since: Option<Instant>,
}

impl Connection {
    /// Reads and handles frames until the connection ends; returns why it ended.
    async fn read_loop(&mut self, source: &mut Source) -> String {
        let outbox = self.session.outbox.clone();
        let expiry = self.user.expires_at.map(|exp| {
            let now = unix_now() as i64;
            Duration::from_secs(exp.saturating_sub(now).max(0) as u64)
        });
        let expired = async {
            match expiry {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(expired);
        loop {
            tokio::select! {
                biased;
                _ = &mut expired => {
                    outbox.end(Ending::Disconnect(DisconnectReason::Unauthorized, false));
                    return "token expired".into();
                }
                _ = outbox.ended() => {
                    if outbox.overflowed_now() {
                        self.state.metrics.slow_client_dropped();
                        return "client too slow (outbox full)".into();
                    }
                    return "ended by server".into();
                }
                msg = source.next() => match msg {
                    None => return "client went away".into(),
                    Some(Err(e)) => {
                        // RFC 6455 §7.4.1: 1009 for a frame over the limit, 1007 for a text
                        // frame that is not UTF-8, 1002 for other protocol violations; an I/O
                        // error gets no close frame.
                        let code = match &e {
                            WsError::Capacity(_) => Some(1009),
                            WsError::Utf8(_) => Some(1007),
                            WsError::Protocol(_) => Some(1002),
                            _ => None,
                        };
                        if let Some(code) = code {
                            self.unreadable = true;
                            outbox.end(Ending::Close(code, String::new()));
                        }
                        return format!("socket error: {e}");
                    }
                    Some(Ok(msg)) => match msg {
                        // The WebSocket layer has queued the echo of the client's close
                        // frame; it goes out with the socket's next write, so have the writer
                        // finish now (its own close frame is then only that flush), instead of
                        // at the next ping or the close grace.
                        Message::Close(_) => {
                            outbox.end(Ending::Close(1000, String::new()));
                            return "client closed".into();
                        }
                        Message::Text(text) => {
                            self.state.metrics.message_in();
                            self.handle(&text).await;
                        }
                        Message::Binary(_) => {
                            tracing::debug!(session = self.session.id, "binary frame ignored");
                        }
                        // Pongs to pings are sent by the WebSocket layer.
                        Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
                    },
                }
            }
        }
    }

    async fn handle(&mut self, text: &str) {
        match frame::parse_command(text) {
            Ok(Command::Subscribe(identifier)) => self.subscribe(identifier).await,
            Ok(Command::Unsubscribe(identifier)) => self.unsubscribe(&identifier),
            Ok(Command::Message(identifier)) => {
                tracing::debug!(session = self.session.id, %identifier, "message command ignored: no client actions");
            }
            Err(e) => {
                tracing::debug!(session = self.session.id, error = %e, "client frame ignored");
            }
        }
    }

    async fn subscribe(&mut self, identifier: String) {
        let outbox = self.session.outbox.clone();
        if self.subscriptions.contains_key(&identifier) {
            outbox.push(Frame::Text(frame::confirm(&identifier)));
            return;
        }
        let epoch = self.state.access.epoch();
        match self.authorize(&identifier).await {
            Ok(channel) => {
                let streams = channel.streams(&self.user, &self.state.config.app_name);
                let prefix: Arc<str> = Arc::from(frame::broadcast_prefix(&identifier));
                let id = self.state.hub.subscription_id();
                for stream in &streams {
                    self.state
                        .hub
                        .subscribe(stream, id, &self.session, prefix.clone());
                }
                if let Err(rejection) = self.still_allowed(&channel, epoch).await {
                    for stream in &streams {
                        self.state.hub.unsubscribe(stream, id);
                    }
                    self.refuse(&identifier, rejection);
                    return;
                }
                outbox.push(Frame::Text(frame::confirm(&identifier)));
                if let Channel::Fight { fight_id } = channel {
                    self.state.presence.join(fight_id, self.user.id);
                }
                self.subscriptions.insert(
                    identifier,
                    Subscription {
                        id,
                        channel,
                        streams,
                    },
                );
            }
            Err(rejection) => self.refuse(&identifier, rejection),
        }
    }

    /// After a subscription joined the hub: if access changed since its decision was taken
    /// (`epoch`), a revocation may have swept the hub before it joined, so decide again.
    async fn still_allowed(&self, channel: &Channel, epoch: u64) -> Result<(), Rejection> {
        let access = &self.state.access;
        match channel.resource() {
            Some(resource) if access.epoch() != epoch => {
                match access.decide(self.user.id, resource).await? {
                    true => Ok(()),
                    false => Err(Rejection::Forbidden),
                }
            }
            _ => Ok(()),
        }
    }

    fn refuse(&self, identifier: &str, rejection: Rejection) {
        let outbox = &self.session.outbox;
        match rejection {
            Rejection::Unavailable => {
                // The database can't be asked: a rejection would make the client forget this
                // subscription for good. Send it away to reconnect and resubscribe later.
                tracing::warn!(session = self.session.id, %identifier, "subscription not decided: the database is unreachable; asking the client to reconnect");
                self.state
                    .metrics
                    .rejected_subscription(Rejection::Unavailable.label());
                outbox.end(Ending::Disconnect(DisconnectReason::ServerRestart, true));
            }
            rejection => {
                tracing::info!(session = self.session.id, user = %self.user.id, reason = rejection.label(), %identifier, "subscription rejected");
                self.state.metrics.rejected_subscription(rejection.label());
                outbox.push(Frame::Text(frame::reject(identifier)));
            }
        }
    }

    async fn authorize(&mut self, identifier: &str) -> Result<Channel, Rejection> {
        let channel = parse_identifier(identifier)?;
        if self.subscriptions.len() >= self.state.config.max_subscriptions {
            return Err(Rejection::TooMany);
        }
        let access = self.state.access.clone();
        let allowed = match access.known(&self.user, &channel).await {
            Some(known) => known,
            None => {
                let resource = channel.resource().ok_or(Rejection::Forbidden)?;
                if self.budget_spent() {
                    return Err(Rejection::OverBudget);
                }
                let allowed = access.decide(self.user.id, resource).await?;
                if !allowed {
                    self.refusals += 1;
                }
                allowed
            }
        };
        if allowed {
            Ok(channel)
        } else {
            Err(Rejection::Forbidden)
        }
    }

    /// Whether this connection has had its share of database refusals in the current window
    /// (a window starts with its first refusal and lasts [`BUDGET_WINDOW`]).
    fn budget_spent(&mut self) -> bool {
        match self.refusals_since {
            Some(since) if since.elapsed() < BUDGET_WINDOW => self.refusals >= REJECTION_BUDGET,
            _ => {
                self.refusals = 0;
                self.refusals_since = Some(Instant::now());
                false
            }
        }
    }

    fn unsubscribe(&mut self, identifier: &str) {
        if let Some(sub) = self.subscriptions.remove(identifier) {
            self.detach(sub);
        }
    }

    fn unsubscribe_all(&mut self) {
        for (_, sub) in std::mem::take(&mut self.subscriptions) {
            self.detach(sub);
        }
    }

    fn detach(&self, sub: Subscription) {
        for stream in &sub.streams {
            self.state.hub.unsubscribe(stream, sub.id);
        }
        if let Channel::Fight { fight_id } = sub.channel {
            self.state.presence.leave(fight_id, self.user.id);
        }
    }
}

/// Seconds since the epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Writes the outbox and the pings until the connection ends.
async fn write_loop(mut sink: Sink, outbox: Arc<Outbox>, mut pings: watch::Receiver<u64>) {
    // A client that stops reading leaves a write pending forever; overflow cuts it short.
    let result = tokio::select! {
        r = pump(&mut sink, &outbox, &mut pings) => r,
        _ = outbox.overflowed() => Err(()),
    };
    if result.is_ok() {
        let _ = sink.close().await;
    }
}

async fn pump(
    sink: &mut Sink,
    outbox: &Outbox,
    pings: &mut watch::Receiver<u64>,
) -> Result<(), ()> {
    let mut frames = VecDeque::new();
    loop {
        tokio::select! {
            biased;
            changed = pings.changed() => {
                if changed.is_err() {
                    // The ticker is gone: the relay is stopping.
                    std::future::pending::<()>().await;
                }
                let now = *pings.borrow_and_update();
                sink.send(Message::text(frame::ping(now))).await.map_err(|_| ())?;
                outbox.progressed();
            }
            _ = outbox.ready() => {
                let ending = outbox.take(&mut frames);
                let n = frames.len();
                for f in frames.drain(..) {
                    sink.feed(f.into_message()).await.map_err(|_| ())?;
                }
                if n > 0 {
                    sink.flush().await.map_err(|_| ())?;
                    outbox.progressed();
                }
                match ending {
                    None => {}
                    Some(Ending::Overflow) => return Err(()),
                    Some(Ending::Disconnect(reason, reconnect)) => {
                        sink.send(Message::text(frame::disconnect(reason, reconnect))).await.map_err(|_| ())?;
                        sink.send(close(1000, "")).await.map_err(|_| ())?;
                        return Ok(());
                    }
                    Some(Ending::Close(code, reason)) => {
                        sink.send(close(code, &reason)).await.map_err(|_| ())?;
                        return Ok(());
                    }
                }
            }
        }
    }
}

fn close(code: u16, reason: &str) -> Message {
    Message::Close(Some(CloseFrame {
        code: CloseCode::from(code),
        reason: reason.into(),
    }))
}
