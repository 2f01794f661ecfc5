"""The runtime ops and image I/O import and run without torch (the lean runtime's promise)."""
from __future__ import annotations

import subprocess
import sys
import textwrap


def test_ops_and_image_io_run_without_torch(tmp_path) -> None:
    """Importing torch raises in the child; ops and image I/O still work."""
    script = textwrap.dedent(f"""
        import builtins, sys
        real_import = builtins.__import__
        def guarded(name, *args, **kwargs):
            if name.split(".")[0] in ("torch", "diffusers", "transformers"):
                raise ImportError("torch is forbidden in the lean runtime")
            return real_import(name, *args, **kwargs)
        builtins.__import__ = guarded
        import numpy as np
        from comfyc.runtime import image_io, ops
        lat = ops.latent_upscale(ops.empty_latent_image(64, 64), "bislerp", 128, 128)
        img = ops.image_scale(ops.empty_image(16, 16, 1, 0xFF0000), "lanczos", 8, 8)
        image_io.save_images(img, {str(tmp_path)!r}, "x")
        assert lat["samples"].shape == (1, 4, 16, 16)
        assert not any(m.split(".")[0] in ("torch", "diffusers", "transformers")
                       for m in sys.modules)
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
