//! The HTTP server: `GET /health`, `GET /ws`, and the graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{rejection::WebSocketUpgradeRejection, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Map, Value};
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::aws;
use crate::config::Config;
use crate::error::Error;
use crate::log;
use crate::usage::{UsageLog, UsageWriter};
use crate::ws::{self, Session};

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// An id the build was given (`CASEY_BUILD_ID` when it was compiled), so
/// two builds of one version are told apart in the logs.
pub const BUILD: Option<&str> = option_env!("CASEY_BUILD_ID");

/// How long queued usage events may take to reach CloudWatch at shutdown.
const USAGE_FLUSH_TIMEOUT: Duration = Duration::from_secs(3);

/// What every handler shares, behind an `Arc`.
pub struct AppState {
    /// How often open WebSockets are pinged.
    pub ping_interval: Duration,
    pub usage: UsageLog,
    /// Cancelled on SIGTERM/SIGINT: sessions close with 1001.
    pub shutdown: CancellationToken,
    /// The open WebSocket sessions, so shutdown can wait for them: axum's
    /// graceful shutdown does not track upgraded connections.
    pub sessions: TaskTracker,
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new().route("/health", get(health)).route("/ws", get(ws_upgrade)).with_state(state)
}

async fn health() -> Json<Value> {
    Json(json!({ "status": "ok", "version": VERSION }))
}

/// Upgrades to a WebSocket. This is the last point where the request's
/// headers and the peer address can be read. A request that is not an upgrade
/// gets axum's 4xx status with a JSON body saying what is expected.
async fn ws_upgrade(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(rejection) => {
            let body = json!({
                "error": "`/ws` only accepts WebSocket upgrade requests",
                "detail": rejection.body_text(),
            });
            return (rejection.status(), Json(body)).into_response();
        }
    };
    let session = Session {
        id: Uuid::new_v4().to_string(),
        peer,
        forwarded_for: headers.get("x-forwarded-for").and_then(|value| value.to_str().ok()).map(str::to_owned),
    };
    let sessions = state.sessions.clone();
    upgrade
        .on_failed_upgrade(|error: axum::Error| {
            log::warn("websocket upgrade failed", json!({ "error": error.to_string() }))
        })
        .on_upgrade(move |socket| sessions.track_future(ws::run(socket, session, state)))
}

/// Runs the service until SIGTERM or SIGINT, then shuts down gracefully.
pub async fn run(config: Config) -> Result<(), Error> {
    let instance_id = Uuid::new_v4().to_string();
    log::info(
        "casey-backend starting",
        json!({
            "version": VERSION,
            "instance_id": instance_id,
            "bind_addr": config.bind_addr.to_string(),
            "usage_log_group": config.usage_log_group,
        }),
    );

    let (usage, usage_writer) = start_aws(&config, &instance_id).await?;

    let mut sigterm = signal(SignalKind::terminate()).map_err(|source| Error::Signal { source })?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(|source| Error::Signal { source })?;

    let listener =
        TcpListener::bind(config.bind_addr).await.map_err(|source| Error::Bind { addr: config.bind_addr, source })?;
    let local_addr = listener.local_addr().map_err(|source| Error::Serve { source })?;

    let shutdown = CancellationToken::new();
    let sessions = TaskTracker::new();
    let state = Arc::new(AppState {
        ping_interval: config.ping_interval,
        usage,
        shutdown: shutdown.clone(),
        sessions: sessions.clone(),
    });
    let app = router(state).into_make_service_with_connect_info::<SocketAddr>();
    let serve = axum::serve(listener, app).with_graceful_shutdown(shutdown.clone().cancelled_owned());
    let mut server = tokio::spawn(async move { serve.await });
    log::info("listening", json!({ "addr": local_addr.to_string(), "version": VERSION, "build": BUILD }));

    let signal_name = tokio::select! {
        name = next_signal(&mut sigterm, &mut sigint) => name,
        result = &mut server => {
            let source = match result {
                Ok(Err(error)) => error,
                Ok(Ok(())) => std::io::Error::other("the server stopped unexpectedly"),
                Err(error) => std::io::Error::other(error),
            };
            return Err(Error::Serve { source });
        }
    };
    log::info(
        "shutting down",
        json!({
            "signal": signal_name,
            "open_websockets": sessions.len(),
            "timeout_secs": config.shutdown_timeout.as_secs(),
        }),
    );
    shutdown.cancel();
    sessions.close();
    let drain = async {
        let _ = server.await;
        sessions.wait().await;
    };
    tokio::select! {
        result = tokio::time::timeout(config.shutdown_timeout, drain) => {
            if result.is_err() {
                log::warn(
                    "shutdown timed out, exiting with connections still open",
                    json!({ "open_websockets": sessions.len() }),
                );
            }
        }
        name = next_signal(&mut sigterm, &mut sigint) => {
            log::warn("second signal, exiting now", json!({ "signal": name }));
        }
    }

    if let Some(writer) = usage_writer {
        writer.stop.cancel();
        if tokio::time::timeout(USAGE_FLUSH_TIMEOUT, writer.task).await.is_err() {
            log::warn("usage events not flushed before exit", json!({}));
        }
    }
    log::info("stopped", json!({}));
    Ok(())
}

/// Loads AWS access, applies the identity guard and starts the usage log.
/// Without credentials the service runs without AWS.
async fn start_aws(config: &Config, instance_id: &str) -> Result<(UsageLog, Option<UsageWriter>), Error> {
    let Some(sdk_config) = aws::load().await? else {
        log::warn("no AWS credentials found: running without AWS (identity guard and usage log are off)", json!({}));
        return Ok((UsageLog::disabled(), None));
    };
    let identity = aws::check_identity(&sdk_config, &config.admin_user).await?;
    let mut common = Map::new();
    common.insert("service".into(), "casey-backend".into());
    common.insert("version".into(), VERSION.into());
    common.insert("instance_id".into(), instance_id.into());
    common.insert("principal_arn".into(), identity.arn.into());
    let (usage, writer) = UsageLog::start(&sdk_config, &config.usage_log_group, instance_id, common);
    usage.record("backend_start", json!({ "account": identity.account }));
    Ok((usage, Some(writer)))
}

async fn next_signal(sigterm: &mut Signal, sigint: &mut Signal) -> &'static str {
    tokio::select! {
        _ = sigterm.recv() => "SIGTERM",
        _ = sigint.recv() => "SIGINT",
    }
}
