//! Running terraform: init, plan, show, apply, import, output.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::check::Problem;
use crate::process::{Command, Output};

/// The user's variables: `-var KEY=VALUE` pairs and `-var-file` files.
#[derive(Debug, Clone, Default)]
pub struct Vars {
    pub vars: Vec<(String, String)>,
    pub files: Vec<PathBuf>,
}

/// Terraform in one directory, with the variables every call passes.
pub struct Terraform {
    dir: PathBuf,
    var_args: Vec<String>,
    /// The environment (`-var environment=`), and its workspace: the
    /// `TF_WORKSPACE` of every call.
    environment: String,
    workspace: String,
}

/// What kind of plan to make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlanMode {
    Normal,
    RefreshOnly,
    /// `-destroy`: a plan that removes what it targets.
    Destroy,
    NamesOnly,
}

/// A plan file in a private (0700) folder under `.terraform/`, removed when
/// dropped: a plan can hold variable values and must not linger. The folder
/// is named after this process (`casey-deploy-<pid>-<name>`), so one left by
/// a run that was killed is recognised and removed by the next run.
pub struct PlanFile {
    dir: PathBuf,
    path: PathBuf,
}

/// Under `.terraform/`: what the last successful `init` read ([`init_inputs`]).
const INIT_STAMP: &str = "casey-init.sha256";

/// A digest of everything `terraform init` depends on in `dir`: every
/// `*.tf`/`*.tf.json` file and the lock file (names and contents), the
/// backend state init wrote, the installed providers' folder listing, the
/// terraform binary, and the CLI configuration in use.
fn init_inputs(dir: &Path, workspace: &str) -> String {
    use sha2::Digest as _;
    let mut hash = sha2::Sha256::new();
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().unwrap_or_default().to_string_lossy();
            name.ends_with(".tf") || name.ends_with(".tf.json") || name == ".terraform.lock.hcl"
        })
        .collect();
    names.push(dir.join(".terraform").join("terraform.tfstate"));
    names.push(dir.join(".terraform").join("modules").join("modules.json"));
    names.sort();
    for path in &names {
        hash.update(path.file_name().unwrap_or_default().as_encoded_bytes());
        hash.update(std::fs::read(path).unwrap_or_default());
    }
    let providers = dir.join(".terraform").join("providers");
    let mut installed = Vec::new();
    let mut stack = vec![providers];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            installed.push(path.display().to_string());
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(path);
            }
        }
    }
    installed.sort();
    hash.update(installed.join("\n"));
    // Another terraform (an upgrade) may need another init.
    if let Some(binary) = crate::process::on_path("terraform") {
        let meta = std::fs::metadata(&binary).ok();
        let modified = meta.as_ref().and_then(|m| m.modified().ok()).map(|t| format!("{t:?}")).unwrap_or_default();
        hash.update(format!("{}:{}:{modified}\n", binary.display(), meta.map_or(0, |m| m.len())));
    }
    for var in ["TF_CLI_CONFIG_FILE", "TF_DATA_DIR"] {
        hash.update(format!("{var}={}\n", std::env::var(var).unwrap_or_default()));
    }
    hash.update(format!("TF_WORKSPACE={workspace}\n"));
    hash.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The local state `state bootstrap` moved to S3 is kept under this name
/// (with a UTC time), which terraform never reads.
pub const MOVED_STATE_PREFIX: &str = "terraform.tfstate.moved-to-s3-";

/// The prefix of every plan folder.
const PLAN_DIR_PREFIX: &str = "casey-deploy-";

impl PlanFile {
    pub fn create(tf_dir: &Path, name: &str) -> Result<PlanFile> {
        use std::os::unix::fs::DirBuilderExt;
        sweep_stale_plans(tf_dir);
        let dir = tf_dir.join(".terraform").join(format!("{PLAN_DIR_PREFIX}{}-{name}", std::process::id()));
        // Registered first: a signal may end the process at any point after.
        crate::process::remove_on_exit(&dir);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("could not create {}", dir.display()))?;
        let path = dir.join(format!("{name}.tfplan"));
        Ok(PlanFile { dir, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for PlanFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        crate::process::forget_on_exit(&self.dir);
    }
}

/// Remove the plan folders of runs that no longer exist (killed with
/// SIGKILL, or a crash): `.terraform/casey-deploy-<pid>-*` whose pid is not
/// a live process. Folders of live runs (another casey-deploy in the same
/// project) are left alone.
pub fn sweep_stale_plans(tf_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(tf_dir.join(".terraform")) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(PLAN_DIR_PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        let stale = is_dir && pid != std::process::id() && !crate::process::alive(pid);
        if stale && std::fs::remove_dir_all(entry.path()).is_ok() {
            crate::say!(
                "removed {}, a plan left by an earlier run that was killed (pid {pid})",
                entry.path().display()
            );
        }
    }
}

/// The marker of an apply in progress: `.terraform/<this>`, holding the pid
/// of the casey-deploy that runs it and when it started.
const APPLY_MARKER: &str = "casey-deploy.apply-in-progress";

/// The marker of `workspace`'s applies: each environment has its own.
fn apply_marker(tf_dir: &Path, workspace: &str) -> PathBuf {
    let name = if workspace == "default" { APPLY_MARKER.to_owned() } else { format!("{workspace}.{APPLY_MARKER}") };
    tf_dir.join(".terraform").join(name)
}

struct ApplyMarker(PathBuf);

impl ApplyMarker {
    fn write(tf_dir: &Path, workspace: &str) -> Result<ApplyMarker> {
        let dir = tf_dir.join(".terraform");
        std::fs::create_dir_all(&dir).with_context(|| format!("could not create {}", dir.display()))?;
        let path = apply_marker(tf_dir, workspace);
        let started =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default();
        std::fs::write(&path, format!("{} {started}\n", std::process::id()))
            .with_context(|| format!("could not write {}", path.display()))?;
        Ok(ApplyMarker(path))
    }

