//! Shared test support: a fresh database per test, users and campaigns, tokens, a running relay
//! and a raw ActionCable client over a real WebSocket.
#![allow(dead_code)]

use std::sync::Once;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_postgres::{Client, NoTls};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use uuid::Uuid;

/// The server every test uses (the machine's Postgres).
pub const ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
/// The JWT secret of test relays.
pub const SECRET: &str = "test-secret-for-pgcable";

/// Connects and drives a client.
pub async fn connect(url: &str) -> Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {url}: {e} (tests need PostgreSQL at 127.0.0.1:5432, user postgres, trust auth)"));
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// A database of its own for one test, with the legacy schema and the triggers; dropped on Drop.
pub struct TestDb {
    pub name: String,
    pub url: String,
}

impl TestDb {
    /// A fresh database with `sql/schema.sql` and `triggers/install.sql` loaded.
    pub async fn create() -> TestDb {
        let db = TestDb::empty().await;
        let client = db.client().await;
        client
            .batch_execute(include_str!("../../sql/schema.sql"))
            .await
            .expect("load sql/schema.sql");
        client
            .batch_execute(include_str!("../../triggers/install.sql"))
            .await
            .expect("load triggers/install.sql");
        db
    }

    /// A fresh database with nothing in it.
    pub async fn empty() -> TestDb {
        let name = format!("pgcable_test_{}", Uuid::new_v4().simple());
        let admin = connect(ADMIN_URL).await;
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create test database");
        let url = format!("postgres://postgres@127.0.0.1:5432/{name}");
        TestDb { name, url }
    }

    pub async fn client(&self) -> Client {
        connect(&self.url).await
    }

    /// Inserts a user and returns its id.
    pub async fn user(&self, admin: bool) -> Uuid {
        let id = Uuid::new_v4();
        self.client()
            .await
            .execute(
                "INSERT INTO users (id, first_name, last_name, name, email, jti, admin, created_at, updated_at) \
                 VALUES ($1, 'Test', 'User', 'Test User', $2, $3, $4, now(), now())",
                &[&id, &format!("{id}@example.com"), &id.to_string(), &admin],
            )
            .await
            .expect("insert user");
        id
    }

    /// Inserts a campaign owned by `owner` and returns its id.
    pub async fn campaign(&self, owner: Uuid) -> Uuid {
        let id = Uuid::new_v4();
        self.client()
            .await
            .execute(
                "INSERT INTO campaigns (id, user_id, name, created_at, updated_at) VALUES ($1, $2, 'Test campaign', now(), now())",
                &[&id, &owner],
            )
            .await
            .expect("insert campaign");
        id
    }

    /// Makes `user` a member of `campaign`.
    pub async fn member(&self, user: Uuid, campaign: Uuid) {
        self.client()
            .await
            .execute(
                "INSERT INTO campaign_memberships (user_id, campaign_id, created_at, updated_at) VALUES ($1, $2, now(), now())",
                &[&user, &campaign],
            )
            .await
            .expect("insert membership");
    }

    /// Inserts a fight in `campaign` and returns its id.
    pub async fn fight(&self, campaign: Uuid) -> Uuid {
        let id = Uuid::new_v4();
        self.client()
            .await
            .execute(
                "INSERT INTO fights (id, campaign_id, name, created_at, updated_at) VALUES ($1, $2, 'Test fight', now(), now())",
                &[&id, &campaign],
            )
            .await
            .expect("insert fight");
        id
    }

    /// Runs `pgcable.broadcast(stream, message)` in its own transaction.
    pub async fn broadcast(&self, stream: &str, message: &str) {
        self.client()
            .await
            .execute(
                "SELECT pgcable.broadcast($1, $2::text::jsonb)",
                &[&stream, &message],
            )
            .await
            .expect("pgcable.broadcast");
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // Drop from a plain thread: Drop may run inside or outside a runtime.
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok((client, conn)) = tokio_postgres::connect(ADMIN_URL, NoTls).await {
                    tokio::spawn(async move {
                        let _ = conn.await;
                    });
                    let _ = client
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await;
                }
            });
        })
        .join();
    }
}

pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// An HS256 token for `sub` with the test secret, expiring in an hour.
pub fn token(sub: Uuid) -> String {
    token_with(
        &serde_json::json!({"sub": sub.to_string(), "exp": now() + 3600, "scp": "user"}),
        SECRET,
    )
}

/// An HS256 token with these claims and secret.
pub fn token_with(claims: &serde_json::Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("encode token")
}

/// A relay running in this process against `db`.
pub async fn relay(db: &TestDb) -> pgcable::server::Server {
    relay_with(db, |_| {}).await
}

/// A relay with settings changed by `tweak`.
pub async fn relay_with(
    db: &TestDb,
    tweak: impl FnOnce(&mut pgcable::config::Config),
) -> pgcable::server::Server {
    init_logging();
    let mut config = pgcable::config::Config::new(&db.url, SECRET);
    tweak(&mut config);
    let server = pgcable::server::start(config).await.expect("relay starts");
    // Wait until the listener is LISTENing, so nothing committed from now on is missed.
    for _ in 0..200 {
        if server
            .state
            .listening
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            return server;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("relay listener did not start");
}

fn init_logging() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
            )
            .with_test_writer()
            .try_init();
    });
}

/// A raw ActionCable client over a real WebSocket.
pub struct Cable {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// The subprotocol the server selected.
    pub protocol: Option<String>,
}

/// How long a test waits for an expected frame.
pub const WAIT: Duration = Duration::from_secs(10);

