//! The deploy lock: one run at a time changes a stack, for the whole run
//! (plan, apply, push, rollout), not only while terraform holds its state
//! lock. With the state in S3 the lock is an object beside it, created with
//! a conditional put (`If-None-Match: *`), so two machines cannot both hold
//! it; with a local state it is a file created exclusively next to it.
//!
//! A holder records who, which verb, since when, and where (host, pid). A
//! holder on this machine whose process is gone is taken over; one elsewhere
//! needs `casey-deploy unlock`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use serde_json::{json, Value};

use crate::context::Ctx;
use crate::{say, warn};

enum Store {
    S3 { client: aws_sdk_s3::Client, bucket: String, key: String },
    File(PathBuf),
}

/// Production's lock file keeps its name; another environment's has its own.
fn local_lock_name(env: &str) -> String {
    if env == crate::environment::PRODUCTION {
        "casey-deploy.lock".to_owned()
    } else {
        format!("casey-deploy-{env}.lock")
    }
}

impl Store {
    fn of(ctx: &Ctx) -> Result<Store> {
        let dir = ctx.terraform_dir();
        match &ctx.backend {
            Some(b) => {
                Ok(Store::S3 { client: ctx.s3(&b.region), key: b.lock_key(&ctx.environment), bucket: b.bucket.clone() })
            }
            None => Ok(Store::File(dir.join(".terraform").join(local_lock_name(&ctx.environment)))),
        }
    }

    fn describe(&self) -> String {
        match self {
            Store::S3 { bucket, key, .. } => format!("s3://{bucket}/{key}"),
            Store::File(path) => path.display().to_string(),
        }
    }

    /// Create the lock holding `holder`; `Ok(false)` when it exists.
    async fn create(&self, holder: &Value) -> Result<bool> {
        let body = serde_json::to_vec_pretty(holder)?;
        match self {
            Store::S3 { client, bucket, key } => {
                let put = client
                    .put_object()
                    .bucket(bucket)
                    .key(key)
                    .if_none_match("*")
                    .content_type("application/json")
                    .body(body.into())
                    .send()
                    .await;
                match put {
                    Ok(_) => Ok(true),
                    // 412: it exists. 409: a concurrent conditional write won
                    // the race (S3 conditional writes), so it exists now too.
                    Err(err) if err.raw_response().is_some_and(|r| matches!(r.status().as_u16(), 409 | 412)) => {
                        Ok(false)
                    }
                    Err(err) => Err(anyhow!(
                        "could not take the deploy lock s3://{bucket}/{key}: S3 PutObject failed: {}\nThe admin needs s3:PutObject there (run `casey-deploy infra` with an earlier version's rights? then `casey-deploy state bootstrap`)",
                        crate::aws::error_text(&err)
                    )),
                }
            }
            Store::File(path) => {
                use std::io::Write;
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent)
                        .with_context(|| format!("could not create {}", parent.display()))?;
                }
                match std::fs::OpenOptions::new().write(true).create_new(true).open(path) {
                    Ok(mut file) => {
                        file.write_all(&body).with_context(|| format!("could not write {}", path.display()))?;
                        Ok(true)
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
                    Err(e) => Err(anyhow!("could not create the deploy lock {}: {e}", path.display())),
                }
            }
        }
    }

    /// The current holder; `None` when nobody holds the lock. A lock that
    /// cannot be read as a holder is still held (by someone unknown).
    async fn holder(&self) -> Result<Option<Value>> {
        let bytes = match self {
            Store::S3 { client, bucket, key } => {
                use aws_sdk_s3::operation::get_object::GetObjectError;
                match client.get_object().bucket(bucket).key(key).send().await {
                    Ok(out) => {
                        out.body.collect().await.context("could not read the deploy lock")?.into_bytes().to_vec()
                    }
                    Err(err) if matches!(err.as_service_error(), Some(GetObjectError::NoSuchKey(_))) => {
                        return Ok(None)
                    }
                    Err(err) => {
                        bail!("could not read the deploy lock s3://{bucket}/{key}: {}", crate::aws::error_text(&err))
                    }
                }
            }
            Store::File(path) => match std::fs::read(path) {
                Ok(bytes) => bytes,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => bail!("could not read the deploy lock {}: {e}", path.display()),
            },
        };
        Ok(Some(serde_json::from_slice(&bytes).unwrap_or_else(|_| json!({"who": "unknown (unreadable lock)"}))))
    }

    async fn remove(&self) -> Result<()> {
        match self {
            Store::S3 { client, bucket, key } => {
                client.delete_object().bucket(bucket).key(key).send().await.map(|_| ()).map_err(|err| {
                    anyhow!("could not remove the deploy lock s3://{bucket}/{key}: {}", crate::aws::error_text(&err))
                })
            }
            Store::File(path) => match std::fs::remove_file(path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(anyhow!("could not remove the deploy lock {}: {e}", path.display()))
                }
                _ => Ok(()),
            },
        }
    }
}

/// The lock this run holds; released when dropped, or when the process is
/// ended by a signal.
pub struct DeployLock {
    store: std::sync::Arc<Store>,
    id: String,
}

impl Drop for DeployLock {
    fn drop(&mut self) {
        release(&self.store, &self.id);
    }
}

