"""Hugging Face Hub support: ``from_pretrained``, ``save_pretrained`` and ``push_to_hub``.

Repos hold ``config.json`` (the constructor arguments, ``model.config``) and ``model.safetensors``,
the layout the official package writes and reads, so repos move both ways between the two.
Loading goes through :func:`hiera.weights.load_weights`, which reports what did not match instead
of silently loading non-strictly.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional, Union

import torch
from huggingface_hub import PyTorchModelHubMixin, hf_hub_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
)

from .weights import CheckpointError, default_file_mode, load_weights, read_checkpoint

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


class HubMixin(
    PyTorchModelHubMixin,
    library_name="hiera",
    repo_url="https://github.com/facebookresearch/hiera",
    paper_url="https://arxiv.org/abs/2306.00989",
    tags=["hiera", "vision"],
):
    """Mixed into :class:`hiera.Hiera`; see the module docstring."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Union[str, Path], **kwargs):
        """Load ``"org/name"`` from the Hub (or a local directory) written by ``save_pretrained``,
        e.g. ``Hiera.from_pretrained("facebook/hiera_base_224.mae_in1k_ft_in1k")``.

        Extra keyword arguments override ``config.json`` (``num_classes=10`` gives a fresh 10-way
        head on the pretrained trunk); ``strict=True`` demands an exact match.
        """
        try:
            return super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        except (OfflineModeIsEnabled, EntryNotFoundError, HfHubHTTPError, OSError) as e:
            if isinstance(e, CheckpointError):
                raise
            raise CheckpointError(
                f"could not get {pretrained_model_name_or_path!s} from the Hugging Face Hub "
                f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). Offline? Download it once "
                "where the Hub is reachable (it is then cached under $HF_HOME), or pass a local directory "
                "holding config.json and model.safetensors"
            ) from e

    @classmethod
    def _from_pretrained(
        cls,
        *,
        model_id: str,
        revision: Optional[str],
        cache_dir,
        force_download: bool,
        local_files_only: bool,
        token,
        map_location: str = "cpu",
        strict: Optional[bool] = None,
        **model_kwargs,
    ):
        weights_file = _find_weights(model_id, revision, cache_dir, force_download, local_files_only, token)
        state = read_checkpoint(weights_file)
        head = state.get("head.projection.weight")
        if head is not None and "num_classes" not in model_kwargs:
            model_kwargs["num_classes"] = head.shape[0]
        model = cls(**model_kwargs)
        model.load_report = load_weights(model, state, strict=strict, source=model_id)
        model.to(torch.device(map_location))
        model.eval()
        return model

    def save_pretrained(self, save_directory: Union[str, Path], *, config: Optional[dict] = None, **kwargs):
        """Write ``config.json`` (``model.config`` unless ``config`` is given) and ``model.safetensors``."""
        config = dict(self.config if config is None else config)
        try:
            json.dumps(config)
        except TypeError as e:
            raise TypeError(f"config must be JSON-serialisable to be saved ({e}); got {config}") from e
        result = super().save_pretrained(save_directory, config=config, **kwargs)
        # safetensors writes through a private temporary file (mode 0600): give the weights the
        # mode every other file gets
        weights = Path(save_directory) / "model.safetensors"
        if weights.exists():
            os.chmod(weights, default_file_mode())
        return result


def _find_weights(model_id, revision, cache_dir, force_download, local_files_only, token) -> Path:
    if os.path.isdir(model_id):
        for name in WEIGHT_FILES:
            if os.path.exists(os.path.join(model_id, name)):
                return Path(model_id) / name
        raise CheckpointError(f"{model_id} holds none of {list(WEIGHT_FILES)}")
    last_error = None
    for name in WEIGHT_FILES:
        try:
            return Path(
                hf_hub_download(
                    repo_id=model_id,
                    filename=name,
                    revision=revision,
                    cache_dir=cache_dir,
                    force_download=force_download,
                    token=token,
                    local_files_only=local_files_only,
                )
            )
        except EntryNotFoundError as e:
            if isinstance(e, LocalEntryNotFoundError):  # offline and not cached: no point trying others
                raise
            last_error = e
    raise CheckpointError(f"{model_id} holds none of {list(WEIGHT_FILES)}") from last_error
