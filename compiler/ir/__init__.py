"""comfyc package."""