    fn remove(self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Whether terraform's errors say answers were lost (the connection failed
/// while requests were in flight): a create may then have succeeded in AWS
/// without terraform learning of it.
fn lost_answers(out: &Output) -> bool {
    let text = format!("{}{}", out.stdout, out.stderr);
    [
        "connection refused",
        "connection reset",
        "broken pipe",
        "unexpected EOF",
        ": EOF",
        "i/o timeout",
        "context canceled",
        "context deadline exceeded",
    ]
    .iter()
    .any(|needle| text.contains(needle))
}

/// An apply that did not end by itself: its casey-deploy (pid) is gone and
/// its marker remained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterruptedApply {
    pub pid: u32,
    /// Seconds since the epoch.
    pub started: u64,
}

impl InterruptedApply {
    /// How long ago it started, for the user.
    pub fn ago(&self) -> String {
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default();
        let secs = now.saturating_sub(self.started);
        match secs {
            0..=119 => format!("{secs} s ago"),
            120..=7199 => format!("{} min ago", secs / 60),
            _ => format!("{} h ago", secs / 3600),
        }
    }
}

/// The marker of an apply whose process is gone, if there is one. The
/// marker of a live run (another casey-deploy applying now) is not.
pub fn interrupted_apply(tf_dir: &Path, workspace: &str) -> Option<InterruptedApply> {
    let text = std::fs::read_to_string(apply_marker(tf_dir, workspace)).ok()?;
    let mut words = text.split_whitespace();
    let pid = words.next()?.parse::<u32>().ok()?;
    let started = words.next().and_then(|w| w.parse().ok()).unwrap_or_default();
    (pid != std::process::id() && !crate::process::alive(pid)).then_some(InterruptedApply { pid, started })
}

/// The local state file of `workspace`, when it is exactly what terraform
/// would read in `dir` (casey-deploy always sets `TF_WORKSPACE`): no
/// backend block, initialised or not.
pub fn local_state(dir: &Path, workspace: &str) -> Option<PathBuf> {
    let state = crate::environment::local_state_path(dir, workspace);
    if !state.is_file() || dir.join(".terraform").join("terraform.tfstate").exists() {
        return None;
    }
    // A backend block not initialised yet: terraform itself must say so.
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let text = || std::fs::read_to_string(entry.path()).unwrap_or_default();
        let remote = if name.ends_with(".tf.json") {
            let text = text().replace(char::is_whitespace, "");
            text.contains("\"backend\":") || text.contains("\"cloud\":")
        } else if name.ends_with(".tf") {
            text().lines().map(str::trim_start).any(|l| l.starts_with("backend \"") || l.starts_with("cloud {"))
        } else {
            false
        };
        if remote {
            return None;
        }
    }
    Some(state)
}

/// Terraform rewrites its local state file in place while it applies; killed
/// at that moment it leaves the file empty or cut short. After an apply that
/// did not end by itself, such a file is replaced by `terraform.tfstate.backup`
/// (the state as that apply found it; the broken file is kept beside it) and
/// what the apply created is adopted by the next `infra`. Runs before the
/// identity guard reads the state's account.
pub fn recover_state(tf_dir: &Path, workspace: &str) -> Result<()> {
    let Some(earlier) = interrupted_apply(tf_dir, workspace) else { return Ok(()) };
    let Some(state) = local_state(tf_dir, workspace) else { return Ok(()) };
    let text = std::fs::read_to_string(&state).unwrap_or_default();
    if serde_json::from_str::<Value>(&text).is_ok() {
        return Ok(());
    }
    let backup = state.with_file_name("terraform.tfstate.backup");
    let how = if text.is_empty() { "empty" } else { "cut short" };
    // Terraform backs the state up before its first write of a run that
    // found one; a first apply finds none, creates the file empty to hold its
    // lock, and writes no backup (measured with terraform 1.11). So no backup
    // at all means the killed apply started from an empty state.
    if !backup.exists() {
        let broken = state.with_file_name(format!("terraform.tfstate.broken-{}", earlier.pid));
        std::fs::rename(&state, &broken).with_context(|| format!("could not move {} aside", state.display()))?;
        crate::say!(
            "{} was left {how} by the first apply, which was killed (pid {}); it started from no state, so this run does too (the broken file is kept as {}); what the apply created is adopted when it is met",
            state.display(),
            earlier.pid,
            broken.display()
        );
        return Ok(());
    }
    let saved = std::fs::read_to_string(&backup).ok().filter(|t| serde_json::from_str::<Value>(t).is_ok());
    let Some(saved) = saved else {
        bail!(
            "{} was left {how} by an apply that was killed while terraform wrote it (casey-deploy pid {}), and {} is not a readable state either: restore the state from your own copy, then run `casey-deploy infra`",
            state.display(),
            earlier.pid,
            backup.display()
        );
    };
    let broken = state.with_file_name(format!("terraform.tfstate.broken-{}", earlier.pid));
    std::fs::rename(&state, &broken).with_context(|| format!("could not move {} aside", state.display()))?;
    std::fs::write(&state, saved).with_context(|| format!("could not restore {}", state.display()))?;
    crate::say!(
        "{} was left {how} by the apply that was killed (pid {}): restored {}, the state as that apply found it (the broken file is kept as {}); what the apply created is adopted when it is met",
        state.display(),
        earlier.pid,
        backup.display(),
        broken.display()
    );
    Ok(())
}

/// The interrupted apply was made good: forget its marker.
pub fn clear_interrupted_apply(tf_dir: &Path, workspace: &str, seen: &InterruptedApply) {
    if interrupted_apply(tf_dir, workspace).as_ref() == Some(seen) {
        let _ = std::fs::remove_file(apply_marker(tf_dir, workspace));
    }
}

/// The result of `plan -detailed-exitcode`.
#[derive(Debug, PartialEq, Eq)]
pub enum Plan {
    NoChanges,
    Changes,
}

impl Terraform {
    /// `base` are the tool's own variables (region, user names); `user`'s
    /// come from --var and --var-file and are passed after them, so they
    /// win, and after `terraform/<env>.tfvars` when there is one. The
    /// environment is passed last: no file can make a run target another.
    pub fn new(dir: &Path, env: &str, base: &[(String, String)], user: &Vars) -> Self {
        let mut var_args: Vec<String> = base.iter().map(|(k, v)| format!("-var={k}={v}")).collect();
        // The sandbox's copy of terraform/ has the same files.
        if let Some(file) = crate::environment::tfvars(dir, env) {
            var_args.push(format!("-var-file={}", absolute(&file).display()));
        }
        for (k, v) in &user.vars {
            var_args.push(format!("-var={k}={v}"));
        }
        for file in &user.files {
            var_args.push(format!("-var-file={}", absolute(file).display()));
        }
        var_args.push(format!("-var=environment={env}"));
        sweep_stale_plans(dir);
        let workspace = crate::environment::workspace(env).to_owned();
        Terraform { dir: dir.to_path_buf(), var_args, environment: env.to_owned(), workspace }
    }

