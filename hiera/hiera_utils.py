"""Compatibility module: the official package's ``hiera.hiera_utils`` import path."""

import functools
from typing import Callable, Dict, Optional

from .layers import conv_nd, do_masked_conv, do_pool, get_resized_mask  # noqa: F401
from .token_order import Reroll, Unroll, undo_windowing  # noqa: F401
from .weights import CheckpointError, load_weights, with_head_classes
from .zoo import read_weights


def pretrained_model(checkpoints: Optional[Dict[str, str]], default: Optional[str] = None) -> Callable:
    """Decorator turning ``fn(**kwargs) -> model`` into ``fn(pretrained=False, checkpoint=default,
    strict=None, **kwargs)`` that loads ``checkpoints[checkpoint]`` (a URL or a local file), as the
    official decorator does, with this package's loading rules (see :func:`hiera.load_weights`)."""

    def inner(model_fn: Callable) -> Callable:
        @functools.wraps(model_fn)
        def build(pretrained: bool = False, checkpoint: Optional[str] = default, strict: Optional[bool] = None, **kwargs):

            state = None
            if pretrained:
                if not checkpoints:
                    raise CheckpointError(f"{model_fn.__name__} has no pretrained weights available")
                if checkpoint not in checkpoints:
                    raise CheckpointError(
                        f"unknown checkpoint {checkpoint!r} for {model_fn.__name__}; choose one of {list(checkpoints)}"
                    )
                state = read_weights(checkpoints[checkpoint])
                kwargs = with_head_classes(state, kwargs)
            model = model_fn(**kwargs)
            if state is not None:
                model.load_report = load_weights(model, state, strict=strict, source=f"{model_fn.__name__}:{checkpoint}")
            return model

        build.checkpoints = dict(checkpoints or {})
        build.default = default
        return build

    return inner
