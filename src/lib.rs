//! pgcable: a Postgres change-feed relay that speaks ActionCable.
//!
//! Data flows one way: trigger → `NOTIFY` → [`feed`] → [`render`] → [`hub`] → [`cable`] → client.
//! A second input joins at the hub during a migration: the Rails app's ActionCable broadcasts
//! (Redis) → [`bridge`] → [`hub`], delivered exactly like the feed's.
//! [`server`] wires the stations together and owns shutdown; [`http`] serves the routes.

pub mod bridge;
pub mod cable;
pub mod check;
pub mod config;
pub mod db;
pub mod demo_state;
pub mod dev;
pub mod feed;
pub mod http;
pub mod hub;
pub mod metrics;
pub mod render;
pub mod server;
pub mod shutdown;
pub mod state;
pub mod tls;
pub mod triggers;
