//! `casey-deploy history`: the releases the release record holds (its SSM
//! version history), newest first: when, who, tag, digest, task definition,
//! outcome, whether ECR still holds the image, and which one is live.
//!
//! Outcomes come from the records and from ECS: each record notes how ECS
//! ran the release before it when it was written (`previous_outcome`), a
//! rollback names the release it replaced, and the newest release's outcome
//! is its PRIMARY deployment's rollout state now.

use anyhow::{Context as _, Result};
use serde_json::{json, Value};

use crate::context::Ctx;
use crate::outputs::{self, Outputs, Repository};
use crate::release::{self, Record, Version};
use crate::rollout::{self, Live};
use crate::{out, say};

/// A release as `history` shows it.
#[derive(Debug, Clone)]
pub struct Entry {
    pub version: i64,
    pub record: Record,
    /// completed, in progress, failed, rolled back, replaced while rolling out, rolled back by ECS, not live.
    pub outcome: String,
    pub task_definition: Option<String>,
    pub live: bool,
}

impl Entry {
    /// A release a rollback may return to: it ran to completion.
    pub fn was_good(&self) -> bool {
        matches!(self.outcome.as_str(), "completed" | "rolled back")
    }

    fn to_json(&self, in_ecr: bool) -> Value {
        json!({
            "version": self.version,
            "digest": self.record.digest,
            "tag": self.record.tag,
            "image": self.record.image,
            "action": self.record.action,
            "reason": self.record.reason,
            "deployed_at": self.record.at,
            "deployed_by": self.record.by,
            "task_definition": self.task_definition,
            "outcome": self.outcome,
            "live": self.live,
            "in_ecr": in_ecr,
        })
    }
}

/// What `history` and `rollback` read: the stack's repository, its releases with their
/// outcomes (newest first), and what ECS runs.
pub struct Releases {
    pub repo: Repository,
    pub entries: Vec<Entry>,
    pub live: Option<Live>,
}

impl Releases {
    pub fn load(ctx: &Ctx) -> Result<Releases> {
        let map = outputs::load_map(&ctx.terraform(&crate::terraform::Vars::default()))?;
        let parameter = release::parameter(&map)?;
        let outputs = Outputs::from_map(&map)?;
        let repo = Repository::from_map(&map, &outputs.aws_region)?;
        let versions = ctx.block_on(release::history(&ctx.ssm(&outputs.aws_region), &parameter))?;
        let live = rollout::live(ctx, &outputs)?;
        let entries = entries(&versions, live.as_ref());
        Ok(Releases { repo, entries, live })
    }
}

pub fn run(ctx: &Ctx, limit: usize) -> Result<()> {
    let Releases { repo, entries, .. } = Releases::load(ctx)?;
    let entries: Vec<Entry> = entries.into_iter().take(limit).collect();
    let in_ecr = ctx.block_on(crate::ecr::digests(&ctx.ecr(&repo.region), repo.name()))?;
    if entries.is_empty() {
        say!("no release yet: `casey-deploy image` (or `all`) deploys the first");
    } else {
        say!(
            "{:<4} {:<20} {:<14} {:<19} {:<12} {:<26} {}",
            "",
            "deployed (UTC)",
            "tag",
            "digest",
            "task def",
            "outcome",
            "by"
        );
    }
    for e in &entries {
        let short = e.record.digest.trim_start_matches("sha256:").chars().take(12).collect::<String>();
        let gone = if in_ecr.contains(&e.record.digest) { "" } else { " (not in ECR)" };
        let what = match (e.record.action.as_str(), e.record.from) {
            ("rollback", Some(from)) => format!("{} (rollback of v{from})", e.outcome),
            _ => e.outcome.clone(),
        };
        let line = format!(
            "{:<4} {:<20} {:<14} {:<19} {:<12} {:<26} {}{gone}",
            format!("{}v{}", if e.live { "*" } else { " " }, e.version),
            e.record.at.split('.').next().unwrap_or_default().trim_end_matches('Z').replace('T', " "),
            if e.record.tag.is_empty() { "-" } else { &e.record.tag },
            format!("sha256:{short}"),
            e.task_definition.as_deref().map_or("-".to_owned(), |td| td.rsplit('/').next().unwrap_or(td).to_owned()),
            what,
            e.record.by.rsplit(':').next().unwrap_or(&e.record.by),
        );
        say!("{}", line.trim_end());
    }
    if let Some(e) = entries.iter().find(|e| e.live) {
        out!("LIVE_RELEASE=v{} {} {}", e.version, e.record.tag, e.record.digest);
    }
    crate::output::document(&Value::Array(
        entries.iter().map(|e| e.to_json(in_ecr.contains(&e.record.digest))).collect(),
    ));
    Ok(())
}