/// Remove the lock if it is still ours (an `unlock` may have taken it).
fn release(store: &Store, id: &str) {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
    rt.block_on(async {
        let ours = matches!(store.holder().await, Ok(Some(h)) if h["id"] == id);
        if ours {
            if let Err(err) = store.remove().await {
                warn!("{err:#}; run `casey-deploy unlock` to remove it");
            }
        }
    });
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it or truncates.
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    if ok {
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        "unknown".to_owned()
    }
}

/// "casey-deploy all by arn:… on host (pid 7), since 2026-12-03T05:00:00Z".
fn describe(holder: &Value) -> String {
    let field = |k: &str| holder[k].as_str().map(str::to_owned).unwrap_or_else(|| "?".to_owned());
    format!(
        "`casey-deploy {}` by {} on {} (pid {}), since {}",
        field("verb"),
        field("who"),
        field("host"),
        holder["pid"].as_u64().map(|p| p.to_string()).unwrap_or_else(|| "?".into()),
        field("since")
    )
}

/// A holder on this machine whose process is gone.
fn is_dead_local(holder: &Value, host: &str) -> bool {
    let pid = holder["pid"].as_u64().and_then(|p| u32::try_from(p).ok());
    holder["host"] == host && pid.is_some_and(|p| p != std::process::id() && !crate::process::alive(p))
}

/// Take the deploy lock for `verb`, waiting up to `timeout` for a holder to
/// finish (a progress line says whom it waits for).
pub fn acquire(ctx: &Ctx, verb: &str, timeout: Duration) -> Result<DeployLock> {
    let store = std::sync::Arc::new(Store::of(ctx)?);
    let host = hostname();
    let id = format!("{}-{}-{}", host, std::process::id(), crate::output::utc_stamp());
    let holder = json!({
        "id": id, "verb": verb, "who": ctx.identity.arn, "host": host, "pid": std::process::id(),
        "since": crate::release::now_rfc3339(),
    });
    let start = Instant::now();
    let mut waiting: Option<Value> = None;
    loop {
        if ctx.block_on(store.create(&holder))? {
            break;
        }
        let Some(current) = ctx.block_on(store.holder())? else { continue };
        if is_dead_local(&current, &host) {
            say!(
                "the deploy lock {} was left by {}, which has ended: taking it over",
                store.describe(),
                describe(&current)
            );
            ctx.block_on(store.remove())?;
            continue;
        }
        if start.elapsed() >= timeout {
            bail!(
                "another deploy holds the lock {}: {}. Nothing was changed. Wait for it (--lock-timeout 10m waits), or, if that run is dead, `casey-deploy unlock` removes its lock",
                store.describe(),
                describe(&current)
            );
        }
        let changed = waiting.as_ref() != Some(&current["id"]);
        waiting = Some(current["id"].clone());
        crate::output::progress_live(
            &format!(
                "waiting for the deploy lock ({}s of {}s): held by {}",
                start.elapsed().as_secs(),
                timeout.as_secs(),
                describe(&current)
            ),
            changed,
        );
        crate::process::pause(Duration::from_secs(2))?;
    }
    crate::detail!("deploy lock {} taken", store.describe());
    let lock = DeployLock { store: std::sync::Arc::clone(&store), id: id.clone() };
    crate::process::on_exit(Box::new(move || release(&store, &id)));
    Ok(lock)
}

/// `casey-deploy unlock`: remove the lock of a run that died. A holder
/// alive on this machine is never removed; otherwise a terminal is asked to
/// type `unlock`, and without one `--yes` is needed.
pub fn unlock(ctx: &Ctx, yes: bool) -> Result<()> {
    use std::io::{BufRead, IsTerminal, Write};
    let store = Store::of(ctx)?;
    let Some(holder) = ctx.block_on(store.holder())? else {
        say!("no deploy lock is held ({} does not exist)", store.describe());
        crate::output::summary(json!({"lock": store.describe(), "held": false, "removed": false}));
        return Ok(());
    };
    let host = hostname();
    let pid = holder["pid"].as_u64().and_then(|p| u32::try_from(p).ok());
    if holder["host"] == host.as_str() && pid.is_some_and(crate::process::alive) {
        bail!(
            "the deploy lock {} is held by {}, which is still running on this machine: let it finish or stop it (kill {}); its lock goes with it",
            store.describe(),
            describe(&holder),
            pid.unwrap_or_default()
        );
    }
    say!("the deploy lock {} is held by {}", store.describe(), describe(&holder));
    if !yes {
        if !std::io::stdin().is_terminal() {
            bail!("there is no terminal to confirm removing the lock, so it was kept; make sure that run is dead, then re-run with --yes");
        }
        crate::prompt!("Remove it? Only do this when that run is dead. Type `unlock` to remove it [keep it]: ");
        std::io::stderr().flush().ok();
        let mut answer = String::new();
        std::io::stdin().lock().read_line(&mut answer).context("could not read the answer")?;
        if answer.trim() != "unlock" {
            bail!("the deploy lock was kept");
        }
    }
    ctx.block_on(store.remove())?;
    say!("removed the deploy lock {}", store.describe());
    crate::output::summary(json!({"lock": store.describe(), "held": true, "removed": true, "holder": holder}));
    Ok(())
}
