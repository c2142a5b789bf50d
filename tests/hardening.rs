//! Hardening (issue 10): no value of a malformed or misplaced setting is ever
//! printed, an env file that is not a small regular file is refused at once,
//! plan files do not outlive interrupts and crashes, a silent or failing AWS
//! endpoint ends in bounded time with what the server said, and two runs in
//! one project share one sandbox. Everything through the real binary.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{copy_terraform, drain, pty, wait_for, Emulator, Keys, Project, Run};

/// A secret that only these tests use, beside the emulator's.
const OTHER_SECRET: &str = "hardeningTestSecretValue/0123456789abcdefXYZ";

fn write_private(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// `cmd` run to its end, killed (and reported as `None`) after `limit`.
fn run_with_limit(mut cmd: Command, limit: Duration) -> (Run, Duration) {
    let started = Instant::now();
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let (out, err) = (drain(child.stdout.take().unwrap()), drain(child.stderr.take().unwrap()));
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let elapsed = started.elapsed();
    std::thread::sleep(Duration::from_millis(100));
    let run = Run {
        code: status.and_then(|s| s.code()),
        stdout: out.lock().unwrap().clone(),
        stderr: err.lock().unwrap().clone(),
    };
    (run, elapsed)
}

fn plan_dirs(tf_dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(tf_dir.join(".terraform")) else { return Vec::new() };
    entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("casey-deploy-"))
        .collect()
}

/// Nothing in `run` holds any of `secrets`.
#[track_caller]
fn assert_clean(run: &Run, secrets: &[&str]) {
    for secret in secrets {
        assert!(!run.all().contains(secret), "a secret value leaked into the output:\n{}", run.all());
    }
}

// ------------------------------------------------------------ 1. malformed lines

#[test]
fn a_malformed_env_line_shows_file_line_and_key_but_never_the_value() {
    let emulator = Emulator::start();
    let project = Project::new(&emulator);
    let admin = emulator.admin();
    let secret = &admin.secret_access_key;
    let head = format!(
        "# the admin's settings\nAWS_REGION=us-east-1\nNOTE=\"a value on\ntwo lines\"\nAWS_ACCESS_KEY_ID={}\n",
        admin.access_key_id
    );
    // (bad line 6, the key the message may name)
    let cases = [
        (format!("AWS_SECRET_ACCESS_KEY={secret} extra"), Some("AWS_SECRET_ACCESS_KEY")),
        (format!("AWS_SECRET_ACCESS_KEY={secret}\tand more text"), Some("AWS_SECRET_ACCESS_KEY")),
        (format!("AWS_SECRET_ACCESS_KEY {secret}"), Some("AWS_SECRET_ACCESS_KEY")),
        (secret.clone(), None),
        (OTHER_SECRET.to_owned(), None),
        (format!("AWS_SECRET_ACCESS_KEY=\"{OTHER_SECRET}"), Some("AWS_SECRET_ACCESS_KEY")),
    ];
    for (line, key) in &cases {
        write_private(&project.tf_dir().join(".env"), &format!("{head}{line}\nAWS_SECRET_ACCESS_KEY={secret}\n"));
        let run = project.casey(&["whoami"]);
        run.assert_fails_with("terraform/.env:6: cannot parse this line");
        assert_clean(&run, &[secret, OTHER_SECRET]);
        if let Some(key) = key {
            assert!(run.stderr.contains(&format!("`{key}`")), "the key is named: {}", run.stderr);
        }
        // No fragment of the value either (dotenvy's own error quoted it).
        assert!(!run.all().contains(&secret[..12]) && !run.all().contains(&OTHER_SECRET[..12]), "{}", run.all());

        let doctor = project.casey(&["doctor"]);
        assert!(!doctor.ok(), "doctor must fail on a malformed terraform/.env:\n{}", doctor.all());
        assert!(doctor.stderr.contains("terraform/.env:6: cannot parse this line"), "{}", doctor.stderr);
        assert_clean(&doctor, &[secret, OTHER_SECRET]);
    }
}

// ------------------------------------------------ 2. a secret in another setting

