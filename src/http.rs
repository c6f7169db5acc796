//! HTTP routes: `/cable` (the WebSocket), `/health`, `/ready`, `/metrics`, `/shadow` (shadow
//! mode's summary), `/demo` (the static live page of `pgcable dev`, [`crate::dev::DEMO_HTML`])
//! and, only under `pgcable dev`, the page's data `/demo/state` ([`crate::demo_state`]).
//!
//! Owns the HTTP/1.1 connections (accepting, the header-read timeout, graceful stop), the
//! handshake rules of protocol.md §1 (subprotocol, origin, 404s) and the operator endpoints.
//! Calls the connection for each upgraded socket and reads the shared state.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;
use warp::http::{HeaderMap, HeaderValue, StatusCode};
use warp::reply::Response;
use warp::Filter;

use crate::cable::{auth, connection};
use crate::shutdown::Shutdown;
use crate::state::State;

/// The subprotocols pgcable speaks, in the order ActionCable lists them.
const PROTOCOLS: [&str; 2] = ["actioncable-v1-json", "actioncable-unsupported"];

/// Bytes tungstenite reads from a socket at a time. Its default (128 KiB, zero-filled up
/// front) cost more than everything else an idle connection holds; client frames are small
/// commands, and a larger frame is simply read in several calls.
const READ_BUFFER_BYTES: usize = 4096;

