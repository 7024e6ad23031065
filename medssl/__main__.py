"""``python -m medssl`` is the ``medssl`` command."""

from medssl.cli import entry_point

entry_point()
