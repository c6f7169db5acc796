//! EncounterSerializer (payloads.md §3.4, with the relay rules of §2.1): the
//! `encounter` payload of an active fight, which is all the live combat
//! screen of other users updates from.
//!
//! This module owns that payload: which fights get one (those that exist and
//! are active, `started_at IS NOT NULL AND ended_at IS NULL`), the `shots`
//! groups with their character and vehicle elements, the order of characters
//! within a shot (done in SQL, so `lower(name)` compares in the database's
//! collation), and the defeat values of driven vehicles. Where Rails'
//! serializer raises on odd data, the relay writes the neutral value that
//! §2.1 decides and logs the oddity at debug; one odd combatant never fails
//! its encounter.
//!
//! One batch of fights costs five pipelined queries, one round trip once the
//! connection's statements are prepared:
//! 1. [`FIGHTS`]: the active fights among the ids, each with its image, its
//!    distinct shot values, `character_ids` and `vehicle_ids`;
//! 2. [`CHARACTERS`]: one row per shot with a character, in display order,
//!    with the character's faction, image, weapon and schtick ids, and the
//!    vehicle it drives (that vehicle's shot, faction, image, and the Type of
//!    the character that shot names as driver);
//! 3. [`VEHICLES`]: one row per shot with a vehicle, with its image and driver;
//! 4. [`EFFECTS`]: the `character_effects` on the fights' shots;
//! 5. [`CHASES`]: the fights' active `chase_relationships`.
//!
//! Arrays Rails leaves unordered are emitted by the primary key of the row
//! that links them: `shots.id` (`character_ids`, `vehicle_ids`, vehicles in
//! a shot), `carries.id`, `character_schticks.id`, `character_effects.id`,
//! `chase_relationships.id`.

use std::collections::HashMap;
use std::ops::Range;

use deadpool_postgres::ClientWrapper;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Row;
use uuid::Uuid;

use super::json::push_str;
use super::out::{
    image_columns, image_join, push_bool, push_image_url, push_jsonb, push_opt_i32, push_opt_str,
    push_opt_uuid, push_uuid, push_uuid_array, xmlschema, Obj,
};
use super::{both, query, Batch, Failed, RenderError, Rendered};

/// The active fights among `$1`. `shot_values` are the distinct `shots.shot`
/// values in display order (DESC NULLS LAST); the id lists keep duplicates
/// and follow `shots.id`.
const FIGHTS: &str = concat!(
    "SELECT f.id, f.campaign_id, f.name, f.sequence, f.description, ",
    xmlschema!("f.started_at"),
    " AS started_at, ",
    xmlschema!("f.ended_at"),
    " AS ended_at, f.action_id, ",
    image_columns!("i"),
    ", ARRAY(SELECT DISTINCT s.shot FROM shots s WHERE s.fight_id = f.id \
       ORDER BY s.shot DESC NULLS LAST) AS shot_values",
    ", ARRAY(SELECT s.character_id FROM shots s \
       WHERE s.fight_id = f.id AND s.character_id IS NOT NULL ORDER BY s.id) AS character_ids",
    ", ARRAY(SELECT v.id FROM shots s JOIN vehicles v ON v.id = s.vehicle_id \
       WHERE s.fight_id = f.id ORDER BY s.id) AS vehicle_ids",
    " FROM fights f",
    image_join!("Fight", "f.id", "i"),
    "WHERE f.id = ANY($1) AND f.started_at IS NOT NULL AND f.ended_at IS NULL"
);

