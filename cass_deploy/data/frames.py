"""Unlabelled camera frames for label-free validation: a folder of images or a video file.

:func:`read_frames` returns :class:`Frames`: the original RGB frames (uint8 ``[H, W, 3]``), a name
and (video) a timestamp for each, and the frames that failed to decode. Videos are decoded with
PyAV (``pip install cass-deploy[video]``; FFmpeg comes inside its wheels, no system ffmpeg),
sampled every ``every``-th frame or at ``fps`` frames a second. A frame whose packet does not
decode is recorded in ``failures`` and skipped; a video that cannot be opened, or whose stream
breaks off (truncated, corrupt container), is an InputError naming the file and the frame.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from cass_deploy.backends.probe import lazy_import
from cass_deploy.data.common import IMAGE_SUFFIXES, image_header_size
from cass_deploy.data.factory import detect_format
from cass_deploy.data.synthetic import SyntheticRoadside
from cass_deploy.errors import InputError

av = lazy_import("av")

VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".ts", ".mpg", ".mpeg", ".h264", ".hevc")
#: sub-folders that hold a labelled set's images (their labels are ignored here)
IMAGE_FOLDERS = ("images", "image_2")


@dataclass
class Frames:
    """Frames of one source. images: uint8 ``[H, W, 3]`` each, original size; names: file names or
    ``"frame <index>"``; timestamps: seconds from the video start (None for image files); failures:
    ``{"frame": index, "error": text}`` of frames that did not decode (video only)."""

    source: str
    images: list[np.ndarray]
    names: list[str]
    timestamps: list[float | None]
    failures: list[dict[str, Any]] = field(default_factory=list)

    def sizes(self) -> list[tuple[int, int]]:
        return [tuple(im.shape[:2]) for im in self.images]

    def summary(self) -> dict[str, Any]:
        """JSON-ready: source, how many frames, their names and timestamps, the failures."""
        return {
            "source": self.source,
            "n_frames": len(self.images),
            "names": list(self.names),
            "timestamps": list(self.timestamps),
            "failures": list(self.failures),
        }


def is_video(spec: str | Path) -> bool:
    return Path(spec).suffix.lower() in VIDEO_SUFFIXES


def is_unlabelled(spec: str | Path) -> bool:
    """True for a video file, or a folder of images that is no COCO / KITTI / YOLO layout."""
    path = Path(spec)
    if str(spec) == "synthetic" or not path.exists():
        return False
    if path.is_file():
        return is_video(path)
    try:
        detect_format(path)
    except InputError:
        return True
    return False


def image_files(folder: Path) -> list[Path]:
    """Image files of ``folder`` (or of its ``images/`` / ``image_2/``), sorted by name; InputError
    naming the folder when it holds none."""
    for d in [folder / sub for sub in IMAGE_FOLDERS] + [folder]:
        found = (
            sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES) if d.is_dir() else []
        )
        if found:
            return found
    raise InputError(f"--data {folder}: no images ({', '.join(IMAGE_SUFFIXES)}) in it or in its images/")


def read_frames(
    spec: str | Path,
    max_frames: int,
    *,
    every: int | None = None,
    fps: float | None = None,
    allow_mixed: bool = False,
) -> Frames:
    """The frames of a folder of images or a video file (up to ``max_frames``).

    ``every`` / ``fps`` sample a video (default every frame); they are an InputError for a folder.
    Images of mixed sizes are an InputError naming two of them unless ``allow_mixed`` (the caller
    resizes every frame to the model input).
    """
    path = Path(spec)
    if every is not None and every < 1:
        raise InputError(f"--every must be an integer >= 1, got {every}")
    if fps is not None and not fps > 0:
        raise InputError(f"--fps must be a number > 0, got {fps}")
    if not path.exists():
        raise InputError(f"--data {path} does not exist")
    if path.is_file():
        if not is_video(path):
            raise InputError(f"--data {path} is a file but not a video ({', '.join(VIDEO_SUFFIXES)})")
        if every is not None and fps is not None:
            raise InputError("give --every or --fps, not both")
        return _read_video(path, max_frames, every, fps)
    if every is not None or fps is not None:
        raise InputError(f"--every / --fps sample a video; --data {path} is a folder of images")
    files = image_files(path)[:max_frames]
    if not allow_mixed:
        sizes = {p: image_header_size(p) for p in files}
        first = files[0]
        for p, hw in sizes.items():
            if hw != sizes[first]:
                raise InputError(
                    f"--data {path} has frames of mixed sizes ({first.name} {sizes[first][0]}x{sizes[first][1]}, "
                    f"{p.name} {hw[0]}x{hw[1]}); pass --resize to fit each to the model input"
                )
    return Frames(str(path), [_read_image(p) for p in files], [p.name for p in files], [None] * len(files))


def _read_image(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as im:
            return np.array(im.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as exc:
        raise InputError(f"cannot read image {path}: {exc}") from None


def _read_video(path: Path, max_frames: int, every: int | None, fps: float | None) -> Frames:
    """Decode and sample ``path`` with PyAV (see the module docstring for the error policy)."""
    try:
        container = av.open(str(path))
    except ImportError:
        raise InputError("video input needs PyAV: pip install 'cass-deploy[video]' (or pip install av)") from None
    except (av.error.FFmpegError, OSError) as exc:
        raise InputError(f"video {path} cannot be read at frame 0 (corrupt or truncated?): {exc}") from None
    out = Frames(str(path), [], [], [])
    index, next_t = 0, 0.0
    with container:
        if not container.streams.video:
            raise InputError(f"video {path}: no video stream could be read at frame 0 (corrupt or truncated?)")
        stream = container.streams.video[0]
        try:
            for packet in container.demux(stream):
                try:
                    decoded = packet.decode()
                except av.error.FFmpegError as exc:  # one bad packet: record it, go on
                    out.failures.append({"frame": index, "error": str(exc)})
                    index += 1
                    continue
                for frame in decoded:
                    t = float(frame.time) if frame.time is not None else None
                    take = (index % every == 0) if every else (t is None or t + 1e-9 >= next_t) if fps else True
                    if take:
                        out.images.append(np.asarray(frame.to_ndarray(format="rgb24"), dtype=np.uint8))
                        out.names.append(f"frame {index}")
                        out.timestamps.append(t)
                        if fps and t is not None:
                            next_t = t + 1.0 / fps
                    index += 1
                    if len(out.images) >= max_frames:
                        return out
        except av.error.FFmpegError as exc:
            raise InputError(f"video {path} is corrupt or truncated at frame {index}: {exc}") from None
    if not out.images:
        raise InputError(
            f"video {path}: no frame decoded ({len(out.failures)} failed, first at frame "
            f"{out.failures[0]['frame'] if out.failures else 0})"
        )
    return out


def synthetic_frames(image_size: Sequence[int], n: int, seed: int = 0) -> Frames:
    """``n`` validation scenes of the synthetic roadside set as unlabelled frames (the same scenes,
    seed for seed, as ``validate --data synthetic``)."""
    ds = SyntheticRoadside(n, split="val", seed=seed, image_size=tuple(image_size))
    images = [ds.get_numpy(i)[0] for i in range(n)]
    return Frames("synthetic", images, [f"scene {i}" for i in range(n)], [None] * n)


__all__ = ["Frames", "read_frames", "synthetic_frames", "is_video", "image_files", "VIDEO_SUFFIXES"]
