"""``python -m fakeupstream --host 127.0.0.1 --port 9100 [--models a,b]``: see ``server``."""

from fakeupstream.server import main

main()
