#!/usr/bin/env python
import os
import sys


def main():
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "panel.settings")
    from django.core.exceptions import ImproperlyConfigured
    from django.core.management import execute_from_command_line

    try:
        execute_from_command_line(sys.argv)
    except ImproperlyConfigured as refused:
        # A missing or malformed setting (SECRET_KEY with DEBUG off, a bad URL): one line
        # that names it, not a traceback. The message never holds a secret's value.
        sys.stderr.write(f"Switchboard cannot start: {refused}\n")
        sys.exit(2)


if __name__ == "__main__":
    main()
