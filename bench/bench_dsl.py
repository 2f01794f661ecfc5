"""Issue 3: parse + print a generated 2,000-node DSL workflow (and 500 for linearity).

    python bench/bench_dsl.py
"""

from __future__ import annotations

import sys
import time

from common import REPO, save

sys.path.insert(0, str(REPO))


def main() -> None:
    from comfyc.compiler.catalog import default_catalog
    from comfyc.frontends.dsl import parse_dsl
    from tests.frontends.dsl.test_dsl_perf import workflow

    out = {}
    for nodes in (500, 2000):
        text = workflow(nodes)
        best_parse = best_print = float("inf")
        for _ in range(5):
            t0 = time.perf_counter()
            graph = parse_dsl(text, "big.cfy", default_catalog())
            t1 = time.perf_counter()
            str(graph)
            t2 = time.perf_counter()
            best_parse, best_print = min(best_parse, t1 - t0), min(best_print, t2 - t1)
        out[str(nodes)] = {"nodes": len(graph.nodes), "parse_s": best_parse,
                           "print_s": best_print}
        print(f"{len(graph.nodes)} nodes: parse {best_parse:.3f} s, print {best_print:.3f} s")
    save("dsl", out)


if __name__ == "__main__":
    main()
