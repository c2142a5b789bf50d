################################################################################
# Application Load Balancer (only when var.enable_alb)
################################################################################

resource "aws_lb" "backend" {
  #checkov:skip=CKV2_AWS_20:Port 80 redirects to HTTPS whenever alb_certificate_arn is set (aws_lb_listener.http); plain HTTP forwarding is the documented mode for accounts without a certificate yet.
  #checkov:skip=CKV2_AWS_28:WAF is out of scope for this WebSocket backend (cost); attach a web ACL outside the stack if needed.
  count = var.enable_alb ? 1 : 0

  name                       = local.alb_name
  load_balancer_type         = "application"
  internal                   = false
  security_groups            = [aws_security_group.alb[0].id]
  subnets                    = local.alb_subnet_ids
  idle_timeout               = var.alb_idle_timeout
  drop_invalid_header_fields = true
  enable_deletion_protection = var.alb_deletion_protection

  dynamic "access_logs" {
    for_each = var.alb_access_logs_bucket == null ? [] : [var.alb_access_logs_bucket]

    content {
      bucket  = access_logs.value
      prefix  = local.alb_name
      enabled = true
    }
  }

  # https://docs.aws.amazon.com/elasticloadbalancing/latest/APIReference/API_CreateLoadBalancer.html
  lifecycle {
    precondition {
      condition     = length(local.alb_subnet_ids) >= 2
      error_message = "An ALB needs subnets in at least two different Availability Zones; the selected subnets (${join(", ", local.subnet_ids)}) are in ${length(local.alb_subnet_ids)} (${join(", ", keys(local.alb_subnets_by_az))}). Set subnet_ids to subnets in two or more zones (or use a VPC that has them)."
    }

    precondition {
      condition     = can(regex("^[A-Za-z0-9]([A-Za-z0-9-]{0,30}[A-Za-z0-9])?$", local.alb_name)) && !startswith(local.alb_name, "internal-")
      error_message = "The ALB and its target group are named \"${local.alb_name}\" (ecs_service_name, unless alb_name is set), which is not a valid load balancer name: 1-32 letters, digits and hyphens, not starting or ending with a hyphen, not starting with \"internal-\". Set alb_name, e.g. -var alb_name=casey-backend."
    }
  }
}

resource "aws_lb_target_group" "backend" {
  #checkov:skip=CKV_AWS_378:TLS terminates at the ALB; the backend speaks plain HTTP/WebSocket on 3001 inside the VPC, reachable only from the ALB's security group.
  count = var.enable_alb ? 1 : 0

  name                 = local.target_group_name
  target_type          = "ip"
  protocol             = "HTTP"
  port                 = local.container_port
  vpc_id               = local.vpc_id
  deregistration_delay = var.alb_deregistration_delay

  # Plain-HTTP endpoint: an ALB health check cannot do the WebSocket upgrade of /ws.
  health_check {
    enabled             = true
    path                = "/health"
    protocol            = "HTTP"
    port                = "traffic-port"
    matcher             = "200"
    interval            = 15
    timeout             = 5
    healthy_threshold   = 2
    unhealthy_threshold = 3
  }

  # A client's reconnects land on the task that holds its session.
  stickiness {
    enabled         = true
    type            = "lb_cookie"
    cookie_duration = 86400
  }
}

# One port-80 listener whose action depends on the certificate: switching
# between redirect and forward is then an in-place change instead of a
# destroy/create that would collide on port 80.
resource "aws_lb_listener" "http" {
  #checkov:skip=CKV_AWS_103:TLS policy applies to the HTTPS listener (ELBSecurityPolicy-TLS13-1-2-2021-06); this is the HTTP/redirect listener.
  count = var.enable_alb ? 1 : 0

  load_balancer_arn = aws_lb.backend[0].arn
  port              = 80
  protocol          = "HTTP"

  dynamic "default_action" {
    for_each = local.alb_https ? [1] : []

    content {
      type = "redirect"

      redirect {
        protocol    = "HTTPS"
        port        = "443"
        status_code = "HTTP_301"
      }
    }
  }

  dynamic "default_action" {
    for_each = local.alb_https ? [] : [1]

    content {
      type             = "forward"
      target_group_arn = aws_lb_target_group.backend[0].arn
    }
  }
}

resource "aws_lb_listener" "https" {
  count = local.alb_https ? 1 : 0

  load_balancer_arn = aws_lb.backend[0].arn
  port              = 443
  protocol          = "HTTPS"
  ssl_policy        = "ELBSecurityPolicy-TLS13-1-2-2021-06"
  certificate_arn   = var.alb_certificate_arn

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.backend[0].arn
  }
}