#[test]
fn a_secret_pasted_into_another_setting_is_never_printed() {
    let emulator = Emulator::start();
    let project = Project::new(&emulator);
    let admin = emulator.admin();
    let secret = &admin.secret_access_key;
    write_private(
        &project.tf_dir().join(".env"),
        &format!("AWS_REGION={secret}\nAWS_ACCESS_KEY_ID={}\nAWS_SECRET_ACCESS_KEY={secret}\n", admin.access_key_id),
    );
    let run = project.casey(&["whoami"]);
    run.assert_fails_with("AWS_REGION is not an AWS region name");
    assert!(run.stderr.contains("credentials: access keys from"), "{}", run.stderr);

    let doctor = project.casey(&["doctor"]);
    assert!(!doctor.ok(), "{}", doctor.all());
    assert!(doctor.stderr.contains("AWS_REGION is not an AWS region name"), "{}", doctor.stderr);

    // The same from the environment, where the file sets no region.
    project.write_env(admin);
    let env = project.tf_dir().join(".env");
    let text = std::fs::read_to_string(&env).unwrap().replace("AWS_REGION=us-east-1\n", "");
    write_private(&env, &text);
    let run = project.casey_with(&["whoami"], &[("AWS_DEFAULT_REGION", secret)]);
    run.assert_fails_with("AWS_DEFAULT_REGION is not an AWS region name");

    // A secret-named variable of another tool is masked too.
    write_private(&env, &format!("{text}GITHUB_TOKEN={OTHER_SECRET}\nAWS_REGION=us-east-1\n"));
    let run =
        project.casey_with(&["whoami"], &[("AWS_ENDPOINT_URL", &format!("{}/?{OTHER_SECRET}", emulator.endpoint))]);
    assert_clean(&run, &[OTHER_SECRET]);
    assert!(run.stderr.contains("endpoint http://127.0.0.1"), "{}", run.stderr);
}

// --------------------------------------------------- 3. endless or odd env files

#[test]
fn an_env_file_that_is_not_a_small_regular_file_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    copy_terraform(dir.path());
    let project = Project { dir, endpoint: "http://127.0.0.1:9".into(), secrets: vec![OTHER_SECRET.into()] };
    let env = project.tf_dir().join(".env");

    // An endless device. The child's address space is capped so that a
    // tool that reads it anyway fails instead of eating the machine's memory.
    std::os::unix::fs::symlink("/dev/zero", &env).unwrap();
    let mut cmd = project.command(&["whoami"]);
    unsafe {
        cmd.pre_exec(|| {
            let limit = libc::rlimit { rlim_cur: 2 << 30, rlim_max: 2 << 30 };
            libc::setrlimit(libc::RLIMIT_AS, &limit);
            Ok(())
        });
    }
    let (run, took) = run_with_limit(cmd, Duration::from_secs(10));
    run.assert_fails_with("is a character device, not a regular file");
    assert!(took < Duration::from_secs(5), "took {took:?}");

    // A named pipe: opening it would block forever.
    std::fs::remove_file(&env).unwrap();
    let c_path = std::ffi::CString::new(env.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
    let (run, took) = run_with_limit(project.command(&["whoami"]), Duration::from_secs(10));
    run.assert_fails_with("is a named pipe, not a regular file");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    let (doctor, took) = run_with_limit(project.command(&["doctor"]), Duration::from_secs(60));
    assert!(doctor.stderr.contains("is a named pipe, not a regular file"), "{:?}\n{}", took, doctor.all());

    // A huge regular file.
    std::fs::remove_file(&env).unwrap();
    write_private(&env, &format!("AWS_REGION=us-east-1\n{}", "# padding\n".repeat(20_000)));
    let (run, _) = run_with_limit(project.command(&["whoami"]), Duration::from_secs(10));
    run.assert_fails_with("may be at most 64 KiB");

    // A directory.
    std::fs::remove_file(&env).unwrap();
    std::fs::create_dir(&env).unwrap();
    let (run, _) = run_with_limit(project.command(&["whoami"]), Duration::from_secs(10));
    run.assert_fails_with("is a directory, not a regular file");
}

// ------------------------------------------------------------- 6. plan files

#[test]
fn sigint_at_the_apply_prompt_leaves_no_plan_file() {
    let emulator = Emulator::start();
    let project = Project::new(&emulator);
    let (_master, slave) = pty();
    let mut child = project
        .command(&["infra"])
        .stdin(Stdio::from(slave))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = drain(child.stdout.take().unwrap());
    let stderr = drain(child.stderr.take().unwrap());
    wait_for(&mut child, &stderr, "Apply this plan to environment production?", Duration::from_secs(240));
    let dirs = plan_dirs(&project.tf_dir());
    assert_eq!(dirs.len(), 1, "the plan waits in its folder while the question is asked: {dirs:?}");
    assert!(project.tf_dir().join(".terraform/casey-deploy.lock").is_file(), "the run holds the deploy lock");
    let plans: Vec<_> = std::fs::read_dir(&dirs[0]).unwrap().flatten().map(|e| e.path()).collect();
    assert!(plans.iter().any(|p| p.extension().is_some_and(|e| e == "tfplan")), "{plans:?}");
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    let status = child.wait().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let run =
        Run { code: status.code(), stdout: stdout.lock().unwrap().clone(), stderr: stderr.lock().unwrap().clone() };
    assert_eq!(run.code, Some(130), "{}", run.all());
    run.assert_no_secrets(&project.secrets);
    assert_eq!(plan_dirs(&project.tf_dir()), Vec::<PathBuf>::new(), "the plan outlived the interrupt");
    let lock = project.tf_dir().join(".terraform/casey-deploy.lock");
    assert!(!lock.exists(), "the deploy lock outlived the interrupt");
    assert_eq!(
        emulator.aws(&["ecs", "list-clusters"])["clusterArns"].as_array().unwrap().len(),
        0,
        "nothing was applied"
    );
}

