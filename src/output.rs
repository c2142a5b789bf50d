//! The one output layer (uv's `Printer` is the model). Everything the tool
//! prints goes through here, and everything is masked here ([`redact`]), so
//! no path can print a secret:
//!
//! - human text goes to stderr: [`say!`](crate::say) (info; hidden by `-q`),
//!   [`warn!`](crate::warn) (always), [`detail!`](crate::detail) (only with
//!   `-v`), [`progress`] (a status line that rewrites itself on a terminal);
//!   off a terminal every stderr line starts with a UTC `HH:MM:SS` stamp;
//! - results go to stdout: [`out!`](crate::out) lines (`KEY=value`) in text
//!   mode; under `--json` only JSON: one document for the short verbs
//!   ([`document`]), or NDJSON for the long ones ([`event`]s, then one
//!   `{"event":"summary",…}` object from [`summary`]). `out!` lines move to
//!   stderr then, so stdout holds nothing but JSON. A run that fails prints
//!   its error as JSON too ([`failure`]).

use std::io::{IsTerminal, Write};
use std::sync::{Mutex, OnceLock};

use serde_json::{json, Value};

use crate::redact::redact;

/// How much human text, and in which form the results.
#[derive(Debug, Clone, Copy, Default)]
pub struct Mode {
    pub quiet: bool,
    pub verbose: bool,
    pub json: bool,
}

/// The JSON shape of a verb's results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Shape {
    /// One JSON document (whoami, doctor, backend-url, sandbox).
    #[default]
    Document,
    /// NDJSON: events as they happen, then a summary object (infra, image, all, import).
    Events,
}

struct Printer {
    mode: Mode,
    shape: Shape,
    /// stderr is a terminal: progress rewrites one line; no time stamps.
    terminal: bool,
    /// A document was printed: a failure after it adds no second one.
    documented: std::sync::atomic::AtomicBool,
}

impl Printer {
    fn new(mode: Mode, shape: Shape, terminal: bool) -> Printer {
        Printer { mode, shape, terminal, documented: std::sync::atomic::AtomicBool::new(false) }
    }
}

static PRINTER: OnceLock<Printer> = OnceLock::new();
/// The environment the run targets: every stderr line and JSON object names it.
static ENVIRONMENT: OnceLock<String> = OnceLock::new();

/// Label everything printed from now on with the environment `name`.
pub fn set_environment(name: &str) {
    let _ = ENVIRONMENT.set(name.to_owned());
}

/// `[name] `, or nothing before the environment is known.
fn label() -> String {
    ENVIRONMENT.get().map(|e| format!("[{e}] ")).unwrap_or_default()
}

/// `value` with `"environment"` added, when it is an object and the environment is known.
fn labelled(value: &Value) -> Value {
    match (value, ENVIRONMENT.get()) {
        (Value::Object(object), Some(env)) if !object.contains_key("environment") => {
            let mut object = object.clone();
            object.insert("environment".to_owned(), json!(env));
            Value::Object(object)
        }
        _ => value.clone(),
    }
}
/// The progress line on screen (terminal), or the last one printed.
static PROGRESS: Mutex<Option<String>> = Mutex::new(None);

/// Set the mode once, before anything is printed.
pub fn init(mode: Mode, shape: Shape) {
    let _ = PRINTER.set(Printer::new(mode, shape, std::io::stderr().is_terminal()));
}

fn printer() -> &'static Printer {
    #[cfg(test)]
    if let Some(p) = tests::PRINTER.with(|p| *p.borrow()) {
        return p;
    }
    PRINTER.get_or_init(|| Printer::new(Mode::default(), Shape::Document, false))
}

/// The only two places that write: already masked text.
fn to_stdout(text: &str) {
    #[cfg(test)]
    if tests::captured(|c| c.0.push_str(text)) {
        return;
    }
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

fn to_stderr(text: &str) {
    #[cfg(test)]
    if tests::captured(|c| c.1.push_str(text)) {
        return;
    }
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(text.as_bytes());
    let _ = err.flush();
}

pub fn verbose() -> bool {
    printer().mode.verbose
}

/// Info: hidden by `-q`.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::output::info(&format!($($arg)*))
    };
}

/// A warning: shown even with `-q`, as `warning: …`.
#[macro_export]
macro_rules! warn {
    ($($arg:tt)*) => {
        $crate::output::warning(&format!($($arg)*))
    };
}

/// Detail: shown only with `-v`.
#[macro_export]
macro_rules! detail {
    ($($arg:tt)*) => {
        $crate::output::detail_line(&format!($($arg)*))
    };
}

/// A result line on stdout (`KEY=value`); on stderr under `--json`.
#[macro_export]
macro_rules! out {
    () => {
        $crate::output::out_line("")
    };
    ($($arg:tt)*) => {
        $crate::output::out_line(&format!($($arg)*))
    };
}

/// A question on stderr, without a newline (shown even with `-q`).
#[macro_export]
macro_rules! prompt {
    ($($arg:tt)*) => {
        $crate::output::prompt_text(&format!($($arg)*))
    };
}

pub fn info(text: &str) {
    if !printer().mode.quiet {
        stderr_line(text);
    }
}

