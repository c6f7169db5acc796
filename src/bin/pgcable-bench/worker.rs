//! A load-client worker process (`pgcable-bench client-worker`): holds up to some thousands of
//! ActionCable connections from one source address and stamps every broadcast it receives.
//!
//! The coordinator ([`crate::fleet`]) drives it over stdin/stdout, one command or event per line:
//!
//! | in (stdin) | out (stdout) |
//! |---|---|
//! | `open <count> <deadline ms> <parallel> <identifier>` | `opened <ok> <failed> <first error>` |
//! | `expect <seq>` | later `done <seq>` once every live connection has received `seq` |
//! | `collect` | `r <seq> <receipt ns>` lines, `kinds <frames> <bytes>` (per [`KINDS`], in order), then `end <frames> <pings> <other> <bytes> <live> <duplicates> <stale>` |
//! | `stats` | `stats <live> <frames> <pings> <other> <bytes>` |
//! | `last <seq>` | `last <connections whose newest encounter carries seq> <live>` |
//! | `close` | `closed`, then the process exits |
//!
//! Connections are processes of their own (one tokio task each): connect from the worker's
//! source address, upgrade, wait for the welcome, subscribe, wait for the confirmation, then
//! read. A broadcast's sequence number is found by its marker (`{"q":<n>` for a pipe message,
//! `"name":"bench-<n>` for a rendered character, an `action_id` made by [`action_id`] for an
//! encounter); frames with none are counted as `other`. A connection stamps only the first
//! receipt of an encounter's sequence number: an encounter carrying the same number as the
//! connection's previous one is counted as a duplicate, one carrying an older number as stale
//! (one fight's states reach a client in commit order, so either is a fault).

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, watch, Semaphore};
use uuid::Uuid;

use crate::sys::now_ns;
use crate::ws::{Incoming, Socket};

/// Longest time one connection may take to be upgraded, welcomed and subscribed.
const SETUP_TIMEOUT: Duration = Duration::from_secs(15);

/// Receipt shards (connections spread over them, so stamping seldom contends).
const SHARDS: usize = 32;

/// Settings of one worker.
#[derive(Debug, Clone, clap::Args)]
pub struct WorkerArgs {
    /// Server address.
    #[arg(long)]
    pub addr: SocketAddr,
    /// Source address to bind every connection to.
    #[arg(long)]
    pub source: Option<Ipv4Addr>,
    /// Request path with query (the token).
    #[arg(long)]
    pub path: String,
}

#[derive(Debug, Default)]
struct Count {
    got: u32,
    expected: bool,
}

struct Shared {
    live: AtomicUsize,
    frames: AtomicU64,
    pings: AtomicU64,
    other: AtomicU64,
    bytes: AtomicU64,
    duplicates: AtomicU64,
    stale: AtomicU64,
    /// Frames and bytes per [`KINDS`].
    kinds: [(AtomicU64, AtomicU64); KINDS.len()],
    /// Per live connection, the sequence number of its newest encounter (`u32::MAX`: none).
    lasts: Mutex<HashMap<usize, Arc<AtomicU32>>>,
    shards: Vec<Mutex<Vec<(u32, u64)>>>,
    counts: Mutex<HashMap<u32, Count>>,
    events: mpsc::UnboundedSender<String>,
}

