"""Tests of dicomnode.tags: the tag tree shown on the instance page, on real files."""

from __future__ import annotations

import io
import struct
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_charset_files
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian
from pydicom.uid import SecondaryCaptureImageStorage
from pydicom.uid import generate_uid

from dicomnode.errors import DolmenError
from dicomnode.errors import NotFound
from dicomnode.tags import MAX_DEPTH
from dicomnode.tags import TagNode
from dicomnode.tags import element_at
from dicomnode.tags import tag_tree
from dicomnode.tags import value_bytes


def read(name: str, **kwargs: object) -> pydicom.FileDataset:
    """Read one of pydicom's test files."""
    return pydicom.dcmread(get_testdata_file(name), force=True, **kwargs)  # type: ignore[arg-type]


def read_charset(name: str) -> pydicom.FileDataset:
    """Read one of pydicom's character set test files."""
    return pydicom.dcmread(get_charset_files(name)[0])


def walk(nodes: list[TagNode] | tuple[TagNode, ...]) -> Iterator[TagNode]:
    """Yield every node of a tree, depth first."""
    for node in nodes:
        yield node
        for item in node.items or ():
            yield from walk(item)


def by_path(ds: Dataset, **kwargs: object) -> dict[str, TagNode]:
    """Return the nodes of the tree of `ds` by path."""
    return {node.path: node for node in walk(tag_tree(ds, **kwargs))}  # type: ignore[arg-type]


def save_and_read(ds: Dataset, path: Path) -> pydicom.FileDataset:
    """Write `ds` as a DICOM file (explicit VR little endian) and read it back."""
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
    return pydicom.dcmread(path)


def explicit_le(*elements: tuple[int, str, bytes]) -> bytes:
    """Encode (tag, VR, value) triples as an explicit VR little endian dataset."""
    out = b""
    for tag, vr, value in elements:
        group, element = tag >> 16, tag & 0xFFFF
        if vr in {"OB", "OW", "SQ", "UN", "UT", "UC", "UR", "OF", "OD", "OL", "OV"}:
            out += struct.pack("<HH2sHI", group, element, vr.encode(), 0, len(value)) + value
        else:
            out += struct.pack("<HH2sH", group, element, vr.encode(), len(value)) + value
    return out


# -- structure and paths ---------------------------------------------------------------------


def test_nested_sequences_have_paths_that_resolve() -> None:
    ds = read("rtplan.dcm")
    nodes = by_path(ds)

    path = "300A00B0/0/300A0111/0/300A011A/1/300A011C"
    leaf = nodes[path]
    assert leaf.tag == "(300A,011C)"
    assert leaf.keyword == "LeafJawPositions"
    assert leaf.vr == "DS"
    assert leaf.value == "-100.00000000000\\100.000000000000"
    assert element_at(ds, path).tag == 0x300A011C

    beams = nodes["300A00B0"]
    assert beams.vr == "SQ" and beams.value == "" and not beams.is_bulk
    assert beams.items is not None and len(beams.items) == 1
    devices = nodes["300A00B0/0/300A00B6"]
    assert devices.items is not None
    assert [child.value for item in devices.items for child in item if child.vr == "CS"] == [
        "X",
        "Y",
    ]


@pytest.mark.parametrize(
    "name",
    ["rtplan.dcm", "CT_small.dcm", "nested_priv_SQ.dcm", "UN_sequence.dcm", "rtstruct.dcm"],
)
def test_every_path_resolves_to_its_own_element(name: str) -> None:
    ds = read(name)
    nodes = list(walk(tag_tree(ds)))
    assert nodes
    for node in nodes:
        elem = element_at(ds, node.path)
        assert f"({elem.tag.group:04X},{elem.tag.element:04X})" == node.tag
        assert node.vr == elem.VR


def test_file_meta_comes_first_and_can_be_left_out() -> None:
    ds = read("CT_small.dcm")
    nodes = tag_tree(ds)
    groups = [node.tag[1:5] for node in nodes]
    assert groups[0] == "0002"
    assert groups == sorted(groups, key=lambda group: group != "0002")
    assert nodes[0].path == "00020000"
    assert element_at(ds, "00020010").value == ds.file_meta.TransferSyntaxUID

    without = tag_tree(ds, include_meta=False)
    assert all(not node.tag.startswith("(0002,") for node in without)
    assert [node.tag for node in without] == [node.tag for node in nodes if node.tag[1:5] != "0002"]


