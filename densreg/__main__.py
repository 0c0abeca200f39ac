"""``python -m densreg`` runs the CLI."""

from densreg.app.cli import main

main()
