//! Command-line interface (clap derive). Parsing only: the work happens in
//! the module named after each verb.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "casey-deploy",
    version,
    about = "Deploy the casey backend to AWS: Terraform, image, ECS rollout, backend URL."
)]
#[command(after_help = "Exit codes: 0 success, 1 failure, 2 usage error, 130/143 interrupted.")]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,

    #[command(subcommand)]
    pub command: Verb,
}

#[derive(Args, Debug, Clone)]
pub struct Global {
    /// Repository root holding terraform/ and backend/ [default: the nearest ancestor of the current directory with a terraform/ folder]
    #[arg(long, global = true, env = "CASEY_PROJECT_DIR", value_name = "DIR")]
    pub project_dir: Option<PathBuf>,

    /// Env file with the admin's AWS settings, read as data (never run) [default: <project>/terraform/.env]
    #[arg(long, global = true, env = "CASEY_ENV_FILE", value_name = "FILE")]
    pub env_file: Option<PathBuf>,

    /// IAM user that runs Terraform and deploys (the admin)
    #[arg(long, global = true, env = "CASEY_ADMIN_USER", default_value = "casey_aniruddh", value_name = "NAME")]
    pub admin_user: String,

    /// IAM user the backend runs as; never allowed to deploy
    #[arg(
        long,
        global = true,
        env = "CASEY_SERVICE_USER",
        default_value = "casey_localdev_service",
        value_name = "NAME"
    )]
    pub service_user: String,

    /// The environment to deploy: its own names (`-<env>` outside production), Terraform workspace and state, and terraform/<env>.env and <env>.tfvars when they exist
    #[arg(long = "env", global = true, env = "CASEY_ENV", default_value = crate::environment::PRODUCTION, value_parser = crate::environment::parse, value_name = "NAME")]
    pub environment: String,

    /// Run against the local sandbox (the project's AWS emulator on loopback, started if needed) instead of AWS; implies --yes
    #[arg(long, global = true)]
    pub local: bool,

    /// Also accept this principal as the admin: a role ARN (for SSO / assumed roles) or a full caller ARN
    #[arg(long, global = true, env = "CASEY_ADMIN_PRINCIPAL", value_name = "ARN")]
    pub admin_principal: Option<String>,

    /// Print results as JSON on stdout (nothing else goes there): one document for short verbs, NDJSON events and a final summary object for infra, import, image and all
    #[arg(long, global = true)]
    pub json: bool,

    /// Print only warnings, errors and results
    #[arg(long, short = 'q', global = true, conflicts_with = "verbose")]
    pub quiet: bool,

    /// Print more: the full terraform plan and init output
    #[arg(long, short = 'v', global = true)]
    pub verbose: bool,

    /// How long to wait for another deploy's lock (the deploy lock of infra, import, image, rollback, all, destroy, state bootstrap): 30s, 10m [default: 0, stop at once naming the holder]
    #[arg(long, global = true, env = "CASEY_LOCK_TIMEOUT", default_value = "0s", value_parser = crate::logs::parse_since, value_name = "DURATION")]
    pub lock_timeout: std::time::Duration,

    /// The only AWS account (12 digits) the credentials may belong to. Once the stack is applied, the account its state records is enforced too
    #[arg(long, global = true, env = "CASEY_AWS_ACCOUNT_ID", value_name = "ID")]
    pub account: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum Verb {
    /// Plan and apply the Terraform stack, then build, push and roll out the image, then print the backend URL
    All(AllArgs),
    /// Plan and apply the Terraform stack (one saved plan, confirmed before apply)
    Infra(InfraArgs),
    /// Import resources that already exist in AWS but not in the Terraform state
    Import(TfArgs),
    /// Build and push the backend image, then roll the ECS service out to it
    Image(ImageCmd),
    /// Print the URL the frontend should use (NEXT_PUBLIC_WS_URL)
    BackendUrl(UrlArgs),
    /// The backend's CloudWatch logs: plain lines with time and task
    Logs(LogsArgs),
    /// One screen: the service, its deployments, the live image (tag, digest, since when), the tasks and their health, the URL and its probe
    Status,
    /// The last releases, newest first: when, who, tag, digest, task definition, outcome, and which one is live
    History(HistoryArgs),
    /// Put the previous good release (or --to TAG|DIGEST) live again, followed like any rollout
    Rollback(RollbackArgs),
    /// The shared Terraform state: `state bootstrap` moves it to S3 (versioned, encrypted, TLS-only), locked natively
    State {
        #[command(subcommand)]
        action: StateAction,
    },
    /// Tear the stack down (all but the admin's own policies, which keep it able to finish and to build it again); asks for the environment's name
    Destroy(DestroyArgs),
    /// Remove the deploy lock of a run that died (asks first; --yes without a terminal)
    Unlock {
        /// Remove it without asking
        #[arg(long, short = 'y')]
        yes: bool,
    },
    /// Start, stop or show the local sandbox that --local uses
    Sandbox {
        #[command(subcommand)]
        action: SandboxAction,
    },
    /// Check the AWS credentials: who is calling, and whether they may deploy
    Whoami,
    /// Check everything a deploy needs (tools, provider, env files, credentials, region, stack); exit 1 if a deploy would fail
    Doctor,
    /// Print a shell completion script, e.g. `casey-deploy completions bash > ~/.local/share/bash-completion/completions/casey-deploy`
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff), e.g. `casey-deploy man | man -l -`
    Man,
}