def test_multiple_values_are_joined_with_backslash() -> None:
    nodes = by_path(read("CT_small.dcm"))
    assert nodes["00080008"].value == "ORIGINAL\\PRIMARY\\AXIAL"
    assert nodes["00431012"].value == "14\\2\\3"  # private SS, VM 3


def test_value_length_counts_bytes_not_characters() -> None:
    nodes = by_path(read_charset("chrX1.dcm"))
    name = nodes["00100010"]
    assert name.value == "Wang^XiaoDong=王^小東"
    # As in the file: "Wang^XiaoDong=王^小東=" in UTF-8 (25 bytes) padded to even length.
    assert name.length == 26
    assert name.length > len(name.value)


# -- private tags ----------------------------------------------------------------------------


def test_private_elements_carry_their_creator_and_dictionary_name() -> None:
    nodes = by_path(read("CT_small.dcm"))

    creator = nodes["00090010"]
    assert creator.private is True
    assert creator.private_creator is None
    assert creator.keyword == "Private Creator"
    assert creator.value == "GEMS_IDEN_01"

    element = nodes["00091001"]
    assert element.private is True
    assert element.private_creator == "GEMS_IDEN_01"
    assert element.keyword == "Full fidelity"
    assert element.value == "GE_GENESIS_FF"

    assert nodes["00431010"].private_creator == "GEMS_PARM_01"
    assert nodes["00431028"].is_bulk  # private OB

    public = nodes["00100010"]
    assert public.private is False and public.private_creator is None


def test_private_element_unknown_to_the_dictionary_and_orphan() -> None:
    nodes = by_path(read("priv_SQ.dcm"))
    unknown = nodes["3F031001"]
    assert unknown.private_creator == "aaabbbccc MEDICAL SYSTEMS"
    assert unknown.keyword == ""
    assert unknown.vr == "UN" and unknown.is_bulk and unknown.length == 166

    # (4453,100C) has no (4453,0010) creator in the file: no creator, but still shown.
    ds = read("UN_sequence.dcm")
    orphan = by_path(ds)["4453100C"]
    assert orphan.private and orphan.private_creator is None and orphan.keyword == ""
    assert orphan.vr == "SQ"
    path = "4453100C/0/00081115/0/00081199/0/00081155"
    assert element_at(ds, path).value.startswith("1.2.840.113619.2.327.3")


# -- bulk ------------------------------------------------------------------------------------


def test_pixel_data_is_bulk_and_downloadable() -> None:
    ds = read("CT_small.dcm")
    pixels = by_path(ds)["7FE00010"]
    assert pixels.is_bulk
    assert pixels.value == ""
    assert pixels.length == 128 * 128 * 2
    assert value_bytes(element_at(ds, "7FE00010")) == ds.PixelData


def test_encapsulated_pixel_data_is_bulk() -> None:
    ds = read("JPEG2000.dcm")
    pixels = by_path(ds)["7FE00010"]
    assert pixels.is_bulk and pixels.value == ""
    assert pixels.length == len(ds.PixelData)


def test_deferred_pixel_data_is_not_read_for_the_tree() -> None:
    ds = read("CT_small.dcm", defer_size=1024)
    pixels = by_path(ds)["7FE00010"]
    assert pixels.is_bulk and pixels.length == 32768
    assert ds.get_item(0x7FE00010, keep_deferred=True).value is None  # still on disk
    assert len(value_bytes(element_at(ds, "7FE00010"))) == 32768


def test_long_text_is_bulk_and_downloaded_in_full(tmp_path: Path) -> None:
    text = "Clinical history: " + "é" * 600
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = "Doe^John"
    ds.AdditionalPatientHistory = text
    ds = save_and_read(ds, tmp_path / "long.dcm")

    node = by_path(ds)["001021B0"]
    assert node.is_bulk
    assert node.value == ""
    assert node.length == len(text.encode("utf-8"))
    assert value_bytes(element_at(ds, node.path)).decode("utf-8") == text

    # The same value under a larger limit is shown.
    assert by_path(ds, max_value_chars=1000)["001021B0"].value == text


def test_long_multi_valued_numbers_are_bulk() -> None:
    ds = read("rtstruct.dcm")
    tree = tag_tree(ds, max_value_chars=40)
    contours = [node for node in walk(tree) if node.keyword == "ContourData"]
    assert any(node.is_bulk for node in contours)
    assert not all(node.is_bulk for node in contours)
    for node in contours:
        elem = element_at(ds, node.path)
        text = value_bytes(elem).decode("utf-8")
        assert text.count("\\") == len(elem.value) - 1
        assert node.is_bulk == (len(text) > 40)
        assert node.value == ("" if node.is_bulk else text)


