"""What a comparison found: ratios between implementations, the JSON record, markdown tables, a chart.

The results are :func:`hiera.bench.runner.summarize`'s, one per case. :func:`add_ratios` relates them
(ours / official, ours / the fastest peer, Hiera / a plain ViT), :func:`make_record` wraps them with
the machine, settings and :func:`headline` ratios, and :func:`markdown` and :func:`plot` show a record.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
from pathlib import Path
from typing import Dict, List, Optional

from .plan import NAMES, REFERENCES, Settings, compiled_suffix
from .timing import system_info


# ----------------------------------------------------------------------------------------- ratios
def _key(r: dict, compile: bool = True) -> tuple:
    """What must match for two results to be compared: all but the implementation."""
    k = (r["section"], r["task"], r["mode"], r["model"].replace("mae_", ""), tuple(r["input_size"]),
         r["batch"], r["dtype"])
    return k + (r["compile"], r.get("graphs", False)) if compile else k


def _ratio(a, b) -> Optional[float]:
    return a / b if a is not None and b else None


def add_ratios(results: List[dict]) -> List[dict]:
    """Add to each measured result: ``vs_official`` (throughput / the official's at the same
    settings, compilation included), ``memory_vs_official`` (peak RSS) and ``step_memory_vs_official``
    (peak above the imports); and for ours ``vs_best_peer`` / ``best_peer``: against the fastest
    other implementation at the same precision, eager or compiled."""
    ok = [r for r in results if r.get("throughput")]
    official = {_key(r): r for r in ok if r["impl"] == "official"}
    references = {(r["impl"], _key(r)): r for r in ok if r["impl"] in REFERENCES}
    for r in ok:
        if r["impl"] in REFERENCES:
            continue
        for ref in REFERENCES:  # Hiera against the plain ViT at the same settings
            v = references.get((ref, _key(r)))
            if v is not None:
                r[f"vs_{ref}"] = _ratio(r["throughput"], v["throughput"])
        o = official.get(_key(r))
        if o is not None and r["impl"] != "official":
            r["vs_official"] = _ratio(r["throughput"], o["throughput"])
            r["memory_vs_official"] = _ratio(r.get("peak_rss_mb"), o.get("peak_rss_mb"))
            r["step_memory_vs_official"] = _ratio(r.get("peak_above_idle_mb"), o.get("peak_above_idle_mb"))
        if r["impl"] == "ours":
            peers = [p for p in ok if p["impl"] not in ("ours",) + REFERENCES and _key(p, False) == _key(r, False)]
            if peers:
                best = max(peers, key=lambda p: p["throughput"])
                r["vs_best_peer"] = r["throughput"] / best["throughput"]
                r["best_peer"] = best["label"]
    return results


def headline(results: List[dict]) -> List[dict]:
    """The ratios the README quotes, from one run: ours / official per setting, and ours at its
    largest inference batch against the next smaller one (a batch should never make it slower)."""
    rows = []
    for r in results:
        if r["impl"] == "ours" and r.get("vs_official") is not None and r["section"] in ("inference", "train"):
            what = (f"{r['section']} {r['task'] + ' ' if r['mode'] == 'train' else ''}{r['dtype']}"
                    f"{compiled_suffix(r['compile'], r.get('graphs', False))}, batch {r['batch']}")
            rows.append({"what": f"{what}: throughput ours / official", "ratio": r["vs_official"]})
            if r["mode"] == "train" and r.get("memory_vs_official") is not None:
                rows.append({"what": f"{what}: peak RSS ours / official", "ratio": r["memory_vs_official"]})
    for r in results:
        for ref in REFERENCES:
            if r["impl"] == "ours" and r.get(f"vs_{ref}") is not None:
                what = (f"{r['section']} {r['task'] + ' ' if r['mode'] == 'train' else ''}{r['dtype']}"
                        f"{compiled_suffix(r['compile'], r.get('graphs', False))}, batch {r['batch']}")
                rows.append({"what": f"{what}: throughput ours / {NAMES[ref]}", "ratio": r[f"vs_{ref}"]})
    series = collections.defaultdict(dict)
    for r in results:
        if r["section"] == "inference" and r.get("throughput"):
            series[r["label"]][r["batch"]] = r["throughput"]
    for label, by_batch in series.items():
        if len(by_batch) >= 2:
            big, prev = sorted(by_batch)[-1], sorted(by_batch)[-2]
            rows.append({"what": f"inference {label}: batch {big} / batch {prev} throughput",
                         "ratio": by_batch[big] / by_batch[prev]})
    return rows


# ----------------------------------------------------------------------------------------- record
def make_record(results: List[dict], settings: Settings, impl_info: Dict[str, dict],
                missing: Dict[str, str], seconds: float) -> dict:
    """The JSON record: tool, date, machine, settings, implementations (versions, files, or why
    skipped), every result and the headline ratios."""
    impls = {k: dict(v) for k, v in impl_info.items()}
    for impl, why in missing.items():
        impls.setdefault(impl, {})["skipped"] = why
    return {
        "tool": "hiera benchmark --compare",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "system": system_info(settings.device),
        "settings": dataclasses.asdict(settings),
        "implementations": impls,
        "seconds": round(seconds, 1),
        "results": results,
        "headline": headline(results),
    }


# ----------------------------------------------------------------------------------------- report
def _fmt(x: Optional[float], digits: int = 1) -> str:
    if x is None:
        return "-"
    if abs(x) >= 100:
        return f"{x:.0f}"
    return f"{x:.{digits}f}" if abs(x) >= 1 else f"{x:.{digits + 1}f}"


def _times(x: Optional[float]) -> str:
    return "-" if x is None else f"{x:.2f}x"


def _cell(r: Optional[dict]) -> str:
    if r is None:
        return ""
    if r.get("skipped"):
        return "skipped"
    if not r.get("throughput"):
        return "failed"
    ratio = f" ({_times(r['vs_official'])})" if r["impl"] != "official" and r.get("vs_official") else ""
    return _fmt(r["throughput"]) + ratio


def _labels(rows: List[dict]) -> List[str]:
    seen: List[str] = []
    for r in rows:
        if r["label"] not in seen:
            seen.append(r["label"])
    return seen


def _size(r: dict) -> str:
    return "x".join(map(str, r["input_size"]))


def markdown(record: dict) -> str:
    """The report as markdown tables (to paste into a README), with notes on failures."""
    results = record["results"]
    s = record["settings"]
    system = record.get("system", {})
    threads = sorted({r["threads"] for r in results if r.get("threads")})
    gpu = system.get("gpu")
    out = [(f"GPU: {gpu['name']} (CUDA {gpu.get('cuda')}); host " if gpu else "Machine: ")
           + f"{system.get('cpu', '?')}, {system.get('cpu_count', '?')} CPUs"
           + (f" ({'/'.join(map(str, threads))} torch threads)" if threads else "")
           + f", torch {system.get('torch', '?')}; "
           f"{s['rounds']} interleaved rounds of "
           + (f"{s['iters']} steps" if s.get("iters") else f">= {s['min_time']:g} s")
           + f" per case after {s['warmup']} warm-up steps.", ""]
    inf = [r for r in results if r["section"] == "inference"]
    if inf:
        first = inf[0]
        batches = sorted({r["batch"] for r in inf})
        out.append(f"### Inference: {first['model']} at {_size(first)}, {_per_second(first['unit'])} "
                   "(median over the rounds; higher is better)")
        out.append("")
        out.append("| implementation | " + " | ".join(f"batch {b}" for b in batches) + " |")
        out.append("| --- |" + " ---: |" * len(batches))
        for label in _labels(inf):
            by_batch = {r["batch"]: r for r in inf if r["label"] == label}
            if all(r.get("skipped") for r in by_batch.values()):
                continue
            out.append(f"| {label} | " + " | ".join(_cell(by_batch.get(b)) for b in batches) + " |")
        out.append("")
        peaks = system.get("measured_peak_tflops") or {}
        ceiling = ("; the ceiling measured in this run: " + ", ".join(f"{d} {_fmt(t)} TFLOP/s" for d, t in peaks.items())
                   if peaks else "")
        out.append("In parentheses: throughput / the official package's at the same precision and compilation, "
                   "measured in the same run. TFLOP/s: the model's matrix-product and attention FLOPs "
                   "(counted once, the same for every Hiera implementation; a ViT reference's own) per second; "
                   f"MFU: that over the device's dense matrix-product rate at the row's precision{ceiling}.")
        out.append("")
        out.append("| implementation | batch | img/s | x official | x best peer | latency median ms | p90 ms "
                   f"| {_memory_header(inf)} | above imports MB | round spread | TFLOP/s | MFU |")
        out.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for r in inf:
            if r.get("throughput"):
                peer = f"{_times(r.get('vs_best_peer'))} ({r['best_peer']})" if r.get("best_peer") else "-"
                out.append(f"| {r['label']} | {r['batch']} | {_fmt(r['throughput'])} | {_times(r.get('vs_official'))} "
                           f"| {peer} | {_fmt(r['latency_ms_median'])} | {_fmt(r['latency_ms_p90'])} "
                           f"| {_fmt(r.get('peak_rss_mb'))} | {_fmt(r.get('peak_above_idle_mb'))} "
                           f"| {_pct(r.get('spread'))} | {_fmt(r.get('tflops'))} | {_pct(r.get('mfu'), 1)} |")
        out.append("")
    train = [r for r in results if r["section"] == "train" and not r.get("skipped")]
    if train:
        first = train[0]
        out.append(f"### Training steps: {first['model'].replace('mae_', '')} at {_size(first)}, batch {first['batch']} "
                   f"(forward + loss + backward + {s['optimizer']} step; MAE mask ratio {s['mask_ratio']:g})")
        out.append("")
        out.append("| implementation | task | img/s | x official | step median ms | p90 ms | "
                   f"{_memory_header(train)} | x official | above imports MB | x official | TFLOP/s | MFU |")
        out.append("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for r in train:
            if r.get("throughput"):
                out.append(f"| {r['label']} | {r['task']} | {_fmt(r['throughput'])} | {_times(r.get('vs_official'))} "
                           f"| {_fmt(r['latency_ms_median'])} | {_fmt(r['latency_ms_p90'])} "
                           f"| {_fmt(r.get('peak_rss_mb'))} | {_times(r.get('memory_vs_official'))} "
                           f"| {_fmt(r.get('peak_above_idle_mb'))} | {_times(r.get('step_memory_vs_official'))} "
                           f"| {_fmt(r.get('tflops'))} | {_pct(r.get('mfu'), 1)} |")
            else:
                out.append(f"| {r['label']} | {r['task']} | failed | | | | | | | | | |")
        out.append("")
    for group, title in (("scaling size", "input size"), ("scaling video", "clip length"), ("scaling batch", "batch")):
        rows = [r for r in results if r["group"] == group and not r.get("skipped")]
        if not rows:
            continue
        out.append(f"### Scaling: {title} ({rows[0]['model']}" + (f", batch {rows[0]['batch']})" if group != "scaling batch"
                                                                  else f" at {_size(rows[0])})"))
        out.append("")
        out.append("| implementation | input | batch | items/s | ms per item | cost per item x first row "
                   "| latency median ms | peak RSS MB |")
        out.append("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        firsts: Dict[str, float] = {}
        for r in rows:
            if not r.get("throughput"):
                out.append(f"| {r['label']} | {_size(r)} | {r['batch']} | failed | | | | |")
                continue
            per_item = 1000.0 / r["throughput"]
            firsts.setdefault(r["label"], per_item)
            out.append(f"| {r['label']} | {_size(r)} | {r['batch']} | {_fmt(r['throughput'])} | {_fmt(per_item)} "
                       f"| {_times(per_item / firsts[r['label']])} | {_fmt(r['latency_ms_median'])} "
                       f"| {_fmt(r.get('peak_rss_mb'))} |")
        out.append("")
    if record.get("headline"):
        out.append("### Ratios (same run)")
        out.append("")
        out.append("| comparison | ratio |")
        out.append("| --- | ---: |")
        for h in record["headline"]:
            out.append(f"| {h['what']} | {_times(h['ratio'])} |")
        out.append("")
    notes = [f"- {NAMES.get(impl, impl)} skipped: {info['skipped']}"
             for impl, info in record.get("implementations", {}).items() if info.get("skipped")]
    absent = {impl for impl, info in record.get("implementations", {}).items() if info.get("skipped")}
    by_reason: Dict[str, List[str]] = {}  # one note per distinct failure, listing where it happened
    for r in results:
        if r.get("error"):
            reason = f"{'partly ' if r.get('partial') else ''}failed: {r['error'][:400]}"
        elif r.get("skipped") and r["impl"] not in absent:
            reason = f"skipped: {r['skipped']}"
        else:
            continue
        by_reason.setdefault(reason, []).append(f"{r['label']} ({r['group']})")
    notes += [f"- {', '.join(where)}: {reason}" for reason, where in by_reason.items()]
    if notes:
        out += ["Notes:", ""] + notes + [""]
    return "\n".join(out)


def _per_second(unit: str) -> str:
    return {"img/s": "images per second", "clips/s": "clips per second"}.get(unit, unit)


def _pct(x: Optional[float], digits: int = 0) -> str:
    return "-" if x is None else f"{100 * x:.{digits}f}%"


def _memory_header(rows: List[dict]) -> str:
    """On a GPU the peak is the CUDA allocator's, not the process's resident set."""
    kinds = {r.get("memory_kind") for r in rows if r.get("throughput")}
    return "peak GPU MB" if kinds == {"cuda_max_allocated"} else "peak RSS MB"


def plot(record: dict, path) -> Path:
    """A PNG: throughput per implementation and batch (bars, ours annotated with its ratio to the
    official), training steps, and the scaling curves; one panel per section that has results."""
    try:  # optional: only --plot needs it
        import matplotlib  # noqa: F401
    except ImportError as e:
        raise ImportError("--plot needs matplotlib: pip install matplotlib") from e
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    results = [r for r in record["results"] if r.get("throughput")]
    panels = []
    if any(r["section"] == "inference" for r in results):
        panels.append("inference")
    if any(r["section"] == "train" for r in results):
        panels.append("train")
    panels += [g for g in ("scaling size", "scaling video", "scaling batch") if any(r["group"] == g for r in results)]
    if not panels:
        panels = ["empty"]
    fig = Figure(figsize=(max(8.0, 6.0 * min(len(panels), 2)), 4.8 * ((len(panels) + 1) // 2)), dpi=110)
    FigureCanvasAgg(fig)  # a bare figure: no pyplot state, no backend switch
    # One colour per implementation in every panel; bf16/fp16 lighter, compiled hatched.
    colour = {"ours": "#1f77b4", "official": "#2ca02c", "timm": "#ff7f0e", "hf": "#d62728"}

    def style(r: dict) -> dict:
        return {"color": colour.get(r["impl"], "grey"), "alpha": 1.0 if r["dtype"] == "fp32" else 0.55,
                "hatch": "//" if r["compile"] else None}
    cols = 2 if len(panels) > 1 else 1
    for n, panel in enumerate(panels, 1):
        ax = fig.add_subplot((len(panels) + cols - 1) // cols, cols, n)
        if panel == "empty":
            ax.text(0.5, 0.5, "no measurements", ha="center", va="center")
            ax.set_axis_off()
            continue
        if panel in ("inference", "train"):
            rows = [r for r in results if r["section"] == panel]
            groups = sorted({r["batch"] for r in rows}) if panel == "inference" else \
                list(dict.fromkeys(r["task"] for r in rows))
            labels = _labels(rows)
            width = 0.8 / max(len(labels), 1)
            for j, label in enumerate(labels):
                xs, ys, notes, errs = [], [], [], [[], []]
                for g, group in enumerate(groups):
                    match = [r for r in rows if r["label"] == label and
                             (r["batch"] if panel == "inference" else r["task"]) == group]
                    if match:
                        m = match[0]
                        xs.append(g - 0.4 + width * (j + 0.5))
                        ys.append(m["throughput"])
                        notes.append(m.get("vs_official") if m["impl"] == "ours" else None)
                        spread = m.get("throughput_rounds") or [m["throughput"]]
                        errs[0].append(m["throughput"] - min(spread))  # whiskers: slowest to fastest round
                        errs[1].append(max(spread) - m["throughput"])
                first = next(r for r in rows if r["label"] == label)
                bars = ax.bar(xs, ys, width, label=label, edgecolor="white", yerr=errs,
                              error_kw={"elinewidth": 0.8, "capsize": 2, "alpha": 0.6}, **style(first))
                for bar, note, top in zip(bars, notes, errs[1]):
                    if note is not None:  # above the whisker
                        ax.annotate(f"{note:.2f}x", (bar.get_x() + bar.get_width() / 2, bar.get_height() + top),
                                    ha="center", va="bottom", fontsize=7, rotation=90, xytext=(0, 2),
                                    textcoords="offset points")
            ax.set_xticks(range(len(groups)))
            ax.set_xticklabels([f"batch {g}" if panel == "inference" else str(g) for g in groups])
            unit = rows[0]["unit"]
            ax.set_ylabel(unit)
            title = (f"inference, {rows[0]['model']} {_size(rows[0])}" if panel == "inference"
                     else f"training steps, batch {rows[0]['batch']}")
            ax.set_title(title + " (ours: x official; whiskers: rounds)", fontsize=10)
            ax.margins(y=0.15)
            ax.legend(fontsize=7, ncol=2)
        else:
            rows = [r for r in results if r["group"] == panel]
            for label in _labels(rows):
                mine = [r for r in rows if r["label"] == label]
                if panel == "scaling batch":
                    xs = [r["batch"] for r in mine]
                    ax.plot(xs, [r["throughput"] for r in mine], marker="o", label=label,
                            color=style(mine[0])["color"], alpha=style(mine[0])["alpha"])
                    ax.set_xscale("log", base=2)
                    ax.set_xticks(xs)
                    ax.set_xticklabels([str(x) for x in xs])
                    ax.set_xlabel("batch")
                    ax.set_ylabel(mine[0]["unit"])
                else:
                    names = [_size(r) for r in mine]
                    ax.plot(range(len(mine)), [1000.0 / r["throughput"] for r in mine], marker="o", label=label,
                            color=style(mine[0])["color"], alpha=style(mine[0])["alpha"])
                    ax.set_xticks(range(len(mine)))
                    ax.set_xticklabels(names)
                    ax.set_ylabel("ms per item")
            ax.set_ylim(bottom=0)
            ax.set_title(f"{panel}: {rows[0]['model']}", fontsize=10)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    system = record.get("system", {})
    machine = (system.get("gpu") or {}).get("name") or system.get("cpu", "")
    fig.suptitle(f"Hiera implementations, {machine}", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