#[test]
fn a_plan_left_by_a_killed_apply_is_removed_by_the_next_run() {
    let emulator = Emulator::start();
    let project = Project::new(&emulator);
    // Its own process group, so terraform can be killed with it afterwards.
    let mut child = project
        .command(&["infra", "--yes"])
        .process_group(0)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _stdout = drain(child.stdout.take().unwrap());
    let stderr = drain(child.stderr.take().unwrap());
    wait_for(&mut child, &stderr, "==> terraform apply", Duration::from_secs(240));
    let pid = child.id() as libc::pid_t;
    unsafe { libc::kill(pid, libc::SIGKILL) };
    child.wait().unwrap();
    // Then terraform and its provider, as a crash of the whole job would.
    unsafe { libc::kill(-pid, libc::SIGKILL) };
    std::thread::sleep(Duration::from_secs(1));
    let stale = plan_dirs(&project.tf_dir());
    assert_eq!(stale.len(), 1, "SIGKILL leaves the plan folder behind: {stale:?}");
    assert!(stale[0].file_name().unwrap().to_string_lossy().contains(&format!("-{pid}-")));
    let secrets: Vec<&str> = project.secrets.iter().map(String::as_str).collect();
    assert_clean(&Run { code: None, stdout: String::new(), stderr: stderr.lock().unwrap().clone() }, &secrets);

    // A plan folder of a live run in the same project is left alone.
    let live = project.tf_dir().join(".terraform").join(format!("casey-deploy-{}-infra", std::process::id()));
    std::fs::create_dir_all(&live).unwrap();

    let next = project.casey(&["infra", "--yes"]);
    assert_eq!(plan_dirs(&project.tf_dir()), vec![live.clone()], "only the live run's folder remains:\n{}", next.all());
    assert!(
        next.stderr.contains(&format!("a plan left by an earlier run that was killed (pid {pid})")),
        "{}",
        next.all()
    );
    std::fs::remove_dir(&live).unwrap();
}

/// The marker a casey-deploy killed in the middle of an apply leaves, naming
/// a process that is gone.
fn mark_killed_apply(tf_dir: &Path) -> u32 {
    let mut gone = Command::new("true").spawn().unwrap();
    gone.wait().unwrap();
    let pid = gone.id();
    let dir = tf_dir.join(".terraform");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("casey-deploy.apply-in-progress"), format!("{pid} 1\n")).unwrap();
    pid
}

#[test]
fn a_state_file_broken_by_a_killed_apply_is_restored_or_refused_and_never_half_changed() {
    let emulator = Emulator::start();
    let project = Project::new(&emulator);
    let tf = project.tf_dir();
    let state = tf.join("terraform.tfstate");
    let backup = tf.join("terraform.tfstate.backup");

    // A first apply killed before it wrote anything: terraform created the
    // file empty to hold its lock and, with no state before it, no backup.
    std::fs::write(&state, "").unwrap();
    let pid = mark_killed_apply(&tf);
    let run = project.casey(&["infra", "--yes"]);
    run.assert_ok();
    assert!(
        run.stderr.contains(&format!("was left empty by the first apply, which was killed (pid {pid})")),
        "{}",
        run.all()
    );
    assert_eq!(std::fs::read_to_string(tf.join(format!("terraform.tfstate.broken-{pid}"))).unwrap(), "");
    let applied = std::fs::read_to_string(&state).unwrap();
    assert!(applied.contains("aws_ecs_cluster"), "the run applied from no state");
    let good_backup = std::fs::read_to_string(&backup).expect("later applies keep terraform's backup");

    // Cut short while written, and the backup unreadable too: refused, and
    // neither file is touched.
    let cut = &applied[..applied.len() / 2];
    std::fs::write(&state, cut).unwrap();
    std::fs::write(&backup, "{ not json").unwrap();
    let pid = mark_killed_apply(&tf);
    let run = project.casey(&["infra", "--yes"]);
    run.assert_fails_with(
        "is not a readable state either: restore the state from your own copy, then run `casey-deploy infra`",
    );
    assert!(
        run.stderr.contains(&format!(
            "was left cut short by an apply that was killed while terraform wrote it (casey-deploy pid {pid})"
        )),
        "{}",
        run.all()
    );
    assert_eq!(std::fs::read_to_string(&state).unwrap(), cut, "the broken state is left as it was");
    assert_eq!(std::fs::read_to_string(&backup).unwrap(), "{ not json");
    assert!(!tf.join(format!("terraform.tfstate.broken-{pid}")).exists());

    // With terraform's backup readable, it is restored and the run converges.
    std::fs::write(&backup, &good_backup).unwrap();
    emulator.put_image("casey-backend", "latest");
    let run = project.casey(&["infra", "--yes"]);
    run.assert_ok();
    assert!(
        run.stderr.contains(&format!("was left cut short by the apply that was killed (pid {pid}): restored")),
        "{}",
        run.all()
    );
    assert_eq!(std::fs::read_to_string(tf.join(format!("terraform.tfstate.broken-{pid}"))).unwrap(), cut);
    let run = project.casey(&["infra"]);
    run.assert_ok();
    assert!(run.stderr.contains("No changes"), "{}", run.all());
}