# -- character sets --------------------------------------------------------------------------

CHARSET_NAMES = [
    ("chrFren.dcm", "00100010", "Buc^Jérôme"),
    ("chrFrenMulti.dcm", "00101001", "Buc^Jérôme\\Buc^Jérôme"),
    ("chrGerm.dcm", "00100010", "Äneas^Rüdiger"),
    ("chrGreek.dcm", "00100010", "Διονυσιος"),
    ("chrRuss.dcm", "00100010", "Люкceмбypг"),
    ("chrArab.dcm", "00100010", "قباني^لنزار"),
    ("chrHbrw.dcm", "00100010", "שרון^דבורה"),
    ("chrH31.dcm", "00100010", "Yamada^Tarou=山田^太郎=やまだ^たろう"),
    ("chrH32.dcm", "00100010", "ﾔﾏﾀﾞ^ﾀﾛｳ=山田^太郎=やまだ^たろう"),
    ("chrJapMulti.dcm", "00100010", "やまだ^たろう"),
    ("chrI2.dcm", "00100010", "Hong^Gildong=洪^吉洞=홍^길동"),
    ("chrKoreanMulti.dcm", "00100010", "김희중"),
    ("chrX1.dcm", "00100010", "Wang^XiaoDong=王^小東"),
    ("chrX2.dcm", "00100010", "Wang^XiaoDong=王^小东"),
    # The sequence item declares its own character set, different from the dataset's.
    ("chrSQEncoding.dcm", "00321064/0/00100010", "ﾔﾏﾀﾞ^ﾀﾛｳ=山田^太郎=やまだ^たろう"),
    # The item inherits the dataset's character set.
    ("chrSQEncoding1.dcm", "00321064/0/00100010", "ﾔﾏﾀﾞ^ﾀﾛｳ=山田^太郎=やまだ^たろう"),
]


@pytest.mark.parametrize(("name", "path", "expected"), CHARSET_NAMES)
def test_names_are_decoded_with_the_specific_character_set(
    name: str, path: str, expected: str
) -> None:
    ds = read_charset(name)
    node = by_path(ds)[path]
    assert node.vr == "PN"
    assert node.value == expected
    assert value_bytes(element_at(ds, path)) == expected.encode("utf-8")


# -- odd content -----------------------------------------------------------------------------


def test_undecodable_element_is_shown_with_a_note() -> None:
    # (0028,0010) Rows as US with 3 bytes: pydicom refuses to convert it.
    data = explicit_le(
        (0x00080005, "CS", b"ISO_IR 100"),
        (0x00100010, "PN", b"Buc^J\xe9r\xf4me"),
        (0x00280010, "US", b"\x01\x02\x03"),
        (0x00280011, "US", b"\x00\x02"),
    )
    ds = pydicom.dcmread(io.BytesIO(data), force=True)
    nodes = by_path(ds)

    rows = nodes["00280010"]
    assert rows.value.startswith("(cannot decode: ")
    assert rows.length == 3
    assert rows.vr == "US"
    assert rows.keyword == "Rows"
    assert not rows.is_bulk
    assert nodes["00100010"].value == "Buc^Jérôme"
    assert nodes["00280011"].value == "512"

    # Still downloadable, as raw bytes.
    elem = element_at(ds, "00280010")
    assert elem.VR == "UN"
    assert value_bytes(elem) == b"\x01\x02\x03"


def _all_test_files() -> list[str]:
    names = sorted(Path(str(get_testdata_file("CT_small.dcm"))).parent.glob("*.dcm"))
    names += sorted(Path(path) for path in get_charset_files("*.dcm"))
    return [str(path) for path in names]


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("path", _all_test_files(), ids=lambda path: Path(path).name)
def test_never_raises_on_pydicom_test_files(path: str) -> None:
    try:
        ds = pydicom.dcmread(path, force=True)
    except Exception:  # noqa: BLE001 - not our concern if pydicom cannot read it at all
        pytest.skip("pydicom cannot read this file")
    nodes = list(walk(tag_tree(ds)))
    for node in nodes:
        element_at(ds, node.path)
    # A second pass, on elements converted by the first, gives the same tree shape.
    assert [node.path for node in walk(tag_tree(ds))] == [node.path for node in nodes]


def _nested(depth: int) -> Dataset:
    """Return a dataset with `depth` levels of (0040,A730) Content Sequence."""
    ds = Dataset()
    ds.PatientName = "Deep^Nest"
    current = ds
    for level in range(depth):
        item = Dataset()
        item.TextValue = f"level {level + 1}"
        current.ContentSequence = Sequence([item])
        current = item
    return ds


