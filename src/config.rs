//! Every setting of the relay in one struct, read once from flags and the environment.
//!
//! Owns parsing and validation of configuration; calls only the bridge's skip-rule parser.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;

use crate::bridge::skip::{SkipRules, DEFAULT_SKIP};

/// Default database: the local server with trust auth, as on a developer machine.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// Settings shared by every subcommand that talks to Postgres.
#[derive(Args, Debug, Clone)]
pub struct DbArgs {
    /// Postgres connection string (URL or key=value); honours libpq's sslmode (disable, allow,
    /// prefer, require, verify-ca, verify-full) and sslrootcert (a CA file, or `system`).
    #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_DATABASE_URL)]
    pub database_url: String,
}

/// Settings of `pgcable serve`.
#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    #[command(flatten)]
    pub db: DbArgs,

    /// HS256 secret the legacy app signs its JWTs with (required).
    #[arg(long, env = "DEVISE_JWT_SECRET_KEY", hide_env_values = true)]
    pub devise_jwt_secret_key: Option<String>,

    /// Address to listen on.
    #[arg(long, env = "PGCABLE_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Comma-separated origins allowed to open /cable; unset accepts every origin.
    #[arg(long, env = "ALLOWED_ORIGINS")]
    pub allowed_origins: Option<String>,

    /// ImageKit endpoint used to build image URLs from blob paths.
    #[arg(long, env = "IMAGEKIT_URL_ENDPOINT")]
    pub imagekit_url_endpoint: Option<String>,

    /// The `<app>` part of `gid://<app>/User/<id>` connection identifiers.
    #[arg(long, env = "PGCABLE_APP_NAME", default_value = "shot-server")]
    pub app_name: String,

    /// Bytes a connection may have queued for sending before it is dropped as too slow.
    #[arg(long, env = "PGCABLE_OUTBOX_BYTES", default_value_t = 1 << 20)]
    pub outbox_bytes: usize,

    /// Largest inbound WebSocket message, in bytes.
    #[arg(long, env = "PGCABLE_MAX_FRAME_BYTES", default_value_t = 64 << 10)]
    pub max_frame_bytes: usize,

    /// Most concurrent WebSocket connections; more are refused with 503.
    #[arg(long, env = "PGCABLE_MAX_CONNECTIONS", default_value_t = 100_000)]
    pub max_connections: usize,

    /// Most subscriptions one connection may hold; more are rejected.
    #[arg(long, env = "PGCABLE_MAX_SUBSCRIPTIONS", default_value_t = 256)]
    pub max_subscriptions: usize,

    /// Seconds to wait for clients to go on shutdown before exiting anyway.
    #[arg(long, env = "PGCABLE_SHUTDOWN_TIMEOUT", default_value_t = 10)]
    pub shutdown_timeout_secs: u64,

    /// Seconds a client may take to send an HTTP request's headers before it is disconnected.
    #[arg(long, env = "PGCABLE_HEADER_TIMEOUT", default_value_t = 10)]
    pub header_timeout_secs: u64,

    /// Seconds an access decision (may this user see this campaign) is cached.
    #[arg(long, env = "PGCABLE_ACCESS_CACHE_SECS", default_value_t = 30)]
    pub access_cache_secs: u64,

    /// Connections in the query pool (re-reads, authorization).
    #[arg(long, env = "PGCABLE_POOL_SIZE", default_value_t = 8)]
    pub pool_size: usize,

    /// Reject tokens without `exp`.
    #[arg(long, env = "PGCABLE_REQUIRE_EXP", default_value_t = false)]
    pub require_exp: bool,

    /// Reject tokens whose `jti` differs from `users.jti` (devise-jwt JTIMatcher).
    #[arg(long, env = "PGCABLE_CHECK_JTI", default_value_t = false)]
    pub check_jti: bool,

    /// Reject users whose `active` is false.
    #[arg(long, env = "PGCABLE_REQUIRE_ACTIVE_USER", default_value_t = false)]
    pub require_active_user: bool,

    /// Redis the Rails app's ActionCable publishes to (its `config/cable.yml` url); unset: no
    /// bridge.
    #[arg(long, env = "PGCABLE_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,

    /// The Rails cable's `channel_prefix`; empty means none.
    #[arg(
        long,
        env = "PGCABLE_REDIS_CHANNEL_PREFIX",
        default_value = "shot_server_production"
    )]
    pub redis_channel_prefix: String,

    /// Rails messages the bridge does not forward because pgcable's own feed sends them
    /// (`kind:key` or `kind:key=value`, comma-separated; empty forwards everything).
    #[arg(long, env = "PGCABLE_BRIDGE_SKIP", default_value = DEFAULT_SKIP)]
    pub bridge_skip: String,

    /// Compare the skipped Rails messages with pgcable's own (needs PGCABLE_REDIS_URL).
    #[arg(long, env = "PGCABLE_SHADOW", default_value_t = false)]
    pub shadow: bool,

    /// Seconds a message waits for its counterpart from the other side in shadow mode.
    #[arg(long, env = "PGCABLE_SHADOW_WINDOW_SECS", default_value_t = 10)]
    pub shadow_window_secs: u64,
}

