//! Nested serializers shared by the payloads (payloads.md §1.4): UserLite,
//! FactionLite, JunctureLite and ImagePosition, plus the batch query that
//! loads image positions for a set of records.

use std::collections::HashMap;

use deadpool_postgres::ClientWrapper;
use tokio_postgres::types::Type;
use tokio_postgres::Row;
use uuid::Uuid;

use super::json::push_str;
use super::out::{push_jsonb, push_opt_f64, push_opt_str, push_uuid, Obj};
use super::RenderError;

/// UserLiteSerializer: `{"id","name","email","entity_class":"User"}`, or
/// `null` when the joined user row is absent. `cols` are the aliases of
/// `users.id`, `users.name`, `users.email`.
pub(crate) fn push_user(out: &mut String, row: &Row, cols: [&str; 3]) -> Result<(), RenderError> {
    let Some(id) = row.try_get::<_, Option<Uuid>>(cols[0])? else {
        out.push_str("null");
        return Ok(());
    };
    let name: Option<&str> = row.try_get(cols[1])?;
    let email: Option<&str> = row.try_get(cols[2])?;
    let mut o = Obj::new(out);
    push_uuid(o.key("id"), id);
    push_opt_str(o.key("name"), name);
    push_opt_str(o.key("email"), email);
    push_str(o.key("entity_class"), "User");
    o.end();
    Ok(())
}

/// FactionLite / JunctureLite: `{"id","name","entity_class":<class>}`, or
/// `null` when the joined row is absent. `cols` are the aliases of the id and name.
pub(crate) fn push_named(
    out: &mut String,
    row: &Row,
    cols: [&str; 2],
    entity_class: &'static str,
) -> Result<(), RenderError> {
    let Some(id) = row.try_get::<_, Option<Uuid>>(cols[0])? else {
        out.push_str("null");
        return Ok(());
    };
    let name: Option<&str> = row.try_get(cols[1])?;
    let mut o = Obj::new(out);
    push_uuid(o.key("id"), id);
    push_opt_str(o.key("name"), name);
    push_str(o.key("entity_class"), entity_class);
    o.end();
    Ok(())
}

/// The eight values of the `ImagePosition#context` enum; anything else is `null`.
const CONTEXTS: [&str; 8] = [
    "desktop_index",
    "mobile_index",
    "desktop_entity",
    "mobile_entity",
    "desktop_edit",
    "mobile_edit",
    "desktop_encounter",
    "mobile_encounter",
];

/// Image position rows of one batch, grouped by `positionable_id`, each group
/// ordered by `image_positions.id`.
pub(crate) type Positions = HashMap<Uuid, Vec<Row>>;

/// Loads the image positions of records of `positionable_type` (`Character`, …).
pub(crate) async fn load_positions(
    client: &ClientWrapper,
    positionable_type: &str,
    ids: &[Uuid],
) -> Result<Positions, tokio_postgres::Error> {
    let rows = super::query(
        client,
        "SELECT positionable_id, id, context, x_position, y_position, \
             style_overrides::text AS style_overrides \
             FROM image_positions \
             WHERE positionable_type = $1 AND positionable_id = ANY($2) \
             ORDER BY positionable_id, id",
        &[Type::TEXT, Type::UUID_ARRAY],
        &[&positionable_type, &ids],
    )
    .await?;
    let mut map: Positions = HashMap::new();
    for row in rows {
        let owner: Uuid = row.try_get(0)?;
        map.entry(owner).or_default().push(row);
    }
    Ok(map)
}

/// `[ImagePosition…]` for one record (`[]` when it has none).
pub(crate) fn push_positions(out: &mut String, rows: Option<&Vec<Row>>) -> Result<(), RenderError> {
    out.push('[');
    for (i, row) in rows
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        if i > 0 {
            out.push(',');
        }
        let id: Uuid = row.try_get("id")?;
        let context: Option<&str> = row.try_get("context")?;
        let x: Option<f64> = row.try_get("x_position")?;
        let y: Option<f64> = row.try_get("y_position")?;
        let style: Option<&str> = row.try_get("style_overrides")?;
        let mut o = Obj::new(out);
        push_uuid(o.key("id"), id);
        push_opt_str(o.key("context"), context.filter(|c| CONTEXTS.contains(c)));
        push_opt_f64(o.key("x_position"), x);
        push_opt_f64(o.key("y_position"), y);
        push_jsonb(
            o.key("style_overrides"),
            style,
            "image_positions.style_overrides",
        )?;
        o.end();
    }
    out.push(']');
    Ok(())
}
