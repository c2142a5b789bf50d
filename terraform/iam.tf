################################################################################
# Existing IAM users (https://docs.aws.amazon.com/IAM/latest/UserGuide/id_users.html)
#
# Terraform does not create the two users. aws_iam_user fails with a bare
# NoSuchEntity when a user is missing, so a lookup through aws_iam_users (which
# returns an empty list instead of failing) guards each read with a precondition
# that names the variable to set.
################################################################################

data "aws_iam_users" "service_account" {
  # The name is escaped for the regex: IAM names may contain "." and "+".
  name_regex = "^${replace(var.service_account_iam_user_name, "/([.+])/", "\\$1")}$"
}

data "aws_iam_users" "terraform_admin" {
  name_regex = "^${replace(var.terraform_admin_iam_user_name, "/([.+])/", "\\$1")}$"
}

data "aws_iam_user" "service_account" {
  user_name = var.service_account_iam_user_name

  lifecycle {
    precondition {
      condition     = contains(data.aws_iam_users.service_account.names, var.service_account_iam_user_name)
      error_message = "The service-account IAM user \"${var.service_account_iam_user_name}\" does not exist in AWS account ${local.account_id}. Terraform does not create it: create it first, or set -var service_account_iam_user_name=<existing user> (variable service_account_iam_user_name)."
    }
  }
}

data "aws_iam_user" "terraform_admin" {
  user_name = var.terraform_admin_iam_user_name

  lifecycle {
    precondition {
      condition     = contains(data.aws_iam_users.terraform_admin.names, var.terraform_admin_iam_user_name)
      error_message = "The Terraform admin IAM user \"${var.terraform_admin_iam_user_name}\" does not exist in AWS account ${local.account_id}. Terraform does not create it: create it first, or set -var terraform_admin_iam_user_name=<existing user> (variable terraform_admin_iam_user_name)."
    }
  }
}

################################################################################
# casey-backend-ai: what the backend may call at runtime
# (ECS task role and the local-development service account)
################################################################################

data "aws_iam_policy_document" "casey_backend" {
  #checkov:skip=CKV_AWS_356:polly:SynthesizeSpeech can only be scoped to pronunciation lexicons, which the backend does not use; plain synthesis needs "*".
  statement {
    sid = "Transcribe"
    # Transcribe streaming and job actions do not support resource-level permissions.
    actions = [
      "transcribe:StartStreamTranscription",
      "transcribe:StartStreamTranscriptionWebSocket",
    ]
    resources = ["*"]
  }

  statement {
    sid = "BedrockInvoke"
    actions = [
      "bedrock:InvokeModel",
      "bedrock:InvokeModelWithResponseStream",
      "bedrock:GetInferenceProfile",
    ]
    # Cross-region inference profiles route to foundation models in other
    # regions, hence the region wildcard on foundation-model.
    resources = [
      "arn:${local.partition}:bedrock:*::foundation-model/*",
      "arn:${local.partition}:bedrock:*:${local.account_id}:inference-profile/*",
      "arn:${local.partition}:bedrock:*:${local.account_id}:application-inference-profile/*",
    ]
  }

  statement {
    sid = "Polly"
    # SynthesizeSpeech only scopes to lexicons; voices are not resources.
    actions = [
      "polly:SynthesizeSpeech",
      "polly:DescribeVoices",
    ]
    resources = ["*"]
  }

  statement {
    sid = "UsageLogs"
    actions = [
      "logs:CreateLogStream",
      "logs:PutLogEvents",
      "logs:DescribeLogStreams",
    ]
    # Built from the name, not the resource's arn attribute, so the document
    # (and its size precondition) is known at plan time.
    resources = [
      "${local.arn_prefix.logs}:log-group:${local.usage_log_group_name}",
      "${local.arn_prefix.logs}:log-group:${local.usage_log_group_name}:*",
    ]
  }
}

