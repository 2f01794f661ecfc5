"""Subcommands of the comfyc CLI, one module each (imported lazily)."""
