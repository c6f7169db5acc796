//! What a notification on channel `pgcable` means (the contract with `triggers/install.sql`).
//!
//! Owns the NOTIFY payload format; pure parsing, no I/O.

use serde::Deserialize;
use serde_json::value::RawValue;
use uuid::Uuid;

/// The LISTEN channel.
pub const CHANNEL: &str = "pgcable";

/// A legacy table the triggers watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Table {
    /// `characters`
    Characters,
    /// `vehicles`
    Vehicles,
    /// `fights`
    Fights,
}

impl Table {
    /// The table name (also the plural payload key).
    pub fn plural(self) -> &'static str {
        match self {
            Table::Characters => "characters",
            Table::Vehicles => "vehicles",
            Table::Fights => "fights",
        }
    }

    /// The singular payload key.
    pub fn singular(self) -> &'static str {
        match self {
            Table::Characters => "character",
            Table::Vehicles => "vehicle",
            Table::Fights => "fight",
        }
    }

    /// All of them.
    pub const ALL: [Table; 3] = [Table::Characters, Table::Vehicles, Table::Fights];

    fn from_name(name: &str) -> Option<Table> {
        Table::ALL.into_iter().find(|t| t.plural() == name)
    }
}

/// What happened to a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// INSERT.
    Insert,
    /// UPDATE that changed more than `updated_at`.
    Update,
    /// UPDATE that changed only `updated_at`.
    Touch,
    /// DELETE.
    Delete,
}

/// One changed row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowChange {
    /// Which table.
    pub table: Table,
    /// What happened.
    pub action: Action,
    /// The row's id.
    pub id: Uuid,
    /// The row's campaign after the change (none for a delete).
    pub new_campaign: Option<Uuid>,
    /// The row's campaign before the change (none for an insert).
    pub old_campaign: Option<Uuid>,
    /// A fight whose `ended_at` went from NULL to a value (triggers version 2 and later).
    pub ended: bool,
}

/// A notification, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// `pgcable.broadcast` with the message inline.
    Broadcast {
        /// Stream name.
        stream: String,
        /// The message as JSON text (Postgres jsonb output).
        message: String,
        /// When the writer's statement ran (µs since the epoch), if the triggers say.
        at: Option<i64>,
    },
    /// `pgcable.broadcast` whose message waits in `pgcable.messages`.
    Stored {
        /// Its row id.
        id: i64,
        /// When the writer's statement ran.
        at: Option<i64>,
    },
    /// `pgcable.disconnect`.
    Disconnect {
        /// Whose connections.
        user: Uuid,
        /// Whether the client may reconnect.
        reconnect: bool,
    },
    /// Row changes from one statement, and when it ran (µs since the epoch).
    Rows(Vec<RowChange>, Option<i64>),
    /// `TRUNCATE` of a table: no rows to report, every campaign reloads it.
    Truncated(Table, Option<i64>),
    /// Fights whose encounter may have changed (`shots`, `character_effects` or
    /// `chase_relationships` rows of theirs changed), and when.
    Fights(Vec<Uuid>, Option<i64>),
    /// `TRUNCATE` of `shots`, `character_effects` or `chase_relationships`: any active fight
    /// may have changed.
    CombatTruncated(Option<i64>),
    /// Changes to memberships, campaigns or users that may grant or take away access.
    Access(Vec<AccessChange>),
}

/// A change that may grant or take away access (live authorization, auth.md §1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessChange {
    /// The user may have lost the campaign (membership removed, ownership transferred away).
    Lost {
        /// Who.
        user: Uuid,
        /// Which campaign.
        campaign: Uuid,
    },
    /// The user may have gained the campaign (membership added, ownership received).
    Gained {
        /// Who.
        user: Uuid,
        /// Which campaign.
        campaign: Uuid,
    },
    /// The campaign was deleted.
    CampaignGone(Uuid),
    /// A user changed in a way that matters to their connections.
    User {
        /// Who.
        user: Uuid,
        /// `admin` went from true to false.
        admin_lost: bool,
        /// `jti` changed (devise-jwt rotates it at sign-out).
        jti_changed: bool,
        /// `active` went from true to false.
        deactivated: bool,
        /// The row was deleted.
        deleted: bool,
    },
    /// A fight moved to another campaign: its FightChannel subscribers are checked again.
    FightMoved(Uuid),
}

/// The tables whose changes reach the relay only as fight ids ([`Event::Fights`]).
pub const COMBAT_TABLES: [&str; 3] = ["shots", "character_effects", "chase_relationships"];

#[derive(Deserialize)]
struct Raw<'a> {
    k: &'a str,
    s: Option<String>,
    #[serde(borrow, default, deserialize_with = "present")]
    m: Option<&'a RawValue>,
    id: Option<i64>,
    a: Option<i64>,
    u: Option<Uuid>,
    r: Option<bool>,
    t: Option<&'a str>,
    c: Option<Vec<Vec<Option<String>>>>,
}

