"""Starts casey_emulator.py on a free port and checks each extension through boto3, as an outside client would.

Run: ~/.cache/casey-deploy/venv/bin/python -m pytest -q emulator/test_emulator.py
"""

import base64
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
import urllib.parse
import urllib.request
from pathlib import Path

import boto3
import botocore.config
import botocore.exceptions
import botocore.session
import pytest
from botocore.validate import ParamValidator

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


# --- AWS rules (each test fails without its rule) ---------------------------------------------------------

def iam_error(call):
    with pytest.raises(botocore.exceptions.ClientError) as raised:
        call()
    return (raised.value.response["Error"]["Code"], raised.value.response["Error"]["Message"],
            raised.value.response["ResponseMetadata"]["HTTPStatusCode"])


def small_policy(*actions):
    return json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": list(actions) or ["ecs:ListClusters"], "Resource": "*"}]})


def test_policy_size_quota(emulator):
    iam = client(emulator, "iam")
    oversize = (FIXTURES / "oversize-admin-policy.json").read_text()
    assert len("".join(oversize.split())) > 9000  # the stack's single admin policy, rendered by terraform
    quota = ("LimitExceeded", "Cannot exceed quota for PolicySize: 6144", 409)
    assert iam_error(lambda: iam.create_policy(PolicyName="admin", PolicyDocument=oversize)) == quota
    # Whitespace does not count: 6,144 characters of policy spread over many lines is fine.
    statement = {"Effect": "Allow", "Action": "ecs:ListClusters", "Resource": "*"}
    document = {"Version": "2012-10-17", "Statement": [statement]}
    filler = 6144 - len(json.dumps(document, separators=(",", ":")).replace(" ", "")) - len(',"Sid":""')
    statement["Sid"] = "A" * filler
    roomy = json.dumps(document, indent=8)
    assert len("".join(roomy.split())) == 6144
    arn = iam.create_policy(PolicyName="roomy", PolicyDocument=roomy)["Policy"]["Arn"]
    assert iam_error(lambda: iam.create_policy_version(PolicyArn=arn, PolicyDocument=oversize)) == quota
    statement["Sid"] += "A"
    assert iam_error(lambda: iam.create_policy(PolicyName="one-over", PolicyDocument=json.dumps(document))) == quota
    assert control(emulator, "/_casey/rules", {"iam_policy_size": False})[1]["iam_policy_size"] is False
    try:
        iam.create_policy(PolicyName="admin", PolicyDocument=oversize)
    finally:
        assert control(emulator, "/_casey/rules", {"iam_policy_size": True})[1]["iam_policy_size"] is True
    assert control(emulator, "/_casey/rules", {"typo": False})[0] == 400


def test_managed_policies_per_user_and_role_quota(emulator):
    iam = client(emulator, "iam")
    iam.create_user(UserName="collector")
    iam.create_role(RoleName="collector", AssumeRolePolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
                                                "Principal": {"Service": "ecs-tasks.amazonaws.com"}}]}))
    arns = [iam.create_policy(PolicyName=f"quota-{i}", PolicyDocument=small_policy())["Policy"]["Arn"]
            for i in range(11)]
    for arn in arns[:10]:
        iam.attach_user_policy(UserName="collector", PolicyArn=arn)
        iam.attach_role_policy(RoleName="collector", PolicyArn=arn)
    iam.attach_user_policy(UserName="collector", PolicyArn=arns[0])  # attached already: no change, no error
    assert iam_error(lambda: iam.attach_user_policy(UserName="collector", PolicyArn=arns[10])) == (
        "LimitExceeded", "Cannot exceed quota for PoliciesPerUser: 10", 409)
    assert iam_error(lambda: iam.attach_role_policy(RoleName="collector", PolicyArn=arns[10])) == (
        "LimitExceeded", "Cannot exceed quota for PoliciesPerRole: 10", 409)
    assert len(iam.list_attached_user_policies(UserName="collector")["AttachedPolicies"]) == 10
    iam.detach_user_policy(UserName="collector", PolicyArn=arns[0])
    iam.attach_user_policy(UserName="collector", PolicyArn=arns[10])


def test_iam_attachments_take_time_to_propagate(emulator):
    assert control(emulator, "/_casey/iam/propagation") == (200, {"seconds": 3.0})  # --iam-propagation-seconds
    assert control(emulator, "/_casey/iam/propagation", {"seconds": -1})[0] == 400
    assert control(emulator, "/_casey/iam/propagation", {"seconds": 1.5})[0] == 200
    iam = client(emulator, "iam")
    iam.create_user(UserName="newcomer")
    key = iam.create_access_key(UserName="newcomer")["AccessKey"]
    key = (key["AccessKeyId"], key["SecretAccessKey"])
    arn = iam.create_policy(PolicyName="newcomer", PolicyDocument=small_policy("ecs:ListClusters"))["Policy"]["Arn"]
    try:
        iam.attach_user_policy(UserName="newcomer", PolicyArn=arn)
        assert control(emulator, "/_casey/iam/enforce", {"enabled": True})[0] == 200
        ecs = client(emulator, "ecs", key=key)
        with pytest.raises(botocore.exceptions.ClientError, match="AccessDeniedException.*ecs:ListClusters"):
            ecs.list_clusters()  # attached, but not yet everywhere
        time.sleep(1.6)
        ecs.list_clusters()
        assert control(emulator, "/_casey/iam/enforce", {"enabled": False})[0] == 200
        # A new default version: the old one stays in force for a while, then the new one.
        iam.create_policy_version(PolicyArn=arn, PolicyDocument=small_policy("ecs:DescribeClusters"),
                                  SetAsDefault=True)
        assert control(emulator, "/_casey/iam/enforce", {"enabled": True})[0] == 200
        ecs.list_clusters()
        with pytest.raises(botocore.exceptions.ClientError, match="AccessDeniedException.*ecs:DescribeClusters"):
            ecs.describe_clusters(clusters=["casey"])
        time.sleep(1.6)
        ecs.describe_clusters(clusters=["casey"])
        with pytest.raises(botocore.exceptions.ClientError, match="AccessDeniedException.*ecs:ListClusters"):
            ecs.list_clusters()
    finally:
        assert control(emulator, "/_casey/iam/enforce", {"enabled": False})[0] == 200
        assert control(emulator, "/_casey/iam/propagation", {"seconds": 3})[0] == 200


def private_network(emulator, cidr):
    """A VPC without any route out, one subnet, a security group."""
    ec2 = client(emulator, "ec2")
    vpc = ec2.create_vpc(CidrBlock=cidr)["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock=cidr.replace("0.0/16", "1.0/24"),
                               AvailabilityZone="us-east-1a")["Subnet"]["SubnetId"]
    sg = ec2.create_security_group(GroupName="svc", Description="svc", VpcId=vpc)["GroupId"]
    return {"vpc": vpc, "subnets": [subnet], "sg": sg}


def stopped_reasons(emulator, name):
    return {(t["stopCode"], t["stoppedReason"]) for t in service_tasks(emulator, name, "STOPPED")}


def failed_rollout(emulator, name):
    return wait_for(lambda: describe(emulator, name)["deployments"][0]["rolloutState"] == "FAILED")


