"""The tag tree of a dataset, for display (no HTML here).

:func:`tag_tree` turns a :class:`pydicom.Dataset` into plain, immutable :class:`TagNode`
records that a template can render without touching pydicom: strings are already decoded
with the dataset's (0008,0005) *Specific Character Set* (PS3.5 6.1), binary and long values
are flagged as bulk so they are offered for download instead of being dumped, and every
element carries a stable *path* (``"00081140/0/00081155"``) that :func:`element_at` resolves
back to the element, so a URL can name one value inside a file.

Datasets come from the outside world, so nothing here trusts them: an element whose value
cannot be decoded is shown with its raw length and a note, and a pathologically deep nesting
of sequences is cut with a placeholder instead of exhausting the stack.
"""

from __future__ import annotations

import logging
import re
import struct
from collections.abc import Iterable
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pydicom import datadict
from pydicom.dataelem import DataElement
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag
from pydicom.tag import Tag

from dicomnode.errors import DolmenError
from dicomnode.errors import NotFound

LOGGER = logging.getLogger(__name__)

#: Value representations whose value is binary (PS3.5 6.2): never shown, only downloaded.
BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})

#: Sequences nested deeper than this are replaced by a single placeholder node.
MAX_DEPTH = 64

#: (7FE0,0010) *Pixel Data*, (7FE0,0008) *Float Pixel Data*, (7FE0,0009) *Double Float
#: Pixel Data*: always bulk, whatever their VR claims.
_PIXEL_TAGS = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})

_UNDEFINED_LENGTH = 0xFFFFFFFF
_TAG_PART = re.compile(r"[0-9A-Fa-f]{8}")
_INDEX_PART = re.compile(r"0|[1-9][0-9]{0,8}")
_MAX_PATH_IN_MESSAGE = 120


@dataclass(frozen=True)
class TagNode:
    """One data element of a dataset, ready for display.

    Attributes
    ----------
    tag : str
        The tag as ``"(gggg,eeee)"`` in upper-case hexadecimal; ``""`` for the placeholder
        that replaces sequences nested too deep.
    keyword : str
        The dictionary keyword (``"PatientName"``); for a private element the name from
        pydicom's private dictionary (``"Full fidelity"``) when its creator is known there,
        ``"Private Creator"`` for a private creator element; ``""`` when unknown.
    vr : str
        The value representation (``"PN"``, ``"SQ"``...); ``"UN"`` when not known.
    value : str
        The value as text, decoded to Unicode, multiple values joined with ``"\\"``;
        ``""`` for sequences and bulk values; a note in parentheses when the value cannot
        be decoded or the nesting is too deep.
    length : int
        The value length in bytes.
    path : str
        Stable address of the element inside the dataset: tags as 8 hexadecimal digits and
        sequence item indexes, separated by ``/`` (``"00081140/0/00081155"``).
        :func:`element_at` resolves it.
    private : bool
        True for a private element (odd group).
    private_creator : str or None
        For a private data element, the (gggg,00xx) *Private Creator* of its block;
        None for the creator element itself, for non-private elements and when the block
        has no creator.
    is_bulk : bool
        True when the value is binary (OB, OD, OF, OL, OV, OW, UN), is pixel data, or is
        longer than ``max_value_chars`` characters: show its length and a download link.
    items : tuple of tuple of TagNode, or None
        For a sequence, one tuple of child nodes per item; None otherwise.
    """

    tag: str
    keyword: str
    vr: str
    value: str
    length: int
    path: str
    private: bool
    private_creator: str | None
    is_bulk: bool
    items: tuple[tuple[TagNode, ...], ...] | None


def tag_tree(
    ds: Dataset, *, max_value_chars: int = 256, include_meta: bool = True
) -> list[TagNode]:
    """Return the elements of `ds` as a tree of :class:`TagNode`.

    Never raises on odd content: an element that pydicom cannot convert (wrong length for
    its VR, broken sequence...) becomes a node with its raw length and a value such as
    ``"(cannot decode: ...)"``; sequences nested more than :data:`MAX_DEPTH` levels deep
    end in one placeholder node. Elements are converted in place by pydicom as they are
    read, as with any access to ``ds[tag]``.

    Parameters
    ----------
    ds : pydicom.Dataset
        The dataset, typically from :func:`pydicom.dcmread`.
    max_value_chars : int, optional
        Values whose text is longer than this are flagged bulk instead of shown.
    include_meta : bool, optional
        Put the file meta information (group 0002) first when the dataset has one.

    Returns
    -------
    list of TagNode
        The top-level elements, file meta first, each group in tag order.
    """
    nodes: list[TagNode] = []
    meta = _file_meta(ds)
    meta_tags: set[BaseTag] = set()
    if include_meta and meta is not None:
        meta_tags = set(meta.keys())
        nodes.extend(_dataset_nodes(meta, "", 0, max_value_chars))
    body = [tag for tag in _sorted_tags(ds) if tag not in meta_tags]
    nodes.extend(_dataset_nodes(ds, "", 0, max_value_chars, body))
    return nodes


