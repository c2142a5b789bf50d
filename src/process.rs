//! The one place that runs child processes (terraform, docker, git).
//!
//! - Output is streamed line by line to stderr (stdout stays for results) and
//!   kept, so callers can recognise known failures. Every line is redacted.
//! - Signals: every child runs in a process group of its own, so a signal
//!   to our group (a terminal's Ctrl-C, GNU `timeout`, a CI runner cancelling
//!   the job) reaches only this process, which forwards it exactly once. A
//!   signal that reached terraform twice would be terraform's "second
//!   interrupt": exit at once, state possibly locked, changes in progress
//!   unrecorded. Then we wait for the child to stop and start no further step.
//!   A child whose parent dies (SIGKILL) gets SIGINT from the kernel, so
//!   terraform still stops cleanly instead of running on unsupervised.
//! - Environment: every child gets the AWS credentials the identity guard
//!   checked (see [`set_child_env`]), not whatever it would resolve itself.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Mutex, OnceLock};

use anyhow::{bail, Context, Result};

use crate::redact::redact;

static CHILD_PIDS: Mutex<Vec<u32>> = Mutex::new(Vec::new());
/// Private temporary paths (plan folders, docker configs) to remove if the
/// process exits from the signal handler, where no destructor runs.
static REMOVE_ON_EXIT: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
/// What must still happen if a signal ends the process (release the deploy
/// lock); each runs once, in [`exit`].
type ExitHook = Box<dyn FnOnce() + Send>;
static ON_EXIT: Mutex<Vec<ExitHook>> = Mutex::new(Vec::new());
static INTERRUPTED_BY: AtomicI32 = AtomicI32::new(0);
/// Set while a step can stop where it stands on its own (see [`deferring`]).
static DEFERRING: AtomicBool = AtomicBool::new(false);

/// Variables to set (`Some`) or remove (`None`) in every child's environment,
/// asked for again before each start (so credentials can be refreshed).
pub type ChildEnv = Box<dyn Fn() -> Result<Vec<(String, Option<String>)>> + Send + Sync>;
static CHILD_ENV: OnceLock<ChildEnv> = OnceLock::new();

/// Give every child from now on the environment `env` returns. Set once,
/// after the identity guard passed.
pub fn set_child_env(env: ChildEnv) {
    let _ = CHILD_ENV.set(env);
}

/// The error a step returns when the user (or a supervisor) interrupted it.
#[derive(Debug)]
pub struct Interrupted {
    pub signal: i32,
    /// The child that was running, and how it ended.
    pub child: Option<(String, Option<i32>)>,
    /// For terraform: whether its state lock file remained, and whether it
    /// said it stopped at once (a second interrupt).
    pub lock_left: Option<bool>,
    pub abrupt: bool,
    /// It was changing resources (terraform apply or import).
    pub applying: bool,
}

impl Interrupted {
    fn new(signal: i32) -> Self {
        Interrupted { signal, child: None, lock_left: None, abrupt: false, applying: false }
    }
}

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = if self.signal == libc::SIGTERM { "SIGTERM" } else { "SIGINT" };
        write!(f, "interrupted by {name}; no further step was started")?;
        let Some((program, code)) = &self.child else { return Ok(()) };
        if program != "terraform" {
            return Ok(());
        }
        match code {
            Some(code) => write!(f, ". terraform stopped (exit code {code})")?,
            None => write!(f, ". terraform was killed before it could clean up")?,
        }
        if self.abrupt {
            write!(f, " at once, on a second interrupt, without waiting for the changes in progress")?;
        } else if code.is_some() {
            write!(f, " after finishing the changes in progress")?;
        }
        match (self.lock_left, code) {
            (Some(true), _) | (None, None) => write!(
                f,
                "; the state may still be locked (its lock file remains). Run `casey-deploy infra`: if it reports the lock, it prints the `terraform force-unlock` command"
            )?,
            _ => write!(f, "; it released its state lock")?,
        }
        if self.applying {
            write!(
                f,
                ". Resources it was creating when it stopped may exist in AWS without being in the state: the next `casey-deploy infra` adopts them"
            )?;
        }
        write!(f, ". Run the same command again to continue")
    }
}

impl std::error::Error for Interrupted {}

