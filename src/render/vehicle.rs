//! VehicleSerializer (payloads.md §1.2): the 17-key `vehicle` payload.
//!
//! One batch costs two pipelined queries: the vehicles with their belongs_to
//! rows and attachment, and their image positions.

use deadpool_postgres::ClientWrapper;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Row;
use uuid::Uuid;

use super::json::push_str;
use super::lite::{load_positions, push_named, push_positions, push_user, Positions};
use super::out::{
    image_columns, image_join, push_bool, push_image_url, push_jsonb, push_opt_bool, push_opt_str,
    push_opt_uuid, push_uuid, xmlschema, Obj,
};
use super::{both, query, Batch, Failed, RenderError, Rendered};

const QUERY: &str = concat!(
    "SELECT v.id, v.campaign_id, v.name, v.action_values::text AS action_values, v.task, v.active, ",
    xmlschema!("v.created_at"),
    " AS created_at, ",
    xmlschema!("v.updated_at"),
    " AS updated_at, ",
    "v.description::text AS description, v.faction_id, v.juncture_id, v.user_id, ",
    image_columns!("i"),
    ", f.id AS f_id, f.name AS f_name",
    ", u.id AS u_id, u.name AS u_name, u.email AS u_email",
    ", j.id AS j_id, j.name AS j_name",
    " FROM vehicles v",
    " LEFT JOIN factions f ON f.id = v.faction_id",
    " LEFT JOIN users u ON u.id = v.user_id",
    " LEFT JOIN junctures j ON j.id = v.juncture_id",
    image_join!("Vehicle", "v.id", "i"),
    "WHERE v.id = ANY($1)"
);

/// Loads and renders a batch of vehicles.
pub(crate) async fn load(
    client: &ClientWrapper,
    ids: &[Uuid],
    endpoint: Option<&str>,
) -> Result<(Vec<Rendered>, Failed), tokio_postgres::Error> {
    let params: [&(dyn ToSql + Sync); 1] = [&ids];
    let (rows, positions) = tokio::join!(
        query(client, QUERY, &[Type::UUID_ARRAY], &params),
        load_positions(client, "Vehicle", ids),
    );
    let (rows, positions) = both(rows, positions)?;
    let mut batch = Batch::new("vehicles", rows.len());
    for row in &rows {
        let id: Uuid = row.try_get("id")?;
        let campaign_id: Option<Uuid> = row.try_get("campaign_id").unwrap_or(None);
        batch.push(id, campaign_id, render(row, id, &positions, endpoint));
    }
    Ok(batch.finish())
}

/// Renders one row of [`QUERY`].
fn render(
    row: &Row,
    id: Uuid,
    positions: &Positions,
    endpoint: Option<&str>,
) -> Result<String, RenderError> {
    let mut out = String::with_capacity(1024);
    let mut o = Obj::new(&mut out);
    push_uuid(o.key("id"), id);
    push_opt_str(o.key("name"), row.try_get("name")?);
    push_jsonb(
        o.key("action_values"),
        row.try_get("action_values")?,
        "vehicles.action_values",
    )?;
    push_opt_bool(o.key("task"), row.try_get("task")?);
    push_bool(o.key("active"), row.try_get("active")?);
    push_opt_str(o.key("created_at"), row.try_get("created_at")?);
    push_opt_str(o.key("updated_at"), row.try_get("updated_at")?);
    push_image_url(
        o.key("image_url"),
        row,
        ["iattached", "ikey", "imetadata"],
        endpoint,
    )?;
    push_jsonb(
        o.key("description"),
        row.try_get("description")?,
        "vehicles.description",
    )?;
    push_str(o.key("entity_class"), "Vehicle");
    push_opt_uuid(o.key("faction_id"), row.try_get("faction_id")?);
    push_opt_uuid(o.key("juncture_id"), row.try_get("juncture_id")?);
    push_opt_uuid(o.key("user_id"), row.try_get("user_id")?);
    push_named(o.key("faction"), row, ["f_id", "f_name"], "Faction")?;
    push_user(o.key("user"), row, ["u_id", "u_name", "u_email"])?;
    push_named(o.key("juncture"), row, ["j_id", "j_name"], "Juncture")?;
    push_positions(o.key("image_positions"), positions.get(&id))?;
    o.end();
    Ok(out)
}
