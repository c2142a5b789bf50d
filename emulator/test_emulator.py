"""Starts casey_emulator.py on a free port and checks each extension through boto3, as an outside client would.

Run: ~/.cache/casey-deploy/venv/bin/python -m pytest -q emulator/test_emulator.py
"""

import contextlib
import hashlib
import http.client
import ipaddress
import os
import shutil
import signal
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import boto3
import botocore.exceptions
import pytest

EMULATOR = Path(__file__).with_name("casey_emulator.py")
REPO = EMULATOR.parents[1]
# Where the project builds the real backend (see backend/README.md).
BACKEND_TARGET = Path.home() / ".cache/casey-deploy/backend-target"
ROLLOUT = 0.4
PULL_ERROR = "CannotPullContainerError: pull image manifest has been retried 5 time(s): app:bad not found"
ECR = "123456789012.dkr.ecr.us-east-1.amazonaws.com"
FIXTURES = EMULATOR.with_name("fixtures")


@contextlib.contextmanager
def running_emulator(directory, *args):
    """An emulator on a free port; yields its seed (plus "url" and "proc"). Stopped with SIGTERM at the end."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    seed_file = directory / "seed.json"
    with open(directory / "emulator.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, str(EMULATOR), "--host", "127.0.0.1", "--port", str(port),
                                 "--seed-file", str(seed_file), "--rollout-seconds", str(ROLLOUT), *args],
                                stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while not seed_file.exists():  # the seed file appearing is the readiness signal
            assert proc.poll() is None, "emulator exited during start-up"
            assert time.monotonic() < deadline, "emulator did not write its seed file"
            time.sleep(0.05)
        seed = json.loads(seed_file.read_text())
        seed["url"] = f"http://127.0.0.1:{port}"
        seed["proc"] = proc
        yield seed
    finally:
        proc.terminate()
        proc.wait(30)  # it stops its task processes first (SIGTERM, SIGKILL after 10 s)


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    with running_emulator(tmp_path_factory.mktemp("emulator")) as seed:
        yield seed


def client(emulator, service, user="casey_aniruddh", key=None):
    if key is None:
        creds = emulator["users"][user]
        key = (creds["access_key_id"], creds["secret_access_key"])
    return boto3.client(service, endpoint_url=emulator["url"], region_name="us-east-1",
                        aws_access_key_id=key[0], aws_secret_access_key=key[1])


def control(emulator, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(emulator["url"] + path, data=data, method="GET" if data is None else "POST")
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def wait_for(predicate, timeout=10):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.1)


def internet_gateway(ec2, vpc):
    """An internet gateway and the main route table's 0.0.0.0/0 route to it: a public subnet, where a Fargate
    task with a public IP reaches ECR."""
    gateway = ec2.create_internet_gateway()["InternetGateway"]["InternetGatewayId"]
    ec2.attach_internet_gateway(InternetGatewayId=gateway, VpcId=vpc)
    main = ec2.describe_route_tables(Filters=[{"Name": "vpc-id", "Values": [vpc]},
                                              {"Name": "association.main", "Values": ["true"]}])["RouteTables"][0]
    ec2.create_route(RouteTableId=main["RouteTableId"], DestinationCidrBlock="0.0.0.0/0", GatewayId=gateway)
    return gateway


def ecr_endpoints(emulator, vpc, subnets, services=("ecr.api", "ecr.dkr")):
    """Interface endpoints (private DNS) for `services` and an S3 gateway endpoint on the main route table:
    what a Fargate task without a public IP or NAT needs to pull from ECR."""
    ec2 = client(emulator, "ec2")
    for service in services:
        ec2.create_vpc_endpoint(VpcId=vpc, ServiceName=f"com.amazonaws.us-east-1.{service}",
                                VpcEndpointType="Interface", SubnetIds=subnets, PrivateDnsEnabled=True)
    main = ec2.describe_route_tables(Filters=[{"Name": "vpc-id", "Values": [vpc]},
                                              {"Name": "association.main", "Values": ["true"]}])["RouteTables"][0]
    ec2.create_vpc_endpoint(VpcId=vpc, ServiceName="com.amazonaws.us-east-1.s3", VpcEndpointType="Gateway",
                            RouteTableIds=[main["RouteTableId"]])


def manifest(name):
    """An image manifest whose layer digest (and so moto's imageDigest) is unique to `name`."""
    digest = "sha256:" + hashlib.sha256(name.encode()).hexdigest()
    return json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                       "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": 2,
                                  "digest": digest},
                       "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "size": 3,
                                   "digest": digest}]})


