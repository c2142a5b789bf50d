################################################################################
# ECR repository for backend images
################################################################################

resource "aws_ecr_repository" "backend" {
  name = local.ecr_repository_name
  # A tag names one image forever: releases are pushed under their git sha
  # and deployed by digest (release.tf).
  image_tag_mutability = "IMMUTABLE"
  force_delete         = var.ecr_force_delete

  image_scanning_configuration {
    scan_on_push = true
  }

  encryption_configuration {
    encryption_type = "KMS"
  }
}

# Never expires a recent release: every push carries its git sha tag, so the
# running release, the circuit breaker's rollback target and the releases
# `casey-deploy history` lists (10 by default, the floor of the count) stay
# among the newest tagged images. Untagged images (pushed by hand, or a tag
# deleted) get a grace period instead of a count.
# Rules (a tagged rule needs a tag pattern; "*" matches every tag):
# https://docs.aws.amazon.com/AmazonECR/latest/userguide/lifecycle_policy_parameters.html
resource "aws_ecr_lifecycle_policy" "backend" {
  repository = aws_ecr_repository.backend.name

  policy = jsonencode({
    rules = [
      {
        rulePriority = 1
        description  = "Expire untagged images ${var.ecr_untagged_expire_days} days after their push"
        selection = {
          tagStatus   = "untagged"
          countType   = "sinceImagePushed"
          countUnit   = "days"
          countNumber = var.ecr_untagged_expire_days
        }
        action = {
          type = "expire"
        }
      },
      {
        rulePriority = 2
        description  = "Keep the newest ${var.ecr_keep_tagged_images} tagged images"
        selection = {
          tagStatus      = "tagged"
          tagPatternList = ["*"]
          countType      = "imageCountMoreThan"
          countNumber    = var.ecr_keep_tagged_images
        }
        action = {
          type = "expire"
        }
      },
    ]
  })
}
