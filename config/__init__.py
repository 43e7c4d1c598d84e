"""The one typed config (schema.py), loaded from YAML layers and overrides and checked (loading.py),
the command line of both programs (cli.py) and the one user-error class (errors.py)."""