REGISTRY_AUTH_ERROR = ("ResourceInitializationError: unable to pull secrets or registry auth: execution resource "
                       "retrieval failed: unable to retrieve ecr registry auth: service call has been retried 3 "
                       "time(s): RequestError: send request failed caused by: Post "
                       "\"https://api.ecr.us-east-1.amazonaws.com/\": dial tcp 203.0.113.10:443: i/o timeout. "
                       "Please check your task network configuration.")
BREAKER = {"deploymentCircuitBreaker": {"enable": True, "rollback": False}}


def test_fargate_task_needs_a_route_to_ecr(emulator, net):
    ec2, ecs = client(emulator, "ec2"), client(emulator, "ecs")
    default_vpc = ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"][0]["VpcId"]
    routes = ec2.describe_route_tables(Filters=[{"Name": "vpc-id", "Values": [default_vpc]}])["RouteTables"][0]
    assert [r.get("GatewayId", "")[:4] for r in routes["Routes"] if r["DestinationCidrBlock"] == "0.0.0.0/0"] == [
        "igw-"]  # AWS's default VPC has an internet gateway route

    private = private_network(emulator, "10.7.0.0/16")
    network = {"awsvpcConfiguration": {"subnets": private["subnets"], "securityGroups": [private["sg"]],
                                       "assignPublicIp": "DISABLED"}}
    ecs.create_service(cluster="casey", serviceName="isolated", taskDefinition="app:1", desiredCount=1,
                       launchType="FARGATE", networkConfiguration=network, deploymentConfiguration=BREAKER)
    assert failed_rollout(emulator, "isolated")
    assert stopped_reasons(emulator, "isolated") == {("TaskFailedToStart", REGISTRY_AUTH_ERROR)}
    assert len(service_tasks(emulator, "isolated", "STOPPED")) == 3 and service_tasks(emulator, "isolated") == []

    # A public IP needs a route to an internet gateway: there is none in this VPC.
    network["awsvpcConfiguration"]["assignPublicIp"] = "ENABLED"
    ecs.create_service(cluster="casey", serviceName="no-igw", taskDefinition="app:1", desiredCount=1,
                       launchType="FARGATE", networkConfiguration=network, deploymentConfiguration=BREAKER)
    assert failed_rollout(emulator, "no-igw")
    assert stopped_reasons(emulator, "no-igw") == {("TaskFailedToStart", REGISTRY_AUTH_ERROR)}

    # A NAT gateway (in a public subnet) as the private subnet's default route: the task pulls and runs.
    internet_gateway(ec2, private["vpc"])
    public = ec2.create_subnet(VpcId=private["vpc"], CidrBlock="10.7.2.0/24")["Subnet"]["SubnetId"]
    allocation = ec2.allocate_address(Domain="vpc")["AllocationId"]
    nat = ec2.create_nat_gateway(SubnetId=public, AllocationId=allocation)["NatGateway"]["NatGatewayId"]
    table = ec2.create_route_table(VpcId=private["vpc"])["RouteTable"]["RouteTableId"]
    ec2.create_route(RouteTableId=table, DestinationCidrBlock="0.0.0.0/0", NatGatewayId=nat)
    ec2.associate_route_table(RouteTableId=table, SubnetId=private["subnets"][0])
    ecs.update_service(cluster="casey", service="isolated", forceNewDeployment=True)
    assert wait_for(lambda: settled(emulator, "isolated"))
    # The explicit table (NAT, no internet gateway) is the subnet's now: a public IP would not help.
    network["awsvpcConfiguration"]["assignPublicIp"] = "ENABLED"
    ecs.update_service(cluster="casey", service="isolated", networkConfiguration=network)
    assert failed_rollout(emulator, "isolated")
    for name in ("isolated", "no-igw"):
        ecs.delete_service(cluster="casey", service=name, force=True)


def test_fargate_task_through_vpc_endpoints_needs_logs_too(emulator):
    ecs = client(emulator, "ecs")
    private = private_network(emulator, "10.8.0.0/16")
    ecr_endpoints(emulator, private["vpc"], private["subnets"])
    ecs.register_task_definition(
        family="logged", networkMode="awsvpc", requiresCompatibilities=["FARGATE"], cpu="256", memory="512",
        containerDefinitions=[{"name": "app", "image": f"{ECR}/app:1", "logConfiguration": {
            "logDriver": "awslogs", "options": {"awslogs-group": "/ecs/app", "awslogs-region": "us-east-1",
                                                "awslogs-stream-prefix": "app"}}}])
    network = {"awsvpcConfiguration": {"subnets": private["subnets"], "securityGroups": [private["sg"]],
                                       "assignPublicIp": "DISABLED"}}
    ecs.create_service(cluster="casey", serviceName="logged", taskDefinition="logged", desiredCount=1,
                       launchType="FARGATE", networkConfiguration=network, deploymentConfiguration=BREAKER)
    assert failed_rollout(emulator, "logged")
    [(code, reason)] = stopped_reasons(emulator, "logged")
    assert code == "TaskFailedToStart" and reason.startswith(
        "ResourceInitializationError: failed to validate logger args: create stream has been retried 1 times")
    ecr_endpoints(emulator, private["vpc"], private["subnets"], services=("logs",))
    client(emulator, "logs").create_log_group(logGroupName="/ecs/app")  # else the awslogs_group_exists rule
    ecs.update_service(cluster="casey", service="logged", forceNewDeployment=True)
    assert wait_for(lambda: settled(emulator, "logged"))
    ecs.delete_service(cluster="casey", service="logged", force=True)


def test_task_image_must_exist(emulator, net):
    ecs = client(emulator, "ecs")
    for family, image in (("ghost", f"{ECR}/app:ghost"), ("hub", "library-image:1")):
        ecs.register_task_definition(
            family=family, networkMode="awsvpc", requiresCompatibilities=["FARGATE"], cpu="256", memory="512",
            containerDefinitions=[{"name": "app", "image": image}])
    create_service(emulator, net, "ghost", desired=1, task_definition="ghost", deploymentConfiguration=BREAKER)
    create_service(emulator, net, "hub", desired=1, task_definition="hub", deploymentConfiguration=BREAKER)
    assert failed_rollout(emulator, "ghost") and failed_rollout(emulator, "hub")
    assert stopped_reasons(emulator, "ghost") == {("TaskFailedToStart", (
        f"CannotPullContainerError: pull image manifest has been retried 5 time(s): failed to resolve ref "
        f"{ECR}/app:ghost: {ECR}/app:ghost: not found"))}
    assert stopped_reasons(emulator, "hub") == {("TaskFailedToStart", (
        "CannotPullContainerError: pull image manifest has been retried 5 time(s): failed to resolve ref "
        "docker.io/library/library-image:1: failed to do request: Head \"https://docker.io/v2/library/"
        "library-image/manifests/1\": dial tcp 203.0.113.10:443: i/o timeout"))}
    failed = service_tasks(emulator, "ghost", "STOPPED")[0]
    assert failed["containers"][0]["reason"].startswith("CannotPullContainerError:")

    push_image(emulator, "app", "ghost")  # pushed now: the next deployment pulls it
    ecs.update_service(cluster="casey", service="ghost", forceNewDeployment=True)
    assert wait_for(lambda: settled(emulator, "ghost"))
    digest = client(emulator, "ecr").describe_images(repositoryName="app", imageIds=[{"imageTag": "ghost"}])[
        "imageDetails"][0]["imageDigest"]
    ecs.register_task_definition(
        family="pinned", networkMode="awsvpc", requiresCompatibilities=["FARGATE"], cpu="256", memory="512",
        containerDefinitions=[{"name": "app", "image": f"{ECR}/app@{digest}"}])
    create_service(emulator, net, "pinned", desired=1, task_definition="pinned")
    assert wait_for(lambda: settled(emulator, "pinned"))
    for name in ("ghost", "hub", "pinned"):
        ecs.delete_service(cluster="casey", service=name, force=True)


