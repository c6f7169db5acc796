//! `GET /demo/state`: what the live page of `pgcable dev` shows before any message arrives.
//!
//! Served only when [`Config::demo`](crate::config::Config::demo) is set, which only `pgcable dev`
//! does; `serve` answers 404 (see `http`). The answer is rendered by the relay's own renderer, so
//! the page starts from exactly the payloads the relay pushes later:
//!
//! ```text
//! GET /demo/state[?campaign=<uuid>]     Authorization: Bearer <jwt>  (or ?token=, as /cable)
//! 200 {"campaign_id":"…",
//!      "characters":[<CharacterSerializer payload>…],   created_at, id order; at most 200
//!      "vehicles":[<VehicleSerializer payload>…],       likewise
//!      "encounters":[<encounter payload>…],             active fights, likewise
//!      "commands":[{"label":"…","command":"psql …"}]}   the changes `pgcable dev` printed
//! 401 {"error":"unauthorized"}   no token, or one /cable would refuse
//! 400 {"error":"bad campaign"}   `campaign` is not a uuid
//! 403 {"error":"forbidden"}      the user may not subscribe to that CampaignChannel
//! 503 {"error":"unavailable"}    the database could not be read
//! ```
//!
//! Everything is read in one read-only snapshot. Calls `cable::auth` and `cable::channels` for
//! the same token and access rules as `/cable`, and `render` for the payloads.

use deadpool_postgres::ClientWrapper;
use uuid::Uuid;
use warp::http::StatusCode;

use crate::cable::auth::{self, parse_uuid};
use crate::cable::channels::Channel;
use crate::dev::Demo;
use crate::render::{self, json, Rendered, Table};
use crate::state::State;

/// Most characters (vehicles, active fights) one answer carries.
const MAX_ROWS: i64 = 200;

const CHARACTER_IDS: &str =
    "SELECT id FROM characters WHERE campaign_id = $1 ORDER BY created_at, id LIMIT $2";
const VEHICLE_IDS: &str =
    "SELECT id FROM vehicles WHERE campaign_id = $1 ORDER BY created_at, id LIMIT $2";
const ACTIVE_FIGHT_IDS: &str = "SELECT id FROM fights WHERE campaign_id = $1 \
     AND started_at IS NOT NULL AND ended_at IS NULL ORDER BY created_at, id LIMIT $2";

