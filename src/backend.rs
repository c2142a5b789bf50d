//! Where the stack's Terraform state lives: the S3 backend configuration
//! that `state bootstrap` writes to `terraform/backend.tf`, read back by the
//! deploy lock (which sits beside the state) and the account pin.

use std::path::Path;

/// The file `state bootstrap` writes; teams commit it.
pub const FILE: &str = "backend.tf";

use crate::check::Problem;
use crate::environment::PRODUCTION;

/// The prefix of the other environments' state keys (Terraform's S3
/// backend keeps workspace `W`'s state at `<prefix>/W/<key>`): under
/// `casey/`, where the admin policy grants the state objects.
pub const WORKSPACE_KEY_PREFIX: &str = "casey";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    pub bucket: String,
    /// Production's state (the default workspace).
    pub key: String,
    pub region: String,
    /// `workspace_key_prefix`, when set: Terraform's default (`env:`) is
    /// outside the admin's rights, so other environments need it.
    pub workspace_key_prefix: Option<String>,
}

impl Backend {
    /// The tool's names: one bucket per account and region (bucket names
    /// are global, so the account id keeps them unique), one key per
    /// environment. `casey-tfstate-` + 12 + `-` + a region stays far below
    /// S3's 63 characters.
    pub fn default_for(account: &str, region: &str) -> Backend {
        Backend {
            bucket: format!("casey-tfstate-{account}-{region}"),
            key: format!("casey/{PRODUCTION}/terraform.tfstate"),
            region: region.to_owned(),
            workspace_key_prefix: Some(WORKSPACE_KEY_PREFIX.to_owned()),
        }
    }

    /// The object holding `env`'s state.
    pub fn state_key(&self, env: &str) -> String {
        match (env, &self.workspace_key_prefix) {
            (PRODUCTION, _) => self.key.clone(),
            (_, Some(prefix)) => format!("{prefix}/{env}/{}", self.key),
            (_, None) => format!("env:/{env}/{}", self.key),
        }
    }

    /// `env`'s deploy lock object: production's beside its state
    /// (terraform's own lock is `<key>.tflock`), another's at
    /// `<prefix>/<env>/deploy.lock`, beside its state's folder.
    pub fn lock_key(&self, env: &str) -> String {
        if env != PRODUCTION {
            let prefix = self.workspace_key_prefix.as_deref().unwrap_or("env:");
            return format!("{prefix}/{env}/deploy.lock");
        }
        match self.key.rsplit_once('/') {
            Some((dir, _)) => format!("{dir}/deploy.lock"),
            None => "deploy.lock".to_owned(),
        }
    }

    /// The account a bucket named by [`Backend::default_for`] belongs to.
    pub fn account(&self) -> Option<&str> {
        let rest = self.bucket.strip_prefix("casey-tfstate-")?;
        let account = rest.get(..12)?;
        (account.chars().all(|c| c.is_ascii_digit()) && rest[12..].starts_with('-')).then_some(account)
    }

    /// `backend.tf`, `terraform fmt` clean. Path-style addressing when the
    /// S3 endpoint is not AWS's (an emulator on loopback has no bucket DNS).
    pub fn render(&self, path_style: bool) -> String {
        let mut settings = vec![
            ("bucket", format!("\"{}\"", self.bucket)),
            ("key", format!("\"{}\"", self.key)),
            ("region", format!("\"{}\"", self.region)),
            ("encrypt", "true".to_owned()),
            ("use_lockfile", "true".to_owned()),
        ];
        if let Some(prefix) = &self.workspace_key_prefix {
            settings.push(("workspace_key_prefix", format!("\"{prefix}\"")));
        }
        if path_style {
            settings.push(("use_path_style", "true".to_owned()));
        }
        let width = settings.iter().map(|(k, _)| k.len()).max().unwrap_or_default();
        let mut text = String::from(
            "# Written by `casey-deploy state bootstrap`: the stack's state is in S3,\n\
             # locked by Terraform's own lock file (use_lockfile); environments other\n\
             # than production under workspace_key_prefix. Commit this file.\n\
             terraform {\n  backend \"s3\" {\n",
        );
        for (key, value) in settings {
            text.push_str(&format!("    {key:<width$} = {value}\n"));
        }
        text.push_str("  }\n}\n");
        text
    }
}

/// The check doctor lists the state's location under.
pub const CHECK: &str = "state";

/// Where the state is: in S3 (as `backend.tf` says), or a local file; a
/// `backend.tf` this tool cannot read is a problem (the lock would be
/// taken beside a state it does not know), and so is an S3 backend that
/// cannot hold environment `env`'s state (see [`load`]).
pub fn check(dir: &Path, env: &str) -> Result<String, Problem> {
    Ok(match load(dir, env)? {
        Some(b) => format!("s3://{}/{} ({}, Terraform's native lock)", b.bucket, b.state_key(env), b.region),
        None => "a local file, on this machine only (`casey-deploy state bootstrap` moves it to S3)".into(),
    })
}

