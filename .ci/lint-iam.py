#!/usr/bin/env python3
"""Static checks of every IAM policy document the Terraform stack renders.

Renders the stack's policies the way AWS would receive them: the project's AWS emulator on a free loopback
port (no AWS account, no network), `terraform plan` of a throwaway copy of terraform/ against it, and
`terraform show -json`. Then, for each customer-managed policy and each role trust policy:

- its size against IAM's quota, with headroom (IAM counts characters without whitespace), and
- parliament (pinned in .ci/setup.sh): zero findings, or a finding justified in JUSTIFIED below.

It also counts the managed policies the stack attaches to each IAM user (IAM's default quota is 10).

Run:  $CASEY_LINT_BIN/python .ci/lint-iam.py [--show]      (after `source .ci/setup.sh`)
      --show prints each rendered document.
Needs: CASEY_PYTHON (a Python with moto[server]), TF_CLI_CONFIG_FILE (the provider mirror), terraform.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import parliament

ROOT = Path(__file__).resolve().parent.parent

# IAM and AWS STS quotas, https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_iam-quotas.html
MANAGED_POLICY_QUOTA = 6144  # "Managed policy length", characters without whitespace
TRUST_POLICY_QUOTA = 2048  # "Role trust policy length" (default; can be raised to 8,192)
USER_MANAGED_POLICIES_QUOTA = 10  # "Managed policies attached to an IAM user" (default; can be raised to 20)
# Headroom, so that a longer resource name or one more action does not hit the quota on AWS first.
MAX_MANAGED_POLICY = 5120
MAX_TRUST_POLICY = 1536
MAX_STACK_POLICIES_PER_USER = 5  # leaves half the user's quota for what the account attaches itself

# Parliament findings that are accepted, each with the reason. Key: (policy name as an fnmatch pattern,
# finding issue, a substring of the finding's detail and location, as printed). A justified finding that no longer occurs fails the
# check too, so this list cannot go stale. Parliament checks each statement on its own and wants every
# resource type an action can touch; IAM authorizes each resource of a request against all statements.
JUSTIFIED: dict[tuple[str, str, str], str] = {
    ("trust policy of *", "MALFORMED", "neither Resource nor NotResource"):
        "a role trust policy names a Principal and must not have a Resource; parliament lints every document as "
        "an identity policy",
    ("casey-backend-ai", "RESOURCE_MISMATCH", "bedrock:InvokeModel"):
        "the backend invokes foundation models and inference profiles only; the other resource types "
        "InvokeModel can touch (async-invoke, imported/provisioned/custom models, prompt routers, marketplace "
        "endpoints) are deliberately not granted",
    ("casey-terraform-admin", "RESOURCE_POLICY_PRIVILEGE_ESCALATION", "arn:aws:s3:::casey-tfstate-"):
        "s3:PutBucketPolicy on the state bucket is how `state bootstrap` sets its TLS-only, no-delete policy; "
        "the bucket holds only this stack's state, which the admin already reads and writes, so a policy the "
        "admin could write there grants it nothing outside its own stack",
    ("casey-terraform-admin-ecs", "RESOURCE_STAR", "ecs:ListTasks"):
        "ListTasks scopes only to container instances, which Fargate has none of; AWS's own example limits it "
        "with the ecs:cluster condition (the stack's cluster), as this statement does",
    ("casey-terraform-admin-network", "RESOURCE_MISMATCH", "ec2:ModifySecurityGroupRules"):
        "security groups and their rules are in two statements on purpose: the group is scoped by its Project "
        "tag, which a rule being created cannot carry yet; IAM allows each resource by either statement",
    ("casey-terraform-admin-network", "RESOURCE_MISMATCH", "elasticloadbalancing:"):
        "scoped to the stack's Application Load Balancer (app/<alb_name>); the Network Load Balancer listener "
        "ARNs (listener/net/...) are deliberately not granted",
    ("casey-terraform-admin-ecs", "CREDENTIALS_EXPOSURE", "ecr:getauthorizationtoken"):
        "the deployer logs docker in to ECR to push the backend image; the token only reaches the registry "
        "(casey-deploy passes it to `docker login --password-stdin` and never prints it)",
    ("casey-terraform-admin-ecs", "PERMISSIONS_MANAGEMENT_ACTIONS", "kms:creategrant"):
        "ECR creates and retires its own grant on the AWS managed aws/ecr key when it creates or deletes the "
        "repository; the statement is conditioned on kms:ViaService = ecr.<region>.amazonaws.com",
    ("casey-terraform-admin", "PERMISSIONS_MANAGEMENT_ACTIONS", "iam:"):
        "the stack manages its own IAM: each action is scoped to the stack's two roles, its policies and its two "
        "users, attachments are conditioned on iam:PolicyARN, PassRole on iam:PassedToService, "
        "CreateServiceLinkedRole on iam:AWSServiceName",
    ("casey-terraform-admin", "PRIVILEGE_ESCALATION", "CreateNewPolicyVersion"):
        "by design the admin's own policies are part of the stack (infra applies them first), so the admin can "
        "rewrite them: it administers the stack. Only the stack's policies are writable; an account owner who "
        "wants a hard cap sets a permissions boundary on the admin user",
    ("casey-terraform-admin", "PRIVILEGE_ESCALATION", "AttachUserPolicy"):
        "attachments are limited by iam:PolicyARN to the stack's own policies and to the stack's two users; "
        "see the CreateNewPolicyVersion entry for why those policies are the admin's to edit",
}


def fail(message: str) -> None:
    print(f"lint-iam: {message}", file=sys.stderr)
    sys.exit(1)


def start_emulator(workdir: Path) -> tuple[subprocess.Popen, dict]:
    python = os.environ.get("CASEY_PYTHON")
    if not python:
        fail("CASEY_PYTHON is not set: run `source .ci/setup.sh` first")
    seed = workdir / "seed.json"
    log = open(workdir / "emulator.log", "w")
    proc = subprocess.Popen(
        [python, str(ROOT / "emulator/casey_emulator.py"), "--host", "127.0.0.1", "--port", "0",
         "--seed-file", str(seed)],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 90
    while not seed.exists():
        if proc.poll() is not None:
            fail(f"the emulator exited ({proc.returncode}):\n{(workdir / 'emulator.log').read_text()}")
        if time.monotonic() > deadline:
            proc.kill()
            fail("the emulator did not become ready in 90 s")
        time.sleep(0.1)
    return proc, json.loads(seed.read_text())


def terraform(tf_dir: Path, env: dict, *args: str) -> str:
    run = subprocess.run(["terraform", f"-chdir={tf_dir}", *args], env=env, capture_output=True, text=True,
                         stdin=subprocess.DEVNULL)
    if run.returncode != 0:
        fail(f"terraform {args[0]} failed:\n{run.stdout}\n{run.stderr}")
    return run.stdout


LINT_DEPLOY_ROLE = "casey-lint-deploy"


# The longest environment name variables.tf accepts: outside production every environment-scoped ARN in the
# admin's policies carries "-<environment>", so this renders the largest documents any environment can have.
LONGEST_ENVIRONMENT = "e" * 16


def render(workdir: Path, *extra_vars: str) -> dict:
    """The stack's plan as JSON (`terraform show -json`), planned against a fresh emulator."""
    tf_dir = workdir / "terraform"
    tf_dir.mkdir()
    for path in (ROOT / "terraform").iterdir():
        if path.suffix == ".tf" or path.name == ".terraform.lock.hcl":
            shutil.copy(path, tf_dir / path.name)
    # Fail fast on an emulator gap instead of the provider's 11-minute retries.
    (tf_dir / "lint_override.tf").write_text('provider "aws" {\n  max_retries = 1\n}\n')
    emulator, seed = start_emulator(workdir)
    try:
        admin = seed["users"]["casey_aniruddh"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update({
            "AWS_ENDPOINT_URL": seed["endpoint_url"],
            "AWS_ACCESS_KEY_ID": admin["access_key_id"],
            "AWS_SECRET_ACCESS_KEY": admin["secret_access_key"],
            "AWS_REGION": "us-east-1",
            "AWS_CONFIG_FILE": "/dev/null",
            "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
            "AWS_EC2_METADATA_DISABLED": "true",
            "TF_IN_AUTOMATION": "1",
            "CHECKPOINT_DISABLE": "1",
        })
        # With a deploy role (terraform_admin_role_name): the largest documents the stack renders (the role
        # adds a statement to the admin's first part); without it they only lose that statement.
        trust = json.dumps({"Version": "2012-10-17", "Statement": [{
            "Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::123456789012:root"}, "Action": "sts:AssumeRole"}]})
        aws = subprocess.run([os.environ.get("CASEY_PYTHON", "python3"), "-m", "awscli", "--region", "us-east-1", "iam", "create-role",
                              "--role-name", LINT_DEPLOY_ROLE, "--assume-role-policy-document", trust],
                             env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if aws.returncode != 0:
            fail(f"could not create the deploy role in the emulator (CASEY_PYTHON needs awscli):\n{aws.stderr}")
        terraform(tf_dir, env, "init", "-input=false", "-backend=false")
        terraform(tf_dir, env, "plan", "-input=false", "-lock=false", "-out=lint.tfplan",
                  f"-var=terraform_admin_role_name={LINT_DEPLOY_ROLE}", *extra_vars)
        return json.loads(terraform(tf_dir, env, "show", "-json", "lint.tfplan"))
    finally:
        emulator.terminate()
        try:
            emulator.wait(timeout=15)
        except subprocess.TimeoutExpired:
            emulator.kill()


def documents(plan: dict) -> tuple[list[dict], dict[str, int]]:
    """Each policy document a resource sends to IAM, and the managed policies attached per user."""
    docs, per_user = [], {}
    for change in plan.get("resource_changes", []):
        after, unknown = change["change"].get("after") or {}, change["change"].get("after_unknown") or {}
        kind, address = change["type"], change["address"]
        if "delete" in change["change"]["actions"] and not after:
            continue
        if kind == "aws_iam_policy":
            field, quota, limit = "policy", MANAGED_POLICY_QUOTA, MAX_MANAGED_POLICY
        elif kind == "aws_iam_role":
            field, quota, limit = "assume_role_policy", TRUST_POLICY_QUOTA, MAX_TRUST_POLICY
        elif kind in ("aws_iam_role_policy", "aws_iam_user_policy", "aws_iam_group_policy"):
            fail(f"{address}: inline policies are not linted yet; use a managed policy (aws_iam_policy)")
        else:
            if kind == "aws_iam_user_policy_attachment":
                per_user[after["user"]] = per_user.get(after["user"], 0) + 1
            if kind == "aws_iam_role_policy_attachment" and after.get("role") == LINT_DEPLOY_ROLE:
                per_user[f"role {LINT_DEPLOY_ROLE}"] = per_user.get(f"role {LINT_DEPLOY_ROLE}", 0) + 1
            continue
        if unknown.get(field) or not after.get(field):
            fail(f"{address}.{field} is not known at plan time, so neither this check nor the size "
                 "precondition can see it: build its ARNs from names (locals), not from resource attributes")
        text = after[field]
        minified = json.dumps(json.loads(text), separators=(",", ":"))
        name = after.get("name") or address
        if kind == "aws_iam_role":
            name = f"trust policy of {name}"
        docs.append({"address": address, "name": name, "text": text,
                     "size": len(minified), "quota": quota, "limit": limit})
    return docs, per_user


def lint(doc: dict) -> list[tuple[str, str, str]]:
    """Parliament's findings for one document: (issue, detail, severity + title + location)."""
    policy = parliament.analyze_policy_string(doc["text"], doc["name"], include_community_auditors=True)
    out = []
    for finding in policy.findings:
        finding = parliament.enhance_finding(finding)
        if finding.severity == "MUTE":
            continue
        detail = json.dumps(finding.detail, sort_keys=True) if not isinstance(finding.detail, str) else finding.detail
        location = json.dumps(finding.location, sort_keys=True, default=str)
        out.append((finding.issue, detail, f"{finding.severity} {finding.title}; at {location}"))
    return out


def main() -> int:
    show = "--show" in sys.argv[1:]
    started = time.monotonic()
    # What `parliament --include-community-auditors` loads: their findings' severities and titles.
    parliament.override_config(str(Path(parliament.__file__).parent / "community_auditors/config_override.yaml"))
    with tempfile.TemporaryDirectory(prefix="casey-lint-iam-") as tmp:
        plan = render(Path(tmp))
    docs, per_user = documents(plan)
    if not any(d["address"].startswith("aws_iam_policy.") for d in docs):
        fail("the plan has no aws_iam_policy: did the stack's IAM move?")

    problems, used = [], set()
    for doc in sorted(docs, key=lambda d: d["address"]):
        size_note = f"{doc['size']:>5} / {doc['quota']} characters (lint limit {doc['limit']})"
        print(f"{doc['name']:<40} {doc['address']:<55} {size_note}")
        if show:
            print(json.dumps(json.loads(doc["text"]), indent=2))
        if doc["size"] > doc["limit"]:
            problems.append(f"{doc['name']}: {doc['size']} characters without whitespace; IAM's quota is "
                            f"{doc['quota']} and this check keeps headroom below {doc['limit']}: split it "
                            "(another casey-terraform-admin-<part> in terraform/iam.tf) or shorten it")
        for issue, detail, where in lint(doc):
            key = next((k for k in JUSTIFIED if fnmatch.fnmatchcase(doc["name"], k[0]) and k[1] == issue
                        and k[2] in f"{detail} {where}"), None)
            if key:
                used.add(key)
                print(f"  justified {issue} ({(detail or where)[:100]}...): {JUSTIFIED[key]}")
            else:
                problems.append(f"{doc['name']}: parliament {issue}: {detail} ({where})")
    # The same statements with the longest environment suffix: sizes only (parliament saw the statements above).
    with tempfile.TemporaryDirectory(prefix="casey-lint-iam-") as tmp:
        longest, _ = documents(render(Path(tmp), f"-var=environment={LONGEST_ENVIRONMENT}"))
    for doc in sorted(longest, key=lambda d: d["address"]):
        if not doc["address"].startswith("aws_iam_policy."):
            continue
        print(f"{doc['name']:<40} {'(longest environment name)':<55} {doc['size']:>5} / {doc['quota']} characters")
        if doc["size"] > doc["limit"]:
            problems.append(f"{doc['name']} (environment of {len(LONGEST_ENVIRONMENT)} characters): {doc['size']} "
                            f"characters without whitespace, over this check's limit {doc['limit']}: split it or "
                            "shorten the environment names variables.tf accepts")
    for key in JUSTIFIED.keys() - used:
        problems.append(f"JUSTIFIED entry {key} matches no finding any more: remove it from .ci/lint-iam.py")
    for user, count in sorted(per_user.items()):
        print(f"user {user}: {count} managed policies from this stack (IAM quota {USER_MANAGED_POLICIES_QUOTA})")
        if count > MAX_STACK_POLICIES_PER_USER:
            problems.append(f"user {user} gets {count} managed policies from the stack; IAM allows "
                            f"{USER_MANAGED_POLICIES_QUOTA} per user in all, this check at most "
                            f"{MAX_STACK_POLICIES_PER_USER}: merge parts")

    for problem in problems:
        print(f"FAILED: {problem}", file=sys.stderr)
    print(f"lint-iam: {len(docs)} policy documents, {len(problems)} problems, "
          f"{time.monotonic() - started:.0f} s")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