resource "aws_iam_policy" "casey_backend" {
  name        = local.backend_policy_name
  description = "casey backend runtime: Transcribe, Bedrock, Polly and CloudWatch Logs usage records"
  policy      = data.aws_iam_policy_document.casey_backend.json

  # A policy created by hand and then imported (README troubleshooting) usually
  # has another description; description forces replacement, which would
  # detach the policy from the service account and the task role.
  lifecycle {
    ignore_changes = [description]

    precondition {
      condition     = length(data.aws_iam_policy_document.casey_backend.minified_json) <= local.managed_policy_quota
      error_message = "IAM policy ${local.backend_policy_name} (aws_iam_policy.casey_backend) renders to ${length(data.aws_iam_policy_document.casey_backend.minified_json)} characters without whitespace, over IAM's quota of ${local.managed_policy_quota} for a managed policy; CreatePolicy would fail with LimitExceeded. Shorten data.aws_iam_policy_document.casey_backend (terraform/iam.tf) or move statements into a second policy attached to the same user and task role."
    }
  }
}

resource "aws_iam_user_policy_attachment" "casey_backend" {
  #checkov:skip=CKV_AWS_40:The spec attaches this policy to the existing local-development service-account user; Terraform does not manage groups for it.
  user       = data.aws_iam_user.service_account.user_name
  policy_arn = aws_iam_policy.casey_backend.arn
}

################################################################################
# ECS roles (https://docs.aws.amazon.com/AmazonECS/latest/developerguide/task_execution_IAM_role.html)
################################################################################

data "aws_iam_policy_document" "ecs_tasks_assume" {
  statement {
    sid     = "EcsTasksAssume"
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["ecs-tasks.amazonaws.com"]
    }

    # Confused-deputy protection: only ECS tasks of this account.
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }

    condition {
      test     = "ArnLike"
      variable = "aws:SourceArn"
      values   = ["arn:${local.partition}:ecs:${local.region}:${local.account_id}:*"]
    }
  }
}

# Used by the ECS agent: pull from ECR, write to the ECS log group.
resource "aws_iam_role" "ecs_execution" {
  name               = local.execution_role_name
  description        = "ECS task execution role for ${local.service_name}"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json

  lifecycle {
    # https://docs.aws.amazon.com/IAM/latest/APIReference/API_CreateRole.html:
    # RoleName is at most 64 characters; the execution role's is the longer.
    precondition {
      condition     = length(local.execution_role_name) <= 64
      error_message = "The IAM role name ${local.execution_role_name} has ${length(local.execution_role_name)} characters, over IAM's 64: ecs_service_name plus \"-<environment>\" (outside production) plus \"-ecs-execution\" must fit. Shorten ecs_service_name or the environment's name."
    }
    precondition {
      condition     = length(data.aws_iam_policy_document.ecs_tasks_assume.minified_json) <= local.trust_policy_quota
      error_message = "The trust policy of IAM role ${local.execution_role_name} renders to ${length(data.aws_iam_policy_document.ecs_tasks_assume.minified_json)} characters without whitespace, over IAM's default quota of ${local.trust_policy_quota} for a role trust policy; CreateRole would fail with LimitExceeded. Shorten data.aws_iam_policy_document.ecs_tasks_assume (terraform/iam.tf)."
    }
  }
}

resource "aws_iam_role_policy_attachment" "ecs_execution" {
  role       = aws_iam_role.ecs_execution.name
  policy_arn = local.ecs_task_execution_arn
}

# Used by the backend process itself.
resource "aws_iam_role" "ecs_task" {
  name               = local.task_role_name
  description        = "ECS task role for ${local.service_name} (${local.backend_policy_name})"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json

  lifecycle {
    precondition {
      condition     = length(data.aws_iam_policy_document.ecs_tasks_assume.minified_json) <= local.trust_policy_quota
      error_message = "The trust policy of IAM role ${local.task_role_name} renders to ${length(data.aws_iam_policy_document.ecs_tasks_assume.minified_json)} characters without whitespace, over IAM's default quota of ${local.trust_policy_quota} for a role trust policy; CreateRole would fail with LimitExceeded. Shorten data.aws_iam_policy_document.ecs_tasks_assume (terraform/iam.tf)."
    }
  }
}

resource "aws_iam_role_policy_attachment" "ecs_task" {
  role       = aws_iam_role.ecs_task.name
  policy_arn = aws_iam_policy.casey_backend.arn
}

################################################################################
# casey-terraform-admin*: what Terraform and casey-deploy need, scoped to the
# stack's own names where the service supports resource-level permissions
# (https://docs.aws.amazon.com/service-authorization/latest/reference/reference_policies_actions-resources-contextkeys.html).
#
# Split by concern into several managed policies, all attached to the admin
# user: IAM caps a customer-managed policy at 6,144 characters without
# whitespace and a user at 10 attached managed policies
# (https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_iam-quotas.html).
# The first part keeps the seed's name and holds the IAM rights, so it alone
# can create and attach the others.
################################################################################

