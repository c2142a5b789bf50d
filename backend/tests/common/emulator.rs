//! The project's AWS emulator (`../emulator/casey_emulator.py`, moto with
//! extensions) on a free loopback port, and an independent AWS client (the
//! AWS CLI in the emulator's Python) to set up and inspect what it holds.
//!
//! `CASEY_PYTHON` names the Python that has moto and awscli (default
//! `python3`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::TempDir;

pub const REGION: &str = "us-east-1";
pub const ADMIN_USER: &str = "casey_aniruddh";
pub const SERVICE_USER: &str = "casey_localdev_service";

/// How long the emulator may take to come up and write its seed file.
const READY: Duration = Duration::from_secs(90);

pub struct Emulator {
    child: Child,
    pub endpoint: String,
    /// The seed file: `{"account_id", "endpoint_url", "users": {name: {access_key_id, secret_access_key, arn}}}`.
    pub seed: Value,
    dir: TempDir,
}

/// Access keys of one emulated IAM user.
pub struct Keys {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub arn: String,
}

pub fn python() -> String {
    std::env::var("CASEY_PYTHON").unwrap_or_else(|_| "python3".into())
}

fn launcher() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../emulator/casey_emulator.py")
}

impl Emulator {
    pub fn start() -> Emulator {
        let python = python();
        let launcher = launcher();
        assert!(launcher.is_file(), "the emulator launcher `{}` does not exist", launcher.display());
        let check = Command::new(&python).args(["-c", "import moto, boto3, awscli"]).output().unwrap_or_else(|error| {
            panic!("could not run `{python}` ({error}): set CASEY_PYTHON to a Python with moto and awscli")
        });
        assert!(
            check.status.success(),
            "`{python}` lacks moto, boto3 or awscli: set CASEY_PYTHON to a Python that has them \
             (e.g. $HOME/.cache/casey-deploy/venv/bin/python)\n{}",
            String::from_utf8_lossy(&check.stderr)
        );

        let dir = TempDir::new("emulator");
        let seed_file = dir.0.join("seed.json");
        let log_file = dir.0.join("emulator.log");
        let log = std::fs::File::create(&log_file).unwrap();
        let child = Command::new(&python)
            .arg(&launcher)
            // Port 0: the emulator picks a free port and writes its URL into the seed file.
            .args(["--host", "127.0.0.1", "--port", "0", "--seed-file"])
            .arg(&seed_file)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|error| panic!("could not run the emulator with `{python}`: {error}"));
        let mut emulator = Emulator { child, endpoint: String::new(), seed: Value::Null, dir };
        emulator.seed = emulator.wait_for_seed(&seed_file, &log_file);
        emulator.endpoint = emulator.seed["endpoint_url"]
            .as_str()
            .unwrap_or_else(|| panic!("the seed file has no `endpoint_url`: {}", emulator.seed))
            .to_owned();
        assert!(emulator.endpoint.starts_with("http://127."), "the emulator is not on loopback: {}", emulator.endpoint);
        emulator
    }

    /// The seed file appears once the emulator is ready.
    fn wait_for_seed(&mut self, seed_file: &Path, log_file: &Path) -> Value {
        let deadline = Instant::now() + READY;
        loop {
            if let Ok(text) = std::fs::read_to_string(seed_file) {
                if let Ok(seed) = serde_json::from_str::<Value>(&text) {
                    return seed;
                }
            }
            let log = || std::fs::read_to_string(log_file).unwrap_or_default();
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("the emulator exited ({status}) before it was ready:\n{}", log());
            }
            assert!(Instant::now() < deadline, "the emulator wrote no seed file within {READY:?}:\n{}", log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn keys(&self, user: &str) -> Keys {
        let entry = &self.seed["users"][user];
        let field = |name: &str| {
            entry[name]
                .as_str()
                .unwrap_or_else(|| panic!("the seed file has no `users.{user}.{name}`: {}", self.seed))
                .to_owned()
        };
        Keys { access_key_id: field("access_key_id"), secret_access_key: field("secret_access_key"), arn: field("arn") }
    }

    /// The environment for a backend (or CLI) that uses `keys` against the emulator.
    pub fn env(&self, keys: &Keys) -> Vec<(String, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID".into(), keys.access_key_id.clone()),
            ("AWS_SECRET_ACCESS_KEY".into(), keys.secret_access_key.clone()),
            ("AWS_REGION".into(), REGION.into()),
            ("AWS_ENDPOINT_URL".into(), self.endpoint.clone()),
        ]
    }

    /// Runs the AWS CLI (`$CASEY_PYTHON -m awscli ... --output json`) as the
    /// admin user and returns its parsed output (`null` if it printed nothing).
    pub fn aws(&self, args: &[&str]) -> Value {
        let keys = self.keys(ADMIN_USER);
        let output = Command::new(python())
            .args(["-m", "awscli"])
            .args(args)
            .args(["--output", "json", "--endpoint-url", &self.endpoint])
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &self.dir.0)
            .env("AWS_CONFIG_FILE", "/nonexistent/casey-backend-test/config")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/casey-backend-test/credentials")
            .env("AWS_ACCESS_KEY_ID", &keys.access_key_id)
            .env("AWS_SECRET_ACCESS_KEY", &keys.secret_access_key)
            .env("AWS_DEFAULT_REGION", REGION)
            .output()
            .expect("could not run the AWS CLI");
        assert!(
            output.status.success(),
            "aws {}: {}\n{}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        let stdout = String::from_utf8_lossy(&output.stdout);
        if stdout.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&stdout).unwrap()
        }
    }

    /// The messages of every event in `group`, parsed as JSON.
    pub fn log_events(&self, group: &str) -> Vec<Value> {
        let output = self.aws(&["logs", "filter-log-events", "--log-group-name", group]);
        output["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|event| serde_json::from_str(event["message"].as_str().unwrap()).unwrap())
            .collect()
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
