//! Channels: an identifier string → a channel, its streams, and whether the user may have it.
//!
//! Owns the channel table of auth.md §1, the access cache and its share of the query pool.
//! Calls the query pool.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use moka::future::Cache;
use serde_json::Value;
use tokio::sync::Semaphore;
use uuid::Uuid;

use super::auth::{parse_uuid, User};
use crate::db::Pool;

/// A channel a client asked for, with its parameters checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Channel {
    /// `CampaignChannel {id, client_id?}`.
    Campaign {
        /// The campaign.
        id: Uuid,
        /// The client's own id for its private stream, if it sent one.
        client_id: Option<String>,
    },
    /// `FightChannel {fight_id}`: the fight's stream plus presence.
    Fight {
        /// The fight.
        fight_id: Uuid,
    },
    /// `UserChannel {id}`: the user's own stream.
    User {
        /// The user.
        id: Uuid,
    },
}

/// Why a subscription was rejected (logged and counted; the client sees `reject_subscription`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// The identifier is not a JSON object naming a channel.
    BadIdentifier,
    /// No such channel.
    UnknownChannel,
    /// A required parameter is missing or malformed.
    BadParams,
    /// The user may not see it.
    Forbidden,
    /// The connection holds too many subscriptions.
    TooMany,
    /// The database could not be asked.
    Unavailable,
    /// The connection had its share of refusals for now: only known answers are given.
    OverBudget,
}

impl Rejection {
    /// A short label for logs and metrics.
    pub fn label(self) -> &'static str {
        match self {
            Rejection::BadIdentifier => "bad_identifier",
            Rejection::UnknownChannel => "unknown_channel",
            Rejection::BadParams => "bad_params",
            Rejection::Forbidden => "forbidden",
            Rejection::TooMany => "too_many",
            Rejection::Unavailable => "unavailable",
            Rejection::OverBudget => "over_budget",
        }
    }
}

/// Reads an identifier string. Never touches the database.
pub fn parse_identifier(identifier: &str) -> Result<Channel, Rejection> {
    let value: Value = serde_json::from_str(identifier).map_err(|_| Rejection::BadIdentifier)?;
    let params = value.as_object().ok_or(Rejection::BadIdentifier)?;
    let uuid_param = |key: &str| -> Result<Uuid, Rejection> {
        params
            .get(key)
            .and_then(Value::as_str)
            .and_then(parse_uuid)
            .ok_or(Rejection::BadParams)
    };
    match params.get("channel").and_then(Value::as_str) {
        Some("CampaignChannel") => {
            let client_id = match params.get("client_id") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) if !s.is_empty() && s.len() <= 256 => Some(s.clone()),
                Some(Value::Number(n)) => Some(n.to_string()),
                Some(_) => return Err(Rejection::BadParams),
            };
            Ok(Channel::Campaign {
                id: uuid_param("id")?,
                client_id,
            })
        }
        Some("FightChannel") => Ok(Channel::Fight {
            fight_id: uuid_param("fight_id")?,
        }),
        Some("UserChannel") => Ok(Channel::User {
            id: uuid_param("id")?,
        }),
        Some(_) => Err(Rejection::UnknownChannel),
        None => Err(Rejection::BadIdentifier),
    }
}

/// The connection identifier Rails would use: base64url (no padding) of `gid://<app>/User/<id>`.
pub fn connection_identifier(app_name: &str, user_id: Uuid) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(format!("gid://{app_name}/User/{user_id}"))
}

impl Channel {
    /// The streams this channel listens to, for this user.
    pub fn streams(&self, user: &User, app_name: &str) -> Vec<String> {
        match self {
            Channel::Campaign { id, client_id } => {
                let client = client_id
                    .clone()
                    .unwrap_or_else(|| connection_identifier(app_name, user.id));
                vec![format!("campaign_{id}"), format!("campaign_{id}_{client}")]
            }
            Channel::Fight { fight_id } => vec![format!("fight_{fight_id}")],
            Channel::User { id } => vec![format!("user_{id}")],
        }
    }
}

/// What an access decision is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Resource {
    /// A campaign (CampaignChannel).
    Campaign(Uuid),
    /// A fight, through its campaign (FightChannel).
    Fight(Uuid),
}

impl Channel {
    /// What deciding this channel is about; `None` for channels decided without the database.
    pub fn resource(&self) -> Option<Resource> {
        match self {
            Channel::Campaign { id, .. } => Some(Resource::Campaign(*id)),
            Channel::Fight { fight_id } => Some(Resource::Fight(*fight_id)),
            Channel::User { .. } => None,
        }
    }
}

/// Who may see what, with decisions cached for a short time (auth.md §1).
///
/// Live authorization (auth.md §1) forgets cached decisions the moment a change of access is
/// committed, and bumps the [`Access::epoch`], so a subscribe whose decision was taken before
/// that commit knows to decide again.
#[derive(Clone)]
pub struct Access {
    pool: Pool,
    cache: Cache<(Uuid, Resource), bool>,
    epoch: Arc<AtomicU64>,
    /// Access checks hold at most half of the query pool, so a flood of subscribes cannot
    /// starve the re-reads.
    share: Arc<Semaphore>,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access").finish_non_exhaustive()
    }
}

// `users.admin` is asked here too, not only read at connect time: a user made admin while
// connected is allowed at once.
const MAY_SEE_CAMPAIGN: &str = "SELECT EXISTS (SELECT 1 FROM users WHERE id = $1 AND admin) \
     OR EXISTS (SELECT 1 FROM campaigns WHERE id = $2 AND user_id = $1) \
     OR EXISTS (SELECT 1 FROM campaign_memberships WHERE campaign_id = $2 AND user_id = $1)";

