//! Where the AWS settings come from.
//!
//! `terraform/.env` is read as data with dotenvy (never run by a shell) and
//! layered over the process environment the way `source` would: the file
//! wins. The result becomes this process's environment, so every child
//! (terraform, docker) and every SDK client sees exactly the same settings.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::redact::{self, key_hint};

/// Variables whose values are secrets wherever they appear.
const SECRET_VARS: &[&str] = &["AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"];

/// How the AWS credentials will be found.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// Keys in the env file.
    EnvFile(PathBuf),
    /// Keys in the process environment.
    Environment,
    /// A named profile (AWS_PROFILE), from the env file or the environment.
    Profile(String),
    /// The SDK's default chain: the default profile, SSO, container or instance role.
    DefaultChain,
    /// The local sandbox's admin (--local), at this endpoint.
    Sandbox(String),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::EnvFile(path) => write!(f, "access keys from {}", path.display()),
            Source::Environment => write!(f, "access keys from the environment (AWS_ACCESS_KEY_ID)"),
            Source::Profile(name) => write!(f, "AWS profile `{name}` (AWS_PROFILE)"),
            Source::DefaultChain => write!(f, "the default AWS profile (~/.aws/credentials or ~/.aws/config)"),
            Source::Sandbox(endpoint) => write!(f, "the local sandbox's admin (emulator at {endpoint})"),
        }
    }
}

/// The loaded settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub source: Source,
    /// Warnings to show (e.g. file permissions).
    pub warnings: Vec<String>,
}

impl Settings {
    /// One line for the user, without secrets.
    pub fn describe(&self) -> String {
        let mut parts = vec![format!("credentials: {}", self.source)];
        if let Ok(key) = std::env::var("AWS_ACCESS_KEY_ID") {
            if matches!(self.source, Source::EnvFile(_) | Source::Environment) {
                parts.push(format!("key {}", key_hint(&key)));
            }
        }
        if let Some(region) = region_from_env() {
            parts.push(format!("region {region}"));
        }
        if let Ok(endpoint) = std::env::var("AWS_ENDPOINT_URL") {
            parts.push(format!("endpoint {endpoint}"));
        }
        parts.join(", ")
    }
}

/// AWS_REGION, else AWS_DEFAULT_REGION.
pub fn region_from_env() -> Option<String> {
    ["AWS_REGION", "AWS_DEFAULT_REGION"].iter().filter_map(|k| std::env::var(k).ok()).find(|v| !v.trim().is_empty())
}

/// Read `env_file` (an explicit path must exist; the default may be absent),
/// layer it over the process environment, and register secrets for redaction.
pub fn load(env_file: &Path, explicit: bool) -> Result<Settings> {
    if env_file.exists() {
        let warnings = permission_warning(env_file).into_iter().collect();
        let vars = read_env_file(env_file)?;
        Ok(Settings { warnings, ..layer(Some(env_file), vars)? })
    } else if explicit {
        bail!(
            "env file {} does not exist; create it from terraform/.env.example or drop --env-file",
            env_file.display()
        );
    } else {
        layer(None, BTreeMap::new())
    }
}

/// Layer already-parsed `from_file` (read from `env_file`) over the process
/// environment and work out where the credentials come from.
pub fn layer(env_file: Option<&Path>, from_file: BTreeMap<String, String>) -> Result<Settings> {
    // Secrets already in the environment are masked whatever the file says.
    register_secrets(std::env::vars());
    let loaded = env_file.map(Path::to_path_buf);
    register_secrets(from_file.clone());
    for (key, value) in &from_file {
        // Single-threaded here: called before the runtime and any thread start.
        std::env::set_var(key, value);
    }

    let has_keys = std::env::var("AWS_ACCESS_KEY_ID").is_ok_and(|v| !v.is_empty());
    let source = if has_keys {
        match (&loaded, from_file.contains_key("AWS_ACCESS_KEY_ID")) {
            (Some(path), true) => Source::EnvFile(path.clone()),
            _ => Source::Environment,
        }
    } else if let Some(profile) = std::env::var("AWS_PROFILE").ok().filter(|p| !p.is_empty()) {
        Source::Profile(profile)
    } else {
        Source::DefaultChain
    };
    if has_keys && std::env::var("AWS_SECRET_ACCESS_KEY").map_or(true, |v| v.is_empty()) {
        let place = loaded.as_deref().map_or("the environment".to_owned(), |p| p.display().to_string());
        bail!("AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not; add it to {place}");
    }
    Ok(Settings { source, warnings: Vec::new() })
}

/// Parse an env file into key/value pairs, failing with the file and line.
pub fn read_env_file(path: &Path) -> Result<BTreeMap<String, String>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("could not read {}", path.display()))?;
    let mut vars = BTreeMap::new();
    for item in dotenvy::from_read_iter(text.as_bytes()) {
        match item {
            Ok((key, value)) => {
                vars.insert(key, value);
            }
            Err(dotenvy::Error::LineParse(line, _)) => {
                let number = line_number(&text, &line);
                // Only the key part of the line: the rest may hold a secret
                // (also when the `=` is missing: `KEY secret`).
                let shown: String = line
                    .lines()
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .take(40)
                    .collect();
                bail!(
                    "{}:{number}: cannot parse this line (starts with `{}`); each line must be KEY=VALUE, with quotes around values that contain spaces",
                    path.display(),
                    shown.trim()
                );
            }
            Err(err) => bail!("{}: {err}", path.display()),
        }
    }
    Ok(vars)
}

fn line_number(text: &str, fragment: &str) -> usize {
    let first = fragment.lines().next().unwrap_or("").trim();
    text.lines().position(|l| !first.is_empty() && l.trim().starts_with(first)).map_or(0, |i| i + 1)
}

fn register_secrets<I: IntoIterator<Item = (String, String)>>(vars: I) {
    for (key, value) in vars {
        let upper = key.to_ascii_uppercase();
        if SECRET_VARS.contains(&upper.as_str()) || upper.contains("PASSWORD") || upper.ends_with("_SECRET") {
            redact::register(&value);
        }
    }
}

fn permission_warning(path: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode();
    (mode & 0o077 != 0).then(|| {
        format!(
            "{} is readable by other users (mode {:o}); it holds AWS keys: run `chmod 600 {}`",
            path.display(),
            mode & 0o777,
            path.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_line_names_file_and_line() {
        let dir = std::env::temp_dir().join(format!("casey-env-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(".env");
        std::fs::write(&path, "AWS_REGION=us-east-1\n# comment\nNOT A VALID LINE\n").unwrap();
        let err = read_env_file(&path).unwrap_err().to_string();
        assert!(err.contains(".env:3:"), "{err}");
        std::fs::write(&path, "AWS_REGION=us-east-1\nAWS_SECRET_ACCESS_KEY wJalrXUtnFEMI/K7MDENG\n").unwrap();
        let err = read_env_file(&path).unwrap_err().to_string();
        assert!(err.contains(".env:2:") && err.contains("`AWS_SECRET_ACCESS_KEY`"), "{err}");
        assert!(!err.contains("wJalr"), "a secret leaked: {err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn quoted_values_parse() {
        let dir = std::env::temp_dir().join(format!("casey-env-test2-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(".env");
        std::fs::write(&path, "export AWS_REGION=\"eu-west-1\"\nA='b c'\n").unwrap();
        let vars = read_env_file(&path).unwrap();
        assert_eq!(vars["AWS_REGION"], "eu-west-1");
        assert_eq!(vars["A"], "b c");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
