//! The floor (`pgcable-bench floor-serve`): the least a relay can do, to read every figure
//! against what this machine and load client allow at all.
//!
//! One LISTEN connection on channel `pgcable`; for a `pgcable.broadcast` notification it builds
//! the ActionCable frame once (per distinct identifier) and makes one non-blocking write per
//! subscribed socket. It speaks just enough ActionCable for the load client: welcome, and a
//! confirmation for any `subscribe` (no authentication, no authorization, no pings, no
//! re-reads). `GET /ready` answers 200 once it is listening.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_postgres::{AsyncMessage, NoTls};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use crate::ws::{self, apply_mask, encode_frame, head_end, header_value, parse_header};

/// One subscribed socket.
struct Sub {
    stream: Arc<TcpStream>,
    identifier: Arc<str>,
    /// Bytes not yet written (only when a write would have blocked).
    pending: Mutex<VecDeque<(Arc<[u8]>, usize)>>,
}

impl Sub {
    /// Writes a frame without waiting; what the socket does not take now is written by a task.
    fn send(self: &Arc<Self>, frame: Arc<[u8]>) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if !pending.is_empty() {
            pending.push_back((frame, 0));
            return;
        }
        let written = match self.stream.try_write(&frame) {
            Ok(n) if n == frame.len() => return,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
            Err(_) => return,
        };
        pending.push_back((frame, written));
        drop(pending);
        let me = self.clone();
        tokio::spawn(async move { me.flush().await });
    }

    async fn flush(self: Arc<Self>) {
        loop {
            if self.stream.writable().await.is_err() {
                return;
            }
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            while let Some((frame, at)) = pending.front_mut() {
                match self.stream.try_write(&frame[*at..]) {
                    Ok(n) => {
                        *at += n;
                        if *at == frame.len() {
                            pending.pop_front();
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(_) => {
                        pending.clear();
                        return;
                    }
                }
            }
            if pending.is_empty() {
                return;
            }
        }
    }
}

#[derive(Default)]
struct Registry {
    streams: Mutex<HashMap<String, HashMap<u64, Arc<Sub>>>>,
    next: AtomicU64,
    listening: AtomicBool,
}

impl Registry {
    fn broadcast(&self, stream: &str, message: &str) {
        let streams = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        let Some(subs) = streams.get(stream) else {
            return;
        };
        let mut frames: HashMap<Arc<str>, Arc<[u8]>> = HashMap::new();
        for sub in subs.values() {
            let frame = frames
                .entry(sub.identifier.clone())
                .or_insert_with(|| {
                    let mut text = String::with_capacity(message.len() + 64);
                    text.push_str(r#"{"identifier":"#);
                    text.push_str(
                        &serde_json::to_string(&*sub.identifier).unwrap_or_else(|_| "\"\"".into()),
                    );
                    text.push_str(r#","message":"#);
                    text.push_str(message);
                    text.push('}');
                    Arc::from(encode_frame(ws::TEXT, text.as_bytes(), None))
                })
                .clone();
            sub.send(frame);
        }
    }
}

#[derive(Deserialize)]
struct Notification<'a> {
    k: &'a str,
    s: Option<String>,
    #[serde(borrow)]
    m: Option<&'a RawValue>,
}

/// Runs the floor server until killed.
pub async fn serve(listen: SocketAddr, database_url: String) -> Result<(), String> {
    crate::sys::raise_nofile();
    let registry = Arc::new(Registry::default());
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;

    let (client, mut connection) = tokio_postgres::connect(&database_url, NoTls)
        .await
        .map_err(|e| format!("cannot connect to the database: {e}"))?;
    let reg = registry.clone();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = messages.next().await {
            if let AsyncMessage::Notification(n) = message {
                if let Ok(note) = serde_json::from_str::<Notification>(n.payload()) {
                    if let (Some(stream), Some(m)) = (note.s.as_deref(), note.m) {
                        if note.k == "b" {
                            reg.broadcast(stream, m.get());
                        }
                    }
                }
            }
        }
        eprintln!("floor: the LISTEN connection ended");
        std::process::exit(1);
    });
    client
        .batch_execute("LISTEN pgcable")
        .await
        .map_err(|e| format!("LISTEN failed: {e}"))?;
    registry.listening.store(true, Ordering::SeqCst);
    // Keep the client (and so the connection) alive for as long as the server runs.
    let _client = client;

    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("floor: accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let registry = registry.clone();
        tokio::spawn(async move {
            let _ = handle(stream, registry).await;
        });
    }
}

