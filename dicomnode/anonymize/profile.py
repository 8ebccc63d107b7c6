"""Anonymize and modify one dataset: PS3.15 Annex E's Basic Profile with its options, and
Orthanc's ``Replace`` / ``Remove`` / ``Keep``.

A :class:`Plan` says what to do (parsed from an Orthanc request body by :func:`plan_from_body`);
:func:`apply` does it to a pydicom dataset, in place, with a :class:`Session` that keeps what
must stay consistent across the datasets of one operation (new UIDs, pseudonyms), and answers
every element it changed (:class:`Diff`) so that a dry run can show them.

Actions of Table E.1-1 (:mod:`dicomnode.anonymize.e11`, generated from the published tables):
``X`` remove, ``Z`` empty, ``D`` a dummy value of the VR, ``U`` a new UID (the same new UID for
the same old one everywhere in the operation, references in sequences included), ``K`` keep,
``C`` clean (free text: the patient's names and identifiers struck out); compound ones
(``X/Z``, ``X/D``, ``X/Z/D``) remove, ``Z/D`` empties (the IOD's Type is not known here), and a
UID among them is replaced rather than removed.
``X/Z/U*`` sequences (Referenced / Source Image) keep their items with their UIDs mapped.
"""
from __future__ import annotations

import hashlib
import hmac
import re
import uuid
from collections.abc import Iterable
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field
from typing import Any

from pydicom.datadict import dictionary_VR
from pydicom.datadict import keyword_for_tag
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag
from pydicom.tag import Tag

from dicomnode import __version__
from dicomnode.anonymize import e11
from dicomnode.errors import DolmenError

#: The options of Table E.1-1, as a request names them, and their column in :mod:`e11`.
OPTIONS = {
    "RetainSafePrivate": "safe_private", "RetainUIDs": "uids", "RetainDeviceIdentity": "device",
    "RetainInstitutionIdentity": "institution", "RetainPatientCharacteristics": "patient_characteristics",
    "RetainLongitudinalTemporalInformation": "longitudinal",
    "RetainLongitudinalTemporalInformationModifiedDates": "longitudinal_modified",
    "CleanDescriptors": "clean_descriptors", "CleanStructuredContent": "clean_structured",
    "CleanGraphics": "clean_graphics",
}
#: CID 7050 (De-identification Method): the profile and each option's code (DCM).
CODES = {
    "basic": ("113100", "Basic Application Confidentiality Profile"),
    "clean_graphics": ("113103", "Clean Graphics Option"),
    "clean_structured": ("113104", "Clean Structured Content Option"),
    "clean_descriptors": ("113105", "Clean Descriptors Option"),
    "longitudinal": ("113106", "Retain Longitudinal Temporal Information Full Dates Option"),
    "longitudinal_modified": ("113107", "Retain Longitudinal Temporal Information Modified Dates Option"),
    "patient_characteristics": ("113108", "Retain Patient Characteristics Option"),
    "device": ("113109", "Retain Device Identity Option"),
    "uids": ("113110", "Retain UIDs Option"),
    "safe_private": ("113111", "Retain Safe Private Option"),
    "institution": ("113112", "Retain Institution Identity Option"),
}

#: Keys of Orthanc's ``/modify`` and ``/anonymize`` bodies, and Dolmen's own (last line).
BODY_KEYS = {"Replace", "Remove", "Keep", "KeepPrivateTags", "Force", "KeepSource", "Asynchronous",
             "Synchronous", "Permissive", "DicomVersion", "Priority", "Transcode", "PrivateCreator",
             "RemovePrivateTags", "KeepLabels",
             "Options", "Profile", "DryRun"}
ORTHANC_DICOM_VERSIONS = {"2008", "2017c", "2021b", "2023b"}

PATIENT_ID, PATIENT_NAME = 0x00100020, 0x00100010
STUDY_UID, SERIES_UID, SOP_UID = 0x0020000D, 0x0020000E, 0x00080018
#: The UIDs that say which resource an instance belongs to (and the patient's key).
IDENTITY = {PATIENT_ID: "Patient", STUDY_UID: "Study", SERIES_UID: "Series", SOP_UID: "Instance"}
LEVELS = ("Patient", "Study", "Series", "Instance")

