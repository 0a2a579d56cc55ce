"""Compatibility module: the official package's ``hiera.hfhub`` import path."""

from huggingface_hub import PyTorchModelHubMixin  # noqa: F401

from .config import records_config as has_config  # noqa: F401


def is_huggingface_hub_available() -> bool:
    """Always True here: huggingface_hub is a dependency of this package."""
    return True
