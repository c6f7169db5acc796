//! Hostile and broken clients against a real relay on a real Postgres: forged tokens, other
//! people's subscriptions, hostile identifiers, stalled readers, connection churn, half-open and
//! silent sockets, oversized, fragmented and invalid frames, deep nesting and command floods.
//! Each must be handled as protocol.md says, and the relay must keep serving everyone else.
//!
//! The relay's own log is captured (this file installs the tracing subscriber): no test here may
//! make the relay log a database error. Light versions run in `cargo test`; heavy ones are
//! `#[ignore]`d (`cargo test --release --test hostile -- --ignored --nocapture`).

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use base64::Engine;
use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

// ---------------------------------------------------------------------------------------------
// The relay's log, captured

static LOGS: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct LogBuf;

impl std::io::Write for LogBuf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        LOGS.lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs the capturing subscriber before any relay starts (common's own is then a no-op).
fn capture_logs() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("warn,pgcable=info"))
            .with_ansi(false)
            .with_writer(|| LogBuf)
            .try_init();
    });
}

/// Lines of the relay's log that report a database error.
fn database_errors() -> Vec<String> {
    let logs = LOGS.lock().unwrap_or_else(|p| p.into_inner());
    String::from_utf8_lossy(&logs)
        .lines()
        .filter(|l| l.contains("pgcable"))
        .filter(|l| {
            [
                "database error",
                "database is unreachable",
                "access check failed",
                "no database connection",
                "re-read failed",
                "presence list not sent",
            ]
            .iter()
            .any(|m| l.contains(m))
        })
        .map(str::to_string)
        .collect()
}

fn assert_no_database_errors() {
    let errors = database_errors();
    assert!(
        errors.is_empty(),
        "the relay logged database errors:\n{}",
        errors.join("\n")
    );
}

/// Tests that count process-wide resources (fds, memory) run alone; the others share.
static PROCESS: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// `VmRSS` of this process in KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// Raw WebSocket framing, for what tungstenite refuses to send

