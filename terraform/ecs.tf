################################################################################
# Cluster
################################################################################

resource "aws_ecs_cluster" "this" {
  name = local.cluster_name

  setting {
    name  = "containerInsights"
    value = var.container_insights
  }
}

################################################################################
# Task definition (https://docs.aws.amazon.com/AmazonECS/latest/developerguide/task_definition_parameters.html)
################################################################################

locals {
  # Fargate's valid memory sizes (MiB) per CPU value.
  fargate_memory = {
    256   = [512, 1024, 2048]
    512   = [for m in range(1024, 4097, 1024) : m]
    1024  = [for m in range(2048, 8193, 1024) : m]
    2048  = [for m in range(4096, 16385, 1024) : m]
    4096  = [for m in range(8192, 30721, 1024) : m]
    8192  = [for m in range(16384, 61441, 4096) : m]
    16384 = [for m in range(32768, 122881, 8192) : m]
  }

  container_definition = {
    name      = local.container_name
    image     = local.backend_image
    essential = true
    # Container-level hard limit equal to the task's; ECS allows it and some
    # emulators need it to run Fargate tasks.
    memory = var.task_memory

    portMappings = [{
      containerPort = local.container_port
      hostPort      = local.container_port
      protocol      = "tcp"
    }]

    # Sorted by name: ECS returns them sorted, which keeps plans clean.
    environment = [
      { name = "AWS_REGION", value = var.aws_region },
      { name = "CASEY_ADMIN_USER", value = var.terraform_admin_iam_user_name },
      { name = "CASEY_USAGE_LOG_GROUP", value = aws_cloudwatch_log_group.casey_backend_aws_usage.name },
    ]

    healthCheck = {
      command     = var.backend_healthcheck_command
      interval    = 30
      timeout     = 5
      retries     = 3
      startPeriod = 15
    }

    logConfiguration = {
      logDriver = "awslogs"
      options = {
        awslogs-group         = aws_cloudwatch_log_group.ecs.name
        awslogs-region        = var.aws_region
        awslogs-stream-prefix = "backend"
      }
    }

    # SIGTERM to SIGKILL; see var.container_stop_timeout.
    stopTimeout = var.container_stop_timeout

    readonlyRootFilesystem = var.readonly_root_filesystem
    # Writable scratch space (Fargate task storage) for the read-only root.
    mountPoints = [{
      sourceVolume  = "tmp"
      containerPath = "/tmp"
      readOnly      = false
    }]
  }
}

resource "aws_ecs_task_definition" "backend" {
  family                   = local.task_definition_family
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = tostring(var.task_cpu)
  memory                   = tostring(var.task_memory)
  execution_role_arn       = aws_iam_role.ecs_execution.arn
  task_role_arn            = aws_iam_role.ecs_task.arn

  container_definitions = jsonencode([local.container_definition])

  volume {
    name = "tmp"
  }

  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = "X86_64"
  }

  lifecycle {
    precondition {
      condition     = contains(lookup(local.fargate_memory, tostring(var.task_cpu), []), var.task_memory)
      error_message = "task_memory ${var.task_memory} is not valid with task_cpu ${var.task_cpu} on Fargate; valid values for this CPU: ${jsonencode(lookup(local.fargate_memory, tostring(var.task_cpu), []))}."
    }
  }
}

################################################################################
# Service
################################################################################

resource "aws_ecs_service" "backend" {
  #checkov:skip=CKV_AWS_333:On the default VPC's public subnets (no NAT, no VPC endpoints) a task needs its public IP to pull from ECR and write logs; var.task_assign_public_ip turns it off for private subnets. With the ALB the task security group admits only the ALB's group; without it clients connect to that IP (documented no-ALB mode).
  name                              = local.service_name
  cluster                           = aws_ecs_cluster.this.id
  task_definition                   = aws_ecs_task_definition.backend.arn
  desired_count                     = var.desired_count
  launch_type                       = "FARGATE"
  platform_version                  = "LATEST"
  propagate_tags                    = "SERVICE"
  enable_ecs_managed_tags           = true
  health_check_grace_period_seconds = var.enable_alb ? var.health_check_grace_period_seconds : null

  deployment_minimum_healthy_percent = 100
  deployment_maximum_percent         = 200

  deployment_circuit_breaker {
    enable   = true
    rollback = true
  }

  network_configuration {
    subnets         = local.subnet_ids
    security_groups = [aws_security_group.ecs_tasks.id]
    # The default VPC has no NAT gateway and no VPC endpoints: a task without
    # a public IP cannot reach ECR or CloudWatch Logs there.
    assign_public_ip = var.task_assign_public_ip
  }

  dynamic "load_balancer" {
    for_each = var.enable_alb ? [aws_lb_target_group.backend[0].arn] : []

    content {
      target_group_arn = load_balancer.value
      container_name   = local.container_name
      container_port   = local.container_port
    }
  }

  # Application Auto Scaling owns the running count after creation; without
  # this every apply would reset it to var.desired_count.
  lifecycle {
    ignore_changes = [desired_count]

    precondition {
      condition     = var.enable_alb || var.task_assign_public_ip
      error_message = "task_assign_public_ip=false needs enable_alb=true: without the ALB, clients connect to the task's public IP (ws://<task ip>:3001/ws), so a task without one cannot be reached."
    }
  }

  # ECS refuses a target group that no listener uses yet, and tasks need the
  # execution role's permissions before their first image pull.
  depends_on = [
    aws_lb_listener.http,
    aws_lb_listener.https,
    aws_iam_role_policy_attachment.ecs_execution,
  ]
}