def test_describe_services_lags_on_request(emulator, net):
    create_service(emulator, net, "lagged", desired=1)
    before = wait_for(lambda: settled(emulator, "lagged"))["deployments"][0]["id"]
    for body in ({"seconds": -1}, {"seconds": "2"}, {}):
        assert control(emulator, "/_casey/ecs/read-lag", body)[0] == 400
    assert control(emulator, "/_casey/ecs/read-lag", {"seconds": 1.5}) == (200, {"seconds": 1.5})
    try:
        time.sleep(1.6)  # the lag reaches back 1.5 s from here on
        ecs = client(emulator, "ecs")
        after = ecs.update_service(cluster="casey", service="lagged", forceNewDeployment=True)["service"]
        assert after["deployments"][0]["id"] != before  # the write's own answer is current
        assert describe(emulator, "lagged")["deployments"][0]["id"] == before  # a read right after it is not
        assert wait_for(lambda: describe(emulator, "lagged")["deployments"][0]["id"] == after["deployments"][0]["id"])
        create_service(emulator, net, "newborn", desired=0)
        answer = ecs.describe_services(cluster="casey", services=["newborn"])
        assert answer["services"] == [] and [f["reason"] for f in answer["failures"]] == ["MISSING"]
        assert wait_for(lambda: ecs.describe_services(cluster="casey", services=["newborn"])["services"])
    finally:
        assert control(emulator, "/_casey/ecs/read-lag", {"seconds": 0})[0] == 200
    ecs.update_service(cluster="casey", service="lagged", forceNewDeployment=True)
    assert describe(emulator, "lagged")["deployments"][0]["id"] != after["deployments"][0]["id"]
    ecs.delete_service(cluster="casey", service="lagged", force=True)


def test_rollout_seconds_keep_new_tasks_pending(emulator, net):
    for body in ({"seconds": -1}, {"seconds": "2"}, {"seconds": True}, {}):
        assert control(emulator, "/_casey/ecs/rollout-seconds", body)[0] == 400
    default = control(emulator, "/_casey/ecs/rollout-seconds")[1]["seconds"]
    assert control(emulator, "/_casey/ecs/rollout-seconds", {"seconds": 600}) == (200, {"seconds": 600.0})
    try:
        create_service(emulator, net, "slow", desired=1)
        pending = lambda: [t["lastStatus"] for t in service_tasks(emulator, "slow")] == ["PENDING"]  # noqa: E731
        assert wait_for(pending)
        time.sleep(default + 1)
        assert pending()
        assert describe(emulator, "slow")["deployments"][0]["rolloutState"] == "IN_PROGRESS"
    finally:
        assert control(emulator, "/_casey/ecs/rollout-seconds", {"seconds": default})[0] == 200
    assert wait_for(lambda: settled(emulator, "slow"))
    client(emulator, "ecs").delete_service(cluster="casey", service="slow", force=True)


def test_ecs_answers_match_the_api_model(emulator, net):
    """Every field of these answers has the type of botocore's ECS model (moto's RunTask containers had
    cpu/memory as numbers where the API has strings, and the task definition's ARN as taskArn)."""
    ecs = client(emulator, "ecs")
    raw = {}
    ecs.meta.events.register("after-call.ecs.*", lambda http_response, model, **_: raw.__setitem__(
        model.name, json.loads(http_response.content)))
    ecs.register_task_definition(
        family="sized", networkMode="awsvpc", requiresCompatibilities=["FARGATE"], cpu="256", memory="512",
        containerDefinitions=[{"name": "app", "image": f"{ECR}/app:1", "cpu": 128, "memory": 256,
                               "healthCheck": {"command": ["CMD", "true"], "interval": 5}}])
    network = {"awsvpcConfiguration": {"subnets": net["subnets"], "securityGroups": [net["sg"]]}}
    run = ecs.run_task(cluster="casey", taskDefinition="sized", launchType="FARGATE", networkConfiguration=network)
    arn = run["tasks"][0]["taskArn"]
    create_service(emulator, net, "sized", desired=1, task_definition="sized")
    assert wait_for(lambda: settled(emulator, "sized"))
    ecs.describe_tasks(cluster="casey", tasks=[arn, *ecs.list_tasks(cluster="casey", serviceName="sized")["taskArns"]])
    ecs.describe_services(cluster="casey", services=["sized"])
    ecs.describe_task_definition(taskDefinition="sized")
    model = botocore.session.get_session().get_service_model("ecs")
    for operation in ("RunTask", "DescribeTasks", "DescribeServices", "DescribeTaskDefinition", "ListTasks"):
        report = ParamValidator().validate(raw[operation], model.operation_model(operation).output_shape)
        assert not report.has_errors(), f"{operation}: {report.generate_report()}"
    container = raw["DescribeTasks"]["tasks"][0]["containers"][0]
    assert (container["cpu"], container["memory"], container["taskArn"]) == ("128", "256", arn)
    ecs.delete_service(cluster="casey", service="sized", force=True)


# --- task runner ------------------------------------------------------------------------------------------

