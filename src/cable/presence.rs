//! FightChannel presence: who is in each fight, and the `{"users":[…]}` list sent on changes.
//!
//! Owns the fight → users count map. Changes are rendered by one task, in order, so the last
//! list a fight's subscribers receive always reflects the latest membership.
//! Calls the query pool, the renderer (for `image_url`) and the hub.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use uuid::Uuid;

use crate::db::Pool;
use crate::hub::Hub;
use crate::render::json::push_str;

/// The presence book. One per relay.
#[derive(Debug)]
pub struct Presence {
    fights: Mutex<HashMap<Uuid, BTreeMap<Uuid, usize>>>,
    changed: mpsc::UnboundedSender<Uuid>,
}

impl Presence {
    /// A presence book whose lists are rendered and broadcast by a task spawned here.
    pub fn start(pool: Pool, hub: Arc<Hub>, imagekit_endpoint: Option<String>) -> Arc<Presence> {
        let (tx, rx) = mpsc::unbounded_channel();
        let presence = Arc::new(Presence {
            fights: Mutex::new(HashMap::new()),
            changed: tx,
        });
        tokio::spawn(announce(
            Arc::downgrade(&presence),
            rx,
            pool,
            hub,
            imagekit_endpoint,
        ));
        presence
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, BTreeMap<Uuid, usize>>> {
        self.fights.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A connection of `user` subscribed to `fight`. The list is sent on every join, so the
    /// newcomer learns who is there.
    pub fn join(&self, fight: Uuid, user: Uuid) {
        *self
            .lock()
            .entry(fight)
            .or_default()
            .entry(user)
            .or_insert(0) += 1;
        let _ = self.changed.send(fight);
    }

    /// A connection of `user` left `fight`. The list is sent when the user's last one goes.
    pub fn leave(&self, fight: Uuid, user: Uuid) {
        let mut fights = self.lock();
        let Some(users) = fights.get_mut(&fight) else {
            return;
        };
        let Some(count) = users.get_mut(&user) else {
            return;
        };
        *count -= 1;
        if *count > 0 {
            return;
        }
        users.remove(&user);
        if users.is_empty() {
            fights.remove(&fight);
        }
        drop(fights);
        let _ = self.changed.send(fight);
    }

    /// The users present in a fight, by id.
    pub fn members(&self, fight: Uuid) -> Vec<Uuid> {
        self.lock()
            .get(&fight)
            .map(|u| u.keys().copied().collect())
            .unwrap_or_default()
    }
}

async fn announce(
    presence: std::sync::Weak<Presence>,
    mut changed: mpsc::UnboundedReceiver<Uuid>,
    pool: Pool,
    hub: Arc<Hub>,
    endpoint: Option<String>,
) {
    while let Some(fight) = changed.recv().await {
        let Some(book) = presence.upgrade() else {
            return;
        };
        let members = book.members(fight);
        drop(book);
        match users_message(&pool, &members, endpoint.as_deref()).await {
            Ok(message) => {
                hub.broadcast(&format!("fight_{fight}"), &message);
            }
            Err(e) => tracing::warn!(%fight, error = %e, "presence list not sent"),
        }
    }
}

/// `{"users":[{"id","first_name","last_name","name","image_url"}…]}` for these users, by id.
async fn users_message(
    pool: &Pool,
    ids: &[Uuid],
    endpoint: Option<&str>,
) -> Result<String, String> {
    let client = pool.get().await.map_err(|e| e.to_string())?;
    let rows = client
        .query(
            "SELECT u.id, u.first_name, u.last_name, a.id IS NOT NULL, b.key, b.metadata \
             FROM users u \
             LEFT JOIN LATERAL (SELECT id, blob_id FROM active_storage_attachments \
               WHERE record_type = 'User' AND record_id = u.id AND name = 'image' ORDER BY id LIMIT 1) a ON true \
             LEFT JOIN active_storage_blobs b ON b.id = a.blob_id \
             WHERE u.id = ANY($1) ORDER BY u.id",
            &[&ids],
        )
        .await
        .map_err(|e| e.to_string())?;
    let mut out = String::from(r#"{"users":["#);
    for (i, row) in rows.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let id: Uuid = row.get(0);
        let first: String = row.get(1);
        let last: String = row.get(2);
        let attached: bool = row.get(3);
        let key: Option<String> = row.get(4);
        let metadata: Option<String> = row.get(5);
        out.push_str(r#"{"id":"#);
        push_str(&mut out, &id.to_string());
        out.push_str(r#","first_name":"#);
        push_str(&mut out, &first);
        out.push_str(r#","last_name":"#);
        push_str(&mut out, &last);
        out.push_str(r#","name":"#);
        push_str(&mut out, format!("{first} {last}").trim());
        out.push_str(r#","image_url":"#);
        let url = if attached {
            crate::render::image_url::image_url(endpoint, key.as_deref(), metadata.as_deref())
        } else {
            None
        };
        match url {
            Some(u) => push_str(&mut out, &u),
            None => out.push_str("null"),
        }
        out.push('}');
    }
    out.push_str("]}");
    Ok(out)
}
