//! Rails-shaped payloads from rows (payloads.md §0–§1).
//!
//! This module owns turning a batch of changed row ids into the exact JSON the
//! legacy Rails serializers produce for them: it re-reads the rows (a few
//! pipelined `= ANY($1)` queries per batch, explicit columns only, so extra
//! production columns and tables are harmless; each a statement prepared once
//! per pool connection, so Postgres does not parse and plan it on every batch)
//! and writes each payload object
//! byte for byte. Submodules: [`json`] (ActiveSupport encoding),
//! [`image_url`] (the `WithImagekit` rule), one module per serializer
//! (`character`, `vehicle`, `fight`, and `encounter` for the live combat
//! payload of [`load_encounters`]) and `lite` for the nested serializers.
//!
//! Arrays have no order in Rails; the relay emits them in a stable order:
//! id lists and `has_many` lists by the primary key of the row that links
//! them (join-table row, `shots` row, `advancements`/`image_positions` row).

mod character;
mod encounter;
mod fight;
pub use fight::name_token as fight_name;
pub mod image_url;
pub mod json;
mod lite;
mod out;
mod vehicle;

use std::fmt;

use deadpool_postgres::ClientWrapper;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Row;
use uuid::Uuid;

/// Which legacy table a change is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Table {
    /// `characters` (CharacterSerializer).
    Characters,
    /// `vehicles` (VehicleSerializer).
    Vehicles,
    /// `fights` (FightSerializer).
    Fights,
}

/// One row rendered: its id, its campaign and the inner payload object text
/// (the serializer hash, not yet wrapped in `{"character": …}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// The row's id.
    pub id: Uuid,
    /// The row's `campaign_id` as re-read.
    pub campaign_id: Option<Uuid>,
    /// The payload object, Rails-encoded.
    pub payload: String,
}

/// Settings rendering needs.
#[derive(Debug, Clone, Default)]
pub struct RenderConfig {
    /// ImageKit URL endpoint (`IMAGEKIT_URL_ENDPOINT`); without it, images
    /// whose metadata carries no URL render as `null`.
    pub imagekit_endpoint: Option<String>,
}

/// Rows that exist but failed to render: `(id, campaign_id)`.
pub type Failed = Vec<(Uuid, Option<Uuid>)>;

/// Re-reads the given rows (one batch, a few pipelined queries) and
/// renders each one that still exists. Rows that are gone are absent from
/// the result. A row that fails to render is logged (`tracing::error!` with
/// its id) and returned in the second vector so the caller still sends the
/// reload. Duplicate ids are rendered once. Output follows no particular order.
///
/// The queries are statements prepared once per pool connection and kept in
/// its statement cache (`client.statement_cache`). Each query is sent when
/// the returned future is first polled, so a caller may pipeline a `BEGIN`
/// ahead of it. If a schema change invalidated a cached statement, the error
/// satisfies [`stale_statement`]: clear the cache and load again.
///
/// An `Err` means a query failed (connection or schema problem); nothing of
/// the batch is rendered then.
pub async fn load(
    client: &ClientWrapper,
    table: Table,
    ids: &[Uuid],
    cfg: &RenderConfig,
) -> Result<(Vec<Rendered>, Failed), tokio_postgres::Error> {
    if ids.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    let endpoint = cfg.imagekit_endpoint.as_deref();
    match table {
        Table::Characters => character::load(client, ids, endpoint).await,
        Table::Vehicles => vehicle::load(client, ids, endpoint).await,
        Table::Fights => fight::load(client, ids, endpoint).await,
    }
}