# Stands in for casey-backend, so that the runner is tested without it.
STANDIN = r"""#!/usr/bin/env python3
# Records its environment as $STANDIN_DIR/<pid>.env.json, exits with $STANDIN_EXIT if set, else binds
# $CASEY_BIND_ADDR and answers GET /health: 200, or 503 while $STANDIN_GATE names a missing file.
# A SIGTERM is recorded as $STANDIN_DIR/<pid>.sigterm.
# `casey-backend healthcheck` (the image's health check command) exits 0 when GET /health answers 200, 1 while
# the file $STANDIN_SICK exists or otherwise.
# $STANDIN_PLAN ("fail,ok,..."): the n-th process started with the same STANDIN_DIR fails (exits 3 after 1 s)
# or runs, by the plan's n-th entry.
import http.client, http.server, json, os, pathlib, signal, sys, time

if sys.argv[1:] == ["healthcheck"]:
    if os.environ.get("STANDIN_SICK") and os.path.exists(os.environ["STANDIN_SICK"]):
        sys.exit(1)
    host, port = os.environ["CASEY_BIND_ADDR"].rsplit(":", 1)
    try:
        connection = http.client.HTTPConnection(host, int(port), timeout=2)
        connection.request("GET", "/health")
        sys.exit(0 if connection.getresponse().status == 200 else 1)
    except OSError:
        sys.exit(1)
out = pathlib.Path(os.environ["STANDIN_DIR"])
signal.signal(signal.SIGTERM, lambda *_: ((out / f"{os.getpid()}.sigterm").touch(), os._exit(0)))
(out / "tmp").mkdir(exist_ok=True)
(out / "tmp" / str(os.getpid())).write_text(json.dumps(dict(os.environ)))
(out / "tmp" / str(os.getpid())).rename(out / f"{os.getpid()}.env.json")
if os.environ.get("STANDIN_EXIT"):
    sys.exit(int(os.environ["STANDIN_EXIT"]))
if os.environ.get("STANDIN_PLAN"):
    plan, n = os.environ["STANDIN_PLAN"].split(","), 1
    while True:  # claim the next launch number
        try:
            os.close(os.open(out / f"launch.{n}", os.O_CREAT | os.O_EXCL))
            break
        except FileExistsError:
            n += 1
    if n > len(plan) or plan[n - 1] == "fail":
        time.sleep(1)
        sys.exit(3)
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


def task_network(emulator, port, task_definitions, push=True):
    """A VPC, the cluster "casey" and task definitions {family: (image, environment)}, all on `port`; each
    image pushed to the emulated ECR unless push is False."""
    ec2, ecs = client(emulator, "ec2"), client(emulator, "ecs")
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    internet_gateway(ec2, vpc)
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.1.0/24", AvailabilityZone="us-east-1a")["Subnet"]
    sg = ec2.create_security_group(GroupName="svc", Description="svc", VpcId=vpc)["GroupId"]
    ecs.create_cluster(clusterName="casey")
    for family, (image, environment) in task_definitions.items():
        if push:
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


HEALTH_CHECK_FAILED = "Task failed container health checks"


def test_container_health_check_decides(runner, standin, tmp_path):
    """The task definition's health check, run against the task's process, decides RUNNING/HEALTHY: GET /health
    answering 200 is not enough. A RUNNING task that turns unhealthy is replaced."""
    sick = tmp_path / "sick"
    sick.touch()
    assert control(runner, "/_casey/runner", {
        "mode": "process", "backend_bin": str(standin), "env": {"STANDIN_DIR": str(tmp_path), "STANDIN_SICK": str(sick)},
        "log_dir": str(tmp_path / "logs"), "start_timeout": 3})[0] == 200
    client(runner, "ecs").register_task_definition(
        family="checked", networkMode="awsvpc", requiresCompatibilities=["FARGATE"], cpu="256", memory="512",
        containerDefinitions=[{
            "name": "app", "image": STANDIN_DEFINITIONS["good"][0], "portMappings": [{"containerPort": runner["port"]}],
            "healthCheck": {"command": ["CMD", "/usr/local/bin/casey-backend", "healthcheck"], "interval": 5,
                            "timeout": 2, "retries": 2, "startPeriod": 1}}])
    create_service(runner, runner["net"], "checked", desired=1, task_definition="checked",
                   deploymentConfiguration=BREAKER)
    [task] = wait_for(lambda: runner_tasks(runner, "checked"))
    assert wait_for(lambda: get(task["public_ip"], runner["port"])[0] == 200)  # /health is fine, the check is not
    time.sleep(1)
    assert [t["last_status"] for t in runner_tasks(runner, "checked")] == ["PENDING"]
    assert wait_for(lambda: stopped_reasons(runner, "checked"), timeout=10) == {
        ("TaskFailedToStart", HEALTH_CHECK_FAILED)}

    sick.unlink()
    service = wait_for(lambda: settled(runner, "checked"), timeout=20)
    assert service, "the task did not become healthy once its health check passed"
    [task] = service_tasks(runner, "checked")
    assert (task["healthStatus"], task["containers"][0]["healthStatus"]) == ("HEALTHY", "HEALTHY")
    assert service["deployments"][0]["failedTasks"] == 0  # reset by the healthy task

    sick.touch()  # `retries` failed checks in a row while RUNNING: ECS replaces the task
    assert wait_for(lambda: [(t["stopCode"], t["stoppedReason"]) for t in service_tasks(runner, "checked", "STOPPED")
                             if t["taskArn"] == task["taskArn"]] == [("ServiceSchedulerInitiated", HEALTH_CHECK_FAILED)],
                    timeout=10)
    client(runner, "ecs").delete_service(cluster="casey", service="checked", force=True)


def test_an_images_packed_layer_is_the_program_its_task_runs(runner, standin, tmp_path):
    """Process mode with layers_dir: an image whose manifest's layer digest names a folder there holding an
    executable of backend_bin's name runs that program (each release its own build, so a rollback runs the old
    one); any other image runs backend_bin."""
    layers, out = tmp_path / "layers", tmp_path / "out"
    out.mkdir()
    ecr, ecs = client(runner, "ecr"), client(runner, "ecs")
    for which in ("one", "two"):
        text = STANDIN.replace("import http.client,", f"import os; os.environ['STANDIN_LAYER'] = '{which}'\nimport http.client,", 1)
        digest = hashlib.sha256(text.encode()).hexdigest()
        (layers / digest).mkdir(parents=True)
        program = layers / digest / "casey-backend"
        program.write_text(text)
        program.chmod(0o755)
        body = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                           "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": 2,
                                      "digest": "sha256:" + hashlib.sha256(which.encode()).hexdigest()},
                           "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                                       "size": len(text), "digest": f"sha256:{digest}"}]})
        put = ecr.put_image(repositoryName="casey-backend", imageTag=f"layer-{which}", imageManifest=body)
        ecs.register_task_definition(
            family=f"layer-{which}", networkMode="awsvpc", requiresCompatibilities=["FARGATE"], cpu="256",
            memory="512", containerDefinitions=[{
                "name": "app", "image": f"{ECR}/casey-backend@{put['image']['imageId']['imageDigest']}",
                "portMappings": [{"containerPort": runner["port"]}]}])
    base = {"mode": "process", "backend_bin": str(standin), "env": {"STANDIN_DIR": str(out)},
            "log_dir": str(out / "logs"), "start_timeout": 20}
    for bad in ("layers", str(tmp_path / "missing"), 1):
        assert control(runner, "/_casey/runner", {**base, "layers_dir": bad})[0] == 400, bad
    assert control(runner, "/_casey/runner", {**base, "layers_dir": str(layers)})[0] == 200

    def layers_run():
        return sorted(e.get("STANDIN_LAYER", "backend_bin") for e in standin_envs(out).values())

    try:
        create_service(runner, runner["net"], "layered", desired=1, task_definition="layer-one")
        assert wait_for(lambda: settled(runner, "layered"), timeout=30)
        assert layers_run() == ["one"]
        ecs.update_service(cluster="casey", service="layered", taskDefinition="layer-two")
        assert wait_for(lambda: layers_run() == ["one", "two"], timeout=30), layers_run()
        ecs.update_service(cluster="casey", service="layered", taskDefinition="good")  # no packed layer
        assert wait_for(lambda: layers_run() == ["backend_bin", "one", "two"], timeout=30), layers_run()
    finally:
        ecs.delete_service(cluster="casey", service="layered", force=True)
        control(runner, "/_casey/runner", {"mode": "none"})


def test_circuit_breaker_resets_on_a_healthy_task(runner, standin, tmp_path):
    """Threshold max(3, ceil(desired/2)) of consecutive failures: 4 tasks fail here, but a healthy task comes
    between the 2nd and 3rd, so the deployment completes (it would fail if the count never reset)."""
    use_standin(runner, standin, tmp_path, STANDIN_PLAN="fail,fail,ok,fail,fail,ok")
    create_service(runner, runner["net"], "bumpy", desired=2, task_definition="good",
                   deploymentConfiguration=BREAKER)
    service = wait_for(lambda: settled(runner, "bumpy") or describe(runner, "bumpy")["deployments"][0][
        "rolloutState"] == "FAILED", timeout=30)
    assert service is not True, "the breaker tripped although a healthy task came between the failures"
    assert service["runningCount"] == 2 and service["deployments"][0]["failedTasks"] == 0
    failed = service_tasks(runner, "bumpy", "STOPPED")
    assert len(failed) == 4 and {t["stoppedReason"] for t in failed} == {
        "Essential container in task exited (exit code 3)"}
    client(runner, "ecs").delete_service(cluster="casey", service="bumpy", force=True)


# --- the backing registry ---------------------------------------------------------------------------------

REGISTRY_PASSWORD = "123456789012-auth-token"  # the fixed token moto's ECR hands out (public test data)


def registry_call(address, method, path, body=b"", headers=None, auth=True):
    host, port = address.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    headers = dict(headers or {})
    if auth:
        headers["Authorization"] = "Basic " + base64.b64encode(f"AWS:{REGISTRY_PASSWORD}".encode()).decode()
    connection.request(method, path, body=body, headers=headers)
    response = connection.getresponse()
    return response.status, response.headers, response.read()


def registry_push(address, repository, tag, content):
    """Pushes an image (one layer, `content`) through the registry's HTTP API, as `docker push` does."""
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}).encode()
    blobs = []
    for blob in (config, content):
        digest = "sha256:" + hashlib.sha256(blob).hexdigest()
        status, headers, _ = registry_call(address, "POST", f"/v2/{repository}/blobs/uploads/")
        assert status == 202, status
        location = urllib.parse.urlsplit(headers["Location"])
        status, _, _ = registry_call(address, "PUT", f"{location.path}?{location.query}&digest={digest}", blob,
                                     {"Content-Type": "application/octet-stream"})
        assert status == 201, status
        blobs.append({"digest": digest, "size": len(blob)})
    image_manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", **blobs[0]},
        "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", **blobs[1]}]}).encode()
    status, headers, _ = registry_call(address, "PUT", f"/v2/{repository}/manifests/{tag}", image_manifest,
                                       {"Content-Type": "application/vnd.docker.distribution.manifest.v2+json"})
    assert status == 201, status
    return headers["Docker-Content-Digest"]


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """Debian's docker-registry on a free loopback port with htpasswd auth, as .ci/docker.sh runs it."""
    for tool in ("docker-registry", "htpasswd"):
        assert shutil.which(tool), f"{tool} is needed (apt-get install docker-registry apache2-utils, see .ci/setup.sh)"
    directory = tmp_path_factory.mktemp("registry")
    address = f"127.0.0.1:{free_port()}"
    htpasswd = subprocess.run(["htpasswd", "-Bbn", "AWS", REGISTRY_PASSWORD], capture_output=True, text=True, check=True)
    (directory / "htpasswd").write_text(htpasswd.stdout)
    (directory / "config.yml").write_text(
        f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {directory}/data\nhttp:\n  addr: {address}\n"
        f"auth:\n  htpasswd:\n    realm: casey\n    path: {directory}/htpasswd\n")
    with open(directory / "registry.log", "wb") as log:
        proc = subprocess.Popen(["docker-registry", "serve", str(directory / "config.yml")], stdout=log,
                                stderr=subprocess.STDOUT)
    try:
        def up():
            assert proc.poll() is None, "docker-registry exited: see registry.log"
            with contextlib.suppress(OSError):
                return registry_call(address, "GET", "/v2/", auth=False)[0] == 401  # up, and asks for a login
        assert wait_for(up, timeout=20), "docker-registry did not come up"
        yield address
    finally:
        proc.terminate()
        proc.wait(20)


