//! Golden tests for `pgcable::render`: each test creates its own database
//! (random name), loads `sql/schema.sql` and `tests/fixtures/golden.sql`,
//! renders rows with `render::load` (on a pool connection) and compares the payloads byte for byte
//! with `tests/fixtures/golden/*.json` (written by hand from spec/payloads.md).
//! The database is dropped at the end, also when the test fails.
//!
//! The server is `postgres://postgres@127.0.0.1:5432/postgres` unless
//! `PGCABLE_TEST_ADMIN_URL` says otherwise.

mod render_db;

use render_db::{assert_same, find, read};
use std::fmt::Write as _;
use std::time::Instant;

use pgcable::render::{self, RenderConfig, Table};
use uuid::Uuid;

const ENDPOINT: &str = "https://ik.imagekit.io/demo/chi-war-test/";
const CAMPAIGN: Uuid = Uuid::from_u128(0xca000000_0000_0000_0000_000000000001);

/// The fixture's ids: an 8-hex-digit prefix and a decimal row number.
fn id(prefix: &str, n: u32) -> Uuid {
    format!("{prefix}-0000-0000-0000-{n:012}")
        .parse()
        .expect("uuid")
}

fn character(n: u32) -> Uuid {
    id("c0000000", n)
}

fn vehicle(n: u32) -> Uuid {
    id("ee000000", n)
}

fn fight(n: u32) -> Uuid {
    id("f1000000", n)
}

fn config(endpoint: Option<&str>) -> RenderConfig {
    RenderConfig {
        imagekit_endpoint: endpoint.map(str::to_owned),
    }
}