locals {
  # IAM's quotas (link above): customer-managed policy and role trust policy
  # length, in characters without whitespace.
  managed_policy_quota = 6144
  trust_policy_quota   = 2048

  admin_policy_names = {
    iam     = "${local.admin_policy_name}${local.env_suffix}"
    ecs     = "${local.admin_policy_name}-ecs${local.env_suffix}"
    network = "${local.admin_policy_name}-network${local.env_suffix}"
  }
  admin_policy_descriptions = {
    iam     = "casey Terraform admin (1/3): the stack's IAM policies, roles and attachments"
    ecs     = "casey Terraform admin (2/3): ECS cluster and service, ECR, CloudWatch Logs, auto scaling"
    network = "casey Terraform admin (3/3): security groups, load balancer, certificates"
  }
  admin_policy_documents = {
    iam     = data.aws_iam_policy_document.terraform_admin_iam
    ecs     = data.aws_iam_policy_document.terraform_admin_ecs
    network = data.aws_iam_policy_document.terraform_admin_network
  }

  arn_prefix = {
    ecr  = "arn:${local.partition}:ecr:${local.region}:${local.account_id}"
    ecs  = "arn:${local.partition}:ecs:${local.region}:${local.account_id}"
    ec2  = "arn:${local.partition}:ec2:${local.region}:${local.account_id}"
    elb  = "arn:${local.partition}:elasticloadbalancing:${local.region}:${local.account_id}"
    logs = "arn:${local.partition}:logs:${local.region}:${local.account_id}"
    iam  = "arn:${local.partition}:iam::${local.account_id}"
    aas  = "arn:${local.partition}:application-autoscaling:${local.region}:${local.account_id}"
    cw   = "arn:${local.partition}:cloudwatch:${local.region}:${local.account_id}"
    kms  = "arn:${local.partition}:kms:${local.region}:${local.account_id}"
    ssm  = "arn:${local.partition}:ssm:${local.region}:${local.account_id}"
    acm  = "arn:${local.partition}:acm:${local.region}:${local.account_id}"
  }

  admin_role_arn = var.terraform_admin_role_name == null ? null : "${local.arn_prefix.iam}:role/${var.terraform_admin_role_name}"

  # The bucket `casey-deploy state bootstrap` creates (src/backend.rs names it).
  state_bucket_arn = "arn:${local.partition}:s3:::casey-tfstate-${local.account_id}-${local.region}"

  stack_role_arns = [
    "${local.arn_prefix.iam}:role/${local.execution_role_name}",
    "${local.arn_prefix.iam}:role/${local.task_role_name}",
  ]
  stack_policy_arns = concat(
    ["${local.arn_prefix.iam}:policy/${local.backend_policy_name}"],
    [for name in values(local.admin_policy_names) : "${local.arn_prefix.iam}:policy/${name}"],
  )
  stack_user_arns = [
    data.aws_iam_user.service_account.arn,
    data.aws_iam_user.terraform_admin.arn,
  ]
  stack_log_group_arns = [
    "${local.arn_prefix.logs}:log-group:${local.usage_log_group_name}",
    "${local.arn_prefix.logs}:log-group:${local.usage_log_group_name}:*",
    "${local.arn_prefix.logs}:log-group:${local.ecs_log_group_name}",
    "${local.arn_prefix.logs}:log-group:${local.ecs_log_group_name}:*",
  ]
  stack_ecs_arns = [
    "${local.arn_prefix.ecs}:cluster/${local.cluster_name}",
    "${local.arn_prefix.ecs}:service/${local.cluster_name}/${local.service_name}",
    "${local.arn_prefix.ecs}:task-definition/${local.task_definition_family}:*",
    "${local.arn_prefix.ecs}:task/${local.cluster_name}/*",
  ]
  stack_elb_arns = [
    "${local.arn_prefix.elb}:loadbalancer/app/${local.alb_name}/*",
    "${local.arn_prefix.elb}:listener/app/${local.alb_name}/*",
    "${local.arn_prefix.elb}:listener-rule/app/${local.alb_name}/*",
    "${local.arn_prefix.elb}:targetgroup/${local.target_group_name}/*",
  ]
  # ECS, Application Auto Scaling and ELB create these on first use in an
  # account (ECS on the first CreateCluster/CreateService) with the caller's
  # rights (https://docs.aws.amazon.com/AmazonECS/latest/developerguide/using-service-linked-roles.html).
  service_linked_roles = {
    "ecs.amazonaws.com"                         = "${local.arn_prefix.iam}:role/aws-service-role/ecs.amazonaws.com/AWSServiceRoleForECS"
    "ecs.application-autoscaling.amazonaws.com" = local.autoscaling_service_role
    "elasticloadbalancing.amazonaws.com"        = "${local.arn_prefix.iam}:role/aws-service-role/elasticloadbalancing.amazonaws.com/AWSServiceRoleForElasticLoadBalancing"
  }
}

