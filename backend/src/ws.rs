//! One WebSocket session: a hello, then an echo of every data message, a ping
//! every `ping_interval` (the ALB closes connections idle for longer than its
//! idle timeout), and a close with 1001 (going away) when the server stops.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::ws::{close_code, CloseFrame, Message, WebSocket};
use serde_json::json;
use tokio::time::{interval_at, MissedTickBehavior};

use crate::log;
use crate::server::{AppState, VERSION};

/// How long to wait for the client's answer to our close frame.
const CLOSE_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);

/// What the upgrade request told us about the client.
pub struct Session {
    pub id: String,
    pub peer: SocketAddr,
    /// Set by the ALB: the client's address as the ALB saw it.
    pub forwarded_for: Option<String>,
}

pub async fn run(mut socket: WebSocket, session: Session, state: Arc<AppState>) {
    let started = Instant::now();
    log::info(
        "websocket session opened",
        json!({
            "session_id": session.id,
            "peer": session.peer.to_string(),
            "forwarded_for": session.forwarded_for,
        }),
    );
    state.usage.record("ws_session", json!({ "session_id": session.id }));

    let mut echoed: u64 = 0;
    let hello = json!({ "type": "hello", "session_id": session.id, "version": VERSION });
    let end = if socket.send(Message::Text(hello.to_string().into())).await.is_err() {
        "could not send the hello"
    } else {
        serve(&mut socket, &state, &mut echoed).await
    };

    log::info(
        "websocket session closed",
        json!({
            "session_id": session.id,
            "reason": end,
            "echoed": echoed,
            "duration_ms": u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        }),
    );
}

/// The session loop; returns why it ended.
async fn serve(socket: &mut WebSocket, state: &AppState, echoed: &mut u64) -> &'static str {
    let period = state.ping_interval;
    let mut ping = interval_at(tokio::time::Instant::now() + period, period);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            message = socket.recv() => {
                let reply = match message {
                    Some(Ok(message @ (Message::Text(_) | Message::Binary(_)))) => message,
                    // axum answers pings itself; pongs only prove liveness.
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    Some(Ok(Message::Close(_))) | None => return "closed by the client",
                    Some(Err(_)) => return "connection error",
                };
                if socket.send(reply).await.is_err() {
                    return "connection error";
                }
                *echoed += 1;
            }
            _ = ping.tick() => {
                if socket.send(Message::Ping(Bytes::from_static(b"casey"))).await.is_err() {
                    return "connection error";
                }
            }
            () = state.shutdown.cancelled() => {
                close_going_away(socket).await;
                return "server shutting down";
            }
        }
    }
}

/// Sends close code 1001 and waits, bounded, for the client's close frame so
/// the close handshake completes before the process exits.
async fn close_going_away(socket: &mut WebSocket) {
    let frame = CloseFrame { code: close_code::AWAY, reason: "server shutting down".into() };
    if socket.send(Message::Close(Some(frame))).await.is_err() {
        return;
    }
    let _ = tokio::time::timeout(CLOSE_HANDSHAKE_TIMEOUT, async {
        while let Some(Ok(message)) = socket.recv().await {
            if matches!(message, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}
