//! What every fuzz target checks, shared by the cargo-fuzz targets (`fuzz/fuzz_targets/*.rs`) and
//! the stable replay in `tests/property.rs` (which includes this file with `#[path]`).
//!
//! Each check takes arbitrary bytes and panics only on a real defect: a parser that panics, or
//! an invariant that does not hold. "Never panics" alone would let wrong answers through, so
//! every accepted input is also checked for what the relay relies on.

#![allow(dead_code)]

use pgcable::cable::channels::{parse_identifier, Channel};
use pgcable::cable::frame::{self, Command};
use pgcable::feed::event::{self, Event};
use pgcable::render::json::reencode;

/// The client-frame parser: any text frame a client can send.
pub fn client_frame(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        // A WebSocket text frame is valid UTF-8 (the WebSocket layer refuses others).
        return;
    };
    let Ok(command) = frame::parse_command(text) else {
        return;
    };
    let (Command::Subscribe(identifier)
    | Command::Unsubscribe(identifier)
    | Command::Message(identifier)) = command;
    // An accepted frame is a JSON object, and its identifier is what a JSON parser reads.
    let value: Result<serde_json::Value, _> = serde_json::from_str(text);
    if let Ok(serde_json::Value::Object(map)) = &value {
        if let Some(serde_json::Value::String(id)) = map.get("identifier") {
            // With duplicate keys serde_json keeps the last, the relay the first: only compare
            // when there is one `identifier` key.
            if text.matches("\"identifier\"").count() == 1 {
                assert_eq!(id, &identifier, "identifier differs from a JSON parser's");
            }
        }
    }
    identifier_round_trip(&identifier);
    channel(&identifier);
}

/// The identifier parser: never touches the database, never panics; what it accepts is sane.
pub fn identifier(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    channel(text);
    identifier_round_trip(text);
}

fn channel(identifier: &str) {
    match parse_identifier(identifier) {
        Ok(Channel::Campaign { client_id, .. }) => {
            if let Some(c) = client_id {
                assert!(!c.is_empty() && c.len() <= 256, "client_id {c:?} accepted");
            }
            // Only a JSON object naming the channel gets here.
            let v: serde_json::Value =
                serde_json::from_str(identifier).expect("accepted identifier is JSON");
            assert_eq!(v["channel"], "CampaignChannel");
        }
        Ok(Channel::Fight { .. }) | Ok(Channel::User { .. }) => {
            let v: serde_json::Value =
                serde_json::from_str(identifier).expect("accepted identifier is JSON");
            assert!(v.is_object());
        }
        Err(_) => {}
    }
}

/// An identifier survives subscribe → confirm/reject/broadcast byte for byte, and the server
/// frames are valid JSON in the Rails escaping (no raw `<`, `>`, `&`, U+2028, U+2029).
pub fn identifier_round_trip(identifier: &str) {
    let sent = serde_json::json!({"command": "subscribe", "identifier": identifier}).to_string();
    assert_eq!(
        frame::parse_command(&sent),
        Ok(Command::Subscribe(identifier.to_string())),
        "subscribe frame does not round-trip"
    );
    for server_frame in [
        frame::confirm(identifier),
        frame::reject(identifier),
        format!("{}1}}", frame::broadcast_prefix(identifier)),
    ] {
        rails_escaped(&server_frame);
        let v: serde_json::Value =
            serde_json::from_str(&server_frame).expect("server frame is JSON");
        assert_eq!(
            v["identifier"].as_str(),
            Some(identifier),
            "identifier changed in {server_frame}"
        );
    }
}

/// No character that Rails escapes appears raw outside... anywhere (the frame's own syntax has
/// none of them).
fn rails_escaped(text: &str) {
    for bad in ['<', '>', '&', '\u{2028}', '\u{2029}'] {
        assert!(!text.contains(bad), "raw {bad:?} in {text:?}");
    }
    assert!(
        !text.chars().any(|c| (c as u32) < 0x20),
        "raw control character in {text:?}"
    );
}

/// The NOTIFY payload parser: a payload is text from Postgres, but a misbehaving writer can
/// `pg_notify('pgcable', anything)`.
pub fn notify_payload(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match event::parse(text) {
        Ok(Event::Broadcast { message, .. }) => {
            // The dispatcher re-encodes the message; what the parser took as JSON must
            // re-encode (or it would be dropped with a warning).
            let mut out = String::new();
            if serde_json::from_str::<serde_json::Value>(&message).is_ok() {
                reencode(&mut out, &message).expect("a message the parser accepted re-encodes");
            }
        }
        Ok(Event::Rows(rows, ..)) => {
            for row in rows {
                use pgcable::feed::event::Action;
                match row.action {
                    Action::Insert => assert!(row.old_campaign.is_none()),
                    Action::Delete => assert!(row.new_campaign.is_none()),
                    _ => {}
                }
            }
        }
        Ok(_) | Err(_) => {}
    }
}

/// The Rails re-encoder over arbitrary text.
pub fn reencode_text(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut out = String::from("prefix");
    match reencode(&mut out, text) {
        Err(_) => {
            assert_eq!(out, "prefix", "output not restored after an error");
            // What a strict JSON parser accepts, the re-encoder accepts too (numbers out of a
            // double's range are the one exception: serde_json refuses them).
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(text) {
                panic!("reencode refused valid JSON {text:?} (serde_json read {v})");
            }
        }
        Ok(()) => {
            let out = &out["prefix".len()..];
            rails_escaped_outside_strings_too(out);
            // Idempotent: Rails form re-encodes to itself.
            let mut again = String::new();
            reencode(&mut again, out).expect("output re-encodes");
            assert_eq!(again, out, "re-encoding is not idempotent");
            // Same value as the input, where serde_json can read both.
            if let (Ok(a), Ok(b)) = (
                serde_json::from_str::<serde_json::Value>(text),
                serde_json::from_str::<serde_json::Value>(out),
            ) {
                assert!(same_value(&a, &b), "value changed: {text:?} → {out:?}");
            }
        }
    }
}

fn rails_escaped_outside_strings_too(text: &str) {
    rails_escaped(text);
    // No insignificant whitespace: outside strings there are no spaces or newlines.
    let mut in_string = false;
    let mut escaped = false;
    for c in text.chars() {
        if in_string {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
        } else if c == '"' {
            in_string = true;
        } else {
            assert!(!c.is_whitespace(), "whitespace outside strings in {text:?}");
        }
    }
}

/// JSON value equality that keeps object key order and allows the last-bit slack of
/// serde_json's fast float parser (it is not correctly rounded without `float_roundtrip`).
pub fn same_value(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    use serde_json::Value::*;
    match (a, b) {
        (Null, Null) => true,
        (Bool(x), Bool(y)) => x == y,
        (String(x), String(y)) => x == y,
        (Number(x), Number(y)) => {
            if let (Some(p), Some(q)) = (x.as_i64(), y.as_i64()) {
                return p == q;
            }
            if let (Some(p), Some(q)) = (x.as_u64(), y.as_u64()) {
                return p == q;
            }
            match (x.as_f64(), y.as_f64()) {
                (Some(p), Some(q)) => p == q || (p - q).abs() <= 1e-15 * p.abs().max(q.abs()),
                _ => false,
            }
        }
        (Array(x), Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same_value(p, q))
        }
        (Object(x), Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y)
                    .all(|((kp, p), (kq, q))| kp == kq && same_value(p, q))
        }
        _ => false,
    }
}
