"""PNG plots of training curves from metrics logged as JSON lines.

Each line of a metrics file is one record, a dict such as::

    {"step": 120, "epoch": 3, "split": "train", "loss": 0.41, "lr": 0.0008}
    {"step": 120, "epoch": 3, "split": "val", "loss": 0.52, "acc1": 81.2}

:func:`plot_curves` draws one panel per metric, one colour per run (e.g. "MAE-pretrained" vs
"from scratch"), train as solid lines and validation as dashed lines with markers::

    from hiera.train.plots import plot_curves
    plot_curves({"MAE-pretrained": "runs/ft_mae/metrics.jsonl",
                 "from scratch": "runs/ft_scratch/metrics.jsonl"},
                "curves.png", keys=("loss", "acc1", "lr"))

matplotlib is imported only when plotting, with the non-interactive Agg backend (no display is
needed, and a user's interactive backend is not switched), so the rest of the package works
without it.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

__all__ = ["load_metrics", "plot_curves"]

Records = List[Dict[str, Any]]
Source = Union[str, os.PathLike, Sequence[Mapping[str, Any]]]

_TRAIN_STYLE = dict(linestyle="-", linewidth=1.2)
_VAL_STYLE = dict(linestyle="--", linewidth=1.2, marker="o", markersize=3)


def load_metrics(path: Union[str, os.PathLike]) -> Records:
    """The records of a JSON-lines metrics file (blank lines skipped). A malformed line raises
    ``ValueError`` naming the file and line; a missing file raises ``FileNotFoundError``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"metrics file not found: {path}")
    records = []
    with path.open() as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except ValueError as e:
                raise ValueError(f"{path}:{number}: not a JSON line ({e})") from None
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
            records.append(record)
    return records


def _is_records(source: Any) -> bool:
    return isinstance(source, Sequence) and not isinstance(source, (str, bytes)) and (
        len(source) == 0 or isinstance(source[0], Mapping)
    )


def _runs(sources: Any, labels: Optional[Sequence[str]]) -> List[Tuple[str, Records]]:
    """Normalise the accepted inputs to ``[(label, records), ...]``.

    Accepted: one path; one list of records; a list of paths and/or record lists; a mapping
    ``{label: path or records}``.
    """
    if isinstance(sources, Mapping):
        if labels is not None:
            raise ValueError("give labels either as the keys of a mapping or as `labels`, not both")
        labels, sources = list(sources.keys()), list(sources.values())
    elif isinstance(sources, (str, bytes, os.PathLike)) or _is_records(sources):
        sources = [sources]
    else:
        sources = list(sources)
    if not sources:
        raise ValueError("no runs to plot: pass at least one metrics file or list of records")
    if labels is not None and len(labels) != len(sources):
        raise ValueError(f"got {len(labels)} labels for {len(sources)} runs")
    runs = []
    for i, source in enumerate(sources):
        if _is_records(source):
            records, default = [dict(r) for r in source], f"run {i + 1}"
        elif isinstance(source, (str, bytes, os.PathLike)):
            records = load_metrics(source)
            default = Path(os.fsdecode(source)).parent.name or Path(os.fsdecode(source)).stem
        else:
            raise TypeError(f"run {i + 1}: expected a path or a list of dicts, got {type(source).__name__}")
        label = str(labels[i]) if labels is not None else default
        if not records:
            raise ValueError(f"run {label!r} has no records" + (f" ({source})" if not _is_records(source) else ""))
        runs.append((label, records))
    return runs


def _number(value: Any) -> Optional[float]:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _series(records: Records, key: str, split: str, x: str) -> Tuple[List[float], List[float]]:
    """``(xs, ys)`` of ``key`` over the records of ``split`` (records without a split count as
    train). The x value is ``x`` (e.g. "step"), else "epoch", else the record's position."""
    xs, ys = [], []
    for index, record in enumerate(records):
        if record.get("split", "train") != split:
            continue
        y = _number(record.get(key))
        if y is None:
            continue
        xv = _number(record.get(x))
        if xv is None:
            xv = _number(record.get("epoch"))
        xs.append(float(index) if xv is None else xv)
        ys.append(y)
    return xs, ys


def _available(runs: Iterable[Tuple[str, Records]]) -> List[str]:
    keys = set()
    for _, records in runs:
        for record in records:
            keys.update(k for k, v in record.items() if _number(v) is not None)
    return sorted(keys - {"step", "epoch"})