// ----------------------------------------------------- 9. timeouts and 5xx

/// A fake AWS endpoint on 127.0.0.1 (no real part can stall or fail on
/// demand): it reads each request and answers it with `answer`, or never
/// answers when `answer` is `None`. Counts the requests.
struct FakeAwsServer {
    endpoint: String,
    requests: Arc<AtomicUsize>,
}

impl FakeAwsServer {
    fn start(answer: Option<String>) -> FakeAwsServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&requests);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let answer = answer.clone();
                let count = Arc::clone(&count);
                std::thread::spawn(move || serve(stream, answer.as_deref(), &count));
            }
        });
        FakeAwsServer { endpoint, requests }
    }

    fn project(&self) -> Project {
        let dir = tempfile::tempdir().unwrap();
        copy_terraform(dir.path());
        let project = Project { dir, endpoint: self.endpoint.clone(), secrets: vec![OTHER_SECRET.into()] };
        project.write_env(&Keys {
            access_key_id: "AKIDFAKESERVERKEY001".into(),
            secret_access_key: OTHER_SECRET.into(),
            arn: String::new(),
        });
        project
    }
}

fn serve(mut stream: TcpStream, answer: Option<&str>, count: &AtomicUsize) {
    stream.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    loop {
        // One request: the head, then Content-Length bytes of body.
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match stream.read(&mut byte) {
                Ok(1) => head.push(byte[0]),
                _ => return,
            }
        }
        let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        let mut body = vec![0u8; length];
        if stream.read_exact(&mut body).is_err() {
            return;
        }
        count.fetch_add(1, Ordering::SeqCst);
        match answer {
            // Stall: keep the connection open and say nothing for 90 s.
            None => {
                std::thread::sleep(Duration::from_secs(90));
                return;
            }
            Some(answer) => {
                if stream.write_all(answer.as_bytes()).is_err() {
                    return;
                }
            }
        }
    }
}

fn http_500(content_type: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 500 Internal Server Error\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

#[test]
fn a_silent_sts_endpoint_ends_in_bounded_time_and_says_so() {
    let server = FakeAwsServer::start(None);
    let project = server.project();
    let mut cmd = project.command(&["whoami"]);
    cmd.env("AWS_MAX_ATTEMPTS", "1");
    let (run, took) = run_with_limit(cmd, Duration::from_secs(75));
    assert!(took < Duration::from_secs(45), "a silent endpoint held the tool for {took:?}:\n{}", run.all());
    run.assert_fails_with("no answer in time");
    assert!(run.stderr.contains(&format!("STS at {}", server.endpoint)), "{}", run.stderr);
    assert!(run.stderr.contains("did not answer"), "{}", run.stderr);
    assert!(!run.stderr.contains("check that the keys are current"), "the keys were not judged:\n{}", run.stderr);
    assert_clean(&run, &[OTHER_SECRET]);
    assert!(server.requests.load(Ordering::SeqCst) >= 1);
}

#[test]
fn a_failing_sts_endpoint_is_named_with_its_http_status() {
    // A body that is not an AWS error document.
    let server = FakeAwsServer::start(Some(http_500("text/plain", "Internal Server Error")));
    let project = server.project();
    let (run, took) = run_with_limit(project.command(&["whoami"]), Duration::from_secs(60));
    run.assert_fails_with("HTTP 500 without an AWS error code; the answer began: \"Internal Server Error\"");
    assert!(run.stderr.contains("is failing or throttling"), "{}", run.stderr);
    assert!(!run.stderr.contains("unhandled error"), "{}", run.stderr);
    assert!(took < Duration::from_secs(30), "{took:?}");
    assert_clean(&run, &[OTHER_SECRET]);
    assert!(server.requests.load(Ordering::SeqCst) >= 2, "a 500 is retried");

    // An AWS error document: its code and message.
    let xml = "<ErrorResponse><Error><Type>Receiver</Type><Code>InternalFailure</Code><Message>the fake server fails on purpose</Message></Error><RequestId>1</RequestId></ErrorResponse>";
    let server = FakeAwsServer::start(Some(http_500("text/xml", xml)));
    let project = server.project();
    let (run, _) = run_with_limit(project.command(&["whoami"]), Duration::from_secs(60));
    run.assert_fails_with("HTTP 500, InternalFailure: the fake server fails on purpose");
    assert_clean(&run, &[OTHER_SECRET]);
}

// ------------------------------------------------------- 10. one sandbox

/// The project's sandbox is stopped when the test ends, pass or fail.
struct SandboxProject {
    dir: tempfile::TempDir,
}

impl SandboxProject {
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_casey-deploy"));
        for (key, _) in std::env::vars() {
            if key.starts_with("AWS_") {
                cmd.env_remove(key);
            }
        }
        cmd.arg("--project-dir").arg(self.dir.path()).args(args).stdin(Stdio::null());
        cmd
    }
}