/// Sends an upgrade request for `/cable?<query>` and reads the response head. Returns the
/// stream and any bytes read past the head (the first frames).
async fn raw_upgrade(addr: SocketAddr, query: &str) -> (TcpStream, String, Vec<u8>) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let req = format!(
        "GET /cable?{query} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: actioncable-v1-json\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 8192];
    let end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        let n = tokio::time::timeout(WAIT, s.read(&mut chunk))
            .await
            .expect("response in time")
            .expect("read");
        if n == 0 {
            break buf.len();
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    (s, head, buf[end..].to_vec())
}

/// A masked client frame.
fn client_frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![(if fin { 0x80 } else { 0 }) | opcode];
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= u16::MAX as usize {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    let mask = [0x37u8, 0xfa, 0x21, 0x3d];
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// Server frames read until the socket ends or `within` passes: (opcode, payload), and whether
/// the socket ended.
async fn server_frames(
    s: &mut TcpStream,
    buf: Vec<u8>,
    within: Duration,
) -> (Vec<(u8, Vec<u8>)>, bool) {
    server_frames_until(s, buf, within, |_| false).await
}

/// [`server_frames`], stopping early once `enough` says so.
async fn server_frames_until(
    s: &mut TcpStream,
    mut buf: Vec<u8>,
    within: Duration,
    enough: impl Fn(&[(u8, Vec<u8>)]) -> bool,
) -> (Vec<(u8, Vec<u8>)>, bool) {
    let deadline = tokio::time::Instant::now() + within;
    let mut frames = Vec::new();
    let mut chunk = vec![0u8; 65536];
    loop {
        // Parse what we have.
        loop {
            if buf.len() < 2 {
                break;
            }
            let opcode = buf[0] & 0x0f;
            let (len, at) = match buf[1] & 0x7f {
                126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
                127 if buf.len() >= 10 => {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(&buf[2..10]);
                    (u64::from_be_bytes(b) as usize, 10)
                }
                126 | 127 => break,
                n => (n as usize, 2),
            };
            if buf.len() < at + len {
                break;
            }
            frames.push((opcode, buf[at..at + len].to_vec()));
            buf.drain(..at + len);
        }
        if enough(&frames) {
            return (frames, false);
        }
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Err(_) => return (frames, false),
            Ok(Ok(0)) => return (frames, true),
            // A reset after the close frame is fine: the client has what it is owed.
            Ok(Err(_)) => return (frames, true),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn close_code(frames: &[(u8, Vec<u8>)]) -> Option<u16> {
    frames
        .iter()
        .find(|(op, _)| *op == 8)
        .and_then(|(_, p)| (p.len() >= 2).then(|| u16::from_be_bytes([p[0], p[1]])))
}

/// The relay still serves: a new client subscribes and receives a broadcast.
async fn still_serving(relay: &pgcable::server::Server, db: &TestDb, user: Uuid, campaign: Uuid) {
    let id = campaign_channel(campaign);
    let mut c = Cable::welcomed(relay.addr, &token(user)).await;
    c.subscribed(&id).await;
    let n = Uuid::new_v4().to_string();
    db.broadcast(
        &format!("campaign_{campaign}"),
        &json!({ "alive": n }).to_string(),
    )
    .await;
    assert_eq!(
        c.next_text().await,
        delivery(&id, &json!({ "alive": n }).to_string())
    );
}

// ---------------------------------------------------------------------------------------------
// 4. Hostile tokens

fn b64(v: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v)
}

/// `header.payload.signature` with any header, signed HS256 with `secret`.
fn signed(header: &serde_json::Value, payload: &[u8], secret: &str) -> String {
    let message = format!("{}.{}", b64(header.to_string().as_bytes()), b64(payload));
    let sig = jsonwebtoken::crypto::sign(
        message.as_bytes(),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
        jsonwebtoken::Algorithm::HS256,
    )
    .expect("sign");
    format!("{message}.{sig}")
}

fn hs256() -> serde_json::Value {
    json!({"alg": "HS256", "typ": "JWT"})
}

fn claims(v: serde_json::Value) -> Vec<u8> {
    v.to_string().into_bytes()
}

/// What a client sees: a welcome, or the unauthorized frame (or an HTTP refusal).
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    Welcome,
    Unauthorized,
    HttpRefused(String),
}

async fn answer(addr: SocketAddr, query: &str) -> Answer {
    let (mut s, head, rest) = raw_upgrade(addr, query).await;
    if !head.starts_with("HTTP/1.1 101") {
        return Answer::HttpRefused(head.lines().next().unwrap_or("").to_string());
    }
    let (frames, _) = server_frames_until(&mut s, rest, Duration::from_secs(5), |f| {
        f.iter().any(|(op, _)| *op == 1)
    })
    .await;
    let first = frames
        .iter()
        .find(|(op, _)| *op == 1)
        .map(|(_, p)| String::from_utf8_lossy(p).to_string());
    match first.as_deref() {
        Some(r#"{"type":"welcome"}"#) => Answer::Welcome,
        Some(r#"{"type":"disconnect","reason":"unauthorized","reconnect":false}"#) => {
            Answer::Unauthorized
        }
        other => panic!("unexpected first frame {other:?} for {query:.80}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_tokens_are_refused() {
    capture_logs();
    let _shared = PROCESS.read().await;
    let db = TestDb::create().await;
    let relay = relay(&db).await;
    let user = db.user(false).await;
    let sub = user.to_string();
    let now = now();
    let good_claims = claims(json!({"sub": sub, "exp": now + 600}));
    let good = signed(&hs256(), &good_claims, SECRET);
    let other = token(db.user(false).await);
    let parts: Vec<&str> = good.split('.').collect();
    let other_parts: Vec<&str> = other.split('.').collect();
    let q = |t: &str| format!("token={t}");

    let refused: Vec<(&str, String)> = vec![
        // Algorithm confusion: every header but HS256 is refused, whatever the signature.
        (
            "RS256 header, HMAC-signed with the secret (key confusion)",
            q(&signed(
                &json!({"alg":"RS256","typ":"JWT"}),
                &good_claims,
                SECRET,
            )),
        ),
        (
            "HS512 header, HS256 signature",
            q(&signed(&json!({"alg":"HS512"}), &good_claims, SECRET)),
        ),
        (
            "alg none with a valid signature kept",
            q(&signed(&json!({"alg":"none"}), &good_claims, SECRET)),
        ),
        (
            "alg none, empty signature",
            q(&format!("{}.{}.", b64(br#"{"alg":"none"}"#), parts[1])),
        ),
        (
            "alg None",
            q(&format!("{}.{}.", b64(br#"{"alg":"None"}"#), parts[1])),
        ),
        (
            "alg NONE, no signature segment",
            q(&format!("{}.{}", b64(br#"{"alg":"NONE"}"#), parts[1])),
        ),
        (
            "alg hs256 (lower case)",
            q(&signed(&json!({"alg":"hs256"}), &good_claims, SECRET)),
        ),
        (
            "no alg",
            q(&signed(&json!({"typ":"JWT"}), &good_claims, SECRET)),
        ),
        (
            "alg as an array",
            q(&signed(&json!({"alg":["HS256"]}), &good_claims, SECRET)),
        ),
        // Keys the attacker chooses.
        (
            "embedded jwk, signed with the attacker's key",
            q(&signed(
                &json!({"alg":"HS256","jwk":{"kty":"oct","k":b64(b"attacker")}}),
                &good_claims,
                "attacker",
            )),
        ),
        (
            "kid pointing at /dev/null, empty key",
            q(&signed(
                &json!({"alg":"HS256","kid":"../../../../../../dev/null"}),
                &good_claims,
                "",
            )),
        ),
        (
            "kid with SQL, attacker key",
            q(&signed(
                &json!({"alg":"HS256","kid":"x' UNION SELECT 'key"}),
                &good_claims,
                "key",
            )),
        ),
        (
            "jku/x5u headers, attacker key",
            q(&signed(
                &json!({"alg":"HS256","jku":"http://127.0.0.1:1/jwks","x5u":"http://127.0.0.1:1/x5u"}),
                &good_claims,
                "attacker",
            )),
        ),
        ("empty secret", q(&signed(&hs256(), &good_claims, ""))),
        (
            "secret with a trailing newline",
            q(&signed(&hs256(), &good_claims, &format!("{SECRET}\n"))),
        ),
        // Signature and structure.
        (
            "another token's signature",
            q(&format!("{}.{}.{}", parts[0], parts[1], other_parts[2])),
        ),
        (
            "claims of another token, this signature",
            q(&format!("{}.{}.{}", parts[0], other_parts[1], parts[2])),
        ),
        (
            "signature truncated",
            q(&format!(
                "{}.{}.{}",
                parts[0],
                parts[1],
                &parts[2][..parts[2].len() - 2]
            )),
        ),
        ("signature with padding", q(&format!("{good}="))),
        ("four segments", q(&format!("{good}.x"))),
        ("two tokens glued", q(&format!("{good}{good}"))),
        ("leading space", q(&format!("%20{good}"))),
        ("trailing NUL", q(&format!("{good}%00"))),
        (
            "payload not JSON",
            q(&{
                let h = b64(hs256().to_string().as_bytes());
                let p = b64(b"not json");
                let m = format!("{h}.{p}");
                let s = jsonwebtoken::crypto::sign(
                    m.as_bytes(),
                    &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
                    jsonwebtoken::Algorithm::HS256,
                )
                .expect("sign");
                format!("{m}.{s}")
            }),
        ),
        (
            "payload a JSON array",
            q(&signed(&hs256(), &claims(json!([sub])), SECRET)),
        ),
        // Claims.
        (
            "sub null",
            q(&signed(&hs256(), &claims(json!({"sub": null})), SECRET)),
        ),
        (
            "no sub",
            q(&signed(&hs256(), &claims(json!({"user_id": sub})), SECRET)),
        ),
        (
            "sub an object",
            q(&signed(
                &hs256(),
                &claims(json!({"sub": {"id": sub}})),
                SECRET,
            )),
        ),
        (
            "sub an array",
            q(&signed(&hs256(), &claims(json!({"sub": [sub]})), SECRET)),
        ),
        (
            "sub with braces",
            q(&signed(
                &hs256(),
                &claims(json!({"sub": format!("{{{sub}}}")})),
                SECRET,
            )),
        ),
        (
            "sub as a urn",
            q(&signed(
                &hs256(),
                &claims(json!({"sub": format!("urn:uuid:{sub}")})),
                SECRET,
            )),
        ),
        (
            "sub without hyphens",
            q(&signed(
                &hs256(),
                &claims(json!({"sub": user.simple().to_string()})),
                SECRET,
            )),
        ),
        (
            "sub with a trailing space",
            q(&signed(
                &hs256(),
                &claims(json!({"sub": format!("{sub} ")})),
                SECRET,
            )),
        ),
        (
            "sub with a NUL",
            q(&signed(
                &hs256(),
                &claims(json!({"sub": format!("{sub}\u{0}")})),
                SECRET,
            )),
        ),
        (
            "sub with SQL",
            q(&signed(
                &hs256(),
                &claims(json!({"sub": "'; DROP TABLE users; --"})),
                SECRET,
            )),
        ),
        (
            "sub: uuid then SQL",
            q(&signed(
                &hs256(),
                &claims(json!({"sub": format!("{sub}' OR '1'='1")})),
                SECRET,
            )),
        ),
        (
            "sub 100 KiB",
            q(&signed(
                &hs256(),
                &claims(json!({"sub": "9".repeat(100 << 10)})),
                SECRET,
            )),
        ),
        (
            "expired a second ago",
            q(&signed(
                &hs256(),
                &claims(json!({"sub": sub, "exp": now - 1})),
                SECRET,
            )),
        ),
        (
            "exp as a string",
            q(&signed(
                &hs256(),
                &claims(json!({"sub": sub, "exp": (now + 600).to_string()})),
                SECRET,
            )),
        ),
        (
            "exp in 1970",
            q(&signed(
                &hs256(),
                &claims(json!({"sub": sub, "exp": 1})),
                SECRET,
            )),
        ),
        (
            "exp negative",
            q(&signed(
                &hs256(),
                &claims(json!({"sub": sub, "exp": -1})),
                SECRET,
            )),
        ),
        (
            "not yet valid (nbf in 60 s)",
            q(&signed(
                &hs256(),
                &claims(json!({"sub": sub, "nbf": now + 60})),
                SECRET,
            )),
        ),
        (
            "sub of a user that does not exist",
            q(&token(Uuid::new_v4())),
        ),
        ("sub the nil uuid", q(&token(Uuid::nil()))),
        // Where the token is.
        (
            "forged first, valid second",
            format!(
                "token={}&token={good}",
                &signed(&hs256(), &good_claims, "attacker")
            ),
        ),
        ("valid token under another name", format!("jwt={good}")),
        (
            "valid token as access_token",
            format!("access_token={good}"),
        ),
        ("Bearer without a token", "token=Bearer%20".to_string()),
    ];
    let mut failures = Vec::new();
    for (case, query) in &refused {
        let got = answer(relay.addr, query).await;
        if got == Answer::Welcome {
            failures.push(format!("{case}: let in"));
        }
    }
    // Sizes: a 60 KiB token is read and refused; a 1 MiB one is refused at HTTP (or read and
    // refused), never let in.
    for size in [60 << 10, 1 << 20] {
        let got = answer(relay.addr, &format!("token={}", "A".repeat(size))).await;
        assert_ne!(got, Answer::Welcome, "a {size}-byte token");
        println!("a {size}-byte token: {got:?}");
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // What must still be let in (so the table above cannot pass by refusing everything).
    for (case, query) in [
        ("the good token", q(&good)),
        (
            "sub in upper case",
            q(&signed(
                &hs256(),
                &claims(json!({"sub": sub.to_uppercase(), "exp": now + 600})),
                SECRET,
            )),
        ),
        (
            "valid first, forged second",
            format!("token={good}&token=forged"),
        ),
        (
            "kid and typ headers, real secret",
            q(&signed(
                &json!({"alg":"HS256","typ":"at+jwt","kid":"x' OR 1=1"}),
                &good_claims,
                SECRET,
            )),
        ),
    ] {
        assert_eq!(answer(relay.addr, &query).await, Answer::Welcome, "{case}");
    }
    println!("{} hostile tokens refused", refused.len() + 2);
    assert_no_database_errors();
    relay.shutdown();
    relay.stopped().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_token_policies_refuse_what_they_must() {
    capture_logs();
    let _shared = PROCESS.read().await;
    let db = TestDb::create().await;
    let relay = relay_with(&db, |c| {
        c.require_exp = true;
        c.check_jti = true;
        c.require_active_user = true;
    })
    .await;
    let user = db.user(false).await;
    let inactive = db.user(false).await;
    db.client()
        .await
        .execute(
            "UPDATE users SET active = false WHERE id = $1",
            &[&inactive],
        )
        .await
        .expect("deactivate");
    let now = now();
    // common's users have jti = id.
    let with = |sub: Uuid, jti: Option<&str>, exp: Option<i64>| {
        let mut c = json!({"sub": sub.to_string()});
        if let Some(j) = jti {
            c["jti"] = json!(j);
        }
        if let Some(e) = exp {
            c["exp"] = json!(e);
        }
        format!("token={}", token_with(&c, SECRET))
    };
    let user_jti = user.to_string();
    for (case, query, welcome) in [
        (
            "all good",
            with(user, Some(&user_jti), Some(now + 600)),
            true,
        ),
        ("no exp", with(user, Some(&user_jti), None), false),
        ("no jti", with(user, None, Some(now + 600)), false),
        (
            "another user's jti",
            with(user, Some(&inactive.to_string()), Some(now + 600)),
            false,
        ),
        (
            "jti with SQL",
            with(user, Some("' OR '1'='1"), Some(now + 600)),
            false,
        ),
        (
            "inactive user, right jti",
            with(inactive, Some(&inactive.to_string()), Some(now + 600)),
            false,
        ),
    ] {
        let got = answer(relay.addr, &query).await;
        let want = if welcome {
            Answer::Welcome
        } else {
            Answer::Unauthorized
        };
        assert_eq!(got, want, "{case}");
    }
    assert_no_database_errors();
    relay.shutdown();
    relay.stopped().await;
}

// ---------------------------------------------------------------------------------------------
// 4. Other people's subscriptions, hostile identifiers

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nobody_subscribes_to_what_is_not_theirs() {
    capture_logs();
    let _shared = PROCESS.read().await;
    let db = TestDb::create().await;
    let victim = db.user(false).await;
    let attacker = db.user(false).await;
    let shared_owner = db.user(false).await;
    let victims = db.campaign(victim).await;
    let victims_fight = db.fight(victims).await;
    let own = db.campaign(attacker).await;
    let shared = db.campaign(shared_owner).await;
    db.member(attacker, shared).await;
    let shared_fight = db.fight(shared).await;
    let relay = relay(&db).await;
    let conn_id = pgcable::cable::channels::connection_identifier("shot-server", victim);

    let mut a = Cable::welcomed(relay.addr, &token(attacker)).await;
    let up = victims.to_string().to_uppercase();
    let forbidden = [
        campaign_channel(victims),
        format!(r#"{{"channel":"CampaignChannel","id":"{up}"}}"#),
        format!(r#"{{"channel":"CampaignChannel","id":"{victims}","client_id":"{conn_id}"}}"#),
        format!(r#"{{"channel":"CampaignChannel","id":"{own}","id":"{victims}"}}"#),
        format!(r#"{{"channel":"FightChannel","fight_id":"{victims_fight}"}}"#),
        format!(r#"{{"channel":"FightChannel","fight_id":"{victims}"}}"#),
        format!(r#"{{"channel":"FightChannel","id":"{shared_fight}"}}"#),
        format!(r#"{{"channel":"UserChannel","id":"{victim}"}}"#),
        format!(
            r#"{{"channel":"UserChannel","id":"{}"}}"#,
            victim.to_string().to_uppercase()
        ),
        r#"{"channel":"UserChannel"}"#.to_string(),
        format!(r#"{{"channel":"CampaignChannel ","id":"{own}"}}"#),
        format!(r#"{{"channel":{{"name":"CampaignChannel"}},"id":"{own}"}}"#),
    ];
    for id in &forbidden {
        a.subscribe(id).await;
        assert_eq!(a.next_text().await, reject(id), "{id}");
    }
    // Allowed, and harmless: its streams are the attacker's own campaign (the last `id` wins,
    // and that is also what was checked), and a campaign they are a member of.
    let allowed = [
        format!(r#"{{"channel":"CampaignChannel","id":"{victims}","id":"{own}"}}"#),
        format!(r#"{{"channel":"CampaignChannel","id":"{own}","client_id":"{victims}"}}"#),
        format!(r#"{{"channel":"CampaignChannel","id":"{own}","client_id":"../{victims}"}}"#),
        format!(r#"{{"channel":"CampaignChannel","id":"{own}","client_id":"{conn_id}"}}"#),
        format!(r#"{{"channel":"CampaignChannel","id":"{shared}","fight_id":"{victims_fight}"}}"#),
        format!(r#"{{"channel":"FightChannel","fight_id":"{shared_fight}"}}"#),
        format!(r#"{{"channel":"UserChannel","id":"{attacker}"}}"#),
    ];
    for id in &allowed {
        a.subscribed(id).await;
        if id.contains("FightChannel") {
            let presence = a.next_text().await;
            assert!(presence.contains(r#""users":["#), "{presence}");
        }
    }

    // The victim's traffic, every way it goes out.
    let mut v = Cable::welcomed(relay.addr, &token(victim)).await;
    v.subscribed(&campaign_channel(victims)).await;
    let before = Instant::now();
    for stream in [
        format!("campaign_{victims}"),
        format!("campaign_{victims}_{conn_id}"),
        format!("campaign_{victims}_x"),
        format!("fight_{victims_fight}"),
        format!("user_{victim}"),
    ] {
        db.broadcast(&stream, r#"{"secret":true}"#).await;
    }
    db.client()
        .await
        .execute(
            "INSERT INTO characters (name, campaign_id, created_at, updated_at) VALUES ('Secret', $1, now(), now())",
            &[&victims],
        )
        .await
        .expect("victim's character");
    // The victim hears their own campaign (so the broadcasts did happen) ...
    let mut heard = 0;
    while heard < 3 {
        let t = v.next_text().await;
        assert!(
            t.contains("secret") || t.contains("Secret") || t.contains("reload"),
            "{t}"
        );
        heard += 1;
    }
    // ... and the attacker hears nothing at all.
    a.nothing_for(
        Duration::from_secs(1).saturating_sub(before.elapsed()) + Duration::from_millis(500),
    )
    .await;
    assert_no_database_errors();
    relay.shutdown();
    relay.stopped().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_identifiers_are_rejected_without_a_database_error() {
    capture_logs();
    let _shared = PROCESS.read().await;
    let db = TestDb::create().await;
    let relay = relay(&db).await;
    let user = db.user(false).await;
    let campaign = db.campaign(user).await;
    let admin = db.user(true).await;
    let mut cases: Vec<String> = Vec::new();
    for channel in ["CampaignChannel", "FightChannel", "UserChannel"] {
        let key = if channel == "FightChannel" {
            "fight_id"
        } else {
            "id"
        };
        for value in [
            json!("x' OR 1=1 --"),
            json!("'; DROP TABLE campaigns; --"),
            json!(format!("{campaign}'; SELECT pg_sleep(10); --")),
            json!(format!("{campaign}\u{0}")),
            json!(format!(" {campaign}")),
            json!("00000000-0000-0000-0000-00000000000g"),
            json!("٠٠٠٠٠٠٠٠-٠٠٠٠-٠٠٠٠-٠٠٠٠-٠٠٠٠٠٠٠٠٠٠٠٠"),
            json!("1".repeat(40_000)),
            json!(12345678901234567890u64),
            json!(-1),
            json!(1.5e300),
            json!([campaign.to_string()]),
            json!({"id": campaign.to_string()}),
            json!(true),
            json!(null),
            json!(""),
        ] {
            let mut id = json!({"channel": channel});
            id[key] = value;
            cases.push(id.to_string());
        }
    }
    cases.push(json!({"channel":"CampaignChannel","id": campaign.to_string(),"client_id": "c".repeat(257)}).to_string());
    cases.push(
        json!({"channel":"CampaignChannel","id": campaign.to_string(),"client_id": {"a": 1}})
            .to_string(),
    );
    cases.push(
        json!({"channel":"CampaignChannel","id": campaign.to_string(),"client_id": ""}).to_string(),
    );
    cases.push("\u{0}".to_string());
    cases.push("{".repeat(20_000));
    cases.push(format!("{}{}", "[".repeat(20_000), "]".repeat(20_000)));
    for who in [user, admin] {
        let mut c = Cable::welcomed(relay.addr, &token(who)).await;
        for id in &cases {
            c.subscribe(id).await;
            assert_eq!(c.next_text().await, reject(id), "{id:.100}");
        }
        // The connection keeps working.
        let ok = campaign_channel(campaign);
        c.subscribed(&ok).await;
        db.broadcast(&format!("campaign_{campaign}"), "1").await;
        assert_eq!(c.next_text().await, delivery(&ok, "1"));
    }
    println!("{} hostile identifiers rejected, twice", cases.len());
    assert_no_database_errors();
    relay.shutdown();
    relay.stopped().await;
}

// ---------------------------------------------------------------------------------------------
// 3. Bad frames and floods

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_fragmented_and_invalid_frames_end_only_that_connection() {
    capture_logs();
    let _shared = PROCESS.read().await;
    let db = TestDb::create().await;
    let relay = relay(&db).await;
    let user = db.user(false).await;
    let campaign = db.campaign(user).await;
    let query = format!("token={}", token(user));
    let mut bystander = Cable::welcomed(relay.addr, &token(user)).await;
    let id = campaign_channel(campaign);
    bystander.subscribed(&id).await;

    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        (
            "64 KiB + 1 in one frame",
            client_frame(1, true, &vec![b'x'; (64 << 10) + 1]),
            1009,
        ),
        (
            "64 KiB + 1 in two fragments",
            {
                let mut v = client_frame(1, false, &vec![b'x'; 40_000]);
                v.extend(client_frame(0, true, &vec![b'x'; (64 << 10) + 1 - 40_000]));
                v
            },
            1009,
        ),
        (
            "a header claiming 2^40 bytes",
            {
                let mut v = vec![0x81, 0x80 | 127];
                v.extend_from_slice(&(1u64 << 40).to_be_bytes());
                v.extend_from_slice(&[1, 2, 3, 4]);
                v
            },
            1009,
        ),
        (
            "invalid UTF-8 in a text frame",
            client_frame(1, true, &[b'{', 0xff, 0xfe, b'}']),
            1007,
        ),
        (
            "a continuation with nothing to continue",
            client_frame(0, true, b"x"),
            1002,
        ),
        ("reserved opcode 3", client_frame(3, true, b"x"), 1002),
        ("unmasked client frame", vec![0x81, 0x01, b'x'], 1002),
        (
            "a ping with 126 bytes (control frames are at most 125)",
            client_frame(9, true, &[0u8; 126]),
            1002,
        ),
    ];
    // All at once: each connection is held open for the close grace after its close frame.
    let results = futures_util::future::join_all(cases.iter().map(|(case, bytes, rfc_code)| {
        let query = query.clone();
        async move {
            let (mut s, head, rest) = raw_upgrade(relay.addr, &query).await;
            assert!(head.starts_with("HTTP/1.1 101"), "{case}: {head}");
            let _ = s.write_all(bytes).await;
            let started = Instant::now();
            let (frames, ended) = server_frames(&mut s, rest, Duration::from_secs(8)).await;
            let code = close_code(&frames);
            // The client gets the close code RFC 6455 names, then the connection ends.
            assert_eq!(code, Some(*rfc_code), "{case}");
            assert!(ended, "{case}: connection left open");
            format!(
                "{case}: close {code:?}, connection ended after {:?}",
                started.elapsed()
            )
        }
    }))
    .await;
    for r in &results {
        println!("{r}");
    }
    // The bystander never noticed.
    db.broadcast(&format!("campaign_{campaign}"), r#"{"still":"here"}"#)
        .await;
    assert_eq!(
        bystander.next_text().await,
        delivery(&id, r#"{"still":"here"}"#)
    );
    still_serving(&relay, &db, user, campaign).await;
    assert_no_database_errors();
    relay.shutdown();
    relay.stopped().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_nesting_and_binary_frames_are_ignored_or_rejected() {
    capture_logs();
    let _shared = PROCESS.read().await;
    let db = TestDb::create().await;
    let relay = relay(&db).await;
    let user = db.user(false).await;
    let campaign = db.campaign(user).await;
    let mut c = Cable::welcomed(relay.addr, &token(user)).await;
    // Deep JSON as the frame itself: not a command; ignored, no reply.
    for deep in [
        format!("{}{}", "[".repeat(32_000), "]".repeat(32_000)),
        format!("{}1{}", r#"{"a":"#.repeat(9_000), "}".repeat(9_000)),
        format!(
            r#"{{"command":"subscribe","identifier":"x","data":{}{}}}"#,
            "[".repeat(30_000),
            "]".repeat(30_000)
        ),
    ] {
        c.send(&deep).await;
    }
    c.ws.send(Message::binary(vec![0u8; 60_000]))
        .await
        .expect("binary");
    // The deep `data` of the last one is skipped over (it is not read): a subscribe to "x".
    assert_eq!(c.next_text().await, reject("x"));
    c.nothing_for(Duration::from_millis(500)).await;
    // Deep JSON inside an identifier: rejected by name.
    let deep_id = format!("{}{}", "[".repeat(20_000), "]".repeat(20_000));
    c.subscribe(&deep_id).await;
    assert_eq!(c.next_text().await, reject(&deep_id));
    let id = campaign_channel(campaign);
    c.subscribed(&id).await;
    assert_no_database_errors();
    relay.shutdown();
    relay.stopped().await;
}

/// Sends `frames` from one task while another collects `replies` replies: (replies, elapsed).
async fn flood(c: Cable, frames: Vec<String>, replies: usize) -> (Vec<String>, Duration) {
    let started = Instant::now();
    let (mut sink, mut stream) = c.ws.split();
    let sender = tokio::spawn(async move {
        for f in frames {
            sink.feed(Message::text(f)).await.expect("send");
        }
        sink.flush().await.expect("flush");
        sink
    });
    let mut got = Vec::with_capacity(replies);
    while got.len() < replies {
        match tokio::time::timeout(Duration::from_secs(30), stream.next()).await {
            Ok(Some(Ok(Message::Text(t)))) if t.starts_with(r#"{"type":"ping""#) => {}
            Ok(Some(Ok(Message::Text(t)))) => got.push(t.to_string()),
            other => panic!("after {} replies: {other:?}", got.len()),
        }
    }
    let _sink = sender.await.expect("sender");
    (got, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_subscribe_commands_are_answered_in_order() {
    subscribe_floods(2_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "heavy: run with --ignored (docs/reliability.md)"]
async fn heavy_ten_thousand_forbidden_subscribes_are_answered_in_order() {
    subscribe_floods(10_000).await;
}

/// 10,000 subscribes of one identifier, `forbidden` subscribes to campaigns that are not the
/// user's (one access query each), and 10,000 distinct ones from an admin.
async fn subscribe_floods(forbidden: usize) {
    capture_logs();
    let _shared = PROCESS.read().await;
    let db = TestDb::create().await;
    let relay = relay(&db).await;
    let user = db.user(false).await;
    let admin = db.user(true).await;
    let campaign = db.campaign(user).await;
    let own = campaign_channel(campaign);
    let mut bystander = Cable::welcomed(relay.addr, &token(user)).await;
    bystander.subscribed(&own).await;
    const N: usize = 10_000;
    let sub = |id: &str| json!({"command":"subscribe","identifier":id}).to_string();

    // The same allowed identifier 10,000 times: confirmed each time, one subscription.
    let c = Cable::welcomed(relay.addr, &token(user)).await;
    let (got, took_same) = flood(c, vec![sub(&own); N], N).await;
    assert!(
        got.iter().all(|t| *t == confirm(&own)),
        "a reply was not the confirm"
    );

    // Campaigns that are not the user's: an access check each, all rejected, in order.
    let ids: Vec<String> = (0..N).map(|_| campaign_channel(Uuid::new_v4())).collect();
    let c = Cable::welcomed(relay.addr, &token(user)).await;
    let flooding = tokio::spawn(flood(
        c,
        ids[..forbidden].iter().map(|i| sub(i)).collect(),
        forbidden,
    ));
    // Meanwhile the bystander is served.
    tokio::time::sleep(Duration::from_millis(200)).await;
    db.broadcast(&format!("campaign_{campaign}"), r#"{"during":"flood"}"#)
        .await;
    assert_eq!(
        bystander.next_text().await,
        delivery(&own, r#"{"during":"flood"}"#)
    );
    let (got, took_forbidden) = flooding.await.expect("flood");
    for (reply, id) in got.iter().zip(&ids) {
        assert_eq!(*reply, reject(id));
    }

    // An admin may see everything, but holds at most 256 subscriptions.
    let c = Cable::welcomed(relay.addr, &token(admin)).await;
    let (got, took_admin) = flood(c, ids.iter().map(|i| sub(i)).collect(), N).await;
    let confirmed = got
        .iter()
        .zip(&ids)
        .filter(|(r, i)| **r == confirm(i))
        .count();
    assert_eq!(confirmed, 256);
    assert!(got[256..]
        .iter()
        .zip(&ids[256..])
        .all(|(r, i)| *r == reject(i)));
    println!(
        "10,000 subscribes of one identifier: {took_same:?}; {forbidden} to campaigns not the user's: {took_forbidden:?} \
         (one access query each); 10,000 distinct from an admin, 256 kept: {took_admin:?}"
    );
    still_serving(&relay, &db, user, campaign).await;
    assert_no_database_errors();
    relay.shutdown();
    relay.stopped().await;
}

// ---------------------------------------------------------------------------------------------
// 3. Silent, half-open and never-upgraded sockets (the latter closed after the header timeout)

async fn half_open_sockets(n: usize) {
    capture_logs();
    let _shared = PROCESS.read().await;
    let db = TestDb::create().await;
    let header_timeout = Duration::from_secs(3);
    let relay = relay_with(&db, |c| c.header_timeout = header_timeout).await;
    let user = db.user(false).await;
    let campaign = db.campaign(user).await;
    let sessions_before = relay.state.hub.session_count();
    let mut held = Vec::new();
    // Connect and send nothing.
    for _ in 0..n {
        held.push(TcpStream::connect(relay.addr).await.expect("connect"));
    }
    // Half an upgrade request.
    for _ in 0..n {
        let mut s = TcpStream::connect(relay.addr).await.expect("connect");
        s.write_all(
            format!(
                "GET /cable?token={} HTTP/1.1\r\nHost: x\r\nUpgrade: webso",
                token(user)
            )
            .as_bytes(),
        )
        .await
        .expect("write");
        held.push(s);
    }
    // Upgraded and authenticated, then silent: never sends, never reads.
    let mut silent = Vec::new();
    for _ in 0..n {
        let (s, head, _) = raw_upgrade(relay.addr, &format!("token={}", token(user))).await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        silent.push(s);
    }
    // Everyone else is served all along.
    still_serving(&relay, &db, user, campaign).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let silent_sessions = relay.state.hub.session_count() - sessions_before;
    still_serving(&relay, &db, user, campaign).await;
    // The sockets that never finished a request are closed once the header timeout has
    // passed (slowloris): each reads to its end (hyper may say 408 first).
    let waited = Instant::now();
    let deadline = waited + header_timeout + Duration::from_secs(10);
    let mut closed = 0;
    for s in held.iter_mut() {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut sink = Vec::new();
        if let Ok(Ok(_)) = tokio::time::timeout(left, s.read_to_end(&mut sink)).await {
            closed += 1;
        }
    }
    println!(
        "{n} idle TCP + {n} half-upgrade sockets: {closed} closed by the relay ({:.1} s after the \
         first check; header timeout {header_timeout:?}); {n} silent WebSockets: {silent_sessions} \
         sessions still open (they get pings; ActionCable has no idle timeout)",
        waited.elapsed().as_secs_f64()
    );
    assert_eq!(
        closed,
        2 * n,
        "every socket without a whole request is closed"
    );
    assert_eq!(
        relay.state.hub.session_count() - sessions_before,
        n,
        "the silent WebSockets are not touched by the header timeout"
    );
    still_serving(&relay, &db, user, campaign).await;
    assert_eq!(
        silent_sessions, n,
        "silent authenticated clients are legitimate until they stop reading pings"
    );
    drop(held);
    drop(silent);
    // Closing them frees their sessions.
    let deadline = Instant::now() + Duration::from_secs(15);
    while relay.state.hub.session_count() > sessions_before {
        assert!(
            Instant::now() < deadline,
            "sessions of closed sockets linger"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_no_database_errors();
    relay.shutdown();
    relay.stopped().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_half_open_and_silent_sockets_do_not_hurt_others() {
    half_open_sockets(50).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "heavy: run with --ignored (docs/reliability.md)"]
async fn heavy_idle_half_open_and_silent_sockets_do_not_hurt_others() {
    half_open_sockets(2_000).await;
}

// ---------------------------------------------------------------------------------------------
// 3. One stalled client among many

async fn stalled_among(n: usize) {
    capture_logs();
    let _alone = PROCESS.write().await;
    let db = TestDb::create().await;
    let relay = relay_with(&db, |c| c.outbox_bytes = 64 << 10).await;
    let user = db.user(false).await;
    let campaign = db.campaign(user).await;
    let id = campaign_channel(campaign);
    let stream = format!("campaign_{campaign}");
    let rss_before = rss_kib();

    // The stalled client: a tiny receive buffer, subscribes, never reads again.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    let tcp = socket.connect(relay.addr).await.expect("connect");
    let mut req = format!("ws://{}/cable?token={}", relay.addr, token(user))
        .into_client_request()
        .expect("request");
    req.headers_mut().insert(
        "sec-websocket-protocol",
        "actioncable-v1-json".parse().expect("header"),
    );
    let (mut stalled, _) = tokio_tungstenite::client_async(req, tcp)
        .await
        .expect("upgrade");
    let _welcome = stalled.next().await;
    stalled
        .send(Message::text(
            json!({"command":"subscribe","identifier":id}).to_string(),
        ))
        .await
        .expect("subscribe");
    let _confirm = stalled.next().await;

    // The others read everything and check the order.
    let healthy = n - 1;
    let counts: Arc<Vec<AtomicU64>> = Arc::new((0..healthy).map(|_| AtomicU64::new(0)).collect());
    let mut readers = Vec::new();
    for i in 0..healthy {
        let mut c = Cable::welcomed(relay.addr, &token(user)).await;
        c.subscribed(&id).await;
        let counts = counts.clone();
        readers.push(tokio::spawn(async move {
            let mut expect = 0u64;
            loop {
                let t = c.next_text().await;
                let v: serde_json::Value = serde_json::from_str(&t).expect("json");
                if v["message"]["end"] == true {
                    return expect;
                }
                assert_eq!(
                    v["message"]["i"], expect,
                    "client {i} got a message out of order"
                );
                expect += 1;
                counts[i].store(expect, Ordering::Relaxed);
            }
        }));
    }
    let sessions = relay.state.hub.session_count();
    let pad = "z".repeat(48_000);
    let writer = db.client().await;
    let started = Instant::now();
    let mut sent = 0u64;
    let mut dropped_after = None;
    while sent < 400 && started.elapsed() < Duration::from_secs(60) {
        let message = json!({"i": sent, "pad": pad}).to_string();
        writer
            .execute(
                "SELECT pgcable.broadcast($1, $2::text::jsonb)",
                &[&stream, &message],
            )
            .await
            .expect("broadcast");
        sent += 1;
        if relay.state.hub.session_count() < sessions {
            // It was the stalled one (every reader is still there, reading).
            assert_eq!(relay.state.hub.session_count(), sessions - 1);
            dropped_after = Some((sent, started.elapsed()));
            break;
        }
        // Pace the writer by the readers, so only the stalled client can fall behind.
        let deadline = Instant::now() + Duration::from_secs(30);
        while counts.iter().any(|c| c.load(Ordering::Relaxed) + 1 < sent) {
            assert!(Instant::now() < deadline, "healthy readers fell behind");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    let Some((dropped_at, dropped_in)) = dropped_after else {
        panic!("the stalled client was never dropped ({sent} messages sent)");
    };
    // A few more after the drop; then the end marker.
    for _ in 0..5 {
        let message = json!({"i": sent, "pad": pad}).to_string();
        writer
            .execute(
                "SELECT pgcable.broadcast($1, $2::text::jsonb)",
                &[&stream, &message],
            )
            .await
            .expect("broadcast");
        sent += 1;
    }
    writer
        .execute("SELECT pgcable.broadcast($1, '{\"end\":true}')", &[&stream])
        .await
        .expect("broadcast");
    for (i, r) in readers.into_iter().enumerate() {
        let got = tokio::time::timeout(Duration::from_secs(120), r)
            .await
            .expect("reader in time")
            .expect("reader");
        assert_eq!(got, sent, "healthy client {i} missed messages");
    }
    let rss_after = rss_kib();
    println!(
        "1 stalled among {n}: dropped after {dropped_at} messages of 48 KB ({dropped_in:?}); {healthy} others got all {sent}, in order; \
         RSS {} → {} MiB",
        rss_before / 1024,
        rss_after / 1024
    );
    drop(stalled);
    assert_no_database_errors();
    relay.shutdown();
    relay.stopped().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_stalled_client_among_100_is_dropped_and_the_rest_get_everything() {
    stalled_among(100).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "heavy: run with --ignored (docs/reliability.md)"]
async fn heavy_one_stalled_client_among_1000_is_dropped_and_the_rest_get_everything() {
    stalled_among(1_000).await;
}

// ---------------------------------------------------------------------------------------------
// 3. Connection churn

/// One short-lived client, in one of five ways.
async fn churn_one(addr: SocketAddr, kind: usize, user: Uuid, campaign: Uuid, fight: Uuid) {
    match kind {
        // Subscribes (campaign and fight, so presence too), then closes cleanly.
        0 => {
            let mut c = Cable::welcomed(addr, &token(user)).await;
            c.subscribed(&campaign_channel(campaign)).await;
            let f = format!(r#"{{"channel":"FightChannel","fight_id":"{fight}"}}"#);
            c.subscribe(&f).await;
            // Other clients' presence lists for this fight may come before the confirm (the
            // streams are attached before it is sent).
            while c.next_text().await != confirm(&f) {}
            let _ = c.ws.close(None).await;
            while let Ok(Some(Ok(_))) =
                tokio::time::timeout(Duration::from_secs(2), c.ws.next()).await
            {}
        }
        // Subscribes, then the TCP connection just goes away.
        1 => {
            let mut c = Cable::welcomed(addr, &token(user)).await;
            c.subscribed(&campaign_channel(campaign)).await;
            drop(c);
        }
        // Half a handshake, then gone.
        2 => {
            if let Ok(mut s) = TcpStream::connect(addr).await {
                let _ = s.write_all(b"GET /cable HTTP/1.1\r\nHost: x\r\n").await;
            }
        }
        // Refused token.
        3 => {
            let mut c = Cable::open_query(addr, "token=forged").await;
            let _ = c.next_message().await;
        }
        // Upgraded, gone before reading the welcome.
        _ => {
            let c = Cable::open(addr, &token(user)).await;
            drop(c);
        }
    }
}

async fn churn(n: usize) {
    capture_logs();
    let _alone = PROCESS.write().await;
    let db = TestDb::create().await;
    let relay = relay(&db).await;
    let user = db.user(false).await;
    let campaign = db.campaign(user).await;
    let fight = db.fight(campaign).await;
    const PARALLEL: usize = 16;
    let run = |count: usize| {
        let addr = relay.addr;
        async move {
            let mut set = tokio::task::JoinSet::new();
            for i in 0..count {
                if set.len() >= PARALLEL {
                    set.join_next().await.expect("task").expect("churn client");
                }
                set.spawn(churn_one(addr, i % 5, user, campaign, fight));
            }
            while let Some(r) = set.join_next().await {
                r.expect("churn client");
            }
        }
    };
    let settle = |what: &'static str| {
        let state = relay.state.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            while state.hub.session_count() > 0
                || state.hub.stream_count() > 0
                || !state.presence.members(fight).is_empty()
            {
                assert!(
                    Instant::now() < deadline,
                    "{what}: sessions {}, streams {}, presence {:?} left over",
                    state.hub.session_count(),
                    state.hub.stream_count(),
                    state.presence.members(fight)
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            // Sockets of refused or closed connections linger for the close grace (2 s).
            tokio::time::sleep(Duration::from_millis(2500)).await;
        }
    };
    // Warm up (pool connections, caches, allocator), then measure.
    run(50).await;
    settle("warm-up").await;
    let (fds_before, rss_before) = (open_fds(), rss_kib());
    let started = Instant::now();
    run(n).await;
    let took = started.elapsed();
    settle("after churn").await;
    let (fds_after, rss_after) = (open_fds(), rss_kib());
    println!(
        "{n} connections opened and dropped in {took:?} (5 ways, {PARALLEL} at a time): fds {fds_before} → {fds_after}, \
         RSS {} → {} MiB, sessions/streams/presence back to 0",
        rss_before / 1024,
        rss_after / 1024
    );
    // The pool may still open up to its size; a leak of one fd per connection would be far more.
    let pool = pgcable::config::Config::new(&db.url, SECRET).pool_size;
    assert!(
        fds_after <= fds_before + pool,
        "fds grew from {fds_before} to {fds_after}"
    );
    assert_eq!(relay.state.hub.subscription_count(), 0);
    assert_no_database_errors();
    relay.shutdown();
    relay.stopped().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_churn_of_200_leaks_no_fds_sessions_or_streams() {
    churn(200).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "heavy: run with --ignored (docs/reliability.md)"]
async fn heavy_connection_churn_of_10000_leaks_no_fds_sessions_or_streams() {
    churn(10_000).await;
}