def push_image(emulator, repository, *tags):
    """Each tag as its own image in the emulated ECR (PutImage), as `docker push` leaves it there."""
    ecr = client(emulator, "ecr")
    with contextlib.suppress(ecr.exceptions.RepositoryAlreadyExistsException):
        ecr.create_repository(repositoryName=repository)
    for tag in tags:
        ecr.put_image(repositoryName=repository, imageTag=tag, imageManifest=manifest(f"{repository}:{tag}"))


@pytest.fixture(scope="module")
def net(emulator):
    ec2, ecs = client(emulator, "ec2"), client(emulator, "ecs")
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    internet_gateway(ec2, vpc)
    subnets = [ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.0.{i}.0/24", AvailabilityZone=f"us-east-1{az}")
               ["Subnet"]["SubnetId"] for i, az in ((1, "a"), (2, "b"))]
    sg = ec2.create_security_group(GroupName="svc", Description="svc", VpcId=vpc)["GroupId"]
    ecs.create_cluster(clusterName="casey")
    push_image(emulator, "app", "1", "2", "bad")
    for tag in ("1", "2", "bad"):  # revisions 1, 2, 3
        ecs.register_task_definition(
            family="app", networkMode="awsvpc", requiresCompatibilities=["FARGATE"], cpu="256", memory="512",
            containerDefinitions=[{"name": "app", "image": f"{ECR}/app:{tag}", "portMappings": [{"containerPort": 8080}],
                                   "environment": [{"name": "PORT", "value": "8080"}]}])
    return {"vpc": vpc, "subnets": subnets, "sg": sg}


def create_service(emulator, net, name, desired=2, task_definition="app:1", **extra):
    return client(emulator, "ecs").create_service(
        cluster="casey", serviceName=name, taskDefinition=task_definition, desiredCount=desired, launchType="FARGATE",
        networkConfiguration={"awsvpcConfiguration": {"subnets": net["subnets"], "securityGroups": [net["sg"]],
                                                      "assignPublicIp": "ENABLED"}}, **extra)["service"]


def describe(emulator, name):
    return client(emulator, "ecs").describe_services(cluster="casey", services=[name])["services"][0]


def settled(emulator, name):
    service = describe(emulator, name)
    deployments = service["deployments"]
    return service if len(deployments) == 1 and deployments[0]["rolloutState"] == "COMPLETED" else None


def service_tasks(emulator, name, status="RUNNING"):
    ecs = client(emulator, "ecs")
    arns = ecs.list_tasks(cluster="casey", serviceName=name, desiredStatus=status)["taskArns"]
    return ecs.describe_tasks(cluster="casey", tasks=arns)["tasks"] if arns else []


def public_ips(emulator, tasks):
    eni_ids = [d["value"] for t in tasks for d in t["attachments"][0]["details"] if d["name"] == "networkInterfaceId"]
    enis = client(emulator, "ec2").describe_network_interfaces(NetworkInterfaceIds=eni_ids)["NetworkInterfaces"]
    return [eni["Association"]["PublicIp"] for eni in enis]


def test_seeded_users_and_control_api(emulator):
    assert emulator["account_id"] == "123456789012"
    assert set(emulator["users"]) == {"casey_aniruddh", "casey_localdev_service"}
    for name, user in emulator["users"].items():
        assert user["arn"] == f"arn:aws:iam::123456789012:user/{name}"
        assert client(emulator, "sts", name).get_caller_identity()["Arn"] == user["arn"]
    assert control(emulator, "/_casey/health") == (200, {"ok": True})
    assert control(emulator, "/_casey/nope")[0] == 404
    assert control(emulator, "/_casey/iam/enforce", {"enabled": "yes"})[0] == 400
    assert control(emulator, "/_casey/ecs/fail-deployments", {"cluster": "casey"})[0] == 400


def test_appautoscaling_tags(emulator, net):
    create_service(emulator, net, "scaled", desired=1)
    aas = client(emulator, "application-autoscaling")
    aas.register_scalable_target(ServiceNamespace="ecs", ResourceId="service/casey/scaled",
                                 ScalableDimension="ecs:service:DesiredCount", MinCapacity=1, MaxCapacity=3,
                                 Tags={"app": "casey"})
    arn = aas.describe_scalable_targets(ServiceNamespace="ecs")["ScalableTargets"][0]["ScalableTargetARN"]
    assert aas.list_tags_for_resource(ResourceARN=arn)["Tags"] == {"app": "casey"}
    aas.tag_resource(ResourceARN=arn, Tags={"env": "dev"})
    aas.untag_resource(ResourceARN=arn, TagKeys=["app"])
    assert aas.list_tags_for_resource(ResourceARN=arn)["Tags"] == {"env": "dev"}