/// The big character's action_values, built from what the fixture inserts:
/// `{"arr": [0.5, 1.0, …, 50000.0], "blob": "<a href=\"x\">&</a>" × 25000}`.
fn big_action_values() -> String {
    let mut s = String::from("{\"arr\":[");
    for i in 1..=100_000u32 {
        if i > 1 {
            s.push(',');
        }
        let _ = write!(s, "{}.{}", i / 2, if i % 2 == 1 { 5 } else { 0 });
    }
    s.push_str("],\"blob\":\"");
    for _ in 0..25_000 {
        s.push_str(r#"\u003ca href=\"x\"\u003e\u0026\u003c/a\u003e"#);
    }
    s.push_str("\"}");
    s
}

fn golden(file: &str) -> String {
    let text = read(&format!("tests/fixtures/golden/{file}"));
    if text.contains("@BIG_ACTION_VALUES@") {
        text.replace("@BIG_ACTION_VALUES@", &big_action_values())
    } else {
        text
    }
}

/// The golden text as it is without an endpoint: every URL built from the
/// endpoint becomes `null`.
fn without_endpoint(text: &str) -> String {
    let needle = format!("\"{ENDPOINT}");
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(&needle) {
        out.push_str(&rest[..at]);
        out.push_str("null");
        let after = &rest[at + 1..];
        let end = after.find('"').expect("closing quote");
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}

#[tokio::test]
async fn golden_payloads() {
    render_db::with_db("tests/fixtures/golden.sql", |client| async move {
        let cfg = config(Some(ENDPOINT));

        // Characters: one batch, with a duplicate id and an id that does not exist.
        let mut ids: Vec<Uuid> = (1..=13).map(character).collect();
        ids.push(character(1));
        ids.push(character(9999));
        let (rendered, failed) = render::load(&client, Table::Characters, &ids, &cfg)
            .await
            .expect("load characters");
        assert!(failed.is_empty(), "failed: {failed:?}");
        assert_eq!(rendered.len(), 13, "one payload per existing row");
        for n in 1..=13u32 {
            let r = find(&rendered, character(n));
            let expected_campaign = if n == 1 || n == 3 {
                Some(CAMPAIGN)
            } else {
                None
            };
            assert_eq!(
                r.campaign_id, expected_campaign,
                "campaign of character {n}"
            );
            let file = format!("character_{n:02}.json");
            assert_same(&file, &r.payload, &golden(&file));
        }

        let ids: Vec<Uuid> = (1..=3).map(vehicle).chain([vehicle(9999)]).collect();
        let (rendered, failed) = render::load(&client, Table::Vehicles, &ids, &cfg)
            .await
            .expect("load vehicles");
        assert!(failed.is_empty(), "failed: {failed:?}");
        assert_eq!(rendered.len(), 3);
        for n in 1..=3u32 {
            let r = find(&rendered, vehicle(n));
            let expected_campaign = if n == 2 { None } else { Some(CAMPAIGN) };
            assert_eq!(r.campaign_id, expected_campaign, "campaign of vehicle {n}");
            let file = format!("vehicle_{n:02}.json");
            assert_same(&file, &r.payload, &golden(&file));
        }

        let ids: Vec<Uuid> = (1..=3).map(fight).chain([fight(9999)]).collect();
        let (rendered, failed) = render::load(&client, Table::Fights, &ids, &cfg)
            .await
            .expect("load fights");
        assert!(failed.is_empty(), "failed: {failed:?}");
        assert_eq!(rendered.len(), 3);
        for n in 1..=3u32 {
            let r = find(&rendered, fight(n));
            let expected_campaign = if n == 2 { None } else { Some(CAMPAIGN) };
            assert_eq!(r.campaign_id, expected_campaign, "campaign of fight {n}");
            let file = format!("fight_{n:02}.json");
            assert_same(&file, &r.payload, &golden(&file));
        }

        // Rows rendered one at a time give the same bytes as in a batch.
        let (single, _) = render::load(&client, Table::Fights, &[fight(1)], &cfg)
            .await
            .expect("load one fight");
        assert_same(
            "fight_01.json (alone)",
            &single[0].payload,
            &golden("fight_01.json"),
        );
    })
    .await;
}

#[tokio::test]
async fn without_endpoint_only_metadata_urls_remain() {
    render_db::with_db("tests/fixtures/golden.sql", |client| async move {
        let cfg = config(None);
        let ids: Vec<Uuid> = (1..=11).map(character).collect();
        let (rendered, failed) = render::load(&client, Table::Characters, &ids, &cfg)
            .await
            .expect("load characters");
        assert!(failed.is_empty());
        for n in 1..=11u32 {
            let file = format!("character_{n:02}.json");
            let expected = without_endpoint(&golden(&file));
            assert_same(&file, &find(&rendered, character(n)).payload, &expected);
        }
        // Metadata URLs survive, endpoint-built ones are gone.
        assert!(find(&rendered, character(3))
            .payload
            .contains("https://cdn.example.com/a/b.png"));
        assert!(find(&rendered, character(4))
            .payload
            .contains("\"image_url\":null"));

        let ids: Vec<Uuid> = (1..=3).map(fight).collect();
        let (rendered, _) = render::load(&client, Table::Fights, &ids, &cfg)
            .await
            .expect("load fights");
        for n in 1..=3u32 {
            let file = format!("fight_{n:02}.json");
            let expected = without_endpoint(&golden(&file));
            assert_same(&file, &find(&rendered, fight(n)).payload, &expected);
        }
    })
    .await;
}

#[tokio::test]
async fn gone_rows_and_empty_batches() {
    render_db::with_db("tests/fixtures/golden.sql", |client| async move {
        let cfg = config(Some(ENDPOINT));
        for table in [Table::Characters, Table::Vehicles, Table::Fights] {
            let (rendered, failed) = render::load(&client, table, &[], &cfg)
                .await
                .expect("empty batch");
            assert!(rendered.is_empty() && failed.is_empty());
            let (rendered, failed) = render::load(&client, table, &[Uuid::new_v4()], &cfg)
                .await
                .expect("gone row");
            assert!(rendered.is_empty() && failed.is_empty());
        }
    })
    .await;
}

#[tokio::test]
async fn unrenderable_rows_are_reported_with_their_campaign() {
    render_db::with_db("tests/fixtures/golden.sql", |client| async move {
        // A column whose type no longer decodes makes every row fail to render.
        client
            .batch_execute("ALTER TABLE characters ALTER COLUMN impairments TYPE bigint")
            .await
            .expect("alter");
        let cfg = config(Some(ENDPOINT));
        let ids = [character(1), character(2), character(9999)];
        let (rendered, mut failed) = render::load(&client, Table::Characters, &ids, &cfg)
            .await
            .expect("load");
        assert!(rendered.is_empty());
        failed.sort();
        assert_eq!(
            failed,
            vec![(character(1), Some(CAMPAIGN)), (character(2), None)]
        );
    })
    .await;
}

#[tokio::test]
async fn batch_of_1000_characters() {
    render_db::with_db("tests/fixtures/golden.sql", |client| async move {
        client
            .batch_execute(
                "INSERT INTO characters (id, name, created_at, updated_at, action_values, campaign_id, \
                   user_id, faction_id) \
                 SELECT ('c1000000-0000-0000-0000-' || lpad(i::text, 12, '0'))::uuid, 'Char ' || i, \
                   now(), now(), jsonb_build_object('Wounds', i, 'Speed', i * 0.5), \
                   'ca000000-0000-0000-0000-000000000001', '11111111-0000-0000-0000-000000000001', \
                   'fa000000-0000-0000-0000-000000000001' \
                 FROM generate_series(1, 1000) AS i; \
                 INSERT INTO carries (character_id, weapon_id) \
                 SELECT c.id, w.id FROM characters c CROSS JOIN weapons w WHERE c.name LIKE 'Char %'; \
                 INSERT INTO image_positions (positionable_type, positionable_id, context, created_at, updated_at) \
                 SELECT 'Character', c.id, 'desktop_index', now(), now() FROM characters c WHERE c.name LIKE 'Char %'; \
                 INSERT INTO active_storage_blobs (id, key, filename, service_name, byte_size, created_at) \
                 SELECT 1000 + i, 'bulk' || i, 'f', 's', 1, now() FROM generate_series(1, 1000) AS i; \
                 INSERT INTO active_storage_attachments (id, name, record_type, blob_id, created_at, record_id) \
                 SELECT 2000 + i, 'image', 'Character', 1000 + i, now(), \
                   ('c1000000-0000-0000-0000-' || lpad(i::text, 12, '0'))::uuid \
                 FROM generate_series(1, 1000) AS i; \
                 ANALYZE",
            )
            .await
            .expect("bulk insert");
        let bulk = |i: u32| id("c1000000", i);
        let ids: Vec<Uuid> = (1..=1000).map(bulk).collect();
        let cfg = config(Some(ENDPOINT));
        let started = Instant::now();
        let (rendered, failed) = render::load(&client, Table::Characters, &ids, &cfg)
            .await
            .expect("load");
        let elapsed = started.elapsed();
        eprintln!("rendered 1000 characters in {elapsed:?}");
        assert!(failed.is_empty());
        assert_eq!(rendered.len(), 1000);
        let r = find(&rendered, bulk(7));
        assert!(r.payload.contains("\"action_values\":{\"Speed\":3.5,\"Wounds\":7}"));
        assert!(r.payload.contains(
            "\"weapon_ids\":[\"aa000000-0000-0000-0000-000000000001\",\"aa000000-0000-0000-0000-000000000002\"]"
        ) || r.payload.contains(
            "\"weapon_ids\":[\"aa000000-0000-0000-0000-000000000002\",\"aa000000-0000-0000-0000-000000000001\"]"
        ));
        assert!(r
            .payload
            .contains("\"image_url\":\"https://ik.imagekit.io/demo/chi-war-test/bulk7\""));
    })
    .await;
}
