//! The trigger SQL for DBAs: `triggers/test.sh` (install twice, uninstall twice, install again,
//! every payload kind, rights, data untouched) and the `pgcable triggers` commands.

mod common;

use common::*;

#[test]
fn the_trigger_sql_passes_its_own_checks() {
    let dir = env!("CARGO_MANIFEST_DIR");
    let out = std::process::Command::new("bash")
        .arg(format!("{dir}/triggers/test.sh"))
        .current_dir(dir)
        .output()
        .expect("run triggers/test.sh (needs bash and psql)");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "triggers/test.sh failed:\n{text}");
    assert!(text.contains(" passed, 0 failed"), "{text}");
}

fn pgcable(args: &[&str], url: &str) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pgcable"))
        .args(args)
        .env("DATABASE_URL", url)
        .output()
        .expect("run pgcable");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test]
async fn triggers_commands_are_idempotent_and_leave_data_alone() {
    let db = TestDb::empty().await;
    db.client()
        .await
        .batch_execute(include_str!("../sql/schema.sql"))
        .await
        .unwrap();
    let user = db.user(false).await;
    let campaign = db.campaign(user).await;
    db.client()
        .await
        .execute(
            "INSERT INTO characters (name, campaign_id, created_at, updated_at) VALUES ('Kept', $1, now(), now())",
            &[&campaign],
        )
        .await
        .unwrap();

    let (ok, text) = pgcable(&["triggers", "status"], &db.url);
    assert!(!ok && text.contains("not installed"), "{text}");
    for _ in 0..2 {
        let (ok, text) = pgcable(&["triggers", "install"], &db.url);
        assert!(ok, "{text}");
    }
    let (ok, text) = pgcable(&["triggers", "status"], &db.url);
    assert!(ok && text.contains("(current)"), "{text}");
    let count: i64 = db
        .client()
        .await
        .query_one(
            "SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'pgcable_%' AND NOT tgisinternal",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        count, 32,
        "four on each row and combat table, three on memberships and campaigns, two on users"
    );
    for _ in 0..2 {
        let (ok, text) = pgcable(&["triggers", "uninstall"], &db.url);
        assert!(ok, "{text}");
    }
    let c = db.client().await;
    let schema: bool = c
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'pgcable')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!schema);
    let kept: i64 = c
        .query_one("SELECT count(*) FROM characters WHERE name = 'Kept'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(kept, 1);
    let (ok, text) = pgcable(&["triggers", "install"], &db.url);
    assert!(ok, "{text}");
    let (ok, sql) = pgcable(&["triggers", "sql"], &db.url);
    assert!(ok && sql == pgcable::triggers::INSTALL_SQL);
}