def test_service_round_trips_what_was_sent(emulator, net):
    sent = {
        "deploymentConfiguration": {"deploymentCircuitBreaker": {"enable": True, "rollback": True},
                                    "maximumPercent": 150, "minimumHealthyPercent": 50},
        "availabilityZoneRebalancing": "DISABLED", "enableECSManagedTags": True, "enableExecuteCommand": True,
        "propagateTags": "SERVICE", "healthCheckGracePeriodSeconds": 30, "platformVersion": "1.4.0",
    }
    create_service(emulator, net, "roundtrip", desired=0, **sent)
    service = describe(emulator, "roundtrip")
    assert {k: service.get(k) for k in sent} == sent
    assert service["taskDefinition"].endswith(":task-definition/app:1")
    assert service["networkConfiguration"]["awsvpcConfiguration"]["assignPublicIp"] == "ENABLED"
    ecs = client(emulator, "ecs")
    ecs.update_service(cluster="casey", service="roundtrip", taskDefinition="app:2",
                       deploymentConfiguration={"deploymentCircuitBreaker": {"enable": False, "rollback": False}})
    service = describe(emulator, "roundtrip")
    assert service["taskDefinition"].endswith(":task-definition/app:2")  # an ARN, as ECS answers
    assert service["deploymentConfiguration"] == {"deploymentCircuitBreaker": {"enable": False, "rollback": False},
                                                  "maximumPercent": 150, "minimumHealthyPercent": 50}
    defaults = describe(emulator, "scaled")
    assert defaults["deploymentConfiguration"]["maximumPercent"] == 200
    assert defaults["availabilityZoneRebalancing"] == "ENABLED"


def test_scheduler_runs_tasks_with_loopback_public_ips(emulator, net):
    created = create_service(emulator, net, "web")
    first = describe(emulator, "web")  # the rollout is observable before it completes
    assert first["deployments"][0]["rolloutState"] == "IN_PROGRESS" and first["pendingCount"] == 2
    service = wait_for(lambda: settled(emulator, "web"))
    assert service and service["runningCount"] == 2 and service["pendingCount"] == 0
    deployment = service["deployments"][0]
    assert deployment["id"] == created["deployments"][0]["id"] and deployment["runningCount"] == 2
    messages = [e["message"] for e in service["events"]]
    assert messages[0] == "(service web) has reached a steady state."
    assert messages[1] == f"(service web) (deployment {deployment['id']}) deployment completed."
    assert messages[2].startswith("(service web) has started 2 tasks: (task ")

    ecs = client(emulator, "ecs")
    arns = ecs.list_tasks(cluster="casey", serviceName="web")["taskArns"]
    assert len(arns) == 2
    assert sorted(ecs.list_tasks(cluster="casey", startedBy=deployment["id"])["taskArns"]) == sorted(arns)
    assert len(ecs.list_tasks(cluster="casey", family="app")["taskArns"]) >= 2
    for _ in range(5):  # moto would walk the tasks towards STOPPED here
        tasks = ecs.describe_tasks(cluster="casey", tasks=arns)["tasks"]
    for task in tasks:
        assert (task["lastStatus"], task["desiredStatus"], task["launchType"]) == ("RUNNING", "RUNNING", "FARGATE")
        assert task["group"] == "service:web" and task["startedBy"] == deployment["id"]
        assert [c["lastStatus"] for c in task["containers"]] == ["RUNNING"]
        assert {d["name"] for d in task["attachments"][0]["details"]} >= {"networkInterfaceId", "subnetId",
                                                                          "privateIPv4Address"}
    ips = public_ips(emulator, tasks)
    assert len(set(ips)) == 2
    assert all(ipaddress.ip_address(ip) in ipaddress.ip_network("127.0.0.0/8") and ip != "127.0.0.1" for ip in ips)
    debug = [t for t in control(emulator, "/_casey/ecs/tasks")[1] if t["service"] == "web"]
    assert sorted(t["public_ip"] for t in debug) == sorted(ips)


