"""The archive in the shape of Orthanc's REST API: resources, children, statistics, ``/tools/find``.

No HTTP here: :mod:`webapp.api.rest` turns these dictionaries into responses. Field names,
orders and types are Orthanc's (1.10-1.12), checked against Debian's Orthanc in the tests.
Lists come in the order resources entered the index (Orthanc's internal order), so that
``since``/``limit`` pages are stable.
"""
from __future__ import annotations

import fnmatch
import functools
import re
from collections.abc import Iterable
from typing import Any

import peewee
from peewee import fn

from dicomnode.archive import changes
from dicomnode.archive import index
from dicomnode.archive import maintags
from dicomnode.archive import query
from dicomnode.archive.index import Instance
from dicomnode.archive.index import Patient
from dicomnode.archive.index import Series
from dicomnode.archive.index import Study
from dicomnode.archive.store import Store
from dicomnode.errors import DolmenError

#: Orthanc's resource types and the URL segment of each.
TYPES = ("Patient", "Study", "Series", "Instance")
SEGMENT = {"Patient": "patients", "Study": "studies", "Series": "series", "Instance": "instances"}
TYPE_OF_SEGMENT = {v: k for k, v in SEGMENT.items()}
MODEL = {"Patient": Patient, "Study": Study, "Series": Series, "Instance": Instance}
CHILD = {"Patient": "Study", "Study": "Series", "Series": "Instance"}
PARENT = {"Study": "Patient", "Series": "Study", "Instance": "Series"}
QUERY_LEVEL = {"Patient": query.PATIENT, "Study": query.STUDY, "Series": query.SERIES, "Instance": query.IMAGE}
#: The key of the children list in a resource's JSON.
CHILDREN_KEY = {"Patient": "Studies", "Study": "Series", "Series": "Instances"}
PARENT_KEY = {"Study": "ParentPatient", "Series": "ParentStudy", "Instance": "ParentSeries"}


class BadRequest(DolmenError):
    """Orthanc's "Bad request" (8)."""

    code = "bad_request"
    http_status = 400
    orthanc_status = 8


class OutOfRange(DolmenError):
    """Orthanc's "Parameter out of range" (3)."""

    code = "parameter_out_of_range"
    http_status = 400
    orthanc_status = 3


def level_of(name: Any) -> str:
    """``"studies"``, ``"Study"``, ``"STUDY"`` → ``"Study"``; anything else is out of range."""
    if isinstance(name, str):
        text = name.strip().lower()
        for resource_type in TYPES:
            if text in (resource_type.lower(), SEGMENT[resource_type]):
                return resource_type
        if text == "image":
            return "Instance"
    raise OutOfRange(f"Unknown Level {str(name)[:40]!r}: use Patient, Study, Series or Instance")


# -- one resource ----------------------------------------------------------------------------


def _ancestor(resource_type: str, row: Any, wanted: str) -> Any:
    while resource_type != wanted:
        row = {"Instance": lambda r: r.series, "Series": lambda r: r.study, "Study": lambda r: r.patient}[
            resource_type](row)
        resource_type = PARENT[resource_type]
    return row


def ancestor(resource_type: str, row: Any, wanted: str) -> Any:
    """The row of ``wanted`` (a level above, or the row itself) that holds ``row``."""
    if TYPES.index(wanted) > TYPES.index(resource_type):
        raise OutOfRange(f"A {resource_type} has no {wanted} parent")
    return _ancestor(resource_type, row, wanted)


def _children_ids(resource_type: str, pks: list[int]) -> dict[int, list[str]]:
    """``{pk: [child public ids in index order]}`` for rows of ``resource_type``."""
    out: dict[int, list[str]] = {pk: [] for pk in pks}
    child = CHILD.get(resource_type)
    if child is None or not pks:
        return out
    model = MODEL[child]
    fk = {"Study": Study.patient, "Series": Series.study, "Instance": Instance.series}[child]
    for parent_pk, public_id in index.rows_with_pks(model, fk, pks, "public_id", order="pk"):
        out[parent_pk].append(public_id)
    return out


