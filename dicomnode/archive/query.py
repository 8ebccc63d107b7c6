"""The one query translator: page filters, C-FIND identifiers and QIDO-RS parameters → peewee.

Every search in Dolmen goes through :func:`select`, which turns ``{keyword: DICOM matching
value}`` at a level into a peewee query over the index, and :func:`answer`, which turns a
row into ``{keyword: value}`` with the computed attributes (NumberOfStudyRelatedInstances,
ModalitiesInStudy...). Matching follows PS3.4 C.2.2.2:

* C.2.2.2.1 Single Value Matching — equality (case-insensitive for PN unless configured).
* C.2.2.2.2 List of UID Matching — backslash-separated UIDs.
* C.2.2.2.3 Universal Matching — an empty value matches everything.
* C.2.2.2.4 Wildcard Matching — ``*`` and ``?``.
* C.2.2.2.5 Range Matching — ``A-B``, ``A-``, ``-B`` for DA, TM and DT; with combined
  date/time matching (C.2.2.2.5.1, negotiated by a C-FIND requester), a date range and a time
  range of the same entity (StudyDate + StudyTime) form one date-time range.

Attributes the index does not hold are not filtered on (the standard lets an SCP ignore
them); callers learn which with :func:`unsupported`.
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import peewee
from peewee import Expression
from peewee import Field
from peewee import fn

from dicomnode.archive.index import Instance
from dicomnode.archive.index import Patient
from dicomnode.archive.index import Series
from dicomnode.archive.index import Study
from dicomnode.errors import DolmenError

PATIENT = "PATIENT"
STUDY = "STUDY"
SERIES = "SERIES"
IMAGE = "IMAGE"
LEVELS = (PATIENT, STUDY, SERIES, IMAGE)
_DEPTH = {PATIENT: 0, STUDY: 1, SERIES: 2, IMAGE: 3}
MODEL = {PATIENT: Patient, STUDY: Study, SERIES: Series, IMAGE: Instance}


class QueryError(DolmenError):
    """A malformed query: the message says which attribute and why."""

    code = "bad_query"
    http_status = 400


@dataclass(frozen=True)
class Attr:
    """An attribute the index can match and return."""

    keyword: str
    tag: int
    vr: str
    level: str
    field: Field | None  # None for computed attributes


def _a(keyword: str, tag: int, vr: str, level: str, field: Field | None) -> Attr:
    return Attr(keyword, tag, vr, level, field)


ATTRIBUTES: dict[str, Attr] = {a.keyword: a for a in (
    _a("PatientName", 0x00100010, "PN", PATIENT, Patient.patient_name),
    _a("PatientID", 0x00100020, "LO", PATIENT, Patient.patient_id),
    _a("PatientBirthDate", 0x00100030, "DA", PATIENT, Patient.patient_birth_date),
    _a("PatientSex", 0x00100040, "CS", PATIENT, Patient.patient_sex),
    _a("NumberOfPatientRelatedStudies", 0x00201200, "IS", PATIENT, None),
    _a("NumberOfPatientRelatedSeries", 0x00201202, "IS", PATIENT, None),
    _a("NumberOfPatientRelatedInstances", 0x00201204, "IS", PATIENT, None),
    _a("StudyInstanceUID", 0x0020000D, "UI", STUDY, Study.study_instance_uid),
    _a("StudyDate", 0x00080020, "DA", STUDY, Study.study_date),
    _a("StudyTime", 0x00080030, "TM", STUDY, Study.study_time),
    _a("StudyDescription", 0x00081030, "LO", STUDY, Study.study_description),
    _a("AccessionNumber", 0x00080050, "SH", STUDY, Study.accession_number),
    _a("StudyID", 0x00200010, "SH", STUDY, Study.study_id),
    _a("ReferringPhysicianName", 0x00080090, "PN", STUDY, Study.referring_physician_name),
    _a("ModalitiesInStudy", 0x00080061, "CS", STUDY, Study.modalities_in_study),
    _a("SOPClassesInStudy", 0x00080062, "UI", STUDY, Study.sop_classes_in_study),
    _a("NumberOfStudyRelatedSeries", 0x00201206, "IS", STUDY, None),
    _a("NumberOfStudyRelatedInstances", 0x00201208, "IS", STUDY, None),
    _a("SeriesInstanceUID", 0x0020000E, "UI", SERIES, Series.series_instance_uid),
    _a("Modality", 0x00080060, "CS", SERIES, Series.modality),
    _a("SeriesNumber", 0x00200011, "IS", SERIES, Series.series_number),
    _a("SeriesDescription", 0x0008103E, "LO", SERIES, Series.series_description),
    _a("BodyPartExamined", 0x00180015, "CS", SERIES, Series.body_part_examined),
    _a("SeriesDate", 0x00080021, "DA", SERIES, Series.series_date),
    _a("SeriesTime", 0x00080031, "TM", SERIES, Series.series_time),
    _a("NumberOfSeriesRelatedInstances", 0x00201209, "IS", SERIES, None),
    _a("SOPInstanceUID", 0x00080018, "UI", IMAGE, Instance.sop_instance_uid),
    _a("SOPClassUID", 0x00080016, "UI", IMAGE, Instance.sop_class_uid),
    _a("InstanceNumber", 0x00200013, "IS", IMAGE, Instance.instance_number),
    _a("NumberOfFrames", 0x00280008, "IS", IMAGE, Instance.number_of_frames),
    _a("AvailableTransferSyntaxUID", 0x00083002, "UI", IMAGE, Instance.transfer_syntax_uid),
)}
BY_TAG: dict[int, Attr] = {a.tag: a for a in ATTRIBUTES.values()}

#: The unique key of each level (PS3.4 C.6.1.1 / C.6.2.1).
UNIQUE_KEY = {PATIENT: "PatientID", STUDY: "StudyInstanceUID", SERIES: "SeriesInstanceUID",
              IMAGE: "SOPInstanceUID"}

_UID_LIST = re.compile(r"[0-9.]+(\\[0-9.]+)*")
_DATE = re.compile(r"\d{8}")
_TIME = re.compile(r"\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?")


def attribute(name: str) -> Attr | None:
    """Look an attribute up by keyword (``PatientName``) or tag (``00100010``, ``(0010,0010)``)."""
    if name in ATTRIBUTES:
        return ATTRIBUTES[name]
    cleaned = name.strip("()").replace(",", "")
    if re.fullmatch(r"[0-9A-Fa-f]{8}", cleaned):
        return BY_TAG.get(int(cleaned, 16))
    return None


def unsupported(filters: Mapping[str, Any]) -> list[str]:
    """The keys of ``filters`` the index cannot match on."""
    return [k for k in filters if attribute(k) is None]


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _glob_escape(text: str) -> str:
    return "".join(f"[{c}]" if c in "[]" else c for c in text)


#: Columns holding person names upper-cased (binary order agrees with the case-folded match).
_UPPER_KEYS = ("patient_name_key", "patient_name_ideo", "patient_name_phon")


def _prefix_range(field: Any, pattern: str) -> Expression | None:
    """``field >= prefix AND field < prefix'`` for the literal start of a wildcard pattern, so that
    SQLite reads the column's index instead of every row: its LIKE with an ESCAPE clause on a
    case-folding match never uses an index (a PatientName wildcard scanned 100,000 patients).
    Binary order, as SQLite compares; ``None`` without a literal start."""
    cut = min((i for i in (pattern.find("*"), pattern.find("?")) if i >= 0), default=len(pattern))
    prefix = pattern[:cut]
    if not prefix or ord(prefix[-1]) >= 0x10FFFF:
        return None
    return (field >= prefix) & (field < prefix[:-1] + chr(ord(prefix[-1]) + 1))


def _wildcard(field: Any, pattern: str, fold: bool, exact_case: bool = False) -> Expression:
    from dicomnode.archive.index import db

    sqlite = isinstance(db.obj, peewee.SqliteDatabase)
    if exact_case and sqlite:
        # SQLite's LIKE ignores the case of ASCII letters; GLOB does not (and * and ? are its own).
        # Used where case was asked for (person names with case_sensitive_pn, CaseSensitive).
        match = peewee.NodeList((field, peewee.SQL("GLOB"), _glob_escape(pattern)))
    else:
        like = _like_escape(pattern).replace("*", "%").replace("?", "_")
        target = fn.UPPER(field) if fold else field
        value = like.upper() if fold else like
        # Written out rather than peewee's LIKE operator, which is GLOB on SQLite.
        match = peewee.NodeList((target, peewee.SQL("LIKE"), value, peewee.SQL("ESCAPE '\\'")))
    # A literal start narrows by range where binary order agrees with the match: a
    # case-sensitive (GLOB) match, or the person-name key, stored and matched upper-cased.
    keyed = getattr(field, "name", "") in _UPPER_KEYS and not fold
    narrow = _prefix_range(field, pattern) if sqlite and (exact_case or keyed) else None
    return match if narrow is None else (narrow & match)  # type: ignore[return-value]


def _any_name_group(text: str) -> Expression:
    """PatientName ``text`` (upper-cased, without ``=``) matched against each component group:
    the alphabetic one (the key up to its first ``=``), the ideographic one, the phonetic one
    (PS3.5 6.2.1.1). "山田*" finds "Yamada^Tarou=山田^太郎=やまだ^たろう". Each term is read from an index."""
    def match(field: Any, pattern: str) -> Expression:
        if "*" in pattern or "?" in pattern:
            return _wildcard(field, pattern, False)
        return field == pattern

    key = Patient.patient_name_key
    alphabetic = match(key, text) | _wildcard(key, text + "=*", False)  # the key holds every group
    return alphabetic | match(Patient.patient_name_ideo, text) | match(Patient.patient_name_phon, text)


def _range(field: Any, value: str, vr: str) -> Expression:
    low, _, high = value.partition("-")
    low, high = low.strip(), high.strip()
    pattern = _DATE if vr == "DA" else _TIME
    for part in (low, high):
        if part and vr in ("DA", "TM") and not pattern.fullmatch(part):
            kind = "date (YYYYMMDD)" if vr == "DA" else "time (HHMMSS)"
            raise QueryError(f"{part!r} is not a valid {kind} in the range {value!r}")
    if not low and not high:
        raise QueryError(f"{value!r} is not a range: give a start, an end or both")
    if vr == "TM":
        # Times compare as strings once padded: "10" means 10:00:00.
        low = low.split(".")[0].ljust(6, "0") if low else ""
        high = (high.split(".")[0].ljust(6, "9") if high else "")
    cond: Expression | None = None
    if low:
        cond = field >= low
    if high:
        upper = field <= high
        cond = upper if cond is None else (cond & upper)
    assert cond is not None
    return (field != "") & cond


#: Date and time attributes that combined date/time range matching pairs (C.2.2.2.5.1).
DATE_TIME_PAIRS = {"StudyDate": "StudyTime", "SeriesDate": "SeriesTime"}


def _bounds(value: str, vr: str) -> tuple[str, str]:
    """The checked (low, high) of a DA or TM range or single value; times padded for comparison."""
    low, sep, high = value.partition("-")
    low, high = low.strip(), high.strip()
    if not sep:
        high = low
    pattern = _DATE if vr == "DA" else _TIME
    for part in (low, high):
        if part and not pattern.fullmatch(part):
            kind = "date (YYYYMMDD)" if vr == "DA" else "time (HHMMSS)"
            raise QueryError(f"{part!r} is not a valid {kind} in {value!r}")
    if vr == "TM":
        low = low.split(".")[0].ljust(6, "0") if low else ""
        high = high.split(".")[0].ljust(6, "9") if high else ""
    return low, high


def combined_datetime_range(date_attr: Attr, time_attr: Attr, date_value: str, time_value: str) -> Expression:
    """C.2.2.2.5.1 combined date/time range: ``20200101-20200103`` with ``1000-1800`` means from
    1 January 10:00 to 3 January 18:00 (not 10:00-18:00 on each day).

    Raises
    ------
    QueryError
        For a malformed date or time.
    """
    d_low, d_high = _bounds(date_value, "DA")
    t_low, t_high = _bounds(time_value, "TM")
    date, time = date_attr.field, time_attr.field
    assert date is not None and time is not None
    cond: Expression = date != ""
    if d_low and t_low:
        cond = cond & ((date > d_low) | ((date == d_low) & (time >= t_low)))
    elif d_low:
        cond = cond & (date >= d_low)
    if d_high and t_high:
        cond = cond & ((date < d_high) | ((date == d_high) & (time <= t_high)))
    elif d_high:
        cond = cond & (date <= d_high)
    return cond


def condition(attr: Attr, value: Any, *, case_sensitive_pn: bool = False) -> Expression | None:
    """The peewee condition for one attribute and matching value; ``None`` for universal matching.

    Raises
    ------
    QueryError
        For a malformed UID list, date or range.
    """
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        value = "\\".join(str(v) for v in value)
    text = str(value).strip()
    if text == "" or text == "*":
        return None  # C.2.2.2.3 Universal Matching
    field = attr.field
    if field is None:
        raise QueryError(f"{attr.keyword} can be returned but not matched on")
    if attr.keyword == "PatientName" and not case_sensitive_pn:
        field = Patient.patient_name_key
    if attr.vr == "UI":
        if not _UID_LIST.fullmatch(text):
            raise QueryError(f"{attr.keyword}: {text[:80]!r} is not a UID or a backslash-separated list of UIDs")
        uids = text.split("\\")
        if attr.keyword in ("SOPClassesInStudy",):
            return _multi_contains(field, uids)
        return field == uids[0] if len(uids) == 1 else field.in_(uids)
    if attr.vr in ("DA", "TM", "DT") and "-" in text:
        return _range(field, text, attr.vr)
    if attr.vr == "DA" and not _DATE.fullmatch(text) and "*" not in text and "?" not in text:
        raise QueryError(f"{attr.keyword}: {text!r} is not a date (YYYYMMDD) or a range (A-B)")
    if attr.vr == "IS":
        try:
            return field == int(text)
        except ValueError:
            raise QueryError(f"{attr.keyword}: {text!r} is not a whole number") from None
    if attr.keyword == "ModalitiesInStudy":
        return _multi_contains(field, text.split("\\"))
    fold = attr.vr == "PN" and not case_sensitive_pn
    if attr.keyword == "PatientName" and not case_sensitive_pn:
        fold = False  # the key column is already upper-cased
        text = text.upper()
        if "=" not in text:
            return _any_name_group(text)
    if "*" in text or "?" in text:
        return _wildcard(field, text, fold, exact_case=attr.vr == "PN" and case_sensitive_pn)
    if "\\" in text and attr.vr == "CS":
        return field.in_(text.split("\\"))
    if fold:
        return fn.UPPER(field) == text.upper()
    return field == text


def _multi_contains(field: Any, values: Iterable[str]) -> Expression:
    """Match a backslash-joined column holding any of ``values`` (ModalitiesInStudy)."""
    cond: Expression | None = None
    wrapped = peewee.Value("\\").concat(field).concat("\\")
    for v in values:
        v = v.strip()
        if not v:
            continue
        part = _wildcard(wrapped, f"*\\{v}\\*", False)
        cond = part if cond is None else (cond | part)
    if cond is None:
        raise QueryError("Empty list of values")
    return cond


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return "\\".join(str(v) for v in value)
    return str(value).strip()


def select(level: str, filters: Mapping[str, Any], *, case_sensitive_pn: bool = False,
           combined_datetime: bool = False) -> peewee.ModelSelect:
    """The rows of ``level`` matching ``filters`` (attributes of that level or above).

    Parameters
    ----------
    level : str
        PATIENT, STUDY, SERIES or IMAGE.
    filters : mapping
        ``{keyword or tag: matching value}``; unknown keys are ignored (see :func:`unsupported`),
        keys of a lower level than ``level`` raise :class:`QueryError`.
    combined_datetime : bool
        Match a date range together with the time of the same entity as one date-time range
        (C.2.2.2.5.1), as a C-FIND requester may negotiate.

    Returns
    -------
    peewee.ModelSelect
        Rows of the level's model joined to their parents (``row.study``, ``row.study.patient``
        ... are loaded without extra queries).
    """
    level = level.upper()
    if level not in LEVELS:
        raise QueryError(f"Unknown query level {level!r}: use PATIENT, STUDY, SERIES or IMAGE")
    depth = _DEPTH[level]
    models = [Patient, Study, Series, Instance][: depth + 1]
    query = MODEL[level].select(*models)
    # Join upwards: Instance -> Series -> Study -> Patient.
    chain = list(reversed(models))
    for child, parent in zip(chain, chain[1:]):
        query = query.switch(child).join(parent)
    combined: set[str] = set()
    if combined_datetime:
        by_keyword = {a.keyword: v for a, v in ((attribute(k), v) for k, v in filters.items()) if a is not None}
        for date_kw, time_kw in DATE_TIME_PAIRS.items():
            date_value, time_value = _text(by_keyword.get(date_kw)), _text(by_keyword.get(time_kw))
            if "-" in date_value and time_value not in ("", "*") and _DEPTH[ATTRIBUTES[date_kw].level] <= depth:
                query = query.where(combined_datetime_range(ATTRIBUTES[date_kw], ATTRIBUTES[time_kw],
                                                            date_value, time_value))
                combined.update((date_kw, time_kw))
    for key, value in filters.items():
        attr = attribute(key)
        if attr is None or attr.keyword in combined:
            continue
        if _DEPTH[attr.level] > depth:
            raise QueryError(f"{attr.keyword} belongs to the {attr.level} level and cannot filter {level} results")
        cond = condition(attr, value, case_sensitive_pn=case_sensitive_pn)
        if cond is not None:
            query = query.where(cond)
    return query


def _patient(row: Any, level: str) -> Patient:
    if level == PATIENT:
        return row
    return _study(row, level).patient


def _study(row: Any, level: str) -> Study:
    if level == STUDY:
        return row
    return _series(row, level).study


def _series(row: Any, level: str) -> Series:
    if level == SERIES:
        return row
    return row.series


def answer(row: Any, level: str, keywords: Iterable[str] | None = None) -> dict[str, Any]:
    """``{keyword: value}`` for a row of ``level``: its own attributes and its parents'.

    Values are strings (numbers as ints), empty strings when unknown. ``keywords`` limits the
    result (unknown keywords are returned empty, as PS3.4 C.4.1.1.3.2 allows).
    """
    depth = _DEPTH[level]
    p = _patient(row, level)
    out: dict[str, Any] = {
        "PatientName": p.patient_name, "PatientID": p.patient_id,
        "PatientBirthDate": p.patient_birth_date, "PatientSex": p.patient_sex,
    }
    # Counters of the row's parents too: a STUDY-level C-FIND may ask NumberOfPatientRelatedStudies.
    out.update(NumberOfPatientRelatedStudies=p.num_studies, NumberOfPatientRelatedSeries=p.num_series,
               NumberOfPatientRelatedInstances=p.num_instances)
    if depth >= 1:
        s = _study(row, level)
        out.update(StudyInstanceUID=s.study_instance_uid, StudyDate=s.study_date, StudyTime=s.study_time,
                   StudyDescription=s.study_description, AccessionNumber=s.accession_number,
                   StudyID=s.study_id, ReferringPhysicianName=s.referring_physician_name)
        out.update(ModalitiesInStudy=s.modalities_in_study, SOPClassesInStudy=s.sop_classes_in_study,
                   NumberOfStudyRelatedSeries=s.num_series, NumberOfStudyRelatedInstances=s.num_instances)
    if depth >= 2:
        se = _series(row, level)
        out.update(SeriesInstanceUID=se.series_instance_uid, Modality=se.modality,
                   SeriesNumber=se.series_number, SeriesDescription=se.series_description,
                   BodyPartExamined=se.body_part_examined, SeriesDate=se.series_date,
                   SeriesTime=se.series_time)
        out["NumberOfSeriesRelatedInstances"] = se.num_instances
    if depth == 3:
        out.update(SOPInstanceUID=row.sop_instance_uid, SOPClassUID=row.sop_class_uid,
                   InstanceNumber=row.instance_number, NumberOfFrames=row.number_of_frames,
                   AvailableTransferSyntaxUID=row.transfer_syntax_uid)
    if keywords is not None:
        return {k: out.get(k, "") for k in keywords}
    return out


#: Sort keys for lists: name -> field(s), per level.
ORDER = {
    # By patient: the patient's primary key after the name breaks ties patient by patient, so the
    # order is the patient index's own and the joined study rows come in order without a sort.
    STUDY: {"date": (Study.study_date, Study.study_time), "name": (Patient.patient_name_key, Patient.pk),
            "id": (Patient.patient_id, Patient.pk), "accession": (Study.accession_number,),
            "description": (Study.study_description,), "modality": (Study.modalities_in_study,),
            "instances": (Study.num_instances,), "received": (Study.created_at,)},
    PATIENT: {"name": (Patient.patient_name_key,), "id": (Patient.patient_id,),
              "birth": (Patient.patient_birth_date,), "studies": (Patient.num_studies,),
              "received": (Patient.created_at,)},
    SERIES: {"number": (Series.series_number,), "modality": (Series.modality,),
             "description": (Series.series_description,)},
    IMAGE: {"number": (Instance.instance_number,)},
}


def order(query: peewee.ModelSelect, level: str, sort: str | None, descending: bool = False) -> peewee.ModelSelect:
    """Sort ``query`` by a named key of :data:`ORDER` (unknown names fall back to the default)."""
    keys = ORDER.get(level, {})
    fields = keys.get(sort or "", None) or next(iter(keys.values()), ())
    pk = MODEL[level].pk
    return query.order_by(*[(f.desc() if descending else f.asc()) for f in fields], pk.desc() if descending else pk.asc())


# -- lists: counting and paging ---------------------------------------------------------------


def is_universal(filters: Mapping[str, Any]) -> bool:
    """True when no filter restricts anything (every value is universal matching, C.2.2.2.3)."""
    for key, value in filters.items():
        attr = attribute(key)
        if attr is not None and attr.field is not None and condition(attr, value) is not None:
            return False
    return True


def count(level: str, filters: Mapping[str, Any], *, case_sensitive_pn: bool = False,
          where: Expression | None = None) -> int:
    """The number of rows of ``level`` matching ``filters``.

    An unfiltered count reads the level's table alone instead of counting over the joins
    :func:`select` makes, which keeps the landing lists cheap with 100,000 studies.
    """
    level = level.upper()
    if level in MODEL and is_universal(filters):
        plain = MODEL[level].select()
        return int((plain.where(where) if where is not None else plain).count())
    rows = select(level, filters, case_sensitive_pn=case_sensitive_pn)
    return int((rows.where(where) if where is not None else rows).count())


@dataclass(frozen=True)
class Page:
    """One page of a sorted list: its rows and where it sits among ``total`` matches."""

    rows: list[Any]
    number: int  # 1-based
    size: int
    total: int

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.size))

    @property
    def has_previous(self) -> bool:
        return self.number > 1

    @property
    def has_next(self) -> bool:
        return self.number < self.pages

    @property
    def first(self) -> int:
        """1-based position of the first row shown (0 when the page is empty)."""
        return (self.number - 1) * self.size + 1 if self.rows else 0

    @property
    def last(self) -> int:
        return (self.number - 1) * self.size + len(self.rows)


def list_page(level: str, filters: Mapping[str, Any], sort: str | None, *, descending: bool = False,
              number: int = 1, size: int = 50, case_sensitive_pn: bool = False,
              where: Expression | None = None) -> Page:
    """Page ``number`` of the rows of ``level`` matching ``filters``, sorted by ``sort`` (:data:`ORDER`).

    Counts with :func:`count`, then reads the primary keys of the page's rows (LIMIT/OFFSET over
    narrow rows: from the level's table alone, an index scan, when nothing is filtered and the
    sort key is the level's own column), then loads only those rows with their parents. An
    OFFSET of thousands then skips index entries or keys, not joined rows, and SQLite plans the
    narrow query on the sort's index where the wide one would sort every joined row.
    """
    level = level.upper()
    total = count(level, filters, case_sensitive_pn=case_sensitive_pn, where=where)
    rows = select(level, filters, case_sensitive_pn=case_sensitive_pn)
    if where is not None:
        rows = rows.where(where)
    size = max(1, size)
    number = min(max(1, number), max(1, -(-total // size)))
    offset = (number - 1) * size
    model: Any = MODEL.get(level)
    if model is None:
        plain = order(rows, level, sort, descending).limit(size).offset(offset)
        return Page(list(plain), number, size, total)
    keys: Any = ORDER.get(level, {})
    fields = keys.get(sort or "", None) or next(iter(keys.values()), ())
    own = is_universal(filters) and all(f.model is model for f in fields)
    lean: Any = model.select(model.pk) if own else rows.select(model.pk)
    if own and where is not None:
        lean = lean.where(where)
    keyed: Any = order(lean, level, sort, descending).limit(size).offset(offset).tuples()
    pks: list[int] = [row[0] for row in keyed]
    position = {pk: n for n, pk in enumerate(pks)}
    # No ORDER BY here: with one, SQLite may walk the sort index and test every row.
    found: list[Any] = sorted(rows.where(model.pk.in_(pks)), key=lambda r: position[r.pk]) if pks else []
    return Page(found, number, size, total)


def paginate(query: peewee.ModelSelect, number: int, size: int, total: int) -> Page:
    """Page ``number`` (1-based, clamped to the last page) of ``size`` rows of a sorted query.

    LIMIT/OFFSET over an ORDER BY on indexed columns (see :data:`ORDER`); ``total`` comes
    from :func:`count`.
    """
    size = max(1, size)
    last = max(1, -(-total // size))
    number = min(max(1, number), last)
    rows = list(query.limit(size).offset((number - 1) * size))
    return Page(rows, number, size, total)