def element_at(ds: Dataset, path: str) -> DataElement:
    """Return the element of `ds` addressed by `path`, as made by :func:`tag_tree`.

    Parameters
    ----------
    ds : pydicom.Dataset
        The dataset the path was made from.
    path : str
        ``"gggggggg"`` or ``"gggggggg/<item>/gggggggg/..."``: 8 hexadecimal digits per tag
        (either case), a decimal item index after each sequence. A group 0002 tag at the
        top level is looked up in the file meta information first.

    Returns
    -------
    pydicom.DataElement
        The element. If pydicom cannot convert its value, an element of VR UN holding the
        raw bytes, so that it can still be downloaded.

    Raises
    ------
    NotFound
        The path is malformed, or names a missing element or item.
    """
    if not isinstance(path, str):
        raise _not_found(repr(path))
    parts = path.split("/")
    if len(parts) % 2 == 0:
        raise _not_found(path)
    current = ds
    elem: DataElement | None = None
    for position in range(0, len(parts), 2):
        if not _TAG_PART.fullmatch(parts[position]):
            raise _not_found(path)
        tag = Tag(int(parts[position], 16))
        container = current
        if position == 0 and tag.group == 0x0002:
            meta = _file_meta(ds)
            if meta is not None and tag in meta:
                container = meta
        if tag not in container:
            raise _not_found(path)
        elem = _element(container, tag)
        if position + 1 < len(parts):
            index_text = parts[position + 1]
            if not _INDEX_PART.fullmatch(index_text) or elem.VR != "SQ":
                raise _not_found(path)
            items = elem.value
            index = int(index_text)
            if not isinstance(items, Sequence) or index >= len(items):
                raise _not_found(path)
            item = items[index]
            if not isinstance(item, Dataset):
                raise _not_found(path)
            current = item
    assert elem is not None  # parts is never empty
    return elem


def value_bytes(elem: DataElement) -> bytes:
    """Return the value of `elem` as the bytes to offer for download.

    Parameters
    ----------
    elem : pydicom.DataElement
        Typically from :func:`element_at`.

    Returns
    -------
    bytes
        The raw value for binary VRs (OB, OW, UN...) and pixel data; for every other VR
        the displayed text, in full, encoded in UTF-8.

    Raises
    ------
    DolmenError
        `elem` is a sequence, which has no single value to download.
    """
    if elem.VR == "SQ":
        raise DolmenError(
            f"{_tag_text(elem.tag)} is a sequence: download the elements inside its items."
        )
    value = elem.value
    if value is None:
        return b""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    tobytes = getattr(value, "tobytes", None)
    if callable(tobytes) and (elem.VR in BINARY_VRS or int(elem.tag) in _PIXEL_TAGS):
        return bytes(tobytes())
    text, _ = _display(value, None)
    return text.encode("utf-8")


# -- building nodes ------------------------------------------------------------------------


def _dataset_nodes(
    ds: Dataset,
    prefix: str,
    depth: int,
    max_value_chars: int,
    tags: Iterable[BaseTag] | None = None,
) -> Iterator[TagNode]:
    """Yield the nodes of the elements of `ds` (or of its `tags`), in order."""
    for tag in _sorted_tags(ds) if tags is None else tags:
        yield _node(ds, tag, prefix, depth, max_value_chars)