/// One row per shot with a character (of an active fight among `$1`),
/// ordered by fight, shot value (DESC NULLS LAST), then §3.4's three keys
/// and `shots.id`:
///
/// 1. the index of the Type in the list (NULL or missing counts as Mook; an
///    unknown Type gives NULL, which sorts last);
/// 2. `Speed::int - impairments` DESC (`impairments` as emitted). `k.speed`
///    is the Speed text without the blanks Postgres' `int` input skips
///    (`'0'` when action_values is a JSON value but not an object). Text that
///    input accepts (an optional sign and digits, within range) is that
///    integer, any other text is 0 (Rails' SQL would fail there), and a
///    missing or null Speed (or a SQL NULL action_values, or NULL
///    impairments) gives NULL, which sorts first as in Rails (`n.speed` is
///    the integer). The cast runs only on a sign and at most ten significant
///    digits, so it cannot fail. `speed_odd` tells the 0s Rails would fail on;
/// 3. `lower(name)`, in the database's collation.
///
/// The `v_*`/`vf_*`/`vi*` columns describe the vehicle on the shot that
/// `driving_id` names (NULL when there is none), `ds_*` that shot, and
/// `dc_*` the character on the shot that *its* `driver_id` names, whose Type
/// sets the defeat threshold (Vehicle#defeat_threshold).
const CHARACTERS: &str = concat!(
    "SELECT s.fight_id, s.shot, s.id AS shot_id, c.id, c.name, c.color, s.count, ",
    "c.skills::text AS skills, c.status::text AS status, s.location, s.driving_id, c.faction_id, ",
    "k.imp AS impairments, c.action_values::text AS action_values, ",
    "COALESCE(k.speed IS NOT NULL AND n.speed = 0 AND k.speed !~ '^[+-]?0+$' ",
    "OR jsonb_typeof(c.action_values) <> 'object', false) AS speed_odd, ",
    image_columns!("ci"),
    ", fa.id AS fa_id, fa.name AS fa_name",
    ", ARRAY(SELECT ca.weapon_id FROM carries ca WHERE ca.character_id = c.id ORDER BY ca.id) \
       AS weapon_ids",
    ", ARRAY(SELECT cs.schtick_id FROM character_schticks cs WHERE cs.character_id = c.id \
       ORDER BY cs.id) AS schtick_ids",
    ", ds.id AS ds_id, ds.was_rammed_or_damaged AS ds_rammed",
    ", v.id AS v_id, v.name AS v_name, v.action_values::text AS v_action_values, ",
    "v.color AS v_color, v.impairments AS v_impairments, v.faction_id AS v_faction_id",
    ", vf.id AS vf_id, vf.name AS vf_name, ",
    image_columns!("vi"),
    ", jsonb_typeof(v.action_values) AS v_av_kind, v.action_values ->> 'Type' AS v_type",
    ", jsonb_typeof(v.action_values -> 'Chase Points') AS v_cp_kind",
    ", v.action_values ->> 'Chase Points' AS v_cp",
    ", dc.id AS dc_id, jsonb_typeof(dc.action_values) AS dc_av_kind",
    ", dc.action_values ->> 'Type' AS dc_type",
    " FROM shots s",
    " JOIN fights f ON f.id = s.fight_id AND f.started_at IS NOT NULL AND f.ended_at IS NULL",
    " JOIN characters c ON c.id = s.character_id",
    " CROSS JOIN LATERAL (SELECT",
    " CASE WHEN c.action_values ->> 'Type' = 'PC' THEN c.impairments ELSE s.impairments END AS imp,",
    " CASE WHEN jsonb_typeof(c.action_values) <> 'object' THEN '0'",
    " ELSE btrim(c.action_values ->> 'Speed', E' \\t\\n\\r\\f\\x0b') END AS speed) k",
    " CROSS JOIN LATERAL (SELECT CASE WHEN k.speed IS NULL THEN NULL",
    " WHEN k.speed !~ '^[+-]?[0-9]+$' OR length(ltrim(k.speed, '+-0')) > 10 THEN 0",
    " WHEN k.speed::bigint BETWEEN -2147483648 AND 2147483647 THEN k.speed::bigint",
    " ELSE 0 END AS speed) n",
    " LEFT JOIN factions fa ON fa.id = c.faction_id",
    " LEFT JOIN shots ds ON ds.id = s.driving_id",
    " LEFT JOIN vehicles v ON v.id = ds.vehicle_id",
    " LEFT JOIN factions vf ON vf.id = v.faction_id",
    " LEFT JOIN shots dd ON dd.id = ds.driver_id",
    " LEFT JOIN characters dc ON dc.id = dd.character_id",
    image_join!("Character", "c.id", "ci"),
    image_join!("Vehicle", "v.id", "vi"),
    "WHERE s.fight_id = ANY($1)",
    " ORDER BY s.fight_id, s.shot DESC NULLS LAST,",
    " array_position(ARRAY['Uber-Boss', 'Boss', 'PC', 'Ally', 'Featured Foe', 'Mook']::text[],",
    " COALESCE(c.action_values ->> 'Type', 'Mook')),",
    " n.speed - k.imp DESC,",
    " lower(c.name), s.id"
);

