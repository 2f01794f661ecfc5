"""The graph page: one self-contained HTML file (inline CSS, SVG and script; no network).

The page shows the drawing of :mod:`comfyc.compiler.viz.svg` with both views in it, two
buttons (and the keys ``b`` / ``a``, or ``#before`` in the address) that switch between the
workflow as written and the compiler's view, a table of stages with their backend and measured
time, and the legends.
"""

from __future__ import annotations

from xml.sax.saxutils import escape

from .layout import Layout
from .model import BOTH, GraphView
from .svg import STAGE_COLOURS, SVG_STYLE, render_svg, type_colour

__all__ = ["render_html"]

_PAGE_STYLE = """
* { box-sizing: border-box; }
body { margin: 0; background: #17181b; color: #e6e6e6;
  font: 14px/1.45 DejaVu Sans, Liberation Sans, Helvetica, Arial, sans-serif; }
header { padding: 14px 22px 8px; border-bottom: 1px solid #33363c; }
h1 { font-size: 19px; margin: 0 0 4px; }
h2 { font-size: 14px; margin: 16px 0 6px; color: #bfc4ca; }
.meta, .stats { margin: 2px 0; color: #9aa0a6; font-size: 13px; }
.toggle { margin: 10px 0 4px; display: flex; gap: 0; }
.toggle button { background: #2d2f33; color: #e6e6e6; border: 1px solid #5b5f66;
  padding: 6px 14px; font-size: 13px; cursor: pointer; }
.toggle button:first-child { border-radius: 6px 0 0 6px; }
.toggle button:last-child { border-radius: 0 6px 6px 0; border-left: none; }
.toggle button.active { background: #8ab4f8; color: #17181b; font-weight: bold; }
.hint { color: #7d838a; font-size: 12px; margin-left: 12px; align-self: center; }
.canvas { overflow: auto; padding: 12px; max-width: 100%; }
aside { padding: 4px 22px 22px; font-size: 13px; display: flex; flex-wrap: wrap; gap: 8px 40px; }
aside section { flex: 1 1 320px; max-width: 760px; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: 3px 6px; border-bottom: 1px solid #33363c;
  vertical-align: top; }
th { color: #9aa0a6; font-weight: normal; }
.swatch { display: inline-block; width: 22px; height: 4px; margin: 0 6px 3px 0;
  vertical-align: middle; border-radius: 2px; }
.box { display: inline-block; width: 12px; height: 12px; margin-right: 6px;
  vertical-align: -1px; border-radius: 3px; }
ul { margin: 0; padding-left: 18px; }
.legend-list { list-style: none; padding: 0; }
.legend-list li { margin: 2px 0; }
.muted { color: #9aa0a6; }
body[data-view="before"] .only-after-text { display: none; }
"""

_SCRIPT = """
(function () {
  var svg = document.getElementById('graph');
  var before = document.getElementById('show-before');
  var after = document.getElementById('show-after');
  function show(view) {
    svg.classList.remove('view-before', 'view-after');
    svg.classList.add('view-' + view);
    document.body.setAttribute('data-view', view);
    before.classList.toggle('active', view === 'before');
    after.classList.toggle('active', view === 'after');
    before.setAttribute('aria-pressed', String(view === 'before'));
    after.setAttribute('aria-pressed', String(view === 'after'));
  }
  before.addEventListener('click', function () { show('before'); });
  after.addEventListener('click', function () { show('after'); });
  document.addEventListener('keydown', function (event) {
    if (event.key === 'b') { show('before'); }
    if (event.key === 'a') { show('after'); }
  });
  show(window.location.hash === '#before' ? 'before' : 'after');
})();
"""


def render_html(view: GraphView, layout: Layout) -> str:
    """The self-contained page of ``view``."""
    from ..passes.base import describe_summary

    stats = view.stats
    params = ", ".join(view.params) or "none"
    drawing = render_svg(view, layout, mode=BOTH, legend=False, standalone=False)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>comfyc graph — {escape(view.title)}</title>",
        f"<style>{_PAGE_STYLE}{SVG_STYLE}</style></head>",
        '<body data-view="after">',
        "<header>",
        f"<h1>{escape(view.title)}</h1>",
        f'<p class="meta">{escape(view.kind)}: {escape(view.source)}</p>',
        (f'<p class="stats">{escape(describe_summary(stats))}. '
         f"Runtime params: {escape(params)}.</p>"),
        '<div class="toggle" role="group" aria-label="view">',
        ('<button type="button" id="show-before" aria-pressed="false">'
         "Before optimization</button>"),
        ('<button type="button" id="show-after" class="active" aria-pressed="true">'
         "After optimization</button>"),
        '<span class="hint">keys: b / a</span></div>',
        "</header>",
        "<main>",
        f'<div class="canvas">{drawing}</div>',
        "<aside>",
    ]
    parts.append("<section>")
    parts.extend(_stage_table(view))
    parts.append("</section><section>")
    parts.extend(_legends(view))
    parts.append("</section>")
    if view.notes or view.extra.get("machine"):
        parts.append("<section><h2>Notes</h2><ul>")
        parts.extend(f"<li>{escape(note)}</li>" for note in view.notes)
        if view.extra.get("machine"):
            parts.append(f"<li>measured on {escape(str(view.extra['machine']))}</li>")
        parts.append("</ul></section>")
    parts += ["</aside>", "</main>", f"<script>{_SCRIPT}</script>", "</body></html>"]
    return "\n".join(parts) + "\n"


def _stage_table(view: GraphView) -> list[str]:
    out = ["<h2>Stages (after optimization)</h2>"]
    if not view.stages:
        return out + ['<p class="muted">no model stage is called</p>']
    out.append("<table><tr><th>stage</th><th>backend</th><th>median</th><th>nodes</th></tr>")
    for stage in view.stages.values():
        colour = STAGE_COLOURS.get(stage.kind, "#9e9e9e")
        time = f"{stage.median_ms:.1f} ms" if stage.median_ms is not None else "—"
        members = ", ".join(f"#{m} {view.nodes[m].title}" for m in stage.members
                            if m in view.nodes)
        name = "" if stage.name == stage.kind else (
            f'<br><span class="muted">{escape(stage.name)}</span>')
        detail = f'<br><span class="muted">{escape(stage.detail)}</span>' if stage.detail else ""
        out.append(f'<tr class="stage-row"><td><span class="box" style="background:{colour}">'
                   f"</span>{escape(stage.label)}{name}</td><td>{escape(stage.backend)}</td>"
                   f"<td>{escape(time)}</td><td>{escape(members)}{detail}</td></tr>")
    out.append("</table>")
    return out


def _legends(view: GraphView) -> list[str]:
    out = ["<h2>Nodes</h2>", '<ul class="legend-list">',
           ('<li><span class="box" style="border:2px dashed #ffb74d"></span>folded: computed '
            "when compiling (prompt encodings, conditioning, LoRA weights)</li>"),
           ('<li><span class="box" style="background:#90caf9;opacity:.5"></span>merged: an '
            "identical node does the work</li>"),
           ('<li><span class="box" style="background:#bdbdbd;opacity:.4"></span>eliminated: '
            "nothing kept needs it (dimmed)</li>"),
           ('<li><span class="box" style="border:2px dashed #9e9e9e"></span>a frame groups the '
            "nodes that call one model stage</li></ul>"),
           "<h2>Edge types</h2>", '<ul class="legend-list">']
    for type_ in dict.fromkeys(e.type for e in view.edges):
        out.append(f'<li><span class="swatch" style="background:{type_colour(type_)}"></span>'
                   f"{escape(type_)}</li>")
    out.append("</ul>")
    return out
