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

resource "aws_ecr_lifecycle_policy" "backend" {
  repository = aws_ecr_repository.backend.name

  policy = jsonencode({
    rules = [{
      rulePriority = 1
      description  = "Keep only the newest ${var.ecr_keep_last_images} images"
      selection = {
        tagStatus   = "any"
        countType   = "imageCountMoreThan"
        countNumber = var.ecr_keep_last_images
      }
      action = {
        type = "expire"
      }
    }]
  })
}