def test_new_deployment_replaces_tasks_and_scaling(emulator, net):
    create_service(emulator, net, "api")
    assert wait_for(lambda: settled(emulator, "api"))
    old_tasks = service_tasks(emulator, "api")
    old_ips = public_ips(emulator, old_tasks)
    old_id = describe(emulator, "api")["deployments"][0]["id"]
    ecs = client(emulator, "ecs")

    ecs.update_service(cluster="casey", service="api", forceNewDeployment=True)
    rolling = describe(emulator, "api")["deployments"]
    assert [(d["status"], d["rolloutState"]) for d in rolling] == [("PRIMARY", "IN_PROGRESS"), ("ACTIVE", "COMPLETED")]
    assert rolling[0]["id"] != old_id
    service = wait_for(lambda: settled(emulator, "api"))
    assert service["deployments"][0]["id"] == rolling[0]["id"] and service["runningCount"] == 2
    new_tasks = service_tasks(emulator, "api")
    assert not {t["taskArn"] for t in new_tasks} & {t["taskArn"] for t in old_tasks}
    assert not set(public_ips(emulator, new_tasks)) & set(old_ips)
    stopped = ecs.describe_tasks(cluster="casey", tasks=[t["taskArn"] for t in old_tasks])["tasks"]
    assert {(t["lastStatus"], t["stoppedReason"]) for t in stopped} == {
        ("STOPPED", f"Scaling activity initiated by (deployment {old_id})")}

    ecr_endpoints(emulator, net["vpc"], net["subnets"])  # without a public IP, tasks reach ECR through these
    network = describe(emulator, "api")["networkConfiguration"]
    network["awsvpcConfiguration"]["assignPublicIp"] = "DISABLED"
    ecs.update_service(cluster="casey", service="api", networkConfiguration=network)
    assert len(describe(emulator, "api")["deployments"]) == 2  # only new tasks can change their network
    assert wait_for(lambda: settled(emulator, "api"))
    assert [t["public_ip"] for t in control(emulator, "/_casey/ecs/tasks")[1]
            if t["service"] == "api" and t["last_status"] == "RUNNING"] == [None, None]

    ecs.update_service(cluster="casey", service="api", desiredCount=3)
    assert wait_for(lambda: len(service_tasks(emulator, "api")) == 3 and describe(emulator, "api")["runningCount"] == 3)
    ecs.update_service(cluster="casey", service="api", desiredCount=0)
    assert service_tasks(emulator, "api") == []
    ecs.delete_service(cluster="casey", service="api")
    assert describe(emulator, "api")["status"] == "INACTIVE"


def test_failed_deployment_rolls_back(emulator, net):
    create_service(emulator, net, "flaky", desired=1,
                   deploymentConfiguration={"deploymentCircuitBreaker": {"enable": True, "rollback": True}})
    good = wait_for(lambda: settled(emulator, "flaky"))["deployments"][0]
    assert control(emulator, "/_casey/ecs/fail-deployments",
                   {"cluster": "casey", "service": "flaky", "reason": PULL_ERROR, "count": 1})[0] == 200
    ecs = client(emulator, "ecs")
    ecs.update_service(cluster="casey", service="flaky", taskDefinition="app:3")
    bad_id = describe(emulator, "flaky")["deployments"][0]["id"]

    service = wait_for(lambda: settled(emulator, "flaky") if describe(emulator, "flaky")["deployments"][0]["id"]
                       != bad_id else None)
    assert service, "the rollback deployment did not complete"
    rollback = service["deployments"][0]
    assert rollback["id"] not in (good["id"], bad_id) and rollback["taskDefinition"] == good["taskDefinition"]
    assert service["taskDefinition"] == good["taskDefinition"] and service["runningCount"] == 1
    messages = [e["message"] for e in service["events"]]
    assert f"(service flaky) (deployment {bad_id}) deployment failed: tasks failed to start." in messages
    assert f"(service flaky) rolling back to deployment {good['id']}." in messages
    failed = [t for t in service_tasks(emulator, "flaky", "STOPPED") if t["startedBy"] == bad_id]
    assert len(failed) == 3 and {t["stoppedReason"] for t in failed} == {PULL_ERROR}
    assert service_tasks(emulator, "flaky")[0]["taskDefinitionArn"] == good["taskDefinition"]


def test_security_group_rule_descriptions(emulator, net):
    ec2 = client(emulator, "ec2")
    alb = ec2.create_security_group(GroupName="alb", Description="alb",
                                    VpcId=ec2.describe_security_groups(GroupIds=[net["sg"]])
                                    ["SecurityGroups"][0]["VpcId"])["GroupId"]
    ec2.authorize_security_group_ingress(GroupId=net["sg"], IpPermissions=[{
        "IpProtocol": "tcp", "FromPort": 3001, "ToPort": 3001,
        "UserIdGroupPairs": [{"GroupId": alb, "Description": "Backend port from the ALB"}]}])
    rules = ec2.describe_security_group_rules(Filters=[{"Name": "group-id", "Values": [net["sg"]]}])
    assert [r.get("Description") for r in rules["SecurityGroupRules"] if r.get("ReferencedGroupInfo")] == [
        "Backend port from the ALB"]


