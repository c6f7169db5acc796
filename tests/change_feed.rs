//! The change feed end to end: plain SQL in its own sessions → triggers → listener → re-read →
//! Rails payloads over a real WebSocket (payloads.md §2). Each test has its own database.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use tokio_postgres::Client;
use uuid::Uuid;

const T0: &str = "2025-01-14 13:35:45.123456";
const T0_JSON: &str = "2025-01-14T13:35:45.123Z";
const T1: &str = "2025-01-15 00:00:00.999999";
const T1_JSON: &str = "2025-01-15T00:00:00.999Z";

/// A bare character as CharacterSerializer renders it, written out by hand from payloads.md §1.1.
fn bare_character(id: Uuid, name: &str, created: &str, updated: &str) -> String {
    format!(
        r#"{{"character":{{"id":"{id}","name":"{name}","active":true,"created_at":"{created}","updated_at":"{updated}","action_values":null,"faction_id":null,"description":null,"skills":null,"category":"character","image_url":null,"task":null,"notion_page_id":null,"wealth":null,"juncture_id":null,"schtick_ids":[],"party_ids":[],"site_ids":[],"advancement_ids":[],"weapon_ids":[],"entity_class":"Character","user_id":null,"is_template":null,"impairments":null,"user":null,"faction":null,"juncture":null,"image_positions":[]}}}}"#
    )
}

/// A bare vehicle (payloads.md §1.2).
fn bare_vehicle(id: Uuid, name: &str, created: &str, updated: &str) -> String {
    format!(
        r#"{{"vehicle":{{"id":"{id}","name":"{name}","action_values":{{}},"task":null,"active":true,"created_at":"{created}","updated_at":"{updated}","image_url":null,"description":null,"entity_class":"Vehicle","faction_id":null,"juncture_id":null,"user_id":null,"faction":null,"user":null,"juncture":null,"image_positions":[]}}}}"#
    )
}

/// A bare fight (payloads.md §1.3).
fn bare_fight(id: Uuid, name: &str, campaign: Uuid, created: &str, updated: &str) -> String {
    format!(
        r#"{{"fight":{{"id":"{id}","name":"{name}","description":null,"image_url":null,"created_at":"{created}","updated_at":"{updated}","active":true,"sequence":0,"characters":[],"character_ids":[],"vehicles":[],"vehicle_ids":[],"entity_class":"Fight","started_at":null,"ended_at":null,"season":null,"session":null,"campaign_id":"{campaign}","at_a_glance":false,"image_positions":[]}}}}"#
    )
}

/// A client subscribed to two campaigns (and optionally a fight), reading frames by stream.
struct Watcher {
    cable: Cable,
    names: HashMap<String, &'static str>,
}

