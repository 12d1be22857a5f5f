"""``python -m cli`` runs the dsaudit command (the same as the ``dsaudit`` script)."""

from cli import main

main()