def awslogs_definition(emulator, family, group, **options):
    """A task definition of the stand-in's image whose container "app" logs through awslogs to `group`."""
    client(emulator, "ecs").register_task_definition(
        family=family, networkMode="awsvpc", requiresCompatibilities=["FARGATE"], cpu="256", memory="512",
        containerDefinitions=[{
            "name": "app", "image": STANDIN_DEFINITIONS["good"][0], "portMappings": [{"containerPort": emulator["port"]}],
            "logConfiguration": {"logDriver": "awslogs", "options": {
                "awslogs-group": group, "awslogs-region": "us-east-1", "awslogs-stream-prefix": "backend", **options}}}])


def test_awslogs_ships_the_tasks_output_to_cloudwatch_logs(runner, standin, tmp_path):
    """Every line the task prints (stdout and stderr), and only those, lands in the awslogs group, stream
    backend/<container name>/<task id>, promptly, with the time it was printed."""
    wrapper = tmp_path / "casey-backend"  # prints, then becomes the stand-in (which serves /health)
    wrapper.write_text(f"#!/bin/sh\necho \"hello from task $$\"\necho 'to stderr' >&2\nexec {standin}\n")
    wrapper.chmod(0o755)
    assert control(runner, "/_casey/runner", {
        "mode": "process", "backend_bin": str(wrapper), "env": {"STANDIN_DIR": str(tmp_path)},
        "log_dir": str(tmp_path / "logs"), "start_timeout": 20})[0] == 200
    logs = client(runner, "logs")
    logs.create_log_group(logGroupName="/ecs/shipped")
    awslogs_definition(runner, "shipped", "/ecs/shipped")
    before = int(time.time() * 1000)
    create_service(runner, runner["net"], "shipped", desired=1, task_definition="shipped")
    assert wait_for(lambda: settled(runner, "shipped"))
    [task] = runner_tasks(runner, "shipped")
    task_id, pid = task["task_arn"].rsplit("/", 1)[1], task["runner"]["pid"]

    def events():
        return logs.filter_log_events(logGroupName="/ecs/shipped", logStreamNamePrefix="backend/")["events"]
    assert wait_for(lambda: len(events()) >= 2, timeout=3), events()
    shipped = events()
    assert {(e["logStreamName"], e["message"]) for e in shipped} == {
        (f"backend/app/{task_id}", f"hello from task {pid}"), (f"backend/app/{task_id}", "to stderr")}
    assert all(before <= e["timestamp"] <= int(time.time() * 1000) for e in shipped)
    log_file = Path(task["runner"]["log_file"]).read_text()
    assert f"hello from task {pid}" in log_file and "casey-emulator: task" in log_file  # the file has both

    client(runner, "ecs").delete_service(cluster="casey", service="shipped", force=True)
    assert wait_for(lambda: not alive(pid))
    time.sleep(1)  # the emulator's own stop lines stay out of CloudWatch too
    assert not [e for e in events() if "casey-emulator" in e["message"]]
    assert [s["logStreamName"] for s in logs.describe_log_streams(logGroupName="/ecs/shipped")["logStreams"]] == [
        f"backend/app/{task_id}"]


