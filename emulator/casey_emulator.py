"""casey-emulator: moto 5.2.1 server plus the few AWS behaviours casey-deploy needs that moto lacks.

Run:  python3 casey_emulator.py --host 127.0.0.1 --port PORT [--seed-file PATH] [--user NAME ...]
                                [--rollout-seconds 2] [--task-role-user NAME]
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

on_task_started() / on_task_stopped() are called for every task that reaches RUNNING and for its stop; they
only log. The runner itself starts at launch (PENDING) and stops with the task, see TaskRun.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import http.client
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
from moto.core.utils import utcnow  # noqa: E402
from moto.ec2 import ec2_backends  # noqa: E402
from moto.ec2.models.elastic_network_interfaces import NetworkInterface  # noqa: E402
from moto.ec2.models.security_groups import SecurityGroupRule  # noqa: E402
from moto.ec2.responses import EC2Response  # noqa: E402
from moto.ecs import models as ecs_models  # noqa: E402
from moto.ecs.exceptions import InvalidParameterException  # noqa: E402
from moto.ecs.models import Task, ecs_backends  # noqa: E402
from moto.ecs.responses import EC2ContainerServiceResponse  # noqa: E402
from moto.iam.access_control import IAMPolicyStatement  # noqa: E402
from moto.iam.models import iam_backends  # noqa: E402
from moto.moto_api import state_manager  # noqa: E402
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app  # noqa: E402

DEFAULT_USERS = ["casey_aniruddh", "casey_localdev_service"]
ROLLOUT_SECONDS = 2.0  # overridden by --rollout-seconds
# One lock for all ECS/EC2 state: request threads and the scheduler thread both mutate it.
LOCK = threading.RLock()
AAS_TAGS: dict[str, dict[str, str]] = {}  # Application Auto Scaling tags by ResourceARN
FAILURES: dict[tuple[str, str], list] = {}  # (cluster, service) -> [stoppedReason, deployments left to fail]
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
RUNNER_FIELDS = {"mode", "backend_bin", "registry", "env", "log_dir", "start_timeout"}
STOP_TIMEOUT = 10  # SIGTERM, then SIGKILL after this many seconds (as `docker stop -t 10`)
HEALTH_INTERVAL = 0.2
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
        self.log_file = os.path.join(config["log_dir"], f"{task.id}.log")
        self.pid = self.container_id = self.exit_code = None
        self.healthy = False
        self.failure: tuple[str, str, int | None] | None = None  # (stoppedReason, stopCode, exit code)
        self.stopping = threading.Event()
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
                    elif time.monotonic() - started > self.config["start_timeout"]:
                        self.failure = ("Task failed container health checks", "TaskFailedToStart", None)
                        break
                self.stopping.wait(HEALTH_INTERVAL if not self.healthy else 0.5)
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
            with RUNS_LOCK:
                RUNS.discard(self)

    def _probe(self, elapsed: float) -> bool:
        """Stands in for the container health check and the ALB's: GET /health answers 200."""
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
        with open(self.log_file, "a") as log:
            log.write(line + "\n")


