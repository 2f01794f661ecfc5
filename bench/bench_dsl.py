"""Issue 3: parse + print a generated 2,000-node DSL workflow (and 500 for linearity).

    python bench/bench_dsl.py

Reports wall and CPU time (best of 5) of ``parse_dsl`` (fast path + lowering) and of
``str(graph)`` (the printer), and, side by side on the same text, the two parsers alone:
the recursive-descent fast path and Lark's LALR parser (the reference, used for errors).
"""

from __future__ import annotations

import gc
import sys
import time
from collections.abc import Callable
from typing import Any

from common import REPO, save

sys.path.insert(0, str(REPO))


def _best(fn: Callable[[], Any], runs: int = 5) -> tuple[float, float, Any]:
    """(best wall s, best CPU s, last result) of ``runs`` calls."""
    wall = cpu = float("inf")
    result = None
    for _ in range(runs):
        w0, c0 = time.perf_counter(), time.process_time()
        result = fn()
        wall = min(wall, time.perf_counter() - w0)
        cpu = min(cpu, time.process_time() - c0)
    return wall, cpu, result


def main() -> None:
    from comfyc.compiler.catalog import default_catalog
    from comfyc.frontends.dsl import fast, parse, parse_dsl
    from tests.frontends.dsl.test_dsl_perf import workflow

    catalog = default_catalog()
    out: dict[str, Any] = {}
    for nodes in (500, 2000):
        text = workflow(nodes)
        parse_wall, parse_cpu, graph = _best(lambda t=text: parse_dsl(t, "big.cfy", catalog))
        print_wall, print_cpu, _ = _best(lambda g=graph: str(g))
        parse._state.errors, parse._state.file = [], "big.cfy"
        gc.disable()
        try:
            fast_wall, _, _ = _best(lambda t=text: fast.parse_statements(t, parse._DECODERS))
            lark_wall, _, _ = _best(lambda t=text: parse._lark_statements(t, "big.cfy"))
        finally:
            gc.enable()
        out[str(nodes)] = {
            "nodes": len(graph.nodes), "parse_s": parse_wall, "parse_cpu_s": parse_cpu,
            "print_s": print_wall, "print_cpu_s": print_cpu,
            "total_s": parse_wall + print_wall, "fast_parser_s": fast_wall,
            "lark_parser_s": lark_wall}
        print(f"{len(graph.nodes)} nodes: parse+lower {parse_wall:.3f} s "
              f"(CPU {parse_cpu:.3f}), print {print_wall:.3f} s, total "
              f"{parse_wall + print_wall:.3f} s; parser alone: fast {fast_wall:.3f} s, "
              f"Lark {lark_wall:.3f} s ({lark_wall / fast_wall:.1f}x)")
    save("dsl", out)


if __name__ == "__main__":
    main()