# --- Part 1, casey-terraform-admin: identity and the stack's IAM ---
data "aws_iam_policy_document" "terraform_admin_iam" {
  # No resource-level permissions for these two.
  statement {
    sid       = "Identity"
    actions   = ["sts:GetCallerIdentity", "iam:ListUsers"]
    resources = ["*"]
  }

  statement {
    sid = "IamStackPolicies"
    actions = [
      "iam:CreatePolicy",
      "iam:CreatePolicyVersion",
      "iam:DeletePolicy",
      "iam:DeletePolicyVersion",
      "iam:GetPolicy",
      "iam:GetPolicyVersion",
      "iam:ListEntitiesForPolicy",
      "iam:ListPolicyTags",
      "iam:ListPolicyVersions",
      "iam:TagPolicy",
      "iam:UntagPolicy",
    ]
    resources = local.stack_policy_arns
  }

  statement {
    sid = "IamStackRoles"
    actions = [
      "iam:CreateRole",
      "iam:DeleteRole",
      "iam:GetRole",
      "iam:ListAttachedRolePolicies",
      "iam:ListInstanceProfilesForRole",
      "iam:ListRolePolicies",
      "iam:ListRoleTags",
      "iam:TagRole",
      "iam:UntagRole",
      "iam:UpdateAssumeRolePolicy",
      "iam:UpdateRole",
      "iam:UpdateRoleDescription",
    ]
    resources = local.stack_role_arns
  }

  statement {
    sid = "IamStackRolePolicyAttachments"
    actions = [
      "iam:AttachRolePolicy",
      "iam:DetachRolePolicy",
    ]
    resources = local.stack_role_arns

    condition {
      test     = "ArnEquals"
      variable = "iam:PolicyARN"
      values   = [local.ecs_task_execution_arn, "${local.arn_prefix.iam}:policy/${local.backend_policy_name}"]
    }
  }

  statement {
    sid       = "IamPassTaskRolesToEcs"
    actions   = ["iam:PassRole"]
    resources = local.stack_role_arns

    condition {
      test     = "StringEquals"
      variable = "iam:PassedToService"
      values   = ["ecs-tasks.amazonaws.com"]
    }
  }

  statement {
    sid = "IamStackUsers"
    actions = [
      "iam:GetUser",
      "iam:ListAttachedUserPolicies",
    ]
    resources = local.stack_user_arns
  }

  # Only the stack's own policies can be attached, so the admin cannot grant
  # itself (or the service account) anything else.
  statement {
    sid = "IamStackUserPolicyAttachments"
    actions = [
      "iam:AttachUserPolicy",
      "iam:DetachUserPolicy",
    ]
    resources = local.stack_user_arns

    condition {
      test     = "ArnEquals"
      variable = "iam:PolicyARN"
      values   = local.stack_policy_arns
    }
  }

  statement {
    sid       = "IamServiceLinkedRoles"
    actions   = ["iam:CreateServiceLinkedRole"]
    resources = values(local.service_linked_roles)

    condition {
      test     = "StringEquals"
      variable = "iam:AWSServiceName"
      values   = keys(local.service_linked_roles)
    }
  }

  # The shared state (`casey-deploy state bootstrap`): the bucket it creates
  # and configures, and the objects the S3 backend and the deploy lock use
  # (the state, terraform's `<key>.tflock`, casey-deploy's deploy.lock).
  # HeadBucket is authorised as s3:ListBucket.
  statement {
    sid = "StateBucket"
    actions = [
      "s3:CreateBucket",
      "s3:ListBucket",
      "s3:GetBucketVersioning",
      "s3:PutBucketVersioning",
      "s3:GetEncryptionConfiguration",
      "s3:PutEncryptionConfiguration",
      "s3:GetBucketPublicAccessBlock",
      "s3:PutBucketPublicAccessBlock",
      "s3:GetBucketPolicy",
      "s3:PutBucketPolicy",
    ]
    resources = [local.state_bucket_arn]
  }

  statement {
    sid = "StateObjects"
    actions = [
      "s3:GetObject",
      "s3:PutObject",
      "s3:DeleteObject",
    ]
    resources = ["${local.state_bucket_arn}/${local.project}/*"]
  }

  # The deploy role (CI), when there is one: it gets the admin's own
  # policies and nothing else. The reads are a statement of their own:
  # iam:PolicyARN is absent from their requests, so the condition would
  # deny them on AWS.
  dynamic "statement" {
    for_each = var.terraform_admin_role_name == null ? [] : [local.admin_role_arn]
    content {
      sid       = "IamDeployRoleRead"
      actions   = ["iam:GetRole", "iam:ListAttachedRolePolicies"]
      resources = [statement.value]
    }
  }

  dynamic "statement" {
    for_each = var.terraform_admin_role_name == null ? [] : [local.admin_role_arn]
    content {
      sid       = "IamDeployRolePolicies"
      actions   = ["iam:AttachRolePolicy", "iam:DetachRolePolicy"]
      resources = [statement.value]

      condition {
        test     = "ArnEquals"
        variable = "iam:PolicyARN"
        values   = [for name in values(local.admin_policy_names) : "${local.arn_prefix.iam}:policy/${name}"]
      }
    }
  }

  # RegisterScalableTarget passes the ECS auto scaling service-linked role.
  statement {
    sid       = "IamPassAutoScalingRole"
    actions   = ["iam:PassRole"]
    resources = [local.autoscaling_service_role]

    condition {
      test     = "StringEquals"
      variable = "iam:PassedToService"
      values   = ["application-autoscaling.amazonaws.com"]
    }
  }
}