def test_awslogs_group_must_exist(runner, standin, tmp_path):
    """ECS does not create an awslogs group: without it the task stops before it runs. awslogs-create-group is
    not emulated (ECS needs logs:CreateLogGroup on the execution role for it): still missing, still stopped."""
    use_standin(runner, standin, tmp_path)
    awslogs_definition(runner, "unlogged", "/ecs/missing")
    create_service(runner, runner["net"], "unlogged", desired=1, task_definition="unlogged",
                   deploymentConfiguration=BREAKER)
    assert failed_rollout(runner, "unlogged")
    [task, *_] = service_tasks(runner, "unlogged", "STOPPED")
    assert task["stopCode"] == "TaskFailedToStart"
    assert task["stoppedReason"].startswith(
        "ResourceInitializationError: failed to validate logger args: create stream has been retried 1 times: "
        "failed to create Cloudwatch log stream: ResourceNotFoundException: The specified log group does not exist.")
    assert standin_envs(tmp_path) == {}  # no process was started
    assert control(runner, "/_casey/rules")[1]["awslogs_group_exists"] is True
    client(runner, "ecs").delete_service(cluster="casey", service="unlogged", force=True)

    awslogs_definition(runner, "self-made", "/ecs/self-made", **{"awslogs-create-group": "true"})
    create_service(runner, runner["net"], "self-made", desired=1, task_definition="self-made",
                   deploymentConfiguration=BREAKER)
    assert failed_rollout(runner, "self-made")
    assert client(runner, "logs").describe_log_groups(logGroupNamePrefix="/ecs/self-made")["logGroups"] == []
    client(runner, "ecs").delete_service(cluster="casey", service="self-made", force=True)

    # Once the group exists, the same definition runs.
    client(runner, "logs").create_log_group(logGroupName="/ecs/self-made")
    create_service(runner, runner["net"], "self-made-2", desired=1, task_definition="self-made")
    assert wait_for(lambda: settled(runner, "self-made-2"))
    client(runner, "ecs").delete_service(cluster="casey", service="self-made-2", force=True)


def test_backing_registry_is_what_ecr_and_tasks_see(registry, tmp_path):
    digest = registry_push(registry, "casey-backend", "v1", b"layer one")
    with running_emulator(tmp_path, "--registry", registry) as emulator:
        assert control(emulator, "/_casey/ecr/registry") == (200, {"registry": registry, "effective": registry})
        for bad in ("10.0.0.1:5000", "registry.example.com:443", "127.0.0.1", 5000):
            assert control(emulator, "/_casey/ecr/registry", {"registry": bad})[0] == 400, bad
        ecr, ecs = client(emulator, "ecr"), client(emulator, "ecs")
        ecr.create_repository(repositoryName="casey-backend")
        push_image(emulator, "casey-backend", "pushed-to-ecr")
        listed = {(i["imageTag"], i["imageDigest"]) for i in ecr.list_images(repositoryName="casey-backend")["imageIds"]}
        assert ("v1", digest) in listed and "pushed-to-ecr" in {tag for tag, _ in listed}
        details = ecr.describe_images(repositoryName="casey-backend", imageIds=[{"imageTag": "v1"}])["imageDetails"]
        assert [(d["imageTags"], d["imageDigest"]) for d in details] == [(["v1"], digest)]
        got = ecr.batch_get_image(repositoryName="casey-backend", imageIds=[{"imageDigest": digest}, {"imageTag": "v2"}])
        assert [i["imageId"]["imageDigest"] for i in got["images"]] == [digest]
        assert [f["failureCode"] for f in got["failures"]] == ["ImageNotFound"]

        net = task_network(emulator, free_port(), {
            "registry": (f"{ECR}/casey-backend:v1", {}), "missing": (f"{ECR}/casey-backend:v2", {}),
            "local": (f"{registry}/casey-backend@{digest}", {})}, push=False)
        for family in ("registry", "local", "missing"):
            create_service(emulator, net, family, desired=1, task_definition=family, deploymentConfiguration=BREAKER)
        assert wait_for(lambda: settled(emulator, "registry")) and wait_for(lambda: settled(emulator, "local"))
        assert wait_for(lambda: describe(emulator, "missing")["deployments"][0]["rolloutState"] == "FAILED")
        assert stopped_reasons(emulator, "missing") == {("TaskFailedToStart", (
            f"CannotPullContainerError: pull image manifest has been retried 5 time(s): failed to resolve ref "
            f"{ECR}/casey-backend:v2: {ECR}/casey-backend:v2: not found"))}

        registry_push(registry, "casey-backend", "v2", b"layer two")  # pushed now: ECR sees it, tasks pull it
        assert "v2" in {i.get("imageTag") for i in ecr.list_images(repositoryName="casey-backend")["imageIds"]}
        ecs.update_service(cluster="casey", service="missing", forceNewDeployment=True)
        assert wait_for(lambda: settled(emulator, "missing"))

        assert control(emulator, "/_casey/ecr/registry", {"registry": None})[1]["effective"] is None
        assert {i.get("imageTag") for i in ecr.list_images(repositoryName="casey-backend")["imageIds"]} == {
            "pushed-to-ecr"}
        ecs.update_service(cluster="casey", service="registry", forceNewDeployment=True)
        assert wait_for(lambda: describe(emulator, "registry")["deployments"][0]["rolloutState"] == "FAILED")


# --- fault injection --------------------------------------------------------------------------------------

def no_retries(emulator, service):
    creds = emulator["users"]["casey_aniruddh"]
    return boto3.client(service, endpoint_url=emulator["url"], region_name="us-east-1",
                        aws_access_key_id=creds["access_key_id"], aws_secret_access_key=creds["secret_access_key"],
                        config=botocore.config.Config(retries={"total_max_attempts": 1, "mode": "standard"}))


def error_of(call):
    with pytest.raises(botocore.exceptions.ClientError) as raised:
        call()
    return raised.value.response["Error"]["Code"], raised.value.response["ResponseMetadata"]["HTTPStatusCode"]