/// Serves the routes on `listener` until `shutdown`: then stops accepting and waits for the
/// HTTP requests in flight. Upgraded WebSockets are not HTTP requests any more; they end
/// through the hub.
pub async fn serve(listener: TcpListener, state: Arc<State>, mut shutdown: Shutdown) {
    // The header-read timeout runs from the moment the server waits for a request (a new
    // connection, or a kept-alive one between requests): without it, sockets that never finish
    // a request would be held forever (slowloris).
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(state.config.header_timeout);
    let service = TowerToHyperService::new(warp::service(routes(state)));
    // One clone per open HTTP connection, to wait for them at the end.
    let open = Arc::new(());
    loop {
        let stream = tokio::select! {
            _ = shutdown.wait() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(e) => {
                    // Out of file descriptors, most likely: the clients already connected are
                    // served on; the new ones wait in the backlog until one leaves.
                    tracing::warn!(error = %e, "accept error");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        // Frames are written whole and flushed: don't let Nagle hold the last piece back.
        let _ = stream.set_nodelay(true);
        let conn = http
            .serve_connection(TokioIo::new(stream), service.clone())
            .with_upgrades();
        let mut stop = shutdown.clone();
        let open = open.clone();
        tokio::spawn(async move {
            tokio::pin!(conn);
            let ended = tokio::select! {
                r = conn.as_mut() => Some(r),
                _ = stop.wait() => None,
            };
            let result = match ended {
                Some(r) => r,
                None => {
                    // Finish the request in flight, if any, then close.
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "http connection ended with an error");
            }
            drop(open);
        });
    }
    drop(listener);
    while Arc::strong_count(&open) > 1 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every route of the relay.
pub fn routes(
    state: Arc<State>,
) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone + Send + Sync + 'static {
    let with_state = {
        let state = state.clone();
        warp::any().map(move || state.clone())
    };
    let cable = warp::path("cable")
        .and(warp::path::end())
        .and(warp::get())
        .and(warp::header::headers_cloned())
        .and(warp::query::raw().or(warp::any().map(String::new)).unify())
        .and(warp::ext::optional::<OnUpgrade>())
        .and(with_state.clone())
        .map(cable);
    let health = warp::path("health")
        .and(warp::path::end())
        .map(|| json_reply(StatusCode::OK, r#"{"status":"ok"}"#.to_string()));
    let ready = warp::path("ready")
        .and(warp::path::end())
        .and(with_state.clone())
        .map(|state: Arc<State>| {
            let listener = state.listening.load(Ordering::Relaxed);
            let triggers = state.triggers_current.load(Ordering::Relaxed);
            // The bridge is degraded service, not an outage: it never makes the relay unready.
            let bridge = match state.config.bridge {
                Some(_) => format!(
                    r#","bridge":{}"#,
                    state.bridge_up.load(Ordering::Relaxed)
                ),
                None => String::new(),
            };
            let ok = listener && triggers;
            let status = if ok {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            json_reply(
                status,
                format!(
                    r#"{{"ready":{ok},"listener":{listener},"triggers_current":{triggers}{bridge}}}"#
                ),
            )
        });
    let shadow = warp::path("shadow")
        .and(warp::path::end())
        .and(with_state.clone())
        .map(|state: Arc<State>| match &state.shadow {
            Some(shadow) => json_reply(StatusCode::OK, shadow.summary().to_string()),
            None => json_reply(
                StatusCode::NOT_FOUND,
                r#"{"enabled":false,"error":"shadow mode is off: set PGCABLE_SHADOW=true (with PGCABLE_REDIS_URL)"}"#
                    .to_string(),
            ),
        });
    let metrics = warp::path("metrics")
        .and(warp::path::end())
        .and(with_state.clone())
        .map(|state: Arc<State>| {
            state
                .metrics
                .hub_size(state.hub.stream_count(), state.hub.subscription_count());
            let mut r = Response::new(state.metrics.render().into());
            r.headers_mut().insert(
                "content-type",
                warp::http::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            r
        });
    let demo = warp::path("demo").and(warp::path::end()).map(|| {
        let mut r = Response::new(crate::dev::DEMO_HTML.into());
        r.headers_mut().insert(
            "content-type",
            warp::http::HeaderValue::from_static("text/html; charset=utf-8"),
        );
        r.headers_mut().insert(
            "cache-control",
            warp::http::HeaderValue::from_static("no-store"),
        );
        r
    });
    // Only under `pgcable dev` (`config.demo`); otherwise the same 404 as any unknown path.
    let demo_state = warp::path!("demo" / "state")
        .and(warp::header::optional::<String>("authorization"))
        .and(warp::query::raw().or(warp::any().map(String::new)).unify())
        .and(with_state.clone())
        .then(demo_state);
    warp::get()
        .and(
            cable
                .or(health)
                .unify()
                .or(ready)
                .unify()
                .or(metrics)
                .unify()
                .or(shadow)
                .unify()
                .or(demo)
                .unify()
                .or(demo_state)
                .unify(),
        )
        .recover(|_| async { Ok::<_, Infallible>(not_found()) })
        .unify()
}

fn json_reply(status: StatusCode, body: String) -> Response {
    let mut r = Response::new(body.into());
    *r.status_mut() = status;
    r.headers_mut().insert(
        "content-type",
        warp::http::HeaderValue::from_static("application/json"),
    );
    r
}

async fn demo_state(authorization: Option<String>, query: String, state: Arc<State>) -> Response {
    let Some(demo) = state.config.demo.as_ref() else {
        return not_found();
    };
    let (status, body) =
        crate::demo_state::answer(&state, demo, authorization.as_deref(), &query).await;
    let mut r = json_reply(status, body);
    r.headers_mut()
        .insert("cache-control", HeaderValue::from_static("no-store"));
    r
}

/// What Rails answers to anything it won't upgrade.
fn not_found() -> Response {
    let mut r = Response::new("Page not found".into());
    *r.status_mut() = StatusCode::NOT_FOUND;
    r.headers_mut().insert(
        "content-type",
        warp::http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn cable(
    headers: HeaderMap,
    query: String,
    upgrade: Option<OnUpgrade>,
    state: Arc<State>,
) -> Response {
    let (Some(key), Some(upgrade)) = (websocket_key(&headers), upgrade) else {
        return not_found();
    };
    if !origin_allowed(&headers, state.config.allowed_origins.as_deref()) {
        tracing::info!(origin = ?headers.get("origin"), "upgrade refused: origin not allowed");
        return not_found();
    }
    if state.hub.session_count() >= state.config.max_connections {
        tracing::warn!("upgrade refused: at the connection limit");
        let mut r = Response::new("Too many connections".into());
        *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        r.headers_mut()
            .insert("retry-after", HeaderValue::from_static("5"));
        return r;
    }
    let token = auth::token_from_query(&query);
    let limit = state.config.max_frame_bytes;
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        .max_message_size(Some(limit))
        .max_frame_size(Some(limit));
    tokio::spawn(async move {
        match upgrade.await {
            Ok(upgraded) => {
                let socket = WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    Some(config),
                )
                .await;
                connection::run(socket, state, token).await;
            }
            Err(e) => tracing::debug!(error = %e, "websocket upgrade failed"),
        }
    });

    let mut r = Response::default();
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert("connection", HeaderValue::from_static("upgrade"));
    h.insert("upgrade", HeaderValue::from_static("websocket"));
    if let Ok(accept) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
        h.insert("sec-websocket-accept", accept);
    }
    if let Some(p) = select_protocol(&headers) {
        h.insert("sec-websocket-protocol", HeaderValue::from_static(p));
    }
    r
}

/// The `Sec-WebSocket-Key` of a valid RFC 6455 upgrade request, or `None` when the request is
/// not one (Rails answers those with its 404).
fn websocket_key(headers: &HeaderMap) -> Option<&str> {
    let has_token = |name: &str, token: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    let version = headers
        .get("sec-websocket-version")
        .and_then(|v| v.to_str().ok());
    if !has_token("connection", "upgrade")
        || !has_token("upgrade", "websocket")
        || version != Some("13")
    {
        return None;
    }
    headers
        .get("sec-websocket-key")
        .and_then(|v| v.to_str().ok())
        .filter(|k| !k.is_empty())
}

/// The first protocol the client offers that pgcable speaks (protocol.md §1).
fn select_protocol(headers: &HeaderMap) -> Option<&'static str> {
    headers
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .find_map(|offered| PROTOCOLS.iter().copied().find(|p| *p == offered))
}

/// Whether the `Origin` is listed or is the same origin (protocol.md §1).
fn origin_allowed(headers: &HeaderMap, allowed: Option<&[String]>) -> bool {
    let Some(allowed) = allowed else {
        return true;
    };
    let Some(origin) = headers.get("origin").and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let origin = origin.trim_end_matches('/');
    if allowed.iter().any(|a| a == origin) {
        return true;
    }
    let host = headers.get("host").and_then(|v| v.to_str().ok());
    match (host, origin.split_once("://")) {
        (Some(host), Some((_scheme, rest))) => rest == host,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, warp::http::HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn protocol_selection() {
        let h = headers(&[(
            "sec-websocket-protocol",
            "actioncable-v1-json, actioncable-unsupported",
        )]);
        assert_eq!(select_protocol(&h), Some("actioncable-v1-json"));
        let h = headers(&[("sec-websocket-protocol", "actioncable-unsupported")]);
        assert_eq!(select_protocol(&h), Some("actioncable-unsupported"));
        let h = headers(&[("sec-websocket-protocol", "chat, superchat")]);
        assert_eq!(select_protocol(&h), None);
        assert_eq!(select_protocol(&HeaderMap::new()), None);
    }

    #[test]
    fn upgrade_requests() {
        let ok = [
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "WebSocket"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ];
        assert_eq!(
            websocket_key(&headers(&ok)),
            Some("dGhlIHNhbXBsZSBub25jZQ==")
        );
        for missing in 0..ok.len() {
            let mut h = ok.to_vec();
            h.remove(missing);
            assert_eq!(
                websocket_key(&headers(&h)),
                None,
                "without {:?}",
                ok[missing]
            );
        }
        let mut old = ok;
        old[2] = ("sec-websocket-version", "8");
        assert_eq!(websocket_key(&headers(&old)), None);
    }

    #[test]
    fn origins() {
        let allowed = vec!["https://chiwar.net".to_string()];
        assert!(origin_allowed(&HeaderMap::new(), None));
        assert!(!origin_allowed(&HeaderMap::new(), Some(&allowed)));
        let h = headers(&[("origin", "https://chiwar.net")]);
        assert!(origin_allowed(&h, Some(&allowed)));
        let h = headers(&[("origin", "https://evil.example")]);
        assert!(!origin_allowed(&h, Some(&allowed)));
        let h = headers(&[("origin", "http://relay:8080"), ("host", "relay:8080")]);
        assert!(origin_allowed(&h, Some(&allowed)));
    }
}
