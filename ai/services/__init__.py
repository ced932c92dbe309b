from .health import health_prune, upstreams_check
from .registry import DEMO_MODEL, demo_seed
from .usage import usage_prune, usage_rollup

__all__ = [
    "DEMO_MODEL",
    "demo_seed",
    "health_prune",
    "upstreams_check",
    "usage_prune",
    "usage_rollup",
]