/// A field that is there, whatever its value: a broadcast's message may be JSON `null`, which
/// a plain `Option` would read as absent.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// Decodes a notification payload. The error says what was wrong, for the log.
pub fn parse(payload: &str) -> Result<Event, String> {
    let raw: Raw =
        serde_json::from_str(payload).map_err(|e| format!("not a pgcable payload: {e}"))?;
    match raw.k {
        "b" => Ok(Event::Broadcast {
            stream: raw.s.ok_or("broadcast without stream")?,
            message: raw.m.ok_or("broadcast without message")?.get().to_string(),
            at: raw.a,
        }),
        "t" => Ok(Event::Stored {
            id: raw.id.ok_or("stored broadcast without id")?,
            at: raw.a,
        }),
        "d" => Ok(Event::Disconnect {
            user: raw.u.ok_or("disconnect without user")?,
            reconnect: raw.r.unwrap_or(true),
        }),
        "r" => {
            let table = raw
                .t
                .and_then(Table::from_name)
                .ok_or("row change for an unknown table")?;
            let entries = raw.c.ok_or("row change without entries")?;
            entries
                .into_iter()
                .map(|e| row_change(table, e))
                .collect::<Result<Vec<_>, _>>()
                .map(|rows| Event::Rows(rows, raw.a))
        }
        "x" => match raw.t {
            Some(t) if COMBAT_TABLES.contains(&t) => Ok(Event::CombatTruncated(raw.a)),
            t => t
                .and_then(Table::from_name)
                .map(|table| Event::Truncated(table, raw.a))
                .ok_or_else(|| "truncate of an unknown table".to_string()),
        },
        "a" => raw
            .c
            .ok_or("access change without entries")?
            .into_iter()
            .map(access_change)
            .collect::<Result<Vec<_>, _>>()
            .map(Event::Access),
        "f" => {
            let entries = raw.c.ok_or("fight hint without entries")?;
            entries
                .into_iter()
                .map(|e| match e.first() {
                    Some(Some(s)) => Uuid::try_parse(s).map_err(|_| format!("bad uuid {s:?}")),
                    _ => Err("fight hint without id".to_string()),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(|fights| Event::Fights(fights, raw.a))
        }
        other => Err(format!("unknown payload kind {other:?}")),
    }
}

fn access_change(entry: Vec<Option<String>>) -> Result<AccessChange, String> {
    let text = |i: usize| entry.get(i).and_then(|e| e.as_deref());
    let id = |i: usize| -> Result<Uuid, String> {
        let s = text(i).ok_or("access change without id")?;
        Uuid::try_parse(s).map_err(|_| format!("bad uuid {s:?}"))
    };
    match text(0) {
        Some("r") => Ok(AccessChange::Lost {
            user: id(1)?,
            campaign: id(2)?,
        }),
        Some("g") => Ok(AccessChange::Gained {
            user: id(1)?,
            campaign: id(2)?,
        }),
        Some("c") => Ok(AccessChange::CampaignGone(id(1)?)),
        Some("u") => {
            let flags = text(2).unwrap_or_default();
            Ok(AccessChange::User {
                user: id(1)?,
                admin_lost: flags.contains('a'),
                jti_changed: flags.contains('j'),
                deactivated: flags.contains('i'),
                deleted: flags.contains('x'),
            })
        }
        other => Err(format!("bad access change {other:?}")),
    }
}

fn row_change(table: Table, entry: Vec<Option<String>>) -> Result<RowChange, String> {
    let field = |i: usize| -> Result<Option<Uuid>, String> {
        match entry.get(i) {
            None | Some(None) => Ok(None),
            Some(Some(s)) => Uuid::try_parse(s)
                .map(Some)
                .map_err(|_| format!("bad uuid {s:?}")),
        }
    };
    let action = match entry.first().and_then(|a| a.as_deref()) {
        Some("i") => Action::Insert,
        Some("u") => Action::Update,
        Some("t") => Action::Touch,
        Some("d") => Action::Delete,
        other => return Err(format!("bad action {other:?}")),
    };
    let id = field(1)?.ok_or("row change without id")?;
    let new_campaign = field(2)?;
    let ended = table == Table::Fights
        && action == Action::Update
        && entry.get(4).and_then(|e| e.as_deref()) == Some("e");
    // A missing 4th element means "the same campaign as before".
    let old_campaign = if entry.len() >= 4 {
        field(3)?
    } else {
        new_campaign
    };
    Ok(RowChange {
        table,
        action,
        id,
        new_campaign: if action == Action::Delete {
            None
        } else {
            new_campaign
        },
        old_campaign: match action {
            Action::Insert => None,
            Action::Delete => old_campaign.or(new_campaign),
            _ => old_campaign,
        },
        ended,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncate() {
        assert_eq!(
            parse(r#"{"k":"x","t":"vehicles","a":1700000000000000}"#),
            Ok(Event::Truncated(
                Table::Vehicles,
                Some(1_700_000_000_000_000)
            ))
        );
        assert!(parse(r#"{"k":"x","t":"users"}"#).is_err());
        assert!(parse(r#"{"k":"x"}"#).is_err());
    }

    #[test]
    fn access() {
        let u = "00000000-0000-4000-8000-0000000000a1";
        let c = "00000000-0000-4000-8000-0000000000c1";
        let (user, campaign) = (Uuid::try_parse(u).unwrap(), Uuid::try_parse(c).unwrap());
        assert_eq!(
            parse(&format!(
                r#"{{"k":"a","a":1,"c":[["g","{u}","{c}"],["r","{u}","{c}"],["c","{c}"],["u","{u}","Aj"],["u","{u}","x"]]}}"#
            )),
            Ok(Event::Access(vec![
                AccessChange::Gained { user, campaign },
                AccessChange::Lost { user, campaign },
                AccessChange::CampaignGone(campaign),
                AccessChange::User {
                    user,
                    admin_lost: false,
                    jti_changed: true,
                    deactivated: false,
                    deleted: false
                },
                AccessChange::User {
                    user,
                    admin_lost: false,
                    jti_changed: false,
                    deactivated: false,
                    deleted: true
                },
            ]))
        );
        assert!(parse(r#"{"k":"a","c":[["r","nope","x"]]}"#).is_err());
        assert!(parse(r#"{"k":"a","c":[["?"]]}"#).is_err());
    }

    #[test]
    fn combat() {
        let f = "00000000-0000-4000-8000-0000000000f1";
        let c = "00000000-0000-4000-8000-0000000000c1";
        assert_eq!(
            parse(&format!(r#"{{"k":"f","a":3,"c":[["{f}"],["{c}"]]}}"#)),
            Ok(Event::Fights(
                vec![Uuid::try_parse(f).unwrap(), Uuid::try_parse(c).unwrap()],
                Some(3)
            ))
        );
        assert!(parse(r#"{"k":"f","c":[["nope"]]}"#).is_err());
        assert!(parse(r#"{"k":"f","c":[[]]}"#).is_err());
        assert_eq!(
            parse(r#"{"k":"x","t":"shots"}"#),
            Ok(Event::CombatTruncated(None))
        );
        let ev = parse(&format!(
            r#"{{"k":"r","t":"fights","c":[["u","{f}","{c}","{c}","e"],["u","{f}","{c}"],["t","{f}","{c}","{c}","e"]]}}"#
        ))
        .unwrap();
        let Event::Rows(rows, _) = ev else { panic!() };
        assert!(rows[0].ended);
        assert_eq!(rows[0].old_campaign, rows[0].new_campaign);
        assert!(!rows[1].ended);
        assert!(!rows[2].ended, "a touch never ends a fight");
    }

    #[test]
    fn parses_each_kind() {
        assert_eq!(
            parse(r#"{"k":"b","n":1,"s":"campaign_x","a":5,"m":{"a": [1, 2]}}"#),
            Ok(Event::Broadcast {
                stream: "campaign_x".into(),
                message: r#"{"a": [1, 2]}"#.into(),
                at: Some(5),
            })
        );
        assert_eq!(
            parse(r#"{"k":"b","s":"campaign_x","m":null}"#),
            Ok(Event::Broadcast {
                stream: "campaign_x".into(),
                message: "null".into(),
                at: None,
            })
        );
        assert!(parse(r#"{"k":"b","s":"campaign_x"}"#).is_err());
        assert_eq!(
            parse(r#"{"k":"t","id":7}"#),
            Ok(Event::Stored { id: 7, at: None })
        );
        let u = "00000000-0000-4000-8000-000000000001";
        assert_eq!(
            parse(&format!(r#"{{"k":"d","u":"{u}","r":false}}"#)),
            Ok(Event::Disconnect {
                user: Uuid::try_parse(u).unwrap(),
                reconnect: false
            })
        );
        let c = "00000000-0000-4000-8000-0000000000c1";
        let ev = parse(&format!(
            r#"{{"k":"r","t":"fights","c":[["u","{u}","{c}"],["d","{u}",null,"{c}"]]}}"#
        ))
        .unwrap();
        let Event::Rows(rows, _) = ev else { panic!() };
        assert_eq!(rows[0].action, Action::Update);
        assert_eq!(rows[0].old_campaign, rows[0].new_campaign);
        assert_eq!(rows[1].action, Action::Delete);
        assert_eq!(rows[1].new_campaign, None);
        assert!(rows[1].old_campaign.is_some());
    }

    #[test]
    fn garbage_is_an_error() {
        for bad in [
            "",
            "x",
            "{}",
            r#"{"k":"z"}"#,
            r#"{"k":"r","t":"users","c":[]}"#,
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
