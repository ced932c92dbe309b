"""The management API for the model registry: models, upstreams and links (DRF)."""