impl Cable {
    /// Opens `/cable` with `?token=Bearer%20<token>` offering the official client's protocols.
    pub async fn open(addr: std::net::SocketAddr, token: &str) -> Cable {
        Cable::open_query(addr, &format!("token=Bearer%20{token}")).await
    }

    /// Opens `/cable?<query>`.
    pub async fn open_query(addr: std::net::SocketAddr, query: &str) -> Cable {
        let mut req = format!("ws://{addr}/cable?{query}")
            .into_client_request()
            .expect("request");
        req.headers_mut().insert(
            "sec-websocket-protocol",
            "actioncable-v1-json, actioncable-unsupported"
                .parse()
                .expect("header"),
        );
        let (ws, resp) = tokio_tungstenite::connect_async(req)
            .await
            .expect("upgrade");
        let protocol = resp
            .headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        Cable { ws, protocol }
    }

    /// Opens a connection and reads the welcome.
    pub async fn welcomed(addr: std::net::SocketAddr, token: &str) -> Cable {
        let mut c = Cable::open(addr, token).await;
        assert_eq!(c.next_text().await, r#"{"type":"welcome"}"#);
        c
    }

    pub async fn send(&mut self, text: &str) {
        self.ws.send(Message::text(text)).await.expect("send");
    }

    pub async fn subscribe(&mut self, identifier: &str) {
        let frame =
            serde_json::json!({"command": "subscribe", "identifier": identifier}).to_string();
        self.send(&frame).await;
    }

    pub async fn unsubscribe(&mut self, identifier: &str) {
        let frame =
            serde_json::json!({"command": "unsubscribe", "identifier": identifier}).to_string();
        self.send(&frame).await;
    }

    /// Subscribes and asserts the confirmation.
    pub async fn subscribed(&mut self, identifier: &str) {
        self.subscribe(identifier).await;
        assert_eq!(self.next_text().await, confirm(identifier));
    }

    /// The next frame that is not a ping, as a raw message (text, close, ...). Fails the test
    /// if none comes within [`WAIT`] (pings don't extend the wait).
    pub async fn next_message(&mut self) -> Option<Message> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => panic!("no frame within {WAIT:?}"),
                Ok(None) => return None,
                Ok(Some(Err(e))) => panic!("socket error: {e}"),
                Ok(Some(Ok(Message::Text(t)))) if t.starts_with(r#"{"type":"ping""#) => continue,
                Ok(Some(Ok(m))) => return Some(m),
            }
        }
    }

    /// The next non-ping text frame.
    pub async fn next_text(&mut self) -> String {
        match self.next_message().await {
            Some(Message::Text(t)) => t.to_string(),
            other => panic!("expected a text frame, got {other:?}"),
        }
    }

    /// Asserts that no non-ping frame arrives for `d`.
    pub async fn nothing_for(&mut self, d: Duration) {
        let deadline = tokio::time::Instant::now() + d;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return,
                Ok(Some(Ok(Message::Text(t)))) if t.starts_with(r#"{"type":"ping""#) => continue,
                Ok(other) => panic!("expected nothing, got {other:?}"),
            }
        }
    }
}

/// A JSON string literal with Rails' escaping, built independently of the relay's encoder.
pub fn rails_string(s: &str) -> String {
    serde_json::to_string(s)
        .expect("json")
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
        .replace('\u{2028}', "\\u2028")
        .replace('\u{2029}', "\\u2029")
}

/// The confirm frame for an identifier.
pub fn confirm(identifier: &str) -> String {
    format!(
        r#"{{"identifier":{},"type":"confirm_subscription"}}"#,
        rails_string(identifier)
    )
}

/// The reject frame for an identifier.
pub fn reject(identifier: &str) -> String {
    format!(
        r#"{{"identifier":{},"type":"reject_subscription"}}"#,
        rails_string(identifier)
    )
}

/// A broadcast frame for an identifier and an already-encoded message.
pub fn delivery(identifier: &str, message: &str) -> String {
    format!(
        r#"{{"identifier":{},"message":{message}}}"#,
        rails_string(identifier)
    )
}

/// `{"channel":"CampaignChannel","id":"<id>"}`.
pub fn campaign_channel(id: Uuid) -> String {
    format!(r#"{{"channel":"CampaignChannel","id":"{id}"}}"#)
}

/// Runs `npm ci` in tests/js once if its node_modules is missing.
pub fn ensure_node_modules() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/js");
        if dir.join("node_modules").exists() {
            return;
        }
        let status = std::process::Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir)
            .status()
            .unwrap_or_else(|e| panic!("cannot run npm (Node.js 20 and npm are needed for the official-client tests): {e}"));
        assert!(status.success(), "npm ci in tests/js failed");
    });
}

/// A response read by [`http_request`].
pub struct HttpResponse {
    pub status: u16,
    /// The header lines, as sent.
    pub head: String,
    pub body: String,
}

impl HttpResponse {
    /// The value of header `name` (case-insensitive), if present.
    pub fn header(&self, name: &str) -> Option<String> {
        self.head
            .lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_string())
    }
}

/// `GET path` over plain HTTP/1.1 with `Connection: close`; reads the whole response.
pub async fn http_request(addr: std::net::SocketAddr, path: &str) -> HttpResponse {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .expect("write");
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut raw))
        .await
        .expect("response in time")
        .expect("read");
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").expect("http response");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    HttpResponse {
        status,
        head: head.to_string(),
        body: body.to_string(),
    }
}

/// `GET path` over plain HTTP/1.1 → (status, body).
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let r = http_request(addr, path).await;
    (r.status, r.body)
}
