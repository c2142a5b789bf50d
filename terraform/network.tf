################################################################################
# VPC and subnets
# vpc_id null -> the VPC of var.subnet_ids, or the default VPC when those are empty
# subnet_ids empty -> every subnet of the selected VPC
################################################################################

data "aws_subnet" "given" {
  for_each = toset(var.subnet_ids)

  id = each.value
}

data "aws_vpc" "selected" {
  id      = var.vpc_id != null ? var.vpc_id : (length(var.subnet_ids) > 0 ? data.aws_subnet.given[var.subnet_ids[0]].vpc_id : null)
  default = var.vpc_id == null && length(var.subnet_ids) == 0 ? true : null

  lifecycle {
    postcondition {
      condition     = alltrue([for s in data.aws_subnet.given : s.vpc_id == self.id])
      error_message = "Every subnet in subnet_ids must belong to VPC ${self.id} (vpc_id, or the VPC of the first subnet when vpc_id is null)."
    }
  }
}

data "aws_subnets" "selected" {
  count = length(var.subnet_ids) == 0 ? 1 : 0

  filter {
    name   = "vpc-id"
    values = [data.aws_vpc.selected.id]
  }

  lifecycle {
    postcondition {
      condition     = length(self.ids) > 0
      error_message = "VPC ${data.aws_vpc.selected.id} has no subnets; create some or set subnet_ids (and vpc_id)."
    }
  }
}

locals {
  vpc_id     = data.aws_vpc.selected.id
  subnet_ids = length(var.subnet_ids) > 0 ? var.subnet_ids : sort(data.aws_subnets.selected[0].ids)
}

# An ALB takes one subnet per Availability Zone and needs two zones
# (https://docs.aws.amazon.com/elasticloadbalancing/latest/APIReference/API_CreateLoadBalancer.html):
# the first subnet of each zone, in sort order; the tasks use all of them.
data "aws_subnet" "alb" {
  for_each = var.enable_alb ? toset(local.subnet_ids) : toset([])

  id = each.value
}

locals {
  alb_subnets_by_az = { for s in data.aws_subnet.alb : s.availability_zone => s.id... }
  alb_subnet_ids    = sort([for az, ids in local.alb_subnets_by_az : sort(ids)[0]])
}

################################################################################
# Security group: backend tasks
################################################################################

resource "aws_security_group" "ecs_tasks" {
  name        = local.security_group_tasks
  description = "casey backend tasks: port ${local.container_port} from the ALB (or from backend_ingress_cidrs without ALB), HTTPS out"
  vpc_id      = local.vpc_id

  tags = {
    Name = local.security_group_tasks
  }
}

resource "aws_vpc_security_group_ingress_rule" "ecs_tasks_from_alb" {
  count = var.enable_alb ? 1 : 0

  security_group_id            = aws_security_group.ecs_tasks.id
  description                  = "Backend port from the ALB"
  ip_protocol                  = "tcp"
  from_port                    = local.container_port
  to_port                      = local.container_port
  referenced_security_group_id = aws_security_group.alb[0].id
}

# No-ALB mode (documented in the README): clients connect straight to the task's
# public IP, so the backend port is open to backend_ingress_cidrs.
resource "aws_vpc_security_group_ingress_rule" "ecs_tasks_from_cidr" {
  for_each = var.enable_alb ? toset([]) : toset(var.backend_ingress_cidrs)

  security_group_id = aws_security_group.ecs_tasks.id
  description       = "Backend port from ${each.value} (no ALB)"
  ip_protocol       = "tcp"
  from_port         = local.container_port
  to_port           = local.container_port
  cidr_ipv4         = each.value
}

# The backend only talks HTTPS to AWS APIs (ECR, Logs, Transcribe, Bedrock,
# Polly); DNS and time sync go to VPC-internal services that security groups
# do not filter.
resource "aws_vpc_security_group_egress_rule" "ecs_tasks_https" {
  security_group_id = aws_security_group.ecs_tasks.id
  description       = "HTTPS to AWS APIs and ECR"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  cidr_ipv4         = "0.0.0.0/0"
}

################################################################################
# Security group: ALB
################################################################################

resource "aws_security_group" "alb" {
  count = var.enable_alb ? 1 : 0

  name        = local.security_group_alb
  description = "casey backend ALB: HTTP/HTTPS from alb_ingress_cidrs, backend port to the tasks"
  vpc_id      = local.vpc_id

  tags = {
    Name = local.security_group_alb
  }
}

locals {
  # 443 is only opened when there is an HTTPS listener.
  alb_ingress = var.enable_alb ? {
    for pair in setproduct(local.alb_https ? [80, 443] : [80], var.alb_ingress_cidrs) :
    "${pair[0]}-${pair[1]}" => { port = pair[0], cidr = pair[1] }
  } : {}
}

resource "aws_vpc_security_group_ingress_rule" "alb" {
  for_each = local.alb_ingress

  security_group_id = aws_security_group.alb[0].id
  description       = "${each.value.port == 443 ? "HTTPS" : "HTTP"} from ${each.value.cidr}"
  ip_protocol       = "tcp"
  from_port         = each.value.port
  to_port           = each.value.port
  cidr_ipv4         = each.value.cidr
}

resource "aws_vpc_security_group_egress_rule" "alb_to_tasks" {
  count = var.enable_alb ? 1 : 0

  security_group_id            = aws_security_group.alb[0].id
  description                  = "Backend port on the tasks (traffic and health checks)"
  ip_protocol                  = "tcp"
  from_port                    = local.container_port
  to_port                      = local.container_port
  referenced_security_group_id = aws_security_group.ecs_tasks.id
}