# --- Part 2, casey-terraform-admin-ecs: the service, its image, logs and scaling ---
data "aws_iam_policy_document" "terraform_admin_ecs" {
  #checkov:skip=CKV_AWS_356:Only ecs:ListTasks uses "*" among restrictable actions (it scopes to container instances, which Fargate has none of); the ecs:cluster condition limits it to the stack's cluster.
  # No resource-level permissions for these.
  statement {
    sid = "EcsEcrLogsReadOnly"
    actions = [
      "ecs:DescribeTaskDefinition",
      "ecs:DeregisterTaskDefinition",
      "ecs:ListClusters",
      "ecs:ListTaskDefinitions",
      "ecr:GetAuthorizationToken",
      "logs:DescribeLogGroups",
      "application-autoscaling:DescribeScalableTargets",
      "application-autoscaling:DescribeScalingActivities",
      "application-autoscaling:DescribeScalingPolicies",
    ]
    resources = ["*"]
  }

  # ListTasks only supports container-instance ARNs, which Fargate tasks do
  # not have; the ecs:cluster condition limits both to the stack's cluster.
  statement {
    sid       = "EcsListInStackCluster"
    actions   = ["ecs:ListTasks", "ecs:ListServices"]
    resources = ["*"]

    condition {
      test     = "ArnEquals"
      variable = "ecs:cluster"
      values   = ["${local.arn_prefix.ecs}:cluster/${local.cluster_name}"]
    }
  }

  statement {
    sid = "EcsStackResources"
    actions = [
      "ecs:CreateCluster",
      "ecs:CreateService",
      "ecs:DeleteCluster",
      "ecs:DescribeClusters",
      "ecs:PutClusterCapacityProviders",
      "ecs:UpdateCluster",
      "ecs:UpdateClusterSettings",
      "ecs:DeleteService",
      "ecs:DescribeServices",
      "ecs:UpdateService",
      "ecs:DescribeTasks",
      "ecs:RegisterTaskDefinition",
      "ecs:ListTagsForResource",
      "ecs:TagResource",
      "ecs:UntagResource",
    ]
    resources = local.stack_ecs_arns
  }

  statement {
    sid = "EcrStackRepository"
    actions = [
      "ecr:CreateRepository",
      "ecr:DeleteRepository",
      "ecr:DescribeRepositories",
      "ecr:PutImageScanningConfiguration",
      "ecr:PutImageTagMutability",
      "ecr:GetLifecyclePolicy",
      "ecr:PutLifecyclePolicy",
      "ecr:DeleteLifecyclePolicy",
      "ecr:GetRepositoryPolicy",
      "ecr:ListTagsForResource",
      "ecr:TagResource",
      "ecr:UntagResource",
      # Image push/pull for casey-deploy image.
      "ecr:BatchCheckLayerAvailability",
      "ecr:InitiateLayerUpload",
      "ecr:UploadLayerPart",
      "ecr:CompleteLayerUpload",
      "ecr:PutImage",
      "ecr:BatchGetImage",
      "ecr:GetDownloadUrlForLayer",
      "ecr:DescribeImages",
      "ecr:ListImages",
      "ecr:BatchDeleteImage",
    ]
    resources = ["${local.arn_prefix.ecr}:repository/${local.ecr_repository_name}"]
  }

  # ECR grants itself access to the AWS managed aws/ecr key on repository
  # creation and retires the grant on deletion.
  statement {
    sid = "EcrKmsGrants"
    actions = [
      "kms:CreateGrant",
      "kms:DescribeKey",
      "kms:RetireGrant",
    ]
    resources = ["${local.arn_prefix.kms}:key/*"]

    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["ecr.${local.region}.amazonaws.com"]
    }
  }

  # The release record (release.tf): Terraform creates and reads it,
  # casey-deploy writes a version per deploy and reads its history.
  statement {
    sid = "SsmStackRelease"
    actions = [
      "ssm:PutParameter",
      "ssm:GetParameter",
      "ssm:GetParameters",
      "ssm:GetParameterHistory",
      "ssm:DeleteParameter",
      "ssm:AddTagsToResource",
      "ssm:RemoveTagsFromResource",
      "ssm:ListTagsForResource",
    ]
    resources = ["${local.arn_prefix.ssm}:parameter${local.release_parameter_name}"]
  }

  statement {
    # DescribeParameters has no resource type (the provider reads the tier with it).
    sid       = "SsmDescribeParameters"
    actions   = ["ssm:DescribeParameters"]
    resources = ["*"]
  }

  statement {
    sid = "LogsStackLogGroups"
    actions = [
      "logs:CreateLogGroup",
      "logs:DeleteLogGroup",
      "logs:PutRetentionPolicy",
      "logs:DeleteRetentionPolicy",
      "logs:ListTagsForResource",
      "logs:ListTagsLogGroup",
      "logs:TagResource",
      "logs:TagLogGroup",
      "logs:UntagResource",
      "logs:UntagLogGroup",
      "logs:DescribeLogStreams",
      "logs:GetLogEvents",
      "logs:FilterLogEvents",
    ]
    resources = local.stack_log_group_arns
  }

  statement {
    sid = "AppAutoScaling"
    actions = [
      "application-autoscaling:DeleteScalingPolicy",
      "application-autoscaling:DeregisterScalableTarget",
      "application-autoscaling:ListTagsForResource",
      "application-autoscaling:PutScalingPolicy",
      "application-autoscaling:RegisterScalableTarget",
      "application-autoscaling:TagResource",
      "application-autoscaling:UntagResource",
    ]
    resources = ["${local.arn_prefix.aas}:scalable-target/*"]
  }

  # Target tracking creates and deletes its CloudWatch alarms with the caller's rights.
  statement {
    sid = "TargetTrackingAlarms"
    actions = [
      "cloudwatch:DeleteAlarms",
      "cloudwatch:DescribeAlarms",
      "cloudwatch:PutMetricAlarm",
    ]
    resources = ["${local.arn_prefix.cw}:alarm:TargetTracking-${local.autoscaling_resource_id}-*"]
  }
}

