"""``python -m fakeupstream --host 127.0.0.1 --port 9100 [--models a,b]``."""

from fakeupstream.app import main

main()
