//! The backend against the project's AWS emulator: the identity guard and the
//! usage log.

mod common;

use std::time::{Duration, Instant};

use common::emulator::{Emulator, Keys, ADMIN_USER, SERVICE_USER};
use common::{Backend, STARTUP};
use futures_util::StreamExt;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

fn backend_env<'a>(emulator: &'a [(String, String)], extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    emulator.iter().map(|(k, v)| (k.as_str(), v.as_str())).chain(extra.iter().copied()).collect()
}

/// Neither the secret key nor the access key id may appear in the output.
fn assert_no_secrets(backend: &Backend, keys: &Keys) {
    let text = backend.text();
    assert!(!text.contains(&keys.secret_access_key), "the secret key is in the logs:\n{text}");
    assert!(!text.contains(&keys.access_key_id), "the access key id is in the logs:\n{text}");
}

#[test]
fn refuses_to_start_as_the_admin_user() {
    let emulator = Emulator::start();
    let keys = emulator.keys(ADMIN_USER);
    let env = emulator.env(&keys);
    let mut backend = Backend::start(&backend_env(&env, &[]));

    let status = backend.wait_exit(STARTUP);
    assert!(!status.success(), "the backend ran as the admin user:\n{}", backend.text());
    assert_eq!(status.code(), Some(1));
    let lines = backend.json_lines();
    let error =
        lines.iter().find(|l| l["level"] == "error").unwrap_or_else(|| panic!("no error line:\n{}", backend.text()));
    let message = error["message"].as_str().unwrap();
    assert!(
        message.starts_with("refusing to start: running as the Terraform admin user `casey_aniruddh`"),
        "{message}"
    );
    assert!(message.contains(&keys.arn), "{message}");
    assert!(!lines.iter().any(|l| l["message"] == "listening"));
    assert_no_secrets(&backend, &keys);
}

#[test]
fn admin_user_name_is_configurable() {
    // With another admin name, the service account itself is the one refused.
    let emulator = Emulator::start();
    let keys = emulator.keys(SERVICE_USER);
    let env = emulator.env(&keys);
    let mut backend = Backend::start(&backend_env(&env, &[("CASEY_ADMIN_USER", SERVICE_USER)]));
    assert_eq!(backend.wait_exit(STARTUP).code(), Some(1));
    assert!(backend.text().contains("refusing to start"));
}

#[tokio::test]
async fn service_account_starts_and_writes_usage_events() {
    let emulator = Emulator::start();
    let group = "casey-backend-aws-usage-test";
    emulator.aws(&["logs", "create-log-group", "--log-group-name", group]);

    let keys = emulator.keys(SERVICE_USER);
    let env = emulator.env(&keys);
    let mut backend = Backend::start(&backend_env(&env, &[("CASEY_USAGE_LOG_GROUP", group)]));
    let principal = backend.wait_for_log("running as AWS principal", STARTUP);
    assert_eq!(principal["principal_arn"], keys.arn.as_str());
    let addr = backend.wait_listening();

    let (mut client, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws")).await.unwrap();
    let hello = loop {
        match client.next().await.unwrap().unwrap() {
            Message::Text(text) => break serde_json::from_str::<Value>(&text).unwrap(),
            _ => continue,
        }
    };
    let session_id = hello["session_id"].as_str().unwrap().to_owned();

    // Read back with the AWS CLI, not the backend's code.
    let deadline = Instant::now() + Duration::from_secs(30);
    let events = loop {
        let events = emulator.log_events(group);
        let has = |kind: &str| events.iter().any(|e| e["event"] == kind);
        if has("backend_start") && has("ws_session") {
            break events;
        }
        assert!(
            Instant::now() < deadline,
            "usage events missing from `{group}`: {events:?}\nbackend output:\n{}",
            backend.text()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let start = events.iter().find(|e| e["event"] == "backend_start").unwrap();
    assert_eq!(start["principal_arn"], keys.arn.as_str());
    assert_eq!(start["service"], "casey-backend");
    assert_eq!(start["account"], emulator.seed["account_id"]);
    let session = events.iter().find(|e| e["event"] == "ws_session").unwrap();
    assert_eq!(session["session_id"], session_id.as_str());
    assert_eq!(session["instance_id"], start["instance_id"]);

    drop(client);
    backend.signal(libc::SIGTERM);
    assert_eq!(backend.wait_exit(STARTUP).code(), Some(0), "{}", backend.text());
    assert_no_secrets(&backend, &keys);
}

#[test]
fn a_missing_log_group_is_logged_not_fatal() {
    let emulator = Emulator::start();
    let keys = emulator.keys(SERVICE_USER);
    let env = emulator.env(&keys);
    let mut backend = Backend::start(&backend_env(&env, &[("CASEY_USAGE_LOG_GROUP", "no-such-group")]));
    let addr = backend.wait_listening();
    let warning = backend.wait_for_log("could not create the usage log stream", STARTUP);
    assert_eq!(warning["level"], "warn");
    assert_eq!(common::http_get(addr, "/health").0, 200);
    backend.signal(libc::SIGTERM);
    assert_eq!(backend.wait_exit(STARTUP).code(), Some(0), "{}", backend.text());
    assert_no_secrets(&backend, &keys);
}
