"""Turn pytest-benchmark JSON into docs/benchmarks.md: python benches/report.py RESULTS.json [more.json ...]

The one command that regenerates every timing figure the docs quote::

    python -m pytest benches/ --benchmark-only --benchmark-json=/tmp/bench.json
    python benches/report.py /tmp/bench.json            # -o PATH to write elsewhere

It writes ``docs/benchmarks.md`` with one plot per group (``docs/benchmarks/<group>.png``, drawn with matplotlib
when it is installed: ``pip install .[bench]``), and rewrites every ``<!-- figures: <group> -->`` ...
``<!-- /figures -->`` block of the other docs pages with that group's table, so a page quotes a figure only by
naming the group it comes from.

One table per comparison group: each contender's median (per call where the suite timed ``loops`` calls in one
round), its interquartile range, and its ratio to every anchor of the group measured in the same run (the anchors
are what a user would pick instead; ``extra_info["role"] == "anchor"``). Later files override earlier ones for
the same benchmark, so a partial re-run can be layered over a full one. Only medians and ratios are printed: the
machine is shared and noisy, single absolute times mean little.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "docs" / "benchmarks.md"
#: A block of a docs page that report.py fills with one group's table.
INCLUDE = re.compile(r"(<!-- figures: (?P<group>[^>]*?) -->\n)(?P<body>.*?)(<!-- /figures -->)", re.S)


def slug(group: str) -> str:
    """The plot's file name for a group."""
    return re.sub(r"[^a-z0-9]+", "-", group.lower()).strip("-")


def fmt_time(seconds: float) -> str:
    """Three significant digits in the unit that reads best (the docs quote these strings verbatim)."""
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6), ("ns", 1e-9)):
        if seconds >= scale or unit == "ns":
            v = seconds / scale
            return f"{v:.3g} {unit}" if v < 1000 else f"{v:.0f} {unit}"
    raise AssertionError("unreachable")


def fmt_ratio(r: float) -> str:
    if r >= 100:
        return f"{r:.0f}x"
    if r >= 10:
        return f"{r:.1f}x"
    if r >= 0.01:
        return f"{r:.2f}x"
    return f"{r:.2g}x"


def fmt_value(seconds: float, info: dict[str, Any]) -> str:
    if str(info.get("unit", "")).startswith("share of one core"):
        return f"{seconds * 100:.2f}% of one core"
    return fmt_time(seconds)


def label(bench: dict[str, Any]) -> str:
    """The contender's name: ``extra_info["what"]``, else the parameters that the group name does not already say."""
    what = (bench.get("extra_info") or {}).get("what")
    if what:
        return str(what)
    params = bench.get("params") or {}
    group = bench.get("group") or ""
    parts = [str(v) for v in params.values() if str(v) not in group]
    return ", ".join(parts) or bench["name"].removeprefix("test_")


def load(paths: list[str]) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """Benchmarks by fullname (later files win) and each file's machine / commit / date header."""
    benches: dict[str, dict[str, Any]] = {}
    headers = []
    for p in paths:
        data = json.loads(Path(p).read_text())
        headers.append({"file": Path(p).name, "machine": data.get("machine_info", {}),
                        "commit": data.get("commit_info", {}), "datetime": data.get("datetime", "")})
        for b in data.get("benchmarks", []):
            benches[b["fullname"]] = b
    return benches, headers


def median_per_call(bench: dict[str, Any]) -> float:
    loops = int(bench.get("extra_info", {}).get("loops", 1) or 1)
    return float(bench["stats"]["median"]) / loops


def iqr_per_call(bench: dict[str, Any]) -> float:
    loops = int(bench.get("extra_info", {}).get("loops", 1) or 1)
    return float(bench["stats"].get("iqr", 0.0)) / loops


def _cell(v: Any) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _md_table(head: list[str], rows: list[list[Any]], numeric_from: int = 1) -> list[str]:
    out = ["| " + " | ".join(head) + " |",
           "| " + " | ".join(["---"] * numeric_from + ["---:"] * (len(head) - numeric_from)) + " |"]
    out += ["| " + " | ".join(_cell(c) for c in r) + " |" for r in rows]
    return out


def is_timed(rows: list[dict[str, Any]]) -> bool:
    """False for a group whose benchmark only runs a scripted measurement (``extra_info["timing"] = False``): its
    figures are the tables it records, not its wall time."""
    return not all(b.get("extra_info", {}).get("timing") is False for b in rows)