# Values of the D action by VR (a "non-zero length dummy value consistent with the VR").
_DUMMY = {"PN": "ANONYMIZED", "LO": "ANONYMIZED", "SH": "ANONYMIZED", "LT": "ANONYMIZED",
          "ST": "ANONYMIZED", "UT": "ANONYMIZED", "UC": "ANONYMIZED", "CS": "ANONYMIZED",
          "AE": "ANONYMIZED", "DA": "19000101", "TM": "000000.00", "DT": "19000101000000.00",
          "AS": "000Y", "IS": "0", "DS": "0", "UR": "urn:dolmen:anonymized"}
_NUMERIC = {"US", "SS", "UL", "SL", "FL", "FD", "UV", "SV"}


class PlanError(DolmenError):
    """A body that cannot be carried out: the message names the field (400, Orthanc's 8)."""

    code = "bad_request"
    http_status = 400
    orthanc_status = 8


@dataclass
class Diff:
    """One element an operation changes: where, its name, the value before and after (text)."""

    path: str
    name: str
    before: str | None
    after: str | None
    action: str

    def as_json(self) -> dict[str, Any]:
        return {"Tag": self.path, "Name": self.name, "Before": self.before, "After": self.after,
                "Action": self.action}


@dataclass
class Plan:
    """What one ``/anonymize`` or ``/modify`` does."""

    kind: str  # "anonymize" | "modify"
    level: str  # Patient | Study | Series | Instance (the resource's)
    replace: dict[int, Any] = field(default_factory=dict)
    remove: set[int] = field(default_factory=set)
    keep: set[int] = field(default_factory=set)
    keep_private: bool = False
    options: set[str] = field(default_factory=set)  # OPTIONS values
    safe_private_creators: set[str] = field(default_factory=set)
    force: bool = False
    keep_source: bool = True
    asynchronous: bool = False
    dry_run: bool = False
    profile: str = ""
    secret: bytes = b""

    def method(self) -> str | list[str]:
        """DeidentificationMethod (LO, 1-n): the profile (Orthanc writes "Orthanc 1.10.1 - PS
        3.15-2021b Table E.1-1 Basic Profile"), then each option by name."""
        first = f"Dolmen {__version__} - PS 3.15-{e11.EDITION} Table E.1-1 Basic Profile"[:64]
        names = sorted(k for k, v in OPTIONS.items() if v in self.options)
        return [first, *names] if names else first


def parse_tag(text: Any, where: str) -> int:
    """A keyword (``PatientName``) or ``gggg,eeee`` / ``ggggeeee``; else :class:`PlanError`."""
    if isinstance(text, str):
        value = text.strip()
        match = re.fullmatch(r"\(?([0-9A-Fa-f]{4}),?([0-9A-Fa-f]{4})\)?", value)
        if match:
            return int(match.group(1) + match.group(2), 16)
        found = tag_for_keyword(value)
        if found is not None:
            return int(found)
        if "[" in value or "." in value:
            raise PlanError(f"{where}: {value[:80]!r} is a path into a sequence; Dolmen takes top-level "
                            "tags only (a keyword like PatientName, or gggg,eeee)")
    raise PlanError(f"{where}: {str(text)[:80]!r} is not a DICOM tag (a keyword like PatientName, or gggg,eeee)")


def _tag_list(body: dict[str, Any], key: str) -> set[int]:
    value = body.get(key, [])
    if not isinstance(value, list):
        raise PlanError(f"{key} must be a list of tags")
    return {parse_tag(t, key) for t in value}


