locals {
  # Value of the Project tag on every resource; the admin policy scopes
  # security-group changes to it.
  project = "casey"

  account_id = data.aws_caller_identity.current.account_id
  partition  = data.aws_partition.current.partition
  region     = var.aws_region

  # The deploy tool and scripts rely on these two: the container name is what
  # ECS reports in DescribeTasks, and clients connect to ws://<task ip>:3001/ws
  # when there is no ALB.
  container_name = "casey-backend"
  container_port = 3001

  # Every name AWS needs to be unique gets "-<environment>", except in
  # production: the default environment keeps the names it always had, so an
  # existing stack plans no changes. (Environment names may not start with an
  # admin policy part's key, see var.environment, so no two names collide.)
  env_suffix          = var.environment == "production" ? "" : "-${var.environment}"
  cluster_name        = "${var.ecs_cluster_name}${local.env_suffix}"
  service_name        = "${var.ecs_service_name}${local.env_suffix}"
  ecr_repository_name = "${var.ecr_repository_name}${local.env_suffix}"
  ecs_log_group_name  = "${var.ecs_log_group_name}${local.env_suffix}"

  backend_policy_name    = "casey-backend-ai${local.env_suffix}"
  admin_policy_name      = "casey-terraform-admin"
  usage_log_group_name   = "casey-backend-aws-usage${local.env_suffix}"
  execution_role_name    = "${local.service_name}-ecs-execution"
  task_role_name         = "${local.service_name}-ecs-task"
  task_definition_family = local.service_name
  # ALB and target group names: 1-32 letters, digits and dashes (checked by
  # var.alb_name's validation and the preconditions in alb.tf).
  alb_name               = var.alb_name == null ? local.service_name : "${var.alb_name}${local.env_suffix}"
  target_group_name      = local.alb_name
  security_group_tasks   = "${local.service_name}-tasks"
  security_group_alb     = "${local.service_name}-alb"
  ecs_task_execution_arn = "arn:${local.partition}:iam::aws:policy/service-role/AmazonECSTaskExecutionRolePolicy"
  # A pinned backend_container_image wins over the recorded release (release.tf).
  # (The placeholder when the record is not in the state, e.g. during an import.)
  backend_image            = coalesce(var.backend_container_image, local.release_image, "${aws_ecr_repository.backend.repository_url}:latest")
  release_parameter_name   = "/${local.service_name}/release"
  alb_https                = var.enable_alb && var.alb_certificate_arn != null
  autoscaling_resource_id  = "service/${local.cluster_name}/${local.service_name}"
  autoscaling_service_role = "arn:${local.partition}:iam::${local.account_id}:role/aws-service-role/ecs.application-autoscaling.amazonaws.com/AWSServiceRoleForApplicationAutoScaling_ECSService"
}