def test_iam_enforcement_switch(emulator):
    # Attachments count at once here; test_iam_attachments_take_time_to_propagate covers the delay.
    assert control(emulator, "/_casey/iam/propagation", {"seconds": 0}) == (200, {"seconds": 0})
    iam = client(emulator, "iam")
    iam.attach_user_policy(UserName="casey_aniruddh", PolicyArn="arn:aws:iam::aws:policy/AmazonECS_FullAccess")
    # Scoped to an ARN and a condition: moto alone would never let this through (see element_matches).
    iam.put_user_policy(UserName="casey_localdev_service", PolicyName="scoped", PolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [{
            "Effect": "Allow", "Action": "ecs:DescribeClusters",
            "Resource": "arn:aws:ecs:us-east-1:123456789012:cluster/casey",
            "Condition": {"StringEquals": {"aws:ResourceTag/Project": "casey"}}}]}))
    assert control(emulator, "/_casey/iam/enforce", {"enabled": True}) == (200, {"enabled": True})
    try:
        client(emulator, "ecs").list_clusters()
        client(emulator, "ecs", "casey_localdev_service").describe_clusters(clusters=["casey"])
        with pytest.raises(botocore.exceptions.ClientError, match="AccessDeniedException.*ecs:ListClusters"):
            client(emulator, "ecs", "casey_localdev_service").list_clusters()
        with pytest.raises(botocore.exceptions.ClientError, match="UnrecognizedClientException"):
            client(emulator, "ecs", key=("AKIDUNKNOWNKEY000000", "secret")).list_clusters()
        with pytest.raises(botocore.exceptions.ClientError, match="AccessDenied.*iam:ListUsers"):
            client(emulator, "iam").list_users()
    finally:
        assert control(emulator, "/_casey/iam/enforce", {"enabled": False})[0] == 200
        assert control(emulator, "/_casey/iam/propagation", {"seconds": 3})[0] == 200
    client(emulator, "ecs", key=("AKIDUNKNOWNKEY000000", "secret")).list_clusters()


# --- task runner ------------------------------------------------------------------------------------------

# Stands in for casey-backend, so that the runner is tested without it.
STANDIN = r"""#!/usr/bin/env python3
# Records its environment as $STANDIN_DIR/<pid>.env.json, exits with $STANDIN_EXIT if set, else binds
# $CASEY_BIND_ADDR and answers GET /health: 200, or 503 while $STANDIN_GATE names a missing file.
# A SIGTERM is recorded as $STANDIN_DIR/<pid>.sigterm.
import http.server, json, os, pathlib, signal, sys

out = pathlib.Path(os.environ["STANDIN_DIR"])
signal.signal(signal.SIGTERM, lambda *_: ((out / f"{os.getpid()}.sigterm").touch(), os._exit(0)))
(out / "tmp").mkdir(exist_ok=True)
(out / "tmp" / str(os.getpid())).write_text(json.dumps(dict(os.environ)))
(out / "tmp" / str(os.getpid())).rename(out / f"{os.getpid()}.env.json")
if os.environ.get("STANDIN_EXIT"):
    sys.exit(int(os.environ["STANDIN_EXIT"]))
gate = os.environ.get("STANDIN_GATE")


class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/health" and (not gate or os.path.exists(gate)) else 503)
        self.end_headers()

    def log_message(self, *args):
        pass


host, port = os.environ["CASEY_BIND_ADDR"].rsplit(":", 1)
http.server.HTTPServer((host, int(port)), Health).serve_forever()
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def task_network(emulator, port, task_definitions):
    """A VPC, the cluster "casey" and task definitions {family: (image, environment)}, all on `port`."""
    ec2, ecs = client(emulator, "ec2"), client(emulator, "ecs")
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    internet_gateway(ec2, vpc)
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.1.0/24", AvailabilityZone="us-east-1a")["Subnet"]
    sg = ec2.create_security_group(GroupName="svc", Description="svc", VpcId=vpc)["GroupId"]
    ecs.create_cluster(clusterName="casey")
    for family, (image, environment) in task_definitions.items():
        push_image(emulator, *image.split("/", 1)[1].split(":"))
        ecs.register_task_definition(
            family=family, networkMode="awsvpc", requiresCompatibilities=["FARGATE"], cpu="256", memory="512",
            containerDefinitions=[{"name": "app", "image": image, "portMappings": [{"containerPort": port}],
                                   "environment": [{"name": k, "value": v} for k, v in environment.items()]}])
    return {"subnets": [subnet["SubnetId"]], "sg": sg}


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    path = tmp_path_factory.mktemp("standin") / "casey-backend"
    path.write_text(STANDIN)
    path.chmod(0o755)
    return path


STANDIN_DEFINITIONS = {
    # PORT is wrong on purpose: the runner's PORT (the container port) wins.
    "good": ("123456789012.dkr.ecr.us-east-1.amazonaws.com/casey-backend:1",
             {"CASEY_ADMIN_USER": "casey_aniruddh", "PORT": "1"}),
    "crash": ("123456789012.dkr.ecr.us-east-1.amazonaws.com/casey-backend:2", {"STANDIN_EXIT": "3"}),
}


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    """An emulator of its own (its runner config must not reach the tests above) and a network on a free port
    (a port someone has bound on 0.0.0.0 would be taken on every loopback address)."""
    with running_emulator(tmp_path_factory.mktemp("runner")) as seed:
        seed["port"] = free_port()
        seed["net"] = task_network(seed, seed["port"], STANDIN_DEFINITIONS)
        yield seed


def use_standin(emulator, standin, out, **env):
    status, config = control(emulator, "/_casey/runner", {
        "mode": "process", "backend_bin": str(standin), "env": {"STANDIN_DIR": str(out), **env},
        "log_dir": str(out / "logs"), "start_timeout": 20})
    assert status == 200, config


def standin_envs(out):
    """{pid: environment} of every stand-in process started with STANDIN_DIR=out."""
    return {int(p.name.split(".")[0]): json.loads(p.read_text()) for p in out.glob("*.env.json")}


def runner_tasks(emulator, service, status="RUNNING"):
    return [t for t in control(emulator, "/_casey/ecs/tasks")[1]
            if t["service"] == service and t["desired_status"] == status]


def alive(pid):
    """True while the process exists and is not a zombie (an orphan may wait for a reaper here)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError):
        return False