def test_sane_nesting_is_shown_in_full() -> None:
    ds = _nested(MAX_DEPTH)
    nodes = list(walk(tag_tree(ds)))
    texts = [node for node in nodes if node.keyword == "TextValue"]
    assert [node.value for node in texts] == [f"level {n}" for n in range(1, MAX_DEPTH + 1)]
    deepest = texts[-1]
    assert deepest.path.count("/") == 2 * MAX_DEPTH
    assert element_at(ds, deepest.path).value == f"level {MAX_DEPTH}"
    assert not any("too deep" in node.value for node in nodes)


def test_pathological_nesting_ends_in_a_placeholder(tmp_path: Path) -> None:
    ds = _nested(MAX_DEPTH + 36)
    ds = save_and_read(ds, tmp_path / "deep.dcm")

    nodes = list(walk(tag_tree(ds)))
    placeholders = [node for node in nodes if "too deep" in node.value]
    assert len(placeholders) == 1
    placeholder = placeholders[0]
    assert placeholder.tag == "" and placeholder.items is None and not placeholder.is_bulk
    assert max(node.path.count("/") for node in nodes) == 2 * MAX_DEPTH
    # The placeholder points at the sequence it replaces the content of.
    assert element_at(ds, placeholder.path).VR == "SQ"
    # Deeper elements stay addressable.
    deeper = "/".join(["0040A730", "0"] * (MAX_DEPTH + 36)) + "/0040A160"
    assert element_at(ds, deeper).value == f"level {MAX_DEPTH + 36}"


def test_dataset_built_in_memory() -> None:
    ds = Dataset()
    ds.PatientName = "Doe^Jane"
    ds.Rows = 512
    ds.ReferencedSeriesSequence = Sequence([Dataset(), Dataset()])
    ds.ReferencedSeriesSequence[1].SeriesInstanceUID = "1.2.3.4"
    nodes = by_path(ds)
    assert nodes["00100010"].value == "Doe^Jane" and nodes["00100010"].length == 8
    assert nodes["00280010"].value == "512" and nodes["00280010"].length == 2
    sequence = nodes["00081115"]
    assert sequence.items is not None and len(sequence.items) == 2
    assert sequence.items[0] == ()
    assert nodes["00081115/1/0020000E"].value == "1.2.3.4"


# -- paths that lead nowhere -----------------------------------------------------------------

BAD_PATHS = [
    "",
    "/",
    "0010",
    "00100010/",
    "/00100010",
    "0010001",
    "001000100",
    "zzzzzzzz",
    "0x100010",
    " 00100010",
    "00100011",  # absent
    "00100010/0",  # ends with an index
    "00100010/0/00100020",  # not a sequence
    "00101002/2/00100020",  # item out of range
    "00101002/-1/00100020",
    "00101002/+1/00100020",
    "00101002/01/00100020",
    "00101002/1_0/00100020",
    "00101002/\u0661/00100020",  # ARABIC-INDIC DIGIT ONE
    "00101002/99999999999999999999/00100020",
    "00101002/0/00100030",  # absent inside the item
    "00101002//00100020",
    "00101002/0/00100020/0/00100020",
    "0002001",
    "00020099",  # absent from the file meta
    "/".join(["00101002", "0"] * 500) + "/00100020",
    "x" * 10_000,
]


@pytest.mark.parametrize("path", BAD_PATHS)
def test_bad_paths_raise_not_found(path: str) -> None:
    ds = read("CT_small.dcm")
    with pytest.raises(NotFound, match="No element at path"):
        element_at(ds, path)


def test_not_found_message_is_bounded() -> None:
    with pytest.raises(NotFound) as caught:
        element_at(read("CT_small.dcm"), "0" * 10_000)
    assert len(str(caught.value)) < 200


def test_paths_accept_lower_case_hex() -> None:
    ds = read("CT_small.dcm")
    assert element_at(ds, "7fe00010").tag == 0x7FE00010


def test_value_bytes_of_a_sequence_is_refused() -> None:
    ds = read("CT_small.dcm")
    with pytest.raises(DolmenError, match="sequence"):
        value_bytes(element_at(ds, "00101002"))


def test_value_bytes_of_numbers_is_their_text() -> None:
    ds = read("CT_small.dcm")
    assert value_bytes(element_at(ds, "00280010")) == b"128"
    assert value_bytes(element_at(ds, "00431012")) == b"14\\2\\3"
    assert value_bytes(element_at(ds, "00020001")) == b"\x00\x01"