/// Renders the `encounter` payload (EncounterSerializer, payloads.md §3.4,
/// with the relay rules of §2.1) of each given fight that exists and is
/// active (`started_at IS NOT NULL AND ended_at IS NULL`). The payload is the
/// inner object, not yet wrapped in `{"encounter": …}`; `campaign_id` is the
/// fight's. Inactive and missing fights are absent from the result, and
/// duplicate ids are rendered once. Output follows no particular order.
///
/// The whole batch costs five pipelined queries (one round trip once they
/// are prepared on the connection), however many fights and combatants it
/// holds. As with [`load`], each query is sent when the returned future is
/// first polled, so the caller may pipeline a `BEGIN ISOLATION LEVEL
/// REPEATABLE READ READ ONLY` ahead of it and have every query read one
/// snapshot; a fight that fails to render is logged and returned in the
/// second vector; an `Err` means a query failed (see [`stale_statement`]).
pub async fn load_encounters(
    client: &ClientWrapper,
    fight_ids: &[Uuid],
    cfg: &RenderConfig,
) -> Result<(Vec<Rendered>, Failed), tokio_postgres::Error> {
    if fight_ids.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    encounter::load(client, fight_ids, cfg.imagekit_endpoint.as_deref()).await
}

/// Runs one render query as a statement prepared once per connection (a
/// cache hit sends the query at once, without a round trip of its own).
pub(crate) async fn query(
    client: &ClientWrapper,
    sql: &str,
    types: &[Type],
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<Row>, tokio_postgres::Error> {
    let statement = client.prepare_typed_cached(sql, types).await?;
    client.query(&statement, params).await
}

/// Both results, or the error that explains the failure. Queries pipelined in one
/// transaction fail together: once one fails, those behind it fail with
/// `in_failed_sql_transaction`, which says nothing, so the other error is the cause.
pub(crate) fn both<A, B>(
    a: Result<A, tokio_postgres::Error>,
    b: Result<B, tokio_postgres::Error>,
) -> Result<(A, B), tokio_postgres::Error> {
    match (a, b) {
        (Ok(a), Ok(b)) => Ok((a, b)),
        (Err(e), Ok(_)) | (Ok(_), Err(e)) => Err(e),
        (Err(a), Err(b)) if a.code() == Some(&SqlState::IN_FAILED_SQL_TRANSACTION) => Err(b),
        (Err(a), Err(_)) => Err(a),
    }
}

/// Whether a failed [`load`] may succeed after the connection's statement
/// cache is cleared: a schema change altered a cached statement's result
/// type (`cached plan must not change result type`), or the server no longer
/// knows the statement (`DISCARD ALL`, `DEALLOCATE`).
pub fn stale_statement(e: &tokio_postgres::Error) -> bool {
    matches!(
        e.code(),
        Some(c) if *c == SqlState::FEATURE_NOT_SUPPORTED || *c == SqlState::INVALID_SQL_STATEMENT_NAME
    )
}

/// Why one row could not be rendered.
#[derive(Debug)]
pub(crate) enum RenderError {
    /// A column could not be decoded.
    Column(tokio_postgres::Error),
    /// A json/jsonb column held text that is not JSON.
    Json {
        /// The column.
        column: &'static str,
        /// The parse error.
        source: json::JsonError,
    },
}

impl fmt::Display for RenderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RenderError::Column(e) => write!(f, "column decode failed: {e}"),
            RenderError::Json { column, source } => write!(f, "column {column}: {source}"),
        }
    }
}

impl From<tokio_postgres::Error> for RenderError {
    fn from(e: tokio_postgres::Error) -> Self {
        RenderError::Column(e)
    }
}

/// Collects per-row results into the `load` output, logging failures.
pub(crate) struct Batch {
    rendered: Vec<Rendered>,
    failed: Failed,
    table: &'static str,
}

impl Batch {
    pub(crate) fn new(table: &'static str, capacity: usize) -> Self {
        Batch {
            rendered: Vec::with_capacity(capacity),
            failed: Vec::new(),
            table,
        }
    }

    pub(crate) fn push(
        &mut self,
        id: Uuid,
        campaign_id: Option<Uuid>,
        payload: Result<String, RenderError>,
    ) {
        match payload {
            Ok(payload) => self.rendered.push(Rendered {
                id,
                campaign_id,
                payload,
            }),
            Err(e) => {
                tracing::error!(table = self.table, %id, error = %e, "row failed to render");
                self.failed.push((id, campaign_id));
            }
        }
    }

    pub(crate) fn finish(self) -> (Vec<Rendered>, Failed) {
        (self.rendered, self.failed)
    }
}
