"""``model.config``: the constructor arguments of a model, as the official package records them.

The official package stores every keyword argument of ``Hiera.__init__`` (defaults, overridden by
what was passed) in ``model.config``, and accepts ``config=`` back, so that
``model.save_pretrained(dir, config=model.config)`` and ``Hiera.from_pretrained(dir)`` round-trip.
This decorator does the same while keeping the real signature visible (huggingface_hub reads it to
decide which ``config.json`` keys to pass), and lets explicit arguments win over ``config``.

A subclass that adds arguments declares only its own and takes the base class's as ``**kwargs``
(``@records_config(extends=Hiera)``): the recorded signature, the accepted arguments and the
defaults are the base's followed by the subclass's, so the base's list is the single source.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, Dict, Optional


def _merged_signature(init: Callable, extends: Optional[type]) -> inspect.Signature:
    """``init``'s signature, with its ``**kwargs`` replaced by the arguments of ``extends.__init__``
    (put first, in their order)."""
    signature = inspect.signature(init)
    if extends is None:
        return signature
    params = list(signature.parameters.values())
    if not params or params[-1].kind != inspect.Parameter.VAR_KEYWORD:
        raise TypeError(f"{init.__qualname__} must end in **kwargs to extend {extends.__name__}")
    self_param, own = params[0], params[1:-1]
    base = [p for p in inspect.signature(extends.__init__).parameters.values() if p.name != "self"]
    clash = sorted({p.name for p in base} & {p.name for p in own})
    if clash:
        raise TypeError(f"{init.__qualname__} re-declares {clash}, which {extends.__name__} already takes")
    return signature.replace(parameters=[self_param, *base, *own])


def records_config(init: Optional[Callable] = None, *, extends: Optional[type] = None) -> Callable:
    """Decorate an ``__init__`` (``@records_config``, or ``@records_config(extends=Base)`` for one
    that passes ``**kwargs`` on to ``Base.__init__``). The decorated ``__init__`` is always called
    with every argument, defaults filled in, so with ``extends`` its ``kwargs`` hold all of the
    base's arguments."""
    if init is None:
        return functools.partial(records_config, extends=extends)
    signature = _merged_signature(init, extends)
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
        init(self, **{**defaults, **passed})
        self.config = {**defaults, **passed}
        finalize = getattr(self, "_finalize_config", None)
        if finalize is not None:
            finalize()

    wrapper.__signature__ = signature  # (inspect.signature reads this before following __wrapped__)
    return wrapper
