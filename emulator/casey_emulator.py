"""casey-emulator: moto 5.2.1 server plus the few AWS behaviours casey-deploy needs that moto lacks.

Run:  python3 casey_emulator.py --host 127.0.0.1 --port PORT [--seed-file PATH] [--user NAME ...]
                                [--rollout-seconds 2] [--task-role-user NAME]
                                [--iam-propagation-seconds 3] [--registry 127.0.0.1:PORT]
Self-contained (stdlib + moto[server]) so it can be embedded in the Rust binary and run as `python3 -`.

Gaps filled, each because a real client trips over it:

1. Application Auto Scaling ListTagsForResource/TagResource/UntagResource: moto 5.2.1 answers 500, and the
   terraform provider calls ListTagsForResource on every read of aws_appautoscaling_target. Tags live in a
   store keyed by ResourceARN (RegisterScalableTarget's Tags land there too).
2. ECS CreateService drops availabilityZoneRebalancing, deploymentConfiguration, enableECSManagedTags, ... and
   UpdateService stores the raw task definition string: the next terraform plan shows a diff. Both now store
   what was sent (with real ECS defaults) so DescribeServices round-trips it.
3. ECS services never run tasks in moto. A scheduler (background thread, every 0.1 s) runs desiredCount tasks
   of the primary deployment's task definition, completes deployments after --rollout-seconds, replaces tasks
   on a new deployment (forceNewDeployment, new task definition or network/load balancer settings), scales
   on desiredCount, writes service events, and (with failure injection) fails deployments through the
   circuit breaker with rollback, like ECS. Task ENIs that ask for a public IP get one from 127.0.0.0/8
   (127.R.0.1, 127.R.0.2, ... with R random per emulator, so concurrent emulators do not hand out the same
   address; never 127.0.x.x): tools connect to it and this machine may only talk to loopback. moto's state
   manager, which moves a task towards STOPPED on every DescribeTasks, is switched off for ECS tasks.
   ListTasks honours serviceName, and desiredStatus defaults to RUNNING as in ECS.
4. IAM enforcement is switchable at runtime (moto only reads INITIAL_NO_AUTH_ACTION_COUNT at start-up), and
   users are seeded in-process so seeding does not count as requests. Denials are answered in each protocol's
   error format (moto's EC2-style XML leaves terraform with "api error UnknownError"). Policies are enforced
   per action: moto cannot name the resource of most requests, so it would never honour a statement scoped
   to ARNs or conditions (see element_matches below).
5. EC2 DescribeSecurityGroupRules drops the description of rules that reference a security group: the
   stack's ALB <-> task rules would show a diff on every plan.
6. A JSON control API under /_casey/ (see README.md): health, IAM enforcement, deployment failure
   injection, task listing, task runner.
7. A task runner (off by default, switched on with POST /_casey/runner): each ECS task is a real local
   process of a given executable, or a `docker run --network host` of its image from a local registry, bound
   to the task's public IP. A task is RUNNING only once GET /health answers 200; a process that exits or
   never gets healthy stops the task with ECS's reasons and feeds the circuit breaker. So a rollout of a
   backend that refuses to start fails here as it would on ECS, and the URL the tools print answers.

8. AWS rules moto does not enforce and casey-deploy depends on, each with AWS's error code and message and
   the AWS page it comes from (see the comments at each): IAM's policy size (6,144) and managed policies per
   user/role (10) quotas; IAM propagation (a new attachment or default version counts only after
   --iam-propagation-seconds); a Fargate task needs a route to ECR (public IP + internet gateway, NAT, or
   ECR/S3 (and Logs) endpoints) and an image that exists (moto's ECR store or the --registry behind it, whose
   images ECR reads also report); the task definition's health check decides HEALTHY; the circuit breaker
   counts consecutive failures and resets on a healthy task; the default VPC has its internet gateway; an awslogs
   container's log group must exist (the runner ships the task's output there, see LogShipper). Each
   rule can be switched off only through POST /_casey/rules. moto's RunTask containers get the API's shape.
9. On request: DescribeServices answers with the state of S seconds ago (ECS is eventually consistent), and
   faults (5xx, throttling, latency, dropped connections) per service and action.
10. S3 GetBucketVersioning answers with AWS's <VersioningConfiguration> root (moto's own root name fails the
   Rust SDK's parser), and a bucket policy's conditions are evaluated (moto treats Bool as always met, so a
   TLS-only policy denied every request) against the context of an HTTPS request. Under IAM enforcement an
   S3 request is authorised as the IAM action AWS checks (moto names some that IAM has not), and a query
   string with encoded characters (terraform's `prefix=env%3A%2F`) passes the signature check.
11. STS AssumeRoleWithWebIdentity is unsigned (moto's enforcement crashed on it) and checks the token's issuer,
   audience, expiry and the role's trust policy conditions (moto gave any token the role).

on_task_started() / on_task_stopped() are called for every task that reaches RUNNING and for its stop; they
only log. The runner itself starts at launch (PENDING) and stops with the task, see TaskRun.
"""

from __future__ import annotations

import argparse
import base64
import copy
import ctypes
import hashlib
import http.client
import io
import ipaddress
import json
import math
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.parse
import uuid
from xml.sax.saxutils import escape

# Must be set before moto is imported: AmazonECSTaskExecutionRolePolicy and friends only exist if loaded.
os.environ["MOTO_IAM_LOAD_MANAGED_POLICIES"] = "true"

from botocore import xform_name  # noqa: E402
from werkzeug.exceptions import HTTPException  # noqa: E402
from werkzeug.serving import make_server  # noqa: E402
from werkzeug.wrappers import Request, Response  # noqa: E402

import moto  # noqa: E402
from moto import settings  # noqa: E402
from moto.applicationautoscaling.responses import ApplicationAutoScalingResponse  # noqa: E402
from moto.core import DEFAULT_ACCOUNT_ID  # noqa: E402
from moto.core.exceptions import JsonRESTError  # noqa: E402
from moto.core.responses import ActionResult, BaseResponse  # noqa: E402
from moto.core.serialize import XFormedAttributePicker, get_serializer_class, never_return  # noqa: E402
from moto.core.utils import get_service_model  # noqa: E402
from moto.core.utils import utcnow  # noqa: E402
from moto.ec2 import ec2_backends  # noqa: E402
from moto.ec2.models.elastic_network_interfaces import NetworkInterface  # noqa: E402
from moto.ec2.models.security_groups import SecurityGroupRule  # noqa: E402
from moto.ec2.models.vpcs import VPCBackend  # noqa: E402
from moto.ec2.responses import EC2Response  # noqa: E402
from moto.ecs import models as ecs_models  # noqa: E402
from moto.ecs.exceptions import InvalidParameterException  # noqa: E402
from moto.ecs.models import Task, ecs_backends  # noqa: E402
from moto.ecr.models import ECRBackend as EcrBackend, Image as EcrImage, ecr_backends  # noqa: E402
from moto.ecr.responses import ECRResponse  # noqa: E402
from moto.ecs.responses import DESCRIBE_SERVICES_TAGS, EC2ContainerServiceResponse  # noqa: E402
from moto.iam.access_control import AssumedRoleAccessKey, IAMPolicy, IAMPolicyStatement, IAMUserAccessKey  # noqa: E402
from moto.iam.access_control import IAMRequestBase, PermissionResult  # noqa: E402
from moto.iam.exceptions import LimitExceededException  # noqa: E402
from moto.iam.models import IAMBackend, iam_backends  # noqa: E402
from moto.logs.exceptions import InvalidParameterException as LogsInvalidParameter  # noqa: E402
from moto.logs.exceptions import ResourceNotFoundException as LogsNotFound  # noqa: E402
from moto.logs.models import logs_backends  # noqa: E402
from moto.logs.responses import LogsResponse  # noqa: E402
from moto.moto_api import state_manager  # noqa: E402
from moto.s3.models import FakeBucket  # noqa: E402
from moto.sts.exceptions import STSClientError  # noqa: E402
from moto.sts.responses import TokenResponse as STSResponse  # noqa: E402
from moto.s3.responses import S3Response  # noqa: E402
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app  # noqa: E402

DEFAULT_USERS = ["casey_aniruddh", "casey_localdev_service"]
ROLLOUT_SECONDS = 2.0  # overridden by --rollout-seconds
# One lock for all ECS/EC2 state: request threads and the scheduler thread both mutate it.
LOCK = threading.RLock()
AAS_TAGS: dict[str, dict[str, str]] = {}  # Application Auto Scaling tags by ResourceARN
FAILURES: dict[tuple[str, str], list] = {}  # (cluster, service) -> [stoppedReason, deployments left to fail]
# AWS rules the emulator enforces because casey-deploy depends on them (README.md, "AWS rules"). Each is on
# by default; only POST /_casey/rules switches one off, for a test that needs it off.
RULES = {"iam_policy_size": True, "iam_policies_per_entity": True, "fargate_networking": True,
         "image_exists": True, "container_health_check": True, "awslogs_group_exists": True,
         "ecr_immutable_tags": True}
IAM_PROPAGATION_SECONDS = 3.0  # --iam-propagation-seconds, POST /_casey/iam/propagation
BACKING_REGISTRY: str | None = None  # --registry, POST /_casey/ecr/registry: a loopback registry behind ECR
READ_LAG = {"seconds": 0.0, "since": 0.0}  # POST /_casey/ecs/read-lag
# 127.R.0.1 is the first address handed out. R is random so that emulators running side by side (parallel
# tests) do not give their tasks the same address, where the task processes would fight over ip:port.
_last_public_ip = random.randrange(1, 200) << 16

# Service fields moto drops or mangles; DescribeServices returns them as sent (real ECS create defaults).
SERVICE_DEFAULTS = {
    "availabilityZoneRebalancing": "ENABLED",
    "enableECSManagedTags": False,
    "enableExecuteCommand": False,
    "propagateTags": "NONE",
}
ROUND_TRIP = [*SERVICE_DEFAULTS, "capacityProviderStrategy", "healthCheckGracePeriodSeconds", "loadBalancers",
              "networkConfiguration", "placementConstraints", "placementStrategy", "platformVersion",
              "serviceRegistries"]
# Changing one of these makes ECS start a new deployment: only new tasks can pick the new value up.
DEPLOYING_FIELDS = ["capacityProviderStrategy", "loadBalancers", "networkConfiguration", "platformVersion",
                    "serviceRegistries"]
DEPLOYMENT_CONFIGURATION_DEFAULT = {
    "deploymentCircuitBreaker": {"enable": False, "rollback": False},
    "maximumPercent": 200,
    "minimumHealthyPercent": 100,
}


# --- task runner seam -------------------------------------------------------------------------------------

def on_task_started(info: dict) -> None:
    """Called once when a task reaches RUNNING. `info` is task_info(task).

    Both hooks run under LOCK on the scheduler thread or a request thread: start work, do not wait for it.
    The task runner does not use them: it starts at launch (PENDING) and stops with any task, see TaskRun."""
    images = ", ".join(c["image"] for c in info["containers"])
    runner = info["runner"] and f" pid={info['runner']['pid']} container={info['runner']['container_id']}"
    print(f"casey-emulator: task started {info['task_arn']} ({images}) public_ip={info['public_ip']}{runner or ''}",
          file=sys.stderr, flush=True)


def on_task_stopped(info: dict) -> None:
    """Called once when a task that had reached RUNNING stops."""
    print(f"casey-emulator: task stopped {info['task_arn']}: {info['stopped_reason']}",
          file=sys.stderr, flush=True)


def task_info(task: Task) -> dict:
    eni = next((a for a in task.attachments if a["type"] == "ElasticNetworkInterface"), None)
    details = {d["name"]: d["value"] for d in eni["details"]} if eni else {}
    return {
        "cluster": task.cluster_name,
        "service": task.group.removeprefix("service:"),
        "task_arn": task.task_arn,
        "deployment_id": task.started_by,
        "last_status": task.last_status,
        "desired_status": task.desired_status,
        "stopped_reason": task.stopped_reason,
        "eni_id": details.get("networkInterfaceId"),
        "private_ip": details.get("privateIPv4Address"),
        "public_ip": task.casey_public_ip,
        "containers": [{"name": c["name"], "image": c["image"], "environment": c.get("environment") or [],
                        "port_mappings": c.get("portMappings") or []} for c in task.casey_definitions],
        "runner": task.casey_run and task.casey_run.info(),  # pid / container id, log file, bind address
    }


# --- task runner: ECS tasks as real processes or containers ----------------------------------------------

# The runner config, replaced by POST /_casey/runner. A task keeps the config it was launched with.
RUNNER: dict = {"mode": "none"}
RUNNER_FIELDS = {"mode", "backend_bin", "layers_dir", "registry", "env", "log_dir", "start_timeout"}
STOP_TIMEOUT = 10  # SIGTERM, then SIGKILL after this many seconds (as `docker stop -t 10`)
HEALTH_INTERVAL = 0.2
HEALTH_CHECK_INTERVAL_CAP = 1.0  # a RUNNING task's health check runs every min(interval, this) seconds
HEALTH_CHECK_FAILED = "Task failed container health checks"
ENDPOINT_URL = ""  # this emulator, for the tasks' AWS_ENDPOINT_URL; set in main()
TASK_ROLE: dict | None = None  # seed entry of --task-role-user: its keys stand in for the ECS task role
RUNS: set = set()  # TaskRuns whose process or container may still be alive; guarded by RUNS_LOCK
RUNS_LOCK = threading.Lock()
DOCKER_LOGIN_LOCK = threading.Lock()
DOCKER_CONFIG_DIRS: list[str] = []  # private docker config dirs (registry login), removed at exit
_shutting_down = False
# The only variables of the emulator's own environment a task process inherits. A container sees none of
# the host's, and above all the caller's AWS_PROFILE / AWS_SESSION_TOKEN must not mix with the task's keys.
INHERITED_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR")

try:
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux
    _prctl = None