def _index_in_series(rows: list[Instance]) -> dict[int, int | None]:
    # Orthanc numbers the instances of a series from 1 in arrival order unless InstanceNumber
    # is set; Dolmen gives InstanceNumber, else the arrival rank.
    out: dict[int, int | None] = {}
    for row in rows:
        if row.instance_number is not None:
            out[row.pk] = row.instance_number
        else:
            out[row.pk] = Instance.select().where((Instance.series == row.__data__["series"]) & (Instance.pk <= row.pk)).count()
    return out


def describe(resource_type: str, rows: list[Any], *, stable_age: float,
             requested_tags: list[str] | None = None, store: Store | None = None) -> list[dict[str, Any]]:
    """The JSON of each row, as ``GET /{level}/{id}`` answers it (batched for ``?expand``)."""
    pks = [r.pk for r in rows]
    kids = _children_ids(resource_type, pks)
    labels = changes.labels_by_pk(resource_type, pks)
    index_in_series = _index_in_series(rows) if resource_type == "Instance" else {}
    out = []
    for row in rows:
        body: dict[str, Any] = {}
        if resource_type == "Series":
            body["ExpectedNumberOfInstances"] = None
        if resource_type == "Instance":
            body["FileSize"] = row.file_size
            body["FileUuid"] = _file_uuid(row.path)
        body["ID"] = row.public_id
        if resource_type == "Instance":
            body["IndexInSeries"] = index_in_series.get(row.pk)
        if resource_type in CHILDREN_KEY:
            body[CHILDREN_KEY[resource_type]] = kids[row.pk]
        if resource_type != "Instance":
            body["IsStable"] = changes.is_stable(row, stable_age)
        body["Labels"] = labels[row.pk]
        if resource_type != "Instance":
            body["LastUpdate"] = changes.orthanc_date(row.updated_at)
        else:
            body["LastUpdate"] = changes.orthanc_date(row.received_at)
        body["MainDicomTags"] = maintags.of_row(resource_type, row)
        if resource_type in PARENT_KEY:
            body[PARENT_KEY[resource_type]] = _ancestor(resource_type, row, PARENT[resource_type]).public_id
        if resource_type == "Study":
            body["PatientMainDicomTags"] = maintags.of_row("Patient", row.patient)
        if requested_tags:
            body["RequestedTags"] = requested(resource_type, row, requested_tags, store)
        if resource_type == "Series":
            body["Status"] = "Unknown"
        body["Type"] = resource_type
        out.append(body)
    return out


def _file_uuid(path: str) -> str:
    # Orthanc names each attachment by a UUID; Dolmen's file name is random too (files/ab/cd/<hex>.dcm).
    stem = path.rsplit("/", 1)[-1].split(".", 1)[0]
    hexa = re.sub(r"[^0-9a-f]", "", stem.lower()).ljust(32, "0")[:32]
    return f"{hexa[:8]}-{hexa[8:12]}-{hexa[12:16]}-{hexa[16:20]}-{hexa[20:32]}"


def requested(resource_type: str, row: Any, keywords: list[str], store: Store | None) -> dict[str, Any]:
    """``RequestedTags``: main tags of the resource or its parents, then the computed ones.

    Attributes that are neither are read from the resource's first instance, as Orthanc does.
    """
    known: dict[str, Any] = {}
    for level in TYPES[: TYPES.index(resource_type) + 1]:
        known.update(maintags.of_row(level, ancestor(resource_type, row, level)))
    computed = query.answer(row, QUERY_LEVEL[resource_type])
    out: dict[str, Any] = {}
    missing = []
    for keyword in keywords:
        if keyword in known:
            out[keyword] = known[keyword]
        elif keyword in computed and keyword.startswith(("NumberOf", "ModalitiesIn", "SOPClassesIn")):
            value = computed[keyword]
            out[keyword] = str(value) if value is not None else ""
        else:
            missing.append(keyword)
    if missing and store is not None:
        out.update(_from_file(resource_type, row, missing, store))
    return out