/// One row per shot with a vehicle (of an active fight among `$1`), ordered
/// by fight, shot value (DESC NULLS LAST) and `shots.id`; `dc_*`/`dd_id`
/// are the character on the shot that `driver_id` names, and that shot.
const VEHICLES: &str = concat!(
    "SELECT s.fight_id, s.shot, s.id AS shot_id, v.id, v.name, s.location, s.driver_id, ",
    "v.action_values::text AS action_values, s.was_rammed_or_damaged, ",
    image_columns!("vi"),
    ", dc.id AS dc_id, dc.name AS dc_name, dd.id AS dd_id",
    " FROM shots s",
    " JOIN fights f ON f.id = s.fight_id AND f.started_at IS NOT NULL AND f.ended_at IS NULL",
    " JOIN vehicles v ON v.id = s.vehicle_id",
    " LEFT JOIN shots dd ON dd.id = s.driver_id",
    " LEFT JOIN characters dc ON dc.id = dd.character_id",
    image_join!("Vehicle", "v.id", "vi"),
    "WHERE s.fight_id = ANY($1)",
    " ORDER BY s.fight_id, s.shot DESC NULLS LAST, s.id"
);

/// The effects on the shots of the active fights among `$1`, by shot and id.
const EFFECTS: &str = concat!(
    "SELECT e.shot_id, e.id, e.name, e.description, e.severity, e.action_value, e.change, ",
    "e.character_id, e.vehicle_id",
    " FROM character_effects e",
    " JOIN shots s ON s.id = e.shot_id",
    " JOIN fights f ON f.id = s.fight_id AND f.started_at IS NOT NULL AND f.ended_at IS NULL",
    " WHERE s.fight_id = ANY($1)",
    " ORDER BY e.shot_id, e.id"
);

/// The active chase relationships of the fights among `$1`, by fight and id.
const CHASES: &str = "SELECT cr.fight_id, cr.id, cr.position, cr.pursuer_id, cr.evader_id \
     FROM chase_relationships cr \
     WHERE cr.fight_id = ANY($1) AND cr.active \
     ORDER BY cr.fight_id, cr.id";

/// Rows sorted by a uuid column, as index ranges per value of that column.
type Groups = HashMap<Uuid, Range<usize>>;

/// Loads and renders the encounters of a batch of fights.
pub(crate) async fn load(
    client: &ClientWrapper,
    ids: &[Uuid],
    endpoint: Option<&str>,
) -> Result<(Vec<Rendered>, Failed), tokio_postgres::Error> {
    let params: [&(dyn ToSql + Sync); 1] = [&ids];
    let types = [Type::UUID_ARRAY];
    let (fights, characters, vehicles, effects, chases) = tokio::join!(
        query(client, FIGHTS, &types, &params),
        query(client, CHARACTERS, &types, &params),
        query(client, VEHICLES, &types, &params),
        query(client, EFFECTS, &types, &params),
        query(client, CHASES, &types, &params),
    );
    let ((((fights, characters), vehicles), effects), chases) = both(
        both(both(both(fights, characters), vehicles), effects),
        chases,
    )?;
    let rows = Rows {
        characters: &characters,
        character_groups: groups(&characters)?,
        vehicles: &vehicles,
        vehicle_groups: groups(&vehicles)?,
        effects: &effects,
        effect_groups: groups(&effects)?,
        chases: &chases,
        chase_groups: groups(&chases)?,
        endpoint,
    };
    let mut batch = Batch::new("encounter", fights.len());
    for row in &fights {
        let id: Uuid = row.try_get("id")?;
        let campaign_id: Option<Uuid> = row.try_get("campaign_id").unwrap_or(None);
        batch.push(id, campaign_id, render(row, id, &rows));
    }
    Ok(batch.finish())
}

/// The rows of one batch, grouped.
struct Rows<'a> {
    characters: &'a [Row],
    character_groups: Groups,
    vehicles: &'a [Row],
    vehicle_groups: Groups,
    effects: &'a [Row],
    effect_groups: Groups,
    chases: &'a [Row],
    chase_groups: Groups,
    endpoint: Option<&'a str>,
}

