"""DICOM JSON (PS3.18 F.2): datasets as the JSON model QIDO-RS and WADO-RS metadata answer.

Binary values longer than :data:`BULK_THRESHOLD` become a ``BulkDataURI``.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag

from dicomnode import tags

LOGGER = logging.getLogger(__name__)


#: Binary values longer than this are answered as a BulkDataURI rather than inline.
BULK_THRESHOLD = 1024
BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
PIXEL_TAGS = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})



def tag_key(tag: int) -> str:
    """The DICOM JSON key of a tag: 8 upper-case hex digits."""
    return f"{tag:08X}"


def pn_json(value: str) -> dict[str, str]:
    groups = str(value).split("=")
    return {name: text for name, text in zip(("Alphabetic", "Ideographic", "Phonetic"), groups, strict=False)
            if text}


def value_json(vr: str, value: Any) -> dict[str, Any]:
    """The DICOM JSON of one index value: empty strings and ``None`` give no ``Value``."""
    out: dict[str, Any] = {"vr": vr}
    if value is None or value == "":
        return out
    if vr in ("IS", "SL", "SS", "UL", "US"):
        out["Value"] = [int(value)]
    elif vr == "PN":
        out["Value"] = [pn_json(str(value))]
    elif isinstance(value, (list, tuple)):
        out["Value"] = list(value)
    elif vr in ("CS", "UI") and "\\" in str(value):
        out["Value"] = [v for v in str(value).split("\\")]
    else:
        out["Value"] = [value]
    return out


def is_ascii(doc: Mapping[str, Any]) -> bool:
    return json.dumps(doc, ensure_ascii=False).isascii()


def _vr_of(ds: Dataset, tag: BaseTag) -> str:
    raw = ds.get_item(tag, keep_deferred=True)
    vr = getattr(raw, "VR", None)
    if vr:
        return str(vr)
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        return "UN"
    if tag == 0x7FE00010:
        return "OW"  # implicit VR little endian pixel data
    return str(vr).split(" or ")[0]


def _raw_length(ds: Dataset, tag: BaseTag) -> int | None:
    raw = ds.get_item(tag, keep_deferred=True)
    length = getattr(raw, "length", None)
    if isinstance(raw, DataElement) and raw.value is not None and not raw.is_empty:
        try:
            return len(raw.value)
        except TypeError:
            return None
    return int(length) if length is not None else None


def dataset_json(ds: Dataset, bulk_uri: str | None, prefix: str = "", depth: int = 0) -> dict[str, Any]:
    """DICOM JSON of a dataset; binary values longer than :data:`BULK_THRESHOLD` become BulkDataURIs.

    Parameters
    ----------
    ds : Dataset
        Read with ``stop_before_pixels`` and deferred values (large values are not loaded).
    bulk_uri : str, optional
        Base of the bulk data URIs (``.../instances/{uid}/bulkdata``); each element's path
        in the format of :func:`dicomnode.tags.element_at` is appended. Without it, large
        binary values are left out (their VR only).
    """
    out: dict[str, Any] = {}
    for tag in sorted(ds.keys()):
        if tag.group == 0x0002 or tag.element == 0x0000:
            continue  # file meta and group lengths have no place in DICOM JSON
        vr = _vr_of(ds, tag)
        path = f"{prefix}{int(tag):08x}"
        key = tag_key(int(tag))
        if vr in BINARY_VRS and (_raw_length(ds, tag) or 0) > BULK_THRESHOLD:
            out[key] = {"vr": vr, "BulkDataURI": f"{bulk_uri}/{path}"} if bulk_uri else {"vr": vr}
            continue
        try:
            elem = ds[tag]
            if elem.VR == "SQ":
                items = elem.value or []
                out[key] = {"vr": "SQ", "Value": [
                    dataset_json(item, bulk_uri, f"{path}/{n}/", depth + 1) for n, item in enumerate(items)
                ]} if depth < tags.MAX_DEPTH and items else {"vr": "SQ"}
                continue
            out[key] = elem.to_json_dict(None, BULK_THRESHOLD * 1024)
        except Exception as exc:  # one undecodable value must not lose the whole answer
            LOGGER.debug("Value of %s cannot be written as DICOM JSON: %s", key, exc)
            out[key] = {"vr": vr}
    return out
