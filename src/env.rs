//! Where the AWS settings come from.
//!
//! `terraform/.env` is read as data with dotenvy (never run by a shell) and
//! layered over the process environment the way `source` would: the file
//! wins. The result becomes this process's environment, so every child
//! (terraform, docker) and every SDK client sees exactly the same settings.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::check::Problem;
use crate::redact::{self, key_hint};

/// The names of the env files' checks, as doctor lists them.
pub const DEPLOY_FILE: &str = "terraform/.env";
pub const DEPLOY_MODE: &str = "terraform/.env mode";
pub const BACKEND_FILE: &str = "backend/.env";
pub const BACKEND_MODE: &str = "backend/.env mode";

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
    /// A role assumed with a web identity token (AWS_ROLE_ARN and
    /// AWS_WEB_IDENTITY_TOKEN_FILE: CI's OIDC, EKS).
    WebIdentity(String),
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
            Source::WebIdentity(role) => {
                write!(f, "web identity for role {role} (AWS_ROLE_ARN, AWS_WEB_IDENTITY_TOKEN_FILE)")
            }
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
    pub warnings: Vec<Problem>,
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
        match region_from_env() {
            Some(region) if looks_like_region(&region) => parts.push(format!("region {region}")),
            // Never echo it: a value pasted into the wrong setting may be a secret.
            Some(_) => parts.push("region <not a region name: check AWS_REGION>".to_owned()),
            None => {}
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

/// Whether `region` has the shape of an AWS region name (`us-east-1`,
/// `us-gov-west-1`, `eu-isoe-west-1`). Anything else is never echoed, and
/// [`check_region`] refuses it.
pub fn looks_like_region(region: &str) -> bool {
    let parts: Vec<&str> = region.split('-').collect();
    let (number, words) = parts.split_last().unwrap_or((&"", &[]));
    parts.len() >= 3
        && region.len() <= 32
        && words[0].len() == 2
        && words.iter().all(|w| !w.is_empty() && w.chars().all(|c| c.is_ascii_lowercase()))
        && (1..=2).contains(&number.len())
        && number.chars().all(|c| c.is_ascii_digit())
}

/// Refuse a region setting that is not a region name, without echoing it.
pub fn check_region() -> Result<(), Problem> {
    for key in ["AWS_REGION", "AWS_DEFAULT_REGION"] {
        let value = std::env::var(key).unwrap_or_default();
        if !value.trim().is_empty() && !looks_like_region(value.trim()) {
            return Err(Problem::fail(
                "region",
                format!("{key} is not an AWS region name (such as us-east-1); its value is not shown, in case a key was pasted there"),
                format!("fix {key} in terraform/.env or in the environment"),
            ));
        }
    }
    Ok(())
}

/// Refuse to run without a region (`region`: what the SDK resolved).
pub fn require_region(region: Option<&str>) -> Result<(), Problem> {
    match region {
        Some(_) => Ok(()),
        None => Err(Problem::fail(
            "region",
            "no AWS region is set",
            "add AWS_REGION=us-east-1 (or your region) to terraform/.env, or set it in your AWS profile",
        )),
    }
}

/// A warning when backend/.env names another region than terraform uses: a
/// local backend would look for the stack's resources there.
pub fn check_backend_region(deploy: &str, backend: &BTreeMap<String, String>) -> Result<(), Problem> {
    match region_of(backend).filter(|b| looks_like_region(b)) {
        Some(b) if b != deploy => Err(Problem::warn(
            "region",
            format!("terraform uses {deploy}, backend/.env {b}: a local backend would look for the stack's resources in {b}"),
            "set the same AWS_REGION in terraform/.env and backend/.env",
        )),
        _ => Ok(()),
    }
}

/// The region an env file sets (AWS_REGION, else AWS_DEFAULT_REGION).
pub fn region_of(vars: &BTreeMap<String, String>) -> Option<&str> {
    ["AWS_REGION", "AWS_DEFAULT_REGION"].iter().filter_map(|k| vars.get(*k)).map(|v| v.trim()).find(|v| !v.is_empty())
}

/// Read `env_file` (an explicit path must exist; the default may be absent),
/// layer it over the process environment, and register secrets for redaction.
pub fn load(env_file: &Path, explicit: bool) -> Result<Settings, Problem> {
    if env_file.exists() {
        let warnings = check_permissions(DEPLOY_MODE, env_file).err().into_iter().collect();
        let vars = read_env_file(DEPLOY_FILE, env_file)?;
        Ok(Settings { warnings, ..layer(Some(env_file), vars)? })
    } else if explicit {
        Err(missing_explicit(env_file))
    } else {
        layer(None, BTreeMap::new())
    }
}

/// An --env-file that is not there.
pub fn missing_explicit(env_file: &Path) -> Problem {
    Problem::fail(
        DEPLOY_FILE,
        format!("env file {} does not exist (given by --env-file or CASEY_ENV_FILE)", env_file.display()),
        "create it from terraform/.env.example, or drop --env-file",
    )
}

/// A warning when there is no terraform/.env and nothing else to find
/// credentials with but the default chain.
pub fn check_source(settings: &Settings) -> Result<(), Problem> {
    match settings.source {
        Source::DefaultChain => Err(Problem::warn(
            DEPLOY_FILE,
            "absent, and no AWS keys or AWS_PROFILE in the environment either",
            "cp terraform/.env.example terraform/.env, fill in the admin's keys, then `chmod 600 terraform/.env`",
        )),
        _ => Ok(()),
    }
}

/// Layer already-parsed `from_file` (read from `env_file`) over the process
/// environment and work out where the credentials come from.
pub fn layer(env_file: Option<&Path>, from_file: BTreeMap<String, String>) -> Result<Settings, Problem> {
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
    } else if let (Ok(role), true) =
        (std::env::var("AWS_ROLE_ARN"), std::env::var("AWS_WEB_IDENTITY_TOKEN_FILE").is_ok_and(|f| !f.is_empty()))
    {
        Source::WebIdentity(role)
    } else {
        Source::DefaultChain
    };
    if has_keys && std::env::var("AWS_SECRET_ACCESS_KEY").map_or(true, |v| v.is_empty()) {
        let place = loaded.as_deref().map_or("the environment".to_owned(), |p| p.display().to_string());
        return Err(Problem::fail(
            "deploy credentials",
            "AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not",
            format!("add AWS_SECRET_ACCESS_KEY to {place}"),
        ));
    }
    Ok(Settings { source, warnings: Vec::new() })
}