/// Install the SIGINT/SIGTERM handler. Call once, early in `main`.
pub fn install_signal_handler() -> Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    use signal_hook::iterator::exfiltrator::WithOrigin;
    use signal_hook::iterator::SignalsInfo;

    let mut signals =
        SignalsInfo::<WithOrigin>::new([SIGINT, SIGTERM]).context("could not install the signal handler")?;
    std::thread::spawn(move || {
        for origin in signals.forever() {
            let signal = origin.signal;
            // Under the lock: a child registering now either is in the list
            // (and gets the signal here) or sees the flag (and gets it there).
            let pids = CHILD_PIDS.lock().unwrap_or_else(|e| e.into_inner());
            let again = INTERRUPTED_BY.swap(signal, Ordering::SeqCst) != 0;
            if pids.is_empty() && DEFERRING.load(Ordering::SeqCst) && !again {
                drop(pids);
                crate::say!("casey-deploy: interrupt received; stopping (a second one exits at once)");
                continue;
            }
            if pids.is_empty() {
                drop(pids);
                crate::say!("casey-deploy: {}", Interrupted::new(signal));
                exit(128 + signal);
            }
            // The children are in process groups of their own: whoever sent
            // this (a terminal, a supervisor signalling our group, a kill of
            // our pid), it reached none of them. Forward it once.
            forward(&pids, signal);
            drop(pids);
            crate::say!("casey-deploy: interrupt received; waiting for the running command to stop cleanly");
        }
    });
    Ok(())
}

fn forward(pids: &[u32], signal: i32) {
    for pid in pids {
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe { libc::kill(*pid as libc::pid_t, signal) };
    }
}

/// Remove `path` (a file or a folder) if the process is ended by a signal
/// before its owner removes it. The owner removes it itself on every normal
/// path (a `Drop`) and then calls [`forget_on_exit`].
pub fn remove_on_exit(path: &Path) {
    REMOVE_ON_EXIT.lock().unwrap_or_else(|e| e.into_inner()).push(path.to_path_buf());
}

/// `path` was removed by its owner: nothing to do for it at exit.
pub fn forget_on_exit(path: &Path) {
    REMOVE_ON_EXIT.lock().unwrap_or_else(|e| e.into_inner()).retain(|p| p != path);
}

/// Run `hook` if the process is ended by a signal (in [`exit`]). Its owner
/// does the same on every normal path; a hook must be harmless after that.
pub fn on_exit(hook: ExitHook) {
    ON_EXIT.lock().unwrap_or_else(|e| e.into_inner()).push(hook);
}

/// Exit now, running the [`on_exit`] hooks and removing what
/// [`remove_on_exit`] registered first (`std::process::exit` runs no
/// destructor).
pub fn exit(code: i32) -> ! {
    let hooks = std::mem::take(&mut *ON_EXIT.lock().unwrap_or_else(|e| e.into_inner()));
    for hook in hooks {
        hook();
    }
    let paths = std::mem::take(&mut *REMOVE_ON_EXIT.lock().unwrap_or_else(|e| e.into_inner()));
    for path in paths {
        let _ = if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
    }
    std::process::exit(code)
}

/// The first executable `name` on PATH.
pub fn on_path(name: &str) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

/// Fails with [`Interrupted`] once a signal has arrived.
pub fn check_interrupted() -> Result<()> {
    match INTERRUPTED_BY.load(Ordering::SeqCst) {
        0 => Ok(()),
        signal => Err(Interrupted::new(signal).into()),
    }
}

/// Run `f`, a step that polls [`check_interrupted`] (or [`pause`]s) and can
/// say what it leaves behind: while it runs, a first SIGINT/SIGTERM no longer
/// ends the process at once but makes those fail with [`Interrupted`]. A
/// second signal still ends the process at once.
pub fn deferring<T>(f: impl FnOnce() -> T) -> T {
    struct Reset(bool);
    impl Drop for Reset {
        fn drop(&mut self) {
            DEFERRING.store(self.0, Ordering::SeqCst);
        }
    }
    let _reset = Reset(DEFERRING.swap(true, Ordering::SeqCst));
    f()
}

/// Forget an interrupt that was handled (the user chose what happens next),
/// so the steps that follow run.
pub fn clear_interrupt() {
    INTERRUPTED_BY.store(0, Ordering::SeqCst);
}

/// Sleep for `duration`, failing with [`Interrupted`] as soon as a signal
/// arrives.
pub fn pause(duration: std::time::Duration) -> Result<()> {
    let end = std::time::Instant::now() + duration;
    loop {
        check_interrupted()?;
        let left = end.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        std::thread::sleep(left.min(std::time::Duration::from_millis(100)));
    }
}

/// A finished child.
pub struct Output {
    /// Exit code; `None` when the child was killed by a signal.
    pub code: Option<i32>,
    /// stdout (with stderr folded in when streamed), redacted.
    pub stdout: String,
    /// stderr when captured quietly, redacted.
    pub stderr: String,
}