/// The status and JSON body for one request. `authorization` is the header's value, `query`
/// the raw query string.
pub async fn answer(
    state: &State,
    demo: &Demo,
    authorization: Option<&str>,
    query: &str,
) -> (StatusCode, String) {
    let error = |status: StatusCode, what: &str| (status, format!(r#"{{"error":"{what}"}}"#));
    let token = authorization
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(|t| t.trim().to_string())
        .or_else(|| auth::token_from_query(query));
    let user = match auth::authenticate(&state.pool, &state.auth, token.as_deref()).await {
        Ok(user) => user,
        Err(auth::AuthError::Database(e)) => {
            tracing::warn!(error = %e, "demo state: cannot authenticate");
            return error(StatusCode::SERVICE_UNAVAILABLE, "unavailable");
        }
        Err(e) => {
            tracing::info!(reason = %e, "demo state: unauthorized");
            return error(StatusCode::UNAUTHORIZED, "unauthorized");
        }
    };
    let campaign = match campaign_param(query) {
        None => demo.campaign_id,
        Some(text) => match parse_uuid(&text) {
            Some(id) => id,
            None => return error(StatusCode::BAD_REQUEST, "bad campaign"),
        },
    };
    let channel = Channel::Campaign {
        id: campaign,
        client_id: None,
    };
    match state.access.allows(&user, &channel).await {
        Ok(true) => {}
        Ok(false) => return error(StatusCode::FORBIDDEN, "forbidden"),
        Err(_) => return error(StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
    }
    match read(state, campaign).await {
        Ok(snapshot) => (StatusCode::OK, body(campaign, &snapshot, demo)),
        Err(e) => {
            tracing::warn!(error = %e, "demo state: cannot read the campaign");
            error(StatusCode::SERVICE_UNAVAILABLE, "unavailable")
        }
    }
}

/// The first `campaign` parameter of the query string, percent-decoded.
fn campaign_param(query: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (key == "campaign").then(|| {
            percent_encoding::percent_decode_str(value)
                .decode_utf8_lossy()
                .into_owned()
        })
    })
}

/// The rendered rows of one campaign.
struct Snapshot {
    characters: Vec<Rendered>,
    vehicles: Vec<Rendered>,
    encounters: Vec<Rendered>,
}

/// Reads the campaign in one read-only snapshot (once more with fresh statements if a schema
/// change invalidated the cached ones).
async fn read(state: &State, campaign: Uuid) -> Result<Snapshot, String> {
    let client = state.pool.get().await.map_err(|e| e.to_string())?;
    let mut result = in_snapshot(state, &client, campaign).await;
    if matches!(&result, Err(e) if render::stale_statement(e)) {
        client.statement_cache.clear();
        result = in_snapshot(state, &client, campaign).await;
    }
    let ended = client
        .batch_execute(if result.is_ok() { "COMMIT" } else { "ROLLBACK" })
        .await;
    if ended.is_err() {
        // Don't hand a connection in an unknown state back to the pool.
        let _ = deadpool_postgres::Object::take(client);
    }
    result.map_err(|e| crate::db::error_text(&e))
}

async fn in_snapshot(
    state: &State,
    client: &ClientWrapper,
    campaign: Uuid,
) -> Result<Snapshot, tokio_postgres::Error> {
    client
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await?;
    let result: Result<Snapshot, tokio_postgres::Error> = async {
        let characters = ids(client, CHARACTER_IDS, campaign).await?;
        let vehicles = ids(client, VEHICLE_IDS, campaign).await?;
        let fights = ids(client, ACTIVE_FIGHT_IDS, campaign).await?;
        let (c, _) = render::load(client, Table::Characters, &characters, &state.render).await?;
        let (v, _) = render::load(client, Table::Vehicles, &vehicles, &state.render).await?;
        let (e, _) = render::load_encounters(client, &fights, &state.render).await?;
        Ok(Snapshot {
            characters: in_order(c, &characters),
            vehicles: in_order(v, &vehicles),
            encounters: in_order(e, &fights),
        })
    }
    .await;
    if result.is_err() {
        // Leave the connection outside a transaction for the retry (or the ROLLBACK in `read`).
        let _ = client.batch_execute("ROLLBACK").await;
    }
    result
}

/// The ids one of the queries above finds in `campaign`.
async fn ids(
    client: &ClientWrapper,
    sql: &str,
    campaign: Uuid,
) -> Result<Vec<Uuid>, tokio_postgres::Error> {
    client
        .query(sql, &[&campaign, &MAX_ROWS])
        .await?
        .iter()
        .map(|r| r.try_get(0))
        .collect()
}

/// `rendered` in the order of `ids` (rows that failed to render were logged and are left out).
fn in_order(mut rendered: Vec<Rendered>, ids: &[Uuid]) -> Vec<Rendered> {
    rendered.sort_by_key(|r| ids.iter().position(|id| *id == r.id));
    rendered
}

fn body(campaign: Uuid, snapshot: &Snapshot, demo: &Demo) -> String {
    let list = |out: &mut String, rows: &[Rendered]| {
        out.push('[');
        for (i, r) in rows.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&r.payload);
        }
        out.push(']');
    };
    let mut out = format!(r#"{{"campaign_id":"{campaign}","characters":"#);
    list(&mut out, &snapshot.characters);
    out.push_str(r#","vehicles":"#);
    list(&mut out, &snapshot.vehicles);
    out.push_str(r#","encounters":"#);
    list(&mut out, &snapshot.encounters);
    out.push_str(r#","commands":["#);
    for (i, c) in demo.commands.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(r#"{"label":"#);
        json::push_str(&mut out, &c.label);
        out.push_str(r#","command":"#);
        json::push_str(&mut out, &c.command);
        out.push('}');
    }
    out.push_str("]}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn campaign_parameter() {
        assert_eq!(campaign_param(""), None);
        assert_eq!(
            campaign_param("token=x&campaign=abc%2Dd"),
            Some("abc-d".to_string())
        );
        assert_eq!(campaign_param("campaigns=x"), None);
    }

    #[test]
    fn body_is_json() {
        let demo = Demo {
            campaign_id: Uuid::nil(),
            commands: vec![crate::dev::TryCommand {
                label: "rename <b>".into(),
                command: "psql 'x' -c \"UPDATE\"".into(),
            }],
        };
        let row = |payload: &str| Rendered {
            id: Uuid::nil(),
            campaign_id: None,
            payload: payload.into(),
        };
        let snapshot = Snapshot {
            characters: vec![row(r#"{"name":"a"}"#), row(r#"{"name":"b"}"#)],
            vehicles: vec![],
            encounters: vec![row(r#"{"shots":[]}"#)],
        };
        let text = body(Uuid::nil(), &snapshot, &demo);
        let parsed: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        assert_eq!(parsed["characters"][1]["name"], "b");
        assert_eq!(parsed["vehicles"], serde_json::json!([]));
        assert_eq!(parsed["encounters"][0]["shots"], serde_json::json!([]));
        assert_eq!(parsed["commands"][0]["label"], "rename <b>");
        assert_eq!(parsed["commands"][0]["command"], "psql 'x' -c \"UPDATE\"");
    }
}