def _die_with_emulator() -> None:
    """preexec_fn of task processes. PR_SET_PDEATHSIG: the kernel sends SIGTERM to the task when the thread
    that started it dies, so an emulator killed with SIGKILL (a test harness's Child::kill) leaves no process
    behind. That thread is the task's TaskRun thread, which lives until it has reaped the process."""
    if _prctl is not None:
        _prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def configure_runner(body: dict) -> tuple[int, dict]:
    """POST /_casey/runner: validate and install a new runner config (see README.md)."""
    global RUNNER
    unknown = sorted(set(body) - RUNNER_FIELDS)
    mode = body.get("mode")
    env = body.get("env", {})
    timeout = body.get("start_timeout", 60)
    if unknown or mode not in ("none", "process", "docker"):
        return 400, {"error": f"body must be {{\"mode\": \"none\"|\"process\"|\"docker\", ...}} with fields "
                              f"{sorted(RUNNER_FIELDS)}; unknown: {unknown}"}
    if not isinstance(env, dict) or not all(isinstance(k, str) and k and isinstance(v, str) for k, v in env.items()):
        return 400, {"error": "env must be an object of strings"}
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
        return 400, {"error": "start_timeout must be a number of seconds > 0"}
    config = {"mode": mode}
    if mode == "process":
        path = body.get("backend_bin")
        if not isinstance(path, str) or not os.path.isabs(path):
            return 400, {"error": "process mode needs backend_bin, an absolute path"}
        if not os.path.isfile(path) or not os.access(path, os.X_OK):
            return 400, {"error": f"backend_bin {path} is not an executable file"}
        config["backend_bin"] = path
        layers = body.get("layers_dir")
        if layers is not None:
            if not isinstance(layers, str) or not os.path.isabs(layers) or not os.path.isdir(layers):
                return 400, {"error": "layers_dir must be the absolute path of a folder"}
            config["layers_dir"] = layers
    elif mode == "docker":
        registry = body.get("registry")
        if not isinstance(registry, str) or not re.fullmatch(r"[A-Za-z0-9.-]+(:[0-9]+)?", registry):
            return 400, {"error": "docker mode needs registry, a host[:port] such as 127.0.0.1:5000"}
        if not shutil.which("docker"):
            return 400, {"error": "docker mode needs the docker CLI on the emulator's PATH"}
        # Checked here so that a missing engine is one clear error, not a task failure per launch.
        probe = subprocess.run(["docker", "version", "--format", "{{.Server.Version}}"], capture_output=True,
                               text=True, timeout=30)
        if probe.returncode:
            return 400, {"error": f"no Docker engine reachable (DOCKER_HOST={os.environ.get('DOCKER_HOST')}): "
                                  f"{probe.stderr.strip()[-500:]}"}
        config["registry"] = registry
    if mode != "none":
        log_dir = body.get("log_dir") or tempfile.mkdtemp(prefix="casey-tasks-")
        if not isinstance(log_dir, str) or not os.path.isabs(log_dir):
            return 400, {"error": "log_dir must be an absolute path"}
        os.makedirs(log_dir, exist_ok=True)
        config.update(env=dict(env), log_dir=log_dir, start_timeout=timeout)
    with LOCK:
        RUNNER = config
    return 200, runner_view()


def runner_view() -> dict:
    return {**{k: v for k, v in RUNNER.items() if not k.startswith("_")},
            "task_role_user": TASK_ROLE and TASK_ROLE["name"]}


def _run_container(definitions: list[dict]) -> dict:
    """The one container a task runner runs: the first with a port mapping (the backend), else the first."""
    return next((c for c in definitions if c.get("portMappings")), definitions[0])


def _task_env(backend, container: dict, port: int | None, bind_ip: str, config: dict) -> dict:
    env = {e["name"]: e["value"] for e in container.get("environment") or []}
    if port:
        env.update(PORT=str(port), CASEY_BIND_ADDR=f"{bind_ip}:{port}")
    env.update(AWS_ENDPOINT_URL=ENDPOINT_URL, AWS_REGION=backend.region_name)
    if TASK_ROLE:  # real ECS hands the task temporary task-role credentials instead
        env.update(AWS_ACCESS_KEY_ID=TASK_ROLE["access_key_id"], AWS_SECRET_ACCESS_KEY=TASK_ROLE["secret_access_key"])
    env.update(config["env"])  # last: a caller may override anything, e.g. hand the task the admin's keys
    return env


class TaskStartError(Exception):
    """The process or container could not be started; str() is the task's stoppedReason."""


class TaskRun:
    """One task's process or container, started, health-polled, stopped and reaped on its own thread.

    The thread never touches ECS state: it sets `healthy` or `failure` and reconcile() (under LOCK) moves the
    task on. stop() only sets an event, so the scheduler can call it under LOCK."""

    def __init__(self, task: Task, config: dict, container: dict, port: int | None, bind_ip: str, env: dict):
        self.config, self.port, self.bind_ip, self.env = config, port, bind_ip, env
        self.task_id, self.container_name, self.image = task.id, container.get("name"), container.get("image")
        self.container = container  # the container definition: the Docker path applies its filesystem settings
        self.log_file = os.path.join(config["log_dir"], f"{task.id}.log")
        self.pid = self.container_id = self.exit_code = None
        self.healthy = False
        # The container's health check (task definition healthCheck) decides, as on ECS: HEALTHY once it
        # passes, UNHEALTHY after `retries` failures in a row; ECS ignores an image's own HEALTHCHECK
        # (https://docs.aws.amazon.com/AmazonECS/latest/APIReference/API_HealthCheck.html). Without one, GET
        # /health stands in for the ALB's check, as before.
        self.health_check = container.get("healthCheck") if RULES["container_health_check"] else None
        if self.health_check and not (self.health_check.get("command") or [None])[0] in ("CMD", "CMD-SHELL"):
            self.health_check = None  # ECS rejects such a definition at registration; nothing to run
        self.health_output = ""
        self.failure: tuple[str, str, int | None] | None = None  # (stoppedReason, stopCode, exit code)
        self.stopping = threading.Event()
        awslogs = awslogs_target(container, task.region_name, task.id)
        self.shipper = awslogs and LogShipper(self.log_file, task._account_id, *awslogs)
        self.thread = threading.Thread(target=self._main, daemon=True, name=f"task-{task.id}")
        with RUNS_LOCK:
            RUNS.add(self)
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()

    def info(self) -> dict:
        return {"mode": self.config["mode"], "pid": self.pid, "container_id": self.container_id,
                "log_file": self.log_file, "bind_addr": f"{self.bind_ip}:{self.port}" if self.port else self.bind_ip,
                "healthy": self.healthy, "exit_code": self.exit_code}

    def _main(self) -> None:
        try:
            self._log(f"casey-emulator: task {self.task_id}: starting {self._what()} (bind {self.info()['bind_addr']})")
            try:
                self._spawn()
            except TaskStartError as error:
                self.failure = (str(error), "TaskFailedToStart", None)
                return
            started = time.monotonic()  # after the pull: start_timeout bounds the start-up, as a health grace period
            failed_checks, next_check = 0, 0.0
            while not self.stopping.is_set():
                code = self._poll()
                if code is not None:
                    self.exit_code = code
                    detail = f" (exit code {code})" if code >= 0 else ""
                    self.failure = (f"Essential container in task exited{detail}", "EssentialContainerExited",
                                    code if code >= 0 else None)
                    break
                if not self.healthy:
                    if self._probe(time.monotonic() - started):
                        self.healthy = True
                        next_check = time.monotonic() + self._check_interval()
                    elif time.monotonic() - started > self.config["start_timeout"]:
                        self._log(f"casey-emulator: task {self.task_id}: health check failed: {self.health_output}")
                        self.failure = (HEALTH_CHECK_FAILED, "TaskFailedToStart", None)
                        break
                elif self.health_check and time.monotonic() >= next_check:
                    # RUNNING: `retries` failed checks in a row make the container UNHEALTHY and ECS replaces
                    # the task. The interval is capped so that tests need not wait 30 s per check.
                    failed_checks = 0 if self._probe(0) else failed_checks + 1
                    next_check = time.monotonic() + self._check_interval()
                    if failed_checks >= int(self.health_check.get("retries", 3)):
                        self._log(f"casey-emulator: task {self.task_id}: unhealthy: {self.health_output}")
                        self.failure = (HEALTH_CHECK_FAILED, "ServiceSchedulerInitiated", None)
                        break
                self.stopping.wait(HEALTH_INTERVAL if not self.healthy else 0.2)
            self._terminate()
        except Exception as error:  # a docker timeout or an emulator bug must still fail the task, not hang it
            traceback.print_exc()
            self.failure = self.failure or (f"CannotStartContainerError: {type(error).__name__}: {error}",
                                            "TaskFailedToStart", None)
            try:
                self._terminate()
            except Exception:
                traceback.print_exc()
        finally:
            self._log(f"casey-emulator: task {self.task_id}: gone (exit code {self.exit_code})")
            if self.shipper:  # the process or container is gone: its last lines are in the file now
                self.shipper.close()
            with RUNS_LOCK:
                RUNS.discard(self)

    def _check_interval(self) -> float:
        return min(float((self.health_check or {}).get("interval", 30)), HEALTH_CHECK_INTERVAL_CAP)

    def _probe(self, elapsed: float) -> bool:
        """The container health check when the task definition has one, else GET /health answers 200 (which
        stands in for the ALB's check)."""
        if self.health_check:
            command = self.health_check["command"]
            argv = ["/bin/sh", "-c", " ".join(command[1:])] if command[0] == "CMD-SHELL" else list(command[1:])
            try:
                check = self._exec(argv, timeout=float(self.health_check.get("timeout", 5)))
            except subprocess.TimeoutExpired:
                self.health_output = f"timed out after {self.health_check.get('timeout', 5)} s"
                return False
            except OSError as error:
                self.health_output = str(error)
                return False
            self.health_output = f"exit code {check.returncode}: {_last_line(check.stdout or '')}"
            return check.returncode == 0
        if not self.port:  # nothing to probe: RUNNING once it has stayed up as long as a rollout takes
            return elapsed >= ROLLOUT_SECONDS
        connection = http.client.HTTPConnection(self.bind_ip, self.port, timeout=1)  # no proxy, unlike urllib
        try:
            connection.request("GET", "/health")
            return connection.getresponse().status == 200
        except (OSError, http.client.HTTPException):
            return False
        finally:
            connection.close()

    def _log(self, line: str) -> None:
        """An emulator line in the task's log file. The awslogs shipper skips it: only the task's own output
        goes to CloudWatch Logs."""
        if self.shipper:
            self.shipper.own(line)
        with open(self.log_file, "a") as log:
            log.write(line + "\n")


class ProcessRun(TaskRun):
    """The task is a process of backend_bin, in its own session (a Ctrl-C meant for the caller does not reach
    it: the emulator stops it), with the task's environment only."""

    def _what(self) -> str:
        return f"{self._binary()} for image {self.image}"

    def _binary(self) -> str:
        """The image's own program when its layer is one (an image whose manifest's layer digest names a folder
        of layers_dir holding an executable of backend_bin's name: the sandbox's cargo path packs the backend
        so), so each release runs its own build; otherwise backend_bin."""
        backend_bin, layers = self.config["backend_bin"], self.config.get("layers_dir")
        if not layers:
            return backend_bin
        for digest in image_layers(self.image):
            candidate = os.path.join(layers, digest.removeprefix("sha256:"), os.path.basename(backend_bin))
            if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
                return candidate
        return backend_bin

    def _spawn(self) -> None:
        env = {k: os.environ[k] for k in INHERITED_ENV if k in os.environ}
        env.update(self.env)
        try:
            with open(self.log_file, "ab") as log:
                # The path is read now, not at configuration: a rebuilt binary is what the next deployment runs.
                self.proc = subprocess.Popen([self._binary()], env=env, cwd=self.config["log_dir"],
                                             stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                             start_new_session=True, preexec_fn=_die_with_emulator)
        except OSError as error:
            raise TaskStartError(f"CannotStartContainerError: {error}") from None
        self.pid = self.proc.pid

    def _exec(self, argv: list[str], timeout: float) -> subprocess.CompletedProcess:
        """The health check as the container would run it, against this process: the image's binary is
        backend_bin here, so a command naming it (by its basename, or a path that does not exist on this
        machine) runs backend_bin, with the task's environment."""
        backend_bin = self._binary()
        if argv and argv[0] != "/bin/sh" and (
                os.path.basename(argv[0]) == os.path.basename(backend_bin) or not os.path.exists(argv[0])):
            argv = [backend_bin, *argv[1:]]
        env = {k: os.environ[k] for k in INHERITED_ENV if k in os.environ}
        env.update(self.env)
        env["PATH"] = os.path.dirname(backend_bin) + os.pathsep + env.get("PATH", os.defpath)
        return subprocess.run(argv, env=env, cwd=self.config["log_dir"], stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=timeout)

    def _poll(self) -> int | None:
        code = self.proc.poll()
        return None if code is None else (128 - code if code < 0 else code)  # killed by N: 128+N, as docker

    def _terminate(self) -> None:
        if self.proc.poll() is None:
            # The whole process group: a wrapper script that did not `exec` its binary stops too. Only while
            # the process is unreaped, so the group id cannot have been reused.
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.exit_code = self._poll()


