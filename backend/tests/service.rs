//! The service without AWS: /health, the healthcheck mode, the WebSocket, the
//! graceful shutdown, and configuration errors.

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use common::{http_get, Backend, BIN, STARTUP};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

type Client = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

const WAIT: Duration = Duration::from_secs(10);

async fn connect(addr: SocketAddr) -> Client {
    let (client, response) =
        tokio_tungstenite::connect_async(format!("ws://{addr}/ws")).await.expect("the WebSocket handshake failed");
    assert_eq!(response.status(), 101);
    client
}

/// The next text message, parsed as JSON (pings are skipped).
async fn next_text(client: &mut Client) -> String {
    loop {
        let message = tokio::time::timeout(WAIT, client.next())
            .await
            .expect("no message in time")
            .expect("the connection ended")
            .expect("WebSocket error");
        match message {
            Message::Text(text) => return text.to_string(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected message {other:?}"),
        }
    }
}

#[test]
fn health_answers_and_healthcheck_mode_agrees() {
    let (mut backend, addr) = Backend::start_listening(&[]);
    let (status, body) = http_get(addr, "/health");
    assert_eq!(status, 200);
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["status"], "ok");
    assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));

    // The container health check: by port (wildcard bind → 127.0.0.1) and by
    // full bind address.
    let probe =
        |var: &str, value: String| Command::new(BIN).arg("healthcheck").env_clear().env(var, value).output().unwrap();
    assert!(probe("PORT", addr.port().to_string()).status.success());
    assert!(probe("CASEY_BIND_ADDR", addr.to_string()).status.success());

    // Without credentials the service says so and runs.
    backend.wait_for_log("no AWS credentials found: running without AWS (identity guard and usage log are off)", WAIT);
    backend.signal(libc::SIGTERM);
    assert!(backend.wait_exit(STARTUP).success());

    // Nothing listens any more: the probe fails.
    let failed = probe("CASEY_BIND_ADDR", addr.to_string());
    assert_eq!(failed.status.code(), Some(1));
    let line: Value = serde_json::from_slice(&failed.stdout).unwrap();
    assert_eq!(line["message"], "healthcheck failed");
}

#[test]
fn plain_get_on_ws_is_a_client_error() {
    let (_backend, addr) = Backend::start_listening(&[]);
    let (status, body) = http_get(addr, "/ws");
    assert!((400..500).contains(&status), "status {status}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["error"], "`/ws` only accepts WebSocket upgrade requests");
}

#[tokio::test]
async fn websocket_says_hello_and_echoes() {
    let (mut backend, addr) = Backend::start_listening(&[]);
    let mut client = connect(addr).await;

    let hello: Value = serde_json::from_str(&next_text(&mut client).await).unwrap();
    assert_eq!(hello["type"], "hello");
    assert_eq!(hello["version"], env!("CARGO_PKG_VERSION"));
    let session_id = hello["session_id"].as_str().unwrap();
    assert!(!session_id.is_empty());

    for text in ["ping from the test", "{\"json\":true}", "üñíçødé"] {
        client.send(Message::text(text)).await.unwrap();
        assert_eq!(next_text(&mut client).await, text);
    }
    client.close(None).await.unwrap();

    let closed = backend.wait_for_log("websocket session closed", WAIT);
    assert_eq!(closed["session_id"], session_id);
    assert_eq!(closed["echoed"], 3);
}

#[tokio::test]
async fn server_pings_open_websockets() {
    let (_backend, addr) = Backend::start_listening(&[("CASEY_WS_PING_SECS", "1")]);
    let mut client = connect(addr).await;
    let ping = tokio::time::timeout(WAIT, async {
        loop {
            match client.next().await {
                Some(Ok(Message::Ping(payload))) => return payload,
                Some(Ok(_)) => continue,
                other => panic!("the connection ended: {other:?}"),
            }
        }
    })
    .await
    .expect("no ping within 10 s with a 1 s ping interval");
    assert_eq!(&ping[..], b"casey");
}

#[tokio::test]
async fn sigterm_closes_websockets_with_1001_and_exits_0() {
    let (mut backend, addr) = Backend::start_listening(&[]);
    let mut client = connect(addr).await;
    let _hello = next_text(&mut client).await;

    backend.signal(libc::SIGTERM);
    let close = tokio::time::timeout(WAIT, async {
        loop {
            match client.next().await {
                Some(Ok(Message::Close(frame))) => return frame,
                Some(Ok(_)) => continue,
                other => panic!("the connection ended without a close frame: {other:?}"),
            }
        }
    })
    .await
    .expect("no close frame after SIGTERM");
    let frame = close.expect("the close frame has no code");
    assert_eq!(frame.code, CloseCode::Away);
    assert_eq!(u16::from(frame.code), 1001);
    // Finish the close handshake as a well-behaved client does.
    let _ = client.close(None).await;
    while let Some(Ok(_)) = client.next().await {}

    let status = backend.wait_exit(STARTUP);
    assert_eq!(status.code(), Some(0), "output:\n{}", backend.text());
    let lines = backend.json_lines();
    let shutdown = lines.iter().find(|l| l["message"] == "shutting down").unwrap();
    assert_eq!(shutdown["signal"], "SIGTERM");
    assert_eq!(shutdown["open_websockets"], 1);
    let closed = lines.iter().find(|l| l["message"] == "websocket session closed").unwrap();
    assert_eq!(closed["reason"], "server shutting down");
    assert_eq!(lines.last().unwrap()["message"], "stopped");
}

#[test]
fn every_log_line_is_a_json_object() {
    let (mut backend, addr) = Backend::start_listening(&[]);
    http_get(addr, "/health");
    backend.signal(libc::SIGINT);
    assert!(backend.wait_exit(STARTUP).success());
    for line in backend.json_lines() {
        for field in ["timestamp", "level", "message"] {
            assert!(line[field].is_string(), "no `{field}` in {line}");
        }
    }
}

#[test]
fn invalid_configuration_exits_2_with_a_clear_line() {
    let mut backend = Backend::start(&[("CASEY_BIND_ADDR", ""), ("PORT", "not-a-port")]);
    let status = backend.wait_exit(STARTUP);
    assert_eq!(status.code(), Some(2));
    let lines = backend.json_lines();
    let error = lines.iter().find(|l| l["level"] == "error").unwrap();
    assert_eq!(error["message"], "invalid `PORT` value `not-a-port`: expected a port number (0-65535)");
}

#[tokio::test]
async fn shutdown_is_bounded_when_a_client_never_answers_the_close() {
    let (mut backend, addr) = Backend::start_listening(&[("CASEY_SHUTDOWN_TIMEOUT_SECS", "1")]);
    // Connected, but never reads again: the close handshake cannot complete.
    let mut client = connect(addr).await;
    let _hello = next_text(&mut client).await;

    let signalled = std::time::Instant::now();
    backend.signal(libc::SIGTERM);
    let status = backend.wait_exit(STARTUP);
    assert_eq!(status.code(), Some(0), "output:\n{}", backend.text());
    assert!(signalled.elapsed() < Duration::from_secs(5), "shutdown took {:?}", signalled.elapsed());
    let lines = backend.json_lines();
    assert!(
        lines.iter().any(|l| l["message"] == "shutdown timed out, exiting with connections still open"),
        "output:\n{}",
        backend.text()
    );
    drop(client);
}
