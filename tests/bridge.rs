//! The Rails bridge and shadow mode end to end, with real parts only: the machine's Redis (or a
//! private `redis-server` for the outage test), the relay in this process, a raw ActionCable
//! client, and the Rails side as Rails itself: `tests/ruby/publisher.rb` runs Debian's
//! ActionCable with its Redis adapter and `channel_prefix`, and every Rails message below is
//! ActionCable's own `PUBLISH`. The frames Rails' cable would send are computed by the same
//! script with ActiveSupport::JSON, and compared byte for byte with what pgcable sends.
//!
//! Needs Redis at 127.0.0.1:6379 (`.ci/run` starts `redis-server` if none answers),
//! `redis-server` and `redis-cli` on the PATH (built with TLS, as Debian's are), `openssl`, and
//! `ruby` with ActionCable, redis, globalid, ActiveRecord and pg
//! (Debian: `apt-get install ruby-actioncable ruby-redis ruby-globalid ruby-activerecord
//! ruby-pg`), besides Postgres (see `common`). Each test uses a channel prefix of its own, so
//! tests never see each other's messages.

mod common;

use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{campaign_channel, confirm, delivery, http_get, relay_with, token, Cable, TestDb};
use futures_util::StreamExt;
use pgcable::bridge::skip::SkipRules;
use pgcable::cable::channels::connection_identifier;
use pgcable::config::BridgeConfig;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

/// The machine's Redis.
const MACHINE_REDIS: &str = "redis://127.0.0.1:6379/0";

/// Fails at once, with what to do, when the machine's Redis does not answer.
async fn machine_redis() -> &'static str {
    let up = tokio::time::timeout(
        Duration::from_secs(3),
        tokio::net::TcpStream::connect("127.0.0.1:6379"),
    )
    .await;
    assert!(
        matches!(up, Ok(Ok(_))),
        "Redis does not answer at 127.0.0.1:6379: start it (`redis-server --daemonize yes`; .ci/run does this)"
    );
    MACHINE_REDIS
}

/// A channel prefix no other test uses.
fn fresh_prefix() -> String {
    format!("pgcable_test_{}", Uuid::new_v4().simple())
}

/// The Rails side: `ruby tests/ruby/publisher.rb`, driven one JSON command per line.
struct Rails {
    child: Child,
    stdin: ChildStdin,
    lines: tokio::io::Lines<BufReader<ChildStdout>>,
}

impl Rails {
    async fn start(redis_url: &str, prefix: &str, database_url: Option<&str>) -> Rails {
        Rails::start_with(redis_url, prefix, database_url, &[]).await
    }

    /// With more environment (`REDIS_CA_FILE`).
    async fn start_with(
        redis_url: &str,
        prefix: &str,
        database_url: Option<&str>,
        env: &[(&str, &str)],
    ) -> Rails {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/ruby/publisher.rb");
        let mut cmd = Command::new("ruby");
        cmd.arg(script)
            .env("REDIS_URL", redis_url)
            .env("CHANNEL_PREFIX", prefix)
            .env("APP_NAME", "shot-server")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        if let Some(url) = database_url {
            cmd.env("DATABASE_URL", url);
        }
        cmd.envs(env.iter().copied());
        let mut child = cmd.spawn().unwrap_or_else(|e| {
            panic!(
                "cannot run ruby: {e} (apt-get install ruby ruby-actioncable ruby-redis ruby-globalid ruby-activerecord ruby-pg; .ci/run does this)"
            )
        });
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let mut rails = Rails {
            child,
            stdin,
            lines: BufReader::new(stdout).lines(),
        };
        let ready = rails.read().await;
        assert_eq!(
            ready["ready"],
            json!(true),
            "publisher.rb did not start: {ready} (are ruby-actioncable, ruby-redis and ruby-globalid installed?)"
        );
        rails
    }

