//! FightSerializer (payloads.md §1.3): the 20-key `fight` payload, with its
//! per-shot `characters` (CharacterAutocomplete) and `vehicles` (VehicleLite).
//!
//! One batch costs three pipelined queries: the fights with their attachment,
//! their shots (joined to characters, the characters' attachments, and
//! vehicles; ordered by `shots.id`), and their image positions.

use std::collections::HashMap;

use deadpool_postgres::ClientWrapper;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Row;
use uuid::Uuid;

use super::json::push_str;
use super::lite::{load_positions, push_positions, Positions};
use super::out::{
    image_columns, image_join, push_bool, push_image_url, push_opt_i32, push_opt_str,
    push_opt_uuid, push_uuid, push_uuid_array, xmlschema, Obj,
};
use super::{both, query, Batch, Failed, RenderError, Rendered};

const QUERY: &str = concat!(
    "SELECT f.id, f.campaign_id, f.name, f.description, ",
    xmlschema!("f.created_at"),
    " AS created_at, ",
    xmlschema!("f.updated_at"),
    " AS updated_at, f.active, f.sequence, ",
    xmlschema!("f.started_at"),
    " AS started_at, ",
    xmlschema!("f.ended_at"),
    " AS ended_at, f.season, f.session, f.at_a_glance, ",
    image_columns!("i"),
    " FROM fights f",
    image_join!("Fight", "f.id", "i"),
    "WHERE f.id = ANY($1)"
);

/// One row per shot of the batch's fights. `character_id` is the raw column
/// (for `character_ids`); `c_id`/`v_id` are set only when the joined row exists.
const SHOTS: &str = concat!(
    "SELECT s.fight_id, s.character_id, c.id AS c_id, c.name AS c_name, ",
    image_columns!("ci"),
    ", v.id AS v_id, v.name AS v_name",
    " FROM shots s",
    " LEFT JOIN characters c ON c.id = s.character_id",
    " LEFT JOIN vehicles v ON v.id = s.vehicle_id",
    image_join!("Character", "c.id", "ci"),
    "WHERE s.fight_id = ANY($1) ORDER BY s.fight_id, s.id"
);

/// Loads and renders a batch of fights.
pub(crate) async fn load(
    client: &ClientWrapper,
    ids: &[Uuid],
    endpoint: Option<&str>,
) -> Result<(Vec<Rendered>, Failed), tokio_postgres::Error> {
    let params: [&(dyn ToSql + Sync); 1] = [&ids];
    let (rows, shot_rows, positions) = tokio::join!(
        query(client, QUERY, &[Type::UUID_ARRAY], &params),
        query(client, SHOTS, &[Type::UUID_ARRAY], &params),
        load_positions(client, "Fight", ids),
    );
    let ((rows, shot_rows), positions) = both(both(rows, shot_rows), positions)?;
    let mut shots: HashMap<Uuid, Vec<Row>> = HashMap::new();
    for row in shot_rows {
        let fight: Uuid = row.try_get("fight_id")?;
        shots.entry(fight).or_default().push(row);
    }
    let mut batch = Batch::new("fights", rows.len());
    for row in &rows {
        let id: Uuid = row.try_get("id")?;
        let campaign_id: Option<Uuid> = row.try_get("campaign_id").unwrap_or(None);
        let fight_shots = shots.get(&id).map(Vec::as_slice).unwrap_or_default();
        batch.push(
            id,
            campaign_id,
            render(row, id, campaign_id, fight_shots, &positions, endpoint),
        );
    }
    Ok(batch.finish())
}