def _node(ds: Dataset, tag: BaseTag, prefix: str, depth: int, max_value_chars: int) -> TagNode:
    """Return the node of element `tag` of `ds`, whatever its content."""
    path = f"{prefix}{int(tag):08X}"
    creator = _private_creator(ds, tag)
    keyword = _keyword(tag, creator)
    raw = ds.get_item(tag, keep_deferred=True)
    raw_length = _raw_length(raw)

    # A deferred binary value (dcmread(defer_size=...)) is shown without being read.
    if isinstance(raw, RawDataElement) and raw.value is None and raw_length is not None:
        vr = raw.VR or _dictionary_vr(tag)
        if _is_binary(tag, vr):
            return _leaf(tag, keyword, vr, "", raw_length, path, creator, is_bulk=True)

    try:
        elem = ds[tag]
        vr = str(elem.VR)
        if vr == "SQ":
            return _sequence_node(
                elem, tag, keyword, path, creator, raw_length, depth, max_value_chars
            )
        if _is_binary(tag, vr) or isinstance(elem.value, (bytes, bytearray, memoryview)):
            length = raw_length if raw_length is not None else _value_length(ds, elem)
            return _leaf(tag, keyword, vr, "", length, path, creator, is_bulk=True)
        text, too_long = _display(elem.value, max_value_chars)
        length = raw_length if raw_length is not None else _value_length(ds, elem)
        shown = "" if too_long else text
        return _leaf(tag, keyword, vr, shown, length, path, creator, is_bulk=too_long)
    except Exception as exc:  # noqa: BLE001 - any content problem becomes a note
        LOGGER.info("Cannot decode element %s: %s", _tag_text(tag), exc)
        return _undecodable_node(raw, tag, keyword, path, creator, exc)


def _sequence_node(
    elem: DataElement,
    tag: BaseTag,
    keyword: str,
    path: str,
    creator: str | None,
    raw_length: int | None,
    depth: int,
    max_value_chars: int,
) -> TagNode:
    """Return the node of sequence `elem`, its items converted one level deeper."""
    items: list[tuple[TagNode, ...]] = []
    if depth >= MAX_DEPTH:
        note = f"(nesting too deep: sequences nested more than {MAX_DEPTH} levels are not shown)"
        placeholder = TagNode(
            tag="",
            keyword="",
            vr="",
            value=note,
            length=0,
            path=path,
            private=False,
            private_creator=None,
            is_bulk=False,
            items=None,
        )
        items.append((placeholder,))
    else:
        for index, item in enumerate(elem.value or ()):
            children: tuple[TagNode, ...] = ()
            if isinstance(item, Dataset):
                children = tuple(
                    _dataset_nodes(item, f"{path}/{index}/", depth + 1, max_value_chars)
                )
            items.append(children)
    length = raw_length if raw_length is not None else _sequence_length(items)
    return TagNode(
        tag=_tag_text(tag),
        keyword=keyword,
        vr="SQ",
        value="",
        length=length,
        path=path,
        private=tag.is_private,
        private_creator=creator,
        is_bulk=False,
        items=tuple(items),
    )


def _undecodable_node(
    raw: DataElement | RawDataElement | None,
    tag: BaseTag,
    keyword: str,
    path: str,
    creator: str | None,
    exc: Exception,
) -> TagNode:
    """Return the node of an element whose value pydicom could not convert."""
    vr = "UN"
    length = _raw_length(raw) or 0
    if raw is not None:
        vr = str(raw.VR or _dictionary_vr(tag))
    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if len(reason) > 160:
        reason = reason[:157] + "..."
    note = f"(cannot decode: {reason})"
    return _leaf(tag, keyword, vr, note, length, path, creator, is_bulk=False)


def _leaf(
    tag: BaseTag,
    keyword: str,
    vr: str,
    value: str,
    length: int,
    path: str,
    creator: str | None,
    *,
    is_bulk: bool,
) -> TagNode:
    """Return the node of an element that is not a sequence."""
    return TagNode(
        tag=_tag_text(tag),
        keyword=keyword,
        vr=vr,
        value=value,
        length=length,
        path=path,
        private=tag.is_private,
        private_creator=creator,
        is_bulk=is_bulk,
        items=None,
    )


# -- values --------------------------------------------------------------------------------


def _display(value: Any, limit: int | None) -> tuple[str, bool]:
    """Return `value` as text and whether it is longer than `limit` characters.

    Multiple values are joined with a backslash, as in the encoded form (PS3.5 6.4). The
    join stops as soon as the limit is passed, so a huge list is not turned into text.
    """
    if value is None:
        return "", False
    if isinstance(value, (str, bytes, bytearray)) or not _is_multi(value):
        text = _one_value(value)
        return text, limit is not None and len(text) > limit
    pieces: list[str] = []
    size = 0
    for index, one in enumerate(value):
        piece = _one_value(one)
        size += len(piece) + (1 if index else 0)
        if limit is not None and size > limit:
            return "", True
        pieces.append(piece)
    return "\\".join(pieces), False


def _is_multi(value: Any) -> bool:
    """Tell whether `value` holds several values (MultiValue, list, tuple)."""
    return isinstance(value, (list, tuple, MultiValue))