class ProcessRun(TaskRun):
    """The task is a process of backend_bin, in its own session (a Ctrl-C meant for the caller does not reach
    it: the emulator stops it), with the task's environment only."""

    def _what(self) -> str:
        return f"{self.config['backend_bin']} for image {self.image}"

    def _spawn(self) -> None:
        env = {k: os.environ[k] for k in INHERITED_ENV if k in os.environ}
        env.update(self.env)
        try:
            with open(self.log_file, "ab") as log:
                # The path is read now, not at configuration: a rebuilt binary is what the next deployment runs.
                self.proc = subprocess.Popen([self.config["backend_bin"]], env=env, cwd=self.config["log_dir"],
                                             stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                             start_new_session=True, preexec_fn=_die_with_emulator)
        except OSError as error:
            raise TaskStartError(f"CannotStartContainerError: {error}") from None
        self.pid = self.proc.pid

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
        run = self._docker("run", "-d", "--pull", "never", "--network", "host", "--name", name, *env_args, image,
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
        self._docker("rm", "-f", self.container_id, timeout=60)  # reaped: a stopped task leaves no container
        for helper in (getattr(self, "waiter", None), getattr(self, "logs", None)):  # both end with the container
            try:
                helper and helper.wait(10)
            except subprocess.TimeoutExpired:
                helper.kill()
        if getattr(self, "waiter", None):
            self.exit_code = self._poll()


RUN_CLASSES = {"process": ProcessRun, "docker": DockerRun}


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
    config = RUNNER  # an injected failure stands for a pull error: no process for it
    run = config["mode"] != "none" and not deployment.fail_reason and not _shutting_down
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
        if network["awsvpcConfiguration"].get("assignPublicIp") == "ENABLED":
            eni.public_ip = task.casey_public_ip = _next_public_ip(port)
    # moto models only the first container; ECS reports one entry per container definition.
    arn_prefix = f"arn:aws:ecs:{backend.region_name}:{backend.account_id}:container/{cluster.name}/{task.id}"
    interfaces = [{"attachmentId": task.attachments[0]["id"], "privateIpv4Address": eni_details["privateIPv4Address"]}
                  ] if eni_details else []
    task.containers = [{
        "containerArn": f"{arn_prefix}/{uuid.uuid4()}", "taskArn": task.task_arn, "name": c.get("name"),
        "image": c.get("image"), "lastStatus": "PENDING", "healthStatus": "UNKNOWN", "cpu": str(c.get("cpu", 0)),
        "memory": str(c["memory"]) if c.get("memory") else None, "networkInterfaces": interfaces,
    } for c in task_def.container_definitions]
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
    for container in task.containers:
        container["lastStatus"] = "RUNNING"
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
                    _stop(backend, task, reason, stop_code, failed=True, exit_code=exit_code)
                    deployment.failed_tasks += 1
                elif run.healthy and not run.failure and task.last_status == "PENDING":
                    _start(task)
            elif task.last_status == "PENDING" and now - task.casey_launched >= ROLLOUT_SECONDS:
                if deployment.fail_reason:
                    _stop(backend, task, deployment.fail_reason, "TaskFailedToStart", failed=True)
                    deployment.failed_tasks += 1
                else:
                    _start(task)
    primary = service.deployments[0]
    threshold = min(200, max(3, math.ceil(service.desired_count / 2)))  # ECS circuit breaker threshold
    if primary.rollout_state == "IN_PROGRESS" and breaker.get("enable") and primary.failed_tasks >= threshold:
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
    def wrapper(self, *args, **kwargs):
        with LOCK:
            return method(self, *args, **kwargs)
    return wrapper


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


def authorize(self, resource: str = "*") -> None:
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


def install_patches() -> None:
    BaseResponse._authenticate_and_authorize_normal_action = authorize
    IAMPolicyStatement._check_element_matches = element_matches
    IAMPolicyStatement._check_conditions = check_conditions
    EC2ContainerServiceResponse.create_service = create_service
    EC2ContainerServiceResponse.update_service = update_service
    EC2ContainerServiceResponse.delete_service = delete_service
    EC2ContainerServiceResponse.list_tasks = list_tasks
    for cls in (EC2ContainerServiceResponse, EC2Response):
        cls.call_action = _locked(cls.call_action)
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
    if route == ("GET", "/_casey/runner"):
        return 200, runner_view()
    if route == ("POST", "/_casey/runner"):
        return configure_runner(body if isinstance(body, dict) else {"mode": None})
    return 404, {"error": f"no control endpoint {request.method} {request.path}"}


def make_app():
    moto_app = DomainDispatcherApplication(create_backend_app)

    def app(environ, start_response):
        if not environ.get("PATH_INFO", "").startswith("/_casey/"):
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
    global ROLLOUT_SECONDS, ENDPOINT_URL, TASK_ROLE
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
    args = parser.parse_args(argv)
    users = args.user or DEFAULT_USERS
    if args.task_role_user is None:
        default = "casey_localdev_service"
        args.task_role_user = default if default in users else users[-1] if len(users) > 1 else None  # 1st: admin
    elif args.task_role_user not in users:
        parser.error(f"--task-role-user {args.task_role_user} is not a seeded --user")
    if moto.__version__ != "5.2.1":  # the patches below lean on moto internals
        print(f"casey-emulator: warning: written for moto 5.2.1, running on {moto.__version__}", file=sys.stderr)
    ROLLOUT_SECONDS = args.rollout_seconds
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
