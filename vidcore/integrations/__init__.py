"""Integrations of vidcore ops into other libraries (import each submodule explicitly)."""
