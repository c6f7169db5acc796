//! Rails-shaped payloads from rows (payloads.md §0–§1).
//!
//! This module owns turning a batch of changed row ids into the exact JSON the
//! legacy Rails serializers produce for them: it re-reads the rows (a few
//! pipelined `= ANY($1)` queries per batch, explicit columns only, so extra
//! production columns and tables are harmless) and writes each payload object
//! byte for byte. Submodules: [`json`] (ActiveSupport encoding),
//! [`image_url`] (the `WithImagekit` rule), one module per serializer
//! (`character`, `vehicle`, `fight`) and `lite` for the nested serializers.
//!
//! Arrays have no order in Rails; the relay emits them in a stable order:
//! id lists and `has_many` lists by the primary key of the row that links
//! them (join-table row, `shots` row, `advancements`/`image_positions` row).

mod character;
mod fight;
pub mod image_url;
pub mod json;
mod lite;
mod out;
mod vehicle;

use std::fmt;

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

/// Re-reads the given rows (one batch, a few pipelined round trips) and
/// renders each one that still exists. Rows that are gone are absent from
/// the result. A row that fails to render is logged (`tracing::error!` with
/// its id) and returned in the second vector so the caller still sends the
/// reload. Duplicate ids are rendered once. Output follows no particular order.
///
/// An `Err` means a query failed (connection or schema problem); nothing of
/// the batch is rendered then.
pub async fn load(
    client: &tokio_postgres::Client,
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
