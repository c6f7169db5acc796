//! Just enough WebSocket (RFC 6455) for the load client and the floor server: the opening
//! handshake, frame headers, masking, and a client socket that hands out whole text messages.
//!
//! No extensions, no TLS. Written for speed of the load client, which shares the machine with
//! the server it measures: frames are parsed in place from one buffer per socket.

use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::time::Duration;

use base64::Engine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// Text frame opcode.
pub const TEXT: u8 = 0x1;
/// Binary frame opcode.
pub const BINARY: u8 = 0x2;
/// Continuation frame opcode.
pub const CONTINUATION: u8 = 0x0;
/// Close frame opcode.
pub const CLOSE: u8 = 0x8;
/// Ping frame opcode.
pub const PING: u8 = 0x9;
/// Pong frame opcode.
pub const PONG: u8 = 0xA;

/// Largest message either side accepts (the bench's messages are a few KiB).
pub const MAX_MESSAGE: usize = 16 << 20;

/// A parsed frame header.
#[derive(Debug, Clone, Copy)]
pub struct Header {
    /// Last frame of the message.
    pub fin: bool,
    /// Opcode.
    pub opcode: u8,
    /// Masking key, for client-to-server frames.
    pub mask: Option<[u8; 4]>,
    /// Bytes of header.
    pub header_len: usize,
    /// Bytes of payload.
    pub payload_len: usize,
}

/// Parses a frame header from the start of `b`; `None` until enough bytes are there.
pub fn parse_header(b: &[u8]) -> Option<Header> {
    if b.len() < 2 {
        return None;
    }
    let fin = b[0] & 0x80 != 0;
    let opcode = b[0] & 0x0f;
    let masked = b[1] & 0x80 != 0;
    let (payload_len, mut at) = match b[1] & 0x7f {
        126 => {
            if b.len() < 4 {
                return None;
            }
            (u16::from_be_bytes([b[2], b[3]]) as usize, 4)
        }
        127 => {
            if b.len() < 10 {
                return None;
            }
            let mut n = [0u8; 8];
            n.copy_from_slice(&b[2..10]);
            (u64::from_be_bytes(n) as usize, 10)
        }
        n => (n as usize, 2),
    };
    let mask = if masked {
        if b.len() < at + 4 {
            return None;
        }
        let m = [b[at], b[at + 1], b[at + 2], b[at + 3]];
        at += 4;
        Some(m)
    } else {
        None
    };
    Some(Header {
        fin,
        opcode,
        mask,
        header_len: at,
        payload_len,
    })
}

