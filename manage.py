#!/usr/bin/env python
"""Django's command-line utility. Defaults to local settings; production sets
DJANGO_SETTINGS_MODULE=project.settings.production."""

from __future__ import annotations

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings.local")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
