################################################################################
# General
################################################################################

variable "aws_region" {
  description = "AWS region for every resource of the stack, e.g. \"us-east-1\" or \"eu-west-2\". Default: \"us-east-1\"."
  type        = string
  default     = "us-east-1"
  nullable    = false

  validation {
    condition     = can(regex("^[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-[0-9]+$", var.aws_region))
    error_message = "aws_region must be an AWS region code such as \"us-east-1\"."
  }
}

variable "allowed_account_ids" {
  description = "The only AWS account ids the provider may touch (12 digits each); terraform refuses any other account before it changes anything. casey-deploy passes the account it pinned (--account, CASEY_AWS_ACCOUNT_ID, or the account the applied stack lives in). Default: [] (no pin)."
  type        = list(string)
  default     = []
  nullable    = false

  validation {
    condition     = alltrue([for id in var.allowed_account_ids : can(regex("^[0-9]{12}$", id))])
    error_message = "allowed_account_ids must hold 12-digit AWS account ids, such as [\"123456789012\"]."
  }
}

variable "environment" {
  description = "Environment name: the Environment tag, and outside production the suffix \"-<environment>\" of every name AWS needs unique (cluster, service, ECR repository, log groups, roles, policies, security groups, ALB, release parameter), so environments live side by side in one account. Lowercase letters, digits and dashes, 1-16 characters (each environment-scoped ARN in the admin's policies carries the suffix: .ci/lint-iam.py renders the longest), not starting with \"ecs\" or \"network\" as a word (the admin policy parts' names end in them). Default: \"production\", whose names carry no suffix."
  type        = string
  default     = "production"
  nullable    = false

  validation {
    condition     = can(regex("^[a-z0-9]([a-z0-9-]{0,14}[a-z0-9])?$", var.environment))
    error_message = "environment must be 1-16 lowercase letters, digits or dashes, starting and ending with a letter or digit (e.g. \"production\")."
  }

  # casey-terraform-admin-<env> would be environment "ecs-<x>"'s name for the
  # admin's ecs part of environment "<x>" (casey-terraform-admin-ecs-<x>).
  validation {
    condition     = length(regexall("^(ecs|network)(-|$)", var.environment)) == 0
    error_message = "environment must not be \"ecs\" or \"network\" or start with \"ecs-\" or \"network-\": casey-terraform-admin-<environment> would then be another environment's admin policy (casey-terraform-admin-ecs-<name>). Choose another name, e.g. \"staging\"."
  }
}

variable "tags" {
  description = "Extra tags for every resource. Project, Environment and ManagedBy are always set by the stack and win over these. Default: {}."
  type        = map(string)
  default     = {}
  nullable    = false
}

################################################################################
# IAM principals (both users must already exist; Terraform does not create them)
################################################################################

variable "service_account_iam_user_name" {
  description = "Existing IAM user that runs the backend in local development; gets the casey-backend-ai policy. Default: \"casey_localdev_service\"."
  type        = string
  default     = "casey_localdev_service"
  nullable    = false

  validation {
    condition     = can(regex("^[A-Za-z0-9+=,.@_-]{1,64}$", var.service_account_iam_user_name))
    error_message = "service_account_iam_user_name must be an IAM user name: 1-64 characters from A-Z a-z 0-9 + = , . @ _ -."
  }
}

variable "terraform_admin_iam_user_name" {
  description = "Existing IAM user that runs Terraform and casey-deploy; gets the casey-terraform-admin, casey-terraform-admin-ecs and casey-terraform-admin-network policies. Default: \"casey_aniruddh\"."
  type        = string
  default     = "casey_aniruddh"
  nullable    = false

  validation {
    condition     = can(regex("^[A-Za-z0-9+=,.@_-]{1,64}$", var.terraform_admin_iam_user_name))
    error_message = "terraform_admin_iam_user_name must be an IAM user name: 1-64 characters from A-Z a-z 0-9 + = , . @ _ -."
  }
}