impl Output {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// The last lines of what the child printed, for error messages.
    pub fn tail(&self, lines: usize) -> String {
        let text = if self.stderr.trim().is_empty() { &self.stdout } else { &self.stderr };
        let all: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

/// A child process to run.
pub struct Command {
    program: String,
    args: Vec<String>,
    dir: Option<PathBuf>,
    stdin: Option<Vec<u8>>,
    stream: bool,
    /// Streamed lines are detail: shown with `-v`, as a progress line on a
    /// terminal otherwise, and kept either way.
    detail: bool,
    lock_file: Option<PathBuf>,
    /// Set in the child's environment, after what [`set_child_env`] sets.
    env: Vec<(String, String)>,
}

impl Command {
    pub fn new(program: &str) -> Self {
        Command {
            program: program.to_owned(),
            args: Vec::new(),
            dir: None,
            stdin: None,
            stream: true,
            detail: false,
            lock_file: None,
            env: Vec::new(),
        }
    }

    /// The lock file the child holds while it runs (terraform's local state
    /// lock): an interrupt reports whether it remained.
    pub fn lock_file(mut self, path: PathBuf) -> Self {
        self.lock_file = Some(path);
        self
    }

    /// Set `key` in the child's environment (not a secret: it is not redacted from the child's own output).
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Bytes for the child's stdin (e.g. a registry password: never an argument).
    pub fn stdin(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.stdin = Some(bytes.into());
        self
    }

    /// Capture stdout and stderr apart, without streaming (for JSON output).
    pub fn quiet(mut self) -> Self {
        self.stream = false;
        self
    }

    /// Stream the output as detail (`-v`) rather than info: for long output
    /// the tool summarises itself (a terraform plan).
    pub fn detail(mut self) -> Self {
        self.detail = true;
        self
    }

    /// The command line as shown to the user.
    pub fn display(&self) -> String {
        redact(
            &std::iter::once(self.program.as_str())
                .chain(self.args.iter().map(String::as_str))
                .collect::<Vec<_>>()
                .join(" "),
        )
    }

    /// Run to completion. Errors only when the child could not be started or
    /// a signal interrupted the run; a non-zero exit is in [`Output::code`].
    pub fn run(&self) -> Result<Output> {
        check_interrupted()?;
        let mut expr = duct::cmd(&self.program, &self.args).unchecked();
        if let Some(dir) = &self.dir {
            expr = expr.dir(dir);
        }
        if let Some(env) = CHILD_ENV.get() {
            for (key, value) in env()? {
                expr = match value {
                    Some(value) => expr.env(key, value),
                    None => expr.env_remove(key),
                };
            }
        }
        for (key, value) in &self.env {
            expr = expr.env(key, value);
        }
        expr = expr.before_spawn(|cmd| {
            use std::os::unix::process::CommandExt;
            cmd.process_group(0);
            // SAFETY: prctl(2) only; async-signal-safe, no allocation.
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGINT);
                    Ok(())
                });
            }
            Ok(())
        });
        expr = match &self.stdin {
            Some(bytes) => expr.stdin_bytes(bytes.clone()),
            None => expr.stdin_null(),
        };
        let output = if self.stream { self.run_streaming(expr)? } else { self.run_quiet(expr)? };
        match INTERRUPTED_BY.load(Ordering::SeqCst) {
            0 => Ok(output),
            signal => Err(Interrupted {
                signal,
                child: Some((self.program.clone(), output.code)),
                lock_left: self.lock_file.as_ref().map(|f| f.exists()),
                abrupt: output.stdout.contains("Two interrupts received")
                    || output.stderr.contains("Two interrupts received"),
                applying: self.program == "terraform" && self.args.iter().any(|a| a == "apply" || a == "import"),
            }
            .into()),
        }
    }

    /// Run and fail unless the child exits 0; the error carries its last lines.
    pub fn run_ok(&self) -> Result<Output> {
        let output = self.run()?;
        if !output.success() {
            bail!("`{}` failed ({}):\n{}", self.display(), describe_exit(output.code), output.tail(15));
        }
        Ok(output)
    }

    fn spawn_error(&self, err: std::io::Error) -> anyhow::Error {
        if err.kind() == std::io::ErrorKind::NotFound {
            let hint = match self.program.as_str() {
                "terraform" => "install Terraform >= 1.5 and put it on PATH",
                "docker" => "install Docker (the client and a running engine) and put it on PATH",
                _ => "install it and put it on PATH",
            };
            anyhow::anyhow!("could not find `{}` on PATH: {hint}", self.program)
        } else {
            anyhow::anyhow!("could not run `{}`: {err}", self.program)
        }
    }

    fn run_quiet(&self, expr: duct::Expression) -> Result<Output> {
        let handle = expr.stdout_capture().stderr_capture().start().map_err(|e| self.spawn_error(e))?;
        let _guard = ChildGuard::new(handle.pids());
        let out = handle.wait().with_context(|| format!("waiting for `{}`", self.program))?;
        Ok(Output {
            code: out.status.code(),
            stdout: redact(&String::from_utf8_lossy(&out.stdout)),
            stderr: redact(&String::from_utf8_lossy(&out.stderr)),
        })
    }

    fn run_streaming(&self, expr: duct::Expression) -> Result<Output> {
        let reader = expr.stderr_to_stdout().reader().map_err(|e| self.spawn_error(e))?;
        let _guard = ChildGuard::new(reader.pids());
        let mut kept = String::new();
        let mut lines = BufReader::new(&reader);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            let n = lines
                .read_until(b'\n', &mut buf)
                .with_context(|| format!("reading the output of `{}`", self.program))?;
            if n == 0 {
                break;
            }
            let line = redact(String::from_utf8_lossy(&buf).trim_end_matches(['\n', '\r']));
            if !self.detail {
                crate::say!("{line}");
            } else if crate::output::verbose() {
                crate::detail!("{line}");
            } else if !line.trim().is_empty() {
                crate::output::progress_transient(&format!("{}: {}", self.program, line.trim()));
            }
            kept.push_str(&line);
            kept.push('\n');
        }
        let status = reader.try_wait()?.map(|o| o.status.code()).unwrap_or(None);
        Ok(Output { code: status, stdout: kept, stderr: String::new() })
    }
}