/// XORs `data` with the masking key (masking and unmasking are the same operation).
pub fn apply_mask(data: &mut [u8], mask: [u8; 4]) {
    for (i, b) in data.iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

/// One whole frame: header then payload, masked when `mask` is given (client frames).
pub fn encode_frame(opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(0x80 | opcode);
    let m = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(m | n as u8),
        n if n <= 0xffff => {
            out.push(m | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(m | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(key) => {
            out.extend_from_slice(&key);
            let start = out.len();
            out.extend_from_slice(payload);
            apply_mask(&mut out[start..], key);
        }
        None => out.extend_from_slice(payload),
    }
    out
}

/// The value of a header in an HTTP head (case-insensitive name), if present.
pub fn header_value<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|line| {
        let (k, v) = line.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// The position just past the blank line that ends an HTTP head, if it is complete.
pub fn head_end(b: &[u8]) -> Option<usize> {
    b.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

/// What [`Socket::next`] hands out.
#[derive(Debug)]
pub enum Incoming<'a> {
    /// A whole text (or binary) message.
    Text(&'a [u8]),
    /// The server closed the connection (close frame or end of stream).
    Closed,
}

enum Got {
    Frame(usize, usize),
    Fragments,
    Closed,
}

/// A client WebSocket after a successful handshake.
#[derive(Debug)]
pub struct Socket {
    stream: TcpStream,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    frag: Vec<u8>,
    seed: u64,
}

impl Socket {
    /// Connects from `source` (port chosen by the kernel) to `addr`, sends the upgrade for
    /// `path` (with its query) offering the ActionCable subprotocols, and checks the answer.
    pub async fn connect(
        source: Option<Ipv4Addr>,
        addr: SocketAddr,
        path: &str,
    ) -> Result<Socket, String> {
        let socket = TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
        if let Some(ip) = source {
            // Let connect() pick the port by the whole 4-tuple: a port bound by bind() alone
            // would be closed to every other program's outgoing connections for as long as
            // this socket (or its TIME_WAIT) lives, and a bench run holds thousands.
            let one: libc::c_int = 1;
            // SAFETY: setsockopt reads `one` for the given length; the fd is the socket's own.
            unsafe {
                libc::setsockopt(
                    socket.as_raw_fd(),
                    libc::IPPROTO_IP,
                    libc::IP_BIND_ADDRESS_NO_PORT,
                    &one as *const libc::c_int as *const libc::c_void,
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
            socket
                .bind(SocketAddr::from((ip, 0)))
                .map_err(|e| format!("bind {ip}: {e}"))?;
        }
        let stream = socket
            .connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let _ = stream.set_nodelay(true);
        let key_bytes = *uuid::Uuid::new_v4().as_bytes();
        let key = base64::engine::general_purpose::STANDARD.encode(key_bytes);
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Protocol: actioncable-v1-json, actioncable-unsupported\r\n\
             Origin: http://{addr}\r\n\r\n"
        );
        let mut sock = Socket {
            stream,
            buf: vec![0; 4096],
            start: 0,
            end: 0,
            frag: Vec::new(),
            seed: u64::from_le_bytes([
                key_bytes[0],
                key_bytes[1],
                key_bytes[2],
                key_bytes[3],
                key_bytes[4],
                key_bytes[5],
                key_bytes[6],
                key_bytes[7],
            ]) | 1,
        };
        sock.stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("send upgrade: {e}"))?;
        let end = loop {
            if let Some(end) = head_end(&sock.buf[..sock.end]) {
                break end;
            }
            if sock.end == sock.buf.len() {
                return Err("upgrade answer too long".into());
            }
            let n = sock
                .stream
                .read(&mut sock.buf[sock.end..])
                .await
                .map_err(|e| format!("read upgrade answer: {e}"))?;
            if n == 0 {
                return Err("connection closed during the upgrade".into());
            }
            sock.end += n;
        };
        let head = String::from_utf8_lossy(&sock.buf[..end]).into_owned();
        let status = head.lines().next().unwrap_or("");
        if !status.starts_with("HTTP/1.1 101") {
            return Err(format!("upgrade refused: {status}"));
        }
        let accept = header_value(&head, "sec-websocket-accept").unwrap_or("");
        if accept != derive_accept_key(key.as_bytes()) {
            return Err("bad Sec-WebSocket-Accept".into());
        }
        sock.start = end;
        Ok(sock)
    }

    fn next_mask(&mut self) -> [u8; 4] {
        // xorshift64: masks need not be strong here, only present.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        (self.seed as u32).to_le_bytes()
    }

    /// Sends a masked text frame.
    pub async fn send_text(&mut self, text: &[u8]) -> Result<(), String> {
        let mask = self.next_mask();
        let frame = encode_frame(TEXT, text, Some(mask));
        self.stream
            .write_all(&frame)
            .await
            .map_err(|e| format!("send: {e}"))
    }

    /// Sends a close frame (1000) and waits up to a second for the server to close the
    /// connection, so that the server, not the load client, holds the TIME_WAIT; a server that
    /// does not close in time gets a reset instead.
    pub async fn close(&mut self) {
        let mask = self.next_mask();
        let frame = encode_frame(CLOSE, &1000u16.to_be_bytes(), Some(mask));
        let closed_by_server = tokio::time::timeout(Duration::from_secs(1), async {
            if self.stream.write_all(&frame).await.is_err() {
                return false;
            }
            let mut sink = [0u8; 1024];
            loop {
                match self.stream.read(&mut sink).await {
                    Ok(0) => return true,
                    Ok(_) => continue,
                    Err(_) => return false,
                }
            }
        })
        .await
        .unwrap_or(false);
        if !closed_by_server {
            let _ = self.stream.set_zero_linger();
        }
    }

    /// Reads more bytes so that at least `need` bytes from `start` are buffered.
    async fn fill(&mut self, need: usize) -> Result<bool, String> {
        if need > MAX_MESSAGE {
            return Err(format!("frame of {need} bytes is over the limit"));
        }
        if self.start > 0 && (self.start == self.end || self.start + need > self.buf.len()) {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if need > self.buf.len() {
            self.buf.resize(need.next_power_of_two(), 0);
        }
        let n = self
            .stream
            .read(&mut self.buf[self.end..])
            .await
            .map_err(|e| format!("read: {e}"))?;
        self.end += n;
        Ok(n > 0)
    }

    /// The next text message; answers pings, skips pongs, reassembles fragments.
    pub async fn next(&mut self) -> Result<Incoming<'_>, String> {
        let got = loop {
            let avail = &self.buf[self.start..self.end];
            let header = match parse_header(avail) {
                Some(h) if avail.len() >= h.header_len + h.payload_len => h,
                Some(h) => {
                    if !self.fill(h.header_len + h.payload_len).await? {
                        break Got::Closed;
                    }
                    continue;
                }
                None => {
                    if !self.fill(14).await? {
                        break Got::Closed;
                    }
                    continue;
                }
            };
            let s = self.start + header.header_len;
            let e = s + header.payload_len;
            self.start = e;
            if let Some(mask) = header.mask {
                apply_mask(&mut self.buf[s..e], mask);
            }
            match header.opcode {
                TEXT | BINARY if header.fin => break Got::Frame(s, e),
                TEXT | BINARY => {
                    self.frag.clear();
                    self.frag.extend_from_slice(&self.buf[s..e]);
                }
                CONTINUATION => {
                    self.frag.extend_from_slice(&self.buf[s..e]);
                    if self.frag.len() > MAX_MESSAGE {
                        return Err("fragmented message over the limit".into());
                    }
                    if header.fin {
                        break Got::Fragments;
                    }
                }
                PING => {
                    let payload = self.buf[s..e].to_vec();
                    let mask = self.next_mask();
                    let pong = encode_frame(PONG, &payload, Some(mask));
                    self.stream
                        .write_all(&pong)
                        .await
                        .map_err(|e| format!("send pong: {e}"))?;
                }
                CLOSE => break Got::Closed,
                _ => {}
            }
        };
        Ok(match got {
            Got::Frame(s, e) => Incoming::Text(&self.buf[s..e]),
            Got::Fragments => Incoming::Text(&self.frag),
            Got::Closed => Incoming::Closed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        for len in [0usize, 5, 125, 126, 65535, 65536] {
            let payload = vec![b'x'; len];
            for mask in [None, Some([1, 2, 3, 4])] {
                let frame = encode_frame(TEXT, &payload, mask);
                let h = parse_header(&frame).expect("header");
                assert_eq!(h.payload_len, len);
                assert_eq!(h.header_len + len, frame.len());
                let mut body = frame[h.header_len..].to_vec();
                if let Some(m) = h.mask {
                    apply_mask(&mut body, m);
                }
                assert_eq!(body, payload);
                assert!(parse_header(&frame[..1]).is_none());
            }
        }
    }

    #[test]
    fn finds_headers() {
        let head = "HTTP/1.1 101 Switching\r\nSec-WebSocket-Accept: abc\r\n\r\n";
        assert_eq!(header_value(head, "sec-websocket-accept"), Some("abc"));
        assert_eq!(head_end(head.as_bytes()), Some(head.len()));
    }
}
