"""seed 003's /api/v1/instances: views, serializers, the proxy, and their URLs."""
