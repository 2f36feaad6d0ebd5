"""Hit ratio of the default policy against nine anchors and Belady, as pytest-benchmark groups (issue 15).

Run:  python -m pytest benches/test_hitratio.py --benchmark-only --benchmark-json=/tmp/hr.json
      python benches/report.py /tmp/hr.json ...   (with the other suites' JSON: one page, docs/benchmarks.md)

Each group runs one table of ``bench_cache_hitratio.py`` (synthetic traces, the LIRS suite, the traces of
``../shared/traces/more``) once and records, for ``benches/report.py``, the default (adaptive) per cell against
the best of the anchors (libCacheSim's nine policies, theine's W-TinyLFU, our LRU and LFU) and Belady's optimum,
and the two targets with MET / NOT MET. The wall time of the run is not a figure (``timing`` is false): hit
ratios do not depend on the machine. Smoke mode (``--benchmark-disable``, as in CI) runs the quick synthetic
table without libCacheSim and theine.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_cache_hitratio as hr
import traces


def _record(benchmark: Any, title: str, cells: list[tuple[str, int, Any]], use_lcs: bool) -> None:
    out: dict[str, Any] = {}

    def run() -> None:
        rows = [hr.run_cell(n, s, t, use_lcs, use_lcs) for n, s, t in cells]   # theine with the full anchors
        out["judged"] = hr.judge([(n, s) for n, s, _ in cells], rows)

    benchmark.pedantic(run, rounds=1, iterations=1)
    j = out["judged"]
    benchmark.extra_info.update(timing=False, figures=[
        {"caption": f"{title}: hit ratio (%) of the default (adaptive) against the best anchor (ours: "
                    f"{', '.join(a for a in j['anchors'] if ':' not in a and a != 'theine')}; libCacheSim's lcs:"
                    f"{', lcs:'.join(a[4:] for a in j['anchors'] if a.startswith('lcs:'))}; theine) and Belady; "
                    "C = cache size in objects",
         "columns": ["cell", "default %", "best anchor %", "gap (points)", "default / Belady", "best anchor"],
         "rows": j["cells"]},
        {"caption": f"{title}: every policy of ours, mean hit ratio over Belady's and worst gap to the best anchor",
         "columns": ["policy", "mean / Belady", "worst gap (points)"],
         "rows": [[p, f"{m:.3f}", f"{g:+.2f}"] for p, (m, g) in j["policies"].items()]}],
        targets=hr.targets(title, j))


@pytest.mark.timeout(3600)   # a full table takes minutes; the suite's 300 s limit is for tests
@pytest.mark.benchmark(group="cache: hit ratio, synthetic traces")
def test_hitratio_synthetic(benchmark: Any, smoke: bool) -> None:
    _record(benchmark, "synthetic" + (" (quick)" if smoke else ""), traces.synthetic(quick=smoke), not smoke)


@pytest.mark.timeout(3600)   # a full table takes minutes; the suite's 300 s limit is for tests
@pytest.mark.benchmark(group="cache: hit ratio, LIRS traces")
def test_hitratio_lirs(benchmark: Any, smoke: bool) -> None:
    if smoke or not traces.lirs_names():
        pytest.skip("the LIRS traces are not on this machine" if not smoke else "smoke run: synthetic table only")
    _record(benchmark, "LIRS traces", traces.lirs_cells(), True)


@pytest.mark.timeout(3600)   # a full table takes minutes; the suite's 300 s limit is for tests
@pytest.mark.benchmark(group="cache: hit ratio, more real traces")
def test_hitratio_more(benchmark: Any, smoke: bool) -> None:
    if smoke or not hr.MORE_DIR.is_dir():
        pytest.skip("the traces of shared/traces/more are not on this machine" if not smoke
                    else "smoke run: synthetic table only")
    _record(benchmark, "more real traces", hr.more_cells(), True)