    async fn read(&mut self) -> Value {
        let line = match tokio::time::timeout(Duration::from_secs(60), self.lines.next_line()).await {
            Ok(Ok(Some(line))) => line,
            Ok(Ok(None)) => panic!(
                "publisher.rb exited (status {:?}); its error is above (missing Ruby packages? apt-get install ruby-actioncable ruby-redis ruby-globalid)",
                self.child.try_wait()
            ),
            Ok(Err(e)) => panic!("reading publisher.rb: {e}"),
            Err(_) => panic!("publisher.rb did not answer within 60 s"),
        };
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("publisher.rb said {line:?}: {e}"))
    }

    /// Runs one command; panics unless it succeeded.
    async fn run(&mut self, cmd: Value) -> Value {
        let mut line = cmd.to_string();
        line.push('\n');
        self.stdin
            .write_all(line.as_bytes())
            .await
            .expect("write to publisher.rb");
        let answer = self.read().await;
        assert_eq!(
            answer["ok"],
            json!(true),
            "publisher.rb failed {cmd}: {answer}"
        );
        answer
    }

    /// `ActionCable.server.broadcast(stream, message)`; returns the frame Rails' cable would
    /// send to a subscription with `identifier`.
    async fn broadcast(&mut self, stream: &str, message: Value, identifier: &str) -> String {
        let a = self
            .run(json!({"op": "broadcast", "stream": stream, "message": message, "identifier": identifier}))
            .await;
        a["frame"].as_str().expect("frame").to_string()
    }
}

/// A `redis-server` of the test's own on a free port (never the machine's), stopped on drop.
struct PrivateRedis {
    port: u16,
    child: Option<Child>,
}

impl PrivateRedis {
    async fn start() -> PrivateRedis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let mut r = PrivateRedis { port, child: None };
        r.restart().await;
        r
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Starts it (again, on the same port) and waits until it answers PING.
    async fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run redis-server: {e} (apt-get install redis-server)")
            });
        self.child = Some(child);
        let client = redis::Client::open(self.url()).expect("url");
        for _ in 0..100 {
            if let Ok(Ok(mut c)) = tokio::time::timeout(
                Duration::from_secs(1),
                client.get_multiplexed_async_connection(),
            )
            .await
            {
                if redis::cmd("PING")
                    .query_async::<String>(&mut c)
                    .await
                    .is_ok()
                {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "the private redis-server on port {} did not answer",
            self.port
        );
    }

    /// Sends a signal to the server (`STOP`: it freezes with its connections open).
    async fn signal(&self, sig: &str) {
        let pid = self
            .child
            .as_ref()
            .and_then(Child::id)
            .expect("redis-server runs");
        let status = Command::new("kill")
            .args([format!("-{sig}"), pid.to_string()])
            .status()
            .await
            .expect("kill");
        assert!(status.success(), "kill -{sig} {pid}");
    }

    async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }
}

/// A bridge to `redis_url` with `prefix`; shadow mode when `shadow` is given.
fn bridge(
    redis_url: &str,
    prefix: &str,
    shadow: Option<Duration>,
) -> impl FnOnce(&mut pgcable::config::Config) {
    let b = BridgeConfig {
        redis_url: redis_url.to_string(),
        channel_prefix: prefix.to_string(),
        skip: SkipRules::default(),
        shadow_window: shadow,
    };
    move |c| c.bridge = Some(b)
}

