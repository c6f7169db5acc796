//! Upgrading the triggers without downtime: a relay keeps serving when the installed triggers
//! are newer than it (the other direction, a relay on version-1 triggers, is in
//! tests/encounters.rs). Each test has its own database.

mod common;

use std::time::Duration;

use common::*;
use uuid::Uuid;

/// Triggers a version ahead (simulated: `pgcable.version()` says 3 and the database sends a
/// payload kind this relay does not know): ready stays 200, the unknown notification is
/// counted and skipped, and row changes keep arriving.
#[tokio::test]
async fn a_relay_keeps_serving_with_newer_triggers() {
    let db = TestDb::create().await;
    let user = db.user(false).await;
    let campaign = db.campaign(user).await;
    let relay = relay(&db).await;
    let c = db.client().await;
    c.batch_execute(
        "CREATE OR REPLACE FUNCTION pgcable.version() RETURNS integer LANGUAGE sql IMMUTABLE AS $$ SELECT 3 $$",
    )
    .await
    .expect("newer version");
    // The relay re-reads the version every 5 s: give it two looks.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let (status, body) = http_get(relay.addr, "/ready").await;
    assert_eq!(status, 200, "{body}");

    let id = campaign_channel(campaign);
    let mut w = Cable::welcomed(relay.addr, &token(user)).await;
    w.subscribed(&id).await;
    c.batch_execute(r#"SELECT pg_notify('pgcable', '{"k":"zz","new":["kind"]}')"#)
        .await
        .expect("notify");
    let character = Uuid::new_v4();
    c.execute(
        "INSERT INTO characters (id, campaign_id, name, created_at, updated_at) VALUES ($1, $2, 'After', now(), now())",
        &[&character, &campaign],
    )
    .await
    .expect("insert");
    let payload = w.next_text().await;
    assert!(payload.contains(r#""name":"After""#), "{payload}");
    assert_eq!(
        w.next_text().await,
        delivery(&id, r#"{"characters":"reload"}"#)
    );
    let (_, metrics) = http_get(relay.addr, "/metrics").await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("pgcable_notifications_ignored_total ") && !l.ends_with(" 0")),
        "{metrics}"
    );
}
