//! `backend-url --check` of a `wss://` URL, as with the ALB in production:
//! TLS to a real server on 127.0.0.1 whose certificate is signed by a CA made
//! in the test, trusted only through `AWS_CA_BUNDLE`.
//!
//! The server is tokio-rustls plus tokio-tungstenite's server handshake; it
//! answers `GET /health` with a status the test sets, records the request
//! lines it saw, and stops when the test drops it (or after 120 s).

mod common;

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};

use common::{Emulator, Project};

/// A CA named `ca_name` and a server certificate for `localhost` and
/// 127.0.0.1 signed by it.
struct Pki {
    ca_pem: String,
    cert_der: rustls::pki_types::CertificateDer<'static>,
    key_der: rustls::pki_types::PrivateKeyDer<'static>,
}

fn make_pki(ca_name: &str) -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, ca_name);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut leaf = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    leaf.distinguished_name.push(DnType::CommonName, "localhost");
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    Pki { ca_pem: ca_cert.pem(), cert_der: cert.der().clone(), key_der: key.into() }
}

/// The TLS backend on 127.0.0.1: `/health` and a WebSocket endpoint on `/ws`.
struct TlsBackend {
    port: u16,
    health_status: Arc<AtomicU16>,
    seen: Arc<Mutex<Vec<String>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TlsBackend {
    fn start(pki: &Pki) -> TlsBackend {
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![pki.cert_der.clone()], pki.key_der.clone_key())
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let health_status = Arc::new(AtomicU16::new(200));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let (status, log) = (Arc::clone(&health_status), Arc::clone(&seen));
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let deadline = tokio::time::sleep(Duration::from_secs(120));
                tokio::pin!(deadline);
                // Bounded: at most 50 connections, 120 s, or until the test drops the server.
                for _ in 0..50 {
                    let (tcp, _) = tokio::select! {
                        accepted = listener.accept() => accepted.unwrap(),
                        _ = &mut stopped => return,
                        _ = &mut deadline => return,
                    };
                    let status = status.load(Ordering::SeqCst);
                    let served = serve(acceptor.clone(), tcp, status, Arc::clone(&log));
                    let _ = tokio::time::timeout(Duration::from_secs(10), served).await;
                }
            });
        });
        TlsBackend { port, health_status, seen, stop: Some(stop), thread: Some(thread) }
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for TlsBackend {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One connection: TLS, then the request head; `/health` is answered here,
/// anything else goes to tungstenite's server handshake (which sees the head
/// again). A client that rejects the certificate ends it at the TLS step.
async fn serve(
    acceptor: tokio_rustls::TlsAcceptor,
    tcp: tokio::net::TcpStream,
    health_status: u16,
    seen: Arc<Mutex<Vec<String>>>,
) {
    let Ok(tls) = acceptor.accept(tcp).await else { return };
    let (read, mut write) = tokio::io::split(tls);
    let mut reader = tokio::io::BufReader::new(read);
    let mut head = Vec::new();
    loop {
        let before = head.len();
        match reader.read_until(b'\n', &mut head).await {
            Ok(0) | Err(_) => return,
            Ok(_) if &head[before..] == b"\r\n" => break,
            Ok(_) => {}
        }
    }
    let request_line = String::from_utf8_lossy(&head).lines().next().unwrap_or_default().to_owned();
    seen.lock().unwrap().push(request_line.clone());
    if request_line.starts_with("GET /health ") {
        let reason = if health_status == 200 { "OK" } else { "Service Unavailable" };
        let answer = format!("HTTP/1.1 {health_status} {reason}\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
        let _ = write.write_all(answer.as_bytes()).await;
        let _ = write.shutdown().await;
        return;
    }
    let stream = tokio::io::join(std::io::Cursor::new(head).chain(reader), write);
    if let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await {
        use futures_util::StreamExt as _;
        while let Some(Ok(message)) = ws.next().await {
            if message.is_close() {
                break;
            }
        }
    }
}

/// A project whose stack holds only the outputs `backend-url` reads: the
/// ALB's URL is `wss://localhost:<port>/ws`.
fn project_with_url(emulator: &Emulator, port: u16) -> Project {
    let dir = tempfile::tempdir().unwrap();
    let tf = dir.path().join("terraform");
    std::fs::create_dir_all(&tf).unwrap();
    std::fs::write(
        tf.join("outputs.tf"),
        format!(
            r#"
output "aws_region" {{ value = "us-east-1" }}
output "ecr_repository_url" {{ value = "123456789012.dkr.ecr.us-east-1.amazonaws.com/casey-backend" }}
output "ecs_cluster_name" {{ value = "casey" }}
output "ecs_service_name" {{ value = "casey-backend" }}
output "container_name" {{ value = "casey-backend" }}
output "container_port" {{ value = 3001 }}
output "enable_alb" {{ value = true }}
output "alb_dns_name" {{ value = "localhost" }}
output "recommended_ws_url" {{ value = "wss://localhost:{port}/ws" }}
"#
        ),
    )
    .unwrap();
    let project = Project { dir, endpoint: emulator.endpoint.clone(), secrets: emulator.secrets() };
    project.write_env(emulator.admin());
    for args in [&["init", "-input=false"][..], &["apply", "-auto-approve", "-input=false"]] {
        let run = project.terraform(emulator.admin(), args);
        assert!(run.ok(), "terraform {}: {}", args[0], run.all());
    }
    project
}

#[test]
fn check_of_a_wss_url_trusts_the_system_roots_plus_aws_ca_bundle() {
    let pki = make_pki("casey-deploy url_check test CA");
    let server = TlsBackend::start(&pki);
    let emulator = Emulator::start();
    let project = project_with_url(&emulator, server.port);
    let url = format!("wss://localhost:{}/ws", server.port);
    let bundle = project.path().join("test-ca.pem");
    std::fs::write(&bundle, &pki.ca_pem).unwrap();
    let bundle = bundle.display().to_string();

    // With the test CA in AWS_CA_BUNDLE: TLS, GET /health 200, upgrade 101.
    let run = project.casey_with(&["backend-url", "--check"], &[("AWS_CA_BUNDLE", &bundle)]);
    run.assert_ok();
    assert!(run.stdout.contains(&format!("BACKEND_WS_URL={url}")), "{}", run.stdout);
    assert!(
        run.stderr
            .contains(&format!("check {url}: GET /health ok (200 OK); WebSocket upgrade ok (101 Switching Protocols)")),
        "{}",
        run.stderr
    );
    assert_eq!(server.seen(), vec!["GET /health HTTP/1.1", "GET /ws HTTP/1.1"], "the server saw both requests");

    // --json: the same result in the document.
    let run = project.casey_with(&["backend-url", "--check", "--json"], &[("AWS_CA_BUNDLE", &bundle)]);
    run.assert_ok();
    let json: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(json["url"], url.as_str());
    assert_eq!(json["check"]["ok"], true, "{json}");
    assert_eq!(json["check"]["health"], serde_json::json!({"result": "ok", "detail": "200 OK"}));
    assert_eq!(json["check"]["websocket"], serde_json::json!({"result": "ok", "detail": "101 Switching Protocols"}));

    // Without it the certificate is not trusted: a TLS error that names AWS_CA_BUNDLE.
    let before = server.seen().len();
    let run = project.casey(&["backend-url", "--check"]);
    run.assert_fails_with("--check: 1 of 1 backend URL(s) failed");
    run.assert_fails_with(&format!(
        "TLS handshake with localhost:{} failed: invalid peer certificate: UnknownIssuer",
        server.port
    ));
    run.assert_fails_with("set AWS_CA_BUNDLE to a PEM file with that CA");
    assert_eq!(server.seen().len(), before, "no request was sent over an untrusted connection");

    // AWS_CA_BUNDLE with another CA: still untrusted, and the bundle is named.
    let other = project.path().join("other-ca.pem");
    std::fs::write(&other, make_pki("another CA").ca_pem).unwrap();
    let other = other.display().to_string();
    let run = project.casey_with(&["backend-url", "--check"], &[("AWS_CA_BUNDLE", &other)]);
    run.assert_fails_with(&format!("not trusted by the system roots or AWS_CA_BUNDLE ({other})"));

    // A wrong /health status fails the check, though the upgrade works.
    server.health_status.store(503, Ordering::SeqCst);
    let run = project.casey_with(&["backend-url", "--check", "--json"], &[("AWS_CA_BUNDLE", &bundle)]);
    run.assert_fails_with("--check: 1 of 1 backend URL(s) failed");
    run.assert_fails_with("GET /health FAILED (503 Service Unavailable, expected 200)");
    run.assert_fails_with("WebSocket upgrade ok (101 Switching Protocols)");
    let json: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(json["check"]["ok"], false, "{json}");
    assert_eq!(json["check"]["health"]["result"], "failed");
}