class DockerRun(TaskRun):
    """The task is `docker run -d --network host` of its image, pulled from the local registry as ECS pulls
    from ECR (always, so a re-pushed :latest is picked up). Host networking, never a bridge: the task binds
    its loopback public IP like a process would."""

    def _what(self) -> str:
        return f"container of {self._image()}"

    def _image(self) -> str:
        """The task definition's image with its registry host replaced by the local registry."""
        first, slash, rest = self.image.partition("/")
        if slash and ("." in first or ":" in first or first == "localhost"):
            return f"{self.config['registry']}/{rest}"
        return f"{self.config['registry']}/{self.image}"

    def _docker(self, *args: str, **kwargs) -> subprocess.CompletedProcess:
        kwargs.setdefault("capture_output", True)
        return subprocess.run(["docker", "--config", self._login(), *args], text=True, **kwargs)

    def _login(self) -> str:
        """A private docker config dir, logged in to the registry with what the emulated ECR hands out
        (user AWS, password <account>-auth-token): ECS pulls with the execution role, not the user's login."""
        with DOCKER_LOGIN_LOCK:
            if "_docker_config" not in self.config:
                directory = tempfile.mkdtemp(prefix="casey-docker-config-")
                DOCKER_CONFIG_DIRS.append(directory)
                account = re.match(r"(\d{12})\.dkr\.ecr\.", self.image)
                password = f"{account.group(1) if account else DEFAULT_ACCOUNT_ID}-auth-token"
                login = subprocess.run(["docker", "--config", directory, "login", "--username", "AWS",
                                        "--password-stdin", self.config["registry"]], input=password,
                                       capture_output=True, text=True, timeout=60)
                if login.returncode:  # maybe a registry without auth: the pull will tell
                    self._log(f"casey-emulator: docker login failed: {login.stderr.strip()}")
                self.config["_docker_config"] = directory
            return self.config["_docker_config"]

    def _spawn(self) -> None:
        image, name = self._image(), f"casey-task-{self.task_id}"
        pull = self._docker("pull", "--quiet", image, timeout=600)
        if pull.returncode:
            raise TaskStartError(f"CannotPullContainerError: {image}: {_last_line(pull.stderr)}")
        if self.stopping.is_set():
            raise TaskStartError("Task stopped before its container started")
        # `-e NAME` takes the value from the CLI's own environment: no secret on a command line.
        env_args = [arg for key in self.env for arg in ("-e", key)]
        run = self._docker("run", "-d", "--pull", "never", "--network", "host", "--name", name, *env_args,
                           *self._filesystem_args(image), image,
                           env={**os.environ, **self.env}, timeout=120)
        if run.returncode:
            self._docker("rm", "-f", name, timeout=60)  # a container that was created but did not start
            raise TaskStartError(f"CannotStartContainerError: {_last_line(run.stderr)}")
        self.container_id = run.stdout.strip()
        with open(self.log_file, "ab") as log:
            self.logs = subprocess.Popen(["docker", "--config", self._login(), "logs", "-f", self.container_id],
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        self.waiter = subprocess.Popen(["docker", "--config", self._login(), "wait", self.container_id],
                                       stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                       stderr=subprocess.DEVNULL, text=True)

    def _filesystem_args(self, image: str) -> list[str]:
        """readonlyRootFilesystem and mountPoints as the ECS agent applies them. A mount of a task volume
        without host/EFS settings is Fargate task storage: ECS fills it with the image's directory, permissions
        included, only when the image declares that path a VOLUME; otherwise it is an empty directory owned by
        root, mode 0755 (https://docs.aws.amazon.com/AmazonECS/latest/developerguide/bind-mounts.html)."""
        args = ["--read-only"] if self.container.get("readonlyRootFilesystem") else []
        inspect = self._docker("image", "inspect", "--format", "{{json .Config.Volumes}}", image, timeout=60)
        volumes = json.loads(inspect.stdout or "null") or {}
        for mount in self.container.get("mountPoints") or []:
            path = mount["containerPath"]
            spec = (f"type=volume,destination={path}" if path in volumes  # docker copies the image's directory
                    else f"type=tmpfs,destination={path},tmpfs-mode=0755")  # root's, empty
            args += ["--mount", spec + (",readonly" if mount.get("readOnly") else "")]
        return args

    def _exec(self, argv: list[str], timeout: float) -> subprocess.CompletedProcess:
        """The health check inside the container, as the ECS agent runs it (docker exec)."""
        return self._docker("exec", self.container_id, *argv, timeout=timeout)

    def _poll(self) -> int | None:
        if not hasattr(self, "waited"):
            if self.waiter.poll() is None:
                return None
            out = self.waiter.stdout.read().strip()  # can be read once: keep it
            self.waited = int(out) if re.fullmatch(r"-?[0-9]+", out) else -1  # -1: `docker wait` itself failed
        return self.waited

    def _terminate(self) -> None:
        if self.container_id is None:
            return
        self._docker("stop", "-t", str(STOP_TIMEOUT), self.container_id, timeout=STOP_TIMEOUT + 30)
        self._docker("rm", "-f", "-v", self.container_id, timeout=60)  # reaped: no container, no volume left
        for helper in (getattr(self, "waiter", None), getattr(self, "logs", None)):  # both end with the container
            try:
                helper and helper.wait(10)
            except subprocess.TimeoutExpired:
                helper.kill()
        if getattr(self, "waiter", None):
            self.exit_code = self._poll()


RUN_CLASSES = {"process": ProcessRun, "docker": DockerRun}


# --- the awslogs log driver: a task's output in CloudWatch Logs ------------------------------------------

# "If you specify a prefix with this option, then the log stream takes the following format:
# prefix-name/container-name/ecs-task-id" (awslogs-stream-prefix, required on Fargate):
# https://docs.aws.amazon.com/AmazonECS/latest/developerguide/using_awslogs.html, and
# https://docs.aws.amazon.com/prescriptive-guidance/latest/implementing-logging-monitoring-cloudwatch/ec2-fargate-logs.html
# ("<awslogs-stream-prefix>/<container_name>/<task_id>").
LOGS_LOCK = threading.RLock()  # moto's logs backend is not thread-safe: its API requests and the shippers share it
SHIP_INTERVAL = 0.2


def awslogs_options(container: dict) -> dict | None:
    config = container.get("logConfiguration") or {}
    return (config.get("options") or {}) if config.get("logDriver") == "awslogs" else None


def awslogs_target(container: dict, region: str, task_id: str) -> tuple[str, str, str] | None:
    """(region, group, stream) where the awslogs driver ships this container's output, else None."""
    options = awslogs_options(container)
    if options is None or not options.get("awslogs-group"):
        return None
    prefix = options.get("awslogs-stream-prefix")
    # Without a prefix (EC2 only) the stream is named after the Docker container ID; the task ID stands in.
    stream = f"{prefix}/{container.get('name')}/{task_id}" if prefix else task_id
    return options.get("awslogs-region") or region, options["awslogs-group"], stream


class LogShipper:
    """Tails a task's log file and puts each complete line, as the awslogs driver does, into moto's CloudWatch
    Logs backend (in-process), every SHIP_INTERVAL s; close() ships what is left. Lines the emulator wrote
    (TaskRun._log, announced through own()) are skipped. Timestamps: when the line was read, in ms."""

    def __init__(self, path: str, account: str, region: str, group: str, stream: str):
        self.path, self.account, self.region, self.group, self.stream = path, account, region, group, stream
        self.offset, self.partial, self.last_ms = 0, b"", 0
        self.own_lines: dict[bytes, int] = {}
        self.own_lock = threading.Lock()
        self.closing = threading.Event()
        self.thread = threading.Thread(target=self._main, daemon=True, name=f"awslogs-{stream}")
        self.thread.start()

    def own(self, line: str) -> None:
        with self.own_lock:
            key = line.encode()
            self.own_lines[key] = self.own_lines.get(key, 0) + 1

    def close(self) -> None:
        self.closing.set()
        self.thread.join(30)

    def _main(self) -> None:
        while not self.closing.wait(SHIP_INTERVAL):
            self._ship(final=False)
        self._ship(final=True)

    def _ship(self, final: bool) -> None:
        try:
            with open(self.path, "rb") as log:
                log.seek(self.offset)
                data = log.read()
        except FileNotFoundError:
            return
        self.offset += len(data)
        lines = (self.partial + data).split(b"\n")
        self.partial = lines.pop()  # an unfinished line waits for its newline, or for close()
        if final and self.partial:
            lines.append(self.partial)
            self.partial = b""
        events = []
        for line in lines:
            line = line.rstrip(b"\r")
            with self.own_lock:
                if self.own_lines.get(line):
                    self.own_lines[line] -= 1
                    continue
            if line.strip():  # the driver sends no empty messages
                self.last_ms = max(self.last_ms, int(time.time() * 1000))
                events.append({"timestamp": self.last_ms, "message": line.decode("utf-8", "replace")})
        if not events:
            return
        try:
            with LOGS_LOCK:
                backend = logs_backends[self.account][self.region]
                backend.ensure_log_stream(self.group, self.stream)
                for start in range(0, len(events), 10_000):  # PutLogEvents takes at most 10,000 events
                    backend.put_log_events(self.group, self.stream, events[start:start + 10_000])
        except LogsNotFound:  # the group was deleted (or never existed, with the rule off): the lines are lost
            pass
        except Exception:
            traceback.print_exc()


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


def stop_all_runs() -> None:
    """At emulator exit: stop every task process/container it started (in parallel) and wait for them."""
    global _shutting_down
    with LOCK:
        _shutting_down = True  # no new runs from here on
    with RUNS_LOCK:
        runs = list(RUNS)
    for run in runs:
        run.stop()
    for run in runs:
        run.thread.join(STOP_TIMEOUT + 40)
    for directory in DOCKER_CONFIG_DIRS:
        shutil.rmtree(directory, ignore_errors=True)


# FilterLogEvents' logStreamNamePrefix: "Filters the results to include only events from log streams that have
# names starting with this prefix. If you specify a value for both logStreamNamePrefix and logStreamNames, the
# action returns an InvalidParameterException error."
# (https://docs.aws.amazon.com/AmazonCloudWatchLogs/latest/APIReference/API_FilterLogEvents.html). moto ignores
# the prefix and returns every stream's events (`casey-deploy logs --task` would show other tasks' lines).
_moto_filter_log_events = LogsResponse.filter_log_events


def _filter_log_events(self) -> str:
    prefix = self._get_param("logStreamNamePrefix")
    if not prefix:
        return _moto_filter_log_events(self)
    if self._get_param("logStreamNames"):
        raise LogsInvalidParameter("Cannot specify both logStreamNamePrefix and logStreamNames")
    group = self.logs_backend.groups.get(self._get_param("logGroupName"))
    names = [name for name in (group.streams if group else {}) if name.startswith(prefix)]
    if not names:  # moto reads an empty list as "every stream"
        if group is None:
            return _moto_filter_log_events(self)  # its ResourceNotFoundException
        return json.dumps({"events": [], "searchedLogStreams": []})
    self._get_param = _with_param(self._get_param, "logStreamNames", names)
    return _moto_filter_log_events(self)


def _with_param(get_param, key, value):
    return lambda name, *default: value if name == key else get_param(name, *default)


LogsResponse.filter_log_events = _filter_log_events


# --- S3 GetBucketVersioning in AWS's shape -------------------------------------------------------------

# AWS answers GetBucketVersioning with a <VersioningConfiguration> root, empty for a bucket whose versioning
# was never set (https://docs.aws.amazon.com/AmazonS3/latest/API/API_GetBucketVersioning.html, "Response
# Syntax"). moto 5.2.1 names the root <GetBucketVersioningResponse>, which botocore ignores but the Rust SDK
# rejects (it checks the root element), so `state bootstrap` could not read a bucket's versioning.
def _get_bucket_versioning(self):
    status = self.backend.get_bucket_versioning(self.bucket_name)
    inner = f"<Status>{escape(status)}</Status>" if status else ""
    body = ('<?xml version="1.0" encoding="UTF-8"?>\n'
            f'<VersioningConfiguration xmlns="http://s3.amazonaws.com/doc/2006-03-01/">{inner}</VersioningConfiguration>')
    return 200, {"Content-Type": "application/xml"}, body


S3Response.get_bucket_versioning = _get_bucket_versioning


# --- S3 bucket policy conditions ------------------------------------------------------------------------

# moto evaluates a bucket policy on object reads and writes, but treats every condition operator except
# StringEquals as met, so the standard TLS-only statement (Deny s3:* when Bool aws:SecureTransport is
# "false", https://docs.aws.amazon.com/AmazonS3/latest/userguide/security-best-practices.html) denies every
# request. Conditions are evaluated here as IAM does
# (https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_elements_condition_operators.html):
# a key missing from the request context makes the condition false. The context is that of the HTTPS
# request every client makes to AWS (the emulator stands in for AWS's endpoints and is reached over
# loopback HTTP only because it has no certificate). An operator not implemented here keeps a Deny in force
# and an Allow out of it, so nothing is allowed that AWS might refuse.
S3_REQUEST_CONTEXT = {"aws:SecureTransport": "true"}
_S3_OPERATORS = {
    "Bool": lambda expected, actual: str(expected).lower() == actual.lower(),
    "StringEquals": lambda expected, actual: expected == actual,
    "StringNotEquals": lambda expected, actual: expected != actual,
}


def _s3_conditions_hold(statement: dict) -> bool:
    for operator, pairs in (statement.get("Condition") or {}).items():
        test = _S3_OPERATORS.get(operator)
        if test is None:
            return statement.get("Effect") == "Deny"
        for key, expected in pairs.items():
            actual = S3_REQUEST_CONTEXT.get(key)
            if actual is None:
                return False
            values = expected if isinstance(expected, list) else [expected]
            combine = all if operator == "StringNotEquals" else any
            if not combine(test(v, actual) for v in values):
                return False
    return True


def bucket_get_permission(self, action: str, resource: str):
    if self.policy is None:
        return PermissionResult.NEUTRAL
    statements = json.loads(self.policy.decode()).get("Statement", [])
    statements = [statements] if isinstance(statements, dict) else statements
    holding = [{k: v for k, v in s.items() if k != "Condition"} for s in statements if _s3_conditions_hold(s)]
    return IAMPolicy(json.dumps({"Version": "2012-10-17", "Statement": holding})).is_action_permitted(action, resource)


FakeBucket.get_permission = bucket_get_permission


# --- S3 requests authorised as IAM's actions ------------------------------------------------------------

# Under IAM enforcement moto authorises an S3 request as the action its ACTION_MAP names, and some of those
# are not IAM actions at all, so a policy naming IAM's actions is refused (or a missing one let through).
# Each API page's "Permissions" section names the action IAM checks: HeadBucket needs s3:ListBucket
# (https://docs.aws.amazon.com/AmazonS3/latest/API/API_HeadBucket.html), Get/PutBucketEncryption
# s3:Get/PutEncryptionConfiguration (API_GetBucketEncryption.html, API_PutBucketEncryption.html; moto
# checked ListBucket and CreateBucket), Get/Put/DeletePublicAccessBlock s3:GetBucketPublicAccessBlock and
# s3:PutBucketPublicAccessBlock (API_GetPublicAccessBlock.html, API_PutPublicAccessBlock.html,
# API_DeletePublicAccessBlock.html).
_S3_IAM_ACTIONS = {
    ("BUCKET", "GET", "encryption"): "GetEncryptionConfiguration",
    ("BUCKET", "PUT", "encryption"): "PutEncryptionConfiguration",
    ("BUCKET", "DELETE", "encryption"): "PutEncryptionConfiguration",
    ("BUCKET", "GET", "publicAccessBlock"): "GetBucketPublicAccessBlock",
    ("BUCKET", "PUT", "publicAccessBlock"): "PutBucketPublicAccessBlock",
    ("BUCKET", "DELETE", "publicAccessBlock"): "PutBucketPublicAccessBlock",
}
_moto_s3_set_action = S3Response._set_action


def s3_set_action(self, action_resource_type: str, method: str, querystring: dict) -> None:
    _moto_s3_set_action(self, action_resource_type, method, querystring)
    if (action_resource_type, method) == ("BUCKET", "HEAD"):
        self.data["Action"] = "ListBucket"
    for (kind, verb, subresource), action in _S3_IAM_ACTIONS.items():
        if (kind, verb) == (action_resource_type, method) and subresource in querystring:
            self.data["Action"] = action


S3Response._set_action = s3_set_action


# --- SigV4 over the query string as the client sent it ---------------------------------------------------

# SigV4's canonical query string URI-encodes each parameter name and value
# (https://docs.aws.amazon.com/IAM/latest/UserGuide/create-signed-request.html, "canonical query string").
# moto checks a signature against the URL its server hands it, with %3A and %2F already decoded, so a
# request such as terraform's S3 backend listing `prefix=env%3A%2F` fails with SignatureDoesNotMatch under
# IAM enforcement. Each name and value is encoded again, as the client encoded it, before the check.
_moto_create_aws_request = IAMRequestBase._create_aws_request


def create_aws_request(self):
    path, _, query = self._path.partition("?")
    if query:
        pairs = []
        for pair in query.split("&"):
            name, eq, value = pair.partition("=")
            encode = lambda text: urllib.parse.quote(urllib.parse.unquote(text), safe="-_.~")  # noqa: E731
            pairs.append(f"{encode(name)}{eq}{encode(value)}")
        self._path = f"{path}?{'&'.join(pairs)}"
    return _moto_create_aws_request(self)


IAMRequestBase._create_aws_request = create_aws_request


# --- STS AssumeRoleWithWebIdentity: the token against the provider and the trust policy ----------------

# moto hands out the role's credentials for any token. AWS
# (https://docs.aws.amazon.com/STS/latest/APIReference/API_AssumeRoleWithWebIdentity.html, Errors;
# https://docs.aws.amazon.com/IAM/latest/UserGuide/id_roles_providers_create_oidc.html) needs an IAM OIDC
# provider for the token's issuer that lists its audience, an unexpired token, and a trust policy statement
# that allows sts:AssumeRoleWithWebIdentity for that provider (Principal Federated) with its conditions on
# the token's claims (`<issuer host>:aud`, `:sub`) met. All of that is checked here. The token's signature is
# not: no identity provider runs here to hold the keys.
_moto_assume_role_with_web_identity = STSResponse.assume_role_with_web_identity


def _jwt_claims(token: str) -> dict:
    parts = (token or "").split(".")
    try:
        payload = parts[1] + "=" * (-len(parts[1]) % 4)
        claims = json.loads(base64.urlsafe_b64decode(payload))
    except (IndexError, ValueError):
        claims = None
    if len(parts) != 3 or not isinstance(claims, dict):
        raise STSClientError("InvalidIdentityToken", "The ID Token provided is not a valid JWT. (You may see this "
                                                     "error if you sent an Access Token)")
    return claims


def _trust_condition_met(condition: dict, claims: dict, host: str) -> bool:
    for operator, pairs in condition.items():
        if operator not in ("StringEquals", "StringLike"):
            return False  # not evaluated here: the Allow stays out
        for key, expected in pairs.items():
            claim = key.removeprefix(f"{host}:") if key.startswith(f"{host}:") else None
            actual = claims.get(claim) if claim else None
            values = expected if isinstance(expected, list) else [expected]
            actuals = actual if isinstance(actual, list) else [actual]
            match = (lambda v, a: v == a) if operator == "StringEquals" else (
                lambda v, a: re.fullmatch(re.escape(v).replace(r"\*", ".*").replace(r"\?", "."), a) is not None)
            if not any(isinstance(a, str) and match(v, a) for v in values for a in actuals):
                return False
    return True


def assume_role_with_web_identity(self):
    claims = _jwt_claims(self._get_param("WebIdentityToken"))
    role_arn = self._get_param("RoleArn") or ""
    account = role_arn.split(":")[4] if role_arn.count(":") >= 5 else DEFAULT_ACCOUNT_ID
    iam = iam_backends[account]["global"]
    issuer = str(claims.get("iss", ""))
    host = issuer.removeprefix("https://").rstrip("/")
    provider_arn = f"arn:aws:iam::{account}:oidc-provider/{host}"
    provider = iam.open_id_providers.get(provider_arn)
    if provider is None:
        raise STSClientError("InvalidIdentityToken", f"No OpenIDConnect provider found in your account for {issuer}")
    audiences = claims.get("aud") if isinstance(claims.get("aud"), list) else [claims.get("aud")]
    if not any(a in provider.client_id_list for a in audiences):
        raise STSClientError("InvalidIdentityToken", "Incorrect token audience")
    if not isinstance(claims.get("exp"), (int, float)) or claims["exp"] < time.time():
        raise STSClientError("ExpiredTokenException", "Token expired: current date/time must be before the "
                                                      "expiration date/time")
    try:
        role = iam.get_role_by_arn(role_arn)
    except Exception:  # moto's own error names the role
        role = None
    denied = STSClientError("AccessDenied", "Not authorized to perform sts:AssumeRoleWithWebIdentity")
    if role is None:
        raise denied
    statements = json.loads(role.assume_role_policy_document).get("Statement", [])
    statements = [statements] if isinstance(statements, dict) else statements

    def allows(statement: dict) -> bool:
        actions = statement.get("Action", [])
        actions = [actions] if isinstance(actions, str) else actions
        federated = (statement.get("Principal") or {}).get("Federated", [])
        federated = [federated] if isinstance(federated, str) else federated
        return (statement.get("Effect") == "Allow" and "sts:AssumeRoleWithWebIdentity" in actions
                and provider_arn in federated
                and _trust_condition_met(statement.get("Condition") or {}, claims, host))

    if not any(allows(s) for s in statements):
        raise denied
    return _moto_assume_role_with_web_identity(self)


STSResponse.assume_role_with_web_identity = assume_role_with_web_identity


# --- what a Fargate task needs before it can start -------------------------------------------------------

# A Fargate task (platform 1.4.0) pulls its registry auth and image through its own ENI. Without a public IP
# its subnet's route table (the explicit association, else the VPC's main table) needs 0.0.0.0/0 to a NAT
# gateway, or the VPC needs interface endpoints for ecr.api and ecr.dkr plus an S3 gateway endpoint (image
# layers live in S3) on that route table; with a public IP the default route must go to an internet gateway.
# Otherwise the task stops before it runs, with stopCode TaskFailedToStart and this stoppedReason:
# https://docs.aws.amazon.com/AmazonECS/latest/developerguide/resource-initialization-error.html,
# https://repost.aws/knowledge-center/ecs-fargate-pull-container-error,
# https://repost.aws/knowledge-center/ecs-fargate-tasks-pending-state (the endpoints per platform version).
# The address is from TEST-NET-3 (RFC 5737): AWS names the ECR endpoint's address; this one leads nowhere.
REGISTRY_AUTH_TIMEOUT = (
    "ResourceInitializationError: unable to pull secrets or registry auth: execution resource retrieval failed: "
    "unable to retrieve ecr registry auth: service call has been retried 3 time(s): RequestError: send request "
    "failed caused by: Post \"https://api.ecr.{region}.amazonaws.com/\": dial tcp 203.0.113.10:443: i/o timeout. "
    "Please check your task network configuration.")
# With the ECR endpoints but no route to CloudWatch Logs, the awslogs driver cannot create its stream.
LOGS_TIMEOUT = (
    "ResourceInitializationError: failed to validate logger args: create stream has been retried 1 times: "
    "failed to create Cloudwatch log stream: RequestError: send request failed caused by: Post "
    "\"https://logs.{region}.amazonaws.com/\": dial tcp 203.0.113.10:443: i/o timeout : exit status 1")


# A container whose awslogs group does not exist (and without awslogs-create-group "true"): the task stops
# before it runs. "The specified log group does not exist" is CloudWatch Logs' ResourceNotFoundException; ECS
# wraps it as below on Fargate (https://docs.aws.amazon.com/AmazonECS/latest/developerguide/
# resource-initialization-error.html, "failed to validate logger args"), and as CannotStartContainerError
# ("failed to initialize logging driver") on EC2. awslogs-create-group "true" is not emulated: on ECS it creates
# the group only when the task execution role allows logs:CreateLogGroup
# (https://docs.aws.amazon.com/AmazonECS/latest/developerguide/using_awslogs.html), which the emulator does not
# evaluate, so creating it here would be more forgiving than AWS. The project's stack creates its group in
# Terraform.
LOG_GROUP_MISSING = (
    "ResourceInitializationError: failed to validate logger args: create stream has been retried 1 times: "
    "failed to create Cloudwatch log stream: ResourceNotFoundException: The specified log group does not exist. "
    "status code: 400, request id: {request_id} : exit status 1")
LOG_GROUP_MISSING_EC2 = (
    "CannotStartContainerError: Error response from daemon: failed to initialize logging driver: failed to create "
    "Cloudwatch log stream: ResourceNotFoundException: The specified log group does not exist. status code: 400, "
    "request id: {request_id}")


def log_group_failure(account: str, region: str, task_def, fargate: bool) -> str | None:
    """The stoppedReason of a task with an awslogs container whose log group does not exist, else None."""
    for container in task_def.container_definitions:
        options = awslogs_options(container)
        if options is None or not options.get("awslogs-group"):
            continue
        group_region, group = options.get("awslogs-region") or region, options["awslogs-group"]
        with LOGS_LOCK:
            backend = logs_backends[account][group_region]
            if group in backend.groups:
                continue
        if RULES["awslogs_group_exists"]:
            return (LOG_GROUP_MISSING if fargate else LOG_GROUP_MISSING_EC2).format(request_id=uuid.uuid4())
    return None


def _route_table(ec2, subnet):
    tables = [t for t in ec2.route_tables.values() if t.vpc_id == subnet.vpc_id]
    explicit = next((t for t in tables if subnet.id in t._associations.values()), None)
    return explicit or next((t for t in tables if t.main_association_id), None)


def _default_route_target(table) -> str:
    """'igw', 'nat' or '' for the table's 0.0.0.0/0 route."""
    for route in table.routes if table else []:
        if route.destination_cidr_block == "0.0.0.0/0":
            if route.nat_gateway is not None:
                return "nat"
            if route.gateway is not None and route.gateway.id.startswith("igw-"):
                return "igw"
    return ""


def network_failure(backend, task, task_def, public_ip: bool) -> str | None:
    """The stoppedReason of a Fargate task that cannot reach ECR (or CloudWatch Logs), else None."""
    if not RULES["fargate_networking"] or not task.attachments:
        return None
    details = {d["name"]: d.get("value") for d in task.attachments[0]["details"]}
    ec2 = ec2_backends[backend.account_id][backend.region_name]
    subnet = ec2.get_subnet(details["subnetId"])
    table = _route_table(ec2, subnet)
    target, region = _default_route_target(table), backend.region_name
    if public_ip:
        return None if target == "igw" else REGISTRY_AUTH_TIMEOUT.format(region=region)
    if target == "nat":
        return None
    endpoints = [e for e in ec2.vpc_end_points.values() if e.vpc_id == subnet.vpc_id and e.state == "available"]

    def interface(name: str) -> bool:
        return any(e.service_name == f"com.amazonaws.{region}.{name}" and e.vpc_endpoint_type == "Interface"
                   and e.private_dns_enabled for e in endpoints)

    s3 = any(e.service_name == f"com.amazonaws.{region}.s3" and (e.vpc_endpoint_type or "Gateway") == "Gateway"
             and table and table.id in (e.route_table_ids or []) for e in endpoints)
    if not (interface("ecr.api") and interface("ecr.dkr") and s3):
        return REGISTRY_AUTH_TIMEOUT.format(region=region)
    uses_awslogs = any((c.get("logConfiguration") or {}).get("logDriver") == "awslogs"
                       for c in task_def.container_definitions)
    if uses_awslogs and not interface("logs"):
        return LOGS_TIMEOUT.format(region=region)
    return None


# An image that is not in its registry: https://docs.aws.amazon.com/AmazonECS/latest/developerguide/
# task_cannot_pull_image.html ("CannotPullContainer task errors", "Image not found").
IMAGE_NOT_FOUND = ("CannotPullContainerError: pull image manifest has been retried 5 time(s): failed to resolve "
                   "ref {ref}: {ref}: not found")
# A registry this machine cannot reach (only loopback is reachable here; TEST-NET-3 address as above).
IMAGE_UNREACHABLE = ("CannotPullContainerError: pull image manifest has been retried 5 time(s): failed to resolve "
                     "ref {ref}: failed to do request: Head \"https://{host}/v2/{repo}/manifests/{reference}\": "
                     "dial tcp 203.0.113.10:443: i/o timeout")
ECR_HOST = re.compile(r"(\d{12})\.dkr\.ecr\.([a-z0-9-]+)\.amazonaws\.com(\.cn)?")
MANIFEST_TYPES = ", ".join([
    "application/vnd.docker.distribution.manifest.v2+json", "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json", "application/vnd.oci.image.index.v1+json"])


def split_image(image: str) -> tuple[str, str, str]:
    """(registry host, repository, tag or digest), with Docker's defaults (docker.io, library/, :latest)."""
    first, slash, rest = image.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        host, path = first, rest
    else:
        host, path = "docker.io", image if "/" in image else f"library/{image}"
    if "@" in path:
        repo, reference = path.split("@", 1)
    elif ":" in path:
        repo, reference = path.rsplit(":", 1)
    else:
        repo, reference = path, "latest"
    return host, repo, reference


def backing_registry() -> str | None:
    """The registry behind the emulated ECR: --registry / POST /_casey/ecr/registry, else the docker runner's."""
    return BACKING_REGISTRY or (RUNNER.get("registry") if RUNNER.get("mode") == "docker" else None)


def registry_get(registry: str, path: str, account: str, method: str = "GET"):
    """(status, headers, body) of a request to the backing registry, logged in as ECR's fixed token allows;
    (None, {}, b"") when it does not answer."""
    host, _, port = registry.rpartition(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=5)
    token = base64.b64encode(f"AWS:{account}-auth-token".encode()).decode()
    try:
        connection.request(method, path, headers={"Authorization": f"Basic {token}", "Accept": MANIFEST_TYPES})
        response = connection.getresponse()
        return response.status, response.headers, response.read()
    except (OSError, http.client.HTTPException):
        return None, {}, b""
    finally:
        connection.close()


def _in_ecr(account: str, region: str, repo: str, reference: str) -> bool:
    repository = ecr_backends[account][region].repositories.get(repo)
    if repository is None:
        return False
    if reference.startswith("sha256:"):
        return any(i.get_image_digest() == reference for i in repository.images)
    return any(reference in i.image_tags for i in repository.images)


def image_layers(image: str) -> list[str]:
    """The layer digests of an image in moto's ECR store, from its manifest; [] when it is not there."""
    host, repo, reference = split_image(image)
    ecr = ECR_HOST.fullmatch(host)
    if not ecr:
        return []
    repository = ecr_backends[ecr.group(1)][ecr.group(2)].repositories.get(repo)
    for candidate in repository.images if repository else []:
        if candidate.get_image_digest() == reference or reference in candidate.image_tags:
            try:
                return [layer.get("digest", "") for layer in json.loads(candidate.image_manifest).get("layers", [])]
            except (ValueError, AttributeError):
                return []
    return []


def image_failure(image: str, account: str) -> str | None:
    """The stoppedReason of a task whose image is not present (moto's ECR store or the backing registry)."""
    if not RULES["image_exists"] or not image:
        return None
    host, repo, reference = split_image(image)
    ecr, registry = ECR_HOST.fullmatch(host), backing_registry()
    if ecr and _in_ecr(ecr.group(1), ecr.group(2), repo, reference):
        return None
    if ecr or host == registry:
        owner = ecr.group(1) if ecr else account
        if registry and registry_get(registry, f"/v2/{repo}/manifests/{reference}", owner, "HEAD")[0] == 200:
            return None
        return IMAGE_NOT_FOUND.format(ref=image if ecr or host == registry else f"{host}/{repo}")
    ref = f"{host}/{repo}{'@' if reference.startswith('sha256:') else ':'}{reference}"
    return IMAGE_UNREACHABLE.format(ref=ref, host=host, repo=repo, reference=reference)


def registry_images(registry: str, account: str, name: str, repository) -> list:
    """The backing registry's images of repository `name` that moto's ECR store does not hold, as ECR images
    (imageDigest = the registry's Docker-Content-Digest), so ECR reads and the launch check agree."""
    status, _, body = registry_get(registry, f"/v2/{name}/tags/list", account)
    if status != 200:
        return []
    known_tags = {t for i in repository.images for t in i.image_tags}
    known_digests = {i.get_image_digest() for i in repository.images}
    images: dict[str, EcrImage] = {}
    for tag in sorted(json.loads(body or b"{}").get("tags") or []):
        if tag in known_tags:
            continue  # moto's store answers for this tag
        status, headers, manifest = registry_get(registry, f"/v2/{name}/manifests/{tag}", account)
        digest = headers.get("Docker-Content-Digest") if status == 200 else None
        if not digest or digest in known_digests:
            continue
        if digest in images:
            images[digest].update_tag(tag)
        else:
            media_type = (headers.get("Content-Type") or "").split(";")[0] or None
            images[digest] = EcrImage(account, tag, manifest.decode(), name, media_type, digest)
    return list(images.values())


def _with_registry_images(method):
    """ECR ListImages / DescribeImages / BatchGetImage also see the backing registry's images."""
    def wrapper(self):
        registry = backing_registry()
        repository = self.ecr_backend.repositories.get(self._get_param("repositoryName") or "")
        if not registry or repository is None:
            return method(self)
        extra = registry_images(registry, self.ecr_backend.account_id, repository.name, repository)
        repository.images.extend(extra)  # only for this call: under LOCK, no other ECR call sees them
        try:
            return method(self)
        finally:
            for image in extra:
                repository.images.remove(image)
    return wrapper


# --- ECR image digests ------------------------------------------------------------------------------------
# An image's digest is "the sha256 digest of the image manifest"
# (https://docs.aws.amazon.com/AmazonECR/latest/APIReference/API_ImageIdentifier.html): of the manifest's bytes,
# as `docker push` and the OCI distribution spec compute it. moto hashes the layer digests instead, so a
# client that checks what PutImage returns against its own sha256 of the manifest (or pins a service to
# <repo>@<digest>) would disagree with ECR.


def _manifest_digest(self) -> None:
    self._image_digest = "sha256:" + hashlib.sha256(self.image_manifest.encode("utf-8")).hexdigest()


EcrImage._create_digest = _manifest_digest


# --- ECR immutable tags -----------------------------------------------------------------------------------
# "After tag immutability is turned on, the ImageTagAlreadyExistsException error is returned if you push an
# image with a tag that is already in the repository" (https://docs.aws.amazon.com/AmazonECR/latest/userguide/
# image-tag-mutability.html); the same manifest under the same tag is ImageAlreadyExistsException. moto
# raises the latter for both, naming the existing image's digest, so a client cannot tell a re-push of the
# same release from an attempt to overwrite one. casey-deploy deploys releases by digest and relies on a
# tag never naming a second image.

class ImageTagAlreadyExistsException(JsonRESTError):
    code = 400

    def __init__(self, tag: str, repository: str):
        super().__init__("ImageTagAlreadyExistsException",
                         f"The image tag '{tag}' already exists in the '{repository}' repository and cannot be "
                         "overwritten because the repository is immutable.")


_moto_put_image = EcrBackend.put_image


def put_image(self, repository_name, image_manifest, image_tag, image_manifest_mediatype=None, digest=None):
    repository = self.repositories.get(repository_name)
    if RULES["ecr_immutable_tags"] and repository is not None and image_tag and repository.is_tag_immutable():
        new = "sha256:" + hashlib.sha256(image_manifest.encode("utf-8")).hexdigest()
        for image in repository.images:
            if image_tag in image.image_tags and image.get_image_digest() != new:
                raise ImageTagAlreadyExistsException(image_tag, repository_name)
    return _moto_put_image(self, repository_name, image_manifest, image_tag, image_manifest_mediatype, digest)


EcrBackend.put_image = put_image


# --- ECS scheduler ----------------------------------------------------------------------------------------

class Deployment:
    """An ECS service deployment; attribute names follow the ECS Deployment shape (moto serializes them)."""

    def __init__(self, service, fail_reason: str | None, rollout_state_reason: str | None = None):
        self.id = f"ecs-svc/{uuid.uuid4().int % 10**19:019d}"
        self.status = "PRIMARY"
        self.task_definition = service.task_definition
        self.desired_count = service.desired_count
        self.pending_count = self.running_count = self.failed_tasks = 0
        self.created_at = self.updated_at = utcnow()
        self.launch_type = service.launch_type
        self.platform_version = "1.4.0" if service.launch_type == "FARGATE" else None
        self.platform_family = "Linux"
        self.network_configuration = service.network_configuration or None
        self.capacity_provider_strategy = service.capacity_provider_strategy
        self.rollout_state = "IN_PROGRESS"
        self.rollout_state_reason = rollout_state_reason or f"ECS deployment {self.id} in progress."
        self.fail_reason = fail_reason
        self.casey_rollback = rollout_state_reason is not None  # a rollback deployment (not in the ECS shape)
        self.tasks: list[Task] = []

    def live(self) -> list[Task]:
        return [t for t in self.tasks if t.desired_status == "RUNNING"]


def _event(service, message: str) -> None:
    event = {"id": str(uuid.uuid4()), "createdAt": utcnow(), "message": f"(service {service.name}) {message}"}
    service.events.insert(0, event)
    del service.events[100:]


def _new_deployment(service, rollback_to: Deployment | None = None) -> Deployment:
    fail_reason = None
    pending = FAILURES.get((service.cluster_name, service.name))
    if pending and rollback_to is None:  # a rollback never consumes an injected failure
        fail_reason = pending[0]
        pending[1] -= 1
        if pending[1] <= 0:
            del FAILURES[(service.cluster_name, service.name)]
    reason = rollback_to and f"ECS deployment circuit breaker: rolling back to deploymentId {rollback_to.id}."
    deployment = Deployment(service, fail_reason, reason)
    for old in service.deployments:
        old.status = "ACTIVE"
    service.deployments.insert(0, deployment)
    service.casey_steady = False
    return deployment


def _next_public_ip(port: int | None = None) -> str:
    """The next loopback address; with a port, one where ip:port is free (a task process will bind it)."""
    global _last_public_ip
    for _ in range(50):  # bounded: a port that binds nowhere (privileged) must not hang the scheduler
        _last_public_ip += 1
        while _last_public_ip % 256 in (0, 255):
            _last_public_ip += 1
        n = _last_public_ip
        ip = f"127.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}"
        if port is None or _bindable(ip, port):
            break
    return ip


def _bindable(ip: str, port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind((ip, port))
            return True
        except OSError:
            return False


def ecs_containers(task: Task, task_def, interfaces: list) -> list[dict]:
    """task.containers in the ECS Container shape, one per container definition (moto models only the first,
    with the task definition's ARN as taskArn and cpu/memory as numbers where the API has strings)."""
    prefix = f"arn:aws:ecs:{task.region_name}:{task._account_id}:container/{task.cluster_name}/{task.id}"
    return [{
        "containerArn": f"{prefix}/{uuid.uuid4()}", "taskArn": task.task_arn, "name": c.get("name"),
        "image": c.get("image"), "lastStatus": "PENDING", "healthStatus": "UNKNOWN", "cpu": str(c.get("cpu", 0)),
        "memory": str(c["memory"]) if c.get("memory") else None, "networkInterfaces": interfaces,
    } for c in task_def.container_definitions]


def _launch(backend, service, deployment: Deployment) -> Task:
    cluster = backend._get_cluster(service.cluster_name)
    task_def = backend.describe_task_definition(deployment.task_definition)
    network = service.network_configuration or None
    if network:  # spread tasks over the subnets as ECS does (moto always uses the first one)
        vpc = dict(network["awsvpcConfiguration"])
        subnets = list(vpc["subnets"])
        shift = len(deployment.tasks) % len(subnets)
        vpc["subnets"] = subnets[shift:] + subnets[:shift]
        network = {"awsvpcConfiguration": vpc}
    tags = {"SERVICE": service.tags, "TASK_DEFINITION": task_def.tags}.get(service.propagate_tags, [])
    task = Task(cluster, task_def, None, None, backend, group=f"service:{service.name}",
                launch_type=service.launch_type or "", started_by=deployment.id, tags=list(tags or []),
                networking_configuration=network, platform_version=deployment.platform_version)
    task.last_status = "PENDING"
    task.created_at = utcnow()
    task.cpu, task.memory = task_def.cpu, task_def.memory
    task.platform_family = "Linux"
    task.casey_launched = time.monotonic()
    task.casey_public_ip = task.casey_run = None
    task.casey_definitions = task_def.container_definitions
    public_ip = bool(network) and network["awsvpcConfiguration"].get("assignPublicIp") == "ENABLED"
    # A task that cannot start (an injected failure, no route to ECR, an image that is not there) gets no
    # process: ECS fails it before any container runs.
    fargate = service.launch_type == "FARGATE" or any(
        "FARGATE" in (item.get("capacityProvider") or "") for item in service.capacity_provider_strategy or [])
    task.casey_start_failure = deployment.fail_reason or (
        fargate and network_failure(backend, task, task_def, public_ip)) or log_group_failure(
        backend.account_id, backend.region_name, task_def, fargate) or next(
        (reason for c in task_def.container_definitions if (reason := image_failure(c.get("image"), backend.account_id))),
        None)
    config = RUNNER
    run = config["mode"] != "none" and not task.casey_start_failure and not _shutting_down
    container = _run_container(task_def.container_definitions)
    port = next((m.get("containerPort") for m in container.get("portMappings") or []), None) if run else None
    eni_details = {}
    for attachment in task.attachments:
        eni_details = {d["name"]: d["value"] for d in attachment["details"]}
        ec2 = ec2_backends[backend.account_id][backend.region_name]
        eni = ec2.get_network_interface(eni_details["networkInterfaceId"])
        eni.description = f"arn:aws:ecs:{backend.region_name}:{backend.account_id}:attachment/{attachment['id']}"
        eni.requester_managed = True
        task.availability_zone = eni.subnet.availability_zone
        if public_ip:
            eni.public_ip = task.casey_public_ip = _next_public_ip(port)
    interfaces = [{"attachmentId": task.attachments[0]["id"], "privateIpv4Address": eni_details["privateIPv4Address"]}
                  ] if eni_details else []
    task.containers = ecs_containers(task, task_def, interfaces)
    task.health_status = "UNKNOWN"
    backend.tasks.setdefault(cluster.name, {})[task.task_arn] = task
    deployment.tasks.append(task)
    if run:  # without a public IP the task still needs an address to bind: a loopback one stands for the private IP
        bind_ip = task.casey_public_ip or _next_public_ip(port)
        env = _task_env(backend, container, port, bind_ip, config)
        task.casey_run = RUN_CLASSES[config["mode"]](task, config, container, port, bind_ip, env)
    return task


def _start(task: Task) -> None:
    task.last_status = "RUNNING"
    task.started_at = utcnow()
    checked = task.casey_run and task.casey_run.health_check and task.casey_run.container_name
    for container in task.containers:
        container["lastStatus"] = "RUNNING"
        if checked == container["name"]:  # its health check passed: that is what made the task RUNNING
            container["healthStatus"] = "HEALTHY"
    if checked:  # the task's health is that of its essential containers; the others have no check here
        task.health_status = "HEALTHY"
    on_task_started(task_info(task))


def _stop(backend, task: Task, reason: str, stop_code: str, failed: bool = False,
          exit_code: int | None = None) -> None:
    was_running = task.last_status == "RUNNING"
    task.last_status = task.desired_status = "STOPPED"
    task.stopped_reason, task.stop_code = reason, stop_code
    task.stopping_at = task.stopped_at = task.execution_stopped_at = utcnow()
    if task.casey_run:
        task.casey_run.stop()  # SIGTERM / docker stop, on the run's own thread
    for container in task.containers:
        container["lastStatus"] = "STOPPED"
        if exit_code is not None and container["name"] == task.casey_run.container_name:
            container["exitCode"] = exit_code
        else:
            container.update({"reason": reason} if failed else {"exitCode": 0})
    for attachment in task.attachments:  # ECS deletes a stopped task's ENI (and so frees its public IP)
        attachment["status"] = "DELETED"
        eni_id = {d["name"]: d["value"] for d in attachment["details"]}["networkInterfaceId"]
        ec2_backends[backend.account_id][backend.region_name].enis.pop(eni_id, None)
    if was_running:
        on_task_stopped(task_info(task))


def _stop_tasks(backend, service, deployment: Deployment, tasks: list[Task]) -> None:
    if not tasks:
        return
    for task in tasks:
        reason = f"Scaling activity initiated by (deployment {deployment.id})"
        _stop(backend, task, reason, "ServiceSchedulerInitiated")
    ids = " ".join(f"(task {t.id})" for t in tasks)
    _event(service, f"has stopped {len(tasks)} running tasks: {ids}.")
    service.casey_steady = False


def _fail(service, deployment: Deployment) -> None:
    """Circuit breaker tripped: mark the deployment FAILED and roll back if the service asks for it."""
    deployment.rollout_state = "FAILED"
    deployment.rollout_state_reason = "ECS deployment circuit breaker: tasks failed to start."
    deployment.updated_at = utcnow()
    _event(service, f"(deployment {deployment.id}) deployment failed: tasks failed to start.")
    breaker = service.deployment_configuration.get("deploymentCircuitBreaker", {})
    previous = next((d for d in service.deployments[1:] if d.rollout_state == "COMPLETED"), None)
    # A failed rollback is not rolled back again (a runner whose tasks all fail would loop for ever); the
    # service keeps the tasks it has, as on ECS.
    if breaker.get("rollback") and previous and not deployment.casey_rollback:
        service.task_definition = previous.task_definition
        _event(service, f"rolling back to deployment {previous.id}.")
        _new_deployment(service, rollback_to=previous)


def breaker_threshold(desired_count: int) -> int:
    """Failed tasks that fail a deployment: half the desired count, rounded up, at least 3 and at most 200.
    https://docs.aws.amazon.com/AmazonECS/latest/developerguide/deployment-circuit-breaker.html,
    https://docs.aws.amazon.com/AmazonECS/latest/APIReference/API_ServiceDeploymentCircuitBreaker.html"""
    return min(200, max(3, math.ceil(0.5 * desired_count)))


def _healthy(breaker: dict, deployment: Deployment) -> None:
    """A task of the deployment is healthy (RUNNING, its health check passed): the breaker's failure count
    goes back to 0 (Deployment.failedTasks counts consecutive failures; resetOnHealthyTask defaults to true,
    https://docs.aws.amazon.com/AmazonECS/latest/APIReference/API_DeploymentCircuitBreaker.html)."""
    if breaker.get("resetOnHealthyTask", True):
        deployment.failed_tasks = 0


def reconcile(backend, service) -> None:
    """Move one service towards its desired state; called by the scheduler thread and after each API change."""
    if not service.deployments or not isinstance(service.deployments[0], Deployment):
        return  # CODE_DEPLOY / EXTERNAL controllers, or not created through the API
    now = time.monotonic()
    breaker = service.deployment_configuration.get("deploymentCircuitBreaker", {})
    for deployment in list(service.deployments):
        for task in deployment.tasks:  # StopTask and the like stop a task behind the scheduler's back
            if task.desired_status != "RUNNING" and task.casey_run and not task.casey_run.stopping.is_set():
                task.casey_run.stop()
        for task in deployment.live():
            run = task.casey_run
            if run:  # a real process: its health decides, not the clock
                # A failure is applied no sooner than --rollout-seconds after launch: that throttles a backend
                # that exits at once from being relaunched ten times a second (ECS backs off too).
                if run.failure and (task.last_status == "RUNNING" or now - task.casey_launched >= ROLLOUT_SECONDS):
                    reason, stop_code, exit_code = run.failure
                    if task.last_status == "RUNNING" and reason == HEALTH_CHECK_FAILED:
                        task.health_status = "UNHEALTHY"
                    _stop(backend, task, reason, stop_code, failed=True, exit_code=exit_code)
                    deployment.failed_tasks += 1
                elif run.healthy and not run.failure and task.last_status == "PENDING":
                    _start(task)
                    _healthy(breaker, deployment)
            elif task.last_status == "PENDING" and now - task.casey_launched >= ROLLOUT_SECONDS:
                if task.casey_start_failure:
                    _stop(backend, task, task.casey_start_failure, "TaskFailedToStart", failed=True)
                    deployment.failed_tasks += 1
                else:
                    _start(task)
                    _healthy(breaker, deployment)
    primary = service.deployments[0]
    if primary.rollout_state == "IN_PROGRESS" and breaker.get("enable") and \
            primary.failed_tasks >= breaker_threshold(service.desired_count):
        _fail(service, primary)
        primary = service.deployments[0]
    if service.status != "ACTIVE":  # deleted: nothing may keep running
        for deployment in service.deployments:
            _stop_tasks(backend, service, deployment, deployment.live())
    elif primary.rollout_state != "FAILED":
        primary.desired_count = service.desired_count
        live = primary.live()
        if len(live) < service.desired_count:
            started = [_launch(backend, service, primary) for _ in range(service.desired_count - len(live))]
            _event(service, f"has started {len(started)} tasks: {' '.join(f'(task {t.id})' for t in started)}.")
            service.casey_steady = False
        elif len(live) > service.desired_count:
            surplus = sorted(live, key=lambda t: (t.last_status == "RUNNING", t.casey_launched), reverse=True)
            _stop_tasks(backend, service, primary, surplus[service.desired_count:])
        running = [t for t in primary.live() if t.last_status == "RUNNING"]
        if len(running) == len(primary.live()) == service.desired_count:
            for old in service.deployments[1:]:
                _stop_tasks(backend, service, old, old.live())
            service.deployments[1:] = []
            if primary.rollout_state == "IN_PROGRESS":
                primary.rollout_state = "COMPLETED"
                primary.rollout_state_reason = f"ECS deployment {primary.id} completed."
                _event(service, f"(deployment {primary.id}) deployment completed.")
            if not service.casey_steady:
                _event(service, "has reached a steady state.")
                service.casey_steady = True
    for deployment in service.deployments:
        live = deployment.live()
        running = sum(t.last_status == "RUNNING" for t in live)
        if (running, len(live) - running) != (deployment.running_count, deployment.pending_count):
            deployment.running_count, deployment.pending_count = running, len(live) - running
            deployment.updated_at = utcnow()
    service.running_count = sum(d.running_count for d in service.deployments)
    service.pending_count = sum(d.pending_count for d in service.deployments)


def scheduler_loop() -> None:
    last_error = None
    while True:
        time.sleep(0.1)
        try:
            with LOCK:
                for _, _, backend in list(ecs_backends.iter_backends()):
                    for service in list(backend.services.values()):
                        reconcile(backend, service)
                    if READ_LAG["seconds"]:
                        snapshot_services(backend)
                    for name, cluster in backend.clusters.items():  # moto's own counters drift
                        statuses = [t.last_status for t in backend.tasks.get(name, {}).values()]
                        cluster.running_tasks_count = statuses.count("RUNNING")
                        cluster.pending_tasks_count = statuses.count("PENDING")
                        cluster.active_services_count = sum(s.cluster_name == name and s.status == "ACTIVE"
                                                            for s in backend.services.values())
        except Exception:  # a bug must not silently stop the scheduler; report it once, not every tick
            error = traceback.format_exc()
            if error != last_error:
                print(error, file=sys.stderr, flush=True)
            last_error = error


# --- ECS API patches --------------------------------------------------------------------------------------

def _apply_service_fields(service, params: dict) -> None:
    for key in ROUND_TRIP:
        if key in params:
            setattr(service, xform_name(key), params[key])
    if "deploymentConfiguration" in params:  # ECS merges a partial update into the stored configuration
        stored = getattr(service, "deployment_configuration", None) or {}
        service.deployment_configuration = {**stored, **params["deploymentConfiguration"]}


_moto_create_service = EC2ContainerServiceResponse.create_service
_moto_delete_service = EC2ContainerServiceResponse.delete_service


def create_service(self) -> ActionResult:
    params = self._get_params()
    task_def = params.get("taskDefinition") and self.ecs_backend.describe_task_definition(params["taskDefinition"])
    if task_def and task_def.network_mode == "awsvpc" and not params.get("networkConfiguration"):
        raise InvalidParameterException(
            "Network Configuration must be provided when networkMode 'awsvpc' is specified.")
    result = _moto_create_service(self)
    service = result.result["service"]
    for key, value in SERVICE_DEFAULTS.items():
        setattr(service, xform_name(key), value)
    service.deployment_configuration = copy.deepcopy(DEPLOYMENT_CONFIGURATION_DEFAULT)
    service.capacity_provider_strategy = None
    if service.launch_type == "FARGATE":
        service.platform_version = "LATEST"
    service.created_at = utcnow()
    _apply_service_fields(service, params)
    if service.deployment_controller.get("type") == "ECS":
        service.deployments = []
        _new_deployment(service)
        reconcile(self.ecs_backend, service)
    return result


def update_service(self) -> ActionResult:
    """Replaces moto's: it would store the raw task definition string and reuse the deployment."""
    params = self._get_params()
    backend = self.ecs_backend
    service = backend._get_service(params.get("cluster", "default"), params["service"])
    new_deployment = bool(params.get("forceNewDeployment")) or any(
        key in params and params[key] != getattr(service, xform_name(key), None) for key in DEPLOYING_FIELDS)
    if params.get("taskDefinition"):
        arn = backend.describe_task_definition(params["taskDefinition"]).arn
        new_deployment = new_deployment or arn != service.task_definition
        service.task_definition = arn
    if params.get("desiredCount") is not None:
        service.desired_count = params["desiredCount"]
    _apply_service_fields(service, params)
    if service.deployments and isinstance(service.deployments[0], Deployment):
        if new_deployment:
            _new_deployment(service)
        reconcile(backend, service)
    return ActionResult({"service": service})


def delete_service(self) -> ActionResult:
    result = _moto_delete_service(self)
    reconcile(self.ecs_backend, result.result["service"])  # INACTIVE now: stops its tasks
    return result


def list_tasks(self) -> ActionResult:
    """Replaces moto's, which ignores serviceName and lists STOPPED tasks unless asked not to."""
    params = self._get_params()
    backend = self.ecs_backend
    cluster = backend._get_cluster(params.get("cluster", "default"))
    tasks = list(backend.tasks.get(cluster.name, {}).values())
    if params.get("serviceName"):
        name = backend._get_service(cluster.name, params["serviceName"]).name
        tasks = [t for t in tasks if t.group == f"service:{name}"]
    if params.get("family"):
        tasks = [t for t in tasks if t.task_definition_arn.split("/")[-1].rsplit(":", 1)[0] == params["family"]]
    if params.get("startedBy"):
        tasks = [t for t in tasks if t.started_by == params["startedBy"]]
    if params.get("containerInstance"):
        tasks = [t for t in tasks if params["containerInstance"] in (t.container_instance_arn or "")]
    desired = params.get("desiredStatus") or "RUNNING"
    return ActionResult({"taskArns": [t.task_arn for t in tasks if t.desired_status == desired]})


def _locked(method):
    return _locked_by(LOCK, method)


def _locked_by(lock, method):
    def wrapper(self, *args, **kwargs):
        with lock:
            return method(self, *args, **kwargs)
    return wrapper


# --- ECS read-after-write lag (on request) ----------------------------------------------------------------

# "The Amazon ECS API follows an eventual consistency model ... the result of an API command you run that
# affects your Amazon ECS resources might not be immediately visible to all subsequent commands you run"
# (https://docs.aws.amazon.com/AmazonECS/latest/APIReference/API_RunTask.html, and the same note on the other
# write actions). POST /_casey/ecs/read-lag {"seconds": S} makes DescribeServices answer with each service as
# it was S seconds earlier: the scheduler keeps a history of every service's DescribeServices entry.
SNAPSHOTS: dict[str, list[tuple[float, dict]]] = {}  # service ARN -> [(monotonic time, entry)], oldest first
_moto_describe_services = EC2ContainerServiceResponse.describe_services


def _service_entry(service) -> dict:
    operation = get_service_model("ecs").operation_model("DescribeServices")
    serializer = get_serializer_class("ecs", "json")(
        operation_model=operation, pretty_print=False,
        value_picker=XFormedAttributePicker(response_transformers={DESCRIBE_SERVICES_TAGS: never_return}))
    return json.loads(serializer.serialize({"services": [service], "failures": []})["body"])["services"][0]


def snapshot_services(backend) -> None:
    """Called by the scheduler (under LOCK) while a read lag is set."""
    now = time.monotonic()
    for service in backend.services.values():
        entry, history = _service_entry(service), SNAPSHOTS.setdefault(service.arn, [])
        if not history or history[-1][1] != entry:
            history.append((now, entry))
        while len(history) > 1 and history[1][0] <= now - READ_LAG["seconds"] - 1:
            history.pop(0)  # keep the newest entry older than the lag, and everything after it


def describe_services(self):
    result = _moto_describe_services(self)
    lag = READ_LAG["seconds"]
    if not lag:
        return result
    answer = json.loads(self.serialized(result)[2])
    cutoff = time.monotonic() - lag
    services, failures = [], answer.get("failures") or []
    for current in answer.get("services") or []:
        history = SNAPSHOTS.get(current["serviceArn"], [])
        older = [entry for at, entry in history if at <= cutoff]
        if older:
            services.append(older[-1])
        elif READ_LAG["since"] <= cutoff:  # the history reaches back S seconds: the service did not exist yet
            failures.append({"arn": current["serviceArn"], "reason": "MISSING"})
        else:  # the lag was switched on less than S seconds ago: the oldest state known
            services.append(history[0][1] if history else current)
    return json.dumps({"services": services, "failures": failures})


# --- fault injection (POST /_casey/faults) ----------------------------------------------------------------

FAULTS: list[dict] = []  # guarded by FAULTS_LOCK
FAULTS_LOCK = threading.Lock()
FAULT_KINDS = ("http500", "throttle", "latency", "drop")
_fault_ids = iter(range(1, 1 << 62))
# Error formats by protocol. Query services (IAM, STS, ELBv2, ...): ErrorResponse/Error. EC2: Response/Errors/
# Error. The rest (ECS, ECR, Logs, Application Auto Scaling): JSON with __type.
QUERY_SERVICES = {"iam", "sts", "elasticloadbalancing", "autoscaling", "cloudformation", "sns", "sqs", "rds",
                  "monitoring"}
# Throttling: ThrottlingException (HTTP 400) for JSON services such as ECS
# (https://docs.aws.amazon.com/AmazonECS/latest/APIReference/CommonErrors.html), Throttling for query services
# such as IAM and STS (https://docs.aws.amazon.com/STS/latest/APIReference/CommonErrors.html), and
# RequestLimitExceeded, a client error, for EC2 (https://docs.aws.amazon.com/ec2/latest/devguide/
# ec2-api-throttling.html, https://docs.aws.amazon.com/AWSEC2/latest/APIReference/errors-overview.html).
# A server fault: InternalFailure (HTTP 500) in the common errors of every service; EC2 calls it InternalError.
THROTTLE_CODES = {"json": ("ThrottlingException", "Rate exceeded"), "query": ("Throttling", "Rate exceeded"),
                  "ec2": ("RequestLimitExceeded", "Request limit exceeded.")}
INTERNAL_CODES = {"json": "InternalFailure", "query": "InternalFailure", "ec2": "InternalError"}
CREDENTIAL_SCOPE = re.compile(r"Credential=[^/,\s]+/\d{8}/[^/]+/([^/]+)/aws4_request")


def configure_fault(body: dict) -> tuple[int, dict]:
    allowed = {"service", "action", "kind", "count", "seconds", "latency_ms"}
    unknown = sorted(set(body) - allowed)
    count, seconds, latency = body.get("count"), body.get("seconds"), body.get("latency_ms")
    usage = ('body must be {"service": "ecs", "action": "DescribeServices" (optional), "kind": '
             '"http500"|"throttle"|"latency"|"drop", and "count": N or "seconds": S, "latency_ms": MS for latency}')
    number = (int, float)
    if unknown or not isinstance(body.get("service"), str) or not body["service"] \
            or not isinstance(body.get("action", ""), str) or body.get("kind") not in FAULT_KINDS \
            or (count is None) == (seconds is None) \
            or (count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1)) \
            or (seconds is not None and (isinstance(seconds, bool) or not isinstance(seconds, number) or seconds <= 0)) \
            or ((body["kind"] == "latency") != (latency is not None)) \
            or (latency is not None and (isinstance(latency, bool) or not isinstance(latency, number) or latency <= 0)):
        return 400, {"error": f"{usage}; unknown fields: {unknown}" if unknown else usage}
    fault = {"id": next(_fault_ids), "service": body["service"].lower(), "action": body.get("action") or None,
             "kind": body["kind"], "remaining": count, "seconds": seconds, "latency_ms": latency, "fired": 0,
             "_until": time.monotonic() + seconds if seconds else None}
    with FAULTS_LOCK:
        FAULTS.append(fault)
    return 200, fault_view(fault)


def fault_view(fault: dict) -> dict:
    view = {k: v for k, v in fault.items() if not k.startswith("_")}
    if fault["_until"] is not None:
        view["seconds_left"] = round(max(0.0, fault["_until"] - time.monotonic()), 3)
    return view


def _active(fault: dict, now: float) -> bool:
    return fault["remaining"] > 0 if fault["remaining"] is not None else now < fault["_until"]


def _request_action(environ) -> str | None:
    target = environ.get("HTTP_X_AMZ_TARGET")
    if target:
        return target.rsplit(".", 1)[-1]
    query = urllib.parse.parse_qs(environ.get("QUERY_STRING", ""))
    if "Action" in query:
        return query["Action"][0]
    if "x-www-form-urlencoded" in (environ.get("CONTENT_TYPE") or ""):
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        environ["wsgi.input"] = io.BytesIO(body)  # moto reads it again
        form = urllib.parse.parse_qs(body.decode("utf-8", "replace"))
        return form.get("Action", [None])[0]
    return None


def take_fault(environ) -> dict | None:
    """The fault that this request fires, if any: counted and consumed here."""
    if not FAULTS:
        return None
    scope = CREDENTIAL_SCOPE.search(environ.get("HTTP_AUTHORIZATION") or "")
    if not scope:
        return None
    service, action, now = scope.group(1).lower(), _request_action(environ), time.monotonic()
    with FAULTS_LOCK:
        FAULTS[:] = [f for f in FAULTS if _active(f, now)]
        for fault in FAULTS:
            if fault["service"] == service and fault["action"] in (None, action):
                fault["fired"] += 1
                if fault["remaining"] is not None:
                    fault["remaining"] -= 1
                return {**fault, "_service": service}
    return None


def fault_response(fault: dict, environ, start_response):
    """The answer of a fired fault (None for latency: the request then goes on to moto)."""
    service, request_id = fault["_service"], str(uuid.uuid4())
    if fault["kind"] == "latency":
        time.sleep(fault["latency_ms"] / 1000)
        return None
    if fault["kind"] == "drop":
        sock = environ.get("werkzeug.socket")
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # the client sees the connection close without an answer
            except OSError:
                pass
        start_response("500 Internal Server Error", [("Content-Length", "0")])
        return [b""]
    protocol = "ec2" if service == "ec2" else "query" if service in QUERY_SERVICES else "json"
    if fault["kind"] == "throttle":
        status, (code, message) = 400, THROTTLE_CODES[protocol]
    else:
        status, code, message = 500, INTERNAL_CODES[protocol], "We encountered an internal error. Please try again."
    if protocol == "json":
        body, content_type = json.dumps({"__type": code, "message": message}), "application/x-amz-json-1.1"
        headers = [("x-amzn-RequestId", request_id), ("x-amzn-ErrorType", code)]
    elif protocol == "ec2":
        body = (f"<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response><Errors><Error><Code>{code}</Code>"
                f"<Message>{escape(message)}</Message></Error></Errors><RequestID>{request_id}</RequestID></Response>")
        content_type, headers = "text/xml", []
    else:
        kind = "Sender" if status < 500 else "Receiver"
        body = (f"<ErrorResponse><Error><Type>{kind}</Type><Code>{code}</Code><Message>{escape(message)}</Message>"
                f"</Error><RequestId>{request_id}</RequestId></ErrorResponse>")
        content_type, headers = "text/xml", [("x-amzn-RequestId", request_id)]
    phrase = "Bad Request" if status == 400 else "Internal Server Error"
    start_response(f"{status} {phrase}", [("Content-Type", content_type), ("Content-Length", str(len(body))),
                                          *headers])
    return [body.encode()]


# --- Application Auto Scaling tags ------------------------------------------------------------------------

_moto_register_scalable_target = ApplicationAutoScalingResponse.register_scalable_target


def register_scalable_target(self) -> str:
    body = _moto_register_scalable_target(self)
    AAS_TAGS.setdefault(json.loads(body)["ScalableTargetARN"], {}).update(self._get_param("Tags") or {})
    return body


def aas_list_tags_for_resource(self) -> str:
    return json.dumps({"Tags": AAS_TAGS.get(self._get_param("ResourceARN"), {})})


def aas_tag_resource(self) -> str:
    AAS_TAGS.setdefault(self._get_param("ResourceARN"), {}).update(self._get_param("Tags") or {})
    return "{}"


def aas_untag_resource(self) -> str:
    tags = AAS_TAGS.get(self._get_param("ResourceARN"), {})
    for key in self._get_param("TagKeys") or []:
        tags.pop(key, None)
    return "{}"


# --- IAM enforcement errors -------------------------------------------------------------------------------

# moto answers a denied or badly signed request with an EC2-style XML body (ErrorResponse/Errors/Error) for
# every service. The Go SDK (terraform) and other SDKs cannot decode that for JSON-protocol services (ECS, Logs,
# ECR, ...) nor for query-protocol ones (STS, IAM, ELBv2: ErrorResponse/Error), so the denied action never
# reaches the user ("api error UnknownError"). Answer in each protocol's own error format instead.
JSON_AUTH_ERRORS = {"AccessDenied": "AccessDeniedException", "InvalidClientTokenId": "UnrecognizedClientException",
                    "SignatureDoesNotMatch": "InvalidSignatureException"}
_moto_authorize = BaseResponse._authenticate_and_authorize_normal_action


# Called without credentials by design ("does not require the use of AWS security credentials",
# https://docs.aws.amazon.com/STS/latest/APIReference/API_AssumeRoleWithWebIdentity.html); moto's check
# fails on the missing Authorization header. What AWS checks instead is in assume_role_with_web_identity.
UNSIGNED_STS_ACTIONS = {"AssumeRoleWithWebIdentity", "AssumeRoleWithSAML"}


def authorize(self, resource: str = "*") -> None:
    if isinstance(self, STSResponse) and self._get_action() in UNSIGNED_STS_ACTIONS:
        return
    try:
        _moto_authorize(self, resource)
    except HTTPException as error:
        if not hasattr(error, "error_type") or isinstance(self, EC2Response):
            raise
        if "json" in (self.headers.get("Content-Type") or ""):
            json_error = JsonRESTError(JSON_AUTH_ERRORS.get(error.error_type, error.error_type), error.message)
            json_error.code = error.code
            raise json_error from None
        error.description = (f"<ErrorResponse><Error><Type>Sender</Type><Code>{error.error_type}</Code>"
                             f"<Message>{escape(error.message)}</Message></Error></ErrorResponse>")
        raise


# moto evaluates identity policies against the resource "*" for almost every action and without any condition
# context. So a statement scoped to ARNs never allows anything, and a conditional Allow even counts as a Deny:
# a least-privilege policy could never pass. Enforcement is therefore action-level: a statement applies to
# any resource moto cannot name and its conditions hold when moto has no values for them. Trust policies
# (sts:AssumeRole), which moto does give a resource and condition values, are still evaluated fully.
_moto_element_matches = IAMPolicyStatement._check_element_matches
_moto_check_conditions = IAMPolicyStatement._check_conditions


def element_matches(self, element: str, value: str) -> bool:
    return (element == "Resource" and value == "*") or _moto_element_matches(self, element, value)


def check_conditions(self, incoming_condition_values) -> bool:
    return incoming_condition_values is None or _moto_check_conditions(self, incoming_condition_values)


# --- IAM quotas and propagation ---------------------------------------------------------------------------

# IAM quotas, https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_iam-quotas.html: a managed policy
# holds at most 6,144 characters ("IAM does not count white space when calculating the size of a policy"),
# and at most 10 managed policies can be attached to a user or to a role (the default quota). AWS answers
# LimitExceeded (HTTP 409, https://docs.aws.amazon.com/IAM/latest/APIReference/API_CreatePolicy.html) with
# these messages; moto checks neither.
POLICY_SIZE_QUOTA = 6144
ATTACHED_POLICIES_QUOTA = 10
_moto_create_policy = IAMBackend.create_policy
_moto_create_policy_version = IAMBackend.create_policy_version
_moto_set_default_policy_version = IAMBackend.set_default_policy_version
_moto_attach_user_policy = IAMBackend.attach_user_policy
_moto_attach_role_policy = IAMBackend.attach_role_policy
_moto_user_policies = IAMUserAccessKey.collect_policies
_moto_role_policies = AssumedRoleAccessKey.collect_policies
# IAM is eventually consistent, https://docs.aws.amazon.com/IAM/latest/UserGuide/troubleshoot_general.html
# #troubleshoot_general_eventual-consistency: "changes that you make ... take time to become visible from all
# possible endpoints". A new attachment or a new default policy version counts only IAM_PROPAGATION_SECONDS
# after it was made; until then requests are evaluated as if it had not happened.
_pending_attachments: dict[tuple, float] = {}  # (account, "user"|"role", name, policy arn) -> effective from
_pending_defaults: dict[tuple, tuple[str, float]] = {}  # (account, policy arn) -> (previous document, from)


def _check_policy_size(document: str) -> None:
    if RULES["iam_policy_size"] and len(re.sub(r"\s", "", document)) > POLICY_SIZE_QUOTA:
        raise LimitExceededException(f"Cannot exceed quota for PolicySize: {POLICY_SIZE_QUOTA}")


def _default_document(policy) -> str:
    return next(v.document for v in policy.versions if v.is_default)


def _delay_default(backend: IAMBackend, policy_arn: str) -> None:
    """Before the default version of a policy changes: keep the old one in force for a while."""
    policy = backend.managed_policies.get(policy_arn)
    if policy is not None and IAM_PROPAGATION_SECONDS > 0:
        key = (backend.account_id, policy_arn)
        previous = _pending_defaults.get(key)
        document = previous[0] if previous and time.monotonic() < previous[1] else _default_document(policy)
        _pending_defaults[key] = (document, time.monotonic() + IAM_PROPAGATION_SECONDS)


def iam_create_policy(self, description, path, policy_document, policy_name, tags):
    _check_policy_size(policy_document)
    return _moto_create_policy(self, description, path, policy_document, policy_name, tags)


def iam_create_policy_version(self, policy_arn, policy_document, set_as_default):
    _check_policy_size(policy_document)
    if str(set_as_default).lower() == "true":
        _delay_default(self, policy_arn)
    return _moto_create_policy_version(self, policy_arn, policy_document, set_as_default)


def iam_set_default_policy_version(self, policy_arn, version_id):
    _delay_default(self, policy_arn)
    return _moto_set_default_policy_version(self, policy_arn, version_id)


def _attach(kind: str, quota_name: str, attach):
    def wrapper(self, policy_arn: str, name: str) -> None:
        entity = self.get_user(name) if kind == "user" else self.get_role(name)
        if policy_arn in entity.managed_policies:
            return attach(self, policy_arn, name)  # attaching again changes nothing, as in IAM
        if RULES["iam_policies_per_entity"] and len(entity.managed_policies) >= ATTACHED_POLICIES_QUOTA:
            raise LimitExceededException(f"Cannot exceed quota for {quota_name}: {ATTACHED_POLICIES_QUOTA}")
        attach(self, policy_arn, name)
        if IAM_PROPAGATION_SECONDS > 0:
            _pending_attachments[(self.account_id, kind, name, policy_arn)] = \
                time.monotonic() + IAM_PROPAGATION_SECONDS
    return wrapper


def _propagated(account: str, kind: str, name: str, policies: list) -> list:
    """The policies that have reached every IAM endpoint: newer attachments and default versions left out."""
    now, result = time.monotonic(), []
    for policy in policies:
        arn = getattr(policy, "arn", None)
        if arn and getattr(policy, "versions", None) is not None:
            if now < _pending_attachments.get((account, kind, name, arn), 0):
                continue
            previous = _pending_defaults.get((account, arn))
            if previous and now < previous[1]:
                result.append(previous[0])  # moto evaluates a document string as it is
                continue
        result.append(policy)
    return result


def user_policies(self) -> list:
    return _propagated(self.account_id, "user", self._owner_user_name, _moto_user_policies(self))


def role_policies(self) -> list:
    return _propagated(self.account_id, "role", self._owner_role_name, _moto_role_policies(self))


_moto_task_init = Task.__init__
_moto_create_default_vpc = VPCBackend.create_default_vpc


def task_init(self, cluster, task_definition, *args, **kwargs) -> None:
    _moto_task_init(self, cluster, task_definition, *args, **kwargs)
    interfaces = [{"attachmentId": a["id"], "privateIpv4Address": d["value"]} for a in self.attachments
                  for d in a["details"] if d["name"] == "privateIPv4Address"]
    self.containers = ecs_containers(self, task_definition, interfaces[:1])


def create_default_vpc(self):
    """AWS's default VPC has an internet gateway and a 0.0.0.0/0 route to it in the main route table
    (https://docs.aws.amazon.com/vpc/latest/userguide/default-vpc.html); moto's has neither, and Fargate
    tasks with a public IP need that route."""
    vpc = _moto_create_default_vpc(self)
    gateway = self.create_internet_gateway()
    self.attach_internet_gateway(gateway.id, vpc.id)
    main = next(t for t in self.route_tables.values() if t.vpc_id == vpc.id and t.main_association_id)
    self.create_route(main.id, "0.0.0.0/0", gateway_id=gateway.id)
    return vpc


def install_patches() -> None:
    IAMBackend.create_policy = iam_create_policy
    IAMBackend.create_policy_version = iam_create_policy_version
    IAMBackend.set_default_policy_version = iam_set_default_policy_version
    IAMBackend.attach_user_policy = _attach("user", "PoliciesPerUser", _moto_attach_user_policy)
    IAMBackend.attach_role_policy = _attach("role", "PoliciesPerRole", _moto_attach_role_policy)
    IAMUserAccessKey.collect_policies = user_policies
    AssumedRoleAccessKey.collect_policies = role_policies
    EC2ContainerServiceResponse.describe_services = describe_services
    for name in ("list_images", "describe_images", "batch_get_image"):
        setattr(ECRResponse, name, _with_registry_images(getattr(ECRResponse, name)))
    Task.__init__ = task_init
    VPCBackend.create_default_vpc = create_default_vpc
    BaseResponse._authenticate_and_authorize_normal_action = authorize
    IAMPolicyStatement._check_element_matches = element_matches
    IAMPolicyStatement._check_conditions = check_conditions
    EC2ContainerServiceResponse.create_service = create_service
    EC2ContainerServiceResponse.update_service = update_service
    EC2ContainerServiceResponse.delete_service = delete_service
    EC2ContainerServiceResponse.list_tasks = list_tasks
    for cls in (EC2ContainerServiceResponse, EC2Response, ECRResponse):  # the scheduler reads ECR (images)
        cls.call_action = _locked(cls.call_action)
    LogsResponse.call_action = _locked_by(LOGS_LOCK, LogsResponse.call_action)  # the awslogs shippers write Logs
    ApplicationAutoScalingResponse.register_scalable_target = register_scalable_target
    ApplicationAutoScalingResponse.list_tags_for_resource = aas_list_tags_for_resource
    ApplicationAutoScalingResponse.tag_resource = aas_tag_resource
    ApplicationAutoScalingResponse.untag_resource = aas_untag_resource
    # moto reads a rule's description from its CIDR only; a rule that references a security group keeps it in
    # the group pair, so DescribeSecurityGroupRules drops it and every terraform plan wants to set it again.
    SecurityGroupRule.description = property(
        lambda rule: rule.ip_range.get("Description") or rule.source_group.get("Description"))
    # moto only sets private_dns_name when the VPC has DNS hostnames, but ECS task ENIs always read it.
    NetworkInterface.private_dns_name = None
    # moto gives task ENIs a random 10.x address outside their subnet; None lets the ENI pick one inside it.
    ecs_models.random_private_ip = lambda: None
    # moto's default moves a task one step towards STOPPED on each DescribeTasks; the scheduler owns it now.
    state_manager.set_transition(model_name="ecs::task", transition={"progression": "manual", "times": math.inf})


# --- control API and server -------------------------------------------------------------------------------

def control(request: Request) -> tuple[int, object]:
    route = (request.method, request.path.rstrip("/"))
    body = request.get_json(force=True, silent=True) or {}
    if route == ("GET", "/_casey/health"):
        return 200, {"ok": True}
    if route == ("POST", "/_casey/iam/enforce"):
        if not isinstance(body.get("enabled"), bool):
            return 400, {"error": "body must be {\"enabled\": true|false}"}
        # moto enforces once its request counter reaches INITIAL_NO_AUTH_ACTION_COUNT.
        settings.INITIAL_NO_AUTH_ACTION_COUNT = 0 if body["enabled"] else math.inf
        return 200, {"enabled": body["enabled"]}
    if route == ("POST", "/_casey/ecs/fail-deployments"):
        count = body.get("count", 1)
        if not all(isinstance(body.get(k), str) and body[k] for k in ("cluster", "service", "reason")) \
                or not isinstance(count, int) or count < 0:
            return 400, {"error": "body must be {\"cluster\", \"service\", \"reason\", \"count\": int >= 0}"}
        key = (body["cluster"].split("/")[-1], body["service"].split("/")[-1])
        with LOCK:
            if count:
                FAILURES[key] = [body["reason"], count]
            else:
                FAILURES.pop(key, None)
        return 200, {"cluster": key[0], "service": key[1], "reason": body["reason"], "count": count}
    if route == ("GET", "/_casey/ecs/tasks"):
        with LOCK:
            return 200, [task_info(task) for _, _, backend in list(ecs_backends.iter_backends())
                         for tasks in backend.tasks.values() for task in tasks.values()
                         if hasattr(task, "casey_launched")]
    if route == ("GET", "/_casey/rules"):
        return 200, dict(RULES)
    if route == ("POST", "/_casey/rules"):
        if not body or not isinstance(body, dict) or not all(k in RULES and isinstance(v, bool) for k, v in body.items()):
            return 400, {"error": f"body must be an object of rule names to true|false; rules: {sorted(RULES)}"}
        with LOCK:
            RULES.update(body)
        return 200, dict(RULES)
    if route == ("GET", "/_casey/iam/propagation"):
        return 200, {"seconds": IAM_PROPAGATION_SECONDS}
    if route == ("POST", "/_casey/iam/propagation"):
        return set_iam_propagation(body.get("seconds") if isinstance(body, dict) else None)
    if route == ("GET", "/_casey/ecr/registry"):
        return 200, {"registry": BACKING_REGISTRY, "effective": backing_registry()}
    if route == ("POST", "/_casey/ecr/registry"):
        return set_registry(body.get("registry", "") if isinstance(body, dict) else "")
    if route == ("GET", "/_casey/ecs/read-lag"):
        return 200, {"seconds": READ_LAG["seconds"]}
    if route == ("POST", "/_casey/ecs/read-lag"):
        seconds = body.get("seconds") if isinstance(body, dict) else None
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 <= seconds <= 600:
            return 400, {"error": "body must be {\"seconds\": S} with 0 <= S <= 600 (0 switches the lag off)"}
        with LOCK:
            if seconds and not READ_LAG["seconds"]:
                READ_LAG["since"] = time.monotonic()
            if not seconds:
                SNAPSHOTS.clear()
            READ_LAG["seconds"] = float(seconds)
        return 200, {"seconds": READ_LAG["seconds"]}
    if route == ("GET", "/_casey/ecs/rollout-seconds"):
        return 200, {"seconds": ROLLOUT_SECONDS}
    if route == ("POST", "/_casey/ecs/rollout-seconds"):
        return set_rollout_seconds(body.get("seconds") if isinstance(body, dict) else None)
    if route == ("GET", "/_casey/faults"):
        now = time.monotonic()
        with FAULTS_LOCK:
            return 200, [fault_view(f) for f in FAULTS if _active(f, now)]
    if route == ("POST", "/_casey/faults"):
        return configure_fault(body if isinstance(body, dict) else {})
    if route == ("DELETE", "/_casey/faults"):
        with FAULTS_LOCK:
            cleared = len(FAULTS)
            FAULTS.clear()
        return 200, {"cleared": cleared}
    if route == ("GET", "/_casey/runner"):
        return 200, runner_view()
    if route == ("POST", "/_casey/runner"):
        return configure_runner(body if isinstance(body, dict) else {"mode": None})
    return 404, {"error": f"no control endpoint {request.method} {request.path}"}


def set_rollout_seconds(seconds) -> tuple[int, dict]:
    """POST /_casey/ecs/rollout-seconds: how long a task stays PENDING after its launch (--rollout-seconds)."""
    global ROLLOUT_SECONDS
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 <= seconds <= 600:
        return 400, {"error": "body must be {\"seconds\": S} with 0 <= S <= 600"}
    ROLLOUT_SECONDS = float(seconds)
    return 200, {"seconds": ROLLOUT_SECONDS}


def set_iam_propagation(seconds) -> tuple[int, dict]:
    global IAM_PROPAGATION_SECONDS
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 <= seconds <= 600:
        return 400, {"error": "body must be {\"seconds\": S} with 0 <= S <= 600 (0: attachments count at once)"}
    IAM_PROPAGATION_SECONDS = float(seconds)
    return 200, {"seconds": IAM_PROPAGATION_SECONDS}


def loopback_registry(value) -> str | None:
    """value if it is HOST:PORT on loopback, else None. The registry is only ever reached on this machine."""
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9.:\[\]-]+:[0-9]{1,5}", value):
        return None
    host = value.rpartition(":")[0].strip("[]")
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    return value if loopback and 0 < int(value.rpartition(":")[2]) < 65536 else None


