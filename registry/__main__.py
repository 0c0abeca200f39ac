"""``python -m densreg.registry`` runs the CLI."""

from .cli import main

main()
