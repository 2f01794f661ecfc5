"""Fidelity report: comfyc against recordings of the real ComfyUI, case by case.

Reads the recordings of ``tests/comfyui_reference/recordings`` (PNGs written by ComfyUI itself,
``record.py`` there says how and with which commits), regenerates the seeded model files they
were made with (SD1.5 architecture, random weights; their SHA-256 is checked against the
recording), runs every case on comfyc's torch path (``comfyc run WORKFLOW``) and through a
compiled artifact (``comfyc compile --backend torch`` then ``comfyc.runtime.load``), and prints
each case's max and mean absolute pixel difference from ComfyUI's PNG in 8-bit levels.

Usage (from the repository root; about 1 to 2 minutes per case on 2 busy cores)::

    .venv/bin/python bench/fidelity.py                      # every case, both sets
    .venv/bin/python bench/fidelity.py --set legacy         # ComfyUI before #11528 only
    .venv/bin/python bench/fidelity.py --cases sampler_euler img2img --json out.json
    .venv/bin/python bench/fidelity.py --work /tmp/ref      # keep the 2 GB of model files

``--paths torch`` skips the artifacts. The table is Markdown, ready for the README.
``--set sdxl`` (alone: its checkpoint is another file, 6.9 GB, and the UNet takes about 10 GB
of memory in float32) runs the SDXL-architecture cases; ``--set sd3`` (alone too) the SD3 cases
on their separate files (1.8 GB).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.comfyui_reference.harness import (  # noqa: E402
    Models,
    Reference,
    Runner,
    compare,
    default_work_dir,
)

__all__ = ["main", "measure"]


def measure(sets: list[str], cases: list[str] | None, paths: list[str], work: Path,
            say: Any = print) -> list[dict[str, Any]]:
    """Run the chosen cases and return one row per case (differences per path)."""
    references = [Reference(which) for which in sets]
    hashes: dict[str, str] = {}
    for reference in references:  # NOTE: a later set may use files an earlier one did not
        for name, digest in reference.manifest["model_sha256"].items():
            if hashes.setdefault(name, digest) != digest:
                raise SystemExit("the recording sets were made with different model files")
    for own in ("sdxl", "sd3"):
        if own in sets and sets != [own]:
            raise SystemExit(f"--set {own} runs alone (its own model files)")
    say(f"regenerating the model files in {work} ...")
    models = Models(work, hashes, reuse=True, which=sets[0])
    say(f"  written in {models.write_s:.1f} s, hashed in {models.hash_s:.1f} s")
    chosen = [(reference, c) for reference in references for c in reference.cases
              if not cases or c.name in cases]
    for reference, case in chosen:
        reference.check_workflow(case)
    runner = Runner(models, work, artifact_cases=tuple(c for _, c in chosen))
    started = time.perf_counter()
    references_of = {c.name: reference for reference, c in chosen}

    def done(case: Any, path: str, images: Any) -> None:
        diff = compare(images, references_of[case.name].images(case))
        say(f"  {case.name} ({path}): {diff}")

    # NOTE: all torch-path cases first, then the artifacts (one model set in memory at once).
    got = runner.run_cases([c for _, c in chosen], tuple(paths), done)
    say(f"  ran {len(chosen)} cases in {time.perf_counter() - started:.0f} s")
    rows: list[dict[str, Any]] = []
    for reference, case in chosen:
        expected = reference.images(case)
        row: dict[str, Any] = {"set": reference.which, "case": case.name, "kind": case.kind,
                               "sampler": case.sampler, "noise_mode": case.noise_mode,
                               "comfyui_commit": reference.commit[:8]}
        for path in paths:
            diff = compare(got[(case.name, path)], expected)
            row[path] = {"max": diff.max, "mean": diff.mean,
                         "seconds": round(runner.timings.get(f"{path}:{case.name}", 0.0), 1)}
        say("  " + format_row(row, paths))
        rows.append(row)
    say(f"timings: {json.dumps({k: round(v, 1) for k, v in runner.timings.items()})}")
    return rows


def format_row(row: dict[str, Any], paths: list[str]) -> str:
    """One Markdown table row."""
    cells = [row["case"], row["noise_mode"], row["comfyui_commit"]]
    for path in paths:
        cells += [f"{row[path]['max']:.0f}", f"{row[path]['mean']:.4f}"]
    return "| " + " | ".join(cells) + " |"


def table(rows: list[dict[str, Any]], paths: list[str]) -> str:
    """The Markdown table of all rows."""
    head = ["case", "noise mode", "ComfyUI"]
    for path in paths:
        head += [f"{path} max", f"{path} mean"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += [format_row(row, paths) for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command line: see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--set", dest="sets", action="append",
                        choices=("current", "legacy", "sdxl", "sd3"),
                        help="recording set (repeatable; default current and legacy)")
    parser.add_argument("--cases", nargs="*", default=None, help="only these case names")
    parser.add_argument("--paths", nargs="*", default=["torch", "artifact"],
                        choices=("torch", "artifact"))
    parser.add_argument("--work", type=Path, default=None,
                        help="folder for the regenerated models and outputs")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    args = parser.parse_args(argv)
    work = args.work or default_work_dir()
    work.mkdir(parents=True, exist_ok=True)
    rows = measure(args.sets or ["current", "legacy"], args.cases, args.paths, work)
    print()
    print("Pixel differences from ComfyUI (8-bit levels; max over pixels and channels, mean)")
    print()
    print(table(rows, args.paths))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