pub fn warning(text: &str) {
    stderr_line(&format!("warning: {text}"));
}

/// An error, always shown.
pub fn error_line(text: &str) {
    stderr_line(text);
}

pub fn detail_line(text: &str) {
    if printer().mode.verbose {
        stderr_line(text);
    }
}

pub fn out_line(text: &str) {
    if printer().mode.json {
        info(text);
    } else {
        to_stdout(&format!("{}\n", redact(text)));
    }
}

pub fn prompt_text(text: &str) {
    clear_progress();
    to_stderr(&redact(text));
}

/// A status that replaces the previous one: rewritten in place on a
/// terminal; off a terminal, a line only when it changed. Hidden by `-q`.
pub fn progress(text: &str) {
    let p = printer();
    if p.mode.quiet {
        return;
    }
    let text = redact(&format!("{}{text}", label()));
    let mut last = PROGRESS.lock().unwrap_or_else(|e| e.into_inner());
    if p.terminal {
        to_stderr(&format!("\r\x1b[2K{text}"));
        *last = Some(text);
    } else if last.as_deref() != Some(text.as_str()) {
        to_stderr(&format!("{} {text}\n", stamp()));
        *last = Some(text);
    }
}

/// A status with a ticking part (elapsed seconds): rewritten on a terminal
/// every time; off a terminal a line only when `changed`, or once a minute.
pub fn progress_live(text: &str, changed: bool) {
    let p = printer();
    if p.terminal {
        progress(text);
        return;
    }
    static LAST_LINE: Mutex<Option<std::time::Instant>> = Mutex::new(None);
    let mut last = LAST_LINE.lock().unwrap_or_else(|e| e.into_inner());
    if changed || last.is_none_or(|at| at.elapsed() >= std::time::Duration::from_secs(60)) {
        info(text);
        *last = Some(std::time::Instant::now());
    }
}

/// A progress line only a terminal shows (a child's latest output line):
/// off a terminal it would repeat the whole output.
pub fn progress_transient(text: &str) {
    if printer().terminal {
        let text: String = text.chars().take(100).collect();
        progress(&text);
    }
}

/// End a progress line on a terminal, so the next line starts clean.
fn clear_progress() {
    let p = printer();
    if !p.terminal {
        return;
    }
    let mut last = PROGRESS.lock().unwrap_or_else(|e| e.into_inner());
    if last.take().is_some() {
        to_stderr("\r\x1b[2K");
    }
}

fn stderr_line(text: &str) {
    clear_progress();
    let text = redact(&format!("{}{text}", label()));
    if printer().terminal {
        to_stderr(&format!("{text}\n"));
    } else {
        to_stderr(&format!("{} {text}\n", stamp()));
    }
}

/// The time of day, UTC, `HH:MM:SS`.
pub fn stamp() -> String {
    let secs =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default();
    format!("{:02}:{:02}:{:02}", secs / 3600 % 24, secs / 60 % 60, secs % 60)
}

/// `20261202T193000Z`: now, in UTC, as tag characters.
pub fn utc_stamp() -> String {
    let now = aws_sdk_ssm::primitives::DateTime::from(std::time::SystemTime::now());
    let text = now.fmt(aws_sdk_ssm::primitives::DateTimeFormat::DateTime).unwrap_or_default();
    let whole_seconds = text.split('.').next().unwrap_or_default();
    let mut stamp: String = whole_seconds.chars().filter(|c| c.is_ascii_alphanumeric()).collect();
    if !stamp.ends_with('Z') {
        stamp.push('Z');
    }
    stamp
}

/// One line of JSON on stdout, masked (a mask is plain text: the JSON stays valid).
fn json_line(value: &Value, pretty: bool) {
    let value = labelled(value);
    let text = if pretty { serde_json::to_string_pretty(&value) } else { serde_json::to_string(&value) };
    to_stdout(&format!("{}\n", redact(&text.unwrap_or_default())));
}

/// An NDJSON event (`{"event": kind, …fields}`) under `--json` for the long
/// verbs; nothing otherwise (the human text says the same on stderr).
/// Returns whether it was printed.
pub fn event(kind: &str, fields: Value) -> bool {
    let p = printer();
    if !(p.mode.json && p.shape == Shape::Events) {
        return false;
    }
    let mut object = serde_json::Map::new();
    object.insert("event".to_owned(), json!(kind));
    if let Value::Object(fields) = fields {
        object.extend(fields);
    }
    json_line(&Value::Object(object), false);
    true
}

