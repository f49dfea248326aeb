"""Tools for measuring vidcore on long videos; `cli.py` holds the `vidcore` command."""