def send(emulator, method, path, body=None):
    request = urllib.request.Request(emulator["url"] + path, method=method,
                                     data=None if body is None else json.dumps(body).encode())
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def test_fault_injection(emulator):
    for body in ({"service": "ecs", "kind": "nap", "count": 1}, {"service": "ecs", "kind": "throttle"},
                 {"service": "ecs", "kind": "throttle", "count": 1, "seconds": 1},
                 {"service": "ecs", "kind": "latency", "count": 1}, {"kind": "drop", "count": 1},
                 {"service": "ecs", "kind": "drop", "count": 0}, {"service": "ecs", "kind": "drop", "count": 1, "x": 1}):
        assert control(emulator, "/_casey/faults", body)[0] == 400, body
    ecs, iam, ec2, sts, ecr = (no_retries(emulator, s) for s in ("ecs", "iam", "ec2", "sts", "ecr"))
    status, fault = control(emulator, "/_casey/faults", {"service": "ecs", "action": "DescribeClusters",
                                                         "kind": "throttle", "count": 2})
    assert status == 200 and (fault["remaining"], fault["fired"]) == (2, 0)
    ecs.list_clusters()  # another action: untouched
    assert error_of(lambda: ecs.describe_clusters()) == ("ThrottlingException", 400)
    assert [(f["id"], f["remaining"], f["fired"]) for f in control(emulator, "/_casey/faults")[1]] == [
        (fault["id"], 1, 1)]
    assert error_of(lambda: ecs.describe_clusters()) == ("ThrottlingException", 400)
    ecs.describe_clusters()
    assert control(emulator, "/_casey/faults")[1] == []

    for body, call, expected in (
            ({"service": "iam", "kind": "throttle", "count": 1}, lambda: iam.list_users(), ("Throttling", 400)),
            ({"service": "ec2", "kind": "throttle", "count": 1}, lambda: ec2.describe_vpcs(),
             ("RequestLimitExceeded", 400)),
            ({"service": "sts", "kind": "http500", "count": 1}, lambda: sts.get_caller_identity(),
             ("InternalFailure", 500)),
            ({"service": "ecr", "action": "DescribeRepositories", "kind": "http500", "count": 1},
             lambda: ecr.describe_repositories(), ("InternalFailure", 500)),
            ({"service": "ec2", "action": "DescribeVpcs", "kind": "http500", "count": 1}, lambda: ec2.describe_vpcs(),
             ("InternalError", 500))):
        assert control(emulator, "/_casey/faults", body)[0] == 200
        assert error_of(call) == expected, body
    client(emulator, "sts").get_caller_identity()  # the SDK's own retries get past a single 500

    assert control(emulator, "/_casey/faults", {"service": "ecs", "kind": "drop", "count": 1})[0] == 200
    with pytest.raises(botocore.exceptions.ConnectionClosedError):  # closed without an answer
        ecs.list_clusters()
    ecs.list_clusters()

    assert control(emulator, "/_casey/faults", {"service": "ecr", "kind": "latency", "latency_ms": 400, "count": 1})[0] == 200
    started = time.monotonic()
    ecr.describe_repositories()
    assert time.monotonic() - started >= 0.4

    assert control(emulator, "/_casey/faults", {"service": "sts", "kind": "throttle", "seconds": 0.6})[0] == 200
    assert error_of(lambda: sts.get_caller_identity()) == ("Throttling", 400)
    assert error_of(lambda: sts.get_caller_identity()) == ("Throttling", 400)
    assert control(emulator, "/_casey/faults")[1][0]["fired"] == 2
    time.sleep(0.7)
    sts.get_caller_identity()

    # The control API is never faulted, and DELETE clears everything.
    for service in ("ecs", "ecr", "sts", "iam", "ec2"):
        assert control(emulator, "/_casey/faults", {"service": service, "kind": "drop", "count": 5})[0] == 200
    assert control(emulator, "/_casey/health") == (200, {"ok": True})
    assert send(emulator, "DELETE", "/_casey/faults") == (200, {"cleared": 5})
    ecs.list_clusters()


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
            "environment": [{"name": "CASEY_ADMIN_USER", "value": "casey_aniruddh"}],
            # terraform/ecs.tf's check: the backend's own `healthcheck` mode, run against the process
            "healthCheck": {"command": ["CMD", "/usr/local/bin/casey-backend", "healthcheck"], "interval": 30,
                            "timeout": 5, "retries": 3, "startPeriod": 15}}])
    config = {"mode": "process", "backend_bin": str(backend_bin), "log_dir": str(tmp_path)}
    assert control(runner, "/_casey/runner", config)[0] == 200
    create_service(runner, runner["net"], "backend", desired=1, task_definition="backend",
                   deploymentConfiguration={"deploymentCircuitBreaker": {"enable": True, "rollback": False}})
    assert wait_for(lambda: settled(runner, "backend"), timeout=60)
    [task] = runner_tasks(runner, "backend")
    status, body = get(task["public_ip"], port)
    assert status == 200 and json.loads(body)["status"] == "ok"
    assert service_tasks(runner, "backend")[0]["healthStatus"] == "HEALTHY"
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


def test_an_images_digest_is_the_sha256_of_its_manifest(emulator):
    """ECR: imageDigest is "the sha256 digest of the image manifest" (API_ImageIdentifier); moto hashed the layers."""
    ecr = client(emulator, "ecr")
    with contextlib.suppress(ecr.exceptions.RepositoryAlreadyExistsException):
        ecr.create_repository(repositoryName="digests")
    body = manifest("digests:v1")
    put = ecr.put_image(repositoryName="digests", imageTag="v1", imageManifest=body)
    expected = "sha256:" + hashlib.sha256(body.encode()).hexdigest()
    assert put["image"]["imageId"]["imageDigest"] == expected
    described = ecr.describe_images(repositoryName="digests", imageIds=[{"imageTag": "v1"}])["imageDetails"]
    assert [d["imageDigest"] for d in described] == [expected]


def test_an_immutable_tag_never_names_a_second_image(emulator):
    """ECR with tag immutability: another image under an existing tag is ImageTagAlreadyExistsException
    (image-tag-mutability.html), the same image again ImageAlreadyExistsException; a mutable repository moves
    the tag. moto raised ImageAlreadyExistsException for both."""
    ecr = client(emulator, "ecr")
    ecr.create_repository(repositoryName="immutable", imageTagMutability="IMMUTABLE")
    ecr.put_image(repositoryName="immutable", imageTag="abc1234", imageManifest=manifest("one"))
    with pytest.raises(botocore.exceptions.ClientError) as other:
        ecr.put_image(repositoryName="immutable", imageTag="abc1234", imageManifest=manifest("two"))
    assert other.value.response["Error"]["Code"] == "ImageTagAlreadyExistsException"
    assert other.value.response["Error"]["Message"] == (
        "The image tag 'abc1234' already exists in the 'immutable' repository and cannot be overwritten because the "
        "repository is immutable.")
    with pytest.raises(botocore.exceptions.ClientError) as same:
        ecr.put_image(repositoryName="immutable", imageTag="abc1234", imageManifest=manifest("one"))
    assert same.value.response["Error"]["Code"] == "ImageAlreadyExistsException"
    described = ecr.describe_images(repositoryName="immutable", imageIds=[{"imageTag": "abc1234"}])["imageDetails"]
    assert [d["imageDigest"] for d in described] == ["sha256:" + hashlib.sha256(manifest("one").encode()).hexdigest()]
    # Another tag for the second image is fine; a mutable repository moves its tags.
    ecr.put_image(repositoryName="immutable", imageTag="def5678", imageManifest=manifest("two"))
    ecr.create_repository(repositoryName="mutable", imageTagMutability="MUTABLE")
    ecr.put_image(repositoryName="mutable", imageTag="latest", imageManifest=manifest("one"))
    ecr.put_image(repositoryName="mutable", imageTag="latest", imageManifest=manifest("two"))


def test_filter_log_events_honours_the_stream_prefix(emulator):
    """FilterLogEvents returns only the streams starting with logStreamNamePrefix (moto returned every stream),
    and refuses a prefix together with stream names, as AWS does (API_FilterLogEvents)."""
    logs = client(emulator, "logs")
    logs.create_log_group(logGroupName="/prefix-test")
    for stream in ["backend/app/one", "backend/app/two"]:
        logs.create_log_stream(logGroupName="/prefix-test", logStreamName=stream)
        logs.put_log_events(logGroupName="/prefix-test", logStreamName=stream,
                            logEvents=[{"timestamp": int(time.time() * 1000), "message": f"from {stream}"}])
    got = logs.filter_log_events(logGroupName="/prefix-test", logStreamNamePrefix="backend/app/one")["events"]
    assert [e["message"] for e in got] == ["from backend/app/one"]
    assert logs.filter_log_events(logGroupName="/prefix-test", logStreamNamePrefix="backend/none")["events"] == []
    assert len(logs.filter_log_events(logGroupName="/prefix-test", logStreamNamePrefix="backend/")["events"]) == 2
    with pytest.raises(logs.exceptions.InvalidParameterException):
        logs.filter_log_events(logGroupName="/prefix-test", logStreamNamePrefix="backend/",
                               logStreamNames=["backend/app/one"])



