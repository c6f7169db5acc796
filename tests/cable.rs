//! The ActionCable protocol over a real WebSocket against a relay on a real Postgres
//! (protocol.md, auth.md). Each test has its own database.

mod common;

use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

const UNAUTHORIZED: &str = r#"{"type":"disconnect","reason":"unauthorized","reconnect":false}"#;

/// Expects the unauthorized frame, then a close 1000 with an empty reason.
async fn expect_unauthorized(mut c: Cable) {
    assert_eq!(c.next_text().await, UNAUTHORIZED);
    match c.next_message().await {
        Some(Message::Close(Some(f))) => {
            assert_eq!(f.code, CloseCode::Normal);
            assert_eq!(f.reason.as_str(), "");
        }
        other => panic!("expected close 1000, got {other:?}"),
    }
}

#[tokio::test]
async fn handshake_selects_the_first_supported_protocol() {
    let db = TestDb::create().await;
    let relay = relay(&db).await;
    let user = db.user(false).await;
    let c = Cable::welcomed(relay.addr, &token(user)).await;
    assert_eq!(c.protocol.as_deref(), Some("actioncable-v1-json"));

    for (offered, selected) in [
        (None, None),
        (
            Some("actioncable-unsupported"),
            Some("actioncable-unsupported"),
        ),
        (Some("chat, superchat"), None),
        (
            Some("foo, actioncable-v1-json"),
            Some("actioncable-v1-json"),
        ),
    ] {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut req = format!("ws://{}/cable?token={}", relay.addr, token(user))
            .into_client_request()
            .unwrap();
        if let Some(p) = offered {
            req.headers_mut()
                .insert("sec-websocket-protocol", p.parse().unwrap());
        }
        // tungstenite's client refuses a 101 without the protocol it asked for, so speak HTTP
        // ourselves for the cases a conforming client would fail.
        let raw = raw_upgrade(relay.addr, offered).await;
        assert!(raw.starts_with("HTTP/1.1 101"), "{raw}");
        let header = raw
            .lines()
            .find(|l| {
                l.to_ascii_lowercase()
                    .starts_with("sec-websocket-protocol:")
            })
            .map(|l| l.split_once(':').unwrap().1.trim().to_string());
        assert_eq!(header.as_deref(), selected, "offered {offered:?}");
        if offered.is_none() {
            let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
            let first = ws.next().await.unwrap().unwrap();
            assert_eq!(first.into_text().unwrap().as_str(), r#"{"type":"welcome"}"#);
        }
    }
    relay.shutdown();
}

/// Sends an upgrade request by hand and returns the response head.
async fn raw_upgrade(addr: std::net::SocketAddr, protocol: Option<&str>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut req = format!(
        "GET /cable HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    );
    if let Some(p) = protocol {
        req.push_str(&format!("Sec-WebSocket-Protocol: {p}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let mut head = Vec::new();
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(WAIT, s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "connection closed during handshake");
        head.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

async fn http_get(addr: std::net::SocketAddr, path: &str, headers: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{headers}Connection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn plain_http_and_foreign_origins_get_404() {
    let db = TestDb::create().await;
    let relay = relay_with(&db, |c| {
        c.allowed_origins = Some(vec!["https://chiwar.net".into()])
    })
    .await;
    let resp = http_get(relay.addr, "/cable", "").await;
    assert!(resp.starts_with("HTTP/1.1 404"), "{resp}");
    assert!(
        resp.to_ascii_lowercase()
            .contains("content-type: text/plain; charset=utf-8"),
        "{resp}"
    );
    assert!(resp.ends_with("Page not found"), "{resp}");

    let upgrade = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n";
    for origin in ["", "Origin: https://evil.example\r\n"] {
        let resp = http_get(relay.addr, "/cable", &format!("{upgrade}{origin}")).await;
        assert!(resp.starts_with("HTTP/1.1 404"), "{origin}: {resp}");
        assert!(resp.ends_with("Page not found"));
    }
    for origin in [
        "Origin: https://chiwar.net\r\n".to_string(),
        format!("Origin: http://{}\r\n", relay.addr),
    ] {
        let resp = raw_with(relay.addr, &format!("{upgrade}{origin}")).await;
        assert!(resp.starts_with("HTTP/1.1 101"), "{origin}: {resp}");
    }
    relay.shutdown();
}

async fn raw_with(addr: std::net::SocketAddr, headers: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET /cable?token=x HTTP/1.1\r\nHost: {addr}\r\n{headers}\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(WAIT, s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test]
async fn authentication_cases() {
    let db = TestDb::create().await;
    let relay = relay(&db).await;
    let user = db.user(false).await;
    let sub = user.to_string();
    let now = now();
    use base64::Engine;
    let b64 = |v: &serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let good = token(user);

    // Accepted: Bearer%20, Bearer+, bare, no exp.
    for query in [
        format!("token=Bearer%20{good}"),
        format!("token=Bearer+{good}"),
        format!("token={good}"),
        format!("token={}", token_with(&json!({"sub": sub}), SECRET)),
    ] {
        let mut c = Cable::open_query(relay.addr, &query).await;
        assert_eq!(c.next_text().await, r#"{"type":"welcome"}"#, "{query}");
    }

    let hs512 = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS512),
        &json!({"sub": sub}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let none = format!(
        "{}.{}.",
        b64(&json!({"alg":"none","typ":"JWT"})),
        b64(&json!({"sub": sub}))
    );
    let parts: Vec<&str> = good.split('.').collect();
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        b64(&json!({"sub": Uuid::new_v4().to_string()})),
        parts[2]
    );
    let stripped = format!("{}.{}.", parts[0], parts[1]);
    let refused = [
        ("missing", String::new()),
        ("empty", "token=".to_string()),
        ("garbage", "token=Bearer%20not.a.jwt".to_string()),
        ("alg none", format!("token={none}")),
        ("HS512", format!("token={hs512}")),
        (
            "bad signature",
            format!("token={}", token_with(&json!({"sub": sub}), "other-secret")),
        ),
        ("tampered", format!("token={tampered}")),
        ("stripped signature", format!("token={stripped}")),
        (
            "expired",
            format!(
                "token={}",
                token_with(&json!({"sub": sub, "exp": now - 10}), SECRET)
            ),
        ),
        (
            "future nbf",
            format!(
                "token={}",
                token_with(&json!({"sub": sub, "nbf": now + 3600}), SECRET)
            ),
        ),
        ("unknown user", format!("token={}", token(Uuid::new_v4()))),
        (
            "non-uuid sub",
            format!(
                "token={}",
                token_with(&json!({"sub": "1' OR '1'='1"}), SECRET)
            ),
        ),
        (
            "numeric sub",
            format!("token={}", token_with(&json!({"sub": 42}), SECRET)),
        ),
        ("huge token", format!("token={}", "a".repeat(8000))),
    ];
    for (case, query) in refused {
        let c = Cable::open_query(relay.addr, &query).await;
        tokio::time::timeout(WAIT, expect_unauthorized(c))
            .await
            .unwrap_or_else(|_| panic!("{case}: timed out"));
    }
    // The relay still serves.
    Cable::welcomed(relay.addr, &good).await;
    relay.shutdown();
}

#[tokio::test]
async fn a_token_that_expires_while_connected_is_disconnected_at_expiry() {
    let db = TestDb::create().await;
    let relay = relay(&db).await;
    let user = db.user(false).await;
    let t = token_with(&json!({"sub": user.to_string(), "exp": now() + 2}), SECRET);
    let mut c = Cable::welcomed(relay.addr, &t).await;
    let started = std::time::Instant::now();
    assert_eq!(c.next_text().await, UNAUTHORIZED);
    assert!(started.elapsed() < Duration::from_secs(4));
    relay.shutdown();
}

#[tokio::test]
async fn pings_every_three_seconds_with_unix_time() {
    let db = TestDb::create().await;
    let relay = relay(&db).await;
    let user = db.user(false).await;
    let mut c = Cable::welcomed(relay.addr, &token(user)).await;
    let mut pings = Vec::new();
    let started = std::time::Instant::now();
    while pings.len() < 2 {
        let m = tokio::time::timeout(Duration::from_secs(5), c.ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(m.to_text().unwrap()).unwrap();
        assert_eq!(v["type"], "ping");
        let t = v["message"].as_i64().unwrap();
        assert!((t - now()).abs() <= 1);
        let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["type", "message"]);
        pings.push(std::time::Instant::now());
    }
    let gap = pings[1] - pings[0];
    assert!(
        gap > Duration::from_millis(2500) && gap < Duration::from_millis(3500),
        "{gap:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(7));
    relay.shutdown();
}

#[tokio::test]
async fn subscribe_unsubscribe_and_identifier_echo() {
    let db = TestDb::create().await;
    let relay = relay(&db).await;
    let user = db.user(false).await;
    let campaign = db.campaign(user).await;
    let mut c = Cable::welcomed(relay.addr, &token(user)).await;

    // Odd spacing, key order and escapes: echoed byte for byte, and a separate subscription.
    let plain = campaign_channel(campaign);
    let odd = format!(
        "{{ \"id\" : \"{campaign}\",\n \"channel\":\"CampaignChannel\", \"x\":\"<&>\u{2028}\" }}"
    );
    c.subscribed(&plain).await;
    c.subscribe(&odd).await;
    assert_eq!(
        c.next_text().await,
        format!(
            r#"{{"identifier":"{{ \"id\" : \"{campaign}\",\n \"channel\":\"CampaignChannel\", \"x\":\"\u003c\u0026\u003e\u2028\" }}","type":"confirm_subscription"}}"#
        )
    );
    // Duplicate subscribe: confirmed again, still one delivery per identifier.
    c.subscribed(&plain).await;

    db.broadcast(&format!("campaign_{campaign}"), r#"{"n":1}"#)
        .await;
    let mut got = vec![c.next_text().await, c.next_text().await];
    got.sort();
    let mut want = vec![delivery(&plain, r#"{"n":1}"#), delivery(&odd, r#"{"n":1}"#)];
    want.sort();
    assert_eq!(got, want);
    c.nothing_for(Duration::from_millis(300)).await;

    // Unsubscribe: no reply; deliveries stop for that identifier only.
    c.unsubscribe(&odd).await;
    c.unsubscribe("never subscribed").await;
    db.broadcast(&format!("campaign_{campaign}"), r#"{"n":2}"#)
        .await;
    assert_eq!(c.next_text().await, delivery(&plain, r#"{"n":2}"#));
    c.nothing_for(Duration::from_millis(300)).await;

    // Resubscribe, then subscribe/unsubscribe/subscribe in quick succession, strictly in order.
    c.subscribed(&odd).await;
    c.unsubscribe(&plain).await;
    c.subscribe(&plain).await;
    c.unsubscribe(&plain).await;
    c.subscribe(&plain).await;
    assert_eq!(c.next_text().await, confirm(&plain));
    assert_eq!(c.next_text().await, confirm(&plain));
    relay.shutdown();
}

#[tokio::test]
async fn bad_frames_never_close_the_connection() {
    let db = TestDb::create().await;
    let relay = relay(&db).await;
    let user = db.user(false).await;
    let campaign = db.campaign(user).await;
    let mut c = Cable::welcomed(relay.addr, &token(user)).await;
    for bad in [
        "not json",
        "[]",
        "{}",
        r#"{"command":"dance","identifier":"{}"}"#,
        r#"{"command":"subscribe"}"#,
        r#"{"command":"subscribe","identifier":{"channel":"CampaignChannel"}}"#,
        r#"{"command":"message","identifier":"{}","data":"{\"action\":\"subscribed\"}"}"#,
    ] {
        c.send(bad).await;
    }
    c.ws.send(Message::binary(vec![0u8, 159, 146, 150]))
        .await
        .unwrap();
    c.nothing_for(Duration::from_millis(300)).await;
    for identifier in [
        "{}",
        "not json",
        "[]",
        r#"{"channel":null}"#,
        r#"{"channel":"ApplicationCable::Channel"}"#,
        r#"{"channel":"CampaignChannel","id":"x' OR 1=1 --"}"#,
        r#"{"channel":"CampaignChannel","id":12345678901234567890}"#,
    ] {
        c.subscribe(identifier).await;
        assert_eq!(c.next_text().await, reject(identifier));
    }
    c.subscribed(&campaign_channel(campaign)).await;
    relay.shutdown();
}

#[tokio::test]
async fn frames_sent_before_the_welcome_are_handled_after_it() {
    let db = TestDb::create().await;
    let relay = relay(&db).await;
    let user = db.user(false).await;
    let campaign = db.campaign(user).await;
    let mut c = Cable::open(relay.addr, &token(user)).await;
    let id = campaign_channel(campaign);
    c.subscribe(&id).await;
    assert_eq!(c.next_text().await, r#"{"type":"welcome"}"#);
    assert_eq!(c.next_text().await, confirm(&id));
    relay.shutdown();
}

#[tokio::test]
async fn channel_authorization() {
    let db = TestDb::create().await;
    let owner = db.user(false).await;
    let member = db.user(false).await;
    let stranger = db.user(false).await;
    let admin = db.user(true).await;
    let campaign = db.campaign(owner).await;
    db.member(member, campaign).await;
    let fight = db.fight(campaign).await;
    let campaign_id = campaign_channel(campaign);
    let fight_id = format!(r#"{{"channel":"FightChannel","fight_id":"{fight}"}}"#);
    let not_yet = Uuid::new_v4();
    let relay = relay(&db).await;

    for (who, allowed) in [
        (owner, true),
        (member, true),
        (admin, true),
        (stranger, false),
    ] {
        let mut c = Cable::welcomed(relay.addr, &token(who)).await;
        for id in [&campaign_id, &fight_id] {
            c.subscribe(id).await;
            let want = if allowed { confirm(id) } else { reject(id) };
            // Presence may follow a fight confirmation; take the first frame about this id.
            assert_eq!(c.next_text().await, want, "{who} {id}");
            if allowed && id == &fight_id {
                let users = c.next_text().await;
                assert!(users.contains(r#""message":{"users":["#), "{users}");
            }
        }
        // Own user stream only.
        let own = format!(r#"{{"channel":"UserChannel","id":"{who}"}}"#);
        c.subscribed(&own).await;
        let other = format!(r#"{{"channel":"UserChannel","id":"{}"}}"#, Uuid::new_v4());
        c.subscribe(&other).await;
        assert_eq!(c.next_text().await, reject(&other));
        // Campaigns that do not exist: only admins.
        let missing = campaign_channel(not_yet);
        c.subscribe(&missing).await;
        let want = if who == admin {
            confirm(&missing)
        } else {
            reject(&missing)
        };
        assert_eq!(c.next_text().await, want);
    }
    relay.shutdown();
}

#[tokio::test]
async fn fight_presence_counts_a_user_once() {
    let db = TestDb::create().await;
    let relay = relay(&db).await;
    let gm = db.user(false).await;
    let player = db.user(false).await;
    let campaign = db.campaign(gm).await;
    db.member(player, campaign).await;
    db.client()
        .await
        .execute(
            "UPDATE users SET first_name = 'Ann', last_name = 'Lee' WHERE id = $1",
            &[&player],
        )
        .await
        .unwrap();
    let fight = db.fight(campaign).await;
    let id = format!(r#"{{"channel":"FightChannel","fight_id":"{fight}"}}"#);

    let user_json = |u: Uuid, first: &str, last: &str| {
        format!(
            r#"{{"id":"{u}","first_name":"{first}","last_name":"{last}","name":"{first} {last}","image_url":null}}"#
        )
    };
    let list = |mut users: Vec<(Uuid, &str, &str)>| {
        users.sort();
        let items: Vec<String> = users.iter().map(|(u, f, l)| user_json(*u, f, l)).collect();
        delivery(&id, &format!(r#"{{"users":[{}]}}"#, items.join(",")))
    };

    let mut a = Cable::welcomed(relay.addr, &token(gm)).await;
    a.subscribed(&id).await;
    assert_eq!(a.next_text().await, list(vec![(gm, "Test", "User")]));
    let mut b1 = Cable::welcomed(relay.addr, &token(player)).await;
    b1.subscribed(&id).await;
    let both = list(vec![(gm, "Test", "User"), (player, "Ann", "Lee")]);
    assert_eq!(b1.next_text().await, both);
    assert_eq!(a.next_text().await, both);
    // A second tab of the same user: still listed once.
    let mut b2 = Cable::welcomed(relay.addr, &token(player)).await;
    b2.subscribed(&id).await;
    assert_eq!(b2.next_text().await, both);
    assert_eq!(a.next_text().await, both);
    // Closing one tab keeps the user; closing the last removes them.
    b2.ws.close(None).await.unwrap();
    a.nothing_for(Duration::from_millis(500)).await;
    b1.unsubscribe(&id).await;
    assert_eq!(a.next_text().await, list(vec![(gm, "Test", "User")]));
    relay.shutdown();
}

#[tokio::test]
async fn sql_broadcasts_commit_only_in_order_and_any_size() {
    let db = TestDb::create().await;
    let relay = relay(&db).await;
    let user = db.user(false).await;
    let campaign = db.campaign(user).await;
    let id = campaign_channel(campaign);
    let stream = format!("campaign_{campaign}");
    let mut c = Cable::welcomed(relay.addr, &token(user)).await;
    c.subscribed(&id).await;

    // Rolled back: nothing.
    let mut w = db.client().await;
    let tx = w.transaction().await.unwrap();
    tx.execute(
        "SELECT pgcable.broadcast($1, '{\"rolled\":\"back\"}')",
        &[&stream],
    )
    .await
    .unwrap();
    tx.rollback().await.unwrap();
    c.nothing_for(Duration::from_millis(300)).await;

    // Not before commit; two identical calls in one transaction are two messages; commit order.
    let mut w2 = db.client().await;
    let t1 = w.transaction().await.unwrap();
    t1.execute("SELECT pgcable.broadcast($1, '{\"tx\":\"A\"}')", &[&stream])
        .await
        .unwrap();
    t1.execute("SELECT pgcable.broadcast($1, '{\"tx\":\"A\"}')", &[&stream])
        .await
        .unwrap();
    let t2 = w2.transaction().await.unwrap();
    t2.execute("SELECT pgcable.broadcast($1, '{\"tx\":\"B\"}')", &[&stream])
        .await
        .unwrap();
    c.nothing_for(Duration::from_millis(300)).await;
    t2.commit().await.unwrap();
    t1.commit().await.unwrap();
    assert_eq!(c.next_text().await, delivery(&id, r#"{"tx":"B"}"#));
    assert_eq!(c.next_text().await, delivery(&id, r#"{"tx":"A"}"#));
    assert_eq!(c.next_text().await, delivery(&id, r#"{"tx":"A"}"#));

    // Rails encoding of the message; any JSON value.
    db.broadcast(&stream, r#"{"html":"<b>&amp;</b>","sep":"a\u2028b","slash":"/","big":12345678901234567890,"f":1.50}"#).await;
    assert_eq!(
        c.next_text().await,
        delivery(
            &id,
            r#"{"f":1.5,"big":12345678901234567890,"sep":"a\u2028b","html":"\u003cb\u003e\u0026amp;\u003c/b\u003e","slash":"/"}"#
        )
    );
    db.broadcast(&stream, r#""just a string""#).await;
    assert_eq!(c.next_text().await, delivery(&id, r#""just a string""#));
    // Every JSON value passes, null included (Rails delivers "message":null).
    for value in ["null", "0", "-1.5e-10", "[]", "[null,{}]", "true", r#""""#] {
        db.broadcast(&stream, value).await;
        let expected = if value == "-1.5e-10" {
            "-1.5e-10"
        } else {
            value
        };
        assert_eq!(c.next_text().await, delivery(&id, expected), "{value}");
    }

    // 1 MiB, 5 MiB: through the table, intact.
    for size in [1 << 20, 5 << 20] {
        let big = "x".repeat(size);
        let message = json!({ "big": big }).to_string();
        db.broadcast(&stream, &message).await;
        assert_eq!(c.next_text().await, delivery(&id, &message));
    }
    relay.shutdown();
}

#[tokio::test]
async fn sql_disconnect_cuts_off_every_connection_of_a_user() {
    let db = TestDb::create().await;
    let relay = relay(&db).await;
    let banned = db.user(false).await;
    let other = db.user(false).await;
    let mut a = Cable::welcomed(relay.addr, &token(banned)).await;
    let mut b = Cable::welcomed(relay.addr, &token(banned)).await;
    let mut o = Cable::welcomed(relay.addr, &token(other)).await;
    db.client()
        .await
        .execute("SELECT pgcable.disconnect($1, false)", &[&banned])
        .await
        .unwrap();
    for c in [&mut a, &mut b] {
        assert_eq!(
            c.next_text().await,
            r#"{"type":"disconnect","reason":"remote","reconnect":false}"#
        );
        assert!(matches!(c.next_message().await, Some(Message::Close(_))));
    }
    db.client()
        .await
        .execute("SELECT pgcable.disconnect($1)", &[&other])
        .await
        .unwrap();
    assert_eq!(
        o.next_text().await,
        r#"{"type":"disconnect","reason":"remote","reconnect":true}"#
    );
    relay.shutdown();
}

#[tokio::test]
async fn graceful_shutdown_tells_every_client_to_reconnect() {
    let db = TestDb::create().await;
    let relay = relay(&db).await;
    let user = db.user(false).await;
    let mut clients = Vec::new();
    for _ in 0..5 {
        clients.push(Cable::welcomed(relay.addr, &token(user)).await);
    }
    let addr = relay.addr;
    relay.shutdown();
    for c in &mut clients {
        assert_eq!(
            c.next_text().await,
            r#"{"type":"disconnect","reason":"server_restart","reconnect":true}"#
        );
        match c.next_message().await {
            Some(Message::Close(Some(f))) => assert_eq!(f.code, CloseCode::Normal),
            other => panic!("expected close, got {other:?}"),
        }
    }
    tokio::time::timeout(Duration::from_secs(5), relay.stopped())
        .await
        .expect("stops in time");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "still accepting"
    );
}

#[tokio::test]
async fn oversized_frames_close_that_connection_with_1009_only() {
    let db = TestDb::create().await;
    let relay = relay(&db).await;
    let user = db.user(false).await;
    let campaign = db.campaign(user).await;
    let id = campaign_channel(campaign);
    let mut bystander = Cable::welcomed(relay.addr, &token(user)).await;
    bystander.subscribed(&id).await;
    let mut c = Cable::welcomed(relay.addr, &token(user)).await;
    c.send(&"x".repeat(64 * 1024 + 1)).await;
    match c.next_message().await {
        Some(Message::Close(Some(f))) => assert_eq!(u16::from(f.code), 1009),
        other => panic!("expected close 1009, got {other:?}"),
    }
    // Exactly the limit is fine.
    let mut d = Cable::welcomed(relay.addr, &token(user)).await;
    d.send(&"y".repeat(64 * 1024)).await;
    d.subscribed(&id).await;
    db.broadcast(&format!("campaign_{campaign}"), "1").await;
    assert_eq!(bystander.next_text().await, delivery(&id, "1"));
    relay.shutdown();
}

#[tokio::test]
async fn connection_and_subscription_limits() {
    let db = TestDb::create().await;
    let relay = relay_with(&db, |c| {
        c.max_connections = 2;
        c.max_subscriptions = 2;
    })
    .await;
    let user = db.user(true).await;
    let mut a = Cable::welcomed(relay.addr, &token(user)).await;
    let _b = Cable::welcomed(relay.addr, &token(user)).await;
    let resp = raw_with(relay.addr, "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n").await;
    assert!(resp.starts_with("HTTP/1.1 503"), "{resp}");
    let ids: Vec<String> = (0..3).map(|_| campaign_channel(Uuid::new_v4())).collect();
    a.subscribed(&ids[0]).await;
    a.subscribed(&ids[1]).await;
    a.subscribe(&ids[2]).await;
    assert_eq!(a.next_text().await, reject(&ids[2]));
    // Re-confirming one it holds is not a new subscription.
    a.subscribed(&ids[0]).await;
    relay.shutdown();
}

#[tokio::test]
async fn a_client_that_stops_reading_is_dropped_and_others_keep_receiving() {
    let db = TestDb::create().await;
    let relay = relay_with(&db, |c| c.outbox_bytes = 256 * 1024).await;
    let user = db.user(false).await;
    let campaign = db.campaign(user).await;
    let id = campaign_channel(campaign);
    let stream = format!("campaign_{campaign}");

    // The stalled client: a tiny receive buffer, and it never reads after subscribing.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(relay.addr).await.unwrap();
    let url = format!("ws://{}/cable?token={}", relay.addr, token(user));
    let (mut stalled, _) = tokio_tungstenite::client_async(url, tcp).await.unwrap();
    let _welcome = stalled.next().await;
    stalled
        .send(Message::text(
            json!({"command":"subscribe","identifier":id}).to_string(),
        ))
        .await
        .unwrap();

    let mut healthy = Cable::welcomed(relay.addr, &token(user)).await;
    healthy.subscribed(&id).await;
    let chunk = "z".repeat(60_000);
    let writer = db.client().await;
    let mut dropped = false;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    for i in 0.. {
        if std::time::Instant::now() > deadline {
            break;
        }
        let message = json!({"i": i, "pad": chunk}).to_string();
        writer
            .execute(
                "SELECT pgcable.broadcast($1, $2::text::jsonb)",
                &[&stream, &message],
            )
            .await
            .unwrap();
        let got = healthy.next_text().await;
        assert!(
            got.contains(&format!(r#""i":{i},"#)),
            "healthy client missed {i}"
        );
        if relay.state.hub.session_count() == 1 {
            dropped = true;
            break;
        }
    }
    assert!(dropped, "the stalled client was never dropped");
    // And the healthy one keeps receiving afterwards.
    writer
        .execute(
            "SELECT pgcable.broadcast($1, '{\"after\":true}')",
            &[&stream],
        )
        .await
        .unwrap();
    assert_eq!(
        healthy.next_text().await,
        delivery(&id, r#"{"after":true}"#)
    );
    relay.shutdown();
}

#[tokio::test]
async fn connections_are_named_in_pg_stat_activity() {
    let db = TestDb::create().await;
    let relay = relay(&db).await;
    let user = db.user(false).await;
    let _c = Cable::welcomed(relay.addr, &token(user)).await;
    let names: Vec<String> = db
        .client()
        .await
        .query("SELECT DISTINCT application_name FROM pg_stat_activity WHERE datname = current_database() AND application_name LIKE 'pgcable%' ORDER BY 1", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(names, ["pgcable", "pgcable-listener"]);
    relay.shutdown();
}

/// A client-initiated close is answered with the server's close frame and the end of the TCP
/// connection at once, as Rails does, not after a grace period (the official client's
/// `disconnected` callback waits for it).
#[tokio::test]
async fn client_close_is_answered_at_once() {
    let db = TestDb::create().await;
    let relay = relay(&db).await;
    let user = db.user(false).await;
    let campaign = db.campaign(user).await;
    let mut c = Cable::welcomed(relay.addr, &token(user)).await;
    c.subscribed(&campaign_channel(campaign)).await;
    let started = std::time::Instant::now();
    c.ws.send(Message::Close(Some(
        tokio_tungstenite::tungstenite::protocol::CloseFrame {
            code: CloseCode::Normal,
            reason: "bye".into(),
        },
    )))
    .await
    .expect("send close");
    // The server's close frame, then the end of the stream.
    let mut saw_close = false;
    loop {
        match tokio::time::timeout(Duration::from_secs(5), c.ws.next()).await {
            Ok(Some(Ok(Message::Close(frame)))) => {
                assert_eq!(frame.map(|f| u16::from(f.code)), Some(1000));
                saw_close = true;
            }
            Ok(Some(Ok(Message::Text(t)))) if t.starts_with(r#"{"type":"ping""#) => {}
            Ok(Some(Ok(other))) => panic!("unexpected {other:?}"),
            Ok(Some(Err(_))) | Ok(None) => break,
            Err(_) => panic!("the connection was not closed within 5 s"),
        }
    }
    let took = started.elapsed();
    assert!(saw_close, "no close frame");
    // The defect took the 2 s close grace; a prompt answer takes milliseconds.
    assert!(
        took < Duration::from_millis(1000),
        "close answered after {took:?}"
    );
    relay.shutdown();
}