    pub fn environment(&self) -> &str {
        &self.environment
    }

    pub fn workspace(&self) -> &str {
        &self.workspace
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `terraform -chdir=DIR <words…> [-no-color]`.
    fn cmd(&self, words: &[&str]) -> Command {
        let mut cmd = Command::new("terraform")
            .arg(format!("-chdir={}", self.dir.display()))
            .args(words.iter().copied())
            .env("TF_WORKSPACE", &self.workspace)
            .lock_file(self.lock_info());
        if !std::io::stderr().is_terminal() {
            cmd = cmd.arg("-no-color");
        }
        cmd
    }

    pub fn init(&self) -> Result<()> {
        // `init` costs a second (it checksums the ~700 MB provider against the
        // lock file). Skipped when nothing it reads changed since the last
        // init that succeeded here: the configuration, the lock file, the CLI
        // configuration and the backend state.
        let stamp = self.dir.join(".terraform").join(INIT_STAMP);
        let inputs = init_inputs(&self.dir, &self.workspace);
        let data_dir_moved = std::env::var_os("TF_DATA_DIR").is_some();
        if !data_dir_moved && std::fs::read_to_string(&stamp).is_ok_and(|s| s == inputs) {
            crate::detail!("terraform init: nothing changed since the last init here; skipped");
            return Ok(());
        }
        self.check_state_location()?;
        self.run_init(&[])
    }

    /// A local state beside an S3 backend (a teammate's `backend.tf` arrived
    /// through git), or an S3 backend gone while its state's local copy was
    /// set aside: terraform would stop to ask, or start from an empty state.
    fn check_state_location(&self) -> Result<()> {
        let local = self.dir.join("terraform.tfstate");
        let configured = crate::backend::configured(&self.dir).map_err(|why| anyhow::anyhow!("{why}"))?;
        if let (Some(backend), true) = (&configured, local.is_file()) {
            if !self.dir.join(".terraform").join("terraform.tfstate").is_file() {
                bail!(
                    "{} configures the state in s3://{}/{}, but this folder still has a local state ({}): run `casey-deploy state bootstrap`, which moves it there (or sets it aside when S3 already holds a newer copy of it)",
                    crate::backend::FILE,
                    backend.bucket,
                    backend.key,
                    local.display()
                );
            }
        }
        if configured.is_none() && !local.exists() {
            let moved = std::fs::read_dir(&self.dir)
                .into_iter()
                .flatten()
                .flatten()
                .find(|e| e.file_name().to_string_lossy().starts_with(MOVED_STATE_PREFIX));
            if let Some(moved) = moved {
                bail!(
                    "{} is missing, but this stack's state was moved to S3 by `casey-deploy state bootstrap` (the local copy it replaced is {}): restore {} (`git checkout -- terraform/{}`), or terraform would start from an empty state and create the stack again",
                    crate::backend::FILE,
                    moved.path().display(),
                    crate::backend::FILE,
                    crate::backend::FILE
                );
            }
        }
        Ok(())
    }

    /// `init -migrate-state -force-copy`: move the state to the backend the
    /// configuration names now (the caller checked that the destination
    /// holds no other state, so copying without asking loses nothing).
    pub fn init_migrate(&self) -> Result<()> {
        self.run_init(&["-migrate-state", "-force-copy"])
    }

    fn run_init(&self, extra: &[&str]) -> Result<()> {
        let stamp = self.dir.join(".terraform").join(INIT_STAMP);
        // Interrupted while asking: the interrupt, not a problem with terraform.
        check_version().map_err(|problem| crate::process::check_interrupted().err().unwrap_or(problem.into()))?;
        let out = self.cmd(&["init"]).args(["-input=false"]).args(extra.iter().copied()).quiet().run()?;
        if !out.success() {
            let _ = std::fs::remove_file(&stamp);
            bail!(
                "`terraform init` failed in {}:\n{}\nFix what it names, then run the same casey-deploy command again",
                self.dir.display(),
                out.tail(20)
            );
        }
        self.ensure_workspace()?;
        // Read again: init may have written the lock file or the backend state.
        let _ = std::fs::write(&stamp, init_inputs(&self.dir, &self.workspace));
        Ok(())
    }

    /// The local state lock terraform holds while it runs (local backend).
    fn lock_info(&self) -> PathBuf {
        let state = crate::environment::local_state_path(&self.dir, &self.workspace);
        state.with_file_name(".terraform.tfstate.lock.info")
    }

    /// The environment's workspace exists after init: created the first
    /// time an environment is deployed.
    fn ensure_workspace(&self) -> Result<()> {
        if self.workspace == "default" {
            return Ok(());
        }
        let out = self.cmd(&["workspace", "list"]).quiet().run_ok()?;
        let listed = out.stdout.lines().any(|l| l.trim_start_matches('*').trim() == self.workspace);
        if !listed {
            let out = self.cmd(&["workspace", "new"]).arg(&self.workspace).quiet().run()?;
            if !out.success() && !out.stdout.contains("already exists") && !out.stderr.contains("already exists") {
                bail!(
                    "could not create the Terraform workspace `{}` for the environment:\n{}\nFix what it names, then run the same casey-deploy command again",
                    self.workspace,
                    out.tail(10)
                );
            }
            crate::say!("terraform workspace `{}` created: the environment's own state", self.workspace);
        }
        Ok(())
    }

    /// One plan, saved to `plan_file`.
    pub fn plan(&self, plan_file: &PlanFile, mode: PlanMode) -> Result<Plan> {
        self.plan_targets(plan_file, mode, &[])
    }

    /// One plan of only `targets` (resource addresses) and what they depend
    /// on; all of the configuration when `targets` is empty.
    pub fn plan_targets(&self, plan_file: &PlanFile, mode: PlanMode, targets: &[String]) -> Result<Plan> {
        let mut cmd = self.cmd(&["plan"]).args(["-input=false", "-detailed-exitcode", "-lock-timeout=10s"]);
        cmd = cmd.args(targets.iter().map(|t| format!("-target={t}")));
        cmd = match mode {
            // The plan itself is shown with -v; the tool prints its summary.
            PlanMode::Normal => cmd.detail(),
            PlanMode::RefreshOnly => cmd.arg("-refresh-only").detail(),
            PlanMode::Destroy => cmd.arg("-destroy").detail(),
            // Only the planned values are wanted: no refresh, no output.
            PlanMode::NamesOnly => cmd.arg("-refresh=false").quiet(),
        };
        let out = cmd.arg(format!("-out={}", plan_file.path().display())).args(self.var_args.clone()).run()?;
        match out.code {
            Some(0) => Ok(Plan::NoChanges),
            Some(2) => Ok(Plan::Changes),
            _ => Err(Failure::new("terraform plan", out).into()),
        }
    }

    pub fn show_json(&self, plan_file: &PlanFile) -> Result<Value> {
        let out = self.cmd(&["show"]).arg("-json").arg(plan_file.path().display().to_string()).quiet().run_ok()?;
        serde_json::from_str(&out.stdout).context("`terraform show -json` printed something that is not JSON")
    }

    /// Apply exactly the saved plan. While it runs, a marker under
    /// `.terraform/` says so: an apply that does not end by itself (a signal,
    /// a crash, a lost connection) may have created resources it never
    /// recorded, and the next `infra` adopts them (see [`interrupted_apply`]).
    pub fn apply(&self, plan_file: &PlanFile) -> Result<Output> {
        let marker = ApplyMarker::write(&self.dir, &self.workspace)?;
        let out = self
            .cmd(&["apply"])
            .args(["-input=false", "-lock-timeout=10s"])
            .arg(plan_file.path().display().to_string())
            .run()?;
        if out.success() || !lost_answers(&out) {
            marker.remove();
        }
        if !out.success() {
            return Err(Failure::new("terraform apply", out).into());
        }
        Ok(out)
    }

    /// Addresses in the state (empty when there is no state yet).
    pub fn state_list(&self) -> Result<Vec<String>> {
        let out = self.cmd(&["state", "list"]).quiet().run()?;
        if !out.success() {
            if out.stderr.contains("No state file") {
                return Ok(Vec::new());
            }
            bail!("`terraform state list` failed:\n{}", out.tail(10));
        }
        Ok(out.stdout.lines().map(str::to_owned).filter(|l| !l.is_empty()).collect())
    }

    pub fn import(&self, address: &str, id: &str) -> Result<Output> {
        self.cmd(&["import"])
            .args(["-input=false", "-lock-timeout=10s"])
            .args(self.var_args.clone())
            .arg(address)
            .arg(id)
            .quiet()
            .run()
    }

    /// All outputs, from one `terraform output -json`.
    pub fn outputs(&self) -> Result<serde_json::Map<String, Value>> {
        let out = self.cmd(&["output"]).arg("-json").quiet().run_ok()?;
        let json: Value =
            serde_json::from_str(&out.stdout).context("`terraform output -json` printed something that is not JSON")?;
        let map = json.as_object().cloned().unwrap_or_default();
        Ok(map.into_iter().map(|(k, v)| (k, v.get("value").cloned().unwrap_or(Value::Null))).collect())
    }
}

fn absolute(path: &Path) -> PathBuf {
    std::env::current_dir().map(|d| d.join(path)).unwrap_or_else(|_| path.to_path_buf())
}

/// A failed terraform command, with what it printed; `Display` adds the next
/// step for the failures we know.
#[derive(Debug)]
pub struct Failure {
    pub what: String,
    pub output: String,
    pub code: Option<i32>,
}

impl Failure {
    fn new(what: &str, out: Output) -> Self {
        Failure { what: what.to_owned(), output: format!("{}{}", out.stdout, out.stderr), code: out.code }
    }

