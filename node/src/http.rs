//! The HTTP endpoint: `/health` (the process is alive and serving), `/ready` (joined, config
//! caught up, lease valid, and the MQTT ingress able to reach the broker; 503 with the reason
//! otherwise), `/metrics` (Prometheus text format) and the web console (`/ui`).

use std::future::IntoFuture;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Why the node is or is not ready.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Readiness {
    /// True when the node may receive traffic.
    pub ready: bool,
    /// Human-readable reason.
    pub reason: String,
    /// This node is a ring member in its applied config.
    pub member: bool,
    /// A Raft leader is known.
    pub leader_known: bool,
    /// Applied config index.
    pub applied_index: u64,
    /// Committed index the leader gossips (0 if unknown).
    pub leader_committed_index: u64,
    /// The MQTT ingress (absent without a broker).
    pub mqtt: Option<crate::ingress::IngressReadiness>,
}

#[derive(Clone)]
struct HttpState {
    node_id: String,
    readiness: watch::Receiver<Readiness>,
    prometheus: Option<PrometheusHandle>,
}

/// Serves HTTP on `listener` until `shutdown` is cancelled; with `console`, also the web
/// console under `/ui` ([`crate::console`]).
pub async fn serve(
    listener: TcpListener,
    node_id: String,
    readiness: watch::Receiver<Readiness>,
    prometheus: Option<PrometheusHandle>,
    console: Option<crate::console::Console>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let state = HttpState {
        node_id,
        readiness,
        prometheus,
    };
    let upkeep_handle = state.prometheus.clone();
    let mut app = Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .with_state(state);
    if let Some(console) = console {
        app = app.merge(crate::console::router(console));
    }
    let server = axum::serve(listener, app).with_graceful_shutdown(shutdown.clone().cancelled_owned());
    // The recorder's upkeep runs here, owned by the HTTP task and stopped with it.
    let upkeep = async {
        let Some(handle) = upkeep_handle else { return };
        let mut every = tokio::time::interval(crate::metrics::UPKEEP_EVERY);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = every.tick() => handle.run_upkeep(),
            }
        }
    };
    let (served, ()) = tokio::join!(server.into_future(), upkeep);
    served
}

async fn health(State(state): State<HttpState>) -> impl IntoResponse {
    Json(serde_json::json!({ "status": "ok", "node_id": state.node_id }))
}

async fn ready(State(state): State<HttpState>) -> impl IntoResponse {
    let readiness = state.readiness.borrow().clone();
    let code = if readiness.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(readiness))
}

async fn metrics(State(state): State<HttpState>) -> impl IntoResponse {
    match &state.prometheus {
        Some(handle) => (StatusCode::OK, handle.render()),
        None => (
            StatusCode::NOT_FOUND,
            "metrics recorder not installed\n".to_string(),
        ),
    }
}