# --- Part 3, casey-terraform-admin-network: security groups, ALB, certificates ---
data "aws_iam_policy_document" "terraform_admin_network" {
  # No resource-level permissions for these.
  statement {
    sid = "NetworkReadOnly"
    actions = [
      "ec2:DescribeAccountAttributes",
      "ec2:DescribeAvailabilityZones",
      "ec2:DescribeNetworkInterfaces",
      "ec2:DescribeRouteTables",
      "ec2:DescribeSecurityGroupRules",
      "ec2:DescribeSecurityGroups",
      "ec2:DescribeSubnets",
      "ec2:DescribeVpcs",
      "elasticloadbalancing:DescribeCapacityReservation",
      "elasticloadbalancing:DescribeListenerAttributes",
      "elasticloadbalancing:DescribeListeners",
      "elasticloadbalancing:DescribeLoadBalancerAttributes",
      "elasticloadbalancing:DescribeLoadBalancers",
      "elasticloadbalancing:DescribeRules",
      "elasticloadbalancing:DescribeSSLPolicies",
      "elasticloadbalancing:DescribeTags",
      "elasticloadbalancing:DescribeTargetGroupAttributes",
      "elasticloadbalancing:DescribeTargetGroups",
      "elasticloadbalancing:DescribeTargetHealth",
      "acm:ListCertificates",
    ]
    resources = ["*"]
  }

  # Security groups are scoped by the Project tag once they exist. VPC ARNs
  # use a wildcard so that changing vpc_id does not need a policy update
  # first (the new VPC is read and used in the same plan/apply).
  statement {
    sid       = "Ec2DescribeStackVpc"
    actions   = ["ec2:DescribeVpcAttribute"]
    resources = ["${local.arn_prefix.ec2}:vpc/*"]
  }

  statement {
    sid     = "Ec2CreateSecurityGroup"
    actions = ["ec2:CreateSecurityGroup"]
    resources = [
      "${local.arn_prefix.ec2}:vpc/*",
      "${local.arn_prefix.ec2}:security-group/*",
    ]
  }

  statement {
    sid = "Ec2TagOnCreate"
    actions = [
      "ec2:CreateTags",
    ]
    resources = [
      "${local.arn_prefix.ec2}:security-group/*",
      "${local.arn_prefix.ec2}:security-group-rule/*",
    ]

    condition {
      test     = "StringEquals"
      variable = "ec2:CreateAction"
      values   = ["CreateSecurityGroup", "AuthorizeSecurityGroupIngress", "AuthorizeSecurityGroupEgress"]
    }
  }

  statement {
    sid = "Ec2ManageStackSecurityGroups"
    actions = [
      "ec2:AuthorizeSecurityGroupEgress",
      "ec2:AuthorizeSecurityGroupIngress",
      "ec2:CreateTags",
      "ec2:DeleteSecurityGroup",
      "ec2:DeleteTags",
      "ec2:ModifySecurityGroupRules",
      "ec2:RevokeSecurityGroupEgress",
      "ec2:RevokeSecurityGroupIngress",
      "ec2:UpdateSecurityGroupRuleDescriptionsEgress",
      "ec2:UpdateSecurityGroupRuleDescriptionsIngress",
    ]
    resources = ["${local.arn_prefix.ec2}:security-group/*"]

    condition {
      test     = "StringEquals"
      variable = "aws:ResourceTag/Project"
      values   = [local.project]
    }
  }

  # A rule is a resource of its own in these calls; it is only reachable
  # through its (tag-scoped) security group.
  statement {
    sid = "Ec2SecurityGroupRules"
    actions = [
      "ec2:AuthorizeSecurityGroupEgress",
      "ec2:AuthorizeSecurityGroupIngress",
      "ec2:CreateTags",
      "ec2:DeleteTags",
      "ec2:ModifySecurityGroupRules",
      "ec2:RevokeSecurityGroupEgress",
      "ec2:RevokeSecurityGroupIngress",
    ]
    resources = ["${local.arn_prefix.ec2}:security-group-rule/*"]
  }

  statement {
    sid = "ElbStackResources"
    actions = [
      "elasticloadbalancing:AddTags",
      "elasticloadbalancing:CreateListener",
      "elasticloadbalancing:CreateLoadBalancer",
      "elasticloadbalancing:CreateTargetGroup",
      "elasticloadbalancing:DeleteListener",
      "elasticloadbalancing:DeleteLoadBalancer",
      "elasticloadbalancing:DeleteTargetGroup",
      "elasticloadbalancing:ModifyListener",
      "elasticloadbalancing:ModifyListenerAttributes",
      "elasticloadbalancing:ModifyLoadBalancerAttributes",
      "elasticloadbalancing:ModifyTargetGroup",
      "elasticloadbalancing:ModifyTargetGroupAttributes",
      "elasticloadbalancing:RemoveTags",
      "elasticloadbalancing:SetSecurityGroups",
      "elasticloadbalancing:SetSubnets",
    ]
    resources = local.stack_elb_arns
  }

  statement {
    sid       = "AcmDescribeCertificates"
    actions   = ["acm:DescribeCertificate", "acm:ListTagsForCertificate"]
    resources = ["${local.arn_prefix.acm}:certificate/*"]
  }
}