impl Watcher {
    async fn new(
        addr: std::net::SocketAddr,
        user: Uuid,
        a: Uuid,
        b: Uuid,
        fight: Option<Uuid>,
    ) -> Watcher {
        let mut cable = Cable::welcomed(addr, &token(user)).await;
        let mut names = HashMap::new();
        for (id, name) in [(campaign_channel(a), "A"), (campaign_channel(b), "B")] {
            cable.subscribed(&id).await;
            names.insert(id, name);
        }
        if let Some(f) = fight {
            let id = format!(r#"{{"channel":"FightChannel","fight_id":"{f}"}}"#);
            cable.subscribed(&id).await;
            let _presence = cable.next_text().await;
            names.insert(id, "F");
        }
        Watcher { cable, names }
    }

    /// The next frame as (stream label, message text).
    async fn next(&mut self) -> (&'static str, String) {
        let text = self.cable.next_text().await;
        let v: serde_json::Value = serde_json::from_str(&text).expect("frame is JSON");
        let identifier = v["identifier"].as_str().expect("identifier").to_string();
        let name = self.names.get(&identifier).copied().unwrap_or("?");
        // The message exactly as sent: the frame minus the envelope.
        let prefix = format!(r#"{{"identifier":{},"message":"#, rails_string(&identifier));
        let message = text
            .strip_prefix(&prefix)
            .and_then(|m| m.strip_suffix('}'))
            .unwrap_or_else(|| panic!("unexpected frame {text}"))
            .to_string();
        (name, message)
    }

    /// The next `n` frames.
    async fn take(&mut self, n: usize) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        for _ in 0..n {
            out.push(self.next().await);
        }
        out
    }

    async fn quiet(&mut self) {
        self.cable.nothing_for(Duration::from_millis(400)).await;
    }
}

fn per_stream(frames: &[(&'static str, String)], stream: &str) -> Vec<String> {
    frames
        .iter()
        .filter(|(s, _)| *s == stream)
        .map(|(_, m)| m.clone())
        .collect()
}

async fn exec(db: &TestDb, sql: &str, id: Uuid, campaign: Option<Uuid>) {
    // A fresh session each time: these are "other writers".
    let c: Client = db.client().await;
    c.execute(sql, &[&id, &campaign])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

struct Setup {
    db: TestDb,
    relay: pgcable::server::Server,
    user: Uuid,
    a: Uuid,
    b: Uuid,
}

async fn setup() -> Setup {
    let db = TestDb::create().await;
    let user = db.user(false).await;
    let a = db.campaign(user).await;
    let b = db.campaign(user).await;
    let relay = relay(&db).await;
    Setup {
        db,
        relay,
        user,
        a,
        b,
    }
}

#[tokio::test]
async fn characters_lifecycle() {
    let s = setup().await;
    let mut w = Watcher::new(s.relay.addr, s.user, s.a, s.b, None).await;
    let id = Uuid::new_v4();
    let reload = r#"{"characters":"reload"}"#.to_string();

    exec(&s.db, &format!("INSERT INTO characters (id, name, campaign_id, created_at, updated_at) VALUES ($1, 'Ann', $2, '{T0}', '{T0}')"), id, Some(s.a)).await;
    assert_eq!(
        w.take(2).await,
        [
            ("A", bare_character(id, "Ann", T0_JSON, T0_JSON)),
            ("A", reload.clone())
        ]
    );

    exec(
        &s.db,
        "UPDATE characters SET name = 'Bea' WHERE id = $1 AND $2::uuid IS NULL",
        id,
        None,
    )
    .await;
    assert_eq!(
        w.take(2).await,
        [
            ("A", bare_character(id, "Bea", T0_JSON, T0_JSON)),
            ("A", reload.clone())
        ]
    );

    // A touch (only updated_at) counts.
    exec(
        &s.db,
        &format!("UPDATE characters SET updated_at = '{T1}' WHERE id = $1 AND $2::uuid IS NULL"),
        id,
        None,
    )
    .await;
    assert_eq!(
        w.take(2).await,
        [
            ("A", bare_character(id, "Bea", T0_JSON, T1_JSON)),
            ("A", reload.clone())
        ]
    );

    // A no-op update sends nothing.
    exec(
        &s.db,
        "UPDATE characters SET name = name WHERE id = $1 AND $2::uuid IS NULL",
        id,
        None,
    )
    .await;
    w.quiet().await;

    // Moving campaigns: reload to the old one; payload then reload to the new one.
    exec(
        &s.db,
        "UPDATE characters SET campaign_id = $2 WHERE id = $1",
        id,
        Some(s.b),
    )
    .await;
    let frames = w.take(3).await;
    assert_eq!(per_stream(&frames, "A"), std::slice::from_ref(&reload));
    assert_eq!(
        per_stream(&frames, "B"),
        [bare_character(id, "Bea", T0_JSON, T1_JSON), reload.clone()]
    );

    // Delete: reload only, to the old row's campaign.
    exec(
        &s.db,
        "DELETE FROM characters WHERE id = $1 AND $2::uuid IS NULL",
        id,
        None,
    )
    .await;
    assert_eq!(w.take(1).await, [("B", reload.clone())]);

    // No campaign: nothing anywhere.
    exec(&s.db, "INSERT INTO characters (id, name, campaign_id, created_at, updated_at) VALUES ($1, 'Nobody', $2, now(), now())", Uuid::new_v4(), None).await;
    w.quiet().await;
    s.relay.shutdown();
}

#[tokio::test]
async fn vehicles_lifecycle() {
    let s = setup().await;
    let mut w = Watcher::new(s.relay.addr, s.user, s.a, s.b, None).await;
    let id = Uuid::new_v4();
    let reload = r#"{"vehicles":"reload"}"#.to_string();

    exec(&s.db, &format!("INSERT INTO vehicles (id, name, action_values, campaign_id, created_at, updated_at) VALUES ($1, 'Taxi', '{{}}', $2, '{T0}', '{T0}')"), id, Some(s.a)).await;
    assert_eq!(
        w.take(2).await,
        [
            ("A", bare_vehicle(id, "Taxi", T0_JSON, T0_JSON)),
            ("A", reload.clone())
        ]
    );
    exec(
        &s.db,
        "UPDATE vehicles SET name = 'Cab' WHERE id = $1 AND $2::uuid IS NULL",
        id,
        None,
    )
    .await;
    assert_eq!(
        w.take(2).await,
        [
            ("A", bare_vehicle(id, "Cab", T0_JSON, T0_JSON)),
            ("A", reload.clone())
        ]
    );
    exec(
        &s.db,
        &format!("UPDATE vehicles SET updated_at = '{T1}' WHERE id = $1 AND $2::uuid IS NULL"),
        id,
        None,
    )
    .await;
    assert_eq!(
        w.take(2).await,
        [
            ("A", bare_vehicle(id, "Cab", T0_JSON, T1_JSON)),
            ("A", reload.clone())
        ]
    );
    exec(
        &s.db,
        "UPDATE vehicles SET action_values = action_values WHERE id = $1 AND $2::uuid IS NULL",
        id,
        None,
    )
    .await;
    w.quiet().await;
    exec(
        &s.db,
        "UPDATE vehicles SET campaign_id = $2 WHERE id = $1",
        id,
        Some(s.b),
    )
    .await;
    let frames = w.take(3).await;
    assert_eq!(per_stream(&frames, "A"), std::slice::from_ref(&reload));
    assert_eq!(
        per_stream(&frames, "B"),
        [bare_vehicle(id, "Cab", T0_JSON, T1_JSON), reload.clone()]
    );
    exec(
        &s.db,
        "DELETE FROM vehicles WHERE id = $1 AND $2::uuid IS NULL",
        id,
        None,
    )
    .await;
    assert_eq!(w.take(1).await, [("B", reload.clone())]);
    s.relay.shutdown();
}

#[tokio::test]
async fn fights_lifecycle_with_fight_stream() {
    let s = setup().await;
    let id = Uuid::new_v4();
    let reload = r#"{"fights":"reload"}"#.to_string();
    let updated = r#"{"fight":"updated"}"#.to_string();
    // Only admins may subscribe to a fight that does not exist yet.
    let admin = s.db.user(true).await;
    let mut w = Watcher::new(s.relay.addr, admin, s.a, s.b, Some(id)).await;

    exec(&s.db, &format!("INSERT INTO fights (id, name, campaign_id, created_at, updated_at) VALUES ($1, 'Brawl', $2, '{T0}', '{T0}')"), id, Some(s.a)).await;
    // Insert: nothing to fight_<id>.
    assert_eq!(
        w.take(2).await,
        [
            ("A", bare_fight(id, "Brawl", s.a, T0_JSON, T0_JSON)),
            ("A", reload.clone())
        ]
    );
    w.quiet().await;

    // A real update: fight_<id> gets {"fight":"updated"} too.
    exec(
        &s.db,
        "UPDATE fights SET name = 'Big Brawl' WHERE id = $1 AND $2::uuid IS NULL",
        id,
        None,
    )
    .await;
    let frames = w.take(3).await;
    assert_eq!(per_stream(&frames, "F"), std::slice::from_ref(&updated));
    assert_eq!(
        per_stream(&frames, "A"),
        [
            bare_fight(id, "Big Brawl", s.a, T0_JSON, T0_JSON),
            reload.clone()
        ]
    );

    // A touch: payload and reload, but nothing to fight_<id>.
    exec(
        &s.db,
        &format!("UPDATE fights SET updated_at = '{T1}' WHERE id = $1 AND $2::uuid IS NULL"),
        id,
        None,
    )
    .await;
    assert_eq!(
        w.take(2).await,
        [
            ("A", bare_fight(id, "Big Brawl", s.a, T0_JSON, T1_JSON)),
            ("A", reload.clone())
        ]
    );
    w.quiet().await;

    exec(
        &s.db,
        "UPDATE fights SET sequence = sequence WHERE id = $1 AND $2::uuid IS NULL",
        id,
        None,
    )
    .await;
    w.quiet().await;

    exec(
        &s.db,
        "UPDATE fights SET campaign_id = $2 WHERE id = $1",
        id,
        Some(s.b),
    )
    .await;
    let frames = w.take(4).await;
    assert_eq!(per_stream(&frames, "F"), std::slice::from_ref(&updated));
    assert_eq!(per_stream(&frames, "A"), std::slice::from_ref(&reload));
    assert_eq!(
        per_stream(&frames, "B"),
        [
            bare_fight(id, "Big Brawl", s.b, T0_JSON, T1_JSON),
            reload.clone()
        ]
    );

    exec(
        &s.db,
        "DELETE FROM fights WHERE id = $1 AND $2::uuid IS NULL",
        id,
        None,
    )
    .await;
    assert_eq!(w.take(1).await, [("B", reload.clone())]);
    s.relay.shutdown();
}

#[tokio::test]
async fn rollbacks_send_nothing_and_commits_arrive_in_order() {
    let s = setup().await;
    let mut w = Watcher::new(s.relay.addr, s.user, s.a, s.b, None).await;
    let id = Uuid::new_v4();
    exec(&s.db, &format!("INSERT INTO characters (id, name, campaign_id, created_at, updated_at) VALUES ($1, 'Ann', $2, '{T0}', '{T0}')"), id, Some(s.a)).await;
    w.take(2).await;

    let mut c = s.db.client().await;
    let tx = c.transaction().await.unwrap();
    tx.execute("UPDATE characters SET name = 'Ghost' WHERE id = $1", &[&id])
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    w.quiet().await;

    // A commits, then B: the last payload shows B.
    let mut c2 = s.db.client().await;
    let ta = c.transaction().await.unwrap();
    ta.execute("UPDATE characters SET name = 'A' WHERE id = $1", &[&id])
        .await
        .unwrap();
    ta.commit().await.unwrap();
    let tb = c2.transaction().await.unwrap();
    tb.execute("UPDATE characters SET name = 'B' WHERE id = $1", &[&id])
        .await
        .unwrap();
    tb.commit().await.unwrap();
    let mut names = Vec::new();
    loop {
        let (_, m) = w.next().await;
        if m.starts_with(r#"{"character":"#) {
            let v: serde_json::Value = serde_json::from_str(&m).unwrap();
            names.push(v["character"]["name"].as_str().unwrap().to_string());
        }
        if names.last().map(String::as_str) == Some("B") {
            break;
        }
    }
    assert!(
        names == ["A", "B"] || names == ["B"] || names == ["B", "B"],
        "{names:?}"
    );
    s.relay.shutdown();
}

#[tokio::test]
async fn a_burst_on_one_row_coalesces_and_ends_on_the_final_state() {
    let s = setup().await;
    let mut w = Watcher::new(s.relay.addr, s.user, s.a, s.b, None).await;
    let id = Uuid::new_v4();
    exec(&s.db, &format!("INSERT INTO characters (id, name, campaign_id, created_at, updated_at) VALUES ($1, 'n0', $2, '{T0}', '{T0}')"), id, Some(s.a)).await;
    w.take(2).await;
    let writer = s.db.client().await;
    const N: usize = 1000;
    for i in 1..=N {
        writer
            .execute(
                "UPDATE characters SET name = $2 WHERE id = $1",
                &[&id, &format!("n{i}")],
            )
            .await
            .unwrap();
    }
    let (mut payloads, mut reloads) = (0, 0);
    loop {
        let (_, m) = w.next().await;
        if m == r#"{"characters":"reload"}"# {
            reloads += 1;
            continue;
        }
        payloads += 1;
        let v: serde_json::Value = serde_json::from_str(&m).unwrap();
        if v["character"]["name"] == format!("n{N}") {
            break;
        }
    }
    // The reload that follows the final payload; a re-read already queued may repeat the final
    // state once more, never an older one.
    assert_eq!(w.next().await.1, r#"{"characters":"reload"}"#);
    loop {
        match tokio::time::timeout(Duration::from_millis(500), w.next()).await {
            Err(_) => break,
            Ok((_, m)) if m == r#"{"characters":"reload"}"# => reloads += 1,
            Ok((_, m)) => {
                payloads += 1;
                let v: serde_json::Value = serde_json::from_str(&m).unwrap();
                assert_eq!(v["character"]["name"], format!("n{N}"));
            }
        }
    }
    println!("coalescing: {N} single-row transactions on one row gave {payloads} payloads and {} reloads", reloads + 1);
    assert!(payloads < N / 2, "{payloads} payloads for {N} updates");
    s.relay.shutdown();
}

#[tokio::test]
async fn a_row_deleted_before_its_reread_yields_the_reload_only() {
    let s = setup().await;
    let mut w = Watcher::new(s.relay.addr, s.user, s.a, s.b, None).await;
    let id = Uuid::new_v4();
    // Inserted and deleted in one transaction: both notifications arrive at commit, when the
    // row is already gone, so the re-read finds nothing.
    let mut c = s.db.client().await;
    let tx = c.transaction().await.unwrap();
    tx.execute("INSERT INTO characters (id, name, campaign_id, created_at, updated_at) VALUES ($1, 'Brief', $2, now(), now())", &[&id, &s.a]).await.unwrap();
    tx.execute("DELETE FROM characters WHERE id = $1", &[&id])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        w.take(1).await,
        [("A", r#"{"characters":"reload"}"#.to_string())]
    );
    w.quiet().await;
    s.relay.shutdown();
}

#[tokio::test]
async fn truncate_reloads_that_table_in_every_watched_campaign() {
    let s = setup().await;
    let mut w = Watcher::new(s.relay.addr, s.user, s.a, s.b, None).await;
    let c = s.db.client().await;
    c.batch_execute("TRUNCATE vehicles CASCADE")
        .await
        .expect("truncate");
    let mut frames = w.take(2).await;
    frames.sort();
    assert_eq!(
        frames,
        [
            ("A", r#"{"vehicles":"reload"}"#.to_string()),
            ("B", r#"{"vehicles":"reload"}"#.to_string())
        ]
    );
    w.quiet().await;
    s.relay.shutdown();
}

#[tokio::test]
async fn listener_killed_reconnects_and_reloads_every_watched_campaign() {
    let s = setup().await;
    let mut w = Watcher::new(s.relay.addr, s.user, s.a, s.b, None).await;
    let admin = s.db.client().await;
    let killed: i64 = admin
        .query_one("SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'pgcable-listener' AND datname = current_database()) t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(killed, 1);
    let frames = w.take(6).await;
    for stream in ["A", "B"] {
        let mut got = per_stream(&frames, stream);
        got.sort();
        assert_eq!(
            got,
            [
                r#"{"characters":"reload"}"#,
                r#"{"fights":"reload"}"#,
                r#"{"vehicles":"reload"}"#
            ],
            "{stream}"
        );
    }
    // Still connected, and the feed works again.
    let id = Uuid::new_v4();
    exec(&s.db, "INSERT INTO characters (id, name, campaign_id, created_at, updated_at) VALUES ($1, 'After', $2, now(), now())", id, Some(s.a)).await;
    let (stream, m) = w.next().await;
    assert_eq!(stream, "A");
    assert!(
        m.starts_with(&format!(r#"{{"character":{{"id":"{id}""#)),
        "{m}"
    );
    s.relay.shutdown();
}

#[tokio::test]
async fn a_bulk_update_of_10000_rows_delivers_every_final_state() {
    let db = TestDb::create().await;
    let user = db.user(false).await;
    let (a, b) = (db.campaign(user).await, db.campaign(user).await);
    let c = db.client().await;
    c.execute(
        "INSERT INTO characters (name, campaign_id, created_at, updated_at) SELECT 'c' || g, $1, now(), now() FROM generate_series(1, 10000) g",
        &[&a],
    )
    .await
    .unwrap();
    let relay = relay(&db).await;
    let s = Setup {
        db,
        relay,
        user,
        a,
        b,
    };
    let mut w = Watcher::new(s.relay.addr, s.user, s.a, s.b, None).await;
    let started = std::time::Instant::now();
    let n = c
        .execute(
            "UPDATE characters SET wealth = 'rich' WHERE campaign_id = $1",
            &[&s.a],
        )
        .await
        .unwrap();
    println!(
        "bulk UPDATE of {n} rows took {:?} in the writer",
        started.elapsed()
    );
    assert_eq!(n, 10_000);
    let mut seen = std::collections::HashSet::new();
    while seen.len() < 10_000 {
        let (_, m) = w.next().await;
        if m == r#"{"characters":"reload"}"# {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(&m).unwrap();
        assert_eq!(v["character"]["wealth"], "rich");
        seen.insert(v["character"]["id"].as_str().unwrap().to_string());
    }
    println!(
        "all 10000 final states delivered {:?} after the UPDATE began",
        started.elapsed()
    );
    s.relay.shutdown();
}

#[tokio::test]
async fn postgres_restarted_clients_stay_and_the_gap_is_reloaded() {
    // A private server, so stopping it disturbs no other test.
    let cluster = pgcable::dev::Cluster::from_machine().expect("PostgreSQL server binaries");
    cluster.start().await.expect("throwaway cluster starts");
    let url = cluster.url();
    let db = connect(&url).await;
    db.batch_execute(include_str!("../sql/schema.sql"))
        .await
        .unwrap();
    db.batch_execute(include_str!("../triggers/install.sql"))
        .await
        .unwrap();
    let user = Uuid::new_v4();
    db.execute("INSERT INTO users (id, email, jti, created_at, updated_at) VALUES ($1, 'u@x', 'j', now(), now())", &[&user]).await.unwrap();
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    for c in [a, b] {
        db.execute("INSERT INTO campaigns (id, user_id, created_at, updated_at) VALUES ($1, $2, now(), now())", &[&c, &user]).await.unwrap();
    }
    drop(db);
    let mut config = pgcable::config::Config::new(&url, SECRET);
    config.listen = "127.0.0.1:0".parse().unwrap();
    let relay = pgcable::server::start(config).await.expect("relay starts");
    while !relay
        .state
        .listening
        .load(std::sync::atomic::Ordering::Relaxed)
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut w = Watcher::new(relay.addr, user, a, b, None).await;

    cluster.stop_server().await.expect("stop");
    // Clients stay connected and keep getting pings while the database is down.
    let mut pings = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(7);
    while tokio::time::Instant::now() < deadline {
        use futures_util::StreamExt;
        match tokio::time::timeout_at(deadline, w.cable.ws.next()).await {
            Err(_) => break,
            Ok(Some(Ok(m))) => {
                assert!(
                    m.to_text().unwrap().starts_with(r#"{"type":"ping""#),
                    "{m:?}"
                );
                pings += 1;
            }
            other => panic!("connection lost while the database was down: {other:?}"),
        }
    }
    assert!(pings >= 2, "{pings} pings in 7 s");
    assert!(!relay
        .state
        .listening
        .load(std::sync::atomic::Ordering::Relaxed));

    cluster.start_server().await.expect("start again");
    let back = std::time::Instant::now();
    let frames = w.take(6).await;
    println!(
        "gap reloads arrived {:?} after the server was back",
        back.elapsed()
    );
    for stream in ["A", "B"] {
        let mut got = per_stream(&frames, stream);
        got.sort();
        assert_eq!(
            got,
            [
                r#"{"characters":"reload"}"#,
                r#"{"fights":"reload"}"#,
                r#"{"vehicles":"reload"}"#
            ],
            "{stream}"
        );
    }
    let writer = connect(&url).await;
    let id = Uuid::new_v4();
    writer.execute("INSERT INTO characters (id, name, campaign_id, created_at, updated_at) VALUES ($1, 'Back', $2, now(), now())", &[&id, &a]).await.unwrap();
    let (stream, m) = w.next().await;
    assert_eq!(stream, "A");
    assert!(
        m.starts_with(&format!(r#"{{"character":{{"id":"{id}""#)),
        "{m}"
    );
    relay.shutdown();
    relay.stopped().await;
    drop(writer);
    cluster.remove().await.expect("cluster removed");
}

#[tokio::test]
async fn a_row_that_cannot_be_rendered_still_sends_the_reload() {
    let s = setup().await;
    let mut w = Watcher::new(s.relay.addr, s.user, s.a, s.b, None).await;
    // A column of a type the renderer cannot read (production drift): the row fails to render.
    s.db.client()
        .await
        .batch_execute("ALTER TABLE characters ALTER COLUMN wealth TYPE integer USING NULL")
        .await
        .unwrap();
    exec(&s.db, "INSERT INTO characters (id, name, wealth, campaign_id, created_at, updated_at) VALUES ($1, 'Odd', 5, $2, now(), now())", Uuid::new_v4(), Some(s.a)).await;
    assert_eq!(
        w.take(1).await,
        [("A", r#"{"characters":"reload"}"#.to_string())]
    );
    w.quiet().await;
    s.relay.shutdown();
}

#[tokio::test]
async fn cached_statements_survive_schema_changes() {
    let db = TestDb::create().await;
    let user = db.user(false).await;
    let (a, b) = (db.campaign(user).await, db.campaign(user).await);
    // One pool connection: every re-read reuses the statements the first one prepared.
    let relay = relay_with(&db, |c| c.pool_size = 1).await;
    let mut w = Watcher::new(relay.addr, user, a, b, None).await;
    let id = Uuid::new_v4();
    let reload = r#"{"characters":"reload"}"#.to_string();
    let update = |name: &str| {
        format!("UPDATE characters SET name = '{name}' WHERE id = $1 AND $2::uuid IS NULL")
    };

    exec(&db, &format!("INSERT INTO characters (id, name, campaign_id, created_at, updated_at) VALUES ($1, 'Ann', $2, '{T0}', '{T0}')"), id, Some(a)).await;
    assert_eq!(
        w.take(2).await,
        [
            ("A", bare_character(id, "Ann", T0_JSON, T0_JSON)),
            ("A", reload.clone())
        ]
    );

    // A production migration adds a column: the explicit column lists don't see it.
    let admin = db.client().await;
    admin
        .batch_execute("ALTER TABLE characters ADD COLUMN pgcable_test_extra integer")
        .await
        .unwrap();
    exec(&db, &update("Bea"), id, None).await;
    assert_eq!(
        w.take(2).await,
        [
            ("A", bare_character(id, "Bea", T0_JSON, T0_JSON)),
            ("A", reload.clone())
        ]
    );

    // A column the payload reads changes type: the cached statement's result type changes
    // ("cached plan must not change result type"); the relay prepares it again.
    admin
        .batch_execute("ALTER TABLE characters ALTER COLUMN name TYPE text")
        .await
        .unwrap();
    exec(&db, &update("Cid"), id, None).await;
    assert_eq!(
        w.take(2).await,
        [
            ("A", bare_character(id, "Cid", T0_JSON, T0_JSON)),
            ("A", reload.clone())
        ]
    );
    let (_, metrics) = http_get(relay.addr, "/metrics").await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("pgcable_statements_reprepared_total ") && !l.ends_with(" 0")),
        "the stale statement was re-prepared:\n{metrics}"
    );
    w.quiet().await;
    relay.shutdown();
}