variable "terraform_admin_role_name" {
  description = "Existing IAM role that may deploy too, such as the role a CI job assumes (OIDC web identity or sts:AssumeRole): it gets the same three admin policies as terraform_admin_iam_user_name, and casey-deploy accepts it with --admin-principal <role ARN>. Default: null (no role)."
  type        = string
  default     = null

  validation {
    condition     = var.terraform_admin_role_name == null || can(regex("^[A-Za-z0-9+=,.@_-]{1,64}$", var.terraform_admin_role_name))
    error_message = "terraform_admin_role_name must be an IAM role name: 1-64 characters from A-Z a-z 0-9 + = , . @ _ -."
  }
}

################################################################################
# CloudWatch Logs
################################################################################

variable "ecs_log_group_name" {
  description = "CloudWatch log group for the backend containers' stdout/stderr: 1-512 characters from A-Z a-z 0-9 _ - / . #, not starting with \"aws/\" (CloudWatch Logs CreateLogGroup, https://docs.aws.amazon.com/AmazonCloudWatchLogs/latest/APIReference/API_CreateLogGroup.html). Default: \"/ecs/casey-backend\"."
  type        = string
  default     = "/ecs/casey-backend"
  nullable    = false

  validation {
    condition     = can(regex("^[A-Za-z0-9_./#-]{1,512}$", var.ecs_log_group_name)) && !startswith(var.ecs_log_group_name, "aws/")
    error_message = "ecs_log_group_name must be 1-512 characters from A-Z a-z 0-9 _ - / . # and must not start with \"aws/\" (reserved by AWS), e.g. \"/ecs/casey-backend\"."
  }
}