/// Waits until the relay's bridge holds its Redis subscription.
async fn bridge_up(relay: &pgcable::server::Server, up: bool) {
    for _ in 0..300 {
        if relay.state.bridge_up.load(Ordering::Relaxed) == up {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "the bridge did not become {}",
        if up { "up" } else { "down" }
    );
}

/// A user who owns a campaign, its stream, and a welcomed client subscribed to it.
async fn subscriber(db: &TestDb, relay: &pgcable::server::Server) -> (Uuid, Uuid, Cable, String) {
    let user = db.user(false).await;
    let campaign = db.campaign(user).await;
    let mut c = Cable::welcomed(relay.addr, &token(user)).await;
    let ident = campaign_channel(campaign);
    c.subscribed(&ident).await;
    (user, campaign, c, ident)
}

/// Everything Rails broadcasts that only Rails knows arrives byte for byte as Rails' cable
/// would send it; what the feed produces itself is skipped; bad input is dropped alone.
#[tokio::test]
async fn rails_broadcasts_arrive_byte_exact() {
    let redis = machine_redis().await;
    let prefix = fresh_prefix();
    let db = TestDb::create().await;
    let relay = relay_with(&db, bridge(redis, &prefix, None)).await;
    bridge_up(&relay, true).await;
    let mut rails = Rails::start(redis, &prefix, None).await;
    // The fight exists before anyone subscribes: its creation's own messages go to nobody.
    let user = db.user(false).await;
    let campaign = db.campaign(user).await;
    let fight = db.fight(campaign).await;
    let mut c = Cable::welcomed(relay.addr, &token(user)).await;
    let ident = campaign_channel(campaign);
    c.subscribed(&ident).await;
    let stream = format!("campaign_{campaign}");

    let big = "ü<&>\u{2028}".repeat((1 << 20) / 10);
    let messages = [
        json!({"type": "advancement_created", "character_id": Uuid::new_v4(), "advancement": {"id": 1, "description": "<b>Tough</b> & \"strong\"", "xp": 5}}),
        json!({"status": "preview_ready", "json": "[\"https://ik.example/a.png\"]"}),
        json!({"campaign": {"id": campaign, "name": "New \u{2028}name\u{2029}", "nested": {"list": [1, -2, 2.5, null, true, false, "", {}], "empty": []}}}),
        json!("just a string with <html> & \u{2028}"),
        json!(42),
        json!(-3.25),
        json!(null),
        json!(true),
        json!([1, "two", {"three": 3}]),
        json!({"tabs": "a\tb\nc\r\u{1}\u{7f}/é😀", "big": big}),
    ];
    for m in messages {
        let want = rails.broadcast(&stream, m.clone(), &ident).await;
        let got = c.next_text().await;
        assert!(
            got == want,
            "frame for {} differs:\n pgcable: {}\n rails:   {}",
            m.to_string().chars().take(80).collect::<String>(),
            got.chars().take(300).collect::<String>(),
            want.chars().take(300).collect::<String>()
        );
    }

    // An integer beyond 64 bits stays verbatim, as Ruby's Integer does.
    let a = rails
        .run(json!({"op": "broadcast", "stream": stream, "message_json": "[1000000000000000000000,-18446744073709551617]", "identifier": ident}))
        .await;
    assert_eq!(
        a["payload"],
        json!("[1000000000000000000000,-18446744073709551617]")
    );
    assert_eq!(c.next_text().await, a["frame"].as_str().expect("frame"));

    // What the feed sends itself is not forwarded; the next forwarded message is the next frame.
    for skipped in [
        json!({"character": {"id": Uuid::new_v4(), "name": "x"}}),
        json!({"characters": "reload"}),
        json!({"vehicle": {"id": Uuid::new_v4()}}),
        json!({"vehicles": "reload"}),
        json!({"fight": {"id": Uuid::new_v4()}}),
        json!({"fights": "reload"}),
        json!({"encounter": {"id": Uuid::new_v4(), "shots": []}}),
        json!({"type": "fight_ended", "fight_id": Uuid::new_v4(), "fight_name": "F"}),
    ] {
        rails.broadcast(&stream, skipped, &ident).await;
    }
    // A message for a stream nobody watches, and text that is not JSON: dropped alone.
    rails
        .broadcast(
            &format!("campaign_{}", Uuid::new_v4()),
            json!({"x": 1}),
            "{}",
        )
        .await;
    rails
        .run(json!({"op": "broadcast_raw", "stream": stream, "payload": "{not json"}))
        .await;
    let sentinel = rails
        .broadcast(&stream, json!({"after": "skips"}), &ident)
        .await;
    assert_eq!(c.next_text().await, sentinel);

    // The per-client stream gets everything, even a key the feed uses on campaign_<id>.
    let client_ident =
        format!(r#"{{"channel":"CampaignChannel","id":"{campaign}","client_id":"tab-1"}}"#);
    c.subscribe(&client_ident).await;
    assert_eq!(c.next_text().await, confirm(&client_ident));
    let per_client = rails
        .broadcast(
            &format!("{stream}_tab-1"),
            json!({"character": {"id": 1}}),
            &client_ident,
        )
        .await;
    assert_eq!(c.next_text().await, per_client);

    // Fight streams: {"fight":"updated"} and {"fight":"ended"} are skipped; the rest (chase,
    // driver assignment) is forwarded.
    let fight_ident = format!(r#"{{"channel":"FightChannel","fight_id":"{fight}"}}"#);
    c.subscribe(&fight_ident).await;
    // Confirmation, then the presence list (order between them is the relay's).
    let mut got = vec![c.next_text().await, c.next_text().await];
    got.sort();
    assert!(got.iter().any(|f| *f == confirm(&fight_ident)), "{got:?}");
    let fight_stream = format!("fight_{fight}");
    rails
        .broadcast(&fight_stream, json!({"fight": "updated"}), &fight_ident)
        .await;
    rails
        .broadcast(&fight_stream, json!({"fight": "ended"}), &fight_ident)
        .await;
    let chase = rails
        .broadcast(
            &fight_stream,
            json!({"event": "chase_update", "vehicle_id": Uuid::new_v4(), "chase_state": {"chase_points": 3, "condition_points": 0, "position": "far", "pursuer": true}}),
            &fight_ident,
        )
        .await;
    assert_eq!(c.next_text().await, chase);

    let (_, metrics) = http_get(relay.addr, "/metrics").await;
    for outcome in ["forwarded", "skipped", "invalid"] {
        assert!(
            metrics.contains(&format!(
                "pgcable_bridge_messages_total{{outcome=\"{outcome}\"}}"
            )),
            "no {outcome} count in /metrics"
        );
    }
    // Process-wide, like every metric: other tests' relays share it, so only its presence.
    assert!(metrics.contains("pgcable_bridge_up "), "bridge up gauge");
    let (status, ready) = http_get(relay.addr, "/ready").await;
    assert_eq!(status, 200);
    assert!(ready.ends_with(r#","bridge":true}"#), "{ready}");
    relay.shutdown();
    relay.stopped().await;
}

/// `remote_connections.where(current_user: user).disconnect` ends every connection of that
/// user, and only theirs, with a remote disconnect.
#[tokio::test]
async fn rails_remote_disconnect() {
    let redis = machine_redis().await;
    let prefix = fresh_prefix();
    let db = TestDb::create().await;
    let relay = relay_with(&db, bridge(redis, &prefix, None)).await;
    bridge_up(&relay, true).await;
    let mut rails = Rails::start(redis, &prefix, None).await;
    let (user, campaign, mut first, ident) = subscriber(&db, &relay).await;
    let mut second = Cable::welcomed(relay.addr, &token(user)).await;
    second.subscribed(&ident).await;
    let (_, other_campaign, mut other, other_ident) = subscriber(&db, &relay).await;

    let answer = rails.run(json!({"op": "disconnect", "user": user})).await;
    // The channel Rails publishes to is the connection identifier of protocol.md §10.
    assert_eq!(
        answer["channel"],
        json!(format!(
            "{prefix}:action_cable/{}",
            connection_identifier("shot-server", user)
        ))
    );
    assert_eq!(answer["payload"], json!(r#"{"type":"disconnect"}"#));
    for c in [&mut first, &mut second] {
        assert_eq!(
            c.next_text().await,
            r#"{"type":"disconnect","reason":"remote","reconnect":true}"#
        );
        match c.next_message().await {
            None | Some(Message::Close(_)) => {}
            m => panic!("expected the connection to close, got {m:?}"),
        }
    }
    // The other user is still connected and served.
    let want = rails
        .broadcast(
            &format!("campaign_{other_campaign}"),
            json!({"still": "here"}),
            &other_ident,
        )
        .await;
    assert_eq!(other.next_text().await, want);

    // Rails 7.1+ publishes `reconnect` too (`disconnect(reconnect: false)`): the same PUBLISH,
    // made here with ActionCable's broadcast to the internal channel.
    let other_user = {
        db.client()
            .await
            .query_one(
                "SELECT user_id FROM campaigns WHERE id = $1",
                &[&other_campaign],
            )
            .await
            .expect("owner")
            .get::<_, Uuid>(0)
    };
    rails
        .broadcast(
            &format!(
                "action_cable/{}",
                connection_identifier("shot-server", other_user)
            ),
            json!({"type": "disconnect", "reconnect": false}),
            "{}",
        )
        .await;
    assert_eq!(
        other.next_text().await,
        r#"{"type":"disconnect","reason":"remote","reconnect":false}"#
    );
    let _ = campaign;
    relay.shutdown();
    relay.stopped().await;
}

/// Redis stops for 10 s and comes back: NOTIFY-fed messages flow all along, /ready stays 200
/// with "bridge":false, and bridged messages resume without restarting the relay.
#[tokio::test]
async fn redis_outage_and_recovery() {
    let mut redis = PrivateRedis::start().await;
    let prefix = fresh_prefix();
    let db = TestDb::create().await;
    let relay = relay_with(&db, bridge(&redis.url(), &prefix, None)).await;
    bridge_up(&relay, true).await;
    let mut rails = Rails::start(&redis.url(), &prefix, None).await;
    let (_, campaign, mut c, ident) = subscriber(&db, &relay).await;
    let stream = format!("campaign_{campaign}");
    let want = rails
        .broadcast(&stream, json!({"before": "outage"}), &ident)
        .await;
    assert_eq!(c.next_text().await, want);

    redis.stop().await;
    bridge_up(&relay, false).await;
    let outage = tokio::time::Instant::now();
    let mut n = 0;
    while outage.elapsed() < Duration::from_secs(10) {
        n += 1;
        db.broadcast(&stream, &format!(r#"{{"during":{n}}}"#)).await;
        assert_eq!(
            c.next_text().await,
            delivery(&ident, &format!(r#"{{"during":{n}}}"#))
        );
        let (status, ready) = http_get(relay.addr, "/ready").await;
        assert_eq!(status, 200, "{ready}");
        assert!(ready.ends_with(r#","bridge":false}"#), "{ready}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // (The gauge pgcable_bridge_up is process-wide, shared with the other tests' relays in
    // this process: /ready is this relay's own view.)

    redis.restart().await;
    bridge_up(&relay, true).await;
    let want = rails
        .broadcast(&stream, json!({"after": "outage"}), &ident)
        .await;
    assert_eq!(c.next_text().await, want);
    let (status, ready) = http_get(relay.addr, "/ready").await;
    assert_eq!(status, 200);
    assert!(ready.ends_with(r#","bridge":true}"#), "{ready}");
    let (_, metrics) = http_get(relay.addr, "/metrics").await;
    assert!(
        metrics.contains("pgcable_bridge_reconnects_total"),
        "reconnect count"
    );
    relay.shutdown();
    relay.stopped().await;
    redis.stop().await;
}

/// A Redis that freezes with the connection open (no FIN, no RST) is found by the bridge's
/// pings; when it thaws, the bridge subscribes again.
#[tokio::test]
async fn frozen_redis_is_detected() {
    let mut redis = PrivateRedis::start().await;
    let prefix = fresh_prefix();
    let db = TestDb::create().await;
    let relay = relay_with(&db, bridge(&redis.url(), &prefix, None)).await;
    bridge_up(&relay, true).await;
    redis.signal("STOP").await;
    bridge_up(&relay, false).await;
    let (status, ready) = http_get(relay.addr, "/ready").await;
    assert_eq!(status, 200, "{ready}");
    redis.signal("CONT").await;
    bridge_up(&relay, true).await;
    let mut rails = Rails::start(&redis.url(), &prefix, None).await;
    let (_, campaign, mut c, ident) = subscriber(&db, &relay).await;
    let want = rails
        .broadcast(
            &format!("campaign_{campaign}"),
            json!({"thawed": true}),
            &ident,
        )
        .await;
    assert_eq!(c.next_text().await, want);
    relay.shutdown();
    relay.stopped().await;
    redis.stop().await;
}

/// 10,000 bridged messages (2 KB each, 20 MB: more than a socket that is not read buffers) to a
/// stream where one client has stopped reading: the reading subscriber of the same stream gets
/// all of them in order, and the stalled one is dropped (at the latest on the first message
/// after it has been over its outbox limit for a second without reading).
#[tokio::test]
async fn flood_with_a_stalled_client() {
    let redis = machine_redis().await;
    let prefix = fresh_prefix();
    let db = TestDb::create().await;
    let relay = relay_with(&db, bridge(redis, &prefix, None)).await;
    bridge_up(&relay, true).await;
    let mut rails = Rails::start(redis, &prefix, None).await;
    let (user, campaign, mut reader, ident) = subscriber(&db, &relay).await;
    let mut stalled = Cable::welcomed(relay.addr, &token(user)).await;
    stalled.subscribed(&ident).await;
    let stream = format!("campaign_{campaign}");

    const N: u64 = 10_000;
    let flood = tokio::spawn(async move {
        rails
            .run(json!({"op": "flood", "stream": stream, "count": N, "bytes": 2000}))
            .await;
        rails
    });
    for seq in 1..=N {
        let frame = reader.next_text().await;
        let want = format!(r#","message":{{"seq":{seq},"pad":""#);
        assert!(
            frame.contains(&want),
            "expected seq {seq}, got {}",
            &frame[..frame.len().min(120)]
        );
    }
    let mut rails = flood.await.expect("flood");
    // Two more, more than a second apart: the reader gets them at once.
    for tail in 0..2 {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let want = rails
            .broadcast(
                &format!("campaign_{campaign}"),
                json!({"tail": tail}),
                &ident,
            )
            .await;
        assert_eq!(reader.next_text().await, want);
    }
    // The stalled client was dropped: it gets part of the flood, then the socket ends.
    let mut received = 0u64;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match tokio::time::timeout_at(deadline, stalled.ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) if t.contains(r#""seq""#) => received += 1,
            Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Ok(Some(Err(_))) => break,
            Ok(Some(Ok(_))) => {}
            Err(_) => panic!(
                "the stalled client was not dropped (it read {received} of {N} flood messages, then only pings)"
            ),
        }
    }
    assert!(received < N, "the stalled client got all {N} messages");
    relay.shutdown();
    relay.stopped().await;
}

/// GET /shadow as JSON.
async fn shadow_report(relay: &pgcable::server::Server) -> Value {
    let (status, body) = http_get(relay.addr, "/shadow").await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("/shadow is JSON")
}

/// Polls GET /shadow until `cond` holds (fails after 15 s with the last report).
async fn shadow_until(
    relay: &pgcable::server::Server,
    what: &str,
    cond: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let report = shadow_report(relay).await;
        if cond(&report) {
            return report;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/shadow never showed {what}: {report:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn count(report: &Value, outcome: &str, key: &str) -> u64 {
    report["counts"][outcome][key].as_u64().unwrap_or(0)
}

/// Shadow mode before cutover (no browser on pgcable): the Rails script builds the
/// `{"character": …}` message from the same row the feed renders; `/shadow` reports the match,
/// a deliberately altered field as a mismatch with its JSON path, a message pgcable never sent
/// as rails-only after the window, and what only pgcable sent as pgcable-only.
#[tokio::test]
async fn shadow_mode_compares_rails_with_the_feed() {
    let redis = machine_redis().await;
    let prefix = fresh_prefix();
    let db = TestDb::create().await;
    let window = Duration::from_secs(2);
    let relay = relay_with(&db, bridge(redis, &prefix, Some(window))).await;
    bridge_up(&relay, true).await;
    let mut rails = Rails::start(redis, &prefix, Some(&db.url)).await;
    let user = db.user(false).await;
    let campaign = db.campaign(user).await;
    let stream = format!("campaign_{campaign}");
    let (one, two) = (Uuid::new_v4(), Uuid::new_v4());
    let client = db.client().await;
    for (id, name) in [(one, "Ann"), (two, "Bob")] {
        client
            .execute(
                "INSERT INTO characters (id, name, campaign_id, user_id, action_values, description, impairments, wealth, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, '{\"Type\":\"PC\",\"Defense\":13,\"Speed\":5.5}', '{\"Appearance\":\"<p>Tall & grim</p>\"}', 1, 'Poor', now(), now())",
                &[&id, &name, &campaign, &user],
            )
            .await
            .expect("insert character");
    }
    let reload = json!({"op": "broadcast", "stream": stream, "message": {"characters": "reload"}});

    // Rails' first message to the campaign makes pgcable watch (and render) it; pgcable could
    // not have sent its own before, so it is rails-only for a known reason.
    rails.run(reload.clone()).await;
    let report = shadow_until(&relay, "the warm-up reload as rails-only", |r| {
        count(r, "rails_only", "characters") == 1
    })
    .await;
    assert_eq!(report["streams_watched"], json!(1));
    assert_eq!(
        report["explained"]["rails_only"]["not_watched"],
        json!(1),
        "{report:#}"
    );

    // A write: the feed sends {"character":…} and the reload; Rails' job sends the same, built
    // from the committed row (twice, as the update job can run twice: the second is a duplicate).
    client
        .execute(
            "UPDATE characters SET name = 'Ann the Bold', updated_at = now() WHERE id = $1",
            &[&one],
        )
        .await
        .expect("update");
    let sent = rails.run(json!({"op": "character", "id": one})).await;
    assert_eq!(sent["channel"], json!(format!("{prefix}:{stream}")));
    rails.run(reload.clone()).await;
    rails.run(json!({"op": "character", "id": one})).await;
    let report = shadow_until(
        &relay,
        "the character and reload matched, then the duplicate",
        |r| {
            count(r, "match", "character") == 1
                && count(r, "match", "characters") == 1
                && count(r, "rails_only", "character") == 1
        },
    )
    .await;
    assert_eq!(
        report["explained"]["rails_only"]["duplicate"],
        json!(1),
        "{report:#}"
    );
    assert_eq!(count(&report, "mismatch", "character"), 0, "{report:#}");

    // A deliberately altered field: a mismatch with its JSON path and both values.
    client
        .execute(
            "UPDATE characters SET wealth = 'Rich', updated_at = now() WHERE id = $1",
            &[&one],
        )
        .await
        .expect("update");
    rails
        .run(json!({"op": "character", "id": one, "override": {"name": "Altered"}}))
        .await;
    rails.run(reload.clone()).await;
    let report = shadow_until(&relay, "a mismatch", |r| {
        count(r, "mismatch", "character") == 1
    })
    .await;
    let m = &report["mismatches"][0];
    assert_eq!(m["path"], json!("$.character.name"), "{report:#}");
    assert_eq!(m["entity"], json!(one.to_string()));
    assert_eq!(m["rails"], json!("\"Altered\""));
    assert_eq!(m["pgcable"], json!("\"Ann the Bold\""));
    assert_eq!(m["stream"], json!(stream));

    // Rails broadcasts a row nobody wrote to: rails-only after the window, with no excuse.
    rails.run(json!({"op": "character", "id": two})).await;
    let report = shadow_until(&relay, "a rails-only character", |r| {
        count(r, "rails_only", "character") == 2
    })
    .await;
    let unmatched = report["unmatched"].as_array().expect("unmatched");
    let bob = unmatched
        .iter()
        .find(|u| u["entity"] == json!(two.to_string()))
        .unwrap_or_else(|| panic!("no unmatched entry for the second character: {report:#}"));
    assert_eq!(
        (&bob["outcome"], &bob["reason"]),
        (&json!("rails_only"), &Value::Null)
    );

    // A write Rails never hears of (SQL, update_all): pgcable-only, Rails silent.
    tokio::time::sleep(window).await;
    client
        .execute(
            "UPDATE characters SET wealth = 'Broke', updated_at = now() WHERE id = $1",
            &[&two],
        )
        .await
        .expect("update");
    let report = shadow_until(&relay, "a pgcable-only character", |r| {
        count(r, "pgcable_only", "character") == 1
    })
    .await;
    assert_eq!(
        report["explained"]["pgcable_only"]["rails_silent"],
        json!(2),
        "character and reload: {report:#}"
    );

    let (_, metrics) = http_get(relay.addr, "/metrics").await;
    for line in [
        r#"pgcable_shadow_total{outcome="match",key="character"} 1"#,
        r#"pgcable_shadow_total{outcome="mismatch",key="character"} 1"#,
        r#"pgcable_shadow_total{outcome="rails_only",key="character"} 2"#,
    ] {
        assert!(metrics.contains(line), "missing in /metrics: {line}");
    }
    relay.shutdown();
    relay.stopped().await;
}

/// Without shadow mode, GET /shadow says so.
#[tokio::test]
async fn shadow_endpoint_when_off() {
    let db = TestDb::create().await;
    let relay = common::relay(&db).await;
    let (status, body) = http_get(relay.addr, "/shadow").await;
    assert_eq!(status, 404);
    assert!(body.contains(r#""enabled":false"#), "{body}");
    let (_, ready) = http_get(relay.addr, "/ready").await;
    assert!(
        !ready.contains("bridge"),
        "no bridge field when the bridge is off: {ready}"
    );
    relay.shutdown();
    relay.stopped().await;
}

/// `pgcable check` with the bridge: ok when its Redis answers the subscription, a warning (still
/// a go) when it does not.
#[tokio::test]
async fn check_reports_the_bridge() {
    let redis = machine_redis().await;
    let db = TestDb::create().await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    for (url, verdict) in [
        (redis.to_string(), "ok  "),
        (format!("redis://127.0.0.1:{dead}/0"), "warn"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_pgcable"))
            .arg("check")
            .env("DATABASE_URL", &db.url)
            .env(
                "DEVISE_JWT_SECRET_KEY",
                "a-secret-long-enough-for-the-check-0123456789",
            )
            .env("PGCABLE_REDIS_URL", &url)
            .env("PGCABLE_REDIS_CHANNEL_PREFIX", fresh_prefix())
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(Duration::from_secs(60), out)
            .await
            .expect("pgcable check finished")
            .expect("run pgcable check");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let line = stdout
            .lines()
            .find(|l| l.get(6..).is_some_and(|rest| rest.starts_with("bridge")))
            .unwrap_or_else(|| panic!("no bridge line:\n{stdout}"));
        assert!(line.starts_with(verdict), "{url}: {line}");
        assert_eq!(
            out.status.code(),
            Some(0),
            "a dead bridge is not a no-go:\n{stdout}"
        );
    }
}

/// Runs a command to completion; panics with its output unless it succeeds.
async fn run_ok(program: &str, args: &[&str], dir: &std::path::Path) {
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// TLS: a `redis-server` that speaks only TLS with a certificate of a private CA. The relay
/// (the `pgcable serve` binary, trusting that CA through `SSL_CERT_FILE`) subscribes over
/// `rediss://`, the Rails publisher publishes over TLS too (`ssl_params: {ca_file:}`), and the
/// client gets Rails' bytes.
#[tokio::test]
async fn tls_redis_end_to_end() {
    let dir = std::env::temp_dir().join(format!("pgcable-tls-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    struct Cleanup(std::path::PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _cleanup = Cleanup(dir.clone());
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .expect("ext file");
    for args in [
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "1",
            "-subj",
            "/CN=pgcable test CA",
        ][..],
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ][..],
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "1",
            "-extfile",
            "server.ext",
        ][..],
    ] {
        run_ok("openssl", args, &dir).await;
    }
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port()
    };
    let port = free();
    let _redis = Command::new("redis-server")
        .args([
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
        ])
        .args([
            "--tls-cert-file",
            "server.pem",
            "--tls-key-file",
            "server.key",
        ])
        .args(["--tls-ca-cert-file", "ca.pem", "--tls-auth-clients", "no"])
        .args(["--save", "", "--appendonly", "no"])
        .current_dir(&dir)
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run redis-server: {e}"));
    let ca = dir.join("ca.pem");
    let ca = ca.to_str().expect("path");
    let mut answered = false;
    for _ in 0..100 {
        let ping = Command::new("redis-cli")
            .args([
                "--tls",
                "--cacert",
                ca,
                "-h",
                "localhost",
                "-p",
                &port.to_string(),
                "ping",
            ])
            .output()
            .await;
        if ping.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "PONG") {
            answered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        answered,
        "the TLS redis-server did not answer (is redis-server built with TLS?)"
    );

    let url = format!("rediss://localhost:{port}/0");
    let prefix = fresh_prefix();
    let db = TestDb::create().await;
    let listen = format!("127.0.0.1:{}", free());
    let addr: std::net::SocketAddr = listen.parse().expect("addr");
    let _relay = Command::new(env!("CARGO_BIN_EXE_pgcable"))
        .arg("serve")
        .env("DATABASE_URL", &db.url)
        .env("DEVISE_JWT_SECRET_KEY", common::SECRET)
        .env("PGCABLE_LISTEN", &listen)
        .env("PGCABLE_REDIS_URL", &url)
        .env("PGCABLE_REDIS_CHANNEL_PREFIX", &prefix)
        .env("SSL_CERT_FILE", ca)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("pgcable serve");
    let mut up = false;
    for _ in 0..200 {
        // (http_get fails the test on a refused connection: wait for the port first.)
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            let (_, ready) = http_get(addr, "/ready").await;
            if ready.contains(r#""bridge":true"#) {
                up = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(up, "the relay's bridge did not subscribe over TLS");

    let mut rails = Rails::start_with(&url, &prefix, None, &[("REDIS_CA_FILE", ca)]).await;
    let user = db.user(false).await;
    let campaign = db.campaign(user).await;
    let mut c = Cable::welcomed(addr, &token(user)).await;
    let ident = campaign_channel(campaign);
    c.subscribed(&ident).await;
    let want = rails
        .broadcast(
            &format!("campaign_{campaign}"),
            json!({"over": "tls", "html": "<b>&</b>"}),
            &ident,
        )
        .await;
    assert_eq!(c.next_text().await, want);
}