impl<'a> Rows<'a> {
    fn characters(&self, fight: Uuid) -> &'a [Row] {
        slice(self.characters, &self.character_groups, fight)
    }

    fn vehicles(&self, fight: Uuid) -> &'a [Row] {
        slice(self.vehicles, &self.vehicle_groups, fight)
    }

    fn effects(&self, shot: Uuid) -> &'a [Row] {
        slice(self.effects, &self.effect_groups, shot)
    }

    fn chases(&self, fight: Uuid) -> &'a [Row] {
        slice(self.chases, &self.chase_groups, fight)
    }
}

fn slice<'a>(rows: &'a [Row], groups: &Groups, key: Uuid) -> &'a [Row] {
    groups
        .get(&key)
        .and_then(|r| rows.get(r.clone()))
        .unwrap_or_default()
}

/// Groups rows sorted by their first column (a uuid) into index ranges.
fn groups(rows: &[Row]) -> Result<Groups, tokio_postgres::Error> {
    let mut map = Groups::new();
    let mut start = 0;
    let mut current: Option<Uuid> = None;
    for (i, row) in rows.iter().enumerate() {
        let key: Uuid = row.try_get(0)?;
        if current != Some(key) {
            if let Some(previous) = current {
                map.insert(previous, start..i);
            }
            current = Some(key);
            start = i;
        }
    }
    if let Some(last) = current {
        map.insert(last, start..rows.len());
    }
    Ok(map)
}

/// Position of a shot value in display order (DESC NULLS LAST).
fn rank(shot: Option<i32>) -> i64 {
    shot.map_or(i64::MAX, |s| -i64::from(s))
}

/// Renders one row of [`FIGHTS`] with its rows of the other queries.
fn render(row: &Row, id: Uuid, rows: &Rows<'_>) -> Result<String, RenderError> {
    let characters = rows.characters(id);
    let vehicles = rows.vehicles(id);
    let chases = rows.chases(id);
    let mut out = String::with_capacity(1024 + characters.len() * 1024 + vehicles.len() * 768);
    let mut o = Obj::new(&mut out);
    push_uuid(o.key("id"), id);
    push_str(o.key("entity_class"), "Fight");
    push_opt_str(o.key("name"), row.try_get("name")?);
    push_opt_i32(o.key("sequence"), row.try_get("sequence")?);
    push_opt_str(o.key("description"), row.try_get("description")?);

    let shot_values: Vec<Option<i32>> = row.try_get("shot_values")?;
    let arr = o.key("shots");
    arr.push('[');
    let (mut c, mut v) = (0, 0);
    for (i, &value) in shot_values.iter().enumerate() {
        if i > 0 {
            arr.push(',');
        }
        let mut group = Obj::new(arr);
        push_opt_i32(group.key("shot"), value);
        let out = group.key("characters");
        out.push('[');
        let mut first = true;
        while let Some(element) = next_in_group(characters, &mut c, value, id)? {
            if !first {
                out.push(',');
            }
            first = false;
            push_character(out, element, id, rows)?;
        }
        out.push(']');
        let out = group.key("vehicles");
        out.push('[');
        let mut first = true;
        while let Some(element) = next_in_group(vehicles, &mut v, value, id)? {
            if !first {
                out.push(',');
            }
            first = false;
            push_vehicle(out, element, id, chases, rows)?;
        }
        out.push(']');
        group.end();
    }
    arr.push(']');

    push_opt_str(o.key("started_at"), row.try_get("started_at")?);
    push_opt_str(o.key("ended_at"), row.try_get("ended_at")?);
    push_image_url(
        o.key("image_url"),
        row,
        ["iattached", "ikey", "imetadata"],
        rows.endpoint,
    )?;
    let ids: Vec<Uuid> = row.try_get("character_ids")?;
    push_uuid_array(o.key("character_ids"), &ids);
    let ids: Vec<Uuid> = row.try_get("vehicle_ids")?;
    push_uuid_array(o.key("vehicle_ids"), &ids);
    push_opt_uuid(o.key("action_id"), row.try_get("action_id")?);
    o.end();
    Ok(out)
}

