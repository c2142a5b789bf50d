################################################################################
# Service auto scaling (https://docs.aws.amazon.com/AmazonECS/latest/developerguide/service-auto-scaling.html)
################################################################################

resource "aws_appautoscaling_target" "ecs" {
  service_namespace  = "ecs"
  scalable_dimension = "ecs:service:DesiredCount"
  resource_id        = "service/${aws_ecs_cluster.this.name}/${aws_ecs_service.backend.name}"
  min_capacity       = var.autoscaling_min_capacity
  max_capacity       = var.autoscaling_max_capacity

  lifecycle {
    precondition {
      condition     = var.autoscaling_min_capacity <= var.autoscaling_max_capacity
      error_message = "autoscaling_min_capacity (${var.autoscaling_min_capacity}) must be <= autoscaling_max_capacity (${var.autoscaling_max_capacity})."
    }

    precondition {
      condition     = var.desired_count >= var.autoscaling_min_capacity && var.desired_count <= var.autoscaling_max_capacity
      error_message = "desired_count (${var.desired_count}) must lie between autoscaling_min_capacity (${var.autoscaling_min_capacity}) and autoscaling_max_capacity (${var.autoscaling_max_capacity})."
    }
  }
}

resource "aws_appautoscaling_policy" "cpu" {
  name               = "${local.service_name}-cpu-target-tracking"
  policy_type        = "TargetTrackingScaling"
  service_namespace  = aws_appautoscaling_target.ecs.service_namespace
  scalable_dimension = aws_appautoscaling_target.ecs.scalable_dimension
  resource_id        = aws_appautoscaling_target.ecs.resource_id

  target_tracking_scaling_policy_configuration {
    target_value       = var.autoscaling_cpu_target
    scale_in_cooldown  = var.autoscaling_scale_in_cooldown
    scale_out_cooldown = var.autoscaling_scale_out_cooldown

    predefined_metric_specification {
      predefined_metric_type = "ECSServiceAverageCPUUtilization"
    }
  }
}
