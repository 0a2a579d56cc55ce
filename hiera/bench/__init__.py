"""Benchmarking: how fast Hiera runs, alone or beside other implementations (``hiera benchmark``).

    timing   one model's throughput, latency and memory (:func:`timing.benchmark`)
    worker   the timing loop and memory reader, and the worker process of ``--compare``, which
             imports nothing from this package (it may run the official package's environment)
    plan     what ``--compare`` measures: variants, cases, settings, FLOPs and the device's peak
    runner   how it measures: worker processes, interleaved rounds, one result per case
    report   what it found: ratios, the JSON record, markdown tables and a chart

Library use::

    from hiera.bench import Settings, markdown, parse_variants, plan_cases, plot, run_plan
    cases = plan_cases(sections=["inference"], model="hiera_small_224", batches=[1, 8],
                       variants=parse_variants(["ours:fp32", "official:fp32"]))
    record = run_plan(cases, Settings(rounds=3), log=print)
    print(markdown(record)); plot(record, "compare.png")

The names below are imported on first use, so ``import hiera.bench`` imports none of its modules.
(``plan`` is the module; :func:`hiera.bench.plan.plan` is here as ``plan_cases``.)
"""

import importlib

_EXPORTS = {
    "benchmark": ("timing", "benchmark"),
    "Settings": ("plan", "Settings"),
    "Variant": ("plan", "Variant"),
    "parse_variants": ("plan", "parse_variants"),
    "plan_cases": ("plan", "plan"),
    "run_plan": ("runner", "run_plan"),
    "markdown": ("report", "markdown"),
    "plot": ("report", "plot"),
}


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, attr = _EXPORTS[name]
    return getattr(importlib.import_module(f"{__name__}.{module}"), attr)


def __dir__():
    return sorted(list(globals()) + list(_EXPORTS))