/// Renders one row of [`QUERY`] with its rows of [`SHOTS`].
fn render(
    row: &Row,
    id: Uuid,
    campaign_id: Option<Uuid>,
    shots: &[Row],
    positions: &Positions,
    endpoint: Option<&str>,
) -> Result<String, RenderError> {
    let mut out = String::with_capacity(1024 + shots.len() * 160);
    let mut o = Obj::new(&mut out);
    push_uuid(o.key("id"), id);
    push_opt_str(o.key("name"), row.try_get("name")?);
    push_opt_str(o.key("description"), row.try_get("description")?);
    push_image_url(
        o.key("image_url"),
        row,
        ["iattached", "ikey", "imetadata"],
        endpoint,
    )?;
    push_opt_str(o.key("created_at"), row.try_get("created_at")?);
    push_opt_str(o.key("updated_at"), row.try_get("updated_at")?);
    push_bool(o.key("active"), row.try_get("active")?);
    push_opt_i32(o.key("sequence"), row.try_get("sequence")?);

    let mut character_ids = Vec::with_capacity(shots.len());
    let mut vehicle_ids = Vec::with_capacity(shots.len());
    let arr = o.key("characters");
    arr.push('[');
    let mut first = true;
    for shot in shots {
        if let Some(cid) = shot.try_get::<_, Option<Uuid>>("character_id")? {
            character_ids.push(cid);
        }
        if let Some(vid) = shot.try_get::<_, Option<Uuid>>("v_id")? {
            vehicle_ids.push(vid);
        }
        let Some(cid) = shot.try_get::<_, Option<Uuid>>("c_id")? else {
            continue;
        };
        if !first {
            arr.push(',');
        }
        first = false;
        let mut c = Obj::new(arr);
        push_uuid(c.key("id"), cid);
        push_opt_str(c.key("name"), shot.try_get("c_name")?);
        push_image_url(
            c.key("image_url"),
            shot,
            ["ciattached", "cikey", "cimetadata"],
            endpoint,
        )?;
        push_str(c.key("entity_class"), "Character");
        c.end();
    }
    arr.push(']');
    push_uuid_array(o.key("character_ids"), &character_ids);

    let arr = o.key("vehicles");
    arr.push('[');
    let mut first = true;
    for shot in shots {
        let Some(vid) = shot.try_get::<_, Option<Uuid>>("v_id")? else {
            continue;
        };
        if !first {
            arr.push(',');
        }
        first = false;
        let mut v = Obj::new(arr);
        push_uuid(v.key("id"), vid);
        push_opt_str(v.key("name"), shot.try_get("v_name")?);
        push_str(v.key("entity_class"), "Vehicle");
        v.end();
    }
    arr.push(']');
    push_uuid_array(o.key("vehicle_ids"), &vehicle_ids);

    push_str(o.key("entity_class"), "Fight");
    push_opt_str(o.key("started_at"), row.try_get("started_at")?);
    push_opt_str(o.key("ended_at"), row.try_get("ended_at")?);
    push_opt_i32(o.key("season"), row.try_get("season")?);
    push_opt_i32(o.key("session"), row.try_get("session")?);
    push_opt_uuid(o.key("campaign_id"), campaign_id);
    push_bool(o.key("at_a_glance"), row.try_get("at_a_glance")?);
    push_positions(o.key("image_positions"), positions.get(&id))?;
    o.end();
    Ok(out)
}

/// The `name` value of a rendered fight payload, as encoded there (`null` or a JSON string):
/// the payload starts `{"id":"<uuid>","name":`, and a Rails-encoded string ends at the first
/// `"` that no backslash escapes.
pub fn name_token(payload: &str) -> Option<&str> {
    let rest = payload.get(r#"{"id":""#.len() + 36..)?;
    let value = rest.strip_prefix(r#"","name":"#)?;
    if value.starts_with("null") {
        return value.get(..4);
    }
    let bytes = value.as_bytes();
    if bytes.first() != Some(&b'"') {
        return None;
    }
    let mut i = 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'"' => return value.get(..=i),
            _ => i += 1,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::name_token;

    #[test]
    fn name_tokens() {
        let id = "00000000-0000-4000-8000-0000000000f1";
        let p = format!(
            r#"{{"id":"{id}","name":"Ambush \"at\" \\ the \u003cdocks\u003e","description":null}}"#
        );
        assert_eq!(
            name_token(&p),
            Some(r#""Ambush \"at\" \\ the \u003cdocks\u003e""#)
        );
        let p = format!(r#"{{"id":"{id}","name":null,"description":null}}"#);
        assert_eq!(name_token(&p), Some("null"));
        assert_eq!(name_token(r#"{"id":"x","name":"a"}"#), None);
        assert_eq!(
            name_token(&format!(r#"{{"id":"{id}","name":"unterminated\"}}"#)),
            None
        );
    }
}