/// The releases among `versions` (oldest first, as [`release::history`]
/// returns them), newest first, with their outcomes.
pub fn entries(versions: &[Version], live: Option<&Live>) -> Vec<Entry> {
    let live_image = live.and_then(|l| l.image.as_deref());
    let mut entries = Vec::new();
    for (i, v) in versions.iter().enumerate() {
        if !v.record.is_release() {
            continue;
        }
        let next = versions.get(i + 1).map(|n| &n.record);
        let ran_this = |n: &Record| n.previous_image.as_deref() == Some(v.record.image.as_str());
        let (outcome, task_definition) = match next {
            Some(n) if n.action == "rollback" && n.from == Some(v.version) => {
                let outcome = if n.reason.as_deref() == Some("failed") { "failed" } else { "rolled back" };
                (outcome.to_owned(), n.previous_task_definition.clone().filter(|_| ran_this(n)))
            }
            Some(n) if ran_this(n) => {
                let outcome = match n.previous_outcome.as_deref() {
                    Some("completed") => "completed",
                    Some("failed") => "failed",
                    Some(_) => "replaced while rolling out",
                    None => "completed",
                };
                (outcome.to_owned(), n.previous_task_definition.clone())
            }
            Some(_) => ("rolled back by ECS".to_owned(), None),
            None => match live {
                Some(l) if live_image == Some(v.record.image.as_str()) => {
                    let outcome = match l.rollout_state.as_deref() {
                        Some("completed") | None => "completed",
                        Some("failed") => "failed",
                        Some(_) => "in progress",
                    };
                    (outcome.to_owned(), Some(l.task_definition.clone()))
                }
                _ => ("not live".to_owned(), None),
            },
        };
        entries.push(Entry { version: v.version, record: v.record.clone(), outcome, task_definition, live: false });
    }
    entries.reverse();
    if let Some(e) = entries.iter_mut().find(|e| Some(e.record.image.as_str()) == live_image) {
        e.live = true;
    }
    entries
}

/// The release to roll back to: the one named (tag or digest), else the
/// newest good release that is not the live one.
pub fn target<'a>(entries: &'a [Entry], to: Option<&str>) -> Result<&'a Entry> {
    match to {
        Some(to) => {
            let hex = to.trim_start_matches("sha256:");
            entries
                .iter()
                .find(|e| e.record.tag == to)
                .or_else(|| {
                    entries.iter().find(|e| hex.len() >= 12 && e.record.digest.trim_start_matches("sha256:").starts_with(hex))
                })
                .with_context(|| {
                    format!("no release in the history has the tag or digest `{to}`: `casey-deploy history -n 100` lists them")
                })
        }
        None => {
            let live = entries.iter().find(|e| e.live).map(|e| e.record.image.as_str());
            entries.iter().find(|e| !e.live && Some(e.record.image.as_str()) != live && e.was_good()).context(
                "there is no earlier release that completed to roll back to: `casey-deploy history` lists the releases; name one with --to TAG",
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(version: i64, image: &str, action: &str) -> Version {
        let mut record = Record::new(image.into(), image.into(), format!("sha256:{image}"), action, "arn:u");
        if action == "created" {
            record.tag.clear();
        }
        Version { version, record }
    }

    fn live(image: &str, state: &str) -> Live {
        Live {
            deployment: "d".into(),
            task_definition: "arn:td/casey:9".into(),
            image: Some(image.into()),
            rollout_state: Some(state.into()),
        }
    }

    #[test]
    fn outcomes_come_from_the_next_record_and_the_live_deployment() {
        let mut versions =
            vec![version(1, "placeholder", "created"), version(2, "a", "deploy"), version(3, "b", "deploy")];
        versions[2].record.previous_image = Some("a".into());
        versions[2].record.previous_outcome = Some("completed".into());
        versions[2].record.previous_task_definition = Some("arn:td/casey:2".into());
        // b failed; ECS rolled back to a; the tool recorded it.
        let mut back = version(4, "a", "rollback");
        back.record.from = Some(3);
        back.record.reason = Some("failed".into());
        back.record.previous_image = Some("b".into());
        versions.push(back);
        let entries = entries(&versions, Some(&live("a", "completed")));
        let summary: Vec<_> = entries.iter().map(|e| (e.version, e.outcome.as_str(), e.live)).collect();
        assert_eq!(summary, [(4, "completed", true), (3, "failed", false), (2, "completed", false)]);
        assert_eq!(entries[2].task_definition.as_deref(), Some("arn:td/casey:2"));
        assert_eq!(entries[0].task_definition.as_deref(), Some("arn:td/casey:9"));

        // The default target skips the live image and the failed release.
        let versions_ok = &versions[..3];
        let e = super::entries(versions_ok, Some(&live("b", "completed")));
        assert_eq!(target(&e, None).unwrap().version, 2);
        assert!(target(&entries, None).is_err(), "only a, which is live, completed");
        assert_eq!(target(&entries, Some("b")).unwrap().version, 3);
        assert_eq!(target(&entries, Some("sha256:b")).unwrap_err().to_string().contains("history -n 100"), true);
    }
}
