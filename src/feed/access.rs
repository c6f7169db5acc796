//! Live authorization (auth.md §1): a committed change that takes access away ends the
//! subscriptions it forbids before anything committed after it is dispatched.
//!
//! Owns turning [`AccessChange`]s into forgotten cache entries, fresh decisions and
//! disconnects. The dispatcher awaits [`apply`] before it dispatches the notifications that
//! follow (NOTIFY arrives in commit order), so a revoked subscription receives nothing
//! committed at or after the revocation: its session is ended (and an ended session's outbox
//! takes nothing more) before those messages reach the hub.
//! Calls the access decisions (cable channels), the hub and the query pool.

use std::collections::{HashMap, HashSet};

use uuid::Uuid;

use super::event::AccessChange;
use crate::cable::channels::Resource;
use crate::cable::frame::DisconnectReason;
use crate::hub::{Holder, SessionId};
use crate::state::State;

/// Applies access changes: forget cached decisions, end the connections of users who lost a
/// policy (deleted, rotated `jti`, deactivated, no longer admin), and decide again every held
/// subscription that may have lost its access, ending the sessions that did.
pub async fn apply(state: &State, changes: &[AccessChange]) {
    let users: HashSet<Uuid> = changes
        .iter()
        .filter_map(|c| match c {
            AccessChange::Lost { user, .. }
            | AccessChange::Gained { user, .. }
            | AccessChange::User { user, .. } => Some(*user),
            _ => None,
        })
        .collect();
    let campaign_gone = changes
        .iter()
        .any(|c| matches!(c, AccessChange::CampaignGone(_)));
    let fights: HashSet<Uuid> = changes
        .iter()
        .filter_map(|c| match c {
            AccessChange::FightMoved(f) => Some(*f),
            _ => None,
        })
        .collect();
    // A deleted campaign takes its fights' decisions with it, and which fights those were is
    // no longer known: forget everything (rare).
    state.access.changed(move |user, resource| {
        campaign_gone
            || users.contains(&user)
            || matches!(resource, Resource::Fight(f) if fights.contains(&f))
    });

    for change in changes {
        if let AccessChange::User {
            user,
            admin_lost,
            jti_changed,
            deactivated,
            deleted,
        } = *change
        {
            let policy = &state.config;
            if (jti_changed && policy.check_jti) || (deactivated && policy.require_active_user) {
                let n = state
                    .hub
                    .disconnect_user(user, DisconnectReason::Unauthorized, false);
                tracing::info!(%user, connections = n, "token revoked: connections closed");
            } else if deleted || admin_lost {
                // Its connections were authorized as this user (or as an admin, which skips
                // the database for every subscribe): they reconnect and are decided afresh.
                let n = state
                    .hub
                    .disconnect_user(user, DisconnectReason::Remote, true);
                tracing::info!(%user, connections = n, deleted, admin_lost, "user's access changed: connections closed");
            }
        }
    }

    let held = state
        .hub
        .holders(|s| s.starts_with("campaign_") || s.starts_with("fight_"));
    let mut to_decide: HashMap<(Uuid, Resource), Vec<SessionId>> = HashMap::new();
    for Holder {
        session,
        user,
        stream,
    } in held
    {
        let Some(resource) = resource_of(&stream) else {
            continue;
        };
        if affected(changes, user, resource) {
            to_decide.entry((user, resource)).or_default().push(session);
        }
    }
    if to_decide.is_empty() {
        return;
    }
    let decisions = futures_util::future::join_all(
        to_decide
            .keys()
            .map(|(user, resource)| state.access.decide(*user, *resource)),
    )
    .await;
    let mut ended: HashSet<SessionId> = HashSet::new();
    for (((user, resource), sessions), decision) in to_decide.iter().zip(decisions) {
        // Unknown (the database could not answer) is not allowed either: the client
        // reconnects and is decided again.
        if let Ok(true) = decision {
            continue;
        }
        for session in sessions {
            if ended.insert(*session)
                && state
                    .hub
                    .disconnect_session(*session, DisconnectReason::Remote, true)
            {
                state.metrics.access_revoked();
                tracing::info!(%user, ?resource, session, "access revoked: connection closed");
            }
        }
    }
}

/// The resource a campaign or fight stream belongs to (`campaign_<uuid>`, its per-client
/// streams `campaign_<uuid>_<client>`, `fight_<uuid>`).
fn resource_of(stream: &str) -> Option<Resource> {
    if let Some(rest) = stream.strip_prefix("campaign_") {
        return rest
            .get(..36)
            .and_then(|id| Uuid::try_parse(id).ok())
            .map(Resource::Campaign);
    }
    stream
        .strip_prefix("fight_")
        .and_then(|id| Uuid::try_parse(id).ok())
        .map(Resource::Fight)
}

/// Whether `user`'s subscription to `resource` may have lost its access through `changes`.
fn affected(changes: &[AccessChange], user: Uuid, resource: Resource) -> bool {
    changes.iter().any(|change| match (*change, resource) {
        // Which campaign a fight belongs to is the database's to say: decide again.
        (AccessChange::Lost { user: u, .. }, Resource::Fight(_)) => u == user,
        (AccessChange::Lost { user: u, campaign }, Resource::Campaign(c)) => {
            u == user && c == campaign
        }
        (AccessChange::CampaignGone(campaign), Resource::Campaign(c)) => c == campaign,
        // Its fights went before it (foreign keys); which they were is no longer known.
        (AccessChange::CampaignGone(_), Resource::Fight(_)) => true,
        (AccessChange::FightMoved(f), Resource::Fight(fight)) => f == fight,
        _ => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_to_resources() {
        let id = "00000000-0000-4000-8000-0000000000c1";
        let u = Uuid::try_parse(id).unwrap();
        assert_eq!(
            resource_of(&format!("campaign_{id}")),
            Some(Resource::Campaign(u))
        );
        assert_eq!(
            resource_of(&format!("campaign_{id}_Z2lkOi8v")),
            Some(Resource::Campaign(u))
        );
        assert_eq!(
            resource_of(&format!("fight_{id}")),
            Some(Resource::Fight(u))
        );
        assert_eq!(resource_of("campaign_x"), None);
        assert_eq!(resource_of("user_1"), None);
    }

    #[test]
    fn what_a_change_affects() {
        let (a, b, c, f) = (
            Uuid::from_u128(1),
            Uuid::from_u128(2),
            Uuid::from_u128(3),
            Uuid::from_u128(4),
        );
        let lost = [AccessChange::Lost {
            user: a,
            campaign: c,
        }];
        assert!(affected(&lost, a, Resource::Campaign(c)));
        assert!(affected(&lost, a, Resource::Fight(f)));
        assert!(!affected(&lost, b, Resource::Campaign(c)));
        assert!(!affected(&lost, a, Resource::Campaign(b)));
        let gained = [AccessChange::Gained {
            user: a,
            campaign: c,
        }];
        assert!(!affected(&gained, a, Resource::Campaign(c)));
        let moved = [AccessChange::FightMoved(f)];
        assert!(affected(&moved, b, Resource::Fight(f)));
        assert!(!affected(&moved, b, Resource::Campaign(c)));
    }
}