/// The largest env file read: it holds a handful of settings. Anything
/// bigger (or endless, like `/dev/zero`) is refused before it is read.
pub const MAX_ENV_FILE: u64 = 64 * 1024;

/// Parse an env file into key/value pairs. Refuses at once anything that is
/// not a regular file of at most [`MAX_ENV_FILE`] bytes. A line that cannot
/// be parsed fails with the file, its line number and at most its key name:
/// never a value. A problem is named `check` (`terraform/.env`, `backend/.env`).
pub fn read_env_file(check: &'static str, path: &Path) -> Result<BTreeMap<String, String>, Problem> {
    let text = read_small_file(path).map_err(|(found, fix)| Problem::fail(check, found, fix))?;
    let mut vars = BTreeMap::new();
    for item in dotenvy::from_read_iter(text.as_bytes()) {
        match item {
            Ok((key, value)) => {
                vars.insert(key, value);
            }
            Err(dotenvy::Error::Io(err)) => {
                return Err(Problem::fail(check, format!("could not read {}: {err}", path.display()), ""))
            }
            // Never dotenvy's own text: it quotes what it choked on, which
            // may be the secret itself.
            Err(_) => {
                let (found, fix) = parse_error(path, &text);
                return Err(Problem::fail(check, found, fix));
            }
        }
    }
    // Whatever reads an env file, its secrets are masked from now on.
    register_secrets(vars.clone());
    Ok(vars)
}

/// A warning when backend/.env is absent: a local backend runs without AWS.
pub fn check_backend_present(path: &Path, service_user: &str) -> Result<(), Problem> {
    if path.exists() {
        return Ok(());
    }
    Err(Problem::warn(
        BACKEND_FILE,
        "absent: the backend runs without AWS when started locally",
        format!("cp backend/.env.example backend/.env, fill in the service account's ({service_user}) keys, then `chmod 600 backend/.env`"),
    ))
}

/// The one permissions rule for an env file (it holds AWS keys): anyone
/// but its owner may read or write it → a warning, fixed by `chmod 600`.
/// `Ok` holds the mode, for the record.
pub fn check_permissions(check: &'static str, path: &Path) -> Result<String, Problem> {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = std::fs::metadata(path) else { return Ok("mode unknown".to_owned()) };
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 == 0 {
        return Ok(format!("mode {mode:o}"));
    }
    let what = if mode & 0o022 != 0 { "writable" } else { "readable" };
    let who = if mode & 0o007 != 0 { "other users" } else { "its group" };
    Err(Problem::warn(
        check,
        format!("{} is {what} by {who} (mode {mode:o}), and it holds AWS keys", path.display()),
        format!("run `chmod 600 {}`", path.display()),
    ))
}