variable "log_retention_in_days" {
  description = "Retention of both log groups in days. One of 1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653, or 0 to keep logs forever. Default: 30."
  type        = number
  default     = 30
  nullable    = false

  validation {
    condition     = contains([0, 1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.log_retention_in_days)
    error_message = "log_retention_in_days must be one of the values CloudWatch Logs accepts: 0 (never expire), 1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653."
  }
}

################################################################################
# ECR
################################################################################

variable "ecr_repository_name" {
  description = "Name of the ECR repository for backend images: 2-256 lowercase letters, digits and . _ - / separators (ECR CreateRepository, https://docs.aws.amazon.com/AmazonECR/latest/APIReference/API_CreateRepository.html). Default: \"casey-backend\"."
  type        = string
  default     = "casey-backend"
  nullable    = false

  validation {
    condition     = can(regex("^[a-z0-9]+([._-][a-z0-9]+)*(/[a-z0-9]+([._-][a-z0-9]+)*)*$", var.ecr_repository_name)) && length(var.ecr_repository_name) >= 2 && length(var.ecr_repository_name) <= 256
    error_message = "ecr_repository_name must be 2-256 lowercase characters: letters, digits and . _ - / separators (e.g. \"casey-backend\")."
  }
}

variable "ecr_keep_tagged_images" {
  description = "The ECR lifecycle policy keeps the newest N tagged images (each push is tagged with its git sha) and expires older ones. The running deployment's image and the circuit breaker's rollback target are among the newest, as are the 10 releases `casey-deploy history` lists by default, so N has a floor of 10; raise it to keep older releases for `casey-deploy rollback --to`. 10-1000. Default: 30."
  type        = number
  default     = 30
  nullable    = false

  validation {
    condition     = var.ecr_keep_tagged_images >= 10 && var.ecr_keep_tagged_images <= 1000 && floor(var.ecr_keep_tagged_images) == var.ecr_keep_tagged_images
    error_message = "ecr_keep_tagged_images must be a whole number from 10 to 1000: fewer could expire the image of the running deployment or of its rollback target."
  }
}

variable "ecr_untagged_expire_days" {
  description = "Days after its push that the ECR lifecycle policy expires an untagged image (tags are immutable, so only an image pushed without a tag or whose tag was deleted by hand). 7-3650. Default: 14."
  type        = number
  default     = 14
  nullable    = false

  validation {
    condition     = var.ecr_untagged_expire_days >= 7 && var.ecr_untagged_expire_days <= 3650 && floor(var.ecr_untagged_expire_days) == var.ecr_untagged_expire_days
    error_message = "ecr_untagged_expire_days must be a whole number of days from 7 to 3650."
  }
}

variable "ecr_force_delete" {
  description = "Let `terraform destroy` delete the ECR repository even when it still holds images. Default: false (destroy fails while images exist, so pushed images are not lost by accident)."
  type        = bool
  default     = false
  nullable    = false
}

################################################################################
# ECS
################################################################################

variable "ecs_cluster_name" {
  description = "Name of the ECS cluster: 1-255 letters, digits, - and _ (ECS CreateCluster, https://docs.aws.amazon.com/AmazonECS/latest/APIReference/API_CreateCluster.html). Default: \"casey\"."
  type        = string
  default     = "casey"
  nullable    = false

  validation {
    condition     = can(regex("^[A-Za-z0-9_-]{1,255}$", var.ecs_cluster_name))
    error_message = "ecs_cluster_name must be 1-255 characters from A-Z a-z 0-9 - _."
  }
}

variable "ecs_service_name" {
  description = <<-EOT
    Name of the ECS service, and the base of other names: the task definition family, the IAM roles
    <name>-ecs-execution and <name>-ecs-task, the security groups <name>-tasks and <name>-alb, and (unless
    alb_name is set) the ALB and its target group. So: 1-50 letters, digits, - and _ (an IAM role name holds
    at most 64 characters, https://docs.aws.amazon.com/IAM/latest/APIReference/API_CreateRole.html; ECS allows
    255, https://docs.aws.amazon.com/AmazonECS/latest/APIReference/API_CreateService.html), not starting with
    "sg-" (reserved for security group IDs, https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_CreateSecurityGroup.html).
    Default: "casey-backend".
  EOT
  type        = string
  default     = "casey-backend"
  nullable    = false

  validation {
    condition     = can(regex("^[A-Za-z0-9_-]{1,50}$", var.ecs_service_name)) && !startswith(var.ecs_service_name, "sg-")
    error_message = "ecs_service_name must be 1-50 characters from A-Z a-z 0-9 - _ (the IAM role \"<name>-ecs-execution\" may hold at most 64) and must not start with \"sg-\" (the security group \"<name>-tasks\" could not be created), e.g. \"casey-backend\"."
  }
}

variable "container_insights" {
  description = "CloudWatch Container Insights for the cluster: \"enabled\", \"enhanced\" or \"disabled\". Default: \"enabled\"."
  type        = string
  default     = "enabled"
  nullable    = false

  validation {
    condition     = contains(["enabled", "enhanced", "disabled"], var.container_insights)
    error_message = "container_insights must be \"enabled\", \"enhanced\" or \"disabled\"."
  }
}

variable "backend_container_image" {
  description = "Full image reference for the backend container (e.g. \"123456789012.dkr.ecr.us-east-1.amazonaws.com/casey-backend:v1.2.3\" or \"...@sha256:<digest>\"). Default: null, which means \"<ECR repository URL>:latest\"."
  type        = string
  default     = null

  validation {
    condition = var.backend_container_image == null ? true : can(regex(
      "^[a-z0-9]+([._-][a-z0-9]+)*(:[0-9]+)?(/[a-z0-9]+([._-][a-z0-9]+)*)*(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@sha256:[a-f0-9]{64})?$",
      var.backend_container_image
    ))
    error_message = "backend_container_image must be an image reference such as \"<registry>/<repository>:<tag>\" or \"<registry>/<repository>@sha256:<digest>\" (lowercase repository path)."
  }
}

variable "task_cpu" {
  description = "Fargate task CPU units: 256, 512, 1024, 2048, 4096, 8192 or 16384 (task_memory must be a valid combination). Default: 512."
  type        = number
  default     = 512
  nullable    = false

  validation {
    condition     = contains([256, 512, 1024, 2048, 4096, 8192, 16384], var.task_cpu)
    error_message = "task_cpu must be one of the Fargate CPU values: 256, 512, 1024, 2048, 4096, 8192, 16384."
  }
}

variable "task_memory" {
  description = "Fargate task memory in MiB. Valid per task_cpu: 256 -> 512/1024/2048; 512 -> 1024-4096 (1024 steps); 1024 -> 2048-8192 (1024 steps); 2048 -> 4096-16384 (1024 steps); 4096 -> 8192-30720 (1024 steps); 8192 -> 16384-61440 (4096 steps); 16384 -> 32768-122880 (8192 steps). Default: 1024."
  type        = number
  default     = 1024
  nullable    = false

  validation {
    condition     = var.task_memory == 512 || (var.task_memory >= 1024 && var.task_memory <= 122880 && var.task_memory % 1024 == 0)
    error_message = "task_memory must be 512 or a multiple of 1024 MiB up to 122880 (and a valid Fargate combination with task_cpu)."
  }
}

variable "readonly_root_filesystem" {
  description = "Run the backend container with a read-only root filesystem (a writable task-storage volume is mounted at /tmp). Default: true."
  type        = bool
  default     = true
  nullable    = false
}

variable "backend_healthcheck_command" {
  description = "Container health check command (ECS healthCheck.command). The backend binary's `healthcheck` mode probes its /health endpoint. Default: [\"CMD\", \"/usr/local/bin/casey-backend\", \"healthcheck\"]."
  type        = list(string)
  default     = ["CMD", "/usr/local/bin/casey-backend", "healthcheck"]
  nullable    = false

  validation {
    condition     = length(var.backend_healthcheck_command) >= 2 && contains(["CMD", "CMD-SHELL"], try(var.backend_healthcheck_command[0], ""))
    error_message = "backend_healthcheck_command must start with \"CMD\" or \"CMD-SHELL\" followed by the command, e.g. [\"CMD\", \"/usr/local/bin/casey-backend\", \"healthcheck\"]."
  }
}

variable "desired_count" {
  description = "Number of backend tasks when the service is created. Afterwards Application Auto Scaling owns the count (Terraform ignores later changes). Must lie within autoscaling_min_capacity..autoscaling_max_capacity. Default: 1."
  type        = number
  default     = 1
  nullable    = false

  validation {
    condition     = var.desired_count >= 0 && floor(var.desired_count) == var.desired_count
    error_message = "desired_count must be a whole number >= 0."
  }
}

# ECS sends SIGTERM, then SIGKILL after this. The backend closes its
# WebSockets with 1001 at once and exits within CASEY_SHUTDOWN_TIMEOUT_SECS
# (10 s by default, 25 at most) plus 3 s to flush usage records
# (backend/src/server.rs), so 30 s covers even its longest setting.
variable "container_stop_timeout" {
  description = "Seconds ECS waits after SIGTERM before it kills the backend container (task definition stopTimeout; Fargate allows 2-120). Must exceed the backend's graceful shutdown: CASEY_SHUTDOWN_TIMEOUT_SECS (default 10, at most 25) + 3 s for the usage log. 30-120. Default: 30."
  type        = number
  default     = 30
  nullable    = false

  validation {
    condition     = var.container_stop_timeout >= 30 && var.container_stop_timeout <= 120 && floor(var.container_stop_timeout) == var.container_stop_timeout
    error_message = "container_stop_timeout must be a whole number of seconds from 30 (the backend's longest graceful shutdown, 28 s, plus a margin) to 120 (Fargate's maximum)."
  }
}

variable "task_assign_public_ip" {
  description = "Give each task a public IP. Keep true on public subnets (the default VPC's): without a NAT gateway or VPC endpoints a task has no other route to ECR and CloudWatch Logs, and cannot pull its image. With the ALB the task security group still admits only the ALB's group, so the public IP opens nothing. Set false only for private subnets with a NAT gateway, or with VPC endpoints for ECR (api and dkr), S3 and CloudWatch Logs. Without the ALB it must stay true: clients connect to the task's public IP. Default: true."
  type        = bool
  default     = true
  nullable    = false
}

variable "health_check_grace_period_seconds" {
  description = "Seconds ECS ignores failing ALB health checks after a task starts (only used when enable_alb is true). 0-2147483647. Default: 60."
  type        = number
  default     = 60
  nullable    = false

  validation {
    condition     = var.health_check_grace_period_seconds >= 0 && var.health_check_grace_period_seconds <= 2147483647
    error_message = "health_check_grace_period_seconds must be between 0 and 2147483647."
  }
}

################################################################################
# Auto scaling
################################################################################

variable "autoscaling_min_capacity" {
  description = "Minimum number of backend tasks. Must be <= autoscaling_max_capacity. Default: 1."
  type        = number
  default     = 1
  nullable    = false

  validation {
    condition     = var.autoscaling_min_capacity >= 0 && floor(var.autoscaling_min_capacity) == var.autoscaling_min_capacity
    error_message = "autoscaling_min_capacity must be a whole number >= 0."
  }
}

variable "autoscaling_max_capacity" {
  description = "Maximum number of backend tasks. Must be >= autoscaling_min_capacity. Default: 4."
  type        = number
  default     = 4
  nullable    = false

  validation {
    condition     = var.autoscaling_max_capacity >= 1 && floor(var.autoscaling_max_capacity) == var.autoscaling_max_capacity
    error_message = "autoscaling_max_capacity must be a whole number >= 1."
  }
}

variable "autoscaling_cpu_target" {
  description = "Target average CPU utilisation (percent) of the service for target tracking. 1-100. Default: 60."
  type        = number
  default     = 60
  nullable    = false

  validation {
    condition     = var.autoscaling_cpu_target >= 1 && var.autoscaling_cpu_target <= 100
    error_message = "autoscaling_cpu_target must be a percentage between 1 and 100."
  }
}

variable "autoscaling_scale_in_cooldown" {
  description = "Seconds after a scale-in before another scale-in. Long by default: scaling in closes the WebSocket sessions of the stopped tasks. Default: 300."
  type        = number
  default     = 300
  nullable    = false

  validation {
    condition     = var.autoscaling_scale_in_cooldown >= 0
    error_message = "autoscaling_scale_in_cooldown must be >= 0."
  }
}

variable "autoscaling_scale_out_cooldown" {
  description = "Seconds after a scale-out before another scale-out. Default: 60."
  type        = number
  default     = 60
  nullable    = false

  validation {
    condition     = var.autoscaling_scale_out_cooldown >= 0
    error_message = "autoscaling_scale_out_cooldown must be >= 0."
  }
}

################################################################################
# Network
################################################################################

variable "vpc_id" {
  description = "VPC for the tasks (and the ALB), e.g. \"vpc-0123456789abcdef0\". Default: null, which uses the region's default VPC."
  type        = string
  default     = null

  validation {
    condition     = var.vpc_id == null ? true : can(regex("^vpc-[0-9a-f]{8,17}$", var.vpc_id))
    error_message = "vpc_id must be a VPC ID such as \"vpc-0123456789abcdef0\", or null for the default VPC."
  }
}

variable "subnet_ids" {
  description = "Subnets for the tasks and the ALB. The ALB needs subnets in at least two Availability Zones and takes one subnet per zone (the first ID in sort order). The tasks need a route to ECR and CloudWatch Logs: public subnets with task_assign_public_ip, or private ones with a NAT gateway or VPC endpoints. Default: [] which uses every subnet of the selected VPC."
  type        = list(string)
  default     = []
  nullable    = false

  validation {
    condition     = alltrue([for s in var.subnet_ids : can(regex("^subnet-[0-9a-f]{8,17}$", s))])
    error_message = "subnet_ids must contain subnet IDs such as \"subnet-0123456789abcdef0\" (or be empty to use all subnets of the VPC)."
  }
}

variable "backend_ingress_cidrs" {
  description = "IPv4 CIDRs allowed to reach the tasks on port 3001 when enable_alb is false (the documented no-ALB mode, where clients connect to the task's public IP). Ignored with an ALB: then only the ALB may connect. Default: [\"0.0.0.0/0\"]."
  type        = list(string)
  default     = ["0.0.0.0/0"]
  nullable    = false

  validation {
    condition     = alltrue([for c in var.backend_ingress_cidrs : can(cidrnetmask(c))])
    error_message = "backend_ingress_cidrs must contain IPv4 CIDR blocks such as \"203.0.113.0/24\" or \"0.0.0.0/0\"."
  }
}

################################################################################
# Application Load Balancer
################################################################################

variable "enable_alb" {
  description = "Create an Application Load Balancer in front of the service. Keep false while the AWS account cannot create load balancers; clients then connect to the task's public IP. Default: false."
  type        = bool
  default     = false
  nullable    = false
}

variable "alb_certificate_arn" {
  description = "ACM certificate ARN for the ALB's HTTPS listener (e.g. \"arn:aws:acm:us-east-1:123456789012:certificate/<id>\"). When set: HTTPS on 443 and HTTP 80 redirects to HTTPS. When null: plain HTTP on 80. Default: null."
  type        = string
  default     = null

  validation {
    condition     = var.alb_certificate_arn == null ? true : can(regex("^arn:aws[a-z-]*:acm:[a-z0-9-]+:[0-9]{12}:certificate/[A-Za-z0-9-]+$", var.alb_certificate_arn))
    error_message = "alb_certificate_arn must be an ACM certificate ARN such as \"arn:aws:acm:us-east-1:123456789012:certificate/0a1b2c3d-...\", or null for a plain-HTTP ALB."
  }
}

variable "alb_ingress_cidrs" {
  description = "IPv4 CIDRs allowed to reach the ALB on ports 80 and 443. Default: [\"0.0.0.0/0\"]."
  type        = list(string)
  default     = ["0.0.0.0/0"]
  nullable    = false

  validation {
    condition     = alltrue([for c in var.alb_ingress_cidrs : can(cidrnetmask(c))])
    error_message = "alb_ingress_cidrs must contain IPv4 CIDR blocks such as \"203.0.113.0/24\" or \"0.0.0.0/0\"."
  }
}

variable "alb_name" {
  description = "Name of the ALB and of its target group: 1-32 letters, digits and hyphens, not starting or ending with a hyphen, not starting with \"internal-\" (https://docs.aws.amazon.com/elasticloadbalancing/latest/APIReference/API_CreateLoadBalancer.html, https://docs.aws.amazon.com/elasticloadbalancing/latest/APIReference/API_CreateTargetGroup.html); unique per region and account. Default: null, which uses ecs_service_name (plan fails with the ALB when that is not a valid load balancer name)."
  type        = string
  default     = null

  validation {
    condition     = var.alb_name == null ? true : can(regex("^[A-Za-z0-9]([A-Za-z0-9-]{0,30}[A-Za-z0-9])?$", var.alb_name)) && !startswith(coalesce(var.alb_name, "-"), "internal-")
    error_message = "alb_name must be 1-32 letters, digits and hyphens, must not start or end with a hyphen and must not start with \"internal-\", e.g. \"casey-backend\"."
  }
}

variable "alb_deregistration_delay" {
  description = "Seconds the ALB keeps a deregistering task's open connections (target group deregistration_delay) before it closes them. During a deploy or scale-in ECS deregisters a task, waits for this, and only then sends it SIGTERM; WebSocket sessions on the task live on until the delay ends or the client leaves, then the ALB cuts them (the browser sees close code 1006) and the client must reconnect. AWS advises against short delays for long-lived connections (https://docs.aws.amazon.com/AmazonECS/latest/developerguide/load-balancer-connection-draining.html). Each deploy takes about this much longer. 0-3600. Default: 300 (the ELB default)."
  type        = number
  default     = 300
  nullable    = false

  validation {
    condition     = var.alb_deregistration_delay >= 0 && var.alb_deregistration_delay <= 3600 && floor(var.alb_deregistration_delay) == var.alb_deregistration_delay
    error_message = "alb_deregistration_delay must be a whole number of seconds from 0 to 3600 (https://docs.aws.amazon.com/elasticloadbalancing/latest/application/edit-target-group-attributes.html#deregistration-delay)."
  }
}

variable "alb_idle_timeout" {
  description = "Seconds the ALB keeps an idle connection open. Long by default so quiet WebSocket sessions are not cut. 1-4000. Default: 3600."
  type        = number
  default     = 3600
  nullable    = false

  validation {
    condition     = var.alb_idle_timeout >= 1 && var.alb_idle_timeout <= 4000
    error_message = "alb_idle_timeout must be between 1 and 4000 seconds."
  }
}

variable "alb_deletion_protection" {
  description = "Enable deletion protection on the ALB. While true, setting enable_alb=false or destroying the stack fails until it is set back to false and applied. Default: false."
  type        = bool
  default     = false
  nullable    = false
}

variable "alb_access_logs_bucket" {
  description = "Existing S3 bucket (with the ELB log-delivery bucket policy) for ALB access logs. Default: null (access logs off)."
  type        = string
  default     = null

  validation {
    condition     = var.alb_access_logs_bucket == null ? true : can(regex("^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", var.alb_access_logs_bucket))
    error_message = "alb_access_logs_bucket must be an S3 bucket name (3-63 lowercase letters, digits, dots, dashes) or null."
  }
}
