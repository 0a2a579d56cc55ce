"""What an MAE sees and what it paints back: reconstructions as images, and the ``mae-viz`` command.

The MAE decoder predicts *per-token normalised* pixels (each prediction token's pixels with their
mean removed and divided by their standard deviation, the target the checkpoints were trained on).
To look at a prediction, each predicted token is un-normalised with the mean and standard deviation
of the ground-truth pixels of the same token (what the official model card says to do), then the
dataset normalisation (ImageNet / Kinetics mean and std) is undone to get ``[0, 1]`` images.

Token layouts (as :meth:`MaskedAutoencoderHiera.get_pixel_label_2d` / ``_3d`` build the targets):

* images: one token per ``s x s`` pixel patch (``s = model.pred_stride``, 16 for the Hiera zoo MAEs, 32 for the HieraDet ones),
  its pixels channel-major ``(C, y, x)``;
* video: one token per ``s x s`` patch of the *first frame of each temporal patch* (frames 0, 2, 4,
  ... for 2-frame tubelets: the loss only covers those), pixel-major ``(y, x, C)``.

Library::

    out = mae_reconstruction(model, x)          # x normalised [B, 3, H, W] or [B, 3, T, H, W]
    save_grid(out, "viz/", names=["cat"])       # viz/cat.png: original | masked | recon | recon+visible

Command line: ``hiera mae-viz IMAGES_OR_VIDEOS... --model hiera_base_224.mae_in1k --out viz``.
"""

from __future__ import annotations

import inspect
import math
from pathlib import Path
from typing import List, NamedTuple, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from ..data.media import load_image
from ..data.transforms import ImageEvalTransform, VideoEvalTransform
from ..weights import write_atomic
from ..zoo import IMAGENET_MEAN, IMAGENET_STD, KINETICS_MEAN, KINETICS_STD

DEFAULT_MASK_RATIO_IMAGE = 0.6
DEFAULT_MASK_RATIO_VIDEO = 0.9
COLUMN_TITLES = ("original", "masked", "reconstruction", "recon + visible")
RAW_TITLE = "raw prediction"  # the fifth column, with raw=True
HEADER_HEIGHT = 14  # pixels of the title row of save_grid (titles=True) in the default bitmap font
MIN_PANEL = 192  # pixels of a picture's shorter side that scale=None (and mae-viz) enlarge it to at least
CLI_FONT_SIZE = 15  # mae-viz's titles and captions: legible at the panel sizes above


class MAEReconstruction(NamedTuple):
    """The output of :func:`mae_reconstruction`. Images are float in ``[0, 1]``, channels first.

    For images every picture is ``[B, C, H, W]``; for video ``[B, C, T', H, W]`` where the ``T'``
    frames are the ones the MAE loss covers (``frames`` gives their index in the input clip).
    """

    original: torch.Tensor  # the input, un-normalised
    masked: torch.Tensor  # the input with the masked patches filled with grey
    reconstruction: torch.Tensor  # the prediction for every patch, un-normalised per token
    pasted: torch.Tensor  # the prediction in masked patches, the input in visible ones
    visible: torch.Tensor  # bool [B, 1, H, W] / [B, 1, T', H, W], True = seen by the encoder
    mask: torch.Tensor  # bool [B, #mask units], True = kept (the model's convention)
    loss: torch.Tensor  # scalar: the MAE loss (MSE of normalised pixels over the masked tokens)
    mask_ratio: float  # fraction of mask units hidden
    frames: Optional[List[int]] = None  # video: clip frame index of each of the T' frames
    # The prediction before un-normalisation: every patch's predicted pixels as the decoder gives
    # them (zero mean, unit std over each patch's pixels), drawn as mid-grey +- 2 std.
    raw: Optional[torch.Tensor] = None

    @property
    def is_video(self) -> bool:
        return self.original.ndim == 5


def is_mae(model) -> bool:
    return all(hasattr(model, a) for a in ("forward_encoder", "forward_decoder", "pred_stride"))


def _decode(model, latent: torch.Tensor, mask: torch.Tensor, spatial):
    """``forward_decoder`` with the input size when the model's signature takes it."""
    params = inspect.signature(model.forward_decoder).parameters
    if "input_size" in params:
        return model.forward_decoder(latent, mask, input_size=tuple(spatial))
    return model.forward_decoder(latent, mask)


def _stats(tokens: torch.Tensor):
    """Per-token mean and std as the MAE target normalisation computes them (unbiased variance, +1e-6)."""
    mean = tokens.mean(dim=-1, keepdim=True)
    std = (tokens.var(dim=-1, keepdim=True) + 1.0e-6) ** 0.5
    return mean, std


