# Credentials come from the environment (terraform/.env, AWS_PROFILE, ...); see README.
# Endpoints are deliberately not set here: tests point the provider at an emulator
# with AWS_ENDPOINT_URL.
provider "aws" {
  region = var.aws_region
  # Set by casey-deploy when the account is pinned; null means no pin.
  allowed_account_ids = length(var.allowed_account_ids) > 0 ? var.allowed_account_ids : null

  default_tags {
    tags = merge(var.tags, {
      Project     = local.project
      Environment = var.environment
      ManagedBy   = "terraform"
    })
  }
}

data "aws_caller_identity" "current" {}

data "aws_partition" "current" {}