const MAY_SEE_FIGHT: &str = "SELECT EXISTS (SELECT 1 FROM users WHERE id = $1 AND admin) \
     OR EXISTS (SELECT 1 FROM fights f JOIN campaigns c ON c.id = f.campaign_id \
       WHERE f.id = $2 AND c.user_id = $1) \
     OR EXISTS (SELECT 1 FROM fights f JOIN campaign_memberships m ON m.campaign_id = f.campaign_id \
       WHERE f.id = $2 AND m.user_id = $1)";

impl Access {
    /// Access decisions through `pool` (at most `checks` at a time), cached for `ttl`.
    pub fn new(pool: Pool, ttl: Duration, checks: usize) -> Access {
        Access {
            pool,
            cache: Cache::builder()
                .max_capacity(100_000)
                .time_to_live(ttl)
                .support_invalidation_closures()
                .build(),
            epoch: Arc::new(AtomicU64::new(0)),
            share: Arc::new(Semaphore::new(checks.max(1))),
        }
    }

    /// The answer without asking the database: `Some` for the connection's own user channel,
    /// a connect-time admin, or a cached decision.
    pub async fn known(&self, user: &User, channel: &Channel) -> Option<bool> {
        match channel.resource() {
            None => Some(matches!(channel, Channel::User { id } if *id == user.id)),
            Some(_) if user.admin => Some(true),
            Some(resource) => self.cache.get(&(user.id, resource)).await,
        }
    }

    /// Whether `user` may subscribe to `channel`, from the cache when it knows.
    pub async fn allows(&self, user: &User, channel: &Channel) -> Result<bool, Rejection> {
        if let Some(allowed) = self.known(user, channel).await {
            return Ok(allowed);
        }
        match channel.resource() {
            Some(resource) => self.decide(user.id, resource).await,
            None => Ok(false),
        }
    }

    /// Asks the database now (never the cache) and caches the answer, unless access changed
    /// while it was asked.
    pub async fn decide(&self, user: Uuid, resource: Resource) -> Result<bool, Rejection> {
        let epoch = self.epoch();
        let allowed = self.query(user, resource).await?;
        if self.epoch() == epoch {
            self.cache.insert((user, resource), allowed).await;
        }
        Ok(allowed)
    }

    /// Counts access changes: a decision taken before the count moved may be stale.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Forgets the cached decisions that `forget` selects, after an access change.
    pub fn changed(&self, forget: impl Fn(Uuid, Resource) -> bool + Send + Sync + 'static) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        if let Err(e) = self
            .cache
            .invalidate_entries_if(move |(user, resource), _| forget(*user, *resource))
        {
            // Only possible without invalidation closures, which `new` turns on; forget all.
            tracing::warn!(error = %e, "access cache: selective invalidation failed");
            self.cache.invalidate_all();
        }
    }

    async fn query(&self, user: Uuid, resource: Resource) -> Result<bool, Rejection> {
        let (sql, id) = match resource {
            Resource::Campaign(id) => (MAY_SEE_CAMPAIGN, id),
            Resource::Fight(id) => (MAY_SEE_FIGHT, id),
        };
        let _share = self
            .share
            .acquire()
            .await
            .map_err(|_| Rejection::Unavailable)?;
        crate::metrics::Metrics.access_query();
        let client = self.pool.get().await.map_err(|e| {
            tracing::warn!(error = %e, "access check: no database connection");
            Rejection::Unavailable
        })?;
        let row = client.query_one(sql, &[&user, &id]).await.map_err(|e| {
            tracing::warn!(error = %e, "access check failed");
            Rejection::Unavailable
        })?;
        Ok(row.get(0))
    }
}

/// Shared handle.
pub type SharedAccess = Arc<Access>;

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "00000000-0000-4000-8000-0000000000c1";

    #[test]
    fn identifiers() {
        let campaign = format!(r#"{{"channel":"CampaignChannel","id":"{ID}"}}"#);
        assert!(matches!(
            parse_identifier(&campaign),
            Ok(Channel::Campaign {
                client_id: None,
                ..
            })
        ));
        for bad in [
            "{}",
            "not json",
            "[]",
            r#"{"channel":null}"#,
            r#"{"channel":1}"#,
        ] {
            assert_eq!(
                parse_identifier(bad),
                Err(Rejection::BadIdentifier),
                "{bad}"
            );
        }
        assert_eq!(
            parse_identifier(r#"{"channel":"ApplicationCable::Channel"}"#),
            Err(Rejection::UnknownChannel)
        );
        for bad in [
            r#"{"channel":"CampaignChannel"}"#,
            r#"{"channel":"CampaignChannel","id":1}"#,
            r#"{"channel":"CampaignChannel","id":"x'; DROP TABLE users; --"}"#,
            r#"{"channel":"FightChannel","id":"00000000-0000-4000-8000-0000000000c1"}"#,
        ] {
            assert_eq!(parse_identifier(bad), Err(Rejection::BadParams), "{bad}");
        }
    }

    #[test]
    fn campaign_streams_use_the_connection_identifier_without_client_id() {
        let user = User {
            id: Uuid::nil(),
            admin: false,
            expires_at: None,
        };
        let ch = Channel::Campaign {
            id: Uuid::nil(),
            client_id: None,
        };
        let streams = ch.streams(&user, "shot-server");
        let gid = connection_identifier("shot-server", Uuid::nil());
        assert_eq!(
            gid,
            "Z2lkOi8vc2hvdC1zZXJ2ZXIvVXNlci8wMDAwMDAwMC0wMDAwLTAwMDAtMDAwMC0wMDAwMDAwMDAwMDA"
        );
        assert_eq!(streams[1], format!("campaign_{}_{gid}", Uuid::nil()));
    }
}
