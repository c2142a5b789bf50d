################################################################################
# ECR repository for backend images
################################################################################

resource "aws_ecr_repository" "backend" {
  #checkov:skip=CKV_AWS_51:The deploy flow pushes and re-pushes the `latest` tag (README); pin immutable tags through var.backend_container_image instead.
  name                 = var.ecr_repository_name
  image_tag_mutability = "MUTABLE"
  force_delete         = var.ecr_force_delete

  image_scanning_configuration {
    scan_on_push = true
  }

  encryption_configuration {
    encryption_type = "KMS"
  }
}

# Never expires a recent release: every push carries its git sha tag (and
# the newest also `latest`), so the running deployment's image and the
# circuit breaker's rollback target stay among the newest tagged images.
# Untagged images (their tags moved to a newer push) may still be what a
# deployment resolved, so they get a grace period instead of a count.
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