impl Drop for SandboxProject {
    fn drop(&mut self) {
        let _ = self.command(&["sandbox", "down"]).output();
    }
}

/// Processes whose command line mentions `needle`.
fn processes_with(needle: &str) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().chars().all(|c| c.is_ascii_digit()))
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .filter(|cmdline| String::from_utf8_lossy(cmdline).contains(needle))
        .count()
}

#[test]
fn two_runs_at_once_share_one_sandbox() {
    let dir = tempfile::tempdir().unwrap();
    copy_terraform(dir.path());
    let project = SandboxProject { dir };
    let children: Vec<Child> = (0..2)
        .map(|_| project.command(&["sandbox", "up"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap())
        .collect();
    let runs: Vec<Run> = children
        .into_iter()
        .map(|child| {
            let out = child.wait_with_output().unwrap();
            Run {
                code: out.status.code(),
                stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            }
        })
        .collect();
    for run in &runs {
        run.assert_ok();
    }
    let endpoint = |run: &Run| {
        run.stdout
            .lines()
            .find_map(|l| l.strip_prefix("SANDBOX_ENDPOINT="))
            .unwrap_or_else(|| panic!("no SANDBOX_ENDPOINT= line:\n{}", run.all()))
            .to_owned()
    };
    assert_eq!(endpoint(&runs[0]), endpoint(&runs[1]), "both runs must use the same sandbox");
    let script = project.dir.path().join(".casey/sandbox/casey_emulator.py");
    assert_eq!(processes_with(&script.display().to_string()), 1, "one emulator for the project");
    // One start, of the emulator whose endpoint both print (the seed's
    // trampled starts printed a port that was then not the one used).
    let starts: Vec<&str> =
        runs.iter().flat_map(|r| r.stderr.lines()).filter(|l| l.contains("starting the AWS emulator on")).collect();
    let port = endpoint(&runs[0]).rsplit(':').next().unwrap().to_owned();
    assert_eq!(
        starts.len(),
        1,
        "one run starts the sandbox, the other uses it:\n{}\n{}",
        runs[0].stderr,
        runs[1].stderr
    );
    assert!(starts[0].ends_with(&format!(":{port}")), "the port started is the one printed: {starts:?} vs {port}");
    // The endpoint printed is the one that answers.
    let endpoint = endpoint(&runs[0]);
    let address = endpoint.trim_start_matches("http://");
    let (status, _) = common::http_get(
        address.split(':').next().unwrap(),
        address.split(':').nth(1).unwrap().parse().unwrap(),
        "/_casey/health",
    )
    .unwrap();
    assert_eq!(status, 200);
}

// ------------------------------------------------------ 5. the account pin

/// A local state as an apply leaves it, recording the stack's account.
fn write_state_with_account(tf_dir: &Path, account: &str) {
    let state = serde_json::json!({
        "version": 4,
        "terraform_version": "1.11.4",
        "serial": 3,
        "lineage": "hardening-account-pin",
        "outputs": { "account_id": { "value": account, "type": "string" } },
        "resources": [],
        "check_results": null,
    });
    std::fs::write(tf_dir.join("terraform.tfstate"), state.to_string()).unwrap();
}

#[test]
fn only_the_pinned_account_may_deploy() {
    let emulator = Emulator::start();
    let project = Project::new(&emulator);
    let ours = emulator.account_id.as_str();
    let other = "111111111111";
    assert_ne!(ours, other);

    // Not pinned yet: the admin is accepted (the first apply pins nothing).
    project.casey(&["whoami"]).assert_ok();

    // Pinned by the flag or the variable to another account: refused, both named.
    for run in [
        project.casey(&["--account", other, "infra", "--yes"]),
        project.casey_with(&["infra", "--yes"], &[("CASEY_AWS_ACCOUNT_ID", other)]),
    ] {
        run.assert_fails_with(&format!(
            "are for account {ours}, but --account (or CASEY_AWS_ACCOUNT_ID) allows only account {other}"
        ));
    }
    project.casey(&["--account", ours, "whoami"]).assert_ok();
    project.casey(&["--account", "12345", "whoami"]).assert_fails_with("must be a 12-digit AWS account id");

    // The applied stack lives in another account: refused before any child runs.
    write_state_with_account(&project.tf_dir(), other);
    let run = project.casey(&["infra", "--yes"]);
    run.assert_fails_with(&format!("are for account {ours}, but the stack's state"));
    assert!(run.stderr.contains(&format!("allows only account {other}")), "{}", run.stderr);
    assert!(!project.tf_dir().join(".terraform").exists(), "terraform ran before the account was checked");
    // --account cannot override what the state records.
    project.casey(&["--account", ours, "whoami"]).assert_fails_with(&format!("records account {other}"));
    // doctor says the same, as a FAIL.
    let doctor = project.casey(&["doctor"]);
    assert!(!doctor.ok());
    // Human text is on stderr, each line after a `HH:MM:SS [environment] ` stamp.
    assert!(
        doctor.stderr.lines().filter_map(|l| l.get(9..)?.strip_prefix("[production] ")).any(|l| {
            let mut words = l.split_whitespace();
            words.next() == Some("FAIL") && words.next() == Some("account") && l.contains(other)
        }),
        "{}",
        doctor.stderr
    );

    // The state's own account: accepted.
    write_state_with_account(&project.tf_dir(), ours);
    project.casey(&["whoami"]).assert_ok();
}

// ------------------------------------------- 4. one set of checked credentials

/// A `credential_process` script that counts its runs in `count` and answers
/// with `first` on its first run and `later` on every run after.
fn counting_credential_process(dir: &Path, first: &str, later: &str) -> (PathBuf, PathBuf) {
    let count = dir.join("credential-process.count");
    let script = dir.join("credential-process.sh");
    std::fs::write(dir.join("first.json"), first).unwrap();
    std::fs::write(dir.join("later.json"), later).unwrap();
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nn=$(cat '{count}' 2>/dev/null || echo 0)\nn=$((n + 1))\necho $n > '{count}'\nif [ $n -eq 1 ]; then cat '{dir}/first.json'; else cat '{dir}/later.json'; fi\n",
            count = count.display(),
            dir = dir.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o700)).unwrap();
    (script, count)
}

