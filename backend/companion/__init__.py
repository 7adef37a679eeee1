"""Uppy's Companion S3 routes (`@uppy/aws-s3` with `companionEndpoint`) onto the direct-upload services."""
