"""What the three Hiera checkpoint layouts share: layout detection and the key-renaming machinery.

Three layouts of the same network exist, named by :data:`FORMATS`:

* ``"official"``: facebookresearch/hiera (``hiera-transformer``) and this package
  (``patch_embed.*``, ``pos_embed``, ``blocks.{i}.*``, ``norm.*``, ``head.projection.*``; MAE:
  ``encoder_norm.*``, ``multi_scale_fusion_heads.*``, ``mask_token``, ``decoder_*``);
* ``"timm"``: ``timm.models.hiera.Hiera`` (the official trunk keys with ``head.norm.*``, ``head.fc.*``,
  and timm's extensions ``pos_embed_win``, ``blocks.{i}.ls{1,2}.gamma``), see :mod:`.timm_layout`;
* ``"hf"``: transformers' ``HieraModel`` / ``HieraForImageClassification`` / ``HieraForPreTraining``
  (``[hiera.]embeddings.*``, ``[hiera.]encoder.stages.{s}.layers.{j}.*``, ``[hiera.]pooler.layernorm.*``,
  ``classifier.*``, ``decoder.*``), see :mod:`.hf_layout`.

Here: :func:`detect_format` (state dict -> ``"official" | "timm" | "hf"``, judged by the key names
above), :func:`mask_from_noise`, and the helpers every converter uses: unwrapping a state dict,
renaming keys by an explicit rule (a key that matches no rule raises a :class:`ValueError` naming it;
``drop_unmapped=True`` drops such keys instead, with a warning listing them), and reading the
per-block structure of our ``Hiera(**kwargs)`` to check a translated config against.

Only torch (and this package's network core) is imported at module level.
"""

from __future__ import annotations

import inspect
import re
import warnings
from functools import partial
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import torch
import torch.nn as nn

from ..mae import MaskedAutoencoderHiera
from ..model import Hiera
from ..weights import StateDict, unwrap_state_dict

__all__ = ["FORMATS", "detect_format", "mask_from_noise"]

FORMATS = ("official", "timm", "hf")

# Keys of an official MAE checkpoint outside the encoder (neither timm nor HieraModel has them).
_MAE_DECODER_PREFIXES = ("decoder_embed.", "decoder_pos_embed", "decoder_blocks.", "decoder_norm.", "decoder_pred.",
                         "mask_token", "multi_scale_fusion_heads.")


# ====================================================================================== helpers
def _state(state_dict: Mapping[str, torch.Tensor], what: str = "state dict") -> StateDict:
    """Unwrap ``{"model_state": ...}``/``{"state_dict": ...}``/``module.`` prefixes into a plain dict."""
    return unwrap_state_dict(state_dict, source=what)


def _listing(keys: Sequence[str], limit: int = 24) -> str:
    """Keys, with block indices folded: ``decoder_blocks.*.norm1.weight (x8)``."""
    if len(keys) <= 6:
        return ", ".join(sorted(keys))
    groups: Dict[str, int] = {}
    for key in keys:
        pattern = re.sub(r"(?<=\.)\d+(?=\.|$)", "*", key)
        groups[pattern] = groups.get(pattern, 0) + 1
    items = [p if n == 1 else f"{p} (x{n})" for p, n in sorted(groups.items())]
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items) - limit} more patterns)" if len(items) > limit else "")


def _rename(
    state: StateDict,
    rule: Callable[[str, torch.Tensor], Optional[str]],
    what: str,
    drop_unmapped: bool,
    hint: str = "",
) -> StateDict:
    """Apply ``rule`` (key, tensor -> new key, or None for "no rule") to every key."""
    out: StateDict = {}
    unmapped: List[str] = []
    for key, value in state.items():
        new = rule(key, value)
        if new is None:
            unmapped.append(key)
            continue
        if new in out:
            raise ValueError(f"{what}: two keys map to {new!r} (one of them is {key!r}); the state dict is inconsistent")
        out[new] = value
    if unmapped:
        message = f"{what}: {len(unmapped)} keys have no counterpart: {_listing(unmapped)}"
        if hint:
            message += f". {hint}"
        if not drop_unmapped:
            raise ValueError(message + ". Pass drop_unmapped=True to drop them (with a warning).")
        warnings.warn(f"dropped {message}", UserWarning, stacklevel=3)
    return out