fn process_answer(keys: &Keys, expires_in: Option<u64>) -> String {
    let mut answer = serde_json::json!({
        "Version": 1,
        "AccessKeyId": keys.access_key_id,
        "SecretAccessKey": keys.secret_access_key,
    });
    if let Some(seconds) = expires_in {
        let at = std::time::SystemTime::now() + Duration::from_secs(seconds);
        let secs = at.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        let out = Command::new("date").args(["-u", "-d", &format!("@{secs}"), "+%Y-%m-%dT%H:%M:%SZ"]).output().unwrap();
        answer["Expiration"] = String::from_utf8(out.stdout).unwrap().trim().into();
    }
    answer.to_string()
}

fn runs_of(count: &Path) -> usize {
    std::fs::read_to_string(count).map(|t| t.trim().parse().unwrap()).unwrap_or(0)
}

/// A fake container credentials endpoint (no real ECS agent runs here): it
/// only counts the connections a client makes to it.
fn counting_listener() -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/creds", listener.local_addr().unwrap());
    let hits = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&hits);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            seen.fetch_add(1, Ordering::SeqCst);
            drop(stream);
        }
    });
    (url, hits)
}

#[test]
fn the_credentials_the_guard_checked_are_the_only_ones_used() {
    let emulator = Emulator::start();
    let project = Project::with_keys(&emulator, None);
    write_private(&project.tf_dir().join(".env"), "AWS_REGION=us-east-1\n");
    let (admin, service) = (emulator.admin(), emulator.service());
    // The profile's process answers the admin first and the service
    // account after; every other source would be someone else too.
    let (script, count) =
        counting_credential_process(project.path(), &process_answer(admin, None), &process_answer(service, None));
    let config = project.path().join("aws-config");
    std::fs::write(
        &config,
        format!(
            "[profile casey-admin]\ncredential_process = {s}\n\n[default]\ncredential_process = {s}\n",
            s = script.display()
        ),
    )
    .unwrap();
    let token = project.path().join("web-identity-token");
    std::fs::write(&token, "eyJhbGciOiJub25lIn0.eyJzdWIiOiJvdGhlciJ9.").unwrap();
    let (container_uri, container_hits) = counting_listener();

    // Only the admin may do anything: IAM enforcement with the admin allowed
    // everything and the service account (and any role) nothing.
    emulator.control("POST", "/_casey/iam/propagation", &serde_json::json!({"seconds": 0}));
    emulator.aws(&[
        "iam",
        "attach-user-policy",
        "--user-name",
        common::ADMIN,
        "--policy-arn",
        "arn:aws:iam::aws:policy/AdministratorAccess",
    ]);
    emulator.control("POST", "/_casey/iam/enforce", &serde_json::json!({"enabled": true}));

    let run = project.casey_with(
        &["infra", "--yes"],
        &[
            ("AWS_CONFIG_FILE", config.to_str().unwrap()),
            ("AWS_PROFILE", "casey-admin"),
            ("AWS_ROLE_ARN", &format!("arn:aws:iam::{}:role/someone-else", emulator.account_id)),
            ("AWS_WEB_IDENTITY_TOKEN_FILE", token.to_str().unwrap()),
            ("AWS_ROLE_SESSION_NAME", "someone-else"),
            ("AWS_CONTAINER_CREDENTIALS_FULL_URI", &container_uri),
        ],
    );
    run.assert_ok();
    assert!(run.stderr.contains(&format!("caller: {} ", admin.arn)), "{}", run.stderr);
    assert!(run.stderr.contains("Apply complete"), "terraform applied, signed by the admin:\n{}", run.stderr);
    assert_eq!(runs_of(&count), 1, "the credential process runs once per run:\n{}", run.stderr);
    assert_eq!(container_hits.load(Ordering::SeqCst), 0, "no child asked the container credentials endpoint");
    assert_clean(&run, &[&service.secret_access_key]);
    emulator.control("POST", "/_casey/iam/enforce", &serde_json::json!({"enabled": false}));
    let clusters = emulator.aws(&["ecs", "list-clusters"]);
    assert_eq!(clusters["clusterArns"].as_array().unwrap().len(), 1, "the stack was applied");
}

