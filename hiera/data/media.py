"""Reading images and videos robustly, and choosing which video frames to read.

* :func:`load_image`: any format PIL reads, EXIF orientation applied, as RGB.
* :func:`read_video` / :func:`probe_video` / :func:`load_clips`: PyAV decoding; short videos are
  decoded whole, long ones by seeking to each clip, so an hour-long file costs a few seeks.
* :func:`sample_frame_indices`: which frames make up a clip (centre / uniform / random clips,
  short videos padded by repeating frames). The video training pipeline reuses it.
* :func:`find_media`: expand files and folders into the images and videos to process; what cannot
  be used is listed in ``.skipped`` with a reason instead of stopping the run.

Everything that fails on a bad file raises :class:`MediaError` with the path and a readable reason.
"""

from __future__ import annotations

import bisect
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, List, NamedTuple, Optional, Sequence, Tuple, Union

import av
import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

PathLike = Union[str, os.PathLike]

IMAGE_EXTENSIONS = frozenset(
    ".jpg .jpeg .jpe .jfif .png .bmp .gif .webp .tif .tiff .ppm .pgm .pbm .pnm .tga .ico .jp2 .heic .avif".split()
)
VIDEO_EXTENSIONS = frozenset(
    ".mp4 .m4v .mov .avi .mkv .webm .mpg .mpeg .m2v .ts .mts .m2ts .wmv .flv .3gp .ogv".split()
)


