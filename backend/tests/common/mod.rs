//! Test harness: runs the real `casey-backend` binary and, for the AWS tests,
//! the project's emulator.
#![allow(dead_code)] // each test file uses a different part of the harness

pub mod emulator;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_casey-backend");

/// How long the backend may take to start (an STS call against a cold emulator
/// included) or to stop.
pub const STARTUP: Duration = Duration::from_secs(30);

/// A running backend; killed on drop. Its stdout and stderr are captured
/// line by line.
pub struct Backend {
    child: Child,
    lines: Receiver<String>,
    /// Every line read so far, stdout and stderr interleaved.
    pub output: Vec<String>,
}

impl Backend {
    /// Starts the backend on a free loopback port with a clean environment:
    /// no AWS settings from the machine, no `~/.aws` files, plus `env`.
    pub fn start(env: &[(&str, &str)]) -> Backend {
        let mut command = Command::new(BIN);
        command
            .env_clear()
            .env("CASEY_BIND_ADDR", "127.0.0.1:0")
            .env("AWS_CONFIG_FILE", "/nonexistent/casey-backend-test/config")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/casey-backend-test/credentials")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("could not run the casey-backend binary");
        let (sender, lines) = mpsc::channel();
        forward_lines(child.stdout.take().unwrap(), sender.clone());
        forward_lines(child.stderr.take().unwrap(), sender);
        Backend { child, lines, output: Vec::new() }
    }

    /// Starts the backend and waits until it listens; returns it and its address.
    pub fn start_listening(env: &[(&str, &str)]) -> (Backend, SocketAddr) {
        let mut backend = Backend::start(env);
        let addr = backend.wait_listening();
        (backend, addr)
    }

    pub fn wait_listening(&mut self) -> SocketAddr {
        let line = self.wait_for_log("listening", STARTUP);
        line["addr"].as_str().unwrap().parse().unwrap()
    }

    /// Waits for the JSON log line whose `message` is `message`.
    pub fn wait_for_log(&mut self, message: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        for line in &self.output {
            if let Some(value) = log_line(line, message) {
                return value;
            }
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let found = log_line(&line, message);
                    self.output.push(line);
                    if let Some(value) = found {
                        return value;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!("no `{message}` log line within {timeout:?}; output:\n{}", self.text())
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("the backend ended without a `{message}` log line; output:\n{}", self.text())
                }
            }
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid has no memory-safety concerns.
        let rc = unsafe { libc::kill(self.pid(), signal) };
        assert_eq!(rc, 0, "kill failed: {}", std::io::Error::last_os_error());
    }

    /// Waits for the process to exit, then collects the rest of its output.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        // Reading the output to its end (EOF when the process exits) is the
        // wait; the status is then there.
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.output.push(line),
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {
                    panic!("the backend did not exit within {timeout:?}; output:\n{}", self.text())
                }
            }
        }
        self.child.wait().unwrap()
    }

    /// All output so far, one line per line.
    pub fn text(&self) -> String {
        self.output.join("\n")
    }

    /// The parsed JSON log lines; panics on a stdout line that is not JSON.
    pub fn json_lines(&self) -> Vec<Value> {
        self.output
            .iter()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("not a JSON log line: {line}")))
            .collect()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn forward_lines(stream: impl Read + Send + 'static, sender: mpsc::Sender<String>) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if sender.send(line).is_err() {
                break;
            }
        }
    });
}

fn log_line(line: &str, message: &str) -> Option<Value> {
    let value: Value = serde_json::from_str(line).ok()?;
    (value["message"] == message).then_some(value)
}

/// A plain HTTP/1.1 GET; returns the status code and the body.
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, body.to_owned())
}

/// A scratch directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "casey-backend-test-{name}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
