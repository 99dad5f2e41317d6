"""Object stores: where immutable blobs and the few mutable refs live (local directory or S3)."""