def set_registry(value) -> tuple[int, dict]:
    global BACKING_REGISTRY
    if value is not None and loopback_registry(value) is None:
        return 400, {"error": "body must be {\"registry\": \"127.0.0.1:PORT\"} (a loopback HOST:PORT), or "
                              "{\"registry\": null} to remove it"}
    with LOCK:
        BACKING_REGISTRY = value
    return 200, {"registry": BACKING_REGISTRY, "effective": backing_registry()}


def make_app():
    moto_app = DomainDispatcherApplication(create_backend_app)

    def app(environ, start_response):
        if not environ.get("PATH_INFO", "").startswith("/_casey/"):  # the control API is never faulted
            fault = take_fault(environ)
            answer = fault and fault_response(fault, environ, start_response)
            if answer is not None:
                return answer
            return moto_app(environ, start_response)
        status, payload = control(Request(environ))
        return Response(json.dumps(payload), status, mimetype="application/json")(environ, start_response)

    return app


def seed_users(names: list[str]) -> dict:
    iam = iam_backends[DEFAULT_ACCOUNT_ID]["global"]
    users = {}
    for name in names:
        user = iam.create_user(region_name="us-east-1", user_name=name)
        key = iam.create_access_key(name)
        users[name] = {"access_key_id": key.access_key_id, "secret_access_key": key.secret_access_key,
                       "arn": user.arn}
    return {"account_id": DEFAULT_ACCOUNT_ID, "users": users}


