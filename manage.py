#!/usr/bin/env python
"""Django's command-line utility. Pick the process with DJANGO_SETTINGS_MODULE
(dromos.settings.gateway or dromos.settings.broker)."""

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dromos.settings.broker")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
