//! The SQL a DBA installs (`triggers/`), embedded in the binary, and what is installed now.
//!
//! Owns the trigger version this binary expects and the install/uninstall/status operations.
//! Calls only the database client it is given.

use tokio_postgres::Client;

/// `triggers/install.sql`.
pub const INSTALL_SQL: &str = include_str!("../triggers/install.sql");
/// `triggers/uninstall.sql`.
pub const UNINSTALL_SQL: &str = include_str!("../triggers/uninstall.sql");
/// The version of the triggers this binary was built with (`pgcable.version()`).
pub const VERSION: i32 = 2;

/// The watched tables: three whose rows the relay re-reads, three whose changes reach it as the
/// fights they belong to (live combat), then three whose changes grant or take away access
/// (live authorization).
pub const TABLES: [&str; 9] = [
    "characters",
    "vehicles",
    "fights",
    "shots",
    "character_effects",
    "chase_relationships",
    "campaign_memberships",
    "campaigns",
    "users",
];

/// The installed trigger version, or `None` if pgcable's triggers are not installed.
pub async fn installed_version(client: &Client) -> Result<Option<i32>, tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT to_regprocedure('pgcable.version()') IS NOT NULL",
            &[],
        )
        .await?;
    if !row.get::<_, bool>(0) {
        return Ok(None);
    }
    let row = client.query_one("SELECT pgcable.version()", &[]).await?;
    Ok(Some(row.get(0)))
}

/// The oldest installed trigger version this binary still works with. Version 1 lacks the
/// combat triggers (no encounters from `shots`, `character_effects` or `chase_relationships`
/// changes, no fight-ended signals) but its payloads mean the same, so a relay can be upgraded
/// before the triggers are, with no downtime.
pub const OLDEST_SUPPORTED: i32 = 1;

/// Whether this binary works with installed trigger version `v`.
pub fn usable(v: i32) -> bool {
    (OLDEST_SUPPORTED..=VERSION).contains(&v)
}

/// What an older but usable installed version lacks, for messages.
pub const OLDER_LACKS: &str = "live combat from shots, character_effects and chase_relationships changes and the fight-ended signals";

/// Whether the installed triggers are ones this binary works with. Logs what to do if they are
/// not, or if they are older than this binary's.
pub async fn is_usable(client: &Client) -> bool {
    match installed_version(client).await {
        Ok(Some(v)) if v == VERSION => true,
        Ok(Some(v)) if usable(v) => {
            tracing::warn!(
                installed = v,
                expected = VERSION,
                "installed triggers are older than this binary: the relay works, but {OLDER_LACKS} need `pgcable triggers install`"
            );
            true
        }
        Ok(Some(v)) if v < VERSION => {
            tracing::warn!(
                installed = v,
                expected = VERSION,
                "installed triggers are older than this binary: run `pgcable triggers install`"
            );
            false
        }
        Ok(Some(v)) => {
            tracing::warn!(
                installed = v,
                expected = VERSION,
                "installed triggers are newer than this binary: upgrade pgcable"
            );
            false
        }
        Ok(None) => {
            tracing::warn!("pgcable triggers are not installed in this database: run `pgcable triggers install`");
            false
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the installed trigger version");
            false
        }
    }
}

/// The triggers install.sql puts on each table (live-authorization tables have no TRUNCATE
/// trigger, and `users` no INSERT trigger: a new user holds no connection yet).
pub fn triggers_of(table: &str) -> &'static [&'static str] {
    match table {
        "campaign_memberships" | "campaigns" => {
            &["pgcable_delete", "pgcable_insert", "pgcable_update"]
        }
        "users" => &["pgcable_delete", "pgcable_update"],
        _ => &[
            "pgcable_delete",
            "pgcable_insert",
            "pgcable_truncate",
            "pgcable_update",
        ],
    }
}

/// One table's trigger state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableStatus {
    /// Table name.
    pub table: String,
    /// Whether the table exists.
    pub exists: bool,
    /// Names of pgcable triggers on it.
    pub triggers: Vec<String>,
}

impl TableStatus {
    /// The pgcable triggers this table should have and lacks.
    pub fn missing(&self) -> Vec<&'static str> {
        triggers_of(&self.table)
            .iter()
            .copied()
            .filter(|t| !self.triggers.iter().any(|have| have == t))
            .collect()
    }
}

/// Per-table trigger state.
pub async fn status(client: &Client) -> Result<Vec<TableStatus>, tokio_postgres::Error> {
    let mut out = Vec::new();
    for table in TABLES {
        let exists: bool = client
            .query_one(
                "SELECT to_regclass(format('public.%I', $1::text)) IS NOT NULL",
                &[&table],
            )
            .await?
            .get(0);
        let triggers = if exists {
            client
                .query(
                    "SELECT t.tgname::text FROM pg_trigger t \
                     JOIN pg_proc p ON p.oid = t.tgfoid JOIN pg_namespace n ON n.oid = p.pronamespace \
                     WHERE t.tgrelid = format('public.%I', $1::text)::regclass AND NOT t.tgisinternal \
                       AND n.nspname = 'pgcable' ORDER BY 1",
                    &[&table],
                )
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect()
        } else {
            Vec::new()
        };
        out.push(TableStatus {
            table: table.to_string(),
            exists,
            triggers,
        });
    }
    Ok(out)
}

/// Runs `install.sql` (idempotent).
pub async fn install(client: &Client) -> Result<(), tokio_postgres::Error> {
    client.batch_execute(INSTALL_SQL).await
}

/// Runs `uninstall.sql` (idempotent; leaves the tables and their data alone).
pub async fn uninstall(client: &Client) -> Result<(), tokio_postgres::Error> {
    client.batch_execute(UNINSTALL_SQL).await
}