/// Terraform variables, passed through as -var / -var-file.
#[derive(Args, Debug, Clone, Default)]
pub struct TfArgs {
    /// Set a Terraform variable (repeatable), e.g. --var enable_alb=true
    #[arg(long = "var", value_name = "KEY=VALUE", value_parser = parse_tf_var)]
    pub vars: Vec<(String, String)>,

    /// Terraform variable file (repeatable)
    #[arg(long = "var-file", value_name = "FILE")]
    pub var_files: Vec<PathBuf>,
}

#[derive(Args, Debug, Clone, Default)]
pub struct InfraArgs {
    #[command(flatten)]
    pub tf: TfArgs,

    /// Apply without asking for confirmation
    #[arg(long, short = 'y')]
    pub yes: bool,

    /// Only refresh the state from AWS (the seed's `terraform refresh`), changing no resource
    #[arg(long)]
    pub refresh_only: bool,

    /// When apply fails because resources already exist, import them and plan again
    #[arg(long)]
    pub adopt: bool,
}

#[derive(Args, Debug, Clone, Default)]
pub struct ImageArgs {
    /// Docker build context [default: <project>/backend]
    #[arg(long, value_name = "DIR")]
    pub context: Option<PathBuf>,

    /// Dockerfile [default: <context>/Dockerfile]
    #[arg(long, value_name = "FILE")]
    pub dockerfile: Option<PathBuf>,

    /// Immutable image tag [default: the git short sha of the build context]
    #[arg(long, value_name = "TAG")]
    pub tag: Option<String>,

    /// Build a context with uncommitted changes, tagged <sha>-dirty-<UTC time> (unique: ECR's tags are immutable)
    #[arg(long)]
    pub allow_dirty: bool,

    /// Pass a build argument to `docker build` (repeatable), e.g. --build-arg RUST_IMAGE=registry.local/rust:1.95.0-slim-bookworm for base images from a mirror
    #[arg(long = "build-arg", value_name = "KEY=VALUE", value_parser = parse_var)]
    pub build_args: Vec<(String, String)>,

    /// Push to this registry (HOST[:PORT]) instead of the ECR host, e.g. a mirror or a local registry in front of ECR; it must accept the ECR credentials (user AWS). The repository path stays the ECR repository's name, and the release is deployed from ECR by digest
    #[arg(long, value_name = "HOST[:PORT]")]
    pub registry: Option<String>,

    #[command(flatten)]
    pub rollout: RolloutArgs,
}

/// `image` alone: the image options, plus what the Terraform apply that
/// deploys the release needs (`all` takes these from its `infra` options).
#[derive(Args, Debug, Clone, Default)]
pub struct ImageCmd {
    #[command(flatten)]
    pub image: ImageArgs,

    /// Terraform variables for the apply that deploys the release; pass the same ones as to `infra` (e.g. --var enable_alb=true), or Terraform reverts them
    #[command(flatten)]
    pub tf: TfArgs,

    /// Apply without asking for confirmation
    #[arg(long, short = 'y')]
    pub yes: bool,
}