def _rename_param(sub: str, table: Mapping[str, str]) -> Optional[str]:
    """``prefix.weight`` / ``prefix.bias`` renamed by ``table`` (prefix -> prefix), else None."""
    for src, dst in table.items():
        if sub.startswith(src) and sub[len(src):] in ("weight", "bias"):
            return dst + sub[len(src):]
    return None


# ====================================================================================== official configs
def _official_defaults(mae: bool) -> Dict[str, Any]:
    """The default constructor arguments of our ``Hiera`` (``mae=False``) or ``MaskedAutoencoderHiera``."""
    cls = MaskedAutoencoderHiera if mae else Hiera
    sig = inspect.signature(cls.__init__)
    return {n: p.default for n, p in sig.parameters.items() if p.default is not inspect.Parameter.empty}


def _norm_eps(norm_layer) -> float:
    """eps of our ``norm_layer`` argument (``"LayerNorm"`` means eps 1e-6, as upstream)."""
    if norm_layer is None or norm_layer == "LayerNorm":
        return 1e-6
    if isinstance(norm_layer, partial) and norm_layer.func is nn.LayerNorm:
        return float(norm_layer.keywords.get("eps", 1e-5))
    if norm_layer is nn.LayerNorm:
        return 1e-5
    raise ValueError(f"norm_layer={norm_layer!r} is not a LayerNorm; only LayerNorm converts")


def _norm_layer_for_eps(eps: float):
    return "LayerNorm" if abs(eps - 1e-6) < 1e-12 else partial(nn.LayerNorm, eps=eps)


def _official_blocks(kw: Mapping[str, Any]) -> List[tuple]:
    """Per-block ``(dim, dim_out, heads, q_stride, use_mask_unit_attn, window_size or None)`` of our
    ``Hiera(**kw)``, read off a model built on the meta device (window size only matters with
    mask-unit attention)."""
    kw = {**{k: v for k, v in kw.items() if not k.startswith("decoder_")}, "num_classes": 1}
    with torch.device("meta"):
        model = Hiera(**kw)
    return [
        (b.dim, b.dim_out, b.attn.heads, b.attn.q_stride, bool(b.attn.use_mask_unit_attn),
         b.attn.window_size if b.attn.use_mask_unit_attn else None)
        for b in model.blocks
    ]


def _first_difference(a: List[tuple], b: List[tuple]) -> str:
    names = ("dim", "dim_out", "heads", "q_stride", "use_mask_unit_attn", "window_size")
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            diff = ", ".join(f"{n}: {u} vs {v}" for n, u, v in zip(names, x, y) if u != v)
            return f"block {i}: {diff}"
    return f"depth {len(a)} vs {len(b)}"


def _solve_multiplier(values: Sequence[int], name: str) -> float:
    """A float ``m`` with ``values[s+1] == int(values[s] * m)`` for all s (the official cumulative rule)."""
    if len(values) < 2:
        return 2.0  # unobservable with one stage: keep the default
    m = values[1] / values[0]
    for cand in (m, float(round(m, 6))):
        if all(int(values[s] * cand) == values[s + 1] for s in range(len(values) - 1)):
            return float(cand)
    raise ValueError(f"per-stage {name} {list(values)} do not follow the official rule x_(s+1) = int(x_s * {name}_mul)")


# ====================================================================================== masking
def mask_from_noise(noise: torch.Tensor, mask_ratio: float) -> torch.Tensor:
    """The mask-unit mask that official, timm and HF Hiera derive from uniform ``noise`` ``[B, #units]``:
    the ``int(#units * (1 - mask_ratio))`` units with the smallest noise are kept. Returns bool
    ``[B, #units]``, True = keep (pass as ``mask=`` to our models; HF takes ``noise=`` directly)."""
    num = noise.shape[1]
    len_keep = int(num * (1 - mask_ratio))
    ids_restore = torch.argsort(torch.argsort(noise, dim=1), dim=1)
    return ids_restore < len_keep


