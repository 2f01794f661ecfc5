"""Frontends: ComfyUI JSON (API, UI), PNG metadata and the comfyc DSL, all into the IR."""