    /// Addresses of resources that failed because they already exist.
    pub fn already_exists(&self) -> Vec<String> {
        // Each `Error:` block names its resource (`with ADDRESS,`); AWS's
        // reason may come in the header or after the address (a security
        // group rule: "InvalidPermission.Duplicate: The specified rule
        // already exists").
        let exists = |l: &str| l.contains("already exists") || l.contains("AlreadyExists") || l.contains(".Duplicate");
        let mut addresses = Vec::new();
        let mut block: Option<(bool, Option<String>)> = None;
        let close = |block: Option<(bool, Option<String>)>, addresses: &mut Vec<String>| {
            if let Some((true, Some(address))) = block {
                if !addresses.contains(&address) {
                    addresses.push(address);
                }
            }
        };
        for line in self.output.lines() {
            let l = line.trim_start_matches(|c: char| c == '│' || c == '╷' || c == '╵' || c.is_whitespace());
            if l.starts_with("Error:") {
                close(block.take(), &mut addresses);
                block = Some((exists(l), None));
            } else if let Some((hit, address)) = block.as_mut() {
                match l.strip_prefix("with ") {
                    Some(a) if address.is_none() => *address = Some(a.trim_end_matches(',').to_owned()),
                    _ => *hit |= exists(l),
                }
            }
        }
        close(block, &mut addresses);
        addresses
    }