/// The file's text, after checking (without opening it: a FIFO would block)
/// that it is a regular file of sane size.
fn read_small_file(path: &Path) -> Result<String, (String, String)> {
    use std::io::Read;
    use std::os::unix::fs::FileTypeExt;
    let unreadable = |err: std::io::Error| {
        (
            format!("could not read {}: {err}", path.display()),
            format!("check that {} is a file you may read", path.display()),
        )
    };
    let meta = std::fs::metadata(path).map_err(unreadable)?;
    let kind = meta.file_type();
    if !kind.is_file() {
        let what = if kind.is_dir() {
            "a directory"
        } else if kind.is_char_device() {
            "a character device"
        } else if kind.is_block_device() {
            "a block device"
        } else if kind.is_fifo() {
            "a named pipe"
        } else if kind.is_socket() {
            "a socket"
        } else {
            "something other than a file"
        };
        return Err((
            format!("{} is {what}, not a regular file", path.display()),
            "an env file must be a plain text file of KEY=VALUE lines (see terraform/.env.example)".to_owned(),
        ));
    }
    let too_big = format!(
        "an env file holds a few KEY=VALUE settings and may be at most {} KiB: point --env-file at the right file",
        MAX_ENV_FILE / 1024
    );
    if meta.len() > MAX_ENV_FILE {
        return Err((format!("{} is {} bytes", path.display(), meta.len()), too_big));
    }
    let file = std::fs::File::open(path).map_err(unreadable)?;
    // The file may grow between the check and the read: never read more
    // than one byte past the limit.
    let mut bytes = Vec::new();
    file.take(MAX_ENV_FILE + 1).read_to_end(&mut bytes).map_err(unreadable)?;
    if bytes.len() as u64 > MAX_ENV_FILE {
        return Err((format!("{} grew beyond {} KiB while it was read", path.display(), MAX_ENV_FILE / 1024), too_big));
    }
    String::from_utf8(bytes).map_err(|e| {
        let line = e.as_bytes()[..e.utf8_error().valid_up_to()].iter().filter(|b| **b == b'\n').count() + 1;
        (format!("{}:{line}: this line is not UTF-8 text", path.display()), format!("save {} as UTF-8", path.display()))
    })
}

/// The error for a file dotenvy could not parse: which line, and why, from
/// our own reading of the file setting by setting.
fn parse_error(path: &Path, text: &str) -> (String, String) {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    for (number, line) in logical_lines(text) {
        if dotenvy::from_read_iter(line.as_bytes()).all(|item| item.is_ok()) {
            continue;
        }
        let (key, why) = diagnose(&line);
        // The rest of the line may be a secret: mask it in anything printed
        // later (doctor goes on after this error).
        if key.as_deref().is_none_or(is_secret) {
            for word in line.split(|c: char| c.is_whitespace() || c == '=' || c == '"' || c == '\'') {
                if Some(word) != key.as_deref() {
                    redact::register(word);
                }
            }
        }
        let named = key.map(|k| format!(" (the line of `{k}`)")).unwrap_or_default();
        return (
            format!(
                "{}:{number}: cannot parse this line{named}: {why} (the line itself is not shown: it may hold a secret)",
                path.display()
            ),
            format!(
                "edit {}: each line must be KEY=VALUE, with quotes around a value that contains spaces",
                path.display()
            ),
        );
    }
    (
        format!("{}: cannot parse this file as KEY=VALUE lines", path.display()),
        format!("edit {}: put quotes around values that contain spaces", path.display()),
    )
}