def _from_file(resource_type: str, row: Any, keywords: list[str], store: Store) -> dict[str, Any]:
    from pydicom import dcmread
    from pydicom.datadict import tag_for_keyword

    from dicomnode.tags import orthanc_tags

    first = first_instance(resource_type, row)
    if first is None:
        return {}
    try:
        ds = dcmread(str(store.path(first.path)), stop_before_pixels=True)
    except Exception:
        return {}
    simplified = orthanc_tags(ds, "simplify")
    out = {}
    for keyword in keywords:
        if keyword in simplified:
            out[keyword] = simplified[keyword]
        elif tag_for_keyword(keyword) is None and re.fullmatch(r"[0-9A-Fa-f]{4},[0-9A-Fa-f]{4}", keyword):
            short = orthanc_tags(ds, "short")
            if keyword.lower() in short:
                out[keyword] = short[keyword.lower()]
    return out


def first_instance(resource_type: str, row: Any) -> Instance | None:
    q = Instance.select().join(Series).join(Study)
    if resource_type == "Instance":
        return row
    if resource_type == "Series":
        q = q.where(Series.pk == row.pk)
    elif resource_type == "Study":
        q = q.where(Study.pk == row.pk)
    else:
        q = q.where(Study.patient == row.pk)
    return q.order_by(Instance.pk).first()


# -- lists -------------------------------------------------------------------------------------


_FK = {Instance: "series", Series: "study", Study: "patient"}


def fast_rows(q: Any, model: Any, sql: tuple[str, list[Any]] | None = None) -> list[Any]:
    """The ``model`` rows of ``q`` (a select of whole models joined upwards, in any order) as
    model instances with their parents attached, as peewee builds them but about three times
    faster: from plain tuples, each instance's ``__data__`` set at once (``?expand``, ``/tools/find``)."""
    layout: list[tuple[Any, list[str], int, int]] = []  # (model, field names, start, end)
    for pos, field in enumerate(q._returning):
        if layout and layout[-1][0] is field.model:
            layout[-1][1].append(field.name)
            layout[-1] = (*layout[-1][:3], pos + 1)
        else:
            layout.append((field.model, [field.name], pos, pos + 1))
    # Only the fields whose database value is not already Python's are converted (dates kept
    # as text by SQLite, booleans as integers); ints and strings come as they are.
    convert = [(pos, field.python_value) for pos, field in enumerate(q._returning)
               if isinstance(field, (peewee.DateTimeField, peewee.DateField, peewee.BooleanField))]
    out = []
    database = q.model._meta.database
    for raw in (database.execute_sql(*sql) if sql else database.execute(q)):
        values = list(raw)
        for pos, to_python in convert:
            values[pos] = to_python(values[pos])
        objs = {}
        for m, names, start, stop in layout:
            obj = m.__new__(m)
            obj.__data__ = dict(zip(names, values[start:stop], strict=True))
            obj._dirty = set()
            obj.__rel__ = {}
            objs[m] = obj
        for child, fk in _FK.items():
            parent = getattr(child, fk).rel_model
            if child in objs and parent in objs:
                objs[child].__rel__[fk] = objs[parent]
        out.append(objs[model])
    return out


def list_rows(resource_type: str, *, since: int = 0, limit: int = 0) -> list[Any]:
    """``GET /studies?since=&limit=``: rows in index order (``limit`` 0: all)."""
    if since < 0 or limit < 0:
        raise OutOfRange("since and limit cannot be negative")
    q, sql = _list_query(resource_type, type(index.db.obj))
    param = index.db.obj.param
    if limit or since:  # LIMIT -1 is SQLite's "no limit"; PostgreSQL's is LIMIT ALL
        no_limit = "ALL" if param == "%s" else "-1"
        sql = f"{sql} LIMIT {param if limit else no_limit} OFFSET {param}"
    params = ([limit] if limit else []) + ([since] if limit or since else [])
    return fast_rows(q, MODEL[resource_type], (sql, params))


@functools.lru_cache(maxsize=16)
def _list_query(resource_type: str, _database_class: type) -> tuple[Any, str]:
    # The list's SQL is compiled once per level (and database kind): compiling it cost a
    # millisecond, as much as running it on a page of 100.
    q = _with_parents(resource_type, MODEL[resource_type].select(*_models(resource_type)))
    q = q.order_by(MODEL[resource_type].pk)
    sql, params = q.sql()
    assert not params
    return q, sql