resource "aws_iam_policy" "terraform_admin" {
  for_each = local.admin_policy_names

  name        = each.value
  description = local.admin_policy_descriptions[each.key]
  policy      = local.admin_policy_documents[each.key].json

  lifecycle {
    # Replacing a part would detach it from the admin mid-apply (see the
    # attachment below); an imported policy's description must not force that.
    prevent_destroy = true
    ignore_changes  = [description]

    precondition {
      condition     = length(local.admin_policy_documents[each.key].minified_json) <= local.managed_policy_quota
      error_message = "IAM policy ${each.value} (aws_iam_policy.terraform_admin[\"${each.key}\"]) renders to ${length(local.admin_policy_documents[each.key].minified_json)} characters without whitespace, over IAM's quota of ${local.managed_policy_quota} for a managed policy; CreatePolicy would fail with LimitExceeded. Move statements from data.aws_iam_policy_document.terraform_admin_${each.key} into another part (a new key in local.admin_policy_names and local.admin_policy_documents, terraform/iam.tf), or shorten its ARN lists."
    }
  }
}

# The first part keeps the address and name it had when it was one policy.
moved {
  from = aws_iam_policy.terraform_admin
  to   = aws_iam_policy.terraform_admin["iam"]
}

moved {
  from = aws_iam_user_policy_attachment.terraform_admin
  to   = aws_iam_user_policy_attachment.terraform_admin["iam"]
}

