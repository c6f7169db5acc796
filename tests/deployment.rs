//! What docs/deployment.md promises an operator, against a real Postgres: the relay runs as the
//! least-privilege role that triggers/relay_role.sql creates, and `/ready` tells a load
//! balancer when it can serve.
//!
//! Roles belong to the whole server, so this runs in a private cluster: nothing it creates is
//! seen by other tests or left behind.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use pgcable::dev::Cluster;
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

use common::{campaign_channel, http_get, token, Cable, SECRET};

const ROLE_SQL: &str = include_str!("../triggers/relay_role.sql");

/// A private cluster, stopped and removed on drop (even when the test fails).
struct Guard(Option<Cluster>);

impl Guard {
    async fn start() -> Guard {
        let cluster = Cluster::from_machine().expect("PostgreSQL server binaries");
        let guard = Guard(Some(cluster));
        guard.get().start().await.expect("private cluster starts");
        guard
    }

    fn get(&self) -> &Cluster {
        self.0.as_ref().expect("cluster")
    }

    /// The cluster's `postgres` database as `user`.
    fn url_as(&self, user: &str) -> String {
        self.get()
            .url()
            .replacen("postgres@", &format!("{user}@"), 1)
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(cluster) = self.0.take() {
            let _ = std::thread::spawn(move || {
                if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    let _ = rt.block_on(cluster.remove());
                }
            })
            .join();
        }
    }
}

/// Text frames until one contains `needle` (returned); fails after 15 s.
async fn frame_containing(cable: &mut Cable, needle: &str) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let mut seen = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, cable.ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) if t.contains(needle) => return t.to_string(),
            Ok(Some(Ok(Message::Text(t)))) if t.starts_with(r#"{"type":"ping""#) => {}
            Ok(Some(Ok(m))) => seen.push(m.to_string()),
            other => panic!("no frame with {needle} in 15 s ({other:?}); got {seen:#?}"),
        }
    }
}

#[tokio::test]
async fn the_relay_runs_as_the_least_privilege_role() {
    let pg = Guard::start().await;
    let owner = common::connect(&pg.get().url()).await;
    owner
        .batch_execute(include_str!("../sql/schema.sql"))
        .await
        .expect("schema");
    owner
        .batch_execute(pgcable::triggers::INSTALL_SQL)
        .await
        .expect("triggers");
    // Production has tables the relay never reads.
    owner
        .batch_execute("CREATE TABLE public.app_secrets (token text)")
        .await
        .expect("another table");
    owner.batch_execute(ROLE_SQL).await.expect("relay_role.sql");
    // Safe to run again.
    owner
        .batch_execute(ROLE_SQL)
        .await
        .expect("relay_role.sql again");

    let url = pg.url_as("pgcable_relay");

    // The role can do what the relay needs and nothing more.
    let relay_role = common::connect(&url).await;
    for denied in [
        "UPDATE characters SET name = name",
        "INSERT INTO pgcable.messages (stream, message) VALUES ('x', '{}')",
        "SELECT 1 FROM app_secrets",
        "CREATE TABLE public.nope (id int)",
    ] {
        let e = relay_role
            .batch_execute(denied)
            .await
            .expect_err(&format!("{denied} is refused"));
        assert!(
            pgcable::db::error_text(&e).contains("permission denied"),
            "{denied}: {}",
            pgcable::db::error_text(&e)
        );
    }
    relay_role
        .batch_execute("DELETE FROM pgcable.messages WHERE false")
        .await
        .expect("the role may delete old stored broadcasts");

    // `pgcable check` as the role: a go.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pgcable"))
        .arg("check")
        .env("DATABASE_URL", &url)
        .env("DEVISE_JWT_SECRET_KEY", SECRET)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run pgcable check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "check as pgcable_relay:\n{stdout}");

    // The relay as the role: ready, and changes arrive end to end.
    let mut config = pgcable::config::Config::new(&url, SECRET);
    config.pool_size = 3;
    let relay = pgcable::server::start(config).await.expect("relay starts");
    let deadline = Instant::now() + Duration::from_secs(15);
    while !relay.state.listening.load(Ordering::Relaxed) {
        assert!(Instant::now() < deadline, "relay listener did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, body) = http_get(relay.addr, "/ready").await;
    assert_eq!(status, 200, "/ready: {body}");

    let (user, campaign, fight, hero) = (
        Uuid::new_v4(),
        Uuid::new_v4(),
        Uuid::new_v4(),
        Uuid::new_v4(),
    );
    owner
        .execute(
            "INSERT INTO users (id, first_name, last_name, name, email, jti, admin, created_at, updated_at) \
             VALUES ($1, 'G', 'M', 'G M', $2, $3, false, now(), now())",
            &[&user, &format!("{user}@example.com"), &user.to_string()],
        )
        .await
        .expect("user");
    owner
        .execute(
            "INSERT INTO campaigns (id, user_id, name, created_at, updated_at) VALUES ($1, $2, 'C', now(), now())",
            &[&campaign, &user],
        )
        .await
        .expect("campaign");
    let mut cable = Cable::welcomed(relay.addr, &token(user)).await;
    let identifier = campaign_channel(campaign);
    cable.subscribed(&identifier).await;

    // A row change: re-read and rendered with the role's SELECTs.
    owner
        .execute(
            "INSERT INTO characters (id, campaign_id, name, action_values, created_at, updated_at) \
             VALUES ($1, $2, 'Least Privilege', '{\"Type\":\"PC\"}', now(), now())",
            &[&hero, &campaign],
        )
        .await
        .expect("character");
    frame_containing(&mut cable, "Least Privilege").await;

    // A fight with the character in it: its payload reads shots, characters and vehicles;
    // subscribing to it checks access and sends presence (users, active storage).
    owner
        .execute(
            "INSERT INTO fights (id, campaign_id, name, started_at, created_at, updated_at) \
             VALUES ($1, $2, 'Ambush', now(), now(), now())",
            &[&fight, &campaign],
        )
        .await
        .expect("fight");
    owner
        .execute(
            "INSERT INTO shots (id, fight_id, character_id, shot, created_at, updated_at) \
             VALUES ($1, $2, $3, 12, now(), now())",
            &[&Uuid::new_v4(), &fight, &hero],
        )
        .await
        .expect("shot");
    let fight_channel = format!(r#"{{"channel":"FightChannel","fight_id":"{fight}"}}"#);
    cable.subscribe(&fight_channel).await;
    // (Frames of the campaign may come first.)
    frame_containing(&mut cable, "confirm_subscription").await;
    owner
        .execute(
            "UPDATE fights SET name = 'Ambush at dawn' WHERE id = $1",
            &[&fight],
        )
        .await
        .expect("fight renamed");
    let frame = frame_containing(&mut cable, "Ambush at dawn").await;
    assert!(
        frame.contains(&hero.to_string()),
        "the fight lists its character: {frame}"
    );
    // The fight is running: its encounter follows (it reads shots, character_effects and
    // chase_relationships as the role).
    let frame = frame_containing(&mut cable, "Ambush at dawn").await;
    assert!(
        frame.contains(r#""message":{"encounter":{"#) && frame.contains(&hero.to_string()),
        "the encounter: {frame}"
    );

    // A broadcast too large for NOTIFY goes through pgcable.messages.
    let big = "x".repeat(20_000);
    owner
        .execute(
            "SELECT pgcable.broadcast($1, jsonb_build_object('big', $2::text))",
            &[&format!("campaign_{campaign}"), &big],
        )
        .await
        .expect("large broadcast");
    frame_containing(&mut cable, &big).await;

    relay.shutdown();
    relay.stopped().await;
}
