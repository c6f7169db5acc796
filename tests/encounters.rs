//! Live combat end to end (payloads.md §2.1): plain SQL in its own sessions → triggers →
//! listener → fight queue → encounter render → real WebSocket. Each test has its own database.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use tokio_postgres::Client;
use uuid::Uuid;

/// A client subscribed to a campaign (and optionally a fight), reading messages by stream.
struct Watcher {
    cable: Cable,
    names: HashMap<String, &'static str>,
}

impl Watcher {
    async fn new(addr: std::net::SocketAddr, user: Uuid, campaign: Uuid) -> Watcher {
        let mut cable = Cable::welcomed(addr, &token(user)).await;
        let id = campaign_channel(campaign);
        cable.subscribed(&id).await;
        let names = HashMap::from([(id, "A")]);
        Watcher { cable, names }
    }

    async fn with_fight(mut self, fight: Uuid) -> Watcher {
        let id = format!(r#"{{"channel":"FightChannel","fight_id":"{fight}"}}"#);
        self.cable.subscribed(&id).await;
        let _presence = self.cable.next_text().await;
        self.names.insert(id, "F");
        self
    }

    /// The next message as (stream label, message text exactly as sent).
    async fn next(&mut self) -> (&'static str, String) {
        let text = self.cable.next_text().await;
        let v: serde_json::Value = serde_json::from_str(&text).expect("frame is JSON");
        let identifier = v["identifier"].as_str().expect("identifier").to_string();
        let name = self.names.get(&identifier).copied().unwrap_or("?");
        let prefix = format!(r#"{{"identifier":{},"message":"#, rails_string(&identifier));
        let message = text
            .strip_prefix(&prefix)
            .and_then(|m| m.strip_suffix('}'))
            .unwrap_or_else(|| panic!("unexpected frame {text}"))
            .to_string();
        (name, message)
    }

    /// Messages until none arrives for `quiet`.
    async fn until_quiet(&mut self, quiet: Duration) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        loop {
            match tokio::time::timeout(quiet, self.next()).await {
                Ok(m) => out.push(m),
                Err(_) => return out,
            }
        }
    }
}

/// The top-level key of a message (`"encounter"`, `"character"`, `"type"`, …) and, for the
/// one-word signals, their value: `characters:reload`, `fight:updated`.
fn kind(message: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(message).expect("message is JSON");
    let (key, value) = v
        .as_object()
        .and_then(|o| o.iter().next())
        .expect("an object message");
    match value.as_str() {
        Some(s) if key != "type" => format!("{key}:{s}"),
        _ => key.clone(),
    }
}

fn kinds(frames: &[(&'static str, String)]) -> Vec<(&'static str, String)> {
    frames.iter().map(|(s, m)| (*s, kind(m))).collect()
}

/// The fight id of each encounter among `frames`, in order.
fn encounter_ids(frames: &[(&'static str, String)]) -> Vec<String> {
    frames
        .iter()
        .filter(|(_, m)| m.starts_with(r#"{"encounter":"#))
        .map(|(_, m)| {
            let v: serde_json::Value = serde_json::from_str(m).expect("json");
            v["encounter"]["id"].as_str().expect("id").to_string()
        })
        .collect()
}

const QUIET: Duration = Duration::from_millis(700);

/// One campaign with a started fight of two characters (one on two shots, as mooks are) and a
/// vehicle, and a second started fight in which the first character also has a shot.
struct Combat {
    db: TestDb,
    relay: pgcable::server::Server,
    user: Uuid,
    campaign: Uuid,
    fight: Uuid,
    other_fight: Uuid,
    hero: Uuid,
    villain: Uuid,
    shots: [Uuid; 4],
}

async fn combat() -> Combat {
    let db = TestDb::create().await;
    let user = db.user(false).await;
    let campaign = db.campaign(user).await;
    let (fight, other_fight) = (Uuid::new_v4(), Uuid::new_v4());
    let (hero, villain, cab) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let shots = [
        Uuid::new_v4(),
        Uuid::new_v4(),
        Uuid::new_v4(),
        Uuid::new_v4(),
    ];
    let other_shot = Uuid::new_v4();
    db.client()
        .await
        .execute(
            "WITH f AS (INSERT INTO fights (id, campaign_id, name, started_at, created_at, updated_at) \
                 VALUES ($1, $3, 'Ambush', now(), now(), now()), ($2, $3, 'Rematch', now(), now(), now())), \
             c AS (INSERT INTO characters (id, campaign_id, name, action_values, created_at, updated_at) VALUES \
                 ($4, $3, 'Hero', '{\"Type\":\"PC\",\"Speed\":7}', now(), now()), \
                 ($5, $3, 'Villain', '{\"Type\":\"Boss\",\"Speed\":6}', now(), now())), \
             v AS (INSERT INTO vehicles (id, campaign_id, name, action_values, created_at, updated_at) \
                 VALUES ($6, $3, 'Cab', '{\"Type\":\"Featured Foe\"}', now(), now())) \
             SELECT 1",
            &[&fight, &other_fight, &campaign, &hero, &villain, &cab],
        )
        .await
        .expect("insert combat");
    db.client()
        .await
        .execute(
            "INSERT INTO shots (id, fight_id, character_id, vehicle_id, shot, created_at, updated_at) VALUES \
                 ($1, $6, $8, NULL, 12, now(), now()), ($2, $6, $9, NULL, 10, now(), now()), \
                 ($3, $6, $9, NULL, 10, now(), now()), ($4, $6, NULL, $10, 8, now(), now()), \
                 ($5, $7, $8, NULL, 3, now(), now())",
            &[
                &shots[0],
                &shots[1],
                &shots[2],
                &shots[3],
                &other_shot,
                &fight,
                &other_fight,
                &hero,
                &villain,
                &cab,
            ],
        )
        .await
        .expect("insert shots");
    let relay = relay(&db).await;
    Combat {
        db,
        relay,
        user,
        campaign,
        fight,
        other_fight,
        hero,
        villain,
        shots,
    }
}

/// Runs SQL in a session of its own (another writer).
async fn sql(db: &TestDb, text: &str) {
    let c: Client = db.client().await;
    c.batch_execute(text)
        .await
        .unwrap_or_else(|e| panic!("{text}: {e}"));
}

/// The encounter of `fight` as the renderer makes it from the committed state now.
async fn render_now(db: &TestDb, fight: Uuid) -> String {
    let cfg: tokio_postgres::Config = db.url.parse().expect("url");
    let pool = deadpool_postgres::Pool::builder(deadpool_postgres::Manager::new(
        cfg,
        tokio_postgres::NoTls,
    ))
    .max_size(1)
    .build()
    .expect("pool");
    let client = pool.get().await.expect("pool connection");
    let (rendered, failed) = pgcable::render::load_encounters(
        &client,
        &[fight],
        &pgcable::render::RenderConfig::default(),
    )
    .await
    .expect("render");
    assert!(failed.is_empty());
    let r = rendered.into_iter().next().expect("the fight is active");
    format!(r#"{{"encounter":{}}}"#, r.payload)
}

#[tokio::test]
async fn a_combat_action_gives_one_encounter_per_subscriber_after_its_row_messages() {
    let c = combat().await;
    let mut watchers = vec![
        Watcher::new(c.relay.addr, c.user, c.campaign).await,
        Watcher::new(c.relay.addr, c.user, c.campaign).await,
    ];
    // One transaction: three shots move on the counter and two characters change.
    sql(
        &c.db,
        &format!(
            "BEGIN; \
             UPDATE shots SET shot = shot - 3 WHERE id IN ('{}', '{}', '{}'); \
             UPDATE characters SET impairments = 1 WHERE id IN ('{}', '{}'); \
             COMMIT;",
            c.shots[0], c.shots[1], c.shots[3], c.hero, c.villain
        ),
    )
    .await;
    let expected_last = render_now(&c.db, c.fight).await;
    for w in &mut watchers {
        let frames = w.until_quiet(QUIET).await;
        let k = kinds(&frames);
        assert_eq!(k.len(), 5, "{frames:#?}");
        let mut first: Vec<_> = k[..2].to_vec();
        first.sort();
        assert_eq!(
            first,
            [
                ("A", "character".to_string()),
                ("A", "character".to_string())
            ]
        );
        assert_eq!(k[2], ("A", "characters:reload".to_string()));
        // The hero is also in the other (active) fight: both fights get one encounter each,
        // after the row messages.
        let mut ids = encounter_ids(&frames[3..]);
        ids.sort();
        let mut want = vec![c.fight.to_string(), c.other_fight.to_string()];
        want.sort();
        assert_eq!(ids, want, "{frames:#?}");
        let ours = frames
            .iter()
            .find(|(_, m)| m.contains(&format!(r#"{{"encounter":{{"id":"{}""#, c.fight)))
            .expect("the fight's encounter");
        assert_eq!(
            ours.1, expected_last,
            "the encounter shows the committed state"
        );
    }
}

#[tokio::test]
async fn shots_alone_give_an_encounter_and_inactive_fights_give_none() {
    let c = combat().await;
    let mut w = Watcher::new(c.relay.addr, c.user, c.campaign).await;
    sql(
        &c.db,
        &format!("UPDATE shots SET count = 2 WHERE id = '{}'", c.shots[3]),
    )
    .await;
    let frames = w.until_quiet(QUIET).await;
    assert_eq!(kinds(&frames), [("A", "encounter".to_string())]);
    assert_eq!(frames[0].1, render_now(&c.db, c.fight).await);

    // Not started: nothing for shots, and only the row messages for a character in it.
    sql(
        &c.db,
        &format!(
            "UPDATE fights SET started_at = NULL WHERE id IN ('{}', '{}')",
            c.fight, c.other_fight
        ),
    )
    .await;
    let frames = w.until_quiet(QUIET).await;
    assert!(
        !kinds(&frames).iter().any(|(_, k)| k == "encounter"),
        "{frames:#?}"
    );
    sql(
        &c.db,
        &format!("UPDATE shots SET count = 3 WHERE id = '{}'", c.shots[3]),
    )
    .await;
    sql(
        &c.db,
        &format!(
            "UPDATE characters SET name = 'Hero!' WHERE id = '{}'",
            c.hero
        ),
    )
    .await;
    let frames = w.until_quiet(QUIET).await;
    assert_eq!(
        kinds(&frames),
        [
            ("A", "character".to_string()),
            ("A", "characters:reload".to_string())
        ]
    );
}

#[tokio::test]
async fn ending_a_fight_sends_the_end_messages_in_order_and_no_encounter() {
    let c = combat().await;
    sql(
        &c.db,
        &format!(
            "UPDATE fights SET name = 'The <b>Ambush</b>' WHERE id = '{}'",
            c.fight
        ),
    )
    .await;
    let w = Watcher::new(c.relay.addr, c.user, c.campaign).await;
    let mut w = w.with_fight(c.fight).await;
    sql(
        &c.db,
        &format!(
            "UPDATE fights SET ended_at = now() WHERE id = '{}'",
            c.fight
        ),
    )
    .await;
    let frames = w.until_quiet(QUIET).await;
    assert_eq!(
        kinds(&frames),
        [
            ("F", "fight:updated".to_string()),
            ("A", "type".to_string()),
            ("F", "fight:ended".to_string()),
            ("A", "fight".to_string()),
            ("A", "fights:reload".to_string()),
        ],
        "{frames:#?}"
    );
    assert_eq!(
        frames[1].1,
        format!(
            r#"{{"type":"fight_ended","fight_id":"{}","fight_name":"The \u003cb\u003eAmbush\u003c/b\u003e"}}"#,
            c.fight
        )
    );

    // Changing an ended fight's shots sends nothing.
    sql(
        &c.db,
        &format!("UPDATE shots SET count = 5 WHERE fight_id = '{}'", c.fight),
    )
    .await;
    assert!(w.until_quiet(QUIET).await.is_empty());
}

#[tokio::test]
async fn starting_a_fight_sends_its_encounter_after_the_fight_messages() {
    let c = combat().await;
    sql(
        &c.db,
        &format!(
            "UPDATE fights SET started_at = NULL WHERE id = '{}'",
            c.fight
        ),
    )
    .await;
    let w = Watcher::new(c.relay.addr, c.user, c.campaign).await;
    let mut w = w.with_fight(c.fight).await;
    sql(
        &c.db,
        &format!(
            "UPDATE fights SET started_at = now() WHERE id = '{}'",
            c.fight
        ),
    )
    .await;
    let frames = w.until_quiet(QUIET).await;
    assert_eq!(
        kinds(&frames),
        [
            ("F", "fight:updated".to_string()),
            ("A", "fight".to_string()),
            ("A", "fights:reload".to_string()),
            ("A", "encounter".to_string()),
        ],
        "{frames:#?}"
    );
    assert_eq!(frames[3].1, render_now(&c.db, c.fight).await);
}

#[tokio::test]
async fn a_shot_moved_between_fights_updates_both() {
    let c = combat().await;
    let mut w = Watcher::new(c.relay.addr, c.user, c.campaign).await;
    sql(
        &c.db,
        &format!(
            "UPDATE shots SET fight_id = '{}' WHERE id = '{}'",
            c.other_fight, c.shots[1]
        ),
    )
    .await;
    let frames = w.until_quiet(QUIET).await;
    let mut ids = encounter_ids(&frames);
    ids.sort();
    let mut want = vec![c.fight.to_string(), c.other_fight.to_string()];
    want.sort();
    assert_eq!(ids, want, "{frames:#?}");
    assert_eq!(frames.len(), 2);
    for ((_, m), id) in frames.iter().zip(encounter_ids(&frames)) {
        let fight = Uuid::try_parse(&id).expect("uuid");
        assert_eq!(*m, render_now(&c.db, fight).await);
    }
    let moved = c.shots[1].to_string();
    let theirs = &frames
        .iter()
        .find(|(_, m)| m.starts_with(&format!(r#"{{"encounter":{{"id":"{}""#, c.other_fight)))
        .expect("other fight")
        .1;
    assert!(
        theirs.contains(&moved),
        "the moved shot is in its new fight"
    );
}

#[tokio::test]
async fn a_hot_fight_ends_with_an_encounter_of_its_final_state() {
    let c = combat().await;
    let mut w = Watcher::new(c.relay.addr, c.user, c.campaign).await;
    let writer = c.db.client().await;
    let update = writer
        .prepare("UPDATE shots SET count = $1 WHERE id = $2")
        .await
        .expect("prepare");
    for i in 0..1000i32 {
        writer
            .execute(&update, &[&i, &c.shots[i as usize % 4]])
            .await
            .expect("update");
    }
    let frames = w.until_quiet(Duration::from_millis(1000)).await;
    let encounters: Vec<&String> = frames
        .iter()
        .map(|(_, m)| m)
        .filter(|m| m.starts_with(r#"{"encounter":"#))
        .collect();
    assert_eq!(encounters.len(), frames.len(), "only encounters");
    assert!(
        !encounters.is_empty() && encounters.len() < 1000,
        "coalesced: {} encounters for 1,000 changes",
        encounters.len()
    );
    let last = encounters.last().expect("an encounter");
    assert_eq!(**last, render_now(&c.db, c.fight).await);
    // The last change to a character's shot: i = 998 on the villain's second shot.
    assert!(last.contains(r#""count":998"#));
}

/// A relay of this version on a database whose triggers are still version 1 (an upgrade in
/// progress): ready, row payloads and encounters from character changes flow; once version 2
/// is installed (relay still running) shot changes give encounters too.
#[tokio::test]
async fn works_with_version_1_triggers_and_picks_up_version_2() {
    let c = combat().await;
    sql(&c.db, pgcable::triggers::UNINSTALL_SQL).await;
    sql(&c.db, include_str!("fixtures/install_v1.sql")).await;
    // The relay re-reads the trigger version every few seconds.
    let mut ready = (0, String::new());
    for _ in 0..100 {
        ready = http_get(c.relay.addr, "/ready").await;
        if ready.0 == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(ready.0, 200, "{}", ready.1);

    let mut w = Watcher::new(c.relay.addr, c.user, c.campaign).await;
    sql(
        &c.db,
        &format!("UPDATE shots SET count = 4 WHERE id = '{}'", c.shots[0]),
    )
    .await;
    assert!(
        w.until_quiet(QUIET).await.is_empty(),
        "version 1 has no shot triggers"
    );
    sql(
        &c.db,
        &format!(
            "UPDATE characters SET impairments = 2 WHERE id = '{}'",
            c.villain
        ),
    )
    .await;
    let frames = w.until_quiet(QUIET).await;
    assert_eq!(
        kinds(&frames),
        [
            ("A", "character".to_string()),
            ("A", "characters:reload".to_string()),
            ("A", "encounter".to_string())
        ]
    );

    sql(&c.db, pgcable::triggers::INSTALL_SQL).await;
    sql(
        &c.db,
        &format!("UPDATE shots SET count = 5 WHERE id = '{}'", c.shots[0]),
    )
    .await;
    let frames = w.until_quiet(QUIET).await;
    assert_eq!(kinds(&frames), [("A", "encounter".to_string())]);
    assert_eq!(frames[0].1, render_now(&c.db, c.fight).await);
}

/// Doubles are written as Rails' encoder (json 2.16.0) writes them, in the character payload
/// and in the encounter alike: `5.526837` stored in jsonb arrives as `5.5268370000000004`.
#[tokio::test]
async fn floats_as_rails_writes_them_in_every_payload() {
    let c = combat().await;
    let mut w = Watcher::new(c.relay.addr, c.user, c.campaign).await;
    sql(
        &c.db,
        &format!(
            "UPDATE characters SET action_values = '{{\"Type\":\"Boss\",\"Speed\":6,\"Toughness\":5.526837,\"x\":1.5e-10,\"y\":0.00001}}' WHERE id = '{}'",
            c.villain
        ),
    )
    .await;
    let frames = w.until_quiet(QUIET).await;
    assert_eq!(
        kinds(&frames),
        [
            ("A", "character".to_string()),
            ("A", "characters:reload".to_string()),
            ("A", "encounter".to_string())
        ]
    );
    for (_, m) in [&frames[0], &frames[2]] {
        assert!(
            m.contains(r#""Toughness":5.5268370000000004"#)
                && m.contains(r#""x":1.5e-10"#)
                && m.contains(r#""y":0.00001"#),
            "{m}"
        );
    }
}