def get(ip, port, path="/health"):
    """(status, body) of GET http://ip:port/path, or (None, error)."""
    connection = http.client.HTTPConnection(ip, port, timeout=2)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    except OSError as error:
        return None, error
    finally:
        connection.close()


def test_runner_config_api(runner, standin, tmp_path):
    assert control(runner, "/_casey/runner") == (200, {"mode": "none", "task_role_user": "casey_localdev_service"})
    process = {"mode": "process", "backend_bin": str(standin)}
    for body in [{"mode": "fork"}, {"mode": "process"}, {**process, "backend_bin": "casey-backend"},
                 {**process, "backend_bin": str(tmp_path)}, {**process, "env": {"A": 1}},
                 {**process, "start_timeout": 0}, {**process, "log_dir": "logs"}, {**process, "typo": 1},
                 {"mode": "docker", "registry": "http://127.0.0.1:5000"}]:
        assert control(runner, "/_casey/runner", body)[0] == 400, body
    status, config = control(runner, "/_casey/runner", process)
    log_dir = Path(config.pop("log_dir"))
    assert status == 200 and log_dir.is_dir()  # a temp dir by default
    shutil.rmtree(log_dir)
    assert config == {**process, "env": {}, "start_timeout": 60, "task_role_user": "casey_localdev_service"}
    assert control(runner, "/_casey/runner")[1]["backend_bin"] == str(standin)
    assert control(runner, "/_casey/runner", {"mode": "none"}) == (
        200, {"mode": "none", "task_role_user": "casey_localdev_service"})


