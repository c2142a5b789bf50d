################################################################################
# CloudWatch log groups
################################################################################

# Written by the backend itself (AWS usage records); the name is fixed because
# the backend and the import script (scripts/terraform-import-existing.sh) use it.
resource "aws_cloudwatch_log_group" "casey_backend_aws_usage" {
  #checkov:skip=CKV_AWS_158:CloudWatch Logs already encrypts at rest with a service key; a customer-managed KMS key adds cost and key-policy upkeep this stack does not need.
  #checkov:skip=CKV_AWS_338:Retention is a cost decision exposed as var.log_retention_in_days (default 30); set 365+ where one year of logs is required.
  name              = local.usage_log_group_name
  retention_in_days = var.log_retention_in_days
}

# Container stdout/stderr through the awslogs driver.
resource "aws_cloudwatch_log_group" "ecs" {
  #checkov:skip=CKV_AWS_158:CloudWatch Logs already encrypts at rest with a service key; a customer-managed KMS key adds cost and key-policy upkeep this stack does not need.
  #checkov:skip=CKV_AWS_338:Retention is a cost decision exposed as var.log_retention_in_days (default 30); set 365+ where one year of logs is required.
  name              = local.ecs_log_group_name
  retention_in_days = var.log_retention_in_days
}