#[test]
fn credentials_that_expire_are_resolved_again_and_must_stay_the_admins() {
    let emulator = Emulator::start();
    let project = Project::with_keys(&emulator, None);
    write_private(&project.tf_dir().join(".env"), "AWS_REGION=us-east-1\nAWS_PROFILE=casey-admin\n");
    let (admin, service) = (emulator.admin(), emulator.service());
    let config = project.path().join("aws-config");
    let env = |config: &Path| vec![("AWS_CONFIG_FILE", config.to_str().unwrap().to_owned())];

    // Short-lived admin credentials, and the admin again when asked again:
    // the run resolves them again through the same provider and goes on.
    let (script, count) =
        counting_credential_process(project.path(), &process_answer(admin, Some(8)), &process_answer(admin, Some(8)));
    std::fs::write(&config, format!("[profile casey-admin]\ncredential_process = {}\n", script.display())).unwrap();
    let vars = env(&config);
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let run = project.casey_with(&["infra", "--yes"], &vars);
    run.assert_ok();
    assert!(run.stderr.contains("credentials resolved again before they expire"), "{}", run.stderr);
    assert!(runs_of(&count) >= 2, "expiring credentials are resolved again: {}", runs_of(&count));

    // Resolved again, they belong to the service account: refused, unused.
    std::fs::remove_file(&count).unwrap();
    let (_, count) = counting_credential_process(
        project.path(),
        &process_answer(admin, Some(6)),
        &process_answer(service, Some(3600)),
    );
    let run = project.casey_with(&["infra", "--yes"], &vars);
    run.assert_fails_with(&format!("the credentials resolved again belong to {}", service.arn));
    assert!(run.stderr.contains(&format!("not to {} that was checked at the start", admin.arn)), "{}", run.stderr);
    assert_eq!(runs_of(&count), 2, "{}", run.stderr);
    assert_clean(&run, &[&service.secret_access_key, &admin.secret_access_key]);
}

// ------------------------------------------ 7./8. interrupted applies recover

/// Every live descendant of `pid` (children first found through /proc).
fn descendants(pid: u32) -> Vec<u32> {
    let mut parents = vec![pid];
    let mut found = Vec::new();
    while let Some(parent) = parents.pop() {
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
            // pid (comm) state ppid ...: comm may hold spaces, so split after ')'.
            let ppid = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
            if ppid == Some(parent) && !found.contains(&child) {
                found.push(child);
                parents.push(child);
            }
        }
    }
    found
}

/// `infra --yes` in a process group of its own (as a CI job runs it), its
/// output collected; waits until the main apply has created something.
fn infra_until_created(project: &Project) -> (Child, Arc<Mutex<String>>) {
    let mut child = project
        .command(&["infra", "--yes"])
        .process_group(0)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _stdout = drain(child.stdout.take().unwrap());
    let stderr = drain(child.stderr.take().unwrap());
    wait_for(&mut child, &stderr, "==> terraform apply (the saved plan)", Duration::from_secs(300));
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let text = stderr.lock().unwrap().clone();
        let main = &text[text.find("==> terraform apply (the saved plan)").unwrap()..];
        if main.contains("Creation complete") {
            break;
        }
        assert!(Instant::now() < deadline, "the apply created nothing:\n{text}");
        std::thread::sleep(Duration::from_millis(20));
    }
    (child, stderr)
}

