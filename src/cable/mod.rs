//! The ActionCable protocol: frames, connections, channels, presence and authentication.
//!
//! Owns everything between a socket and the hub. Calls the hub and the query pool.

pub mod auth;
pub mod channels;
pub mod connection;
pub mod frame;
pub mod outbox;
pub mod presence;