/// `dir/backend.tf`, read once per run: `None` for a local state. An
/// environment other than production needs `workspace_key_prefix`:
/// without it Terraform keeps the state under `env:/`, which the admin
/// policy does not grant (and a team would not look for).
pub fn load(dir: &Path, env: &str) -> Result<Option<Backend>, Problem> {
    let backend = configured(dir).map_err(|why| {
        Problem::fail(
            CHECK,
            why,
            format!(
                "write the S3 backend as `state bootstrap` does (bucket, key, region as strings), or move {FILE} aside"
            ),
        )
    })?;
    match &backend {
        Some(b) if env != PRODUCTION && b.workspace_key_prefix.is_none() => Err(no_prefix(dir, b, env)),
        _ => Ok(backend),
    }
}

/// The problem of an S3 backend without `workspace_key_prefix`, for environment `env`.
pub fn no_prefix(dir: &Path, backend: &Backend, env: &str) -> Problem {
    Problem::fail(
        CHECK,
        format!(
            "{} sets no workspace_key_prefix, so environment {env}'s state would be s3://{}/{}, outside the admin's rights",
            dir.join(FILE).display(),
            backend.bucket,
            backend.state_key(env)
        ),
        format!(
            "add `workspace_key_prefix = \"{WORKSPACE_KEY_PREFIX}\"` to its backend \"s3\" block (as `state bootstrap` writes it; production's state does not move), commit it, then run the command again"
        ),
    )
}

/// What `dir/backend.tf` configures: `Ok(None)` without the file, an error
/// for a backend this tool cannot read (another backend type, or settings
/// that are not plain strings).
pub fn configured(dir: &Path) -> Result<Option<Backend>, String> {
    let path = dir.join(FILE);
    let Ok(text) = std::fs::read_to_string(&path) else { return Ok(None) };
    parse(&text).map(Some).map_err(|why| format!("{} {why}", path.display()))
}

fn parse(text: &str) -> Result<Backend, String> {
    if !text.lines().any(|l| l.trim_start().starts_with("backend \"s3\"")) {
        return Err("configures no S3 backend (casey-deploy only reads the S3 backend `state bootstrap` writes)".into());
    }
    let value = |name: &str| {
        text.lines().find_map(|line| {
            let (key, value) = line.split_once('=')?;
            (key.trim() == name).then(|| value.trim().trim_matches('"').to_owned())
        })
    };
    let workspace_key_prefix = value("workspace_key_prefix");
    match (value("bucket"), value("key"), value("region")) {
        (Some(bucket), Some(key), Some(region)) if !bucket.is_empty() && !key.is_empty() => {
            Ok(Backend { bucket, key, region, workspace_key_prefix })
        }
        _ => Err("does not set bucket, key and region as plain strings".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rendered_backend_is_read_back_with_its_lock_and_account() {
        let backend = Backend::default_for("123456789012", "eu-west-2");
        assert_eq!(backend.bucket, "casey-tfstate-123456789012-eu-west-2");
        assert!(backend.bucket.len() <= 63);
        assert_eq!(backend.lock_key("production"), "casey/production/deploy.lock");
        assert_eq!(backend.state_key("production"), "casey/production/terraform.tfstate");
        assert_eq!(backend.lock_key("staging"), "casey/staging/deploy.lock");
        assert_eq!(backend.state_key("staging"), "casey/staging/casey/production/terraform.tfstate");
        assert_eq!(backend.account(), Some("123456789012"));
        for path_style in [false, true] {
            let text = backend.render(path_style);
            assert_eq!(parse(&text).unwrap(), backend);
            assert_eq!(text.contains("use_path_style       = true"), path_style, "{text}");
        }
        // Aligned as `terraform fmt` aligns (tests/state.rs runs it on the written file).
        assert!(
            backend.render(false).contains("\n    bucket               = \"casey-tfstate-"),
            "{}",
            backend.render(false)
        );
        let other = Backend {
            bucket: "team-state".into(),
            key: "x.tfstate".into(),
            region: "us-east-1".into(),
            workspace_key_prefix: None,
        };
        assert_eq!(other.account(), None);
        assert_eq!(other.lock_key("production"), "deploy.lock");
        assert_eq!(parse(&other.render(false)).unwrap(), other, "no prefix: none read back");
    }

    #[test]
    fn a_backend_it_did_not_write_is_an_error() {
        assert!(parse("terraform {\n  backend \"gcs\" {}\n}\n").is_err());
        assert!(parse("terraform {\n  backend \"s3\" {\n    bucket = var.b\n  }\n}\n").is_err());
    }
}
