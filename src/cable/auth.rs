//! Connection authentication: the `token` query parameter → a user (auth.md §1).
//!
//! Owns token extraction, JWT verification and the user lookup. Calls the query pool.

use std::collections::HashSet;

use jsonwebtoken::{decode, Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use uuid::Uuid;

use crate::db::Pool;

/// The authenticated user of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// `users.id`.
    pub id: Uuid,
    /// `users.admin IS TRUE`.
    pub admin: bool,
    /// When the token expires (unix seconds), if it says.
    pub expires_at: Option<i64>,
}

/// Why a connection was refused. Logged, never sent: the client only sees `unauthorized`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// No `token` parameter.
    MissingToken,
    /// Not a JWT we accept (bad structure, algorithm, signature, claims).
    InvalidToken(String),
    /// `exp` has passed.
    Expired,
    /// `nbf` is in the future.
    NotYetValid,
    /// `sub` is not a uuid.
    BadSubject,
    /// No such user (or the user is inactive / the jti does not match, when required).
    UnknownUser,
    /// The database could not be asked.
    Database(String),
}

impl AuthError {
    /// A short label for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            AuthError::MissingToken => "missing_token",
            AuthError::InvalidToken(_) => "invalid_token",
            AuthError::Expired => "expired",
            AuthError::NotYetValid => "not_yet_valid",
            AuthError::BadSubject => "bad_subject",
            AuthError::UnknownUser => "unknown_user",
            AuthError::Database(_) => "database",
        }
    }
}

impl std::fmt::Display for AuthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AuthError::InvalidToken(why) => write!(f, "invalid token: {why}"),
            AuthError::Database(why) => write!(f, "database error: {why}"),
            other => f.write_str(other.label()),
        }
    }
}

/// Token policy from the configuration.
#[derive(Debug, Clone)]
pub struct AuthPolicy {
    /// HS256 secret.
    pub secret: String,
    /// Reject tokens without `exp`.
    pub require_exp: bool,
    /// `users.jti` must equal the token's `jti`.
    pub check_jti: bool,
    /// `users.active` must be true.
    pub require_active_user: bool,
}

#[derive(Debug, Deserialize)]
struct Claims {
    sub: Option<serde_json::Value>,
    exp: Option<i64>,
    jti: Option<String>,
}

/// The token from a raw query string: `token`, percent-decoded (`+` is a space, as Rack reads it),
/// with a leading `Bearer ` removed. The first `token` parameter wins.
pub fn token_from_query(query: &str) -> Option<String> {
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if decode_component(key) != "token" {
            continue;
        }
        let value = decode_component(value);
        let token = match value.strip_prefix("Bearer ") {
            // Rails takes the second space-separated word.
            Some(rest) => rest.split(' ').next().unwrap_or("").to_string(),
            None => value,
        };
        return Some(token);
    }
    None
}

fn decode_component(s: &str) -> String {
    let s = s.replace('+', " ");
    percent_encoding::percent_decode_str(&s)
        .decode_utf8_lossy()
        .into_owned()
}

/// Verifies the JWT (HS256 only; `exp` and `nbf` when present, with no leeway) and returns the
/// user id and expiry it names.
pub fn verify(
    token: &str,
    policy: &AuthPolicy,
) -> Result<(Uuid, Option<i64>, Option<String>), AuthError> {
    if token.is_empty() {
        return Err(AuthError::MissingToken);
    }
    let mut validation = Validation::new(Algorithm::HS256);
    validation.leeway = 0;
    validation.validate_exp = true;
    validation.validate_nbf = true;
    validation.validate_aud = false;
    validation.required_spec_claims = if policy.require_exp {
        HashSet::from(["exp".to_string()])
    } else {
        HashSet::new()
    };
    let key = DecodingKey::from_secret(policy.secret.as_bytes());
    let data = decode::<Claims>(token, &key, &validation).map_err(|e| {
        use jsonwebtoken::errors::ErrorKind;
        match e.kind() {
            ErrorKind::ExpiredSignature => AuthError::Expired,
            ErrorKind::ImmatureSignature => AuthError::NotYetValid,
            _ => AuthError::InvalidToken(e.to_string()),
        }
    })?;
    let sub = match data.claims.sub {
        Some(serde_json::Value::String(s)) => s,
        _ => return Err(AuthError::BadSubject),
    };
    let id = parse_uuid(&sub).ok_or(AuthError::BadSubject)?;
    Ok((id, data.claims.exp, data.claims.jti))
}

/// A canonical hyphenated uuid (either case); nothing else.
pub fn parse_uuid(s: &str) -> Option<Uuid> {
    if s.len() != 36 {
        return None;
    }
    Uuid::try_parse(s).ok()
}

/// Verifies the token and looks the user up.
pub async fn authenticate(
    pool: &Pool,
    policy: &AuthPolicy,
    token: Option<&str>,
) -> Result<User, AuthError> {
    let token = token.ok_or(AuthError::MissingToken)?;
    let (id, expires_at, jti) = verify(token, policy)?;
    let client = pool
        .get()
        .await
        .map_err(|e| AuthError::Database(e.to_string()))?;
    let row = client
        .query_opt(
            "SELECT admin IS TRUE, jti, active FROM users WHERE id = $1",
            &[&id],
        )
        .await
        .map_err(|e| AuthError::Database(e.to_string()))?
        .ok_or(AuthError::UnknownUser)?;
    let admin: bool = row.get(0);
    let user_jti: String = row.get(1);
    let active: bool = row.get(2);
    if policy.check_jti && jti.as_deref() != Some(user_jti.as_str()) {
        return Err(AuthError::UnknownUser);
    }
    if policy.require_active_user && !active {
        return Err(AuthError::UnknownUser);
    }
    Ok(User {
        id,
        admin,
        expires_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_forms() {
        assert_eq!(
            token_from_query("token=Bearer%20abc").as_deref(),
            Some("abc")
        );
        assert_eq!(token_from_query("token=Bearer+abc").as_deref(), Some("abc"));
        assert_eq!(token_from_query("x=1&token=abc").as_deref(), Some("abc"));
        assert_eq!(token_from_query("x=1"), None);
        assert_eq!(token_from_query("").as_deref(), None);
        assert_eq!(token_from_query("token=").as_deref(), Some(""));
    }

    #[test]
    fn uuid_must_be_canonical() {
        assert!(parse_uuid("00000000-0000-4000-8000-000000000001").is_some());
        assert!(parse_uuid("00000000-0000-4000-8000-00000000000A").is_some());
        assert!(parse_uuid("0000000000004000800000000000000a").is_none());
        assert!(parse_uuid("1' OR '1'='1").is_none());
    }
}