def pixel_tokens(model, x: torch.Tensor) -> torch.Tensor:
    """Un-normalised ground-truth pixels of every prediction token, in the target layout.

    ``[B, C, H, W]`` -> ``[B, N, C*s*s]`` (channel-major); ``[B, C, T, H, W]`` ->
    ``[B, N, s*s*C]`` (first frame of each temporal patch, pixel-major); ``N`` in raster order.
    """
    every = torch.ones(x.shape[0], _num_pred_tokens(model, x), dtype=torch.bool, device=x.device)
    if x.ndim == 4:
        tokens = model.get_pixel_label_2d(x, every, norm=False)
    else:
        tokens = model.get_pixel_label_3d(x, every, norm=False)
    return tokens.reshape(x.shape[0], every.shape[1], -1)


def _num_pred_tokens(model, x: torch.Tensor) -> int:
    s = model.pred_stride
    if x.ndim == 4:
        return (x.shape[2] // s) * (x.shape[3] // s)
    frames = len(range(0, x.shape[2], model.patch_stride[0]))
    return frames * (x.shape[3] // s) * (x.shape[4] // s)


def unnormalise_tokens(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Undo the per-token target normalisation: ``pred * std(target) + mean(target)`` per token.

    ``pred``, ``target``: ``[..., P]`` (``P`` pixels per token); returns ``[..., P]``.
    """
    mean, std = _stats(target)
    return pred * std + mean


def tokens_to_image(tokens: torch.Tensor, channels: int, grid: Sequence[int], s: int) -> torch.Tensor:
    """Channel-major image tokens ``[B, gh*gw, C*s*s]`` -> ``[B, C, gh*s, gw*s]``."""
    b = tokens.shape[0]
    gh, gw = grid
    x = tokens.reshape(b, gh, gw, channels, s, s).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, channels, gh * s, gw * s)


def tokens_to_video(tokens: torch.Tensor, channels: int, grid: Sequence[int], s: int) -> torch.Tensor:
    """Pixel-major video tokens ``[B, t*gh*gw, s*s*C]`` -> ``[B, C, t, gh*s, gw*s]``."""
    b = tokens.shape[0]
    t, gh, gw = grid
    x = tokens.reshape(b, t, gh, gw, s, s, channels).permute(0, 6, 1, 2, 4, 3, 5)
    return x.reshape(b, channels, t, gh * s, gw * s)


def _display(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Undo the dataset normalisation of ``[B, C, ...]`` and clamp to ``[0, 1]``."""
    shape = (1, -1) + (1,) * (x.ndim - 2)
    mean_t = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(shape)
    std_t = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(shape)
    return (x * std_t + mean_t).clamp(0.0, 1.0)


def mae_reconstruction(
    model,
    x: torch.Tensor,
    mask_ratio: Optional[float] = None,
    mask: Optional[torch.Tensor] = None,
    seed: Optional[int] = 0,
    mean: Optional[Sequence[float]] = None,
    std: Optional[Sequence[float]] = None,
    fill: float = 0.5,
) -> MAEReconstruction:
    """Mask, encode, decode, and turn the predictions back into pictures.

    Args:
        model: a :class:`hiera.MaskedAutoencoderHiera` (image or video) or
            :class:`hiera.MaskedAutoencoderHieraDet`.
        x: normalised input, ``[B, C, H, W]`` (ImageNet mean/std) or ``[B, C, T, H, W]`` (Kinetics
            mean 0.45 / std 0.225), at the model's input size (or any tiling size with
            ``model.dynamic_size = True``).
        mask_ratio: fraction of mask units to hide; default 0.6 for images, 0.9 for video.
        mask: bool ``[B, #mask units]``, True = keep; overrides ``mask_ratio``/``seed``.
        seed: seeds the random mask (the global RNG state is left untouched); None: unseeded.
        mean, std: the normalisation of ``x`` (defaults: ImageNet for images, Kinetics for video).
        fill: grey level of the hidden patches in the ``masked`` picture.
    Returns:
        a :class:`MAEReconstruction`; pictures ``[B, C, H, W]`` or, for video, ``[B, C, T', H, W]``
        with one frame per temporal patch (the frames the loss covers, e.g. 8 of 16). ``raw`` is the
        prediction before un-normalisation (what the decoder outputs), for showing beside the rest.
    """
    if not is_mae(model):
        raise TypeError(
            f"mae_reconstruction needs an MAE (hiera.MaskedAutoencoderHiera or MaskedAutoencoderHieraDet: encoder + decoder), got "
            f"{type(model).__name__}; load one with load_model(..., mae=True)"
        )
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    ndim = len(model.input_size)
    if ndim not in (2, 3):
        raise ValueError(f"MAE visualisation covers images and videos, not {ndim}-D inputs")
    video = ndim == 3
    if mask is None:
        mask_ratio = (DEFAULT_MASK_RATIO_VIDEO if video else DEFAULT_MASK_RATIO_IMAGE) if mask_ratio is None else mask_ratio
        if not 0.0 <= float(mask_ratio) < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    mean = tuple(mean) if mean is not None else (KINETICS_MEAN if video else IMAGENET_MEAN)
    std = tuple(std) if std is not None else (KINETICS_STD if video else IMAGENET_STD)
    if x.ndim >= 2 and (len(mean) != x.shape[1] or len(std) != x.shape[1]):
        raise ValueError(f"mean/std need one value per input channel ({x.shape[1]}), got {mean} / {std}")
    model._check_input(x, mask)  # shape, channels, size and mask errors in the model's words

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            if mask is None:
                devices = [x.device] if x.device.type == "cuda" else []
                with torch.random.fork_rng(devices=devices):
                    if seed is not None:
                        torch.manual_seed(seed)
                    mask = model.get_random_mask(x, mask_ratio)
            latent, mask = model.forward_encoder(x, mask_ratio if mask_ratio is not None else 0.0, mask=mask)
            pred, pred_visible = _decode(model, latent, mask, x.shape[2:])
    finally:
        model.train(was_training)

    x = x.detach().float()
    pred = pred.detach().float()
    s = model.pred_stride
    channels = x.shape[1]
    target = pixel_tokens(model, x)  # [B, N, P]
    if pred.shape != target.shape:
        raise ValueError(
            f"decoder predictions {tuple(pred.shape)} do not match the pixel targets {tuple(target.shape)} "
            f"(pred_stride={s}); this model's layout is not the one MAE visualisation knows"
        )
    tmean, tstd = _stats(target)
    loss = (((pred - (target - tmean) / tstd) ** 2).mean(-1))[~pred_visible]
    loss = loss.mean() if loss.numel() else pred.new_zeros(())
    recon_tokens = pred * tstd + tmean
    raw_tokens = (0.5 + pred / 4.0).clamp(0.0, 1.0)

    if video:
        frame_ids = list(range(0, x.shape[2], model.patch_stride[0]))
        grid = (len(frame_ids), x.shape[3] // s, x.shape[4] // s)
        original = x[:, :, frame_ids]
        recon = tokens_to_video(recon_tokens, channels, grid, s)
        raw = tokens_to_video(raw_tokens, channels, grid, s)
    else:
        frame_ids = None
        grid = (x.shape[2] // s, x.shape[3] // s)
        original = x
        recon = tokens_to_image(recon_tokens, channels, grid, s)
        raw = tokens_to_image(raw_tokens, channels, grid, s)
    # Visibility per prediction token -> per pixel.
    vis = pred_visible.reshape(x.shape[0], 1, *grid)
    for d in range(len(grid) - 2, len(grid)):
        vis = vis.repeat_interleave(s, dim=2 + d)

    original_img = _display(original, mean, std)
    recon_img = _display(recon, mean, std)
    masked_img = torch.where(vis, original_img, torch.full_like(original_img, float(fill)))
    pasted_img = torch.where(vis, original_img, recon_img)
    hidden = 1.0 - mask.float().mean().item()
    return MAEReconstruction(original_img, masked_img, recon_img, pasted_img, vis, mask, loss, hidden, frame_ids, raw)


# ----------------------------------------------------------------------------------------- grids
def _to_uint8(img: torch.Tensor) -> np.ndarray:
    """``[C, H, W]`` in [0, 1] -> ``[H, W, 3]`` uint8."""
    if img.shape[0] == 1:
        img = img.expand(3, -1, -1)
    elif img.shape[0] != 3:
        raise ValueError(f"can only draw 1- or 3-channel images, got {img.shape[0]} channels")
    return (img.detach().float().cpu().clamp(0, 1) * 255.0).round().to(torch.uint8).permute(1, 2, 0).numpy()


def _pick_frames(total: int, frames: Optional[int]) -> List[int]:
    if frames is None or frames >= total:
        return list(range(total))
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    return sorted({round(i * (total - 1) / max(frames - 1, 1)) for i in range(frames)})


def auto_scale(height: int, width: int, min_panel: int = MIN_PANEL) -> int:
    """The smallest whole enlargement that makes a ``height x width`` picture's shorter side at
    least ``min_panel`` pixels (1 for pictures that already are)."""
    return max(1, math.ceil(min_panel / max(1, min(height, width))))


def _font(size: Optional[int]):
    """PIL's bitmap font (``size=None``), or its scalable font at ``size`` pixels where Pillow has
    FreeType (else the bitmap font)."""

    if size is None:
        return ImageFont.load_default()
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):  # an older Pillow, or one built without FreeType
        return ImageFont.load_default()


def _line_height(font) -> int:
    box = font.getbbox("Ag")
    return max(HEADER_HEIGHT - 3, box[3] - min(box[1], 0))


def _header_height(font_size: Optional[int]) -> int:
    return HEADER_HEIGHT if font_size is None else _line_height(_font(font_size)) + 8


def _wrap(text: str, font, width: int) -> List[str]:
    """``text`` in lines no wider than ``width`` pixels (paragraphs split at newlines)."""

    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    lines = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split():
            trial = f"{line} {word}" if line else word
            if line and draw.textlength(trial, font=font) > width:
                lines.append(line)
                line = word
            else:
                line = trial
        lines.append(line)
    return lines


def grid_size(height: int, width: int, rows: int = 1, titles: bool = True, pad: int = 2, scale: int = 1,
              columns: int = 4, font_size: Optional[int] = None):
    """``(width, height)`` in pixels of a :func:`save_grid` picture of ``height x width`` inputs,
    without a caption (``columns``: 4, or 5 with ``raw=True``)."""
    header = _header_height(font_size) if titles else 0
    return (columns * width * scale + (columns + 1) * pad, header + rows * height * scale + (rows + 1) * pad)


def caption_text(result: MAEReconstruction, raw: bool = True, frames: Optional[int] = None) -> str:
    """What a grid of ``result`` shows, in words (the caption mae-viz writes under each grid);
    ``raw`` and ``frames`` as given to :func:`render_grid`."""
    hidden = f"{100 * result.mask_ratio:.0f}%"
    columns = ("Columns: the input; the input with {hidden} of its mask units hidden (grey); the "
               "reconstruction of every patch; the reconstruction in the hidden patches with the visible input "
               "pasted back" + ("; the raw prediction." if raw else ".")).format(hidden=hidden)
    rows = ""
    if result.is_video and result.frames:
        picked = [result.frames[i] for i in _pick_frames(len(result.frames), frames)]
        shown = ", ".join(map(str, picked[:6])) + (", ..." if len(picked) > 6 else "")
        rows = (f" Rows: clip frames {shown}, each the first frame of a tubelet (the frames the MAE predicts and "
                "its loss covers).")
    how = (" The decoder predicts each patch's pixels normalised by that patch's own mean and standard deviation "
           "(its training target). The reconstruction undoes this with the mean and std of the true patch, "
           "taken from the input, so colours and the coarse layout of the scene show even when the model is "
           "untrained (random weights); only the detail within each patch is the model's.")
    if raw:
        how += (" The raw prediction is the decoder's output as it is: mid-grey is the patch mean, black and white "
                "2 std below and above.")
    loss = f" MAE loss {float(result.loss):.3f} (mean squared error of normalised pixels in the hidden patches)."
    return columns + rows + how + loss


def render_grid(
    result: MAEReconstruction,
    index: int = 0,
    frames: Optional[int] = None,
    titles: bool = True,
    pad: int = 2,
    scale: Optional[int] = 1,
    background: int = 255,
    raw: bool = False,
    caption: Optional[str] = None,
    font_size: Optional[int] = None,
):
    """One input's grid as a ``PIL.Image``: columns original | masked input | reconstruction |
    reconstruction + visible (| raw prediction, with ``raw=True``); one row for an image, one row
    per shown frame for video (``frames``: how many of the ``T'`` reconstructed frames, evenly
    spaced; default all).

    ``scale``: enlarge each picture this many times; None: enough for a shorter side of at least
    ``MIN_PANEL`` pixels (:func:`auto_scale`). ``font_size``: titles and caption in Pillow's
    scalable font at this size (default: its small bitmap font). ``caption``: text written under
    the grid, wrapped to its width (e.g. :func:`caption_text`). Without a caption the size is
    :func:`grid_size`."""

    pictures = [result.original, result.masked, result.reconstruction, result.pasted]
    names = list(COLUMN_TITLES)
    if raw:
        if result.raw is None:
            raise ValueError("raw=True needs the raw prediction (result.raw), which this result lacks")
        pictures.append(result.raw)
        names.append(RAW_TITLE)
    if result.is_video:
        shown = _pick_frames(result.original.shape[2], frames)
        rows = [[p[index, :, t] for p in pictures] for t in shown]
    else:
        rows = [[p[index] for p in pictures]]
    h, w = rows[0][0].shape[-2:]
    if scale is None:
        scale = auto_scale(h, w)
    if scale < 1 or pad < 0:
        raise ValueError(f"scale must be >= 1 and pad >= 0, got {scale} and {pad}")
    th, tw = h * scale, w * scale
    width, height = grid_size(h, w, len(rows), titles, pad, scale, len(pictures), font_size)
    font = _font(font_size)
    caption_lines = _wrap(caption, font, width - 2 * pad - 4) if caption else []
    line = _line_height(font) + 3
    caption_height = len(caption_lines) * line + 2 * pad + 4 if caption_lines else 0
    canvas = Image.new("RGB", (width, height + caption_height), (background,) * 3)
    top = _header_height(font_size) if titles else 0
    if titles:
        for c, title in enumerate(names):
            cell = Image.new("RGB", (tw, top), (background,) * 3)
            ImageDraw.Draw(cell).text((2, 1 if font_size is None else 3), title, fill=(0, 0, 0), font=font)
            canvas.paste(cell, (pad + c * (tw + pad), 0))  # clipped to its column
    for r, row in enumerate(rows):
        for c, img in enumerate(row):
            tile = Image.fromarray(_to_uint8(img))
            if scale != 1:
                tile = tile.resize((tw, th), Image.NEAREST)
            canvas.paste(tile, (pad + c * (tw + pad), top + pad + r * (th + pad)))
    draw = ImageDraw.Draw(canvas)
    for i, text in enumerate(caption_lines):
        draw.text((pad + 2, height + pad + 2 + i * line), text, fill=(0, 0, 0), font=font)
    return canvas


def save_grid(
    result: MAEReconstruction,
    out_dir: Union[str, Path],
    names: Optional[Sequence[str]] = None,
    frames: Optional[int] = None,
    titles: bool = True,
    pad: int = 2,
    scale: Optional[int] = 1,
    raw: bool = False,
    caption: Union[bool, str, None] = None,
    font_size: Optional[int] = None,
) -> List[Path]:
    """Write one PNG per input of ``result`` into ``out_dir`` (created if needed).

    Columns: original | masked input | reconstruction | reconstruction + visible (| raw
    prediction, with ``raw=True``). Images give one row, videos one row per shown frame
    (``frames`` of them, default all ``T'``). ``caption``: text under each grid, or True for
    :func:`caption_text`. ``scale``, ``font_size``: as for :func:`render_grid`; without a caption
    each file is :func:`grid_size` pixels. ``names``: file names (``.png`` added when missing),
    default ``mae_0.png``, ``mae_1.png``, ...  Returns the paths written.
    """
    batch = result.original.shape[0]
    if names is None:
        names = [f"mae_{i}" for i in range(batch)]
    if len(names) != batch:
        raise ValueError(f"got {len(names)} names for {batch} inputs")

    if caption is True:
        caption = caption_text(result, raw=raw, frames=frames)
    out_dir = Path(out_dir)
    paths = []
    for i, name in enumerate(names):
        name = str(name)
        path = out_dir / (name if name.lower().endswith(".png") else name + ".png")
        grid = render_grid(result, i, frames=frames, titles=titles, pad=pad, scale=scale, raw=raw,
                           caption=caption or None, font_size=font_size)
        # Whole or not at all (full disk, Ctrl-C); the temporary name hides the format, so say it.
        write_atomic(path, lambda tmp: grid.save(tmp, format="PNG"))
        paths.append(path)
    return paths


# ----------------------------------------------------------------------------------------- inputs
def load_image_input(path, input_size: Sequence[int], mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """Read an image, resize its shorter side to the model's size and centre-crop: ``[3, H, W]``,
    normalised with ``mean``/``std``."""

    return ImageEvalTransform(tuple(input_size), crop_pct=1.0, mean=mean, std=std)(load_image(path))


def load_video_input(
    path, input_size: Sequence[int], stride: float = 4, mean=KINETICS_MEAN, std=KINETICS_STD
) -> torch.Tensor:
    """Read the centre clip of a video (``input_size[0]`` frames ``stride`` apart at 30 fps),
    shorter side resized to the model's size and centre-cropped: ``[3, T, H, W]``, normalised."""

    transform = VideoEvalTransform(tuple(input_size), views="single", stride=stride, crop_pct=1.0, mean=mean, std=std)
    return transform.load(path)[0]
