//! Duplicate suppression: which Rails messages the bridge does not forward, because pgcable's
//! own change feed already sends them (bridge.md §2).
//!
//! A rule is `<kind>:<key>` (the message is a JSON object whose only top-level key is `<key>`)
//! or `<kind>:<key>=<value>` (the object's `<key>` is the string `<value>`, other keys allowed).
//! `<kind>` is `campaign` for `campaign_<uuid>` streams or `fight` for `fight_<uuid>` streams;
//! the per-client `campaign_<uuid>_<client>` streams match neither, so everything sent there is
//! forwarded (the feed never writes to them). Pure: calls nothing.

use std::collections::HashMap;

use serde_json::value::RawValue;
use uuid::Uuid;

/// The default of `PGCABLE_BRIDGE_SKIP`: exactly what the feed produces from the database.
pub const DEFAULT_SKIP: &str = "campaign:character,campaign:characters,campaign:vehicle,\
campaign:vehicles,campaign:fight,campaign:fights,campaign:encounter,campaign:type=fight_ended,\
fight:fight=updated,fight:fight=ended";

/// The streams a rule applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `campaign_<uuid>`.
    Campaign,
    /// `fight_<uuid>`.
    Fight,
}

impl Kind {
    /// The kind of a stream name, if it is one of the two.
    pub fn of(stream: &str) -> Option<Kind> {
        let (kind, id) = if let Some(id) = stream.strip_prefix("campaign_") {
            (Kind::Campaign, id)
        } else if let Some(id) = stream.strip_prefix("fight_") {
            (Kind::Fight, id)
        } else {
            return None;
        };
        (id.len() == 36 && Uuid::parse_str(id).is_ok()).then_some(kind)
    }
}

/// One rule.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    kind: Kind,
    key: String,
    value: Option<String>,
    /// `key` or `key=value`: the `key` label of the shadow metrics.
    label: String,
}

/// The parsed `PGCABLE_BRIDGE_SKIP`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkipRules {
    rules: Vec<Rule>,
}

impl Default for SkipRules {
    fn default() -> SkipRules {
        // The default text is a constant that the tests parse.
        SkipRules::parse(DEFAULT_SKIP).unwrap_or(SkipRules { rules: Vec::new() })
    }
}

