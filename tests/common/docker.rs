//! Helpers for the tests that need the test Docker engine and registry
//! (`.ci/docker.sh start`; .ci/run starts them). Without them these tests
//! fail with what to run; they are never skipped.

use std::path::PathBuf;
use std::process::Command;

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

/// GET `path` from `host:port` (through hyper): (status, headers lower-cased, body).
pub fn http_get(address: &str, path: &str, headers: &[(&str, &str)]) -> (u16, Vec<(String, String)>, String) {
    let (host, port) = address.rsplit_once(':').unwrap_or_else(|| panic!("`{address}` is not host:port"));
    let port = port.parse().unwrap_or_else(|_| panic!("`{address}` has a bad port"));
    super::http(host, port, "GET", path, headers, "").unwrap_or_else(|e| panic!("GET {path} on {address}: {e}"))
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
