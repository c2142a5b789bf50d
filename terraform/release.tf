################################################################################
# The release: which image the service runs
################################################################################

# casey-deploy records every deploy and rollback here (`<repo>@sha256:<digest>`
# plus who, when and the git tag, as JSON) and then applies; the task
# definition takes its image from this value, so Terraform and the tool agree
# on the running image and a plain `infra` after a deploy plans no changes.
# Terraform creates the parameter and never writes it again: a refresh reads
# the recorded value into the state. Its version history is `casey-deploy
# history` (Parameter Store keeps the newest 100 versions).
resource "aws_ssm_parameter" "release" {
  #checkov:skip=CKV2_AWS_34:Not a secret: an image reference, its git tag and the deployer's ARN, which `casey-deploy history` prints.
  name        = local.release_parameter_name
  description = "The backend release the ECS service runs (written by casey-deploy)"
  type        = "String"
  tier        = "Standard"

  # Before the first deploy: the seed's `<repo>:latest`.
  insecure_value = jsonencode({
    image  = "${aws_ecr_repository.backend.repository_url}:latest"
    action = "created"
  })

  lifecycle {
    ignore_changes = [insecure_value]
  }
}

locals {
  # A value written by hand may be a bare image reference.
  release_value = aws_ssm_parameter.release.insecure_value
  release_image = can(jsondecode(local.release_value).image) ? jsondecode(local.release_value).image : try(trimspace(local.release_value), null)
}