/// The next row at `*at` if it belongs to the shot group `value`. Rows are
/// in display order, like the groups; a row whose value has no group (the
/// queries cannot disagree inside one snapshot, but a caller may run them
/// outside one) is skipped.
fn next_in_group<'a>(
    rows: &'a [Row],
    at: &mut usize,
    value: Option<i32>,
    fight: Uuid,
) -> Result<Option<&'a Row>, RenderError> {
    while let Some(row) = rows.get(*at) {
        let shot: Option<i32> = row.try_get("shot")?;
        if rank(shot) > rank(value) {
            return Ok(None);
        }
        *at += 1;
        if shot == value {
            return Ok(Some(row));
        }
        tracing::debug!(%fight, ?shot, "encounter: shot value without a group, skipped");
    }
    Ok(None)
}

/// `{"id","name"}` of a joined faction, or `null`.
fn push_faction(out: &mut String, row: &Row, cols: [&str; 2]) -> Result<(), RenderError> {
    match row.try_get::<_, Option<Uuid>>(cols[0])? {
        Some(id) => {
            let mut o = Obj::new(out);
            push_uuid(o.key("id"), id);
            push_opt_str(o.key("name"), row.try_get(cols[1])?);
            o.end();
        }
        None => out.push_str("null"),
    }
    Ok(())
}

/// The common head of an effect: `id`, `name`, `description`, `severity`,
/// `action_value`, `change`, `shot_id`.
fn push_effect_head(o: &mut Obj<'_>, effect: &Row, shot_id: Uuid) -> Result<(), RenderError> {
    push_uuid(o.key("id"), effect.try_get("id")?);
    push_opt_str(o.key("name"), effect.try_get("name")?);
    push_opt_str(o.key("description"), effect.try_get("description")?);
    push_opt_str(o.key("severity"), effect.try_get("severity")?);
    push_opt_str(o.key("action_value"), effect.try_get("action_value")?);
    push_opt_str(o.key("change"), effect.try_get("change")?);
    push_uuid(o.key("shot_id"), shot_id);
    Ok(())
}

/// One character element (a row of [`CHARACTERS`]).
fn push_character(
    out: &mut String,
    row: &Row,
    fight: Uuid,
    rows: &Rows<'_>,
) -> Result<(), RenderError> {
    let id: Uuid = row.try_get("id")?;
    let shot_id: Uuid = row.try_get("shot_id")?;
    if row.try_get("speed_odd")? {
        tracing::debug!(%fight, character = %id, shot = %shot_id,
            "encounter: Speed is not an integer (or action_values not an object); sorted as 0");
    }
    let mut o = Obj::new(out);
    // The keys of Rails' jsonb_build_object, in jsonb order.
    push_uuid(o.key("id"), id);
    push_opt_str(o.key("name"), row.try_get("name")?);
    push_opt_str(o.key("color"), row.try_get("color")?);
    push_opt_i32(o.key("count"), row.try_get("count")?);
    push_jsonb(o.key("skills"), row.try_get("skills")?, "characters.skills")?;
    push_jsonb(o.key("status"), row.try_get("status")?, "characters.status")?;
    push_uuid(o.key("shot_id"), shot_id);
    push_opt_str(o.key("location"), row.try_get("location")?);
    push_opt_uuid(o.key("driving_id"), row.try_get("driving_id")?);
    push_opt_uuid(o.key("faction_id"), row.try_get("faction_id")?);
    push_opt_i32(o.key("impairments"), row.try_get("impairments")?);
    push_opt_i32(o.key("current_shot"), row.try_get("shot")?);
    push_str(o.key("entity_class"), "Character");
    push_jsonb(
        o.key("action_values"),
        row.try_get("action_values")?,
        "characters.action_values",
    )?;
    // Appended by Ruby.
    push_image_url(
        o.key("image_url"),
        row,
        ["ciattached", "cikey", "cimetadata"],
        rows.endpoint,
    )?;
    push_faction(o.key("faction"), row, ["fa_id", "fa_name"])?;
    let ids: Vec<Uuid> = row.try_get("weapon_ids")?;
    push_uuid_array(o.key("weapon_ids"), &ids);
    let ids: Vec<Uuid> = row.try_get("schtick_ids")?;
    push_uuid_array(o.key("schtick_ids"), &ids);

    let out = o.key("effects");
    out.push('[');
    let mut first = true;
    for effect in rows.effects(shot_id) {
        if effect.try_get::<_, Option<Uuid>>("character_id")? != Some(id) {
            continue;
        }
        if !first {
            out.push(',');
        }
        first = false;
        let mut e = Obj::new(out);
        push_effect_head(&mut e, effect, shot_id)?;
        push_uuid(e.key("character_id"), id);
        e.end();
    }
    out.push(']');

    push_driving(o.key("driving"), row, fight, shot_id, rows.endpoint)?;
    o.end();
    Ok(())
}