def _one_value(value: Any) -> str:
    """Return one value as text: PersonName decoded, bytes as Latin-1, None as ''."""
    if value is None:
        return ""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("latin-1")
    return str(value)


def _value_length(ds: Dataset, elem: DataElement) -> int:
    """Return the encoded length of the value of `elem`, when the file's is not known.

    The value is encoded as pydicom would write it (implicit VR little endian, the
    dataset's character set), so text lengths count bytes, not characters.
    """
    value = elem.value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return len(value)
    try:
        buffer = DicomBytesIO()
        buffer.is_little_endian = True
        buffer.is_implicit_VR = True
        encodings = getattr(ds, "_character_set", None)
        write_data_element(buffer, elem, encodings)
        length: int = struct.unpack_from("<I", buffer.getvalue(), 4)[0]
        return length
    except Exception:  # noqa: BLE001 - an estimate is enough for display
        return len(_display(value, None)[0].encode("utf-8"))


def _sequence_length(items: list[tuple[TagNode, ...]]) -> int:
    """Return the length of a sequence value rebuilt from its items (explicit VR).

    Used when the file's own length is unknown (undefined length, or a dataset built in
    memory): each item counts its 8-byte header and each child element its header.
    """
    total = 0
    for children in items:
        total += 8
        for child in children:
            if not child.tag:
                continue
            long_header = child.vr in BINARY_VRS | {"SQ", "UC", "UR", "UT"}
            total += (12 if long_header else 8) + child.length
    return total


def _raw_length(raw: DataElement | RawDataElement | None) -> int | None:
    """Return the value length of an element not converted yet, None if unknown.

    The bytes actually read count, not the declared length, which a truncated file
    overstates; a deferred value (not read yet) counts its declared length.
    """
    if not isinstance(raw, RawDataElement):
        return None
    if isinstance(raw.value, (bytes, bytearray)):
        return len(raw.value)
    if raw.value is None and raw.length != _UNDEFINED_LENGTH:
        return int(raw.length)
    return None


def _is_binary(tag: BaseTag, vr: str) -> bool:
    """Tell whether an element is shown as bulk because of its tag or VR."""
    if int(tag) in _PIXEL_TAGS:
        return True
    return any(part in BINARY_VRS for part in vr.split(" or "))


# -- names and tags ------------------------------------------------------------------------


def _element(ds: Dataset, tag: BaseTag) -> DataElement:
    """Return ``ds[tag]``, or the raw bytes as UN when pydicom cannot convert them."""
    try:
        return ds[tag]
    except Exception as exc:  # noqa: BLE001 - keep the value downloadable
        LOGGER.info("Cannot decode element %s: %s", _tag_text(tag), exc)
        raw = ds.get_item(tag, keep_deferred=True)
        raw_value = getattr(raw, "value", None)
        if not isinstance(raw_value, (bytes, bytearray)):
            raw_value = b""
        elem = DataElement(tag, "UN", bytes(raw_value), already_converted=True)
        elem.VR = "UN"  # the constructor swaps UN for the dictionary VR of a public tag
        return elem


def _private_creator(ds: Dataset, tag: BaseTag) -> str | None:
    """Return the creator of the private block holding `tag` (PS3.5 7.8.1), if any."""
    if not tag.is_private or tag.element < 0x1000:
        return None
    creator_tag = Tag(tag.group, tag.element >> 8)
    if creator_tag not in ds:
        return None
    try:
        value = ds[creator_tag].value
    except Exception:  # noqa: BLE001 - an unreadable creator is no creator
        return None
    if _is_multi(value):
        value = value[0] if len(value) else ""
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode("latin-1")
    text = str(value).strip(" \x00")
    return text or None


def _keyword(tag: BaseTag, creator: str | None) -> str:
    """Return the keyword of a public tag or the private dictionary name of a private one."""
    if tag.is_private:
        if tag.is_private_creator:
            return "Private Creator"
        if creator is None:
            return ""
        try:
            return str(datadict.private_dictionary_description(tag, creator))
        except KeyError:
            return ""
    try:
        return str(datadict.keyword_for_tag(tag))
    except Exception:  # noqa: BLE001 - unknown tag
        return ""


def _dictionary_vr(tag: BaseTag) -> str:
    """Return the dictionary VR of a public tag, 'UN' when it has none."""
    try:
        return str(datadict.dictionary_VR(tag))
    except KeyError:
        return "UN"