async fn handle(mut stream: TcpStream, registry: Arc<Registry>) -> Result<(), String> {
    let _ = stream.set_nodelay(true);
    let mut buf = vec![0u8; 4096];
    let mut end = 0;
    let head_len = loop {
        if let Some(n) = head_end(&buf[..end]) {
            break n;
        }
        if end == buf.len() {
            return Err("request head too long".into());
        }
        let n = stream
            .read(&mut buf[end..])
            .await
            .map_err(|e| e.to_string())?;
        if n == 0 {
            return Ok(());
        }
        end += n;
    };
    let head = String::from_utf8_lossy(&buf[..head_len]).into_owned();
    let Some(key) = header_value(&head, "sec-websocket-key") else {
        let ready = head.starts_with("GET /ready") && registry.listening.load(Ordering::SeqCst);
        let status = if ready {
            "200 OK"
        } else {
            "503 Service Unavailable"
        };
        let _ = stream
            .write_all(
                format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await;
        return Ok(());
    };
    let protocol = header_value(&head, "sec-websocket-protocol")
        .filter(|p| p.split(',').any(|p| p.trim() == "actioncable-v1-json"))
        .map(|_| "Sec-WebSocket-Protocol: actioncable-v1-json\r\n")
        .unwrap_or("");
    let answer = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n{protocol}\r\n",
        derive_accept_key(key.as_bytes())
    );
    let mut out = answer.into_bytes();
    out.extend_from_slice(&encode_frame(ws::TEXT, br#"{"type":"welcome"}"#, None));
    stream.write_all(&out).await.map_err(|e| e.to_string())?;

    let stream = Arc::new(stream);
    let id = registry.next.fetch_add(1, Ordering::Relaxed);
    let mut subscribed: Vec<(String, Arc<Sub>)> = Vec::new();
    // An idle connection keeps only a small read buffer (it grows for a larger frame).
    let rest = buf[head_len..end].to_vec();
    let mut buf = vec![0u8; rest.len().max(512)];
    buf[..rest.len()].copy_from_slice(&rest);
    let mut end = rest.len();
    let result = read_frames(&stream, &mut buf, &mut end, |opcode, payload| {
        if opcode == ws::CLOSE {
            return false;
        }
        if opcode == ws::TEXT {
            if let Some(identifier) = subscribe_identifier(payload) {
                let sub = Arc::new(Sub {
                    stream: stream.clone(),
                    identifier: Arc::from(identifier.as_str()),
                    pending: Mutex::new(VecDeque::new()),
                });
                let confirm = format!(
                    r#"{{"identifier":{},"type":"confirm_subscription"}}"#,
                    serde_json::to_string(&identifier).unwrap_or_default()
                );
                sub.send(Arc::from(encode_frame(ws::TEXT, confirm.as_bytes(), None)));
                let stream_name = stream_of(&identifier);
                registry
                    .streams
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(stream_name.clone())
                    .or_default()
                    .insert(id, sub.clone());
                subscribed.push((stream_name, sub));
            }
        }
        true
    })
    .await;
    let mut streams = registry.streams.lock().unwrap_or_else(|p| p.into_inner());
    for (name, _) in &subscribed {
        if let Some(subs) = streams.get_mut(name) {
            subs.remove(&id);
            if subs.is_empty() {
                streams.remove(name);
            }
        }
    }
    result
}

/// Reads client frames and calls `handle` with each (unmasked); stops when it returns false.
async fn read_frames(
    stream: &TcpStream,
    buf: &mut Vec<u8>,
    end: &mut usize,
    mut handle: impl FnMut(u8, &[u8]) -> bool,
) -> Result<(), String> {
    let mut start = 0;
    loop {
        while let Some(h) = parse_header(&buf[start..*end]) {
            let total = h.header_len + h.payload_len;
            if *end - start < total {
                break;
            }
            let (s, e) = (start + h.header_len, start + total);
            if let Some(mask) = h.mask {
                apply_mask(&mut buf[s..e], mask);
            }
            start = e;
            if !handle(h.opcode, &buf[s..e]) {
                return Ok(());
            }
        }
        buf.copy_within(start..*end, 0);
        *end -= start;
        start = 0;
        if *end == buf.len() {
            if buf.len() >= ws::MAX_MESSAGE {
                return Err("client frame too large".into());
            }
            buf.resize(buf.len() * 2, 0);
        }
        stream.readable().await.map_err(|e| e.to_string())?;
        match stream.try_read(&mut buf[*end..]) {
            Ok(0) => return Ok(()),
            Ok(n) => *end += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// The identifier of a `subscribe` command, if the frame is one.
fn subscribe_identifier(payload: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Command {
        command: String,
        identifier: String,
    }
    let c: Command = serde_json::from_slice(payload).ok()?;
    (c.command == "subscribe").then_some(c.identifier)
}

/// `campaign_<id>` for a CampaignChannel identifier; other identifiers stream under their own
/// text.
fn stream_of(identifier: &str) -> String {
    #[derive(Deserialize)]
    struct Params {
        id: Option<String>,
    }
    match serde_json::from_str::<Params>(identifier) {
        Ok(Params { id: Some(id) }) => format!("campaign_{id}"),
        _ => identifier.to_string(),
    }
}