/// The `driving` object of a character element: the vehicle on the shot its
/// `driving_id` names, or `null`.
fn push_driving(
    out: &mut String,
    row: &Row,
    fight: Uuid,
    shot_id: Uuid,
    endpoint: Option<&str>,
) -> Result<(), RenderError> {
    let Some(vehicle) = row.try_get::<_, Option<Uuid>>("v_id")? else {
        if let Some(driving) = row.try_get::<_, Option<Uuid>>("driving_id")? {
            tracing::debug!(%fight, shot = %shot_id, %driving,
                "encounter: driving_id names no shot with a vehicle; driving is null");
        }
        out.push_str("null");
        return Ok(());
    };
    let vehicle_shot: Uuid = row.try_get("ds_id")?;
    let rammed: bool = row.try_get("ds_rammed")?;
    let mut o = Obj::new(out);
    push_uuid(o.key("id"), vehicle);
    push_opt_str(o.key("name"), row.try_get("v_name")?);
    push_str(o.key("entity_class"), "Vehicle");
    push_uuid(o.key("shot_id"), vehicle_shot);
    push_uuid(o.key("driver_id"), shot_id);
    push_jsonb(
        o.key("action_values"),
        row.try_get("v_action_values")?,
        "vehicles.action_values",
    )?;
    push_image_url(
        o.key("image_url"),
        row,
        ["viattached", "vikey", "vimetadata"],
        endpoint,
    )?;
    push_opt_str(o.key("color"), row.try_get("v_color")?);
    let impairments: Option<i32> = row.try_get("v_impairments")?;
    push_opt_i32(o.key("impairments"), Some(impairments.unwrap_or(0)));
    push_opt_uuid(o.key("faction_id"), row.try_get("v_faction_id")?);
    push_faction(o.key("faction"), row, ["vf_id", "vf_name"])?;
    push_bool(o.key("was_rammed_or_damaged"), rammed);
    let defeated = defeated_in_chase(row, fight, vehicle, vehicle_shot)?;
    push_bool(o.key("is_defeated_in_chase"), defeated);
    let defeat_type = match (defeated, rammed) {
        (false, _) => None,
        (true, true) => Some("crashed"),
        (true, false) => Some("boxed_in"),
    };
    push_opt_str(o.key("defeat_type"), defeat_type);
    o.end();
    Ok(())
}

/// `Vehicle#defeated_in_chase?(vehicle_shot)`: `Chase Points`.to_i reaches
/// the threshold, 50 when the Type of the vehicle shot's driver (default
/// "Featured Foe") or, without a driver, the vehicle's own Type is Boss or
/// Uber-Boss, else 35. Where Ruby would raise, the neutral value (§2.1):
/// not a boss, 0 Chase Points.
fn defeated_in_chase(
    row: &Row,
    fight: Uuid,
    vehicle: Uuid,
    vehicle_shot: Uuid,
) -> Result<bool, RenderError> {
    let odd = |what: &'static str| {
        tracing::debug!(%fight, %vehicle, shot = %vehicle_shot, what,
            "encounter: Rails would fail here; neutral value used");
    };
    let boss_type = |t: Option<&str>| matches!(t, Some("Boss" | "Uber-Boss"));
    let vehicle_kind: Option<&str> = row.try_get("v_av_kind")?;
    let boss = if row.try_get::<_, Option<Uuid>>("dc_id")?.is_some() {
        match row.try_get::<_, Option<&str>>("dc_av_kind")? {
            Some("object") => boss_type(row.try_get("dc_type")?),
            _ => {
                odd("driver action_values not an object");
                false
            }
        }
    } else {
        match (vehicle_kind, row.try_get::<_, Option<&str>>("v_type")?) {
            (Some("object"), Some(t)) => boss_type(Some(t)),
            (Some("object"), None) => {
                odd("vehicle action_values without Type");
                false
            }
            _ => {
                odd("vehicle action_values not an object");
                false
            }
        }
    };
    let threshold = if boss { 50 } else { 35 };
    let text: Option<&str> = row.try_get("v_cp")?;
    let points = match (
        vehicle_kind,
        row.try_get::<_, Option<&str>>("v_cp_kind")?,
        text,
    ) {
        (Some("object"), None | Some("null"), _) => 0,
        (Some("object"), Some("number"), Some(t)) => match number_to_i(t) {
            Some(n) => n,
            None => {
                odd("Chase Points overflow a double");
                0
            }
        },
        (Some("object"), Some("string"), Some(t)) => ruby_str_to_i(t),
        (Some("object"), _, _) => {
            odd("Chase Points not a number, string or null");
            0
        }
        _ => {
            odd("vehicle action_values not an object");
            0
        }
    };
    Ok(points >= threshold)
}

