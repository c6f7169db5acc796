//! CharacterSerializer (payloads.md §1.1): the 28-key `character` payload.
//!
//! One batch costs two pipelined queries: the characters with their
//! belongs_to rows, attachment and id lists (correlated `ARRAY(…)` subqueries),
//! and their image positions.

use deadpool_postgres::ClientWrapper;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Row;
use uuid::Uuid;

use super::json::push_str;
use super::lite::{load_positions, push_named, push_positions, push_user, Positions};
use super::out::{
    image_columns, image_join, push_bool, push_image_url, push_jsonb, push_opt_bool, push_opt_i32,
    push_opt_str, push_opt_uuid, push_uuid, push_uuid_array, xmlschema, Obj,
};
use super::{both, query, Batch, Failed, RenderError, Rendered};

/// Id lists are ordered by the primary key of the linking row.
const QUERY: &str = concat!(
    "SELECT c.id, c.campaign_id, c.name, c.active, ",
    xmlschema!("c.created_at"),
    " AS created_at, ",
    xmlschema!("c.updated_at"),
    " AS updated_at, ",
    "c.action_values::text AS action_values, c.faction_id, c.description::text AS description, ",
    "c.skills::text AS skills, c.task, c.notion_page_id, c.wealth, c.juncture_id, ",
    "c.user_id, c.is_template, c.impairments, ",
    image_columns!("i"),
    ", ARRAY(SELECT s.id FROM character_schticks cs JOIN schticks s ON s.id = cs.schtick_id \
       WHERE cs.character_id = c.id ORDER BY cs.id) AS schtick_ids",
    ", ARRAY(SELECT p.id FROM memberships m JOIN parties p ON p.id = m.party_id \
       WHERE m.character_id = c.id ORDER BY m.id) AS party_ids",
    ", ARRAY(SELECT st.id FROM attunements at JOIN sites st ON st.id = at.site_id \
       WHERE at.character_id = c.id ORDER BY at.id) AS site_ids",
    ", ARRAY(SELECT ad.id FROM advancements ad WHERE ad.character_id = c.id ORDER BY ad.id) \
       AS advancement_ids",
    ", ARRAY(SELECT w.id FROM carries ca JOIN weapons w ON w.id = ca.weapon_id \
       WHERE ca.character_id = c.id ORDER BY ca.id) AS weapon_ids",
    ", u.id AS u_id, u.name AS u_name, u.email AS u_email",
    ", f.id AS f_id, f.name AS f_name",
    ", j.id AS j_id, j.name AS j_name",
    " FROM characters c",
    " LEFT JOIN users u ON u.id = c.user_id",
    " LEFT JOIN factions f ON f.id = c.faction_id",
    " LEFT JOIN junctures j ON j.id = c.juncture_id",
    image_join!("Character", "c.id", "i"),
    "WHERE c.id = ANY($1)"
);

/// Loads and renders a batch of characters.
pub(crate) async fn load(
    client: &ClientWrapper,
    ids: &[Uuid],
    endpoint: Option<&str>,
) -> Result<(Vec<Rendered>, Failed), tokio_postgres::Error> {
    let params: [&(dyn ToSql + Sync); 1] = [&ids];
    let (rows, positions) = tokio::join!(
        query(client, QUERY, &[Type::UUID_ARRAY], &params),
        load_positions(client, "Character", ids),
    );
    let (rows, positions) = both(rows, positions)?;
    let mut batch = Batch::new("characters", rows.len());
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
    let mut out = String::with_capacity(2048);
    let mut o = Obj::new(&mut out);
    push_uuid(o.key("id"), id);
    push_opt_str(o.key("name"), row.try_get("name")?);
    push_bool(o.key("active"), row.try_get("active")?);
    push_opt_str(o.key("created_at"), row.try_get("created_at")?);
    push_opt_str(o.key("updated_at"), row.try_get("updated_at")?);
    push_jsonb(
        o.key("action_values"),
        row.try_get("action_values")?,
        "characters.action_values",
    )?;
    push_opt_uuid(o.key("faction_id"), row.try_get("faction_id")?);
    push_jsonb(
        o.key("description"),
        row.try_get("description")?,
        "characters.description",
    )?;
    push_jsonb(o.key("skills"), row.try_get("skills")?, "characters.skills")?;
    push_str(o.key("category"), "character");
    push_image_url(
        o.key("image_url"),
        row,
        ["iattached", "ikey", "imetadata"],
        endpoint,
    )?;
    push_opt_bool(o.key("task"), row.try_get("task")?);
    push_opt_uuid(o.key("notion_page_id"), row.try_get("notion_page_id")?);
    push_opt_str(o.key("wealth"), row.try_get("wealth")?);
    push_opt_uuid(o.key("juncture_id"), row.try_get("juncture_id")?);
    for list in [
        "schtick_ids",
        "party_ids",
        "site_ids",
        "advancement_ids",
        "weapon_ids",
    ] {
        let ids: Vec<Uuid> = row.try_get(list)?;
        push_uuid_array(o.key(list), &ids);
    }
    push_str(o.key("entity_class"), "Character");
    push_opt_uuid(o.key("user_id"), row.try_get("user_id")?);
    push_opt_bool(o.key("is_template"), row.try_get("is_template")?);
    push_opt_i32(o.key("impairments"), row.try_get("impairments")?);
    push_user(o.key("user"), row, ["u_id", "u_name", "u_email"])?;
    push_named(o.key("faction"), row, ["f_id", "f_name"], "Faction")?;
    push_named(o.key("juncture"), row, ["j_id", "j_name"], "Juncture")?;
    push_positions(o.key("image_positions"), positions.get(&id))?;
    o.end();
    Ok(out)
}