def plan_from_body(body: Any, kind: str, level: str, *, profiles: Mapping[str, Mapping[str, Any]] | None = None,
                   secret: bytes = b"") -> Plan:
    """Check an Orthanc body and turn it into a :class:`Plan`.

    ``profiles`` are the ``[anonymize.profiles.NAME]`` tables of the configuration; a body's
    ``Profile`` starts from one (its keys are a body's), the body's own keys coming on top.
    """
    if body in (None, ""):
        body = {}
    if not isinstance(body, dict):
        raise PlanError("The body must be a JSON object (Replace, Remove, Keep, ...)")
    profile_name = body.get("Profile", "")
    if profile_name:
        if not isinstance(profile_name, str) or profile_name not in (profiles or {}):
            known = ", ".join(sorted(profiles or {})) or "none are configured"
            raise PlanError(f"Profile {str(profile_name)[:40]!r} is not in [anonymize.profiles] ({known})")
        base = dict((profiles or {})[profile_name])
        for key in ("Replace",):
            if key in base and key in body:
                body = {**body, key: {**base[key], **body[key]}}
        body = {**base, **body}
    unknown = sorted(set(body) - BODY_KEYS)
    if unknown:
        raise PlanError(f"Unknown field(s): {', '.join(unknown)[:200]}; known: {', '.join(sorted(BODY_KEYS))}")
    for key in ("KeepPrivateTags", "Force", "KeepSource", "Asynchronous", "Synchronous", "Permissive",
                "DryRun", "RemovePrivateTags", "KeepLabels"):
        if key in body and not isinstance(body[key], bool):
            raise PlanError(f"{key} must be true or false")
    if body.get("Transcode"):
        raise PlanError("Transcode is not supported: Dolmen keeps each file's transfer syntax")
    version = body.get("DicomVersion")
    if version is not None and (not isinstance(version, str) or version not in ORTHANC_DICOM_VERSIONS | {e11.EDITION}):
        raise PlanError(f"DicomVersion {str(version)[:20]!r} is not known: Dolmen applies {e11.EDITION} "
                        f"(and accepts {', '.join(sorted(ORTHANC_DICOM_VERSIONS))} for Orthanc's scripts)")
    replace_raw = body.get("Replace", {})
    if not isinstance(replace_raw, dict):
        raise PlanError("Replace must be a JSON object of {tag: value}")
    replace: dict[int, Any] = {}
    for key, value in replace_raw.items():
        tag = parse_tag(key, "Replace")
        if value is not None and not isinstance(value, (str, int, float, list)):
            raise PlanError(f"Replace {key}: the value must be a string, a number or a list of them")
        replace[tag] = value
    options: set[str] = set()
    raw_options = body.get("Options", [])
    if not isinstance(raw_options, list):
        raise PlanError("Options must be a list of option names")
    for name in raw_options:
        if name not in OPTIONS:
            raise PlanError(f"Unknown option {str(name)[:60]!r}; the options of PS3.15 Table E.1-1 are: "
                            + ", ".join(OPTIONS))
        options.add(OPTIONS[name])
    if kind == "modify" and options:
        raise PlanError("Options belong to /anonymize; /modify takes Replace, Remove and Keep")
    plan = Plan(kind=kind, level=level, replace=replace, remove=_tag_list(body, "Remove"),
                keep=_tag_list(body, "Keep"), keep_private=bool(body.get("KeepPrivateTags", False)),
                options=options, force=bool(body.get("Force", False)),
                keep_source=bool(body.get("KeepSource", True)),
                asynchronous=bool(body.get("Asynchronous", False)) or body.get("Synchronous") is False,
                dry_run=bool(body.get("DryRun", False)), profile=profile_name or "", secret=secret)
    both = (plan.remove & (plan.keep | set(plan.replace))) | (plan.keep & set(plan.replace))
    if both:
        raise PlanError(f"{_name(min(both))} is in more than one of Replace, Remove and Keep")
    _check_identity(plan)
    return plan


def plan_for(settings: Any, body: Any, kind: str, level: str) -> Plan:
    """:func:`plan_from_body` with the configuration's profiles, secret and safe private creators."""
    plan = plan_from_body(body, kind, level, profiles=settings.anonymize_profiles,
                          secret=settings["anonymize.secret"].encode())
    plan.safe_private_creators = set(settings["anonymize.safe_private_creators"])
    return plan


def _name(tag: int) -> str:
    return keyword_for_tag(tag) or f"{tag >> 16:04X},{tag & 0xFFFF:04X}"


def _check_identity(plan: Plan) -> None:
    """Orthanc's rules for the identifying tags (checked against Orthanc 1.10 in the tests)."""
    for tag, wanted in IDENTITY.items():
        for verb, tags in (("replaced", set(plan.replace)), ("kept", plan.keep), ("removed", plan.remove)):
            if tag not in tags:
                continue
            if verb == "removed":
                raise PlanError(f"{_name(tag)} cannot be removed: it names the {wanted} the instance belongs to")
            if not plan.force and not (plan.kind == "modify" and tag == PATIENT_ID and plan.level == "Patient"
                                       and verb == "replaced"):
                raise PlanError(f'Marking tag "{_name(tag)}" as to be {verb} requires the "Force" option '
                                "to be set to true")
    if plan.kind == "modify" and plan.level == "Patient" and PATIENT_ID not in plan.replace:
        raise PlanError("When modifying a patient, her PatientID is required to be modified")


