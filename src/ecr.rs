//! The ECR calls the deploy makes (SDK, no aws CLI): whether an image is
//! there, a manifest put, and the registry login. Async, on a client the
//! caller made (`Ctx::ecr`), so this module needs nothing above it.

use anyhow::{anyhow, Context as _, Result};
use aws_sdk_ecr::Client;
use base64::Engine as _;

use crate::redact;

/// Whether ECR holds `reference` (a tag, or a `sha256:` digest) in
/// repository `name`. A repository that does not exist yet holds nothing.
pub async fn has_image(ecr: &Client, name: &str, reference: &str) -> Result<bool> {
    use aws_sdk_ecr::operation::describe_images::DescribeImagesError;
    use aws_sdk_ecr::types::ImageIdentifier;
    let id = if reference.starts_with("sha256:") {
        ImageIdentifier::builder().image_digest(reference).build()
    } else {
        ImageIdentifier::builder().image_tag(reference).build()
    };
    match ecr.describe_images().repository_name(name).image_ids(id).send().await {
        Ok(out) => Ok(!out.image_details().is_empty()),
        Err(err) => match err.as_service_error() {
            Some(
                DescribeImagesError::ImageNotFoundException(_) | DescribeImagesError::RepositoryNotFoundException(_),
            ) => Ok(false),
            _ => {
                let next = match crate::aws::failure(&err) {
                    crate::aws::Failure::Refused => "The admin needs ecr:DescribeImages on the repository",
                    _ => "ECR is failing, throttling or unreachable (the SDK's retries are spent): run the same command again in a minute",
                };
                Err(anyhow!(
                    "ECR DescribeImages of {name}:{reference} failed: {}\n{next}",
                    crate::aws::error_text(&err)
                ))
            }
        },
    }
}

/// The digest ECR holds `reference` (a tag) under in repository `name`;
/// `None` when it holds no such image.
pub async fn digest_of(ecr: &Client, name: &str, reference: &str) -> Result<Option<String>> {
    use aws_sdk_ecr::operation::describe_images::DescribeImagesError;
    use aws_sdk_ecr::types::ImageIdentifier;
    let id = ImageIdentifier::builder().image_tag(reference).build();
    match ecr.describe_images().repository_name(name).image_ids(id).send().await {
        Ok(out) => Ok(out.image_details().first().and_then(|d| d.image_digest()).map(str::to_owned)),
        Err(err) => match err.as_service_error() {
            Some(
                DescribeImagesError::ImageNotFoundException(_) | DescribeImagesError::RepositoryNotFoundException(_),
            ) => Ok(None),
            _ => Err(anyhow!("ECR DescribeImages of {name}:{reference} failed: {}", crate::aws::error_text(&err))),
        },
    }
}

/// ECR `PutImage` of `manifest` under `tag` in repository `name`; the same
/// manifest already under that tag is fine. Returns the digest ECR holds it
/// under (the sha256 of the manifest, as ECR computes it).
pub async fn put_manifest(ecr: &Client, name: &str, manifest: &str, tag: &str) -> Result<String> {
    use aws_sdk_ecr::operation::put_image::PutImageError;
    let digest = match ecr.put_image().repository_name(name).image_manifest(manifest).image_tag(tag).send().await {
        Ok(out) => out.image().and_then(|i| i.image_id()).and_then(|id| id.image_digest()).map(str::to_owned),
        Err(err) if matches!(err.as_service_error(), Some(PutImageError::ImageAlreadyExistsException(_))) => {
            digest_of(ecr, name, tag).await?
        }
        Err(err) => return Err(anyhow!("ECR PutImage of {name}:{tag} failed: {}", crate::aws::error_text(&err))),
    };
    digest.with_context(|| format!("ECR PutImage of {name}:{tag} returned no image digest"))
}

/// User and password from ECR `GetAuthorizationToken` (a base64
/// `AWS:password`), both registered for masking before anything can print them.
pub async fn login_credentials(ecr: &Client, region: &str) -> Result<(String, String)> {
    let out = ecr.get_authorization_token().send().await.map_err(|e| {
        anyhow!(
            "step `ECR login`: GetAuthorizationToken failed: {}\nThe admin needs ecr:GetAuthorizationToken in region {}",
            crate::aws::error_text(&e),
            region
        )
    })?;
    let token = out
        .authorization_data()
        .first()
        .and_then(|d| d.authorization_token())
        .context("step `ECR login`: GetAuthorizationToken returned no token")?;
    redact::register(token);
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(token.trim())
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .context("step `ECR login`: the ECR token is not base64 `user:password`")?;
    let (user, password) =
        decoded.split_once(':').context("step `ECR login`: the ECR token is not base64 `user:password`")?;
    redact::register(password);
    Ok((user.to_owned(), password.to_owned()))
}

/// Every image digest in repository `name` (ListImages, every page); empty
/// when the repository does not exist.
pub async fn digests(ecr: &Client, name: &str) -> Result<std::collections::HashSet<String>> {
    use aws_sdk_ecr::operation::list_images::ListImagesError;
    let mut digests = std::collections::HashSet::new();
    let mut token: Option<String> = None;
    loop {
        let out = match ecr.list_images().repository_name(name).set_next_token(token.take()).send().await {
            Ok(out) => out,
            Err(err) if matches!(err.as_service_error(), Some(ListImagesError::RepositoryNotFoundException(_))) => {
                return Ok(digests)
            }
            Err(err) => return Err(anyhow!("ECR ListImages of {name} failed: {}", crate::aws::error_text(&err))),
        };
        digests.extend(out.image_ids().iter().filter_map(|id| id.image_digest()).map(str::to_owned));
        match out.next_token() {
            Some(next) if !next.is_empty() => token = Some(next.to_owned()),
            _ => return Ok(digests),
        }
    }
}

/// Delete every image of repository `name` (a teardown); returns how many.
/// A repository that does not exist holds none.
pub async fn delete_all_images(ecr: &Client, name: &str) -> Result<usize> {
    use aws_sdk_ecr::operation::list_images::ListImagesError;
    let mut ids = Vec::new();
    let mut pages = ecr.list_images().repository_name(name).into_paginator().send();
    while let Some(page) = pages.next().await {
        match page {
            Ok(page) => ids.extend(page.image_ids().iter().cloned()),
            Err(err) if matches!(err.as_service_error(), Some(ListImagesError::RepositoryNotFoundException(_))) => {
                return Ok(0)
            }
            Err(err) => return Err(anyhow!("ECR ListImages of {name} failed: {}", crate::aws::error_text(&err))),
        }
    }
    for chunk in ids.chunks(100) {
        let out = ecr
            .batch_delete_image()
            .repository_name(name)
            .set_image_ids(Some(chunk.to_vec()))
            .send()
            .await
            .map_err(|err| anyhow!("ECR BatchDeleteImage in {name} failed: {}", crate::aws::error_text(&err)))?;
        if let Some(failure) = out.failures().first() {
            return Err(anyhow!(
                "ECR could not delete an image of {name}: {} {}",
                failure.failure_code().map(|c| c.as_str()).unwrap_or_default(),
                failure.failure_reason().unwrap_or_default()
            ));
        }
    }
    Ok(ids.len())
}
