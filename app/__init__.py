"""densreg.app: the application around the core: training, evaluation, features, plotting, the CLI.

It uses the core (``densreg.registry``) and the exporter; the core never imports it.
"""