class Session:
    """What stays the same across the datasets of one operation: new UIDs and pseudonyms.

    With a secret (``[anonymize] secret``), they are derived from it: the same patient or UID
    anonymized twice, at this site or another with the same secret, gets the same result
    (longitudinal cohorts); without one they are random, and new for each operation.
    """

    def __init__(self, plan: Plan, *, numbered_from: int = 0) -> None:
        self.plan = plan
        self.uids: dict[str, str] = {}
        self.patients: dict[str, tuple[str, str]] = {}
        self.count = numbered_from  # Orthanc names them Anonymized1, Anonymized2, ... across operations

    def _digest(self, kind: str, value: str) -> bytes:
        return hmac.new(self.plan.secret, f"{kind}\0{value}".encode(), hashlib.sha256).digest()

    def uid(self, old: str) -> str:
        old = old.strip().rstrip("\0")
        if not old:
            return old
        if old not in self.uids:
            number = (int.from_bytes(self._digest("uid", old)[:16], "big") if self.plan.secret
                      else uuid.uuid4().int)
            self.uids[old] = f"2.25.{number}"
        return self.uids[old]

    def pseudonym(self, patient_id: str, patient_name: str) -> tuple[str, str]:
        """(new PatientID, new PatientName) for a patient of the source."""
        key = patient_id or patient_name
        if key not in self.patients:
            if self.plan.secret:
                code = self._digest("patient", key).hex()[:16].upper()
                self.patients[key] = (f"ANON-{code}", f"Anonymized^{code}")
            else:
                self.count += 1
                self.patients[key] = (str(uuid.uuid4()), f"Anonymized{self.count}")
        return self.patients[key]


def _text(element: DataElement) -> str | None:
    if element.VR == "SQ":
        return f"{len(element.value)} item(s)"
    if element.VR in ("OB", "OW", "OF", "OD", "OL", "OV", "UN"):
        return f"{len(element.value or b'')} bytes"
    value = element.value
    if value is None or value == "":
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    return str(value)


def _path(prefix: str, tag: BaseTag) -> str:
    return f"{prefix}{tag.group:04X},{tag.element:04X}"


def _table_action(tag: int, options: set[str]) -> str | None:
    entry = e11.TABLE.get(tag)
    if entry is None:
        for value, mask, basic, opts in e11.MASKED:
            if tag & mask == value:
                entry = (basic, opts)
                break
    if entry is None:
        return None
    basic, opts = entry
    chosen = [opts[o] for o in options if o in opts]
    if "K" in chosen:
        return "K"
    if "C" in chosen:
        return "C"
    return basic


def _dummy(element: DataElement) -> Any:
    if element.VR in _DUMMY:
        return _DUMMY[element.VR]
    if element.VR in _NUMERIC:
        return 0
    if element.VR == "AT":
        return 0
    return b"" if element.VR in ("OB", "OW", "OF", "OD", "OL", "OV", "UN") else ""


def _set(ds: Dataset, tag: int, value: Any, vr: str | None = None) -> None:
    if tag in ds:
        ds[tag].value = value
    else:
        ds.add_new(tag, vr or dictionary_VR(tag), value)


def apply(ds: Dataset, session: Session) -> list[Diff]:
    """Carry out ``session.plan`` on ``ds`` (in place, file meta included); the changes made."""
    plan = session.plan
    diffs: list[Diff] = []
    identifiers = _identifiers(ds)
    if plan.kind == "anonymize":
        _anonymize(ds, session, diffs, "", identifiers, top=True)
        new_id, new_name = session.pseudonym(str(ds.get("PatientID", "") or identifiers.get("id", "")),
                                             str(identifiers.get("name", "")))
        for tag, value in ((PATIENT_ID, new_id), (PATIENT_NAME, new_name)):
            if tag not in plan.keep and tag not in plan.replace:
                _record(diffs, ds, tag, value, "D")
                _set(ds, tag, value)
        _record(diffs, ds, 0x00120062, "YES", "set")
        _set(ds, 0x00120062, "YES", "CS")
        method = plan.method()
        _record(diffs, ds, 0x00120063, "\\".join(method) if isinstance(method, list) else method, "set")
        _set(ds, 0x00120063, method, "LO")
        codes = Sequence()
        for key in ["basic", *sorted(plan.options)]:
            item = Dataset()
            item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = CODES[key][0], "DCM", CODES[key][1]
            codes.append(item)
        _set(ds, 0x00120064, codes, "SQ")
        diffs.append(Diff("0012,0064", "DeidentificationMethodCodeSequence", None, f"{len(codes)} item(s)", "set"))
        longitudinal = "UNMODIFIED" if "longitudinal" in plan.options else (
            "MODIFIED" if "longitudinal_modified" in plan.options else "REMOVED")
        _set(ds, 0x00280303, longitudinal, "CS")
    else:
        _modify_uids(ds, session, diffs)
    for tag in sorted(plan.remove):
        if tag in ds:
            diffs.append(Diff(_path("", Tag(tag)), _name(tag), _text(ds[tag]), None, "X"))
            del ds[tag]
    for tag, raw in plan.replace.items():
        replacement: Any = [str(v) for v in raw] if isinstance(raw, list) else (None if raw is None else str(raw))
        _record(diffs, ds, tag, "\\".join(replacement) if isinstance(replacement, list) else replacement, "replace")
        _set(ds, tag, replacement)
    # The file's meta header follows the dataset.
    meta = getattr(ds, "file_meta", None)
    if meta is not None and "SOPInstanceUID" in ds:
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return diffs