def test_process_task_runs_once_healthy_and_is_replaced(runner, standin, tmp_path):
    gate = tmp_path / "gate"
    use_standin(runner, standin, tmp_path, STANDIN_GATE=str(gate))
    create_service(runner, runner["net"], "gated", desired=1, task_definition="good")
    envs = wait_for(lambda: standin_envs(tmp_path))
    assert len(envs) == 1
    [(pid, env)] = envs.items()
    [task] = runner_tasks(runner, "gated")
    ip, port = task["public_ip"], runner["port"]
    assert task["runner"]["pid"] == pid and task["runner"]["bind_addr"] == f"{ip}:{port}"
    service_account = runner["users"]["casey_localdev_service"]
    assert {k: env.get(k) for k in ("PORT", "CASEY_BIND_ADDR", "AWS_ENDPOINT_URL", "AWS_REGION", "AWS_ACCESS_KEY_ID",
                                    "AWS_SECRET_ACCESS_KEY", "CASEY_ADMIN_USER")} == {
        "PORT": str(port), "CASEY_BIND_ADDR": f"{ip}:{port}", "AWS_ENDPOINT_URL": runner["url"],
        "AWS_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": service_account["access_key_id"],
        "AWS_SECRET_ACCESS_KEY": service_account["secret_access_key"], "CASEY_ADMIN_USER": "casey_aniruddh"}

    # Up but not healthy: PENDING for well beyond --rollout-seconds, and the deployment does not complete.
    assert wait_for(lambda: get(ip, port)[0] == 503)
    time.sleep(ROLLOUT * 4)
    service = describe(runner, "gated")
    assert (service["pendingCount"], service["runningCount"], service["deployments"][0]["rolloutState"]) == (
        1, 0, "IN_PROGRESS")
    assert [t["last_status"] for t in runner_tasks(runner, "gated")] == ["PENDING"]
    gate.touch()
    assert wait_for(lambda: settled(runner, "gated"))
    assert get(ip, port)[0] == 200 and alive(pid)
    [task] = runner_tasks(runner, "gated")
    assert task["last_status"] == "RUNNING" and task["runner"]["healthy"]
    assert "starting " + str(standin) in Path(task["runner"]["log_file"]).read_text()

    # A new deployment: a new process on a new address, then the old one gets SIGTERM.
    old_id = describe(runner, "gated")["deployments"][0]["id"]
    client(runner, "ecs").update_service(cluster="casey", service="gated", forceNewDeployment=True)
    assert wait_for(lambda: (s := settled(runner, "gated")) and s["deployments"][0]["id"] != old_id)
    [new] = runner_tasks(runner, "gated")
    new_pid, new_ip = new["runner"]["pid"], new["public_ip"]
    assert new_pid != pid and new_ip != ip and get(new_ip, port)[0] == 200
    assert wait_for(lambda: not alive(pid)) and (tmp_path / f"{pid}.sigterm").exists()
    assert get(ip, port)[0] is None  # nothing listens on the old address any more
    assert standin_envs(tmp_path)[new_pid]["CASEY_BIND_ADDR"] == f"{new_ip}:{port}"

    client(runner, "ecs").update_service(cluster="casey", service="gated", desiredCount=0)
    assert wait_for(lambda: not alive(new_pid)) and (tmp_path / f"{new_pid}.sigterm").exists()


def test_process_that_exits_fails_the_deployment(runner, standin, tmp_path):
    use_standin(runner, standin, tmp_path)
    create_service(runner, runner["net"], "crashy", desired=1, task_definition="good",
                   deploymentConfiguration={"deploymentCircuitBreaker": {"enable": True, "rollback": True}})
    good = wait_for(lambda: settled(runner, "crashy"))["deployments"][0]
    [good_task] = runner_tasks(runner, "crashy")
    client(runner, "ecs").update_service(cluster="casey", service="crashy", taskDefinition="crash")
    bad_id = describe(runner, "crashy")["deployments"][0]["id"]
    service = wait_for(lambda: settled(runner, "crashy") if describe(runner, "crashy")["deployments"][0]["id"]
                       != bad_id else None, timeout=20)
    assert service, "the rollback deployment did not complete"
    assert service["taskDefinition"] == good["taskDefinition"]
    assert f"(service crashy) (deployment {bad_id}) deployment failed: tasks failed to start." in [
        e["message"] for e in service["events"]]
    failed = [t for t in service_tasks(runner, "crashy", "STOPPED") if t["startedBy"] == bad_id]
    assert len(failed) == 3  # the circuit breaker's threshold
    for task in failed:
        assert (task["stoppedReason"], task["stopCode"], task["containers"][0]["exitCode"]) == (
            "Essential container in task exited (exit code 3)", "EssentialContainerExited", 3)
    crashed = [pid for pid, env in standin_envs(tmp_path).items() if env.get("STANDIN_EXIT")]
    assert len(crashed) == 3 and not any(alive(pid) for pid in crashed)
    [rolled_back] = runner_tasks(runner, "crashy")  # the rollback runs the good revision in a new process
    assert rolled_back["runner"]["pid"] != good_task["runner"]["pid"] and rolled_back["runner"]["healthy"]
    assert wait_for(lambda: not alive(good_task["runner"]["pid"]))

    # Every new task fails now (the runner's env wins over the task definition's): the deployment fails, so
    # does its rollback, and there it stops, as on ECS: no endless rollbacks, and the last good task stays.
    use_standin(runner, standin, tmp_path, STANDIN_EXIT="4")
    client(runner, "ecs").update_service(cluster="casey", service="crashy", forceNewDeployment=True)
    failing = describe(runner, "crashy")["deployments"][0]["id"]
    assert wait_for(lambda: (d := describe(runner, "crashy")["deployments"][0])["id"] != failing
                    and d["rolloutState"] == "FAILED", timeout=20)
    time.sleep(ROLLOUT * 4)
    deployments = describe(runner, "crashy")["deployments"]
    assert [d["rolloutState"] for d in deployments] == ["FAILED", "FAILED", "COMPLETED"]
    assert [t["runner"]["pid"] for t in runner_tasks(runner, "crashy")] == [rolled_back["runner"]["pid"]]
    assert get(rolled_back["public_ip"], runner["port"])[0] == 200
    client(runner, "ecs").delete_service(cluster="casey", service="crashy", force=True)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_stopping_the_emulator_stops_its_tasks(standin, tmp_path, sig):
    """SIGTERM: the emulator stops its tasks on the way out. SIGKILL (a harness's Child::kill): the kernel
    sends each task process SIGTERM (PR_SET_PDEATHSIG)."""
    out = tmp_path / "out"
    out.mkdir()
    with running_emulator(tmp_path) as emulator:
        port = free_port()
        net = task_network(emulator, port, STANDIN_DEFINITIONS)
        use_standin(emulator, standin, out)
        create_service(emulator, net, "doomed", desired=2, task_definition="good")
        assert wait_for(lambda: settled(emulator, "doomed"))
        pids = [t["runner"]["pid"] for t in runner_tasks(emulator, "doomed")]
        assert len(pids) == 2 and all(map(alive, pids))
        emulator["proc"].send_signal(sig)
        emulator["proc"].wait(30)
    assert wait_for(lambda: not any(map(alive, pids)))
    assert all((out / f"{pid}.sigterm").exists() for pid in pids)


