from .registry import DEMO_MODEL, demo_seed
from .usage import usage_prune, usage_rollup

__all__ = ["DEMO_MODEL", "demo_seed", "usage_prune", "usage_rollup"]