def _record(diffs: list[Diff], ds: Dataset, tag: int, after: Any, action: str) -> None:
    before = _text(ds[tag]) if tag in ds else None
    after_text = None if after is None else str(after)
    if before != after_text:
        diffs.append(Diff(_path("", Tag(tag)), _name(tag), before, after_text, action))


def _identifiers(ds: Dataset) -> dict[str, str]:
    """The patient's identifying values, for cleaning them out of free text (``C``)."""
    out = {"id": str(ds.get("PatientID", "") or ""), "name": str(ds.get("PatientName", "") or "")}
    for keyword in ("OtherPatientIDs", "PatientBirthDate", "AccessionNumber", "MedicalRecordLocator"):
        value = ds.get(keyword)
        if value:
            out[keyword] = str(value)
    return out


def _clean_text(text: str, identifiers: dict[str, str]) -> str:
    words = set()
    for value in identifiers.values():
        for part in re.split(r"[\^=\\ ,]+", value):
            if len(part) >= 2:
                words.add(part)
    for word in sorted(words, key=len, reverse=True):
        text = re.sub(re.escape(word), "*" * min(len(word), 8), text, flags=re.IGNORECASE)
    return text


def _private_creators(ds: Dataset) -> dict[tuple[int, int], str]:
    creators = {}
    for tag in ds.keys():  # keys only: the other elements stay unparsed
        if tag.is_private and 0x0010 <= tag.element <= 0x00FF:
            creators[(tag.group, tag.element)] = str(ds[tag].value or "")
    return creators


def _vr_of(ds: Dataset, tag: BaseTag) -> str:
    """The VR of an element without parsing its value (implicit VR files: the dictionary's)."""
    vr = getattr(ds.get_item(tag), "VR", None)
    if vr:
        return str(vr)
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return "UN"


def _anonymize(ds: Dataset, session: Session, diffs: list[Diff], prefix: str,
               identifiers: dict[str, str], *, top: bool) -> None:
    plan = session.plan
    creators = _private_creators(ds)
    private_removed: dict[int, int] = {}
    for key in list(ds.keys()):
        tag = int(key)
        if top and (tag in plan.keep or tag in plan.replace or tag in plan.remove):
            continue  # the request's own lists come after the profile
        if key.is_private:
            keep = plan.keep_private or (top and tag in plan.keep)
            if not keep and "safe_private" in plan.options:
                block = (key.group, key.element >> 8) if key.element > 0xFF else (key.group, key.element)
                keep = creators.get(block, "") in plan.safe_private_creators
            if not keep:
                private_removed[key.group] = private_removed.get(key.group, 0) + 1
                del ds[key]
            continue
        if top and tag in (PATIENT_ID, PATIENT_NAME):
            continue  # pseudonyms, set by apply()
        action = _table_action(tag, plan.options)
        path = _path(prefix, key)
        if action is None or action == "K":
            if _vr_of(ds, key) == "SQ":  # only sequences are parsed, to look inside
                _recurse(ds[key], session, diffs, path, identifiers)
            continue
        element = ds[key]
        if action == "X/Z/U*":
            _recurse(element, session, diffs, path, identifiers)
            continue
        if "/" in action:
            # X/Z, X/D, X/Z/D: removed (as Orthanc does: the IOD's Type is not known here);
            # Z/D: emptied. A UID among them is replaced instead, so references stay whole.
            action = "U" if element.VR == "UI" else ("X" if action.startswith("X") else "Z")
        if action == "X":
            diffs.append(Diff(path, element.keyword or "", _text(element), None, "X"))
            del ds[element.tag]
        elif action == "Z":
            before = _text(element)
            element.value = Sequence() if element.VR == "SQ" else (None if element.VR not in _NUMERIC else None)
            if before not in ("", None, "0 item(s)"):
                diffs.append(Diff(path, element.keyword or "", before, "", "Z"))
        elif action == "U":
            if element.VR == "UI" and element.value:
                before = _text(element)
                values = element.value if isinstance(element.value, list) or type(element.value).__name__ == "MultiValue" else [element.value]
                new = [session.uid(str(v)) for v in values]
                element.value = new if len(new) > 1 else new[0]
                diffs.append(Diff(path, element.keyword or "", before, "\\".join(new), "U"))
            elif element.VR == "SQ":
                _recurse(element, session, diffs, path, identifiers)
        elif action == "D":
            if element.VR == "SQ":
                _recurse(element, session, diffs, path, identifiers)
                continue
            before = _text(element)
            element.value = _dummy(element)
            if before != _text(element):
                diffs.append(Diff(path, element.keyword or "", before, _text(element), "D"))
        elif action == "C":
            if element.VR == "SQ":
                _recurse(element, session, diffs, path, identifiers)
            elif element.VR in ("LO", "SH", "LT", "ST", "UT", "UC", "PN") and element.value:
                before = _text(element)
                cleaned = _clean_text(before or "", identifiers)
                if cleaned != before:
                    element.value = cleaned
                    diffs.append(Diff(path, element.keyword or "", before, cleaned, "C"))
    _summarize_private(diffs, prefix, private_removed, creators)