/// The file split as dotenvy splits it: one entry per setting (a quoted
/// value may span lines), each with the number of the line it starts on.
/// Comments are dropped.
fn logical_lines(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut start = 0;
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for (index, physical) in text.split_inclusive('\n').enumerate() {
        if current.is_empty() {
            start = index + 1;
            if physical.trim_start().starts_with('#') {
                continue;
            }
        }
        let mut comment_at = None;
        let mut after_blank = false;
        for (pos, c) in physical.char_indices() {
            if escaped {
                escaped = false;
            } else if let Some(q) = quote {
                if c == '\\' {
                    escaped = true;
                } else if c == q {
                    quote = None;
                }
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' || c == '\'' {
                quote = Some(c);
            } else if c == '#' && after_blank {
                comment_at = Some(pos);
                break;
            }
            after_blank = quote.is_none() && !escaped && (c == ' ' || c == '\t');
        }
        current.push_str(&physical[..comment_at.unwrap_or(physical.len())]);
        if quote.is_none() && !escaped {
            out.push((start, current.trim_end_matches(['\n', '\r']).to_owned()));
            current.clear();
        }
    }
    if !current.is_empty() {
        out.push((start, current));
    }
    out
}

/// The key of a line that did not parse (only when it plainly is a variable
/// name, never a word that could be a value), and what is wrong with it.
fn diagnose(line: &str) -> (Option<String>, &'static str) {
    let body = line.trim_start();
    let body = body.strip_prefix("export ").map(str::trim_start).unwrap_or(body);
    let is_key = |k: &str| {
        k.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
    };
    match body.split_once('=') {
        Some((key, value)) if is_key(key.trim_end()) => {
            let key = Some(key.trim_end().to_owned());
            let value = value.trim();
            let doubles = value.chars().filter(|c| *c == '"').count();
            let singles = value.chars().filter(|c| *c == '\'').count();
            if doubles % 2 == 1 || singles % 2 == 1 {
                (key, "a quote in the value is not closed")
            } else if value.contains([' ', '\t']) {
                (key, "there is more text after a space or a tab in the value")
            } else {
                (key, "the value holds a character that needs quotes (such as a backslash)")
            }
        }
        Some(_) => (None, "the text before `=` is not a variable name"),
        None => {
            // `AWS_SECRET_ACCESS_KEY wJalr…`: the first word is shown only
            // when it looks like a variable name (upper case with `_`), which
            // a secret key or token does not.
            let first = body.split_whitespace().next().unwrap_or("");
            let looks_like_name = first.contains('_')
                && first.len() <= 64
                && first.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
            (looks_like_name.then(|| first.to_owned()), "there is no `=` on it")
        }
    }
}

/// The one rule for what counts as a secret: whether a variable's value is
/// one, judged by its name. Paths to secrets (`…_TOKEN_FILE`) are not
/// secrets themselves. Every value it names is registered for masking.
pub fn is_secret(key: &str) -> bool {
    let upper = key.to_ascii_uppercase();
    if upper.ends_with("_FILE") || upper.ends_with("_PATH") || upper.ends_with("_DIR") {
        return false;
    }
    SECRET_VARS.contains(&upper.as_str())
        || ["SECRET", "TOKEN", "PASSWORD", "PASSWD", "PRIVATE_KEY", "API_KEY", "CREDENTIAL"]
            .iter()
            .any(|word| upper.contains(word))
}

/// Register every value of a secret-named variable for masking.
pub fn register_secrets<I: IntoIterator<Item = (String, String)>>(vars: I) {
    for (key, value) in vars {
        if is_secret(&key) {
            redact::register(&value);
        }
    }
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
        let err = read_env_file(DEPLOY_FILE, &path).unwrap_err().to_string();
        assert!(err.contains(".env:3:"), "{err}");
        std::fs::write(&path, "AWS_REGION=us-east-1\nAWS_SECRET_ACCESS_KEY wJalrXUtnFEMI/K7MDENG\n").unwrap();
        let err = read_env_file(DEPLOY_FILE, &path).unwrap_err().to_string();
        assert!(err.contains(".env:2:") && err.contains("`AWS_SECRET_ACCESS_KEY`"), "{err}");
        assert!(!err.contains("wJalr"), "a secret leaked: {err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn settings_are_numbered_by_the_line_they_start_on() {
        let text = "# c\nA=1\nB=\"x\ny\"\n\nC='q # not a comment' # a comment\nD=4\n";
        let lines: Vec<usize> = logical_lines(text).into_iter().map(|(n, _)| n).collect();
        assert_eq!(lines, vec![2, 3, 5, 6, 7]);
        assert_eq!(logical_lines("A=\"open\nB=2\n"), vec![(1, "A=\"open\nB=2\n".to_owned())]);
    }

    #[test]
    fn only_region_names_look_like_regions() {
        for ok in ["us-east-1", "eu-central-2", "us-gov-west-1", "us-isob-east-1", "ap-southeast-4"] {
            assert!(looks_like_region(ok), "{ok}");
        }
        for bad in ["", "us-east", "useast1", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "US-EAST-1", "us-east-123"] {
            assert!(!looks_like_region(bad), "{bad}");
        }
    }

    #[test]
    fn secret_names() {
        for name in ["AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "GITHUB_TOKEN", "DB_PASSWORD", "OPENAI_API_KEY"] {
            assert!(is_secret(name), "{name}");
        }
        for name in ["AWS_ACCESS_KEY_ID", "AWS_REGION", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_PROFILE"] {
            assert!(!is_secret(name), "{name}");
        }
    }

    #[test]
    fn quoted_values_parse() {
        let dir = std::env::temp_dir().join(format!("casey-env-test2-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(".env");
        std::fs::write(&path, "export AWS_REGION=\"eu-west-1\"\nA='b c'\n").unwrap();
        let vars = read_env_file(DEPLOY_FILE, &path).unwrap();
        assert_eq!(vars["AWS_REGION"], "eu-west-1");
        assert_eq!(vars["A"], "b c");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