def _models(resource_type: str) -> list[Any]:
    return [MODEL[t] for t in reversed(TYPES[: TYPES.index(resource_type) + 1])]


def _with_parents(resource_type: str, q: Any) -> Any:
    chain = _models(resource_type)
    for child, parent in zip(chain, chain[1:], strict=False):
        q = q.switch(child).join(parent)
    return q


def children(resource_type: str, row: Any, wanted: str) -> list[Any]:
    """Rows of ``wanted`` (a level below ``resource_type``) under ``row``, in index order."""
    if TYPES.index(wanted) <= TYPES.index(resource_type):
        raise OutOfRange(f"A {resource_type} has no {wanted} children")
    model = MODEL[wanted]
    q = _with_parents(wanted, model.select(*_models(wanted)))
    q = q.where(MODEL[resource_type].pk == row.pk)
    return fast_rows(q.order_by(model.pk), model)


def statistics(resource_type: str, row: Any) -> dict[str, Any]:
    """``GET /{level}/{id}/statistics`` with Orthanc's fields (sizes as strings)."""
    size = int(row.file_size if resource_type == "Instance" else row.size or 0)
    body: dict[str, Any] = {}
    if resource_type == "Patient":
        body["CountStudies"] = row.num_studies
    if resource_type in ("Patient", "Study"):
        body["CountSeries"] = row.num_series
    if resource_type != "Instance":
        body["CountInstances"] = row.num_instances
    mb = size // (1024 * 1024)
    body.update({"DicomDiskSize": str(size), "DicomDiskSizeMB": mb, "DicomUncompressedSize": str(size),
                 "DicomUncompressedSizeMB": mb, "DiskSize": str(size), "DiskSizeMB": mb,
                 "UncompressedSize": str(size), "UncompressedSizeMB": mb})
    return dict(sorted(body.items()))


def instance_rows(resource_type: str, row: Any) -> list[Instance]:
    """The instances of a resource, in index order."""
    if resource_type == "Instance":
        return [row]
    return children(resource_type, row, "Instance")


# -- /tools/find ---------------------------------------------------------------------------------

_FIND_KEYS = {"Level", "Query", "Expand", "Limit", "Since", "CaseSensitive", "RequestedTags", "Labels",
              "LabelsConstraint", "Full", "Short", "Simplify", "ResponseContent", "ParentPatient", "ParentStudy",
              "ParentSeries", "OrderBy"}
_TAG_KEY = re.compile(r"([0-9A-Fa-f]{4}),?([0-9A-Fa-f]{4})")


def _keyword(key: str) -> str:
    from pydicom.datadict import keyword_for_tag

    m = _TAG_KEY.fullmatch(key.strip("()"))
    if m:
        keyword = keyword_for_tag(int(m.group(1) + m.group(2), 16))
        if keyword:
            return str(keyword)
    return key


def _int_option(body: dict[str, Any], name: str) -> int:
    value = body.get(name) or 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"{name} must be a non-negative integer, not {value!r}"[:120])
    if value < 0:
        raise OutOfRange(f"{name} cannot be negative ({value})")
    return value


def _wildcard_regex(pattern: str, fold: bool) -> re.Pattern[str]:
    return re.compile(fnmatch.translate(pattern), re.IGNORECASE if fold else 0)


def _matches(value: str, pattern: str, vr: str, fold: bool) -> bool:
    """Orthanc's matching of one main tag kept as text (not an index column)."""
    for one in pattern.split("\\"):
        if "*" in one or "?" in one:
            if _wildcard_regex(one, fold).fullmatch(value):
                return True
        elif "-" in one and vr in ("DA", "TM", "DT"):
            low, _, high = one.partition("-")
            if (not low or value >= low) and (not high or value[: len(high)] <= high):
                return True
        elif (value.lower() == one.lower()) if fold else (value == one):
            return True
    return False