def _file_meta(ds: Dataset) -> Dataset | None:
    """Return the file meta information of `ds`, None if it has none."""
    meta = getattr(ds, "file_meta", None)
    if isinstance(meta, Dataset) and len(meta):
        return meta
    return None


def _sorted_tags(ds: Dataset) -> list[BaseTag]:
    """Return the tags of `ds` in ascending order."""
    return sorted(ds.keys())


def _tag_text(tag: int) -> str:
    """Return a tag as ``"(gggg,eeee)"``."""
    return f"({int(tag) >> 16:04X},{int(tag) & 0xFFFF:04X})"


def _not_found(path: str) -> NotFound:
    """Return the NotFound error for a path that resolves to nothing."""
    if len(path) > _MAX_PATH_IN_MESSAGE:
        path = path[:_MAX_PATH_IN_MESSAGE] + "..."
    return NotFound(f"No element at path {path!r} in this instance.")


# -- Orthanc's JSON forms of a data set ---------------------------------------------------------

#: Longer text values are answered ``"TooLong"`` with a null value, as Orthanc does (256 characters).
ORTHANC_MAX_STRING = 256

_NUMERIC_BINARY_VRS = frozenset({"US", "SS", "UL", "SL", "FL", "FD", "UV", "SV", "AT"})


def _orthanc_value(elem: DataElement) -> tuple[str, Any]:
    """(Type, Value) of a non-sequence element in Orthanc's full form."""
    vr = str(elem.VR)
    if int(elem.tag) in _PIXEL_TAGS or vr in ("OB", "OW", "OD", "OF", "OL", "OV", "UN", "OB or OW", "US or OW"):
        return "Null", None
    value = elem.value
    if value is None or value == "":
        return "String", ""
    if vr == "AT":
        items = value if _is_multi(value) else [value]
        # DCMTK (so Orthanc) prints the first tag of a multi-valued AT only.
        text = f"{int(items[0]) >> 16:04x},{int(items[0]) & 0xFFFF:04x}" if len(items) else ""
    elif vr in ("FL", "FD"):  # DCMTK prints binary floats with 17 significant digits
        text = "\\".join(format(float(v), ".17g") for v in (value if _is_multi(value) else [value]))
    elif _is_multi(value):
        text = "\\".join(_one_value(v) for v in value)
    elif isinstance(value, (bytes, bytearray)):
        return "Null", None
    else:
        text = _one_value(value)
    if len(text) > ORTHANC_MAX_STRING:
        return "TooLong", None
    return "String", text


def orthanc_tags(ds: Dataset, form: str = "full", *, depth: int = 0) -> dict[str, Any]:
    """The data set as Orthanc's ``/tags`` answers it: ``form`` is full, simplify or short.

    * full: ``{"0010,0010": {"Name": ..., "Type": "String"|"Sequence"|"Null"|"TooLong", "Value": ...}}``
      (private elements carry ``PrivateCreator``);
    * simplify: ``{"PatientName": value}``, sequences as lists of such objects;
    * short: ``{"0010,0010": value}``.

    Binary values (pixel data, OB, OW, UN) are null, as Orthanc answers them by default.
    """
    out: dict[str, Any] = {}
    for tag in _sorted_tags(ds):
        if depth > _MAX_DEPTH_FOR_JSON:
            break
        elem = _element(ds, tag)
        key = f"{tag.group:04x},{tag.element:04x}"
        creator = _private_creator(ds, tag)
        if int(tag) == 0xFFFCFFFC:  # Data Set Trailing Padding: not data
            continue
        name = _keyword(tag, creator)
        if tag.is_private:  # DCMTK's private dictionary writes its names as keywords
            name = "PrivateCreator" if tag.is_private_creator else (
                "".join(w[:1].upper() + w[1:] for w in re.split(r"[^0-9A-Za-z]+", name)) or "Unknown Tag & Data")
        if str(elem.VR) == "SQ":
            items = [orthanc_tags(item, form, depth=depth + 1) for item in (elem.value or [])]
            kind, value = "Sequence", items
        else:
            kind, value = _orthanc_value(elem)
        if form == "simplify":
            out[name if name != "Unknown Tag & Data" else key] = value
        elif form == "short":
            out[key] = value
        else:
            entry: dict[str, Any] = {"Name": name}
            if creator is not None:
                entry["PrivateCreator"] = creator
            entry["Type"] = kind
            entry["Value"] = value
            out[key] = entry
    return out


_MAX_DEPTH_FOR_JSON = 32
