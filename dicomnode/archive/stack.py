"""A series as a stack of frames for the viewer: spatial order, positions, and the first window.

Instances are ordered along the normal of their image plane (the cross product of the two
direction cosines of (0020,0037) *Image Orientation (Patient)*, the position being
(0020,0032) *Image Position (Patient)* projected on it) when every instance has both, else by
(0020,0013) *Instance Number*. Both come from the index (Orthanc's instance main tags), so no
file is opened except one, for the window to start from.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from dicomnode.archive.index import Instance
from dicomnode.archive.index import Series

#: Most instances one viewer page lists.
MAX_INSTANCES = 5000


@dataclass(frozen=True)
class Frame:
    """One image of the stack: an instance's frame (from 1) and where it lies."""

    instance: str
    frame: int
    frames: int
    number: int | None
    position: float | None


def _floats(value: Any, count: int) -> list[float] | None:
    if isinstance(value, str):
        value = value.split("\\")
    if not isinstance(value, (list, tuple)) or len(value) != count:
        return None
    try:
        out = [float(v) for v in value]
    except (TypeError, ValueError):
        return None
    return out if all(math.isfinite(v) for v in out) else None


def _position(main_tags: str) -> float | None:
    try:
        tags = json.loads(main_tags or "{}")
    except ValueError:
        return None
    ipp = _floats(tags.get("ImagePositionPatient"), 3)
    iop = _floats(tags.get("ImageOrientationPatient"), 6)
    if ipp is None or iop is None:
        return None
    r, c = iop[:3], iop[3:]
    normal = (r[1] * c[2] - r[2] * c[1], r[2] * c[0] - r[0] * c[2], r[0] * c[1] - r[1] * c[0])
    if not any(normal):
        return None
    return sum(p * n for p, n in zip(ipp, normal, strict=True))


def frames_of(series: Series) -> tuple[list[Frame], bool]:
    """The series' frames in viewing order, and whether that order is spatial."""
    rows = list(Instance.select(Instance.pk, Instance.public_id, Instance.instance_number,
                                Instance.number_of_frames, Instance.main_tags)
                .where(Instance.series == series.pk).limit(MAX_INSTANCES).tuples())
    placed = [(pk, public_id, number, frames, _position(tags)) for pk, public_id, number, frames, tags in rows]
    spatial = bool(placed) and all(p[4] is not None for p in placed) and len({p[4] for p in placed}) > 1
    if spatial:
        placed.sort(key=lambda p: (p[4], p[2] if p[2] is not None else 0, p[0]))
    else:
        placed.sort(key=lambda p: (p[2] is None, p[2] if p[2] is not None else 0, p[0]))
    out = []
    for _pk, public_id, number, frames, position in placed:
        count = max(1, int(frames or 1))
        for f in range(1, count + 1):
            out.append(Frame(public_id, f, count, number, position if spatial else None))
    return out, spatial
