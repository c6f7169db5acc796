//! ActionCable frames: client commands in, server frames out. No I/O, so it can be fuzzed alone.
//!
//! Owns the wire format of protocol.md §2–§8; calls only the Rails JSON encoder.

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::render::json::push_str;

/// A command a client sent, with its identifier kept exactly as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `subscribe`: attach the identifier's channel.
    Subscribe(String),
    /// `unsubscribe`: detach it.
    Unsubscribe(String),
    /// `message`: a channel action call; pgcable channels define none.
    Message(String),
}

/// Why a client frame was not a usable command. None of these closes the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandError {
    /// Not a JSON object (or not JSON at all, or nested too deeply).
    Malformed,
    /// `command` missing or not one of subscribe/unsubscribe/message.
    UnknownCommand,
    /// `identifier` missing or not a string: there is nothing to echo, so no reply.
    NoIdentifier,
}

impl std::fmt::Display for CommandError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CommandError::Malformed => "frame is not a JSON object",
            CommandError::UnknownCommand => "unknown command",
            CommandError::NoIdentifier => "identifier missing or not a string",
        })
    }
}

#[derive(Deserialize)]
struct RawCommand<'a> {
    #[serde(borrow)]
    command: Option<&'a RawValue>,
    #[serde(borrow)]
    identifier: Option<&'a RawValue>,
}

/// Parses one text frame from a client.
pub fn parse_command(text: &str) -> Result<Command, CommandError> {
    let raw: RawCommand = serde_json::from_str(text).map_err(|_| CommandError::Malformed)?;
    let command: Option<String> = raw.command.and_then(|c| serde_json::from_str(c.get()).ok());
    let identifier: Option<String> = raw
        .identifier
        .and_then(|i| serde_json::from_str::<String>(i.get()).ok());
    let make: fn(String) -> Command = match command.as_deref() {
        Some("subscribe") => Command::Subscribe,
        Some("unsubscribe") => Command::Unsubscribe,
        Some("message") => Command::Message,
        _ => return Err(CommandError::UnknownCommand),
    };
    identifier.map(make).ok_or(CommandError::NoIdentifier)
}

/// `{"type":"welcome"}`.
pub const WELCOME: &str = r#"{"type":"welcome"}"#;

/// `{"type":"ping","message":<unix seconds>}`.
pub fn ping(unix_seconds: u64) -> String {
    format!(r#"{{"type":"ping","message":{unix_seconds}}}"#)
}

/// `{"identifier":…,"type":"confirm_subscription"}`.
pub fn confirm(identifier: &str) -> String {
    subscription_frame(identifier, "confirm_subscription")
}

/// `{"identifier":…,"type":"reject_subscription"}`.
pub fn reject(identifier: &str) -> String {
    subscription_frame(identifier, "reject_subscription")
}

fn subscription_frame(identifier: &str, kind: &str) -> String {
    let mut out = String::with_capacity(identifier.len() + 48);
    out.push_str(r#"{"identifier":"#);
    push_str(&mut out, identifier);
    out.push_str(r#","type":""#);
    out.push_str(kind);
    out.push_str(r#""}"#);
    out
}

/// Why the server ends a connection (protocol.md §8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisconnectReason {
    /// Bad or expired credentials; the client must not reconnect.
    Unauthorized,
    /// Graceful shutdown; the client reconnects.
    ServerRestart,
    /// An operator cut this user off.
    Remote,
}

impl DisconnectReason {
    /// The reason as it appears on the wire and in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            DisconnectReason::Unauthorized => "unauthorized",
            DisconnectReason::ServerRestart => "server_restart",
            DisconnectReason::Remote => "remote",
        }
    }
}

/// `{"type":"disconnect","reason":…,"reconnect":…}`.
pub fn disconnect(reason: DisconnectReason, reconnect: bool) -> String {
    format!(
        r#"{{"type":"disconnect","reason":"{}","reconnect":{}}}"#,
        reason.as_str(),
        reconnect
    )
}

/// The part of a broadcast frame that depends on the subscription: `{"identifier":…,"message":`.
/// Computed once per subscription; a broadcast frame is this, the shared message, and `}`.
pub fn broadcast_prefix(identifier: &str) -> String {
    let mut out = String::with_capacity(identifier.len() + 32);
    out.push_str(r#"{"identifier":"#);
    push_str(&mut out, identifier);
    out.push_str(r#","message":"#);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_commands() {
        let id = r#"{"channel":"CampaignChannel","id":"x"}"#;
        let frame = serde_json::json!({"command":"subscribe","identifier":id}).to_string();
        assert_eq!(parse_command(&frame), Ok(Command::Subscribe(id.into())));
        let frame = serde_json::json!({"command":"unsubscribe","identifier":id}).to_string();
        assert_eq!(parse_command(&frame), Ok(Command::Unsubscribe(id.into())));
        let frame =
            serde_json::json!({"command":"message","identifier":id,"data":"{}"}).to_string();
        assert_eq!(parse_command(&frame), Ok(Command::Message(id.into())));
    }

    #[test]
    fn identifier_is_kept_byte_for_byte() {
        let frame =
            r#"{"command":"subscribe","identifier":"{ \"id\" : \"\u00e9\", \"channel\":\"X\" }"}"#;
        assert_eq!(
            parse_command(frame),
            Ok(Command::Subscribe(
                r#"{ "id" : "é", "channel":"X" }"#.into()
            ))
        );
    }

    #[test]
    fn rejects_bad_frames_without_panicking() {
        assert_eq!(parse_command("not json"), Err(CommandError::Malformed));
        assert_eq!(parse_command("[]"), Err(CommandError::Malformed));
        assert_eq!(
            parse_command(r#"{"command":"subscribe"}"#),
            Err(CommandError::NoIdentifier)
        );
        assert_eq!(
            parse_command(r#"{"command":"subscribe","identifier":{"channel":"X"}}"#),
            Err(CommandError::NoIdentifier)
        );
        assert_eq!(
            parse_command(r#"{"command":"dance","identifier":"x"}"#),
            Err(CommandError::UnknownCommand)
        );
        assert_eq!(
            parse_command(r#"{"identifier":"x"}"#),
            Err(CommandError::UnknownCommand)
        );
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let frame = format!(r#"{{"command":"subscribe","identifier":{deep}}}"#);
        assert!(parse_command(&frame).is_err());
    }

    #[test]
    fn server_frames_are_byte_exact() {
        assert_eq!(ping(1700000000), r#"{"type":"ping","message":1700000000}"#);
        assert_eq!(
            confirm(r#"{"a":"<b>"}"#),
            r#"{"identifier":"{\"a\":\"\u003cb\u003e\"}","type":"confirm_subscription"}"#
        );
        assert_eq!(
            reject("x"),
            r#"{"identifier":"x","type":"reject_subscription"}"#
        );
        assert_eq!(
            disconnect(DisconnectReason::Unauthorized, false),
            r#"{"type":"disconnect","reason":"unauthorized","reconnect":false}"#
        );
        assert_eq!(broadcast_prefix("x"), r#"{"identifier":"x","message":"#);
    }
}
