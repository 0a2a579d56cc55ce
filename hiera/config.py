"""``model.config``: the constructor arguments of a model, as the official package records them.

The official package stores every keyword argument of ``Hiera.__init__`` (defaults, overridden by
what was passed) in ``model.config``, and accepts ``config=`` back, so that
``model.save_pretrained(dir, config=model.config)`` and ``Hiera.from_pretrained(dir)`` round-trip.
This decorator does the same while keeping the real signature visible (huggingface_hub reads it to
decide which ``config.json`` keys to pass), and lets explicit arguments win over ``config``.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, Dict


def records_config(init: Callable) -> Callable:
    signature = inspect.signature(init)
    names = [p for p in signature.parameters if p != "self"]
    defaults = {
        name: p.default for name, p in signature.parameters.items() if p.default is not inspect.Parameter.empty
    }

    @functools.wraps(init)
    def wrapper(self, *args, config: Dict[str, Any] = None, **kwargs):
        if len(args) > len(names):
            raise TypeError(f"{type(self).__name__}() takes at most {len(names)} positional arguments")
        passed = dict(zip(names, args))
        overlap = set(passed) & set(kwargs)
        if overlap:
            raise TypeError(f"{type(self).__name__}() got multiple values for {sorted(overlap)}")
        passed.update(kwargs)
        if config is not None:
            if not isinstance(config, dict):
                raise TypeError(f"config must be a dict of constructor arguments, got {type(config).__name__}")
            passed = {**config, **passed}
        unknown = sorted(set(passed) - set(names))
        if unknown:
            raise TypeError(
                f"{type(self).__name__}() got unexpected arguments {unknown}; accepted arguments are {names}"
            )
        init(self, **passed)
        self.config = {**defaults, **passed}
        finalize = getattr(self, "_finalize_config", None)
        if finalize is not None:
            finalize()

    return wrapper
