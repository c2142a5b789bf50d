"""casey-emulator: moto 5.2.1 server plus the few AWS behaviours casey-deploy needs that moto lacks.

Run:  python3 casey_emulator.py --host 127.0.0.1 --port PORT [--seed-file PATH] [--user NAME ...]
                                [--rollout-seconds 2]
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
   (127.0.1.1, 127.0.1.2, ...; never 127.0.0.x): tools connect to it and this machine may only talk to
   loopback. moto's state manager, which moves a task towards STOPPED on every DescribeTasks, is switched
   off for ECS tasks. ListTasks honours serviceName, and desiredStatus defaults to RUNNING as in ECS.
4. IAM enforcement is switchable at runtime (moto only reads INITIAL_NO_AUTH_ACTION_COUNT at start-up), and
   users are seeded in-process so seeding does not count as requests. Denials are answered in each protocol's
   error format (moto's EC2-style XML leaves terraform with "api error UnknownError"). Policies are enforced
   per action: moto cannot name the resource of most requests, so it would never honour a statement scoped
   to ARNs or conditions (see element_matches below).
5. EC2 DescribeSecurityGroupRules drops the description of rules that reference a security group: the
   stack's ALB <-> task rules would show a diff on every plan.
6. A JSON control API under /_casey/ (see README.md): health, IAM enforcement, deployment failure
   injection, task listing.

Task runner seam: on_task_started() / on_task_stopped() are called for every task that reaches RUNNING and
for its stop; they receive the image, environment, port mappings and public IP of each container. Today they
only log; a runner that starts a real process per task replaces their bodies.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
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
_last_public_ip = 256  # 127.0.1.1 is the first address handed out

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

    Both hooks run under LOCK on the scheduler thread or a request thread: start work, do not wait for it."""
    images = ", ".join(c["image"] for c in info["containers"])
    print(f"casey-emulator: task started {info['task_arn']} ({images}) public_ip={info['public_ip']}",
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
    }


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


def _next_public_ip() -> str:
    global _last_public_ip
    _last_public_ip += 1
    if _last_public_ip % 256 in (0, 255):
        return _next_public_ip()
    n = _last_public_ip
    return f"127.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}"


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
    task.casey_public_ip = None
    task.casey_definitions = task_def.container_definitions
    eni_details = {}
    for attachment in task.attachments:
        eni_details = {d["name"]: d["value"] for d in attachment["details"]}
        ec2 = ec2_backends[backend.account_id][backend.region_name]
        eni = ec2.get_network_interface(eni_details["networkInterfaceId"])
        eni.description = f"arn:aws:ecs:{backend.region_name}:{backend.account_id}:attachment/{attachment['id']}"
        eni.requester_managed = True
        task.availability_zone = eni.subnet.availability_zone
        if network["awsvpcConfiguration"].get("assignPublicIp") == "ENABLED":
            eni.public_ip = task.casey_public_ip = _next_public_ip()
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
    return task


def _start(task: Task) -> None:
    task.last_status = "RUNNING"
    task.started_at = utcnow()
    for container in task.containers:
        container["lastStatus"] = "RUNNING"
    on_task_started(task_info(task))


def _stop(backend, task: Task, reason: str, stop_code: str, failed: bool = False) -> None:
    was_running = task.last_status == "RUNNING"
    task.last_status = task.desired_status = "STOPPED"
    task.stopped_reason, task.stop_code = reason, stop_code
    task.stopping_at = task.stopped_at = task.execution_stopped_at = utcnow()
    for container in task.containers:
        container["lastStatus"] = "STOPPED"
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
    if breaker.get("rollback") and previous:
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
        for task in deployment.live():
            if task.last_status == "PENDING" and now - task.casey_launched >= ROLLOUT_SECONDS:
                if deployment.fail_reason:
                    _stop(backend, task, deployment.fail_reason, "TaskFailedToStart", failed=True)
                    deployment.failed_tasks += 1
                else:
                    _start(task)
    primary = service.deployments[0]
    threshold = min(200, max(3, math.ceil(service.desired_count / 2)))  # ECS circuit breaker threshold
    if primary.fail_reason and primary.rollout_state == "IN_PROGRESS" and breaker.get("enable") \
            and primary.failed_tasks >= threshold:
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
    global ROLLOUT_SECONDS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000,
                        help="0 picks a free port (see endpoint_url in the seed file)")
    parser.add_argument("--seed-file", help="written atomically once the server accepts requests")
    parser.add_argument("--user", action="append", help=f"IAM user to seed (repeatable; default {DEFAULT_USERS})")
    parser.add_argument("--rollout-seconds", type=float, default=ROLLOUT_SECONDS,
                        help="time for an ECS task to go from PENDING to RUNNING (or to fail)")
    args = parser.parse_args(argv)
    if moto.__version__ != "5.2.1":  # the patches below lean on moto internals
        print(f"casey-emulator: warning: written for moto 5.2.1, running on {moto.__version__}", file=sys.stderr)
    ROLLOUT_SECONDS = args.rollout_seconds
    if args.seed_file and os.path.exists(args.seed_file):
        os.remove(args.seed_file)  # the file appearing is the readiness signal: never leave a stale one
    install_patches()
    seed = seed_users(args.user or DEFAULT_USERS)
    server = make_server(args.host, args.port, make_app(), threaded=True)  # bound and listening from here on
    port = server.server_address[1]
    threading.Thread(target=scheduler_loop, daemon=True, name="ecs-scheduler").start()
    seed["endpoint_url"] = f"http://{args.host}:{port}"
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


if __name__ == "__main__":
    main()