/// Ruby's `to_i` of a jsonb number as Rails parses it (Postgres prints jsonb
/// numbers as plain decimals): an integer as is (saturated to i64, which
/// compares the same with a threshold), a decimal as a double truncated
/// toward zero. `None` where Ruby raises (a double that overflowed).
fn number_to_i(text: &str) -> Option<i64> {
    if text.contains(['.', 'e', 'E']) {
        let v: f64 = text.parse().ok()?;
        // `as` saturates, and the value is finite.
        v.is_finite().then(|| v.trunc() as i64)
    } else {
        Some(text.parse::<i64>().unwrap_or(if text.starts_with('-') {
            i64::MIN
        } else {
            i64::MAX
        }))
    }
}

/// Ruby's `String#to_i` (base 10), saturated to i64: leading whitespace, an
/// optional sign, an optional `0d` prefix, then digits, single underscores
/// allowed between digits; the first other character ends the number, and
/// no digits give 0.
fn ruby_str_to_i(s: &str) -> i64 {
    let b = s.as_bytes();
    let mut i = 0;
    while matches!(b.get(i), Some(b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')) {
        i += 1;
    }
    let negative = b.get(i) == Some(&b'-');
    if matches!(b.get(i), Some(b'+' | b'-')) {
        i += 1;
    }
    if b.get(i) == Some(&b'0') && matches!(b.get(i + 1), Some(b'd' | b'D')) {
        i += 2;
    }
    let mut value: i64 = 0;
    let mut after_digit = false;
    while let Some(&c) = b.get(i) {
        match c {
            b'0'..=b'9' => {
                value = value.saturating_mul(10).saturating_add(i64::from(c - b'0'));
                after_digit = true;
            }
            b'_' if after_digit && matches!(b.get(i + 1), Some(b'0'..=b'9')) => {
                after_digit = false;
            }
            _ => break,
        }
        i += 1;
    }
    if negative {
        -value
    } else {
        value
    }
}

/// One vehicle element (a row of [`VEHICLES`]).
fn push_vehicle(
    out: &mut String,
    row: &Row,
    fight: Uuid,
    chases: &[Row],
    rows: &Rows<'_>,
) -> Result<(), RenderError> {
    let id: Uuid = row.try_get("id")?;
    let shot_id: Uuid = row.try_get("shot_id")?;
    let driver_id: Option<Uuid> = row.try_get("driver_id")?;
    let mut o = Obj::new(out);
    // The keys of Rails' jsonb_build_object, in jsonb order.
    push_uuid(o.key("id"), id);
    push_opt_str(o.key("name"), row.try_get("name")?);
    push_uuid(o.key("shot_id"), shot_id);
    push_opt_str(o.key("location"), row.try_get("location")?);
    push_opt_uuid(o.key("driver_id"), driver_id);
    push_opt_i32(o.key("current_shot"), row.try_get("shot")?);
    push_str(o.key("entity_class"), "Vehicle");
    push_jsonb(
        o.key("action_values"),
        row.try_get("action_values")?,
        "vehicles.action_values",
    )?;
    push_bool(
        o.key("was_rammed_or_damaged"),
        row.try_get("was_rammed_or_damaged")?,
    );
    // Appended by Ruby.
    push_image_url(
        o.key("image_url"),
        row,
        ["viattached", "vikey", "vimetadata"],
        rows.endpoint,
    )?;

    // Rails matches relationships on the vehicle id, although they hold shot ids.
    let out = o.key("chase_relationships");
    out.push('[');
    let mut first = true;
    for chase in chases {
        let pursuer: Uuid = chase.try_get("pursuer_id")?;
        let evader: Uuid = chase.try_get("evader_id")?;
        if pursuer != id && evader != id {
            continue;
        }
        if !first {
            out.push(',');
        }
        first = false;
        let mut c = Obj::new(out);
        push_uuid(c.key("id"), chase.try_get("id")?);
        push_opt_str(c.key("position"), chase.try_get("position")?);
        push_uuid(c.key("pursuer_id"), pursuer);
        push_uuid(c.key("evader_id"), evader);
        push_bool(c.key("is_pursuer"), pursuer == id);
        c.end();
    }
    out.push(']');

    let out = o.key("effects");
    out.push('[');
    let mut first = true;
    for effect in rows.effects(shot_id) {
        if effect.try_get::<_, Option<Uuid>>("vehicle_id")? != Some(id) {
            continue;
        }
        if first {
            tracing::debug!(%fight, %id, shot = %shot_id,
                "encounter: vehicle effects; Rails would fail here, driver_id is the shot's");
        } else {
            out.push(',');
        }
        first = false;
        let mut e = Obj::new(out);
        push_effect_head(&mut e, effect, shot_id)?;
        push_uuid(e.key("vehicle_id"), id);
        push_opt_uuid(e.key("driver_id"), driver_id);
        e.end();
    }
    out.push(']');

    let out = o.key("driver");
    match row.try_get::<_, Option<Uuid>>("dc_id")? {
        Some(driver) => {
            let mut d = Obj::new(out);
            push_uuid(d.key("id"), driver);
            push_opt_str(d.key("name"), row.try_get("dc_name")?);
            push_str(d.key("entity_class"), "Character");
            push_opt_uuid(d.key("shot_id"), row.try_get("dd_id")?);
            d.end();
        }
        None => out.push_str("null"),
    }
    o.end();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ruby_to_i() {
        for (s, v) in [
            ("", 0),
            ("40", 40),
            ("36 mph", 36),
            ("  50abc", 50),
            ("\t\n\x0b\x0c\r+7", 7),
            ("-12", -12),
            ("- 5", 0),
            ("+-5", 0),
            ("fast", 0),
            ("x40", 0),
            ("1_000", 1000),
            ("1__000", 1),
            ("1_", 1),
            ("_1", 0),
            ("0d42", 42),
            ("0D4", 4),
            ("0x10", 0),
            ("007", 7),
            ("3.9", 3),
            ("99999999999999999999999", i64::MAX),
            ("-99999999999999999999999", -i64::MAX),
            ("\u{a0}5", 0),
        ] {
            assert_eq!(ruby_str_to_i(s), v, "{s:?}");
        }
    }

    #[test]
    fn jsonb_number_to_i() {
        assert_eq!(number_to_i("49"), Some(49));
        assert_eq!(number_to_i("-3"), Some(-3));
        assert_eq!(number_to_i("35.5"), Some(35));
        assert_eq!(number_to_i("-35.9"), Some(-35));
        // The nearest double of this decimal is 35.0.
        assert_eq!(number_to_i("34.99999999999999999"), Some(35));
        assert_eq!(
            number_to_i("123456789012345678901234567890"),
            Some(i64::MAX)
        );
        assert_eq!(
            number_to_i("-123456789012345678901234567890"),
            Some(i64::MIN)
        );
        assert_eq!(number_to_i(&format!("{}.5", "9".repeat(400))), None);
        assert_eq!(number_to_i("1e400"), None);
    }

    #[test]
    fn shot_rank_is_desc_nulls_last() {
        let mut values = vec![Some(3), None, Some(15), Some(-2), Some(0)];
        values.sort_by_key(|v| rank(*v));
        assert_eq!(values, vec![Some(15), Some(3), Some(0), Some(-2), None]);
    }
}
