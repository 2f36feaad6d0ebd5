"""Turn the harness's raw results into the report: summary per setup, ratios, targets, JSON and an HTML page.

The page embeds plotly.js from the installed plotly package (no CDN): it opens offline.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

MIB = 1 << 20


def _get(d: Any, *path: str) -> Any:
    for p in path:
        if not isinstance(d, dict) or d.get(p) is None:
            return None
        d = d[p]
    return d


def _phases(res: dict[str, Any]) -> list[dict[str, Any]]:
    out = [res[k] for k in ("prewarm", "warmup", "fixed", "constrained") if isinstance(res.get(k), dict)]
    return out + list(_get(res, "ramp", "steps") or [])


def summarize(res: dict[str, Any]) -> dict[str, Any]:
    """The figures of one setup (None where a phase did not run or was interrupted)."""
    phases = _phases(res)
    return {
        "startup_s": res.get("startup_s"),
        "pss_total_mib": (_get(res, "pss", "total") or 0) / MIB or None,
        "pss_weights_mib": (_get(res, "pss", "weights") or 0) / MIB or None,
        "pss_redis_mib": (_get(res, "pss", "redis") or 0) / MIB,
        # the agents' PSS by what backs it: private heaps, files (code, a mapped .npy), shared-memory segments
        "pss_agents_anon_mib": (_get(res, "pss", "agents_anon") or 0) / MIB or None,
        "pss_agents_file_mib": (_get(res, "pss", "agents_file") or 0) / MIB or None,
        "pss_agents_shmem_mib": (_get(res, "pss", "agents_shmem") or 0) / MIB,
        "warmup_p99_ms": _ms(_get(res, "warmup", "p99_s")),
        "fixed_rate": res.get("fixed_rate"),
        "fixed_p50_ms": _ms(_get(res, "fixed", "p50_s")),
        "fixed_p99_ms": _ms(_get(res, "fixed", "p99_s")),
        "fixed_p999_ms": _ms(_get(res, "fixed", "p999_s")),
        "saturation_rate": _get(res, "ramp", "saturation_rate"),
        "requests_per_cpu_s": res.get("requests_per_cpu_s"),
        "hit_ratio": _get(res, "fixed", "hit_ratio"),
        "hit_levels": _get(res, "fixed", "levels"),
        "constrained_hit_ratio": _get(res, "constrained", "hit_ratio"),
        "constrained_budget_kib": (_get(res, "constrained", "budget_bytes") or 0) // 1024 or None,
        "constrained_budget_share": _get(res, "constrained", "budget_share_of_distinct"),
        "cache_get_us": _get(res, "agent_costs", "get_us"),
        "cache_put_us": _get(res, "agent_costs", "put_us"),
        "compute_us_per_miss": _get(res, "agent_costs", "compute_us_per_miss"),
        "gets_over_1ms_share": _get(res, "agent_costs", "gets_over_1ms_share"),
        "cache_get_max_ms": _get(res, "agent_costs", "get_max_ms"),
        "verified": sum(p.get("verified", 0) for p in phases),
        "wrong_answers": sum(p.get("wrong", 0) for p in phases),
        "errors": sum(p.get("errors", 0) for p in phases),
        "interrupted_phases": [p["name"] for p in phases if p.get("interrupted") or p.get("interruptions")],
        "error": res.get("error"),
    }


def _ms(s: float | None) -> float | None:
    return None if s is None else s * 1000.0


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


# (shape, label, metric, against, op, threshold): "lower" metrics must be <=, "higher" >=
TARGETS = [
    ("heavy", "fleet PSS vs naive", "pss_total_mib", "naive", "<=", 0.30),
    ("heavy", "fleet PSS vs savvy", "pss_total_mib", "savvy", "<=", 0.80),
    ("heavy", "weights PSS vs one copy", "pss_weights_mib", "one copy", "<=", 1.05),
    ("heavy", "saturation throughput vs naive", "saturation_rate", "naive", ">=", 2.0),
    ("heavy", "saturation throughput vs savvy", "saturation_rate", "savvy", ">=", 1.0),
    ("heavy", "p99 at the fixed rate vs naive", "fixed_p99_ms", "naive", "<=", 0.5),
    ("heavy", "p99 at the fixed rate vs savvy", "fixed_p99_ms", "savvy", "<=", 0.8),
    ("heavy", "warm-up p99 vs savvy", "warmup_p99_ms", "savvy", "<=", 1.0),
    ("light", "saturation throughput vs savvy", "saturation_rate", "savvy", ">=", 1.5),
    ("light", "p99 at the fixed rate vs savvy", "fixed_p99_ms", "savvy", "<=", 0.5),
    ("heavy", "constrained-cache hit ratio minus savvy's (points)", "constrained_hit_ratio", "savvy", ">=+", 3.0),
    ("light", "constrained-cache hit ratio minus savvy's (points)", "constrained_hit_ratio", "savvy", ">=+", 3.0),
]

RATIO_METRICS = ("startup_s", "pss_total_mib", "pss_weights_mib", "warmup_p99_ms", "fixed_p50_ms", "fixed_p99_ms",
                 "fixed_p999_ms", "saturation_rate", "requests_per_cpu_s", "hit_ratio", "constrained_hit_ratio")


def targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for shape, label, metric, against, op, threshold in TARGETS:
        s = report["summary"].get(shape)
        lib = _get(s, "library", metric)
        if against == "one copy":
            ref = report["shapes"][shape]["weights_bytes"] / MIB if s else None
        else:
            ref = _get(s, against, metric)
        if op == ">=+":
            value = None if lib is None or ref is None else (lib - ref) * 100.0
            met = value is not None and value >= threshold
        else:
            value = _ratio(lib, ref)
            met = value is not None and (value <= threshold if op == "<=" else value >= threshold)
        out.append({"shape": shape, "target": label, "op": op.replace("+", ""), "threshold": threshold,
                    "library": lib, "reference": ref, "value": value,
                    "status": "N/A" if value is None else ("MET" if met else "NOT MET")})
    return out


def finish(report: dict[str, Any], out: Path) -> dict[str, Any]:
    """Add summary, ratios, targets, totals; write report.json and report.html into ``out``."""
    report["summary"] = {shape: {setup: summarize(res) for setup, res in s["setups"].items()}
                         for shape, s in report["shapes"].items()}
    report["ratios"] = {
        shape: {f"library/{ref}": {m: _ratio(_get(setups, "library", m), _get(setups, ref, m))
                                   for m in RATIO_METRICS}
                for ref in ("naive", "savvy") if ref in setups and "library" in setups}
        for shape, setups in report["summary"].items()}
    report["targets"] = targets(report)
    sums = [v for s in report["summary"].values() for v in s.values()]
    report["wrong_answers"] = sum(v["wrong_answers"] for v in sums)
    report["verified_answers"] = sum(v["verified"] for v in sums)
    events = []
    for shape in report["shapes"].values():
        for res in shape["setups"].values():
            for p in _phases(res):
                if p.get("interrupted") or p.get("interruptions"):
                    events.append({"phase": p["name"], "interrupted": p.get("interrupted"),
                                   "events": p.get("interruptions", [])})
    report["interruptions"] = events
    report["interrupted"] = bool(events) or any(
        res.get("killed_agents") for s in report["shapes"].values() for res in s["setups"].values())
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=1, default=str))
    (out / "report.html").write_text(render_html(report))
    return report


# ---- HTML ----------------------------------------------------------------------------------------------------
COLORS = {"naive": "#9e9e9e", "savvy": "#d62728", "library": "#1f77b4"}


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) < 1000 else f"{v:,.0f}"
    return html.escape(str(v))


def _figures(report: dict[str, Any]) -> list[Any]:
    import plotly.graph_objects as go

    figs = []
    for shape, s in report["shapes"].items():
        summ = report["summary"][shape]
        setups = list(summ)
        fig = go.Figure()
        fig.add_bar(name="fleet PSS", x=setups, y=[summ[k]["pss_total_mib"] for k in setups])
        fig.add_bar(name="weights PSS", x=setups, y=[summ[k]["pss_weights_mib"] for k in setups])
        for name, key in (("agents' private heaps", "pss_agents_anon_mib"),
                          ("agents' shared memory", "pss_agents_shmem_mib"), ("redis-server", "pss_redis_mib")):
            fig.add_bar(name=name, x=setups, y=[summ[k][key] for k in setups])
        fig.update_layout(title=f"{shape}: memory (MiB, PSS)", barmode="group")
        figs.append(fig)

        fig = go.Figure()
        for q, key in (("p50", "fixed_p50_ms"), ("p99", "fixed_p99_ms"), ("p99.9", "fixed_p999_ms")):
            fig.add_bar(name=q, x=setups, y=[summ[k][key] for k in setups])
        fig.update_layout(title=f"{shape}: latency at the fixed rate ({_fmt(s.get('fixed_rate'))}/s), ms",
                          barmode="group", yaxis_type="log")
        figs.append(fig)

        fig = go.Figure()
        for k in setups:
            pct = _get(s["setups"][k], "fixed", "percentiles_s") or []
            fig.add_scatter(name=k, x=[v * 1000 for v in pct], y=list(range(len(pct))), mode="lines",
                            line={"color": COLORS.get(k)})
        fig.update_layout(title=f"{shape}: latency distribution at the fixed rate", xaxis_title="ms",
                          yaxis_title="percentile", xaxis_type="log")
        figs.append(fig)

        fig = go.Figure()
        for k in setups:
            steps = sorted(_get(s["setups"][k], "ramp", "steps") or [], key=lambda p: p["offered_rate"])
            steps = [p for p in steps if p.get("p99_s") is not None]
            fig.add_scatter(name=k, x=[p["offered_rate"] for p in steps], y=[p["p99_s"] * 1000 for p in steps],
                            mode="lines+markers", line={"color": COLORS.get(k)})
        fig.add_hline(y=s["p99_bound_s"] * 1000, line_dash="dot", annotation_text="p99 bound")
        fig.update_layout(title=f"{shape}: saturation ramp (p99 per offered rate)", xaxis_title="requests/s",
                          yaxis_title="p99 ms", yaxis_type="log")
        figs.append(fig)

        fig = go.Figure()
        for k in setups:
            series = _get(s["setups"][k], "warmup", "p99_per_second_s") or []
            fig.add_scatter(name=k, x=list(range(len(series))),
                            y=[None if v is None else v * 1000 for v in series], mode="lines+markers",
                            line={"color": COLORS.get(k)})
        fig.update_layout(title=f"{shape}: warm-up, p99 per second (cold cache)", xaxis_title="s",
                          yaxis_title="p99 ms", yaxis_type="log")
        figs.append(fig)

        fig = go.Figure()
        levels = sorted({lv for k in setups for lv in (summ[k]["hit_levels"] or {})})
        for lv in levels:
            ys = []
            for k in setups:
                counts = summ[k]["hit_levels"] or {}
                total = sum(counts.values()) or 1
                ys.append(counts.get(lv, 0) / total)
            fig.add_bar(name=lv, x=setups, y=ys)
        fig.add_scatter(name="constrained-cache hit ratio", x=setups,
                        y=[summ[k]["constrained_hit_ratio"] for k in setups], mode="markers",
                        marker={"size": 14, "symbol": "diamond"})
        fig.update_layout(title=f"{shape}: where answers came from (fixed rate) and constrained hit ratio",
                          barmode="stack", yaxis_title="share of requests")
        figs.append(fig)
    return figs


def render_html(report: dict[str, Any]) -> str:
    from plotly.offline import get_plotlyjs

    parts = [f"<div>{fig.to_html(full_html=False, include_plotlyjs=False)}</div>" for fig in _figures(report)]
    rows = "".join(
        f"<tr class='{t['status'].replace(' ', '').replace('/', '')}'><td>{t['shape']}</td>"
        f"<td>{html.escape(t['target'])}</td><td>{t['op']} {t['threshold']}</td><td>{_fmt(t['value'])}</td>"
        f"<td>{_fmt(t['library'])}</td><td>{_fmt(t['reference'])}</td><td>{t['status']}</td></tr>"
        for t in report["targets"])
    summary = []
    for shape, setups in report["summary"].items():
        keys = [k for k in next(iter(setups.values())) if k not in ("hit_levels", "interrupted_phases")]
        head = "".join(f"<th>{html.escape(s)}</th>" for s in setups)
        body = "".join(f"<tr><td>{k}</td>" + "".join(f"<td>{_fmt(v.get(k))}</td>" for v in setups.values())
                       + "</tr>" for k in keys)
        summary.append(f"<h3>{shape}</h3><table><tr><th>metric</th>{head}</tr>{body}</table>")
    meta = report["machine"]
    interrupted = ("<p class='warn'>Interrupted on purpose: " + html.escape(json.dumps(report["interruptions"]))
                   + "</p>") if report.get("interrupted") else ""
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>agent fleet report</title>
<script>{get_plotlyjs()}</script>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}} .MET td{{background:#e6f4e6}}
.NOTMET td{{background:#fbe3e3}} .warn{{color:#a00;font-weight:bold}}</style></head><body>
<h1>Agent fleet: {report['args']['agents']} agents, naive vs savvy vs library</h1>
<p>Command: <code>{html.escape(report['command'])}</code>; wall {report['wall_s']:.0f} s; machine:
{meta['cpus']} CPUs ({html.escape(str(meta['cpu_model']))}), {meta['mem_bytes'] / 2**30:.1f} GiB, kernel
{html.escape(str(meta['kernel']))}; wrong answers: <b>{report['wrong_answers']}</b> of
{report['verified_answers']} verified.</p>{interrupted}
<h2>Targets (issue 13)</h2><table><tr><th>shape</th><th>target</th><th>needs</th><th>reached</th>
<th>library</th><th>reference</th><th>status</th></tr>{rows}</table>
<h2>Figures per setup</h2>{''.join(summary)}
<h2>Charts</h2>{''.join(parts)}</body></html>"""