class MediaError(Exception):
    """An image or video could not be read: ``str(e)`` is ``"<path>: <reason>"``; ``e.path`` and
    ``e.reason`` hold the parts."""

    def __init__(self, path: PathLike, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = str(path), reason


class Skipped(NamedTuple):
    """An input that was left out of a run, and why."""

    path: str
    reason: str


class MediaList(list):
    """A list of paths (or results) that also keeps what was skipped on the way (``.skipped``)."""

    def __init__(self, items: Iterable = (), skipped: Optional[List[Skipped]] = None):
        super().__init__(items)
        self.skipped: List[Skipped] = list(skipped or [])
        self._relative: dict = {}

    def relative_name(self, path: PathLike) -> Path:
        """``path`` relative to the folder it was found in (its bare name for files given directly)."""
        return self._relative.get(Path(path), Path(Path(path).name))


# ----------------------------------------------------------------------------------------- images
def load_image(path: PathLike):
    """Read an image as an RGB ``PIL.Image`` (``W x H``), upright.

    The EXIF orientation tag is applied, because phones store portrait photos as rotated landscape
    pixels plus a tag, and a model fed the raw pixels sees the scene sideways. Transparent images are
    composited on white (rather than dropping alpha, which turns transparent areas into whatever
    colour the hidden pixels have, often black). Multi-frame files (GIF, TIFF) give their first frame.
    """

    path = Path(path)
    try:
        with Image.open(path) as img:
            img.seek(0)
            img = ImageOps.exif_transpose(img)  # returns a loaded copy, so the file can close
            return _to_rgb(img)
    except FileNotFoundError:
        raise MediaError(path, "no such file") from None
    except UnidentifiedImageError:
        raise MediaError(path, "not an image PIL can read (unknown or corrupt format)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        # OSError: truncated / corrupt data; SyntaxError: some plugins' "not a valid file".
        raise MediaError(path, f"cannot decode image ({type(e).__name__}: {e})") from None


def _to_rgb(img):

    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit / float greyscale: convert("RGB") would clip everything above 255 to white.
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        img = Image.fromarray(arr.round().astype(np.uint8), mode="L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


# ----------------------------------------------------------------------------------------- videos
@dataclass
class VideoInfo:
    """What a container says about its first video stream (``num_frames`` may be an estimate)."""

    num_frames: int  # 0 when unknown
    fps: float
    duration: float  # seconds, 0.0 when unknown
    width: int
    height: int
    exact: bool  # num_frames came from the container's frame count, not duration x fps


def _open(path: Path, threads: str = "AUTO"):

    if not path.exists():
        raise MediaError(path, "no such file")
    try:
        container = av.open(str(path))
    except av.error.FFmpegError as e:
        raise MediaError(path, f"not a video PyAV can open ({e.__class__.__name__}: {_av_reason(e)})") from None
    if not container.streams.video:
        container.close()
        raise MediaError(path, "the file has no video stream")
    stream = container.streams.video[0]
    # "AUTO": frame + slice threads, for one video on a multi-core machine.
    # "NONE" for DataLoader workers (they parallelise across videos) and for decoding next to
    # torch's OpenMP threads: frame threads hand frames to each other, and threads still spinning
    # after a torch op delay every hand-off (many times slower on a small machine).
    stream.thread_type = threads
    return container, stream


def _av_reason(e: Exception) -> str:
    return getattr(e, "strerror", None) or str(e)


def _stream_info(stream, container) -> VideoInfo:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    fps = float(rate) if rate else 0.0
    if not fps > 0 or not math.isfinite(fps):
        fps = 30.0  # no rate at all (rare, e.g. raw streams): Kinetics' rate is the least surprising
    duration = 0.0
    if stream.duration is not None and stream.time_base is not None:
        duration = float(stream.duration * stream.time_base)
    elif container.duration is not None:
        duration = container.duration / 1_000_000  # av.time_base: microseconds
    exact = bool(stream.frames and stream.frames > 0)
    num_frames = int(stream.frames) if exact else int(round(duration * fps))
    ctx = stream.codec_context
    return VideoInfo(num_frames, fps, duration, int(ctx.width or 0), int(ctx.height or 0), exact)


def probe_video(path: PathLike) -> VideoInfo:
    """Frame count, rate, duration and size of the first video stream, without decoding."""
    path = Path(path)
    container, stream = _open(path)
    with container:
        return _stream_info(stream, container)


def _frame_array(frame) -> np.ndarray:
    arr = frame.to_ndarray(format="rgb24")  # [H, W, 3] uint8, whatever the pixel format
    # Phones record portrait video as landscape pixels plus a display-matrix rotation; apply it.
    rotation = int(getattr(frame, "rotation", 0) or 0) % 360
    if rotation:
        arr = np.ascontiguousarray(np.rot90(arr, k=rotation // 90))
    return arr


def _frame_index(frame, start_pts: int, time_base, fps: float, fallback: int) -> int:
    if frame.pts is None or time_base is None:
        return fallback
    return int(round(float((frame.pts - start_pts) * time_base) * fps))


def read_video(
    path: PathLike, indices: Optional[Sequence[int]] = None, seek_gap: int = 150, threads: str = "AUTO"
) -> Tuple[np.ndarray, float]:
    """Decode frames of a video with PyAV.

    Args:
        path: any container FFmpeg reads (mp4, mkv, avi, webm, mov, ...).
        indices: frame numbers to return (in that order, repeats allowed); None decodes every frame.
            Frames past the real end (containers may over-report their length) repeat the last one.
        seek_gap: wanted frames further apart than this are reached by seeking instead of decoding
            everything in between (so a few clips from a long video decode only those clips).
        threads: PyAV's decoder ``thread_type``: ``"AUTO"`` (frame and slice threads) or ``"NONE"``
            (one thread, for DataLoader workers); the frames are the same either way.
    Returns:
        ``(frames, fps)``: ``frames`` uint8 ``[T, H, W, 3]`` RGB (``T = len(indices)`` when given),
        ``fps`` the stream's average frame rate.

    A stream that breaks part-way keeps the frames decoded before the damage; a file from which no
    frame can be decoded raises :class:`MediaError`.
    """

    path = Path(path)
    container, stream = _open(path, threads)
    with container:
        info = _stream_info(stream, container)
        start_pts = stream.start_time if stream.start_time is not None else 0
        time_base = stream.time_base
        if indices is None:
            frames, error = [], None
            try:
                for frame in container.decode(stream):
                    frames.append(_frame_array(frame))
            except (av.error.FFmpegError, ValueError) as e:  # damaged data: keep what decoded
                error = e
            if not frames:
                why = f": {_av_reason(error)}" if error is not None else " (empty stream)"
                raise MediaError(path, f"no frame could be decoded{why}")
            return np.stack(frames), info.fps

        wanted = sorted({int(i) for i in indices})
        if not wanted:
            raise ValueError("indices is empty: ask for at least one frame")
        if wanted[0] < 0:
            raise ValueError(f"frame indices must be >= 0, got {wanted[0]}")
        decoded = {}  # frame index -> array, for the wanted frames only (memory stays small)
        groups, group = [], [wanted[0]]
        for i in wanted[1:]:
            if i - group[-1] > seek_gap:
                groups.append(group)
                group = []
            group.append(i)
        groups.append(group)
        error = None
        for group in groups:
            targets = set(group)
            try:
                if group[0] > seek_gap and time_base is not None:
                    # Seek lands on the keyframe at or before the target; decode forward from there.
                    ts = start_pts + int(group[0] / info.fps / time_base)
                    container.seek(ts, stream=stream, backward=True, any_frame=False)
                count = 0
                for frame in container.decode(stream):
                    idx = _frame_index(frame, start_pts, time_base, info.fps, count)
                    count += 1
                    if idx in targets:
                        decoded[idx] = _frame_array(frame)
                    if idx >= group[-1]:
                        break
            except (av.error.FFmpegError, ValueError) as e:
                error = e
        if not decoded:
            why = f": {_av_reason(error)}" if error is not None else " (empty stream, or every index past its end)"
            raise MediaError(path, f"no frame could be decoded{why}")
        # Missing frames (past the end, or skipped by a damaged stretch) take the nearest decoded one.
        have = sorted(decoded)
        out = []
        for i in indices:
            j = bisect.bisect_left(have, int(i))
            near = [have[k] for k in (j - 1, j) if 0 <= k < len(have)]
            out.append(decoded[min(near, key=lambda h: abs(h - int(i)))])
        return np.stack(out), info.fps


def sample_frame_indices(
    num_frames_total: int,
    num_frames: int = 16,
    stride: float = 4,
    mode: str = "center",
    num_clips: int = 1,
    pad: str = "clamp",
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """Frame numbers of ``num_clips`` clips of ``num_frames`` frames, ``stride`` frames apart.

    Args:
        num_frames_total: frames in the video (> 0).
        num_frames: frames per clip (16 for the Hiera 16x224 models).
        stride: frames between consecutive samples (4 for Hiera at 30 fps); may be fractional, e.g.
            ``4 * fps / 30`` to sample other frame rates at the same pace in seconds.
        mode: where the clips start:

            * ``"center"``: one clip in the middle of the video (single-view evaluation);
            * ``"uniform"``: ``num_clips`` clips whose starts are evenly spaced from the first to the
              last possible start, so together they cover the video (multi-view evaluation; SlowFast's
              offset sampling). With one clip it is the centre clip;
            * ``"random"``: each clip starts at a uniformly random frame (training).
        num_clips: clips to sample (``"center"`` takes exactly 1).
        pad: videos shorter than a clip (``(num_frames - 1) * stride + 1`` frames) never fail:

            * ``"clamp"``: the clip starts at frame 0 and indices past the end repeat the last frame
              (what the SlowFast / MAE-ST decoders the checkpoints were evaluated with do);
            * ``"stretch"``: the clip spreads evenly over the whole video, repeating frames
              (slow motion rather than a frozen ending).
        generator: ``torch.Generator`` for ``"random"``. torch RNGs (unlike numpy's global one) are
            re-seeded per DataLoader worker, so workers do not all draw the same clips.
    Returns:
        ``LongTensor [num_clips, num_frames]`` of indices in ``[0, num_frames_total)``, non-decreasing
        along each clip.
    """
    if num_frames_total is None or int(num_frames_total) < 1:
        raise ValueError(f"the video has no frames (num_frames_total={num_frames_total})")
    if num_frames < 1 or num_clips < 1:
        raise ValueError(f"num_frames and num_clips must be >= 1, got {num_frames} and {num_clips}")
    if not stride > 0:
        raise ValueError(f"stride must be > 0, got {stride}")
    if mode not in ("center", "uniform", "random"):
        raise ValueError(f"mode must be 'center', 'uniform' or 'random', got {mode!r}")
    if pad not in ("clamp", "stretch"):
        raise ValueError(f"pad must be 'clamp' or 'stretch', got {pad!r}")
    if mode == "center" and num_clips != 1:
        raise ValueError("mode='center' gives a single clip; use mode='uniform' for several")
    total = int(num_frames_total)
    span = (num_frames - 1) * float(stride)  # frames from a clip's first sample to its last
    steps = torch.arange(num_frames, dtype=torch.float64) * float(stride)
    if span > total - 1 and pad == "stretch":
        # Too short: every clip is the whole video, sampled evenly (the same for every mode).
        clip = torch.linspace(0, total - 1, num_frames, dtype=torch.float64)
        return clip.round().long().unsqueeze(0).repeat(num_clips, 1)
    room = max(total - 1 - span, 0.0)  # the latest possible start
    if mode == "random":
        starts = torch.randint(0, int(math.floor(room)) + 1, (num_clips,), generator=generator).double()
    elif num_clips == 1:
        starts = torch.tensor([room / 2], dtype=torch.float64)
    else:
        starts = torch.linspace(0, room, num_clips, dtype=torch.float64)
    # Round after adding so fractional strides keep their average pace; clamp pads short videos.
    indices = (starts[:, None] + steps[None, :]).round().long()
    return indices.clamp_(0, total - 1)


def load_clips(
    path: PathLike,
    num_frames: int = 16,
    stride: float = 4,
    mode: str = "center",
    num_clips: int = 1,
    target_fps: Optional[float] = 30.0,
    pad: str = "clamp",
    generator: Optional[torch.Generator] = None,
    max_decode_bytes: int = 512 * 2**20,
    threads: str = "AUTO",
) -> Tuple[np.ndarray, VideoInfo]:
    """Read the clips :func:`sample_frame_indices` picks, decoding as little as it can.

    ``stride`` counts frames at ``target_fps`` (the rate the model was trained at: Kinetics is
    mostly 30 fps); a 60 fps video is sampled every ``2 * stride`` frames so clips last as long in
    seconds. ``target_fps=None`` uses ``stride`` as is.

    Videos whose frames fit in ``max_decode_bytes`` are decoded whole, which also gives their true
    length (container headers may be wrong); longer ones are sampled from the container's frame
    count and read by seeking (:func:`read_video` with ``indices``). ``threads``: see :func:`read_video`.

    Returns:
        ``(clips, info)``: ``clips`` uint8 ``[num_clips, num_frames, H, W, 3]`` RGB; ``info`` a
        :class:`VideoInfo` (with the true frame count when the video was decoded whole).
    """
    path = Path(path)
    info = probe_video(path)
    step = stride * info.fps / target_fps if target_fps else stride
    frame_bytes = max(info.width * info.height * 3, 1)
    if info.num_frames <= 0 or info.num_frames * frame_bytes <= max_decode_bytes:
        frames, _ = read_video(path, threads=threads)
        info.num_frames, info.exact = len(frames), True
        idx = sample_frame_indices(len(frames), num_frames, step, mode, num_clips, pad, generator)
        clips = frames[idx.numpy()]
    else:
        idx = sample_frame_indices(info.num_frames, num_frames, step, mode, num_clips, pad, generator)
        clips, _ = read_video(path, idx.flatten().tolist(), threads=threads)
        clips = clips.reshape(num_clips, num_frames, *clips.shape[1:])
    return clips, info


# ----------------------------------------------------------------------------------------- finding
def media_kind(path: PathLike) -> Optional[str]:
    """``"image"``, ``"video"`` or None, from the file extension."""
    suffix = Path(path).suffix.lower()
    if suffix in IMAGE_EXTENSIONS:
        return "image"
    if suffix in VIDEO_EXTENSIONS:
        return "video"
    return None


def _sniff_kind(path: Path) -> Optional[str]:
    """The kind of a file with an unknown extension, by reading its header."""
    try:

        with Image.open(path):
            return "image"
    except Exception:
        pass
    try:
        container, _ = _open(path)
        container.close()
        return "video"
    except Exception:
        return None


def find_media(
    paths: Union[PathLike, Sequence[PathLike]],
    kinds: Sequence[str] = ("image", "video"),
    recursive: bool = True,
) -> MediaList:
    """Expand files and folders into the media files to process.

    Folders are searched (recursively by default, hidden entries skipped, sorted for a stable order)
    for files whose extension is an image or video extension of one of ``kinds``. Files named
    directly are taken whatever their extension if their header says they are an image or video.

    Returns:
        a :class:`MediaList` of ``Path`` (each file once, in the order found) whose ``.skipped``
        lists ``(path, reason)`` for paths that do not exist, files of another kind, unreadable
        files and empty folders. Corrupt *content* is only found when a file is decoded; the tools
        skip and count such files then.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    kinds = tuple(kinds)
    found = MediaList()
    seen = set()

    def add(file: Path, relative: Path):
        key = file.resolve()
        if key not in seen:
            seen.add(key)
            found.append(file)
            found._relative[file] = relative

    for entry in paths:
        entry = Path(entry)
        if entry.is_dir():
            pattern = "**/*" if recursive else "*"
            count = 0
            for file in sorted(entry.glob(pattern)):
                rel = file.relative_to(entry)
                if any(part.startswith(".") for part in rel.parts) or not file.is_file():
                    continue
                if media_kind(file) in kinds:
                    add(file, rel)
                    count += 1
            if count == 0:
                found.skipped.append(Skipped(str(entry), f"folder holds no {' or '.join(kinds)} files"))
        elif entry.is_file():
            kind = media_kind(entry) or _sniff_kind(entry)
            if kind is None:
                found.skipped.append(Skipped(str(entry), "not an image or video (unknown extension and header)"))
            elif kind not in kinds:
                article = "an" if kind == "image" else "a"
                reason = f"is {article} {kind}, but this model takes {' or '.join(kinds)}s"
                found.skipped.append(Skipped(str(entry), reason))
            elif not os.access(entry, os.R_OK):
                found.skipped.append(Skipped(str(entry), "permission denied"))
            else:
                add(entry, Path(entry.name))
        else:
            found.skipped.append(Skipped(str(entry), "no such file or folder"))
    return found