#[test]
fn after_a_killed_apply_the_next_run_converges_by_itself() {
    let emulator = Emulator::start();
    let project = Project::new(&emulator);
    let (mut child, stderr) = infra_until_created(&project);
    // The whole job dies at once (an OOM kill, a runner killed with -9):
    // terraform and its provider first, so nothing gets to record anything.
    let pid = child.id();
    for process in descendants(pid).into_iter().rev() {
        unsafe { libc::kill(process as libc::pid_t, libc::SIGKILL) };
    }
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    child.wait().unwrap();
    let killed = stderr.lock().unwrap().clone();
    std::thread::sleep(Duration::from_millis(500));

    let run = project.casey(&["infra", "--yes"]);
    run.assert_ok();
    assert!(
        run.stderr.contains(&format!("an earlier apply (casey-deploy pid {pid}")),
        "the run says what it found:\n{}\n--- the killed run:\n{killed}",
        run.stderr
    );
    if run.stderr.contains("already exist") {
        assert!(run.stderr.contains(&format!("the interrupted apply (pid {pid}) created")), "{}", run.stderr);
        assert!(run.stderr.contains("imported "), "{}", run.stderr);
    }
    // The image arrives; the service follows; then nothing is left to do.
    emulator.put_image("casey-backend", "latest");
    project.casey(&["infra", "--yes"]).assert_ok();
    let run = project.casey(&["infra"]);
    run.assert_ok();
    assert!(run.stderr.contains("No changes"), "{}", run.stderr);
    assert!(!run.stderr.contains("an earlier apply"), "the marker is gone once converged: {}", run.stderr);
}

#[test]
fn a_signal_to_the_whole_process_group_reaches_terraform_once() {
    let emulator = Emulator::start();
    let project = Project::new(&emulator);
    let (mut child, stderr) = infra_until_created(&project);
    // As GNU `timeout` or a CI runner does: the signal goes to the group.
    unsafe { libc::kill(-(child.id() as libc::pid_t), libc::SIGINT) };
    let status = child.wait().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let text = stderr.lock().unwrap().clone();
    assert_eq!(status.code(), Some(130), "{text}");
    assert!(text.contains("Interrupt received"), "terraform was told once:\n{text}");
    assert!(text.contains("Gracefully shutting down"), "{text}");
    assert!(!text.contains("Two interrupts received"), "terraform got the signal twice:\n{text}");
    assert!(text.contains("after finishing the changes in progress; it released its state lock"), "{text}");
    assert!(!project.tf_dir().join(".terraform.tfstate.lock.info").exists(), "the lock is released");
    let secrets: Vec<&str> = project.secrets.iter().map(String::as_str).collect();
    assert_clean(&Run { code: status.code(), stdout: String::new(), stderr: text }, &secrets);

    project.apply_stack(&emulator);
    let run = project.casey(&["infra"]);
    run.assert_ok();
    assert!(run.stderr.contains("No changes"), "{}", run.stderr);
}

// ---------------------------------------- 5b. terraform pins the account too

#[test]
fn terraform_refuses_an_account_outside_allowed_account_ids_on_its_own() {
    let emulator = Emulator::start();
    let project = Project::new(&emulator);
    let ours = emulator.account_id.as_str();

    // Before the first apply an explicit allowed_account_ids pins it: the
    // guard knows nothing of it, terraform refuses before any change.
    let run = project.casey(&["infra", "--yes", "--var", r#"allowed_account_ids=["111111111111"]"#]);
    run.assert_fails_with(&format!("AWS account ID not allowed: {ours}"));
    assert_eq!(emulator.aws(&["ecs", "list-clusters"])["clusterArns"], serde_json::json!([]));
    assert_eq!(emulator.aws(&["iam", "list-policies", "--scope", "Local"])["Policies"], serde_json::json!([]));

    // Only 12-digit ids.
    let run = project.casey(&["infra", "--yes", "--var", r#"allowed_account_ids=["12345"]"#]);
    run.assert_fails_with("allowed_account_ids must hold 12-digit AWS account ids");

    // The tool's pin reaches terraform as a valid list: the plan runs
    // (without a terminal and --yes, nothing is applied).
    let run = project.casey(&["--account", ours, "infra"]);
    run.assert_fails_with("there is no terminal to confirm the apply");
    assert!(run.stderr.contains("Plan: "), "{}", run.stderr);
}