def _summarize_private(diffs: list[Diff], prefix: str, removed: dict[int, int],
                       creators: dict[tuple[int, int], str]) -> None:
    # One line per private group (a dry run lists them by the hundred otherwise).
    for group, count in sorted(removed.items()):
        names = sorted({c for (g, _e), c in creators.items() if g == group and c})
        diffs.append(Diff(f"{prefix}{group:04X},xxxx", "private: " + (", ".join(names) or "no creator"),
                          f"{count} element(s)", None, "X"))


def _recurse(element: DataElement, session: Session, diffs: list[Diff], path: str,
             identifiers: dict[str, str]) -> None:
    for n, item in enumerate(element.value or []):
        _anonymize(item, session, diffs, f"{path}[{n}].", identifiers, top=False)


def _modify_uids(ds: Dataset, session: Session, diffs: list[Diff]) -> None:
    """A modified copy gets new UIDs at the resource's level and below (as Orthanc's), unless kept
    or replaced; references to them in the copy follow."""
    plan = session.plan
    renew = {"Patient": (STUDY_UID, SERIES_UID, SOP_UID), "Study": (STUDY_UID, SERIES_UID, SOP_UID),
             "Series": (SERIES_UID, SOP_UID), "Instance": (SOP_UID,)}[plan.level]
    for tag in renew:
        if tag in ds and tag not in plan.keep and tag not in plan.replace:
            old = str(ds[tag].value)
            new = session.uid(old)
            diffs.append(Diff(_path("", Tag(tag)), _name(tag), old, new, "U"))
            ds[tag].value = new


def encode(ds: Dataset) -> bytes:
    """The dataset as a file. Elements the profile did not touch are written as read; a file
    whose elements' VRs were never resolved (read implicit, written explicit) is parsed whole."""
    import io

    buffer = io.BytesIO()
    try:
        ds.save_as(buffer, enforce_file_format=False)
    except (TypeError, ValueError):
        for _element in ds.iterall():  # converts every raw element, VR included
            pass
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=False)
    return buffer.getvalue()


def burned_in_warning(ds: Dataset) -> str:
    """A reason to look at the pixels: burned-in annotation said YES, or not said where it is common."""
    burned = str(ds.get("BurnedInAnnotation", "") or "").upper()
    modality = str(ds.get("Modality", "") or "").upper()
    sop_class = str(ds.get("SOPClassUID", "") or "")
    if burned == "YES":
        return "BurnedInAnnotation is YES: the pixels carry text that Dolmen does not remove"
    if not burned and (modality in ("US", "SC", "OT", "XC", "ES") or sop_class.startswith("1.2.840.10008.5.1.4.1.1.7")):
        return (f"BurnedInAnnotation is not set on this {modality or 'secondary capture'} image: check the "
                "pixels for burned-in text, which Dolmen does not remove")
    return ""


def tags_changed(diffs: Iterable[Diff]) -> list[dict[str, Any]]:
    return [d.as_json() for d in diffs]
