output "aws_region" {
  description = "Region of the stack."
  value       = var.aws_region
}

output "account_id" {
  description = "AWS account the stack was applied to."
  value       = local.account_id
}

output "ecr_repository_url" {
  description = "ECR repository URL for backend images (immutable tags: casey-deploy pushes the git sha)."
  value       = aws_ecr_repository.backend.repository_url
}

output "backend_image" {
  description = "Image reference the task definition runs."
  value       = local.backend_image
}

output "release_parameter_name" {
  description = "SSM parameter holding the release casey-deploy deployed (its history is `casey-deploy history`); null when backend_container_image pins the image instead."
  value       = var.backend_container_image == null ? aws_ssm_parameter.release.name : null
}

output "ecs_cluster_name" {
  description = "ECS cluster name."
  value       = aws_ecs_cluster.this.name
}

output "ecs_service_name" {
  description = "ECS service name."
  value       = aws_ecs_service.backend.name
}

output "task_definition_family" {
  description = "Task definition family of the backend."
  value       = aws_ecs_task_definition.backend.family
}

output "container_name" {
  description = "Name of the backend container in the task definition."
  value       = local.container_name
}

output "container_port" {
  description = "Port the backend container listens on (HTTP and WebSocket /ws)."
  value       = local.container_port
}

output "ecs_log_group_name" {
  description = "CloudWatch log group of the backend containers."
  value       = aws_cloudwatch_log_group.ecs.name
}

output "usage_log_group_name" {
  description = "CloudWatch log group the backend writes AWS usage records to."
  value       = aws_cloudwatch_log_group.casey_backend_aws_usage.name
}

output "enable_alb" {
  description = "Whether the stack has an ALB. Without one, the backend URL is ws://<task public IP>:<container_port>/ws."
  value       = var.enable_alb
}

output "alb_dns_name" {
  description = "DNS name of the ALB; null when enable_alb is false."
  value       = try(aws_lb.backend[0].dns_name, null)
}

output "recommended_ws_url" {
  description = "WebSocket URL for NEXT_PUBLIC_WS_URL: wss://<alb>/ws with a certificate, ws://<alb>/ws without; null when enable_alb is false (use scripts/get-backend-url.sh)."
  value       = var.enable_alb ? "${local.alb_https ? "wss" : "ws"}://${aws_lb.backend[0].dns_name}/ws" : null
}