/// Validated settings the running relay uses.
#[derive(Debug, Clone)]
pub struct Config {
    pub database_url: String,
    pub jwt_secret: String,
    pub listen: SocketAddr,
    pub allowed_origins: Option<Vec<String>>,
    pub imagekit_endpoint: Option<String>,
    pub app_name: String,
    pub outbox_bytes: usize,
    pub max_frame_bytes: usize,
    pub max_connections: usize,
    pub max_subscriptions: usize,
    pub shutdown_timeout: Duration,
    pub header_timeout: Duration,
    pub access_cache_ttl: Duration,
    pub pool_size: usize,
    pub require_exp: bool,
    pub check_jti: bool,
    pub require_active_user: bool,
    /// The bridge from the Rails cable's Redis; `None` when off.
    pub bridge: Option<BridgeConfig>,
    /// The live page's data endpoint `GET /demo/state`: set only by `pgcable dev`. `None` (the
    /// default, and always for `serve`) leaves the route unserved (404), so a production relay
    /// never hands out rows over plain HTTP.
    pub demo: Option<crate::dev::Demo>,
}

/// Settings of the Rails bridge (bridge.md §2) and of shadow mode (§3).
#[derive(Debug, Clone)]
pub struct BridgeConfig {
    /// `redis://…` of the Rails cable.
    pub redis_url: String,
    /// `channel_prefix` of the Rails cable (empty: none).
    pub channel_prefix: String,
    /// Messages not forwarded (the feed sends them).
    pub skip: SkipRules,
    /// Shadow mode's window; `None` when shadow mode is off.
    pub shadow_window: Option<Duration>,
}

impl BridgeConfig {
    /// A bridge to `redis_url` with the default prefix and skip rules, shadow mode off.
    pub fn new(redis_url: &str) -> BridgeConfig {
        BridgeConfig {
            redis_url: redis_url.to_string(),
            channel_prefix: "shot_server_production".into(),
            skip: SkipRules::default(),
            shadow_window: None,
        }
    }
}

impl Config {
    /// Validates `serve` arguments; the error is one line a person can act on.
    pub fn from_args(args: ServeArgs) -> Result<Config, String> {
        let jwt_secret = match args.devise_jwt_secret_key {
            Some(s) if !s.is_empty() => s,
            _ => {
                return Err("DEVISE_JWT_SECRET_KEY is not set: export the secret the Rails app signs its JWTs with (or pass --devise-jwt-secret-key)".into())
            }
        };
        let allowed_origins = args.allowed_origins.map(|s| {
            s.split(',')
                .map(|o| o.trim().trim_end_matches('/').to_string())
                .filter(|o| !o.is_empty())
                .collect::<Vec<_>>()
        });
        if args.pool_size == 0 {
            return Err("PGCABLE_POOL_SIZE must be at least 1".into());
        }
        if args.outbox_bytes < 4096 {
            return Err("PGCABLE_OUTBOX_BYTES must be at least 4096".into());
        }
        let skip =
            SkipRules::parse(&args.bridge_skip).map_err(|e| format!("PGCABLE_BRIDGE_SKIP: {e}"))?;
        let bridge = match args.redis_url.filter(|u| !u.trim().is_empty()) {
            Some(redis_url) => {
                if args.shadow && args.shadow_window_secs == 0 {
                    return Err("PGCABLE_SHADOW_WINDOW_SECS must be at least 1".into());
                }
                Some(BridgeConfig {
                    redis_url: redis_url.trim().to_string(),
                    channel_prefix: args.redis_channel_prefix,
                    skip,
                    shadow_window: args
                        .shadow
                        .then(|| Duration::from_secs(args.shadow_window_secs)),
                })
            }
            None if args.shadow => {
                return Err("PGCABLE_SHADOW=true needs the bridge: set PGCABLE_REDIS_URL to the Redis the Rails cable publishes to".into())
            }
            None => None,
        };
        Ok(Config {
            database_url: args.db.database_url,
            jwt_secret,
            listen: args.listen,
            allowed_origins,
            imagekit_endpoint: args.imagekit_url_endpoint.filter(|s| !s.trim().is_empty()),
            app_name: args.app_name,
            outbox_bytes: args.outbox_bytes,
            max_frame_bytes: args.max_frame_bytes,
            max_connections: args.max_connections,
            max_subscriptions: args.max_subscriptions,
            shutdown_timeout: Duration::from_secs(args.shutdown_timeout_secs),
            header_timeout: Duration::from_secs(args.header_timeout_secs.max(1)),
            access_cache_ttl: Duration::from_secs(args.access_cache_secs),
            pool_size: args.pool_size,
            require_exp: args.require_exp,
            check_jti: args.check_jti,
            require_active_user: args.require_active_user,
            bridge,
            demo: None,
        })
    }

    /// A config for tests and embedding, with every default and the given database and secret.
    pub fn new(database_url: &str, jwt_secret: &str) -> Config {
        Config {
            database_url: database_url.to_string(),
            jwt_secret: jwt_secret.to_string(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            allowed_origins: None,
            imagekit_endpoint: None,
            app_name: "shot-server".into(),
            outbox_bytes: 1 << 20,
            max_frame_bytes: 64 << 10,
            max_connections: 100_000,
            max_subscriptions: 256,
            shutdown_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(10),
            access_cache_ttl: Duration::from_secs(30),
            pool_size: 8,
            require_exp: false,
            check_jti: false,
            require_active_user: false,
            bridge: None,
            demo: None,
        }
    }
}