def group_table(rows: list[dict[str, Any]]) -> list[str]:
    """The group's section: the timing table (unless the group is not timed), then every table a benchmark recorded
    (``extra_info["figures"]``: ``{"caption", "columns", "rows"}``, non-timing figures such as hit ratios), then the
    targets it judged (``extra_info["targets"]``: ``[target, measured, "MET" | "NOT MET"]`` rows)."""
    out: list[str] = []
    if is_timed(rows):
        out += timing_table(rows)
    for b in sorted(rows, key=lambda b: b["name"]):
        info = b.get("extra_info", {})
        for fig in info.get("figures", []):
            out += ([""] if out else []) + [f"{fig['caption']}:", "", *_md_table(list(fig["columns"]), fig["rows"])]
        if info.get("targets"):
            out += ([""] if out else []) + ["Targets:", "",
                                            *_md_table(["target", "measured", "verdict"], info["targets"], 3)]
    return out


def timing_table(rows: list[dict[str, Any]]) -> list[str]:
    anchors = [b for b in rows if b.get("extra_info", {}).get("role") == "anchor"]
    head = ["contender", "role", "median", "IQR"] + [f"x {label(a)}" for a in anchors]
    extra_keys = [k for k in ("compression_ratio", "GB/s") if any(k in b.get("extra_info", {}) or
                                                                 (k == "GB/s" and "bytes" in b.get("extra_info", {}))
                                                                 for b in rows)]
    columns = list(dict.fromkeys(k for b in rows for k in b.get("extra_info", {}).get("columns", {})))
    head += extra_keys + columns
    out = ["| " + " | ".join(head) + " |", "| --- | --- | " + " | ".join(["---:"] * (len(head) - 2)) + " |"]
    for b in sorted(rows, key=median_per_call):
        info = b.get("extra_info", {})
        m = median_per_call(b)
        cells = [label(b), str(info.get("role", "")), fmt_value(m, info), fmt_value(iqr_per_call(b), info)]
        cells += [fmt_ratio(m / median_per_call(a)) if median_per_call(a) > 0 else "-" for a in anchors]
        for k in extra_keys:
            if k == "GB/s":
                cells.append(f"{info['bytes'] / m / 1e9:.2f}" if "bytes" in info and m > 0 else "")
            else:
                cells.append(f"{info[k]:.2f}" if k in info else "")
        cells += [_cell(info["columns"][c]) if c in info.get("columns", {}) else "" for c in columns]
        out.append("| " + " | ".join(cells) + " |")
    units = sorted({str(b.get("extra_info", {}).get("unit", "")) for b in rows} - {""})
    rounds = sorted({int(b["stats"]["rounds"]) for b in rows})
    out.append("")
    note = f"Rounds per contender: {', '.join(map(str, rounds))}."
    if units:
        note = f"One figure is: {'; '.join(units)}. " + note
    out.append(note)
    return out


def render(benches: dict[str, dict[str, Any]], headers: list[dict[str, Any]], plotted: set[str] = frozenset()) -> str:
    lines = ["# Benchmarks", "",
             "Generated by `python benches/report.py` from pytest-benchmark JSON; do not edit by hand. Regenerate "
             "every table with:", "",
             "    python -m pytest benches/ --benchmark-only --benchmark-json=/tmp/bench.json",
             "    python benches/report.py /tmp/bench.json", "",
             "Medians of one run and ratios to the anchors measured in the same run (`x <anchor>`: this contender's "
             "median over the anchor's; below 1 is faster). The machine is shared and noisy: ratios are what "
             "count. Every other page of the docs quotes its timing figures from here "
             "(`tests/foundation/test_doc_figures.py` checks the marked figure blocks).", "",
             "## Machine", ""]
    for h in headers:
        m, c = h["machine"], h["commit"]
        cpu = m.get("cpu", {}) if isinstance(m.get("cpu"), dict) else {}
        load = m.get("loadavg_at_start")
        load_end = m.get("loadavg_at_end")
        lines.append(f"* `{h['file']}`: {h['datetime'][:19]} UTC, commit {str(c.get('id', '?'))[:10]}"
                     f"{' (dirty)' if c.get('dirty') else ''}; {cpu.get('brand_raw', m.get('processor', '?'))}, "
                     f"{m.get('cpu_count', '?')} CPUs; Python {m.get('python_version', '?')}, "
                     f"kernel {m.get('kernel', m.get('release', '?'))}, numpy {m.get('numpy', '?')}; load average "
                     f"{load[0]:.1f} at start" + (f", {load_end[0]:.1f} at end" if load_end else "") + "."
                     if load else f"* `{h['file']}`: {h['datetime'][:19]} UTC")
    groups = groups_of(benches)
    for g in sorted(groups):
        lines += ["", f"## {g}", "", *group_table(groups[g])]
        if g in plotted:
            lines += ["", f"![{g}: median per call](benchmarks/{slug(g)}.png)"]
    lines.append("")
    return "\n".join(lines)


