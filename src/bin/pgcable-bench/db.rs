//! The bench's own database: `pgcable_bench_<random>` with `sql/schema.sql` and
//! `triggers/install.sql`, one user, the campaigns and characters the scenarios change, and the
//! HS256 tokens the load client presents. Dropped at the end of the run.

use std::time::{SystemTime, UNIX_EPOCH};

use tokio_postgres::{Client, NoTls};
use uuid::Uuid;

/// The JWT secret the relay (and the Rails app) are started with.
pub const SECRET: &str = "pgcable-bench-secret";

/// Characters in the fanout campaign that the `row` variant updates in turn.
pub const FANOUT_ROWS: usize = 20;

/// A bench database and what is in it.
#[derive(Debug, Clone)]
pub struct BenchDb {
    /// Database name.
    pub name: String,
    /// URL of the bench database.
    pub url: String,
    /// URL of the server's maintenance database (to drop ours).
    pub admin_url: String,
    /// The user every connection authenticates as (the campaigns' owner).
    pub user: Uuid,
    /// The campaign of `fanout`, `connections` and `single`.
    pub campaign: Uuid,
    /// Characters of that campaign (the `row` variant updates them in turn).
    pub rows: Vec<Uuid>,
}

/// Connects, with the connection driven by a task.
pub async fn connect(url: &str) -> Result<Client, String> {
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .map_err(|e| format!("cannot connect to {url}: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// `url` with its database name replaced.
pub fn with_database(url: &str, name: &str) -> Result<String, String> {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base
        .find("://")
        .ok_or_else(|| format!("not a postgres:// URL: {url}"))?
        + 3;
    let path_start = base[scheme_end..]
        .find('/')
        .map(|p| p + scheme_end)
        .unwrap_or(base.len());
    let mut out = format!("{}/{}", &base[..path_start], name);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    Ok(out)
}

/// Inserts `count` characters into `campaign`, owned by `user`, shaped like real ones.
pub async fn insert_characters(
    client: &Client,
    campaign: Uuid,
    user: Uuid,
    count: usize,
) -> Result<Vec<Uuid>, String> {
    let ids: Vec<Uuid> = (0..count).map(|_| Uuid::new_v4()).collect();
    client
        .execute(
            "INSERT INTO characters (id, name, created_at, updated_at, campaign_id, user_id, impairments,
                                     action_values, description, skills, status)
             SELECT id, 'bench-0', now(), now(), $2, $3, 0,
                    jsonb_build_object('Type', 'PC', 'Guns', 13, 'Martial Arts', 7, 'Defense', 14,
                        'Toughness', 7, 'Speed', 7, 'Fortune', 7, 'Max Fortune', 7, 'Wounds', 0,
                        'MainAttack', 'Guns', 'SecondaryAttack', 'Martial Arts', 'FortuneType', 'Chi',
                        'Archetype', 'Killer'),
                    jsonb_build_object('Age', '35', 'Height', '180', 'Weight', '80',
                        'Eye Color', 'brown', 'Hair Color', 'black',
                        'Appearance', repeat('A long <b>description</b>. ', 12),
                        'Background', repeat('Grew up on the docks. ', 10),
                        'Melodramatic Hook', 'Revenge'),
                    jsonb_build_object('Driving', 10, 'Intrusion', 12, 'Police', 8, 'Info: Guns', 15),
                    '[]'::jsonb
               FROM unnest($1::uuid[]) AS id",
            &[&ids, &campaign, &user],
        )
        .await
        .map_err(|e| format!("insert characters: {e}"))?;
    Ok(ids)
}

/// Inserts a campaign owned by `user`.
pub async fn insert_campaign(client: &Client, user: Uuid, name: &str) -> Result<Uuid, String> {
    let id = Uuid::new_v4();
    client
        .execute(
            "INSERT INTO campaigns (id, user_id, name, created_at, updated_at) VALUES ($1, $2, $3, now(), now())",
            &[&id, &user, &name],
        )
        .await
        .map_err(|e| format!("insert campaign: {e}"))?;
    Ok(id)
}

impl BenchDb {
    /// Creates the database and loads the schema, the triggers, a user, a campaign and its rows.
    pub async fn create(admin_url: &str) -> Result<BenchDb, String> {
        let name = format!(
            "pgcable_bench_{}",
            &Uuid::new_v4().simple().to_string()[..12]
        );
        let admin = connect(admin_url).await?;
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .map_err(|e| format!("CREATE DATABASE {name}: {e}"))?;
        let url = with_database(admin_url, &name)?;
        let db = BenchDb {
            name,
            url,
            admin_url: admin_url.to_string(),
            user: Uuid::new_v4(),
            campaign: Uuid::nil(),
            rows: Vec::new(),
        };
        let fallback = db.clone();
        match db.load().await {
            Ok(db) => Ok(db),
            Err(e) => {
                fallback.drop_database().await;
                Err(e)
            }
        }
    }

    async fn load(mut self) -> Result<BenchDb, String> {
        let client = connect(&self.url).await?;
        client
            .batch_execute(include_str!("../../../sql/schema.sql"))
            .await
            .map_err(|e| format!("load sql/schema.sql: {e}"))?;
        client
            .batch_execute(include_str!("../../../triggers/install.sql"))
            .await
            .map_err(|e| format!("load triggers/install.sql: {e}"))?;
        client
            .execute(
                "INSERT INTO users (id, first_name, last_name, name, email, jti, admin, created_at, updated_at) \
                 VALUES ($1, 'Bench', 'User', 'Bench User', $2, $3, false, now(), now())",
                &[&self.user, &format!("{}@bench.invalid", self.user), &self.user.to_string()],
            )
            .await
            .map_err(|e| format!("insert user: {e}"))?;
        self.campaign = insert_campaign(&client, self.user, "Bench campaign").await?;
        self.rows = insert_characters(&client, self.campaign, self.user, FANOUT_ROWS).await?;
        client
            .batch_execute("VACUUM ANALYZE")
            .await
            .map_err(|e| format!("vacuum: {e}"))?;
        Ok(self)
    }

    /// A token for the bench user, valid for a day.
    pub fn token(&self) -> Result<String, String> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let claims = serde_json::json!({
            "sub": self.user.to_string(),
            "scp": "user",
            "jti": self.user.to_string(),
            "iat": now,
            "exp": now + 86_400,
        });
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .map_err(|e| format!("cannot sign a token: {e}"))
    }

    /// `/cable?token=Bearer%20<token>`.
    pub fn cable_path(&self) -> Result<String, String> {
        Ok(format!("/cable?token=Bearer%20{}", self.token()?))
    }

    /// Drops the database (closing whatever still uses it).
    pub async fn drop_database(&self) {
        match connect(&self.admin_url).await {
            Ok(admin) => {
                if let Err(e) = admin
                    .batch_execute(&format!(
                        "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                        self.name
                    ))
                    .await
                {
                    eprintln!("warning: could not drop database {}: {e}", self.name);
                }
            }
            Err(e) => eprintln!("warning: could not drop database {}: {e}", self.name),
        }
    }
}

/// The identifier a client subscribes to a campaign with.
pub fn campaign_identifier(campaign: Uuid) -> String {
    format!(r#"{{"channel":"CampaignChannel","id":"{campaign}"}}"#)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_database() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/postgres", "x").as_deref(),
            Ok("postgres://postgres@127.0.0.1:5432/x")
        );
        assert_eq!(
            with_database("postgres://u@h/db?sslmode=disable", "x").as_deref(),
            Ok("postgres://u@h/x?sslmode=disable")
        );
        assert_eq!(
            with_database("postgres://u@h", "x").as_deref(),
            Ok("postgres://u@h/x")
        );
    }
}