    /// The endpoint terraform could not reach (`dial tcp HOST: connect:
    /// connection refused`, a reset, a timeout), when that is what failed.
    fn unreachable(&self) -> Option<String> {
        let needles = ["connection refused", "connection reset", "i/o timeout", "no such host"];
        let line = self.output.lines().find(|l| needles.iter().any(|n| l.contains(n)))?;
        let endpoint = line
            .split_whitespace()
            .map(|w| w.trim_matches(|c| c == '"' || c == ',' || c == ':'))
            .find(|w| w.starts_with("http://") || w.starts_with("https://"))
            // scheme://host[:port]
            .map(|w| w.splitn(4, '/').take(3).collect::<Vec<_>>().join("/"))
            .unwrap_or_else(|| "the AWS endpoint".to_owned());
        Some(endpoint)
    }

    fn lock_id(&self) -> Option<String> {
        if !self.output.contains("Error acquiring the state lock") {
            return None;
        }
        self.output.lines().find_map(|l| {
            let l = l.trim_start_matches(|c: char| c == '│' || c.is_whitespace());
            l.strip_prefix("ID:").map(|id| id.trim().to_owned())
        })
    }

    fn hint(&self) -> Option<String> {
        let existing = self.already_exists();
        if !existing.is_empty() {
            return Some(format!(
                "these resources already exist in AWS but not in the Terraform state: {}.\nAdopt them with `casey-deploy import` and run `casey-deploy infra` again (or run `casey-deploy infra --adopt`, which does both)",
                existing.join(", ")
            ));
        }
        if self.output.contains("does not support creating load balancers") {
            return Some(
                "this AWS account may not create load balancers yet. That is an account-level restriction, not an IAM permission: open a case with AWS Support to enable Application Load Balancers.\nUntil then, deploy without the ALB: `casey-deploy infra --var enable_alb=false`, then `casey-deploy backend-url` for the task's address"
                    .to_owned(),
            );
        }
        if let Some(endpoint) = self.unreachable() {
            return Some(format!(
                "terraform lost the connection to {endpoint} while it worked. What it finished is in the state; anything it was creating may exist without being recorded, and the next `casey-deploy infra` adopts it. Once the endpoint answers again, run `casey-deploy infra`"
            ));
        }
        if let Some(id) = self.lock_id() {
            return Some(format!(
                "the Terraform state is locked by another run (lock {id}). If no other terraform is running, release it with `terraform -chdir=terraform force-unlock {id}`"
            ));
        }
        None
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "`{}` failed ({})", self.what, crate::process::describe_exit(self.code))?;
        match self.hint() {
            Some(hint) => write!(f, ": {hint}"),
            None => {
                let errors = self.errors();
                if !errors.is_empty() {
                    write!(f, ":\n{errors}")?;
                }
                write!(f, "\nFix what it names, then run the same casey-deploy command again (-v shows all of terraform's output)")
            }
        }
    }
}

impl Failure {
    /// Terraform's `Error:` blocks (each up to the blank line that ends it),
    /// without the box drawing of a colour terminal; at most 30 lines.
    fn errors(&self) -> String {
        let mut lines = Vec::new();
        let mut inside = false;
        for raw in self.output.lines() {
            let line = raw.trim_start_matches(['│', '╷', '╵', ' ']).trim_end();
            if line.starts_with("Error: ") {
                inside = true;
            } else if inside && line.is_empty() && lines.last().is_some_and(|l: &String| l.is_empty()) {
                inside = false;
                continue;
            }
            if inside {
                lines.push(line.to_owned());
            }
        }
        while lines.last().is_some_and(|l| l.is_empty()) {
            lines.pop();
        }
        lines.truncate(30);
        lines.join("\n")
    }
}

impl std::error::Error for Failure {}

/// The Terraform version the stack requires (`required_version`).
const MIN_TERRAFORM: (u64, u64) = (1, 5);
/// The AWS provider, as `terraform version -json` names it.
const AWS_PROVIDER: &str = "registry.terraform.io/hashicorp/aws";
const INSTALL: &str = "install Terraform >= 1.5 (https://developer.hashicorp.com/terraform/install) and put it on PATH";

/// terraform on PATH and recent enough; `Ok` holds its version and path.
pub fn check_version() -> Result<String, Problem> {
    let Some(path) = crate::process::on_path("terraform") else {
        return Err(Problem::fail("terraform", "could not find `terraform`: not found on PATH", INSTALL));
    };
    let out = Command::new("terraform")
        .args(["version", "-json"])
        .quiet()
        .run()
        .map_err(|err| Problem::fail("terraform", format!("{} cannot be run: {err:#}", path.display()), INSTALL))?;
    let version = serde_json::from_str::<Value>(&out.stdout)
        .ok()
        .and_then(|v| v["terraform_version"].as_str().map(str::to_owned))
        .filter(|_| out.success());
    let Some(version) = version else {
        return Err(Problem::fail(
            "terraform",
            format!("`{} version -json` failed: {}", path.display(), out.tail(3)),
            INSTALL,
        ));
    };
    let mut numbers = version.split(|c: char| !c.is_ascii_digit()).map(|n| n.parse::<u64>().unwrap_or(0));
    let (major, minor) = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
    if (major, minor) < MIN_TERRAFORM {
        return Err(Problem::fail(
            "terraform",
            format!("{version} ({}): the stack needs >= 1.5", path.display()),
            INSTALL,
        ));
    }
    Ok(format!("{version} ({})", path.display()))
}

/// `terraform init -backend=false` in `tf_dir`: is the AWS provider
/// installable? `Ok` says which version is installed.
pub fn check_provider(tf_dir: &Path) -> Result<String, Problem> {
    let chdir = format!("-chdir={}", tf_dir.display());
    let out = Command::new("terraform")
        .arg(&chdir)
        .args(["init", "-input=false", "-backend=false", "-no-color"])
        .quiet()
        .run()
        .map_err(|err| Problem::fail("aws provider", format!("`terraform init` could not run: {err:#}"), ""))?;
    if out.success() {
        let version = Command::new("terraform")
            .arg(&chdir)
            .args(["version", "-json"])
            .quiet()
            .run()
            .ok()
            .and_then(|o| serde_json::from_str::<Value>(&o.stdout).ok())
            .and_then(|v| v["provider_selections"][AWS_PROVIDER].as_str().map(str::to_owned));
        return Ok(match version {
            Some(v) => format!("hashicorp/aws {v} installed (terraform init -backend=false)"),
            None => "installed (terraform init -backend=false)".to_owned(),
        });
    }
    let text = format!("{}\n{}", out.stdout, out.stderr);
    let found = format!(
        "hashicorp/aws could not be installed (`terraform init` failed):\n{}",
        relevant_lines(&text).join("\n")
    );
    let config = std::env::var("TF_CLI_CONFIG_FILE").ok().filter(|c| !c.is_empty());
    let fix = match config {
        Some(config) if !Path::new(&config).exists() => format!(
            "TF_CLI_CONFIG_FILE={config} does not exist: point it at a CLI config whose provider_installation has a mirror of hashicorp/aws, then `terraform -chdir={} init`",
            tf_dir.display()
        ),
        _ if text.contains("registry.terraform.io") || text.contains("dial tcp") => format!(
            "no access to registry.terraform.io: allow it, or set TF_CLI_CONFIG_FILE to a CLI config with a provider mirror (provider_installation {{ filesystem_mirror {{ … }} }}) holding hashicorp/aws; then `terraform -chdir={} init`",
            tf_dir.display()
        ),
        _ => format!(
            "fix the errors shown, then `terraform -chdir={} init` (a provider mirror goes in the CLI config named by TF_CLI_CONFIG_FILE)",
            tf_dir.display()
        ),
    };
    Err(Problem::fail("aws provider", found, fix))
}

/// The lines of terraform's output that say what went wrong: each `Error:`
/// with the few lines after it, and a warning about the CLI config file.
fn relevant_lines(text: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut take = 0;
    for line in text.lines() {
        let l = line.trim_start_matches(['│', '╷', '╵', ' ']).trim_end();
        if l.is_empty() {
            continue;
        }
        if l.starts_with("Error:") || l.starts_with("Warning: Unable to open CLI configuration") {
            take = 5;
        }
        if take > 0 {
            lines.push(l.to_owned());
            take -= 1;
        }
        if lines.len() >= 12 {
            break;
        }
    }
    if lines.is_empty() {
        lines = text.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_owned).collect();
        lines = lines.split_off(lines.len().saturating_sub(5));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(output: &str) -> Failure {
        Failure { what: "terraform apply".into(), output: output.into(), code: Some(1) }
    }

    #[test]
    fn relevant_lines_are_the_errors() {
        let text = "Initializing provider plugins...\n╷\n│ Warning: Unable to open CLI configuration file\n│\n│ The CLI configuration file at \"/x\" does not exist.\n╵\n\nError: Failed to query available provider packages\n\nCould not retrieve the list of available versions for provider hashicorp/aws:\ncould not connect to registry.terraform.io\n";
        let lines = relevant_lines(text);
        assert_eq!(lines[0], "Warning: Unable to open CLI configuration file");
        assert!(lines.iter().any(|l| l == "Error: Failed to query available provider packages"), "{lines:?}");
        assert!(lines.iter().any(|l| l.contains("registry.terraform.io")), "{lines:?}");
        assert!(!lines.iter().any(|l| l.contains("Initializing")), "{lines:?}");
    }

    #[test]
    fn finds_already_existing_resources() {
        let f = failure(
            "╷\n│ Error: creating CloudWatch Logs Log Group (casey-backend-aws-usage): operation error CloudWatch Logs: CreateLogGroup, https response error StatusCode: 400, ResourceAlreadyExistsException: The specified log group already exists\n│ \n│   with aws_cloudwatch_log_group.casey_backend_aws_usage,\n│   on logs.tf line 1, in resource \"aws_cloudwatch_log_group\" \"casey_backend_aws_usage\":\n╵\n╷\n│ Error: creating IAM Policy (casey-backend-ai): operation error IAM: CreatePolicy, EntityAlreadyExists: A policy called casey-backend-ai already exists. Duplicate names are not allowed.\n│ \n│   with aws_iam_policy.casey_backend,\n",
        );
        assert_eq!(
            f.already_exists(),
            vec!["aws_cloudwatch_log_group.casey_backend_aws_usage", "aws_iam_policy.casey_backend"]
        );
        assert!(f.to_string().contains("casey-deploy import"));

        // A rule's reason comes after its address; another error is not one.
        let f = failure(
            "Error: creating VPC Security Group Rule\n\n  with aws_vpc_security_group_ingress_rule.ecs_tasks_from_cidr[\"0.0.0.0/0\"],\n  on network.tf line 87:\n\noperation error EC2: AuthorizeSecurityGroupIngress, api error\nInvalidPermission.Duplicate: The specified rule already exists\n\nError: creating ECS Service\n\n  with aws_ecs_service.backend,\n\nInvalidParameterException: no\n",
        );
        assert_eq!(f.already_exists(), vec![r#"aws_vpc_security_group_ingress_rule.ecs_tasks_from_cidr["0.0.0.0/0"]"#]);
    }

    #[test]
    fn init_inputs_change_with_the_configuration_the_lock_and_the_providers() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("main.tf"), "terraform {}\n").unwrap();
        let first = init_inputs(d, "default");
        assert_eq!(init_inputs(d, "default"), first, "stable");
        std::fs::write(d.join("README.md"), "not read by init").unwrap();
        assert_eq!(init_inputs(d, "default"), first, "other files do not count");
        std::fs::write(d.join(".terraform.lock.hcl"), "provider {}\n").unwrap();
        let locked = init_inputs(d, "default");
        assert_ne!(locked, first, "the lock file");
        std::fs::write(d.join("main.tf"), "terraform {\n  backend \"s3\" {}\n}\n").unwrap();
        let backend = init_inputs(d, "default");
        assert_ne!(backend, locked, "a .tf file");
        std::fs::create_dir_all(d.join(".terraform/providers/registry.terraform.io/hashicorp/aws")).unwrap();
        assert_ne!(init_inputs(d, "default"), backend, "the installed providers");
    }

    #[test]
    fn an_unknown_failure_carries_terraforms_errors_and_the_next_step() {
        let out = "aws_ecs_cluster.this: Refreshing...\n\nError: AWS account ID not allowed: 123456789012\n\n  with provider[\"registry.terraform.io/hashicorp/aws\"],\n  on providers.tf line 4\n\n\nsomething after\n";
        let text = failure(out).to_string();
        assert!(text.contains("AWS account ID not allowed: 123456789012"), "{text}");
        assert!(text.contains("providers.tf line 4") && !text.contains("something after"), "{text}");
        assert!(!text.contains("Refreshing") && text.contains("run the same casey-deploy command again"), "{text}");
    }

    #[test]
    fn explains_alb_restriction_and_lock() {
        let f = failure("Error: creating ELBv2 application Load Balancer: OperationNotPermitted: This AWS account currently does not support creating load balancers.");
        assert!(f.to_string().contains("enable_alb=false"));
        let f = failure("│ Error: Error acquiring the state lock\n│ Lock Info:\n│   ID:        3f0c1a2b-1111-2222-3333-444455556666\n");
        assert!(f.to_string().contains("force-unlock 3f0c1a2b-1111-2222-3333-444455556666"));
    }

    #[test]
    fn the_local_state_is_read_directly_only_without_a_backend() {
        let dir = std::env::temp_dir().join(format!("casey-deploy-outputs-test-{}", std::process::id()));
        std::fs::create_dir_all(dir.join(".terraform")).unwrap();
        std::fs::write(dir.join("main.tf"), "resource \"aws_lb\" \"backend\" {\n}\n").unwrap();
        assert_eq!(local_state(&dir, "default"), None, "no state yet");
        std::fs::write(dir.join("terraform.tfstate"), "{}").unwrap();
        assert_eq!(local_state(&dir, "default"), Some(dir.join("terraform.tfstate")));
        assert_eq!(local_state(&dir, "staging"), None, "another workspace, with no state yet");
        std::fs::create_dir_all(dir.join("terraform.tfstate.d/staging")).unwrap();
        std::fs::write(dir.join("terraform.tfstate.d/staging/terraform.tfstate"), "{}").unwrap();
        assert_eq!(local_state(&dir, "staging"), Some(dir.join("terraform.tfstate.d/staging/terraform.tfstate")));
        std::fs::write(dir.join("backend.tf"), "terraform {\n  backend \"s3\" {\n  }\n}\n").unwrap();
        assert_eq!(local_state(&dir, "default"), None, "a backend block");
        assert_eq!(local_state(&dir, "staging"), None, "a backend block");
        std::fs::remove_file(dir.join("backend.tf")).unwrap();
        std::fs::write(dir.join(".terraform/terraform.tfstate"), "{}").unwrap();
        assert_eq!(local_state(&dir, "default"), None, "an initialised backend");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
