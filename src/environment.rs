//! Which environment a run targets (`--env`, `CASEY_ENV`): production, the
//! seed's one stack, keeps today's names, state and workspace; any other
//! has its own names (terraform/locals.tf adds `-<env>`), its own Terraform
//! workspace (and so its own state) and may have its own settings files.

use std::path::{Path, PathBuf};

/// The default environment: the names, state key and workspace of the
/// stack as it was before there were environments.
pub const PRODUCTION: &str = "production";

/// The environment's name, as terraform/variables.tf validates it: 1-16
/// lowercase letters, digits and dashes, starting and ending with a letter
/// or digit, and not `ecs`/`network` as a first word (the admin policy
/// parts end in them). Checked here too, before any call is made.
pub fn parse(name: &str) -> Result<String, String> {
    let chars_ok = name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    let ends_ok = !name.starts_with('-') && !name.ends_with('-');
    if name.is_empty() || name.len() > 16 || !chars_ok || !ends_ok {
        return Err(format!(
            "`{name}` is not an environment name: 1-16 lowercase letters, digits or dashes, starting and ending with a letter or digit (e.g. staging)"
        ));
    }
    let first_word = name.split('-').next().unwrap_or_default();
    if first_word == "ecs" || first_word == "network" {
        return Err(format!(
            "`{name}` cannot be an environment: casey-terraform-admin-{name} would be the name of another environment's admin policy part (casey-terraform-admin-{first_word}-<env>); choose another name, e.g. staging"
        ));
    }
    Ok(name.to_owned())
}

/// The Terraform workspace that holds the environment's state: `default`
/// for production (today's state file and S3 key), the name otherwise.
pub fn workspace(env: &str) -> &str {
    if env == PRODUCTION {
        "default"
    } else {
        env
    }
}

/// `terraform/<env>.env` when it exists (the environment's own account or
/// credentials), otherwise `terraform/.env`.
pub fn env_file(terraform: &Path, env: &str) -> PathBuf {
    let own = terraform.join(format!("{env}.env"));
    if own.is_file() {
        own
    } else {
        terraform.join(".env")
    }
}

/// `terraform/<env>.tfvars` when it exists: passed before the user's
/// `--var-file`s and `--var`s, which win over it.
pub fn tfvars(terraform: &Path, env: &str) -> Option<PathBuf> {
    Some(terraform.join(format!("{env}.tfvars"))).filter(|p| p.is_file())
}

/// Where the local state of `workspace` is (terraform's layout).
pub fn local_state_path(tf_dir: &Path, workspace: &str) -> PathBuf {
    if workspace == "default" {
        tf_dir.join("terraform.tfstate")
    } else {
        tf_dir.join("terraform.tfstate.d").join(workspace).join("terraform.tfstate")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_as_terraform_checks_them() {
        for good in ["production", "staging", "dev-2", "a", "ecsx", "networking", &"a".repeat(16)] {
            assert_eq!(parse(good).as_deref(), Ok(good), "{good}");
        }
        for bad in ["", "Staging", "-a", "a-", "a_b", "ecs", "ecs-staging", "network", "network-1", &"a".repeat(17)] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        assert_eq!(workspace("production"), "default");
        assert_eq!(workspace("staging"), "staging");
        let dir = Path::new("/x");
        assert_eq!(local_state_path(dir, "default"), dir.join("terraform.tfstate"));
        assert_eq!(local_state_path(dir, "staging"), dir.join("terraform.tfstate.d/staging/terraform.tfstate"));
    }
}
