//! Changes to rows of a campaign nobody watches are not re-read (their payloads would go
//! nowhere), while a watched campaign still gets every payload. Its own test binary: it reads
//! the process-wide metrics, which other tests running alongside would move.

mod common;

use std::time::Duration;

use common::*;
use uuid::Uuid;

/// The value of an unlabelled metric in Prometheus text (0 if absent).
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

async fn metrics(addr: std::net::SocketAddr) -> (f64, f64) {
    let (_, text) = http_get(addr, "/metrics").await;
    (
        metric(&text, "pgcable_reread_seconds_count"),
        metric(&text, "pgcable_rereads_skipped_total"),
    )
}

#[tokio::test]
async fn changes_nobody_watches_are_not_reread() {
    let db = TestDb::create().await;
    let user = db.user(false).await;
    let watched = db.campaign(user).await;
    let unwatched = db.campaign(user).await;
    let relay = relay(&db).await;
    let mut cable = Cable::welcomed(relay.addr, &token(user)).await;
    let channel = campaign_channel(watched);
    cable.subscribed(&channel).await;
    let (rereads0, skipped0) = metrics(relay.addr).await;

    // Every table, in the campaign nobody watches; each statement its own transaction.
    let writer = db.client().await;
    let (character, vehicle, fight) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    for (sql, id) in [
        ("INSERT INTO characters (id, name, campaign_id, created_at, updated_at) VALUES ($1, 'Unseen', $2, now(), now())", character),
        ("INSERT INTO vehicles (id, name, action_values, campaign_id, created_at, updated_at) VALUES ($1, 'Unseen', '{}', $2, now(), now())", vehicle),
        ("INSERT INTO fights (id, name, campaign_id, created_at, updated_at) VALUES ($1, 'Unseen', $2, now(), now())", fight),
    ] {
        writer.execute(sql, &[&id, &unwatched]).await.unwrap();
    }
    writer
        .execute(
            "UPDATE characters SET name = 'Still unseen' WHERE id = $1",
            &[&character],
        )
        .await
        .unwrap();

    // The watched campaign still gets its payload and reload, after all of the above.
    let seen = Uuid::new_v4();
    writer
        .execute(
            "INSERT INTO characters (id, name, campaign_id, created_at, updated_at) VALUES ($1, 'Seen', $2, now(), now())",
            &[&seen, &watched],
        )
        .await
        .unwrap();
    let payload = cable.next_text().await;
    assert!(
        payload.contains(&format!(r#"{{"character":{{"id":"{seen}""#)),
        "payload of the watched row: {payload}"
    );
    assert_eq!(
        cable.next_text().await,
        delivery(&channel, r#"{"characters":"reload"}"#)
    );
    cable.nothing_for(Duration::from_millis(300)).await;

    let (rereads, skipped) = metrics(relay.addr).await;
    assert_eq!(rereads - rereads0, 1.0, "only the watched row was re-read");
    assert!(
        skipped - skipped0 >= 3.0,
        "a character, a vehicle and a fight skipped (got {})",
        skipped - skipped0
    );

    // Once someone watches, changes there are re-read and delivered again.
    let late = campaign_channel(unwatched);
    cable.subscribed(&late).await;
    writer
        .execute(
            "UPDATE characters SET name = 'Now seen' WHERE id = $1",
            &[&character],
        )
        .await
        .unwrap();
    let payload = cable.next_text().await;
    assert!(
        payload.contains(&rails_string(&late))
            && payload.contains(&format!(
                r#"{{"character":{{"id":"{character}","name":"Now seen""#
            )),
        "payload after subscribing: {payload}"
    );
    assert_eq!(
        cable.next_text().await,
        delivery(&late, r#"{"characters":"reload"}"#)
    );
    let (rereads, _) = metrics(relay.addr).await;
    assert_eq!(rereads - rereads0, 2.0);
    relay.shutdown();
}