#[derive(Args, Debug, Clone, Default)]
pub struct DestroyArgs {
    /// Terraform variables, as passed to `infra`
    #[command(flatten)]
    pub tf: TfArgs,

    /// Destroy without asking (needed without a terminal)
    #[arg(long, short = 'y')]
    pub yes: bool,
}

impl DestroyArgs {
    pub fn options(&self) -> crate::destroy::Options {
        crate::destroy::Options { vars: self.tf.vars(), yes: self.yes }
    }
}

#[derive(Args, Debug, Clone)]
pub struct HistoryArgs {
    /// How many releases to list (Parameter Store keeps the newest 100 versions)
    #[arg(long, short = 'n', default_value_t = 10, value_parser = clap::value_parser!(u16).range(1..=100), value_name = "N")]
    pub limit: u16,
}

#[derive(Args, Debug, Clone, Default)]
pub struct RollbackArgs {
    /// The release to put live: its tag or digest (sha256:…) as `history` lists it [default: the newest good release before the live one]
    #[arg(long, value_name = "TAG|DIGEST")]
    pub to: Option<String>,

    /// Terraform variables for the apply; pass the same ones as to `infra`
    #[command(flatten)]
    pub tf: TfArgs,

    /// Apply without asking for confirmation
    #[arg(long, short = 'y')]
    pub yes: bool,

    #[command(flatten)]
    pub rollout: RolloutArgs,
}

#[derive(Args, Debug, Clone, Default)]
pub struct RolloutArgs {
    /// Seconds to wait for the ECS deployment to complete
    #[arg(long, default_value_t = 900, value_name = "SECONDS")]
    pub timeout: u64,

    /// Start the deployment and return without following it
    #[arg(long)]
    pub no_wait: bool,
}

#[derive(Args, Debug, Clone, Default)]
pub struct UrlArgs {
    /// Wait up to SECONDS for a running task with a public IP
    #[arg(long, value_name = "SECONDS", default_value_t = 0)]
    pub wait: u64,

    /// Check each URL: GET /health (200) and a WebSocket upgrade on /ws (101)
    #[arg(long)]
    pub check: bool,
}

#[derive(Args, Debug, Clone)]
pub struct LogsArgs {
    /// How far back to start: 30s, 5m, 2h, 1d
    #[arg(long, default_value = "10m", value_parser = crate::logs::parse_since, value_name = "DURATION")]
    pub since: std::time::Duration,

    /// Keep printing new lines until interrupted (Ctrl-C)
    #[arg(long, short = 'f')]
    pub follow: bool,

    /// Only this task's lines (its id, or its ARN)
    #[arg(long, value_name = "ID")]
    pub task: Option<String>,
}

impl LogsArgs {
    pub fn options(&self) -> crate::logs::Options {
        crate::logs::Options { since: self.since, follow: self.follow, task: self.task.clone() }
    }
}

#[derive(Args, Debug, Clone, Default)]
pub struct AllArgs {
    #[command(flatten)]
    pub infra: InfraArgs,

    #[command(flatten)]
    pub image: ImageArgs,

    /// Do not build the image while Terraform plans and applies (the build otherwise overlaps when the stack already exists)
    #[arg(long)]
    pub sequential: bool,
}

// The Face turns clap's arguments into the plain options each step owns
// (ripgrep's split): below cli.rs nothing sees clap.

impl Global {
    pub fn target(&self) -> crate::context::Options {
        crate::context::Options {
            project_dir: self.project_dir.clone(),
            env_file: self.env_file.clone(),
            admin_user: self.admin_user.clone(),
            service_user: self.service_user.clone(),
            admin_principal: self.admin_principal.clone(),
            local: self.local,
            account: self.account.clone(),
            environment: self.environment.clone(),
        }
    }
}

impl TfArgs {
    pub fn vars(&self) -> crate::terraform::Vars {
        crate::terraform::Vars { vars: self.vars.clone(), files: self.var_files.clone() }
    }
}

impl InfraArgs {
    pub fn options(&self) -> crate::infra::Options {
        crate::infra::Options {
            vars: self.tf.vars(),
            yes: self.yes,
            refresh_only: self.refresh_only,
            adopt: self.adopt,
            release: false,
        }
    }
}