/// A short verb's result document, under `--json`.
pub fn document(value: &Value) {
    if printer().mode.json {
        json_line(value, true);
        printer().documented.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A long verb's final summary, under `--json`: `{"event":"summary","ok":true,…}`.
pub fn summary(fields: Value) {
    let mut fields = fields;
    if let Value::Object(object) = &mut fields {
        object.insert("ok".to_owned(), json!(true));
    }
    event("summary", fields);
}

/// The run failed: the error on stderr and, under `--json`, as JSON on
/// stdout (the summary event, or the document) with `ok: false`.
pub fn failure(message: &str) {
    error_line(&format!("error: {message}"));
    let p = printer();
    if !p.mode.json {
        return;
    }
    match p.shape {
        Shape::Events => {
            event("summary", json!({ "ok": false, "error": message }));
        }
        Shape::Document if !p.documented.load(std::sync::atomic::Ordering::SeqCst) => {
            json_line(&json!({ "ok": false, "error": message }), true)
        }
        Shape::Document => {}
    }
}

/// Mask panic messages too: a panic prints its payload, which may hold a value.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let payload = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(no message)".to_owned());
        let place = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
        error_line(&format!("casey-deploy crashed{place}: {payload}; please report this"));
    }));
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::cell::RefCell;

    thread_local! {
        pub(super) static PRINTER: RefCell<Option<&'static Printer>> = const { RefCell::new(None) };
        static CAPTURE: RefCell<Option<(String, String)>> = const { RefCell::new(None) };
    }

    /// Append to this thread's capture, if one is on.
    pub(super) fn captured(f: impl FnOnce(&mut (String, String))) -> bool {
        CAPTURE.with(|c| c.borrow_mut().as_mut().map(f).is_some())
    }

    /// Run `f` with this thread printing in `mode` into buffers: (stdout, stderr).
    pub(crate) fn capture(mode: Mode, shape: Shape, f: impl FnOnce()) -> (String, String) {
        let printer: &'static Printer = Box::leak(Box::new(Printer::new(mode, shape, false)));
        PRINTER.with(|p| *p.borrow_mut() = Some(printer));
        CAPTURE.with(|c| *c.borrow_mut() = Some(Default::default()));
        f();
        PRINTER.with(|p| *p.borrow_mut() = None);
        CAPTURE.with(|c| c.borrow_mut().take()).unwrap_or_default()
    }

    const SECRET: &str = "s3cr3t-printed-everywhere";

    fn every_path() {
        crate::say!("info {SECRET}");
        crate::warn!("warn {SECRET}");
        crate::detail!("detail {SECRET}");
        crate::out!("OUT={SECRET}");
        crate::prompt!("prompt {SECRET}? ");
        progress(&format!("progress {SECRET}"));
        progress_live(&format!("live {SECRET}"), true);
        event("step", json!({"note": SECRET}));
        summary(json!({"note": SECRET}));
        failure(&format!("failed with {SECRET}"));
    }

    #[test]
    fn a_secret_is_masked_on_every_path_in_every_mode() {
        crate::redact::register(SECRET);
        for json in [false, true] {
            for shape in [Shape::Document, Shape::Events] {
                let mode = Mode { quiet: false, verbose: true, json };
                let (out, err) = capture(mode, shape, every_path);
                for text in [&out, &err] {
                    assert!(!text.contains(SECRET), "json={json} {shape:?}: {text}");
                }
                assert!(err.contains(&format!("info {}", crate::redact::MASK)), "{err}");
                assert!(err.contains("detail ") && err.contains("warning: warn "), "{err}");
                assert!(err.contains("error: failed with "), "{err}");
                if !json {
                    assert_eq!(out.trim(), format!("OUT={}", crate::redact::MASK));
                    continue;
                }
                // Nothing but JSON on stdout; out! lines went to stderr.
                assert!(err.contains("OUT="), "{err}");
                match shape {
                    Shape::Events => {
                        let events: Vec<Value> = out
                            .lines()
                            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
                            .collect();
                        let kinds: Vec<&str> = events.iter().filter_map(|e| e["event"].as_str()).collect();
                        assert_eq!(kinds, ["step", "summary", "summary"], "{out}");
                        assert_eq!(events[2]["ok"], false);
                    }
                    Shape::Document => {
                        let doc: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
                        assert_eq!(doc["ok"], false, "{out}");
                    }
                }
            }
        }
    }

    #[test]
    fn quiet_keeps_warnings_errors_and_results() {
        let mode = Mode { quiet: true, verbose: false, json: false };
        let (out, err) = capture(mode, Shape::Document, || {
            crate::say!("chatter");
            crate::detail!("more chatter");
            progress("ticking");
            crate::warn!("careful");
            crate::out!("KEY=value");
            failure("it broke");
        });
        assert_eq!(out, "KEY=value\n");
        assert!(!err.contains("chatter") && !err.contains("ticking"), "{err}");
        assert!(err.contains("warning: careful") && err.contains("error: it broke"), "{err}");
    }

    #[test]
    fn off_a_terminal_every_line_is_stamped() {
        let (_, err) = capture(Mode::default(), Shape::Document, || crate::say!("hello"));
        let (stamp, text) = err.trim_end().split_once(' ').unwrap();
        assert_eq!((stamp.len(), &stamp[2..3], text), (8, ":", "hello"), "{err}");
    }

    #[test]
    fn a_failure_after_a_document_adds_no_second_one() {
        let mode = Mode { quiet: false, verbose: false, json: true };
        let (out, _) = capture(mode, Shape::Document, || {
            document(&json!({"ok": false, "checks": []}));
            failure("a check failed");
        });
        let doc: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
        assert_eq!(doc["checks"], json!([]));
    }
}