def main(argv: list[str] | None = None) -> None:
    global ROLLOUT_SECONDS, ENDPOINT_URL, TASK_ROLE, IAM_PROPAGATION_SECONDS, BACKING_REGISTRY
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000,
                        help="0 picks a free port (see endpoint_url in the seed file)")
    parser.add_argument("--seed-file", help="written atomically once the server accepts requests")
    parser.add_argument("--user", action="append", help=f"IAM user to seed (repeatable; default {DEFAULT_USERS})")
    parser.add_argument("--rollout-seconds", type=float, default=ROLLOUT_SECONDS,
                        help="time for an ECS task to go from PENDING to RUNNING (or to fail)")
    parser.add_argument("--task-role-user",
                        help="seeded user whose keys the task runner hands each task in place of the ECS task "
                             "role (default casey_localdev_service, or the last --user if that one is not seeded)")
    parser.add_argument("--iam-propagation-seconds", type=float, default=IAM_PROPAGATION_SECONDS,
                        help="how long a new IAM policy attachment or default version takes to count under "
                             "enforcement (IAM is eventually consistent)")
    parser.add_argument("--registry", metavar="HOST:PORT",
                        help="a loopback registry that backs the emulated ECR (basic auth AWS / <account>-auth-token)")
    args = parser.parse_args(argv)
    users = args.user or DEFAULT_USERS
    if args.registry is not None and loopback_registry(args.registry) is None:
        parser.error(f"--registry {args.registry}: must be HOST:PORT on loopback, e.g. 127.0.0.1:5000")
    if not 0 <= args.iam_propagation_seconds <= 600:
        parser.error("--iam-propagation-seconds must be between 0 and 600")
    if args.task_role_user is None:
        default = "casey_localdev_service"
        args.task_role_user = default if default in users else users[-1] if len(users) > 1 else None  # 1st: admin
    elif args.task_role_user not in users:
        parser.error(f"--task-role-user {args.task_role_user} is not a seeded --user")
    if moto.__version__ != "5.2.1":  # the patches below lean on moto internals
        print(f"casey-emulator: warning: written for moto 5.2.1, running on {moto.__version__}", file=sys.stderr)
    ROLLOUT_SECONDS = args.rollout_seconds
    IAM_PROPAGATION_SECONDS, BACKING_REGISTRY = args.iam_propagation_seconds, args.registry
    if args.seed_file and os.path.exists(args.seed_file):
        os.remove(args.seed_file)  # the file appearing is the readiness signal: never leave a stale one
    install_patches()
    seed = seed_users(users)
    if args.task_role_user:
        TASK_ROLE = {"name": args.task_role_user, **seed["users"][args.task_role_user]}
    server = make_server(args.host, args.port, make_app(), threaded=True)  # bound and listening from here on
    port = server.server_address[1]
    threading.Thread(target=scheduler_loop, daemon=True, name="ecs-scheduler").start()
    seed["endpoint_url"] = f"http://{args.host}:{port}"
    ENDPOINT_URL = f"http://{'127.0.0.1' if args.host in ('', '0.0.0.0') else args.host}:{port}"
    # SIGTERM would end Python without cleanup: turn it into SystemExit so the finally below runs. Installed
    # before the seed file, the readiness signal, appears.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    if args.seed_file:
        tmp = f"{args.seed_file}.tmp{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(seed, f, indent=2)
        os.replace(tmp, args.seed_file)
    print(f"casey-emulator: listening on {seed['endpoint_url']}", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        # A second SIGTERM or Ctrl-C must not cut the (bounded) cleanup short and leave containers behind.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        server.server_close()
        stop_all_runs()  # task processes and containers must not outlive the emulator


if __name__ == "__main__":
    main()