pub fn describe_exit(code: Option<i32>) -> String {
    match code {
        Some(c) => format!("exit code {c}"),
        None => "killed by a signal".to_owned(),
    }
}

/// Registers a running child's pids for signal forwarding while alive.
struct ChildGuard(Vec<u32>);

impl ChildGuard {
    fn new(pids: Vec<u32>) -> Self {
        let mut all = CHILD_PIDS.lock().unwrap_or_else(|e| e.into_inner());
        all.extend(&pids);
        // A signal that came while the child was being started.
        match INTERRUPTED_BY.load(Ordering::SeqCst) {
            0 => {}
            signal => forward(&pids, signal),
        }
        ChildGuard(pids)
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        CHILD_PIDS.lock().unwrap_or_else(|e| e.into_inner()).retain(|p| !self.0.contains(p));
    }
}

/// Start a long-running service (the sandbox's emulator or registry) in its
/// own process group, so a Ctrl-C at the terminal does not reach it, with
/// its output appended to `log`. Returns its pid; it outlives this process.
pub fn spawn_service(program: &str, args: &[String], log: &std::path::Path) -> Result<u32> {
    use std::os::unix::process::CommandExt;
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("could not open {}", log.display()))?;
    let child = std::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .process_group(0)
        .spawn()
        .map_err(|e| Command::new(program).spawn_error(e))?;
    Ok(child.id())
}

/// Whether a process is alive.
pub fn alive(pid: u32) -> bool {
    // 0 and "negative" pids would name process groups.
    if pid == 0 || pid > i32::MAX as u32 {
        return false;
    }
    // SAFETY: kill(2) with signal 0 only checks for existence.
    let found = unsafe { libc::kill(pid as libc::pid_t, 0) == 0 };
    // EPERM: it exists, but belongs to another user.
    found || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// SIGTERM, then SIGKILL after `grace`.
pub fn stop(pid: u32, grace: std::time::Duration) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    let deadline = std::time::Instant::now() + grace;
    while alive(pid) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    if alive(pid) {
        // SAFETY: as above.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::{tests::capture, Mode, Shape};

    #[test]
    fn a_childs_streamed_output_is_masked_and_detail_is_hidden_without_verbose() {
        let secret = "child-printed-s3cr3t";
        crate::redact::register(secret);
        let script = format!("echo token={secret}; echo to-stderr {secret} >&2");
        let mut kept = String::new();
        let (out, err) = capture(Mode::default(), Shape::Document, || {
            kept = Command::new("sh").args(["-c", &script]).run().unwrap().stdout;
        });
        assert!(out.is_empty(), "children's output goes to stderr: {out}");
        assert!(err.contains("token=********") && err.contains("to-stderr ********"), "{err}");
        assert!(!err.contains(secret) && !kept.contains(secret), "{err}{kept}");
        let (_, err) = capture(Mode::default(), Shape::Document, || {
            Command::new("sh").args(["-c", &script]).detail().run().unwrap();
        });
        assert!(err.is_empty(), "a plan's lines are detail (shown with -v): {err}");
        let verbose = Mode { verbose: true, ..Mode::default() };
        let (_, err) = capture(verbose, Shape::Document, || {
            Command::new("sh").args(["-c", &script]).detail().run().unwrap();
        });
        assert!(err.contains("token=********"), "{err}");
    }
}