def test_bucket_versioning_answers_in_awss_shape(emulator):
    """GetBucketVersioning's root is <VersioningConfiguration>, empty before versioning was set, as in AWS."""
    s3 = client(emulator, "s3")
    s3.create_bucket(Bucket="casey-versioning-shape")
    bodies = []
    s3.meta.events.register("after-call.s3.GetBucketVersioning",
                            lambda http_response, **_: bodies.append(http_response.content))
    assert "Status" not in s3.get_bucket_versioning(Bucket="casey-versioning-shape")
    s3.put_bucket_versioning(Bucket="casey-versioning-shape", VersioningConfiguration={"Status": "Enabled"})
    assert s3.get_bucket_versioning(Bucket="casey-versioning-shape")["Status"] == "Enabled"
    roots = [body.split(b"?>", 1)[-1].strip().split(b" ", 1)[0] for body in bodies]
    assert roots == [b"<VersioningConfiguration", b"<VersioningConfiguration"], bodies
    assert bodies[0].endswith(b"></VersioningConfiguration>") and b"<Status>Enabled</Status>" in bodies[1]


def test_bucket_policy_conditions_are_evaluated_as_for_https(emulator):
    """A TLS-only Deny (Bool aws:SecureTransport "false") leaves HTTPS-equivalent requests alone; the same Deny
    on "true" applies, so the condition is evaluated, not ignored; a Deny without a condition applies."""
    s3 = client(emulator, "s3")
    bucket = "casey-tls-only"
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="k", Body=b"state")

    def deny(condition=None):
        statement = {"Sid": "D", "Effect": "Deny", "Principal": "*", "Action": "s3:*",
                     "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"]}
        if condition is not None:
            statement["Condition"] = condition
        s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps({"Version": "2012-10-17", "Statement": [statement]}))

    deny({"Bool": {"aws:SecureTransport": "false"}})
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"state"
    deny({"Bool": {"aws:SecureTransport": "true"}})
    with pytest.raises(botocore.exceptions.ClientError) as denied:
        s3.get_object(Bucket=bucket, Key="k")
    assert denied.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    deny({"StringEquals": {"aws:SourceVpce": "vpce-1"}})  # a key the request does not have: not met
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"state"
    deny()
    with pytest.raises(botocore.exceptions.ClientError):
        s3.get_object(Bucket=bucket, Key="k")


def test_s3_requests_are_authorised_as_iams_actions(emulator):
    """Under enforcement HeadBucket needs s3:ListBucket, the encryption and public access block calls need
    IAM's own action names; without them each is refused."""
    bucket = "casey-s3-actions"
    client(emulator, "s3").create_bucket(Bucket=bucket)
    iam = client(emulator, "iam")
    assert control(emulator, "/_casey/iam/propagation", {"seconds": 0})[0] == 200
    calls = {
        "s3:ListBucket": lambda s3: s3.head_bucket(Bucket=bucket),
        "s3:PutEncryptionConfiguration": lambda s3: s3.put_bucket_encryption(
            Bucket=bucket, ServerSideEncryptionConfiguration={
                "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]}),
        "s3:GetEncryptionConfiguration": lambda s3: s3.get_bucket_encryption(Bucket=bucket),
        "s3:PutBucketPublicAccessBlock": lambda s3: s3.put_public_access_block(
            Bucket=bucket, PublicAccessBlockConfiguration={"BlockPublicAcls": True}),
        "s3:GetBucketPublicAccessBlock": lambda s3: s3.get_public_access_block(Bucket=bucket),
    }
    try:
        for action, call in calls.items():
            iam.put_user_policy(UserName="casey_localdev_service", PolicyName="s3", PolicyDocument=json.dumps({
                "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": action,
                                                        "Resource": f"arn:aws:s3:::{bucket}"}]}))
            control(emulator, "/_casey/iam/enforce", {"enabled": True})
            service = client(emulator, "s3", "casey_localdev_service")
            call(service)  # allowed by exactly its IAM action
            if action == "s3:ListBucket":  # a query with encoded characters passes the signature check
                assert service.list_objects_v2(Bucket=bucket, Prefix="env:/")["KeyCount"] == 0
            others = [c for a, c in calls.items() if a != action and a != "s3:ListBucket"]
            with pytest.raises(botocore.exceptions.ClientError) as denied:
                others[0](service)
            assert denied.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403, action
            control(emulator, "/_casey/iam/enforce", {"enabled": False})
    finally:
        control(emulator, "/_casey/iam/enforce", {"enabled": False})
        iam.delete_user_policy(UserName="casey_localdev_service", PolicyName="s3")
        assert control(emulator, "/_casey/iam/propagation", {"seconds": 3})[0] == 200


def _jwt(**claims):
    encode = lambda part: base64.urlsafe_b64encode(json.dumps(part).encode()).rstrip(b"=").decode()  # noqa: E731
    return f"{encode({'alg': 'RS256'})}.{encode(claims)}.c2ln"


def test_web_identity_needs_the_provider_the_audience_and_the_trust_policy(emulator):
    """AssumeRoleWithWebIdentity is unsigned (it works under enforcement), and hands out credentials only for
    a token whose issuer is an IAM OIDC provider listing its audience, unexpired, whose claims meet the role's
    trust policy."""
    iam = client(emulator, "iam")
    host = "token.actions.githubusercontent.com"
    provider = iam.create_open_id_connect_provider(Url=f"https://{host}", ClientIDList=["sts.amazonaws.com"],
                                                   ThumbprintList=["6938fd4d98bab03faadb97b34396831e3780aea1"])
    iam.create_role(RoleName="casey-ci-test", AssumeRolePolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [{
            "Effect": "Allow", "Principal": {"Federated": provider["OpenIDConnectProviderArn"]},
            "Action": "sts:AssumeRoleWithWebIdentity",
            "Condition": {"StringEquals": {f"{host}:aud": "sts.amazonaws.com"},
                          "StringLike": {f"{host}:sub": "repo:casey/casey:*"}}}]}))
    sts = boto3.client("sts", endpoint_url=emulator["url"], region_name="us-east-1",
                       config=botocore.config.Config(signature_version=botocore.UNSIGNED))
    good = {"iss": f"https://{host}", "aud": "sts.amazonaws.com", "sub": "repo:casey/casey:ref:refs/heads/main",
            "exp": int(time.time()) + 600}

    def assume(**claims):
        return sts.assume_role_with_web_identity(RoleArn="arn:aws:iam::123456789012:role/casey-ci-test",
                                                 RoleSessionName="ci", WebIdentityToken=_jwt(**claims))

    def error(**claims):
        with pytest.raises(botocore.exceptions.ClientError) as raised:
            assume(**claims)
        return raised.value.response["Error"]["Code"], raised.value.response["Error"]["Message"]

    assert control(emulator, "/_casey/iam/enforce", {"enabled": True})[0] == 200
    try:
        assert assume(**good)["AssumedRoleUser"]["Arn"].endswith(":assumed-role/casey-ci-test/ci")
        assert error(**{**good, "sub": "repo:someone/else:ref:refs/heads/main"}) == (
            "AccessDenied", "Not authorized to perform sts:AssumeRoleWithWebIdentity")
        assert error(**{**good, "iss": "https://accounts.example.com"})[0] == "InvalidIdentityToken"
        assert error(**{**good, "aud": "someone-else"}) == ("InvalidIdentityToken", "Incorrect token audience")
        assert error(**{**good, "exp": int(time.time()) - 60})[0] == "ExpiredTokenException"
    finally:
        assert control(emulator, "/_casey/iam/enforce", {"enabled": False})[0] == 200