def plot_curves(
    sources: Union[Source, Sequence[Source], Mapping[str, Source]],
    out_png: Union[str, os.PathLike],
    keys: Sequence[str] = ("loss", "lr"),
    labels: Optional[Sequence[str]] = None,
    x: str = "step",
    splits: Sequence[str] = ("train", "val"),
    title: Optional[str] = None,
    figsize: Optional[Tuple[float, float]] = None,
    dpi: int = 100,
    log_keys: Sequence[str] = (),
) -> Path:
    """Plot the curves of ``keys`` for one or several runs into ``out_png``; returns its path.

    Args:
        sources: a metrics file (JSON lines), a list of records, a list of those (one per run), or
            a mapping ``{label: file or records}``.
        out_png: where to write the PNG (parent folders are created).
        keys: the metrics to plot, one panel each (e.g. ``("loss", "acc1", "lr")``).
        labels: run names for the legend (default: the folder of each file, or "run i").
        x: the x-axis field (``"step"``, or ``"epoch"``); records without it fall back to
            ``"epoch"`` and then to their position in the file.
        splits: which ``"split"`` values to draw; train solid, others dashed with markers.
        figsize: inches; default 5 x 3.5 per panel, at most 3 panels a row. The PNG is exactly
            ``figsize * dpi`` pixels (no tight bounding box, so sizes are predictable).
        log_keys: keys drawn on a log y-axis (e.g. ``("loss",)``).

    Raises ``ValueError`` when ``keys`` is empty, a run has no records, or a key has no value in
    any run (the message lists the keys that do), and ``FileNotFoundError`` for a missing file.
    """
    keys = [keys] if isinstance(keys, str) else list(keys)
    if not keys:
        raise ValueError("keys is empty: name at least one metric to plot, e.g. keys=('loss',)")
    runs = _runs(sources, labels)
    missing = [k for k in keys if not any(_series(r, k, s, x)[1] for _, r in runs for s in splits)]
    if missing:
        raise ValueError(
            f"no values for {missing} in the {'/'.join(splits)} records of {[label for label, _ in runs]}; "
            f"available keys: {_available(runs)}"
        )

    try:
        import matplotlib  # slow to import: loaded by the plots only, not by every command
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("plotting needs matplotlib: pip install matplotlib") from e
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ncols = min(3, len(keys))
    nrows = math.ceil(len(keys) / ncols)
    if figsize is None:
        figsize = (5.0 * ncols, 3.5 * nrows)
    # A bare Figure with an Agg canvas: no pyplot global state and no backend switch, so this is
    # safe in notebooks and threads, and the figure is freed when it goes out of scope.
    fig = Figure(figsize=figsize, dpi=dpi)
    FigureCanvasAgg(fig)
    colours = matplotlib.rcParams["axes.prop_cycle"].by_key().get("color", ["C0", "C1", "C2", "C3"])
    for panel, key in enumerate(keys):
        ax = fig.add_subplot(nrows, ncols, panel + 1)
        for i, (label, records) in enumerate(runs):
            colour = colours[i % len(colours)]
            for split in splits:
                xs, ys = _series(records, key, split, x)
                if not ys:
                    continue
                style = _TRAIN_STYLE if split == "train" else _VAL_STYLE
                name = label if len(splits) == 1 else f"{label} ({split})"
                ax.plot(xs, ys, color=colour, label=name, **style)
        ax.set_title(key)
        ax.set_xlabel(x)
        if key in log_keys:
            ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    if title:
        fig.suptitle(title)
    # Arranges the panels inside the fixed canvas (leaving room for the title); the pixel size is
    # unchanged.
    fig.tight_layout(rect=(0, 0, 1, 0.94) if title else None)
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, format="png", dpi=dpi)
    return out_png


def plot_comparison(
    groups: Mapping[str, Mapping[str, float]],
    out_png: Union[str, os.PathLike],
    title: str = "",
    chance: Optional[float] = None,
    ylabel: str = "top-1 on held-out images (%)",
    runs: Optional[Mapping[str, Mapping[str, Sequence[float]]]] = None,
) -> Path:
    """Grouped bars: one group per comparison, one bar per contender, the value printed on each,
    and a dashed line at the ``chance`` level.

    ``groups``: ``{"linear probe": {"MAE": 81.0, "random init": 64.5}, ...}``; contenders keep
    their colour across groups (first seen, first colour). ``runs``: for a bar that is the mean of
    several runs, the runs' own values (``{group: {contender: [...]}}``), drawn as dots on it so
    that their spread shows. Returns the written path.
    """
    try:
        import matplotlib  # slow to import: loaded by the plots only, not by every command
    except ImportError as e:  # pragma: no cover - matplotlib is a dependency
        raise ImportError("plotting needs matplotlib: pip install matplotlib") from e
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not groups or not all(groups.values()):
        raise ValueError("plot_comparison needs at least one group with at least one value")
    contenders: List[str] = []
    for bars in groups.values():
        contenders += [c for c in bars if c not in contenders]
    colours = matplotlib.rcParams["axes.prop_cycle"].by_key().get("color", ["C0", "C1", "C2", "C3"])
    fig = Figure(figsize=(2.2 + 1.9 * len(groups), 4.4), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / len(contenders)
    dotted = False  # (the legend names the dots once)
    for i, name in enumerate(contenders):
        xs = [g + (i - (len(contenders) - 1) / 2) * width for g, bars in enumerate(groups.values()) if name in bars]
        ys = [bars[name] for bars in groups.values() if name in bars]
        rects = ax.bar(xs, ys, width * 0.95, label=name, color=colours[i % len(colours)])
        ax.bar_label(rects, labels=[f"{y:.0f}" for y in ys], fontsize=9, padding=2)
        for x, group in zip(xs, [g for g, bars in groups.items() if name in bars]):
            values = list((runs or {}).get(group, {}).get(name, []))
            if values:
                ax.plot([x] * len(values), values, "o", color="black", markersize=3.5, zorder=3,
                        label=None if dotted else "single runs")
                dotted = True
    if chance is not None:
        ax.axhline(chance, color="0.4", linestyle="--", linewidth=1)
        ax.text(len(groups) - 0.5, chance, f"chance {chance:.1f}%", ha="right", va="bottom", fontsize=8, color="0.3")
    ax.set_xticks(range(len(groups)), list(groups), fontsize=9)
    ax.set_ylim(0, 105)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=9, loc="upper left")
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png)
    return out_png
