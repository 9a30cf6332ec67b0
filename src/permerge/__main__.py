"""``python -m permerge`` is the ``permerge`` command."""

from .cli import main

main()