impl ImageArgs {
    fn options(&self, infra: crate::infra::Options) -> crate::image::Options {
        crate::image::Options {
            publish: crate::publish::Options {
                context: self.context.clone(),
                dockerfile: self.dockerfile.clone(),
                tag: self.tag.clone(),
                build_args: self.build_args.clone(),
                registry: self.registry.clone(),
                allow_dirty: self.allow_dirty,
            },
            rollout: crate::rollout::Options { timeout: self.rollout.timeout, no_wait: self.rollout.no_wait },
            infra,
        }
    }
}

impl ImageCmd {
    pub fn options(&self) -> crate::image::Options {
        let infra = crate::infra::Options { vars: self.tf.vars(), yes: self.yes, ..Default::default() };
        self.image.options(infra)
    }
}

impl RollbackArgs {
    pub fn options(&self) -> crate::rollback::Options {
        crate::rollback::Options {
            to: self.to.clone(),
            rollout: crate::rollout::Options { timeout: self.rollout.timeout, no_wait: self.rollout.no_wait },
            infra: crate::infra::Options { vars: self.tf.vars(), yes: self.yes, ..Default::default() },
        }
    }
}

impl AllArgs {
    /// The image step's options; its applies take `infra`'s variables.
    pub fn image_options(&self) -> crate::image::Options {
        let infra = self.infra.options();
        self.image.options(infra)
    }
}

impl UrlArgs {
    pub fn options(&self) -> crate::url::Options {
        crate::url::Options { wait: self.wait, check: self.check }
    }
}

impl SandboxAction {
    pub fn action(&self) -> crate::sandbox::Action {
        match self {
            SandboxAction::Up => crate::sandbox::Action::Up,
            SandboxAction::Down => crate::sandbox::Action::Down,
            SandboxAction::Status => crate::sandbox::Action::Status,
        }
    }
}

/// A Terraform variable; `environment` is the run's `--env`, not a variable.
fn parse_tf_var(s: &str) -> Result<(String, String), String> {
    match parse_var(s)? {
        (k, _) if k == "environment" => {
            Err("the environment is chosen with --env NAME (or CASEY_ENV), not --var environment=".to_owned())
        }
        pair => Ok(pair),
    }
}

fn parse_var(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.to_owned())),
        _ => Err(format!("`{s}` is not KEY=VALUE (e.g. --var enable_alb=true)")),
    }
}

#[derive(Subcommand, Debug, Clone)]
pub enum StateAction {
    /// Create the state bucket (versioning, encryption, public access blocked, TLS-only, kept on destroy), write terraform/backend.tf (S3, use_lockfile) and move the local state into it; idempotent
    Bootstrap,
}

#[derive(Subcommand, Debug, Clone)]
pub enum SandboxAction {
    /// Start the sandbox (the AWS emulator, and a registry when Docker is reachable); idempotent
    Up,
    /// Stop the sandbox and remove its state (.casey/sandbox)
    Down,
    /// Show whether the sandbox is running, and where
    Status,
}

/// `casey-deploy completions SHELL`: the completion script on stdout.
pub fn completions(shell: clap_complete::Shell) -> anyhow::Result<()> {
    use clap::CommandFactory;
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "casey-deploy", &mut script);
    write_stdout(&script)
}

/// `casey-deploy man`: the manual page (roff) on stdout: the tool, its
/// verbs, then each verb's synopsis and options.
pub fn man_page() -> anyhow::Result<()> {
    use anyhow::Context;
    use clap::CommandFactory;
    let command = Cli::command();
    let mut page = Vec::new();
    clap_mangen::Man::new(command.clone()).render(&mut page).context("could not render the manual page")?;
    for verb in command.get_subcommands().filter(|v| !v.is_hide_set()) {
        let verb = verb.clone().bin_name(format!("casey-deploy {}", verb.get_name()));
        let man = clap_mangen::Man::new(verb);
        man.render_synopsis_section(&mut page).context("could not render the manual page")?;
        man.render_options_section(&mut page).context("could not render the manual page")?;
    }
    write_stdout(&page)
}

/// Write to stdout; a reader that went away (`| head`) is not an error.
fn write_stdout(bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(anyhow::Error::new(e).context("could not write to stdout"))
        }
        _ => Ok(()),
    }
}