impl SkipRules {
    /// Parses a comma-separated rule list; an empty (or blank) text means no rule.
    pub fn parse(text: &str) -> Result<SkipRules, String> {
        let mut rules = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (kind, matcher) = part.split_once(':').ok_or_else(|| {
                format!("rule {part:?} has no kind: write campaign:<key> or fight:<key>[=<value>]")
            })?;
            let kind = match kind.trim() {
                "campaign" => Kind::Campaign,
                "fight" => Kind::Fight,
                other => {
                    return Err(format!(
                        "rule {part:?}: unknown kind {other:?} (campaign or fight)"
                    ))
                }
            };
            let (key, value) = match matcher.split_once('=') {
                Some((k, v)) => (k.trim(), Some(v.trim().to_string())),
                None => (matcher.trim(), None),
            };
            if key.is_empty() || value.as_deref() == Some("") {
                return Err(format!("rule {part:?}: empty key or value"));
            }
            let label = match &value {
                Some(v) => format!("{key}={v}"),
                None => key.to_string(),
            };
            rules.push(Rule {
                kind,
                key: key.to_string(),
                value,
                label,
            });
        }
        Ok(SkipRules { rules })
    }

    /// Whether there is no rule (everything is forwarded).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The label (`key` or `key=value`) of the first rule that `message_json`, sent to
    /// `stream`, matches; `None` if it is to be forwarded. The message is only parsed when a
    /// rule applies to the stream's kind.
    pub fn matches(&self, stream: &str, message_json: &str) -> Option<&str> {
        let kind = Kind::of(stream)?;
        if !self.rules.iter().any(|r| r.kind == kind) {
            return None;
        }
        let top: HashMap<String, &RawValue> = serde_json::from_str(message_json).ok()?;
        self.rules
            .iter()
            .filter(|r| r.kind == kind)
            .find(|r| match &r.value {
                None => top.len() == 1 && top.contains_key(&r.key),
                Some(v) => top
                    .get(&r.key)
                    .and_then(|raw| serde_json::from_str::<String>(raw.get()).ok())
                    .is_some_and(|s| s == *v),
            })
            .map(|r| r.label.as_str())
    }

    /// The labels of every rule, in order (the shadow report lists them).
    pub fn labels(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().map(|r| r.label.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const C: &str = "campaign_6f1c2a57-7e0e-4c1e-9a55-0d1f5c3b1a2e";
    const F: &str = "fight_6f1c2a57-7e0e-4c1e-9a55-0d1f5c3b1a2e";

    #[test]
    fn the_default_is_the_spec_list() {
        let rules = SkipRules::parse(DEFAULT_SKIP).expect("default parses");
        assert_eq!(rules, SkipRules::default());
        assert_eq!(rules.labels().count(), 10);
        for key in [
            "character",
            "characters",
            "vehicle",
            "vehicles",
            "fight",
            "fights",
            "encounter",
        ] {
            let m = format!(r#"{{"{key}":{{"id":"x"}}}}"#);
            assert_eq!(rules.matches(C, &m), Some(key));
            // Not on the per-client stream, not on a fight stream, not with a second key.
            assert_eq!(rules.matches(&format!("{C}_client-1"), &m), None);
            assert_eq!(rules.matches(F, &format!(r#"{{"{key}":1}}"#)), None);
            assert_eq!(
                rules.matches(C, &format!(r#"{{"{key}":1,"other":2}}"#)),
                None
            );
        }
        let ended = r#"{"type":"fight_ended","fight_id":"x","fight_name":"n"}"#;
        assert_eq!(rules.matches(C, ended), Some("type=fight_ended"));
        assert_eq!(
            rules.matches(F, r#"{"fight":"updated"}"#),
            Some("fight=updated")
        );
        assert_eq!(
            rules.matches(F, r#"{"fight":"ended"}"#),
            Some("fight=ended")
        );
        // What only Rails sends is forwarded.
        for m in [
            r#"{"type":"advancement_created","character_id":"x","advancement":{}}"#,
            r#"{"status":"preview_ready","json":"[]"}"#,
            r#"{"campaign":{"id":"x"}}"#,
            r#""character""#,
            "42",
            "null",
            "not json",
        ] {
            assert_eq!(rules.matches(C, m), None, "{m}");
        }
        for m in [
            r#"{"event":"chase_update","vehicle_id":"x"}"#,
            r#"{"users":[]}"#,
            r#"{"fight":"other"}"#,
        ] {
            assert_eq!(rules.matches(F, m), None, "{m}");
        }
        assert_eq!(
            rules.matches("campaign_not-a-uuid", r#"{"character":1}"#),
            None
        );
        assert_eq!(rules.matches("user_1", r#"{"character":1}"#), None);
    }

    #[test]
    fn parsing() {
        assert!(SkipRules::parse("").expect("empty").is_empty());
        assert!(SkipRules::parse(" , ").expect("blank").is_empty());
        let r = SkipRules::parse(" fight : users , campaign:status=preview_ready").expect("ok");
        assert_eq!(r.matches(F, r#"{"users":[]}"#), Some("users"));
        assert_eq!(
            r.matches(C, r#"{"status":"preview_ready","json":"[]"}"#),
            Some("status=preview_ready")
        );
        assert!(SkipRules::parse("character").is_err());
        assert!(SkipRules::parse("user:x").is_err());
        assert!(SkipRules::parse("campaign:").is_err());
        assert!(SkipRules::parse("campaign:type=").is_err());
    }
}
