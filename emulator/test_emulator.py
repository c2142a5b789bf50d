"""Starts casey_emulator.py on a free port and checks each extension through boto3, as an outside client would.

Run: ~/.cache/casey-deploy/venv/bin/python -m pytest -q emulator/test_emulator.py
"""

import ipaddress
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
ROLLOUT = 0.4
PULL_ERROR = "CannotPullContainerError: pull image manifest has been retried 5 time(s): app:bad not found"


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    seed_file = tmp_path_factory.mktemp("emulator") / "seed.json"
    proc = subprocess.Popen([sys.executable, str(EMULATOR), "--host", "127.0.0.1", "--port", str(port),
                             "--seed-file", str(seed_file), "--rollout-seconds", str(ROLLOUT)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not seed_file.exists():  # the seed file appearing is the readiness signal
            assert proc.poll() is None, "emulator exited during start-up"
            assert time.monotonic() < deadline, "emulator did not write its seed file"
            time.sleep(0.05)
        seed = json.loads(seed_file.read_text())
        seed["url"] = f"http://127.0.0.1:{port}"
        yield seed
    finally:
        proc.terminate()
        proc.wait(10)


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


@pytest.fixture(scope="module")
def net(emulator):
    ec2, ecs = client(emulator, "ec2"), client(emulator, "ecs")
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnets = [ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.0.{i}.0/24", AvailabilityZone=f"us-east-1{az}")
               ["Subnet"]["SubnetId"] for i, az in ((1, "a"), (2, "b"))]
    sg = ec2.create_security_group(GroupName="svc", Description="svc", VpcId=vpc)["GroupId"]
    ecs.create_cluster(clusterName="casey")
    for image in ("app:1", "app:2", "app:bad"):  # revisions 1, 2, 3
        ecs.register_task_definition(
            family="app", networkMode="awsvpc", requiresCompatibilities=["FARGATE"], cpu="256", memory="512",
            containerDefinitions=[{"name": "app", "image": image, "portMappings": [{"containerPort": 8080}],
                                   "environment": [{"name": "PORT", "value": "8080"}]}])
    return {"subnets": subnets, "sg": sg}


def create_service(emulator, net, name, desired=2, **extra):
    return client(emulator, "ecs").create_service(
        cluster="casey", serviceName=name, taskDefinition="app:1", desiredCount=desired, launchType="FARGATE",
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
            client(emulator, "ecs", key=("AKIAUNKNOWNKEY000000", "secret")).list_clusters()
        with pytest.raises(botocore.exceptions.ClientError, match="AccessDenied.*iam:ListUsers"):
            client(emulator, "iam").list_users()
    finally:
        assert control(emulator, "/_casey/iam/enforce", {"enabled": False})[0] == 200
    client(emulator, "ecs", key=("AKIAUNKNOWNKEY000000", "secret")).list_clusters()
