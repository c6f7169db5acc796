//! Counters, gauges and histograms, exported at `GET /metrics` in Prometheus text format.
//!
//! Owns metric names. Every station reports through [`Metrics`]; nothing reads them back but
//! the exporter (and tests, through the rendered text).

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// The relay's metrics. Cheap to clone; all instances share the process-wide recorder.
#[derive(Debug, Clone, Default)]
pub struct Metrics;

impl Metrics {
    /// Installs the process-wide recorder once (later calls reuse it).
    pub fn install() -> Metrics {
        HANDLE.get_or_init(|| {
            let buckets = [
                0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
            ];
            match PrometheusBuilder::new()
                .set_buckets(&buckets)
                .and_then(|b| b.install_recorder())
            {
                Ok(handle) => Some(handle),
                Err(e) => {
                    tracing::warn!(error = %e, "metrics recorder not installed");
                    None
                }
            }
        });
        Metrics
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        match HANDLE.get() {
            Some(Some(h)) => h.render(),
            _ => String::new(),
        }
    }

    /// A WebSocket connection was authenticated.
    pub fn connection_opened(&self) {
        counter!("pgcable_connections_opened_total").increment(1);
        gauge!("pgcable_connections").increment(1.0);
    }

    /// An authenticated connection ended.
    pub fn connection_closed(&self) {
        gauge!("pgcable_connections").decrement(1.0);
    }

    /// A connection was refused at authentication.
    pub fn rejected_auth(&self, reason: &'static str) {
        counter!("pgcable_auth_rejected_total", "reason" => reason).increment(1);
    }

    /// A subscription was rejected.
    pub fn rejected_subscription(&self, reason: &'static str) {
        counter!("pgcable_subscriptions_rejected_total", "reason" => reason).increment(1);
    }

    /// A client frame arrived.
    pub fn message_in(&self) {
        counter!("pgcable_messages_in_total").increment(1);
    }

    /// A broadcast went to `frames` subscriptions.
    pub fn broadcast(&self, frames: usize) {
        counter!("pgcable_broadcasts_total").increment(1);
        counter!("pgcable_messages_out_total").increment(frames as u64);
    }

    /// A connection was dropped because it stopped reading.
    pub fn slow_client_dropped(&self) {
        counter!("pgcable_slow_client_disconnects_total").increment(1);
    }

    /// A NOTIFY arrived on the listener.
    pub fn notification(&self) {
        counter!("pgcable_notifications_total").increment(1);
    }

    /// The listener reconnected after losing its connection.
    pub fn listener_reconnect(&self) {
        counter!("pgcable_listener_reconnects_total").increment(1);
    }

    /// A row change joined one already queued or in flight.
    pub fn coalesced(&self, n: u64) {
        counter!("pgcable_coalesced_events_total").increment(n);
    }

    /// A change to a row without a campaign (nothing to send).
    pub fn campaignless_change(&self) {
        counter!("pgcable_campaignless_changes_total").increment(1);
    }

    /// Rows owed a payload were not re-read: nobody watched their campaign.
    pub fn rereads_skipped(&self, rows: u64) {
        counter!("pgcable_rereads_skipped_total").increment(rows);
    }

    /// A connection's cached re-read statements were invalidated (schema change) and dropped.
    pub fn statements_reprepared(&self) {
        counter!("pgcable_statements_reprepared_total").increment(1);
    }

    /// A batch of rows was re-read and rendered.
    pub fn reread(&self, took: Duration) {
        histogram!("pgcable_reread_seconds").record(took.as_secs_f64());
    }

    /// An access decision was asked of the database.
    pub fn access_query(&self) {
        counter!("pgcable_access_queries_total").increment(1);
    }

    /// A subscription lost its access while held; its connection was ended.
    pub fn access_revoked(&self) {
        counter!("pgcable_access_revocations_total").increment(1);
    }

    /// A batch of fights' encounters was read and rendered.
    pub fn encounter_render(&self, took: Duration) {
        histogram!("pgcable_encounter_render_seconds").record(took.as_secs_f64());
    }

    /// An encounter went to the hub.
    pub fn encounter_sent(&self) {
        counter!("pgcable_encounters_total").increment(1);
    }

    /// A message went to the hub; `at` is when the writer's statement ran (µs since the epoch).
    pub fn commit_to_send(&self, at: Option<i64>) {
        let Some(at) = at else {
            return;
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .unwrap_or(at);
        let seconds = (now - at).max(0) as f64 / 1e6;
        histogram!("pgcable_commit_to_send_seconds").record(seconds);
    }

    /// NOTIFY queue usage (0..1) as reported by Postgres.
    pub fn notify_queue_usage(&self, usage: f64) {
        gauge!("pgcable_notify_queue_usage").set(usage);
    }

    /// Gauges of the hub's size.
    pub fn hub_size(&self, streams: usize, subscriptions: usize) {
        gauge!("pgcable_streams").set(streams as f64);
        gauge!("pgcable_subscriptions").set(subscriptions as f64);
    }
}