def find(body: Any, *, case_sensitive_pn: bool = False) -> tuple[str, list[Any], dict[str, Any]]:
    """Run a ``POST /tools/find`` body: (resource type, matching rows, options for the answer);
    the rows are public ids unless ``options["expand"]``.

    Raises
    ------
    BadRequest, OutOfRange
        For a body that is not Orthanc's: the message says which field.
    """
    if not isinstance(body, dict):
        raise BadRequest("The body must contain a JSON object")
    unknown = sorted(set(body) - _FIND_KEYS)
    if unknown:
        raise BadRequest(f"Unknown field(s) in /tools/find: {', '.join(unknown)[:200]}")
    if "Level" not in body:
        raise BadRequest("Field Level is missing: Patient, Study, Series or Instance")
    resource_type = level_of(body["Level"])
    criteria = body.get("Query", {})
    if not isinstance(criteria, dict):
        raise BadRequest("Query must be a JSON object of {tag: value}")
    limit, since = _int_option(body, "Limit"), _int_option(body, "Since")
    fold = not (body["CaseSensitive"] if isinstance(body.get("CaseSensitive"), bool) else case_sensitive_pn)
    level = QUERY_LEVEL[resource_type]
    sql: dict[str, str] = {}
    post: list[tuple[str, str, str]] = []
    depth = TYPES.index(resource_type)
    for key, value in criteria.items():
        if not isinstance(value, str):
            raise BadRequest(f"The value of {key} in Query must be a string")
        keyword = _keyword(str(key))
        owner = next((t for t in TYPES if keyword in maintags.BY_LEVEL[t]), None)
        attr = query.attribute(keyword)
        if owner is not None and TYPES.index(owner) > depth:
            raise BadRequest(f"{keyword} is a {owner}-level tag: it cannot filter {resource_type} results")
        if value in ("", "*"):
            continue
        if attr is not None and attr.field is not None and (owner is None or TYPES.index(owner) <= depth) \
                and _DEPTH_OF_QUERY_LEVEL[attr.level] <= depth:
            if "\\" in value and attr.vr != "UI":
                post.append((keyword, value, attr.vr))  # a list of values: matched below
            else:
                sql[keyword] = value
        elif owner is not None:
            post.append((keyword, value, _vr(keyword)))
        else:
            raise BadRequest(f"{keyword} is not one of the main DICOM tags Dolmen indexes; the tags that can "
                             f"be matched at the {resource_type} level are: "
                             + ", ".join(t for lv in TYPES[: depth + 1] for t in maintags.BY_LEVEL[lv]))
    q = query.select(level, sql, case_sensitive_pn=not fold)
    labels = body.get("Labels", [])
    if labels:
        if not isinstance(labels, list) or not all(isinstance(lb, str) for lb in labels):
            raise BadRequest("Labels must be a list of strings")
        q = q.where(changes.with_labels(resource_type, labels, body.get("LabelsConstraint", "All")))
    for parent_key, parent_type in (("ParentPatient", "Patient"), ("ParentStudy", "Study"), ("ParentSeries", "Series")):
        if parent_key in body:  # Orthanc 1.12.5's extended find
            if TYPES.index(parent_type) >= depth:
                raise BadRequest(f"{parent_key} cannot restrict {resource_type} results")
            if not isinstance(body[parent_key], str):
                raise BadRequest(f"{parent_key} must be a resource id")
            q = q.where(MODEL[parent_type].public_id == body[parent_key])
    q = q.order_by(*_order_by(resource_type, body.get("OrderBy")), MODEL[resource_type].pk)
    options = _find_options(body)
    if not post:
        if since:
            q = q.offset(since)
        if limit:
            q = q.limit(limit)
        elif since and isinstance(MODEL[resource_type]._meta.database.obj, peewee.SqliteDatabase):
            q = q.limit(-1)
        if not options["expand"]:  # the ids are all the answer needs
            return resource_type, [pid for (pid,) in q.select(MODEL[resource_type].public_id).tuples()], options
        rows = fast_rows(q, MODEL[resource_type])
    else:
        rows = []
        skipped = 0
        for row in q.iterator():
            if not all(_post_match(resource_type, row, kw, pattern, vr, fold) for kw, pattern, vr in post):
                continue
            if skipped < since:
                skipped += 1
                continue
            rows.append(row)
            if limit and len(rows) >= limit:
                break
        if not options["expand"]:
            return resource_type, [row.public_id for row in rows], options
    return resource_type, rows, options