def groups_of(benches: dict[str, dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for b in benches.values():
        groups.setdefault(b.get("group") or b["name"], []).append(b)
    return groups


def plot(groups: dict[str, list[dict[str, Any]]], out_dir: Path) -> set[str]:
    """One horizontal bar chart per group (median per call; log scale past a factor of 20; anchors grey).

    Returns the groups drawn."""
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed (pip install .[bench]): no plots")
        return set()
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter

    out_dir.mkdir(parents=True, exist_ok=True)
    drawn = set()
    for g, rows in groups.items():
        rows = sorted(rows, key=median_per_call)
        if not is_timed(rows) or any(str(b.get("extra_info", {}).get("unit", "")).startswith("share of one core")
                                     for b in rows):
            continue                     # not a time
        fig, ax = plt.subplots(figsize=(7, 0.45 * len(rows) + 1.1))
        names = [label(b) for b in rows]
        unit, scale = next((u, k) for u, k in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6), ("ns", 1e-9))
                           if median_per_call(rows[0]) >= k or u == "ns")
        values = [median_per_call(b) / scale for b in rows]
        log = values[0] > 0 and values[-1] / values[0] >= 20     # linear when within a factor of 20
        colors = ["#9e9e9e" if b.get("extra_info", {}).get("role") == "anchor" else "#1f77b4" for b in rows]
        ax.barh(range(len(rows)), values, color=colors)
        ax.set_yticks(range(len(rows)), names, fontsize=8)
        ax.invert_yaxis()
        if log:
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
        ax.set_xlabel(f"median per call, {unit}{' (log scale)' if log else ''}; grey: anchors", fontsize=8)
        ax.set_title(g, fontsize=9)
        fig.tight_layout()
        fig.savefig(out_dir / f"{slug(g)}.png", dpi=80)
        plt.close(fig)
        drawn.add(g)
    return drawn


def fill_pages(groups: dict[str, list[dict[str, Any]]], docs: Path, skip: Path) -> list[str]:
    """Rewrite every ``<!-- figures: <group> -->`` block of the docs pages with the group's table."""
    changed = []
    for page in sorted(docs.glob("*.md")):
        if page.resolve() == skip.resolve():
            continue
        text = page.read_text()

        def table(m: re.Match[str], page: Path = page) -> str:
            g = m.group("group")
            if g not in groups:
                raise SystemExit(f"docs/{page.name} includes group {g!r}, which this run does not have; "
                                 f"groups: {', '.join(sorted(groups))}")
            return m.group(1) + "\n".join(group_table(groups[g])) + "\n" + m.group(4)

        new = INCLUDE.sub(table, text)
        if new != text:
            page.write_text(new)
            changed.append(page.name)
    return changed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", nargs="+", help="pytest-benchmark --benchmark-json files")
    ap.add_argument("-o", "--output", default=str(DEFAULT_OUT))
    ap.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    ap.add_argument("--no-pages", action="store_true", help="leave the other docs pages alone")
    a = ap.parse_args(argv)
    benches, headers = load(a.results)
    if not benches:
        ap.error("no benchmarks in the given files (was the run made with --benchmark-disable?)")
    out = Path(a.output)
    groups = groups_of(benches)
    plotted = plot(groups, out.parent / out.stem) if not a.no_plots else set()
    out.write_text(render(benches, headers, plotted))
    if not a.no_pages:
        changed = fill_pages(groups, out.parent, out)
        print(f"filled figure blocks in: {', '.join(changed) or 'no page changed'}")
    print(f"wrote {a.output}: {len(benches)} benchmarks in {len({b.get('group') for b in benches.values()})} "
          f"groups (median of medians {fmt_time(statistics.median(median_per_call(b) for b in benches.values()))})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