# ====================================================================================== detection
_HF_MARKERS = re.compile(
    r"^(hiera\.)?(embeddings\.(patch_embeddings|position_embeddings)|encoder\.stages\.|pooler\.layernorm\.)"
    r"|^(classifier\.|multiscale_fusion\.|decoder\.decoder_|decoder\.mask_token|hidden_states_norms\.)"
)
_TIMM_MARKERS = re.compile(r"^(head\.fc\.|head\.norm\.|head\.pre_logits\.|pos_embed_abs$)")
_OFFICIAL_MARKERS = re.compile(r"^(head\.projection\.|norm\.|decoder_|multi_scale_fusion_heads\.|mask_token$)")
# Shared: also our abswin models' window embedding and layer scale, named as timm names them.
_SHARED_MARKERS = re.compile(
    r"^(patch_embed\.|pos_embed$|pos_embed_spatial$|pos_embed_temporal$|pos_embed_win$|blocks\.\d+\.|encoder_norm\.)"
)
# timm's HieraDet (SAM 2's trunk, ``sam2_hiera_*``) without its head: SAM 2's ``pos_embed_window`` with
# timm's MLP names (ours, SAM 2's, are ``mlp.layers.{0,1}``). Only these two together say "timm".
_TIMM_HIERADET_MLP = re.compile(r"^blocks\.\d+\.mlp\.fc[12]\.")


def detect_format(state_dict: Mapping[str, torch.Tensor]) -> str:
    """``"official"``, ``"timm"`` or ``"hf"``, judged by key names.

    * hf: ``[hiera.]embeddings.patch_embeddings.*``, ``[hiera.]encoder.stages.*``, ``[hiera.]pooler.layernorm.*``,
      ``classifier.*``, ``multiscale_fusion.*``, ``decoder.decoder_*``;
    * timm: ``head.fc.*``, ``head.norm.*``, ``pos_embed_abs``, or (timm's HieraDet,
      ``sam2_hiera_*``) ``pos_embed_window`` with ``blocks.N.mlp.fc1.*``;
    * official: ``head.projection.*``, ``norm.*``, ``decoder_*``, ``mask_token``, ``multi_scale_fusion_heads.*``,
      or only the keys official and timm share (``patch_embed.*``, ``pos_embed``, ``pos_embed_win``,
      ``blocks.*`` with layer scale ``ls1/ls2.gamma``): an encoder without head or norm is laid out
      identically in both, and is reported as official.

    Raises ValueError when the keys fit none, or mix two layouts.
    """
    state = _state(state_dict)
    hits = {
        "hf": [k for k in state if _HF_MARKERS.search(k)],
        "timm": [k for k in state if _TIMM_MARKERS.search(k)],
        "official": [k for k in state if _OFFICIAL_MARKERS.search(k)],
    }
    shared = [k for k in state if _SHARED_MARKERS.search(k)]
    if "pos_embed_window" in state:  # (never in a plain Hiera's state dict, of any layout)
        hits["timm"] += [k for k in state if _TIMM_HIERADET_MLP.search(k)]
    if hits["hf"]:
        others = hits["timm"] + hits["official"] + [k for k in shared if not k.startswith("encoder_norm.")]
        if others:
            raise ValueError(
                f"state dict mixes Hugging Face keys ({_listing(hits['hf'], 3)}) with official/timm keys "
                f"({_listing(others, 3)})"
            )
        return "hf"
    if hits["timm"] and hits["official"]:
        raise ValueError(
            f"state dict mixes timm keys ({_listing(hits['timm'], 3)}) with official keys ({_listing(hits['official'], 3)})"
        )
    if hits["timm"]:
        return "timm"
    if hits["official"] or shared:
        return "official"
    raise ValueError(
        f"not a Hiera state dict of a known layout (official, timm or hf); its keys: {_listing(list(state), 8)}"
    )