# Lock-out protection. The admin user runs Terraform with (ideally) only these
# policies. Nothing in the stack depends on these attachments, so `terraform
# destroy` would detach them in its first wave and every later call would be
# denied, leaving a half-destroyed stack and an admin who can no longer fix it.
# prevent_destroy makes Terraform refuse any plan that deletes or replaces them
# (including a change of terraform_admin_iam_user_name). To tear the stack down:
#   terraform state rm aws_iam_user_policy_attachment.terraform_admin aws_iam_policy.terraform_admin
#   terraform destroy
# The policies then stay attached in AWS, so the admin keeps the rights to
# re-create the stack; before that, adopt them again (or apply fails with
# EntityAlreadyExists), for each part P in iam, ecs, network (policy
# casey-terraform-admin, casey-terraform-admin-ecs, casey-terraform-admin-network):
#   terraform import 'aws_iam_policy.terraform_admin["P"]' arn:aws:iam::<account>:policy/<policy>
#   terraform import 'aws_iam_user_policy_attachment.terraform_admin["P"]' <admin user>/arn:aws:iam::<account>:policy/<policy>
# Detach and delete them with another principal when decommissioning for good.
resource "aws_iam_user_policy_attachment" "terraform_admin" {
  #checkov:skip=CKV_AWS_40:The spec attaches the deployer policies to the existing admin IAM user; Terraform does not manage groups for it.
  for_each = local.admin_policy_names

  user       = data.aws_iam_user.terraform_admin.user_name
  policy_arn = aws_iam_policy.terraform_admin[each.key].arn

  lifecycle {
    prevent_destroy = true
  }
}

# The deploy role (var.terraform_admin_role_name, e.g. for CI) holds the same
# policies as the admin user. Like the user's, these attachments are applied
# first and kept by `casey-deploy destroy`.
data "aws_iam_role" "terraform_admin" {
  count = var.terraform_admin_role_name == null ? 0 : 1
  name  = var.terraform_admin_role_name
}

resource "aws_iam_role_policy_attachment" "terraform_admin" {
  for_each = var.terraform_admin_role_name == null ? {} : local.admin_policy_names

  role       = data.aws_iam_role.terraform_admin[0].name
  policy_arn = aws_iam_policy.terraform_admin[each.key].arn
}
