"""densreg.models: the pretrained catalog's checkpoints and catalog.json (data, no code; see
densreg.registry.pretrained). Only the catalogued files are installed (pyproject.toml package data)."""
