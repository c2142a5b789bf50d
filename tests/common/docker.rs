//! Helpers for the tests that need the test Docker engine and registry
//! (`.ci/docker.sh start`; .ci/run starts them). Without them these tests
//! fail with what to run; they are never skipped.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use base64::Engine as _;

use super::{repo_root, Run};

/// moto's fixed ECR GetAuthorizationToken password; the test registry's htpasswd uses it.
pub const REGISTRY_PASSWORD: &str = "123456789012-auth-token";

/// The test registry (`host:port`); panics, naming .ci/docker.sh, when the
/// engine or the registry is not there.
pub fn registry() -> String {
    let how = "start them with `.ci/docker.sh start` and `source \"$(.ci/docker.sh env)\"` (.ci/run does both)";
    let registry = std::env::var("CASEY_TEST_REGISTRY").unwrap_or_else(|_| {
        panic!("CASEY_TEST_REGISTRY is not set: these tests need the test Docker engine and registry; {how}")
    });
    assert!(
        std::env::var("DOCKER_HOST").is_ok_and(|h| !h.is_empty()),
        "DOCKER_HOST is not set: these tests need the test Docker engine; {how}"
    );
    let docker = Command::new("docker").args(["version", "--format", "{{.Server.Version}}"]).output();
    match docker {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "the Docker engine at DOCKER_HOST does not answer ({}); {how}",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => panic!("cannot run `docker` ({e}); install the client and {how}"),
    }
    let (status, _, _) = http_get(&registry, "/v2/", &[]);
    assert_eq!(status, 401, "the registry at {registry} should ask for credentials; {how}");
    registry
}

/// A tiny HTTP GET: (status, headers lower-cased, body).
pub fn http_get(host: &str, path: &str, headers: &[(&str, &str)]) -> (u16, Vec<(String, String)>, String) {
    let mut stream = TcpStream::connect(host).unwrap_or_else(|e| panic!("cannot connect to {host}: {e}"));
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let mut lines = head.lines();
    let status = lines.next().unwrap_or_default().split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers, body.to_owned())
}

pub fn registry_auth() -> String {
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("AWS:{REGISTRY_PASSWORD}")))
}

/// A `KEY=value` line of stdout.
pub fn stdout_value(run: &Run, key: &str) -> String {
    let prefix = format!("{key}=");
    run.stdout
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {key}= line in stdout:\n{}\nstderr:\n{}", run.stdout, run.stderr))
        .to_owned()
}

pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("{prefix}-{}-{}", std::process::id(), nanos % 1_000_000_000)
}

/// The fixture context copied to a temp dir with a unique file content, so
/// the image (and its digest) is new in this run. Not a git repository.
pub fn unique_context() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let fixture = repo_root().join("tests/fixtures/scratch-context");
    for entry in std::fs::read_dir(&fixture).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
    }
    std::fs::write(dir.path().join("hello.txt"), format!("casey-deploy test image {}\n", unique("run"))).unwrap();
    let path = dir.path().to_path_buf();
    (dir, path)
}
