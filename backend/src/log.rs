//! Structured logs: one JSON object per line on stdout, which the awslogs
//! driver ships to CloudWatch as is.
//!
//! Every line has `timestamp` (RFC 3339, UTC), `level` and `message`; the
//! caller adds its own fields. Nothing here knows about secrets, so callers
//! must never pass credentials in.

use std::io::Write;
use std::time::SystemTime;

use aws_sdk_cloudwatchlogs::primitives::{DateTime, DateTimeFormat};
use serde_json::{Map, Value};

/// The current time as RFC 3339, e.g. `2025-01-31T12:00:00.123Z`.
pub fn now_rfc3339() -> String {
    DateTime::from(SystemTime::now()).fmt(DateTimeFormat::DateTime).unwrap_or_default()
}

pub fn info(message: &str, fields: Value) {
    emit("info", message, fields);
}

pub fn warn(message: &str, fields: Value) {
    emit("warn", message, fields);
}

pub fn error(message: &str, fields: Value) {
    emit("error", message, fields);
}

fn emit(level: &str, message: &str, fields: Value) {
    let mut line = Map::new();
    line.insert("timestamp".into(), now_rfc3339().into());
    line.insert("level".into(), level.into());
    line.insert("message".into(), message.into());
    if let Value::Object(fields) = fields {
        for (key, value) in fields {
            line.entry(key).or_insert(value);
        }
    }
    let mut out = std::io::stdout().lock();
    // Writing a log line must never take the service down (e.g. a closed
    // stdout), so errors are ignored.
    let _ = writeln!(out, "{}", Value::Object(line));
    let _ = out.flush();
}