impl Shared {
    fn lock_counts(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Count>> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Emits `done` for every expected sequence number all live connections have received.
    fn check_done(&self, map: &mut HashMap<u32, Count>, only: Option<u32>) {
        let live = self.live.load(Ordering::SeqCst) as u32;
        let done: Vec<u32> = match only {
            Some(seq) => map
                .get(&seq)
                .filter(|c| c.expected && c.got >= live)
                .map(|_| vec![seq])
                .unwrap_or_default(),
            None => map
                .iter()
                .filter(|(_, c)| c.expected && c.got >= live)
                .map(|(s, _)| *s)
                .collect(),
        };
        for seq in done {
            if let Some(c) = map.get_mut(&seq) {
                c.expected = false;
            }
            let _ = self.events.send(format!("done {seq}"));
        }
    }

    fn receipt(&self, shard: usize, seq: u32, at: u64) {
        if let Ok(mut s) = self.shards[shard].lock() {
            s.push((seq, at));
        }
        let mut map = self.lock_counts();
        map.entry(seq).or_default().got += 1;
        self.check_done(&mut map, Some(seq));
    }
}

/// The sequence number right after `marker` (and any spaces) at the start of `text`.
fn seq_at(text: &[u8], marker: &[u8]) -> Option<u32> {
    let mut at = marker.len();
    if !text.starts_with(marker) {
        return None;
    }
    // Postgres prints jsonb as `"key": value`; the relays print it compactly.
    while text.get(at) == Some(&b' ') {
        at += 1;
    }
    let digits = text[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&text[at..at + digits])
        .ok()?
        .parse()
        .ok()
}

/// Where `needle` first occurs in `hay`.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Broadcast kinds, by the message's first key; `other` is anything else (pipe messages too).
pub const KINDS: [&str; 8] = [
    "encounter",
    "character",
    "characters",
    "fight",
    "fights",
    "vehicle",
    "vehicles",
    "other",
];

/// The message of a broadcast frame (from its `"message":` key to the frame's last byte).
pub fn message(text: &[u8]) -> Option<&[u8]> {
    // The identifier is a JSON string, so the first `"message":` is the key itself.
    let m = find(text, b"\"message\":")? + b"\"message\":".len();
    Some(&text[m..])
}

/// Which of [`KINDS`] a message is.
pub fn message_kind(msg: &[u8]) -> usize {
    let Some(key) = msg.strip_prefix(b"{\"") else {
        return KINDS.len() - 1;
    };
    let end = key.iter().take(16).position(|b| *b == b'"');
    let key = end.map(|e| &key[..e]).unwrap_or(b"");
    KINDS
        .iter()
        .position(|k| k.as_bytes() == key)
        .unwrap_or(KINDS.len() - 1)
}

/// What every marker `action_id` starts with; its last 12 characters are the sequence number in
/// decimal (decimal digits are hex digits, so it is a well-formed uuid).
const ACTION_PREFIX: &str = "00000000-0000-4000-8000-";

/// The `fights.action_id` the bench's combat actions set for sequence number `seq`.
pub fn action_id(seq: u32) -> Uuid {
    Uuid::try_parse(&format!("{ACTION_PREFIX}{seq:012}")).unwrap_or_else(|_| Uuid::nil())
}

/// The sequence number in an encounter's `action_id`, its last key (only the message's tail
/// is looked at: an encounter of a large fight is tens of kilobytes).
fn encounter_seq(msg: &[u8]) -> Option<u32> {
    let tail = &msg[msg.len().saturating_sub(96)..];
    let key = b"\"action_id\":\"";
    let at = tail.windows(key.len()).rposition(|w| w == key)? + key.len();
    let id = tail.get(at..at + 36)?;
    let digits = id.strip_prefix(ACTION_PREFIX.as_bytes())?;
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// The sequence number a broadcast frame carries, if any: `{"q":<n>,…}` as the message (a
/// pipe message; `q` sorts first in jsonb), a character named `bench-<n>` (a row payload,
/// whose name is its second key), or an encounter whose `action_id` is [`action_id`]`(n)`.
/// Only the start of the message (the end, for an encounter) is looked at.
#[cfg(test)]
pub fn frame_seq(text: &[u8]) -> Option<u32> {
    message_seq(message(text)?)
}

/// [`frame_seq`] of a frame's message.
pub fn message_seq(msg: &[u8]) -> Option<u32> {
    if let Some(seq) = seq_at(msg, b"{\"q\":") {
        return Some(seq);
    }
    if msg.starts_with(b"{\"character\":{") {
        let head = &msg[..msg.len().min(160)];
        let at = find(head, b"\"name\":\"bench-")?;
        return seq_at(&head[at..], b"\"name\":\"bench-");
    }
    if msg.starts_with(b"{\"encounter\":{") {
        return encounter_seq(msg);
    }
    None
}

/// Runs the worker until `close` or the end of stdin.
pub async fn run(args: WorkerArgs) -> Result<(), String> {
    crate::sys::raise_nofile();
    let (events, mut events_rx) = mpsc::unbounded_channel::<String>();
    let shared = Arc::new(Shared {
        live: AtomicUsize::new(0),
        frames: AtomicU64::new(0),
        pings: AtomicU64::new(0),
        other: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
        duplicates: AtomicU64::new(0),
        stale: AtomicU64::new(0),
        kinds: std::array::from_fn(|_| (AtomicU64::new(0), AtomicU64::new(0))),
        lasts: Mutex::new(HashMap::new()),
        shards: (0..SHARDS).map(|_| Mutex::new(Vec::new())).collect(),
        counts: Mutex::new(HashMap::new()),
        events,
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let writer = tokio::spawn(async move {
        let mut out = tokio::io::stdout();
        while let Some(line) = events_rx.recv().await {
            let mut line = line;
            line.push('\n');
            // Batch what is already queued into one write.
            while let Ok(more) = events_rx.try_recv() {
                line.push_str(&more);
                line.push('\n');
                if line.len() > 1 << 20 {
                    break;
                }
            }
            if out.write_all(line.as_bytes()).await.is_err() {
                return;
            }
            let _ = out.flush().await;
        }
    });

    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut next_conn = 0usize;
    while let Ok(Some(line)) = lines.next_line().await {
        let mut words = line.splitn(5, ' ');
        match words.next().unwrap_or("") {
            "open" => {
                let count: usize = words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
                let deadline_ms: u64 = words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
                let parallel: usize = words.next().and_then(|w| w.parse().ok()).unwrap_or(64);
                let identifier = words.next().unwrap_or("").to_string();
                let (ok, failed, error) = open(
                    &args,
                    &shared,
                    &stop_rx,
                    count,
                    Duration::from_millis(deadline_ms),
                    parallel.max(1),
                    &identifier,
                    &mut next_conn,
                )
                .await;
                let error = error.replace(['\n', '\r'], " ");
                let _ = shared
                    .events
                    .send(format!("opened {ok} {failed} {}", error.trim()));
            }
            "expect" => {
                if let Some(seq) = words.next().and_then(|w| w.parse::<u32>().ok()) {
                    let mut map = shared.lock_counts();
                    map.entry(seq).or_default().expected = true;
                    shared.check_done(&mut map, Some(seq));
                }
            }
            "collect" => {
                let mut out = String::new();
                for shard in &shared.shards {
                    let taken =
                        std::mem::take(&mut *shard.lock().unwrap_or_else(|p| p.into_inner()));
                    for (seq, at) in taken {
                        out.push_str(&format!("r {seq} {at}\n"));
                    }
                }
                shared.lock_counts().retain(|_, c| c.expected);
                out.push_str("kinds");
                for (frames, bytes) in &shared.kinds {
                    out.push_str(&format!(
                        " {} {}",
                        frames.load(Ordering::Relaxed),
                        bytes.load(Ordering::Relaxed)
                    ));
                }
                out.push_str(&format!(
                    "\nend {} {} {} {} {} {} {}",
                    shared.frames.load(Ordering::Relaxed),
                    shared.pings.load(Ordering::Relaxed),
                    shared.other.load(Ordering::Relaxed),
                    shared.bytes.load(Ordering::Relaxed),
                    shared.live.load(Ordering::SeqCst),
                    shared.duplicates.load(Ordering::Relaxed),
                    shared.stale.load(Ordering::Relaxed)
                ));
                let _ = shared.events.send(out);
            }
            "stats" => {
                let _ = shared.events.send(format!(
                    "stats {} {} {} {} {}",
                    shared.live.load(Ordering::SeqCst),
                    shared.frames.load(Ordering::Relaxed),
                    shared.pings.load(Ordering::Relaxed),
                    shared.other.load(Ordering::Relaxed),
                    shared.bytes.load(Ordering::Relaxed)
                ));
            }
            "last" => {
                let seq = words.next().and_then(|w| w.parse::<u32>().ok());
                let lasts = shared.lasts.lock().unwrap_or_else(|p| p.into_inner());
                let at = lasts
                    .values()
                    .filter(|l| Some(l.load(Ordering::Relaxed)) == seq)
                    .count();
                let live = lasts.len();
                drop(lasts);
                let _ = shared.events.send(format!("last {at} {live}"));
            }
            "close" => break,
            _ => {}
        }
    }
    let _ = stop_tx.send(true);
    // Give the connections a moment to send their close frames.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while shared.live.load(Ordering::SeqCst) > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = shared.events.send("closed".into());
    drop(shared);
    let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
    Ok(())
}

/// Opens `count` subscribed connections, `parallel` at a time, until `deadline`.
#[allow(clippy::too_many_arguments)]
async fn open(
    args: &WorkerArgs,
    shared: &Arc<Shared>,
    stop: &watch::Receiver<bool>,
    count: usize,
    deadline: Duration,
    parallel: usize,
    identifier: &str,
    next_conn: &mut usize,
) -> (usize, usize, String) {
    let until = tokio::time::Instant::now() + deadline;
    let permits = Arc::new(Semaphore::new(parallel));
    let (results_tx, mut results_rx) = mpsc::unbounded_channel::<Result<(), String>>();
    let subscribe = serde_json::json!({"command": "subscribe", "identifier": identifier})
        .to_string()
        .into_bytes();
    let subscribe: Arc<[u8]> = Arc::from(subscribe);
    let mut started = 0;
    let (mut ok, mut failed, mut first_error) = (0usize, 0usize, String::new());
    let mut record = |r: Result<(), String>, ok: &mut usize, failed: &mut usize| match r {
        Ok(()) => *ok += 1,
        Err(e) => {
            *failed += 1;
            if first_error.is_empty() {
                first_error = e;
            }
        }
    };
    while started < count {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = tokio::time::sleep_until(until) => break,
        };
        // Collect finished attempts as we go, so a run of failures stops early.
        while let Ok(r) = results_rx.try_recv() {
            record(r, &mut ok, &mut failed);
        }
        // Stop at a run of failures: a whole window of attempts, or 5 % of them.
        if failed > 0 && (failed >= parallel.min(50) || failed * 20 > started.max(100)) {
            drop(permit);
            break;
        }
        let conn = Conn {
            index: *next_conn,
            addr: args.addr,
            source: args.source,
            path: args.path.clone(),
            subscribe: subscribe.clone(),
        };
        *next_conn += 1;
        started += 1;
        let shared = shared.clone();
        let stop = stop.clone();
        let results = results_tx.clone();
        tokio::spawn(async move {
            conn.run(shared, stop, results, until, permit).await;
        });
    }
    drop(results_tx);
    loop {
        let r = tokio::select! {
            r = results_rx.recv() => match r { Some(r) => r, None => break },
            _ = tokio::time::sleep_until(until + Duration::from_secs(1)) => break,
        };
        record(r, &mut ok, &mut failed);
    }
    let unfinished = started.saturating_sub(ok + failed);
    if unfinished > 0 && first_error.is_empty() {
        first_error = format!("{unfinished} still opening at the deadline");
    }
    (ok, failed + unfinished, first_error)
}

struct Conn {
    index: usize,
    addr: SocketAddr,
    source: Option<Ipv4Addr>,
    path: String,
    subscribe: Arc<[u8]>,
}

/// Connects, upgrades, waits for the welcome, sends `subscribe` (the whole subscribe command)
/// and waits for its confirmation.
pub async fn subscribed(
    source: Option<Ipv4Addr>,
    addr: SocketAddr,
    path: &str,
    subscribe: &[u8],
) -> Result<Socket, String> {
    let mut sock = Socket::connect(source, addr, path).await?;
    let welcome = loop {
        match sock.next().await? {
            Incoming::Text(t) if t.starts_with(br#"{"type":"ping""#) => continue,
            Incoming::Text(t) => break String::from_utf8_lossy(t).into_owned(),
            Incoming::Closed => return Err("closed before the welcome".into()),
        }
    };
    if welcome != r#"{"type":"welcome"}"# {
        return Err(format!("expected the welcome, got {welcome}"));
    }
    sock.send_text(subscribe).await?;
    loop {
        match sock.next().await? {
            Incoming::Text(t) if t.starts_with(br#"{"type":"ping""#) => continue,
            Incoming::Text(t) => {
                let text = String::from_utf8_lossy(t);
                if text.contains(r#""type":"confirm_subscription""#) {
                    return Ok(sock);
                }
                return Err(format!("expected the confirmation, got {text}"));
            }
            Incoming::Closed => return Err("closed before the confirmation".into()),
        }
    }
}

impl Conn {
    async fn setup(&self) -> Result<Socket, String> {
        subscribed(self.source, self.addr, &self.path, &self.subscribe).await
    }

    async fn run(
        self,
        shared: Arc<Shared>,
        mut stop: watch::Receiver<bool>,
        results: mpsc::UnboundedSender<Result<(), String>>,
        until: tokio::time::Instant,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) {
        // A server that stops accepting (at its file-descriptor limit) leaves connections in
        // the kernel's backlog: give each attempt at most SETUP_TIMEOUT.
        let until = until.min(tokio::time::Instant::now() + SETUP_TIMEOUT);
        let setup = tokio::time::timeout_at(until, self.setup()).await;
        drop(permit);
        let mut sock = match setup {
            Ok(Ok(sock)) => sock,
            Ok(Err(e)) => {
                let _ = results.send(Err(e));
                return;
            }
            Err(_) => {
                let _ = results.send(Err(format!(
                    "not upgraded, welcomed and subscribed within {} s",
                    SETUP_TIMEOUT.as_secs()
                )));
                return;
            }
        };
        let last = Arc::new(AtomicU32::new(u32::MAX));
        shared
            .lasts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(self.index, last.clone());
        shared.live.fetch_add(1, Ordering::SeqCst);
        let _ = results.send(Ok(()));
        drop(results);
        let shard = self.index % SHARDS;
        loop {
            tokio::select! {
                biased;
                _ = stop.changed() => {
                    sock.close().await;
                    break;
                }
                msg = sock.next() => match msg {
                    Ok(Incoming::Text(t)) => {
                        let at = now_ns();
                        if t.starts_with(br#"{"type":"ping""#) {
                            shared.pings.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                        shared.frames.fetch_add(1, Ordering::Relaxed);
                        shared.bytes.fetch_add(t.len() as u64, Ordering::Relaxed);
                        let msg = message(t).unwrap_or(b"");
                        let (frames, bytes) = &shared.kinds[message_kind(msg)];
                        frames.fetch_add(1, Ordering::Relaxed);
                        bytes.fetch_add(t.len() as u64, Ordering::Relaxed);
                        match message_seq(msg) {
                            Some(seq) if msg.starts_with(b"{\"encounter\"") => {
                                let before = last.load(Ordering::Relaxed);
                                if before == seq {
                                    shared.duplicates.fetch_add(1, Ordering::Relaxed);
                                } else if before != u32::MAX && before > seq {
                                    shared.stale.fetch_add(1, Ordering::Relaxed);
                                } else {
                                    last.store(seq, Ordering::Relaxed);
                                    shared.receipt(shard, seq, at);
                                }
                            }
                            Some(seq) => shared.receipt(shard, seq, at),
                            None => {
                                shared.other.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    Ok(Incoming::Closed) | Err(_) => break,
                },
            }
        }
        shared
            .lasts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.index);
        shared.live.fetch_sub(1, Ordering::SeqCst);
        let mut map = shared.lock_counts();
        shared.check_done(&mut map, None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_sequence_numbers() {
        assert_eq!(
            frame_seq(br#"{"identifier":"{\"id\":1}","message":{"q":42,"pad":"y"}}"#),
            Some(42)
        );
        assert_eq!(
            frame_seq(br#"{"identifier":"x","message":{"character":{"id":"a","name":"bench-7","active":true}}}"#),
            Some(7)
        );
        assert_eq!(
            frame_seq(br#"{"identifier":"x","message":{"q": 9, "pad": "y"}}"#),
            Some(9)
        );
        assert_eq!(
            frame_seq(br#"{"identifier":"x","message":{"characters":"reload"}}"#),
            None
        );
        let enc = format!(
            r#"{{"identifier":"x","message":{{"encounter":{{"id":"f","name":"bench-3","vehicle_ids":[],"action_id":"{}"}}}}}}"#,
            action_id(1234)
        );
        assert_eq!(frame_seq(enc.as_bytes()), Some(1234));
        assert_eq!(
            frame_seq(br#"{"identifier":"x","message":{"encounter":{"id":"f","action_id":null}}}"#),
            None
        );
        assert_eq!(
            frame_seq(br#"{"identifier":"x","message":{"encounter":{"id":"f","action_id":"5a0e2bd4-4cd4-4c83-9e2b-6f3a1d2c9b10"}}}"#),
            None
        );
    }

    #[test]
    fn tells_kinds_apart() {
        let kind = |t: &[u8]| KINDS[message_kind(message(t).unwrap_or(b""))];
        assert_eq!(
            kind(br#"{"identifier":"x","message":{"encounter":{"id":1}}}"#),
            "encounter"
        );
        assert_eq!(
            kind(br#"{"identifier":"x","message":{"characters":"reload"}}"#),
            "characters"
        );
        assert_eq!(
            kind(br#"{"identifier":"x","message":{"fight":{"id":1}}}"#),
            "fight"
        );
        assert_eq!(kind(br#"{"identifier":"x","message":{"q":1}}"#), "other");
        assert_eq!(kind(br#"{"type":"ping"}"#), "other");
    }
}
