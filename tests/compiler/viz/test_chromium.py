"""Acceptance: the graph page renders in a real browser (headless Chromium).

For two examples the page is opened in Chromium; the DOM after the page's script ran must
show every node's title and every stage label, and the screenshot must not be blank. The
Makefile's test setup installs Debian's ``chromium``; the test installs it too when apt is
usable, and skips (saying why) only when it is absent and cannot be installed.
"""

from __future__ import annotations

import html
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from comfyc.cli.commands.viz import build_view
from comfyc.compiler.viz import render
from tests.conftest import REPO

EXAMPLES = REPO / "examples"


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="module")
def chromium() -> str:
    """The browser `make test` installs (the Makefile's chromium target); a test never
    installs system packages itself."""
    found = _chromium()
    if found is None:
        pytest.skip("chromium is not installed (run `make chromium` as root, or `make test`)")
    return found


def _browse(chromium: str, page: Path, *args: str, fragment: str = ""
            ) -> subprocess.CompletedProcess[str]:
    profile = page.parent / f"profile-{page.stem}"
    return subprocess.run(
        [chromium, "--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars",
         "--no-first-run", "--disable-extensions", f"--user-data-dir={profile}",
         "--window-size=1600,1000", *args, page.as_uri() + fragment],
        capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.parametrize("example", ["txt2img", "hires_lora"])
def test_page_renders_in_chromium(chromium: str, example: str, tmp_path: Path) -> None:
    """Every node title and stage label is in the rendered DOM; the screenshot has a drawing."""
    from PIL import Image

    view = build_view(EXAMPLES / f"{example}.cfy")
    page = tmp_path / "graph.html"
    page.write_text(render(view, "html"), encoding="utf-8")

    dom = _browse(chromium, page, "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    svg = dom.stdout[dom.stdout.index("<svg"):dom.stdout.index("</svg>")]
    titles = [html.unescape(t) for t in re.findall(r'<text class="title"[^>]*>(.*?)</text>', svg)]
    labels = [html.unescape(t) for t in re.findall(r'<text class="stage-label"[^>]*>(.*?)</text>',
                                                   svg)]
    # The compiler's view is the one shown first.
    assert re.search(r'<svg[^>]*class="comfyc-graph view-after"', dom.stdout)
    for node in view.nodes.values():
        assert node.title in titles, f"node title {node.title!r} not drawn"
    assert view.stages
    for stage in view.stages.values():
        assert stage.label in labels, f"stage label {stage.label!r} not drawn"

    if example == "txt2img":  # The toggle: #before switches the drawing to the other view.
        before = _browse(chromium, page, "--dump-dom", fragment="#before")
        assert re.search(r'<svg[^>]*class="comfyc-graph view-before"', before.stdout)
        assert 'data-view="before"' in before.stdout

    shot = tmp_path / "graph.png"
    result = _browse(chromium, page, f"--screenshot={shot}")
    assert result.returncode == 0 and shot.is_file(), result.stderr[-2000:]
    image = Image.open(shot).convert("RGB")
    assert image.size == (1600, 1000)
    colours = image.getcolors(maxcolors=1 << 20) or []
    background = max(colours)[1]
    drawn = sum(count for count, colour in colours if colour != background)
    assert len(colours) > 200, f"only {len(colours)} colours: the page looks blank"
    assert drawn > 0.15 * image.size[0] * image.size[1], "too few pixels differ from the background"
    # The drawing itself is painted: its canvas, the node boxes (colours used only in the
    # SVG) and the ports in the type colours (MODEL purple, LATENT pink).
    counts = {colour: count for count, colour in colours}
    area = image.size[0] * image.size[1]
    assert counts.get((0x1E, 0x1F, 0x22), 0) > 0.10 * area, "the SVG canvas is not painted"
    assert counts.get((0x2D, 0x2F, 0x33), 0) > 0.02 * area, "no node boxes on screen"
    for rgb in ((0xB3, 0x9D, 0xDB), (0xFF, 0x9C, 0xF9)):
        assert counts.get(rgb, 0) > 20, f"no pixel of type colour {rgb}"