def _find_options(body: dict[str, Any]) -> dict[str, Any]:
    requested_tags = body.get("RequestedTags") or []
    if not isinstance(requested_tags, list) or not all(isinstance(t, str) for t in requested_tags):
        raise BadRequest("RequestedTags must be a list of tag names")
    content = body.get("ResponseContent")
    if content is not None and (not isinstance(content, list) or not all(isinstance(c, str) for c in content)):
        raise BadRequest("ResponseContent must be a list of names")
    options = {"expand": bool(body.get("Expand")) or bool(content),
               "requested_tags": [_keyword(t) for t in requested_tags], "metadata": "Metadata" in (content or [])}
    return options


def _order_by(resource_type: str, order: Any) -> list[Any]:
    """Orthanc 1.12.5's ``OrderBy``: ``[{"Type": "DicomTag"|"Metadata", "Key": ..., "Direction": "ASC"|"DESC"}]``."""
    if not order:
        return []
    if not isinstance(order, list) or not all(isinstance(o, dict) for o in order):
        raise BadRequest("OrderBy must be a list of {Type, Key, Direction}")
    out = []
    depth = TYPES.index(resource_type)
    for item in order:
        kind, key, direction = item.get("Type"), str(item.get("Key", "")), str(item.get("Direction", "ASC")).upper()
        if direction not in ("ASC", "DESC"):
            raise BadRequest(f"OrderBy Direction {direction[:10]!r} is not ASC or DESC")
        if kind == "Metadata" and key == "LastUpdate":
            model = MODEL[resource_type]
            field = model.received_at if resource_type == "Instance" else model.updated_at
        elif kind == "DicomTag":
            attr = query.attribute(_keyword(key))
            if attr is None or attr.field is None or _DEPTH_OF_QUERY_LEVEL[attr.level] > depth:
                raise BadRequest(f"Cannot order {resource_type} results by {key[:40]!r}: order by an indexed tag "
                                 "of the level or above, or by the LastUpdate metadata")
            field = attr.field
        else:
            raise BadRequest(f"Cannot order by {kind!r} {key[:40]!r}: use DicomTag or Metadata LastUpdate")
        out.append(field.desc() if direction == "DESC" else field.asc())
    return out


_DEPTH_OF_QUERY_LEVEL = {query.PATIENT: 0, query.STUDY: 1, query.SERIES: 2, query.IMAGE: 3}


def _vr(keyword: str) -> str:
    from pydicom.datadict import dictionary_VR
    from pydicom.datadict import tag_for_keyword

    tag = tag_for_keyword(keyword)
    return str(dictionary_VR(tag)) if tag is not None else "LO"


def _post_match(resource_type: str, row: Any, keyword: str, pattern: str, vr: str, fold: bool) -> bool:
    owner = next((t for t in TYPES if keyword in maintags.BY_LEVEL[t]), resource_type)
    tags = maintags.of_row(owner, ancestor(resource_type, row, owner))
    value = tags.get(keyword)
    if value is None:
        return False
    return _matches(value, pattern, vr, fold and vr == "PN")


def count_resources() -> dict[str, int]:
    """``GET /tools/count-resources``."""
    return {"CountInstances": Instance.select().count(), "CountPatients": Patient.select().count(),
            "CountSeries": Series.select().count(), "CountStudies": Study.select().count()}


def global_statistics() -> dict[str, Any]:
    """``GET /statistics``, with Orthanc's fields."""
    size = int(Patient.select(fn.COALESCE(fn.SUM(Patient.size), 0)).scalar() or 0)
    counts = count_resources()
    mb = size // (1024 * 1024)
    return {**counts, "TotalDiskSize": str(size), "TotalDiskSizeMB": mb,
            "TotalUncompressedSize": str(size), "TotalUncompressedSizeMB": mb}


def shared_tags(datasets: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The elements whose value is the same in every data set (full form dictionaries)."""
    shared: dict[str, Any] | None = None
    for tags in datasets:
        if shared is None:
            shared = dict(tags)
        else:
            for key in list(shared):
                if key not in tags or tags[key] != shared[key]:
                    del shared[key]
    return shared or {}