@pytest.fixture(scope="module")
def backend_bin():
    """The real casey-backend, built or brought up to date as the project builds it (~2 min the first time)."""
    cargo = shutil.which("cargo") or str(Path.home() / ".cargo/bin/cargo")
    assert Path(cargo).exists(), "cargo is needed to build the backend (see backend/README.md)"
    subprocess.run([cargo, "build", "--quiet"], cwd=REPO / "backend", check=True, timeout=1200,
                   env={**os.environ, "CARGO_TARGET_DIR": str(BACKEND_TARGET)})
    path = BACKEND_TARGET / "debug/casey-backend"
    assert path.is_file(), f"cargo build did not produce {path}"
    return path


def test_real_backend_as_a_task(runner, backend_bin, tmp_path):
    port = runner["port"]
    push_image(runner, "casey-backend", "latest")
    client(runner, "ecs").register_task_definition(
        family="backend", networkMode="awsvpc", requiresCompatibilities=["FARGATE"], cpu="256", memory="512",
        containerDefinitions=[{
            "name": "backend", "image": "123456789012.dkr.ecr.us-east-1.amazonaws.com/casey-backend:latest",
            "portMappings": [{"containerPort": port}],
            "environment": [{"name": "CASEY_ADMIN_USER", "value": "casey_aniruddh"}]}])
    config = {"mode": "process", "backend_bin": str(backend_bin), "log_dir": str(tmp_path)}
    assert control(runner, "/_casey/runner", config)[0] == 200
    create_service(runner, runner["net"], "backend", desired=1, task_definition="backend",
                   deploymentConfiguration={"deploymentCircuitBreaker": {"enable": True, "rollback": False}})
    assert wait_for(lambda: settled(runner, "backend"), timeout=60)
    [task] = runner_tasks(runner, "backend")
    status, body = get(task["public_ip"], port)
    assert status == 200 and json.loads(body)["status"] == "ok"
    assert "casey_localdev_service" in Path(task["runner"]["log_file"]).read_text()  # its identity guard's log

    # With the admin's keys the backend refuses to start: the rollout fails as it would on ECS, and the old
    # task keeps serving.
    admin = runner["users"]["casey_aniruddh"]
    config["env"] = {"AWS_ACCESS_KEY_ID": admin["access_key_id"],
                     "AWS_SECRET_ACCESS_KEY": admin["secret_access_key"]}
    assert control(runner, "/_casey/runner", config)[0] == 200
    client(runner, "ecs").update_service(cluster="casey", service="backend", forceNewDeployment=True)
    bad_id = describe(runner, "backend")["deployments"][0]["id"]
    assert wait_for(lambda: describe(runner, "backend")["deployments"][0]["rolloutState"] == "FAILED", timeout=60)
    failed = [t for t in service_tasks(runner, "backend", "STOPPED") if t["startedBy"] == bad_id]
    assert {t["stoppedReason"] for t in failed} == {"Essential container in task exited (exit code 1)"}
    assert get(task["public_ip"], port)[0] == 200
    client(runner, "ecs").delete_service(cluster="casey", service="backend", force=True)
    assert wait_for(lambda: get(task["public_ip"], port)[0] is None, timeout=20)
    assert wait_for(lambda: not alive(task["runner"]["pid"]))
