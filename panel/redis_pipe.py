"""The old home of the pipelined Redis connection, which is now in ``panel.redis``.

TODO(#12): delete this file once ai/gateway/limits.py and ai/gateway/journal.py,
being rewritten for issue 12, import these names from ``panel.redis``.
"""

from panel.redis import Script, connection, pack_command, pack_items

__all__ = ["Script", "connection", "pack_command", "pack_items"]
