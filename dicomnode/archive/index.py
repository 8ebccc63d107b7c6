"""The index: peewee models for Patient → Study → Series → Instance and Dolmen's own records.

One :data:`db` proxy is bound by :func:`open_index` to SQLite (WAL mode, so the web process
reads while the sidecar writes) or PostgreSQL, with the same models. Text columns hold
Unicode decoded with the file's (0008,0005) *Specific Character Set*; dates are kept as DICOM
strings (``YYYYMMDD``) so that range matching is a string comparison.

Counters (``num_instances``, ``size``...) are kept up to date by :mod:`dicomnode.archive.ingest` in
the same transaction as the rows, so lists with 100,000 studies never count on the fly.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import sqlite3
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlparse

import peewee
from peewee import SQL
from peewee import AutoField
from peewee import BigIntegerField
from peewee import BooleanField
from peewee import CharField
from peewee import DatabaseProxy
from peewee import DateTimeField
from peewee import FloatField
from peewee import ForeignKeyField
from peewee import IntegerField
from peewee import Model
from peewee import TextField

from dicomnode.errors import DolmenError

LOGGER = logging.getLogger(__name__)

db = DatabaseProxy()

#: Serialises writers inside one process; SQLite's busy timeout handles other processes.
_WRITE_LOCK = threading.RLock()


def rows_with_pks(model: Any, fk: Any, pks: list[int], column: str, *, order: str = "",
                  equals: dict[str, Any] | None = None) -> Iterator[tuple[int, Any]]:
    """``(fk value, column value)`` of the ``model`` rows whose ``fk`` is one of ``pks``.

    Plain SQL with one placeholder per key, 500 at a time: for the children and labels of a
    listed page, where building peewee's ``IN`` expression cost more than running it.
    """
    database = model._meta.database
    table, fk_column, param = model._meta.table_name, fk.column_name, database.param
    extra = "".join(f' AND "{name}" = {param}' for name in (equals or {}))
    tail = f' ORDER BY "{order}"' if order else ""
    for start in range(0, len(pks), 500):
        chunk = pks[start:start + 500]
        sql = (f'SELECT "{fk_column}", "{column}" FROM "{table}" WHERE "{fk_column}" IN '
               f'({", ".join([param] * len(chunk))}){extra}{tail}')
        yield from database.execute_sql(sql, [*chunk, *(equals or {}).values()])


def utcnow() -> dt.datetime:
    """Naive UTC now, as stored in every timestamp column."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


class BaseModel(Model):
    class Meta:
        database = db
        legacy_table_names = False


class Patient(BaseModel):
    """A patient, identified like Orthanc by the SHA-1 of (0010,0020) *Patient ID*."""

    pk = AutoField()
    public_id = CharField(max_length=44, unique=True)
    patient_id = CharField(default="", index=True)
    patient_name = CharField(default="")
    patient_name_key = CharField(default="", index=True)  # upper-cased, for case-insensitive PN matching
    # The ideographic and phonetic component groups alone, upper-cased (PS3.5 6.2.1.1:
    # "Yamada^Tarou=山田^太郎=やまだ^たろう"), so that "山田*" finds the patient with an index.
    patient_name_ideo = CharField(default="", index=True, constraints=[SQL("DEFAULT ''")])
    patient_name_phon = CharField(default="", index=True, constraints=[SQL("DEFAULT ''")])
    patient_birth_date = CharField(default="")
    patient_sex = CharField(default="")
    num_studies = IntegerField(default=0)
    num_series = IntegerField(default=0)
    num_instances = IntegerField(default=0)
    size = BigIntegerField(default=0)
    created_at = DateTimeField(default=utcnow)
    updated_at = DateTimeField(default=utcnow)
    main_tags = TextField(default="", constraints=[SQL("DEFAULT ''")])  # JSON: Orthanc's main DICOM tags of the level (dicomnode.archive.maintags)
    stable = BooleanField(default=False, constraints=[SQL("DEFAULT FALSE")])  # a Stable* change was logged since the last new instance


class Study(BaseModel):
    """A study: (0020,000D) *Study Instance UID* within a patient."""

    pk = AutoField()
    public_id = CharField(max_length=44, unique=True)
    patient = ForeignKeyField(Patient, backref="studies", column_name="patient_pk", on_delete="CASCADE")
    study_instance_uid = CharField(max_length=64, index=True)
    study_date = CharField(default="", index=True)
    study_time = CharField(default="")
    study_description = CharField(default="")
    accession_number = CharField(default="", index=True)
    study_id = CharField(default="")
    referring_physician_name = CharField(default="")
    modalities_in_study = CharField(default="")  # backslash-separated, sorted
    sop_classes_in_study = TextField(default="")  # backslash-separated, sorted
    num_series = IntegerField(default=0)
    num_instances = IntegerField(default=0)
    size = BigIntegerField(default=0)
    created_at = DateTimeField(default=utcnow, index=True)
    updated_at = DateTimeField(default=utcnow)
    main_tags = TextField(default="", constraints=[SQL("DEFAULT ''")])
    stable = BooleanField(default=False, constraints=[SQL("DEFAULT FALSE")])

    class Meta:
        # The study list's default order (newest first) read from an index alone, so a deep
        # page of 100,000 studies skips its offset without touching the table.
        indexes = ((("study_date", "study_time"), False),)


class Series(BaseModel):
    """A series: (0020,000E) *Series Instance UID* within a study."""

    pk = AutoField()
    public_id = CharField(max_length=44, unique=True)
    study = ForeignKeyField(Study, backref="series", column_name="study_pk", on_delete="CASCADE")
    series_instance_uid = CharField(max_length=64, index=True)
    modality = CharField(default="", index=True)
    series_number = IntegerField(null=True)
    series_description = CharField(default="")
    body_part_examined = CharField(default="")
    series_date = CharField(default="")
    series_time = CharField(default="")
    num_instances = IntegerField(default=0)
    size = BigIntegerField(default=0)
    created_at = DateTimeField(default=utcnow)
    updated_at = DateTimeField(default=utcnow)
    main_tags = TextField(default="", constraints=[SQL("DEFAULT ''")])
    stable = BooleanField(default=False, constraints=[SQL("DEFAULT FALSE")])


class Instance(BaseModel):
    """One stored object: its file in the store and where it came from."""

    pk = AutoField()
    public_id = CharField(max_length=44, unique=True)
    series = ForeignKeyField(Series, backref="instances", column_name="series_pk", on_delete="CASCADE")
    sop_instance_uid = CharField(max_length=64, unique=True)
    sop_class_uid = CharField(max_length=64, default="")
    instance_number = IntegerField(null=True)
    number_of_frames = IntegerField(default=1)
    transfer_syntax_uid = CharField(max_length=64, default="")
    file_size = BigIntegerField(default=0)
    path = CharField(max_length=255, unique=True)  # relative to the storage root, server-generated
    received_at = DateTimeField(default=utcnow)
    origin = CharField(default="")  # dicom | upload | stow | import | retrieve
    sender_aet = CharField(default="")
    sender_ip = CharField(default="")
    called_aet = CharField(default="")
    main_tags = TextField(default="", constraints=[SQL("DEFAULT ''")])


class Modality(BaseModel):
    """A remote DICOM node added in the modalities page (config ones are not stored here)."""

    pk = AutoField()
    name = CharField(unique=True)
    aet = CharField(max_length=16)
    host = CharField()
    port = IntegerField(default=104)
    allow = CharField(default="echo,store,find,move,get")
    description = CharField(default="")
    fallback_get = BooleanField(default=False)
    created_at = DateTimeField(default=utcnow)
    tls = BooleanField(default=False, constraints=[SQL("DEFAULT FALSE")])  # DICOM over TLS both ways


class Job(BaseModel):
    """A long-running operation (send, retrieve, DICOMweb transfer) run by the sidecar."""

    pk = AutoField()
    kind = CharField()  # send | move | get | stow | wado
    state = CharField(default="pending", index=True)  # pending running success failure cancelled
    target = CharField(default="")
    description = CharField(default="")
    params = TextField(default="{}")  # JSON
    total = IntegerField(default=0)
    done = IntegerField(default=0)
    failed = IntegerField(default=0)
    warning = IntegerField(default=0)
    bytes_done = BigIntegerField(default=0)
    error = TextField(default="")
    details = TextField(default="[]")  # JSON list of per-instance failures / transcript
    created_at = DateTimeField(default=utcnow, index=True)
    started_at = DateTimeField(null=True)
    ended_at = DateTimeField(null=True)
    cancel_requested = BooleanField(default=False)
    node = CharField(default="")  # the node running it (several nodes share a PostgreSQL index)
    beat_at = DateTimeField(null=True)  # that node's last sign of life while it runs the job


class AssociationEvent(BaseModel):
    """One inbound association or operation, accepted or refused, for the association log."""

    pk = AutoField()
    at = DateTimeField(default=utcnow, index=True)
    calling_aet = CharField(default="")
    called_aet = CharField(default="")
    peer_ip = CharField(default="")
    operation = CharField(default="")  # associate | echo | store | find | move | get
    accepted = BooleanField(default=True)
    reason = TextField(default="")
    count = IntegerField(default=0)
    duration = FloatField(default=0.0)


class DicomwebServer(BaseModel):
    """A remote DICOMweb server added in the DICOMweb page (config ones are not stored here)."""

    pk = AutoField()
    name = CharField(unique=True)
    url = CharField(max_length=1024)
    username = CharField(default="")
    password = CharField(default="")  # sent as HTTP Basic; kept like the config file keeps it
    headers = TextField(default="{}")  # JSON object of extra HTTP headers
    created_at = DateTimeField(default=utcnow)


class Change(BaseModel):
    """One entry of Orthanc's change log (``GET /changes``): NewInstance ... StableStudy, Deleted."""

    seq = AutoField()
    change_type = CharField()
    resource_type = CharField()  # Patient | Study | Series | Instance
    public_id = CharField(max_length=44)
    at = DateTimeField(default=utcnow)


class Label(BaseModel):
    """A label on a patient, study, series or instance (Orthanc 1.12's labels).

    One foreign key per level, so that deleting the resource (or a parent) deletes its labels.
    """

    pk = AutoField()
    label = CharField(max_length=64, index=True)
    level = CharField()  # Patient | Study | Series | Instance
    patient = ForeignKeyField(Patient, null=True, column_name="patient_pk", on_delete="CASCADE")
    study = ForeignKeyField(Study, null=True, column_name="study_pk", on_delete="CASCADE")
    series = ForeignKeyField(Series, null=True, column_name="series_pk", on_delete="CASCADE")
    instance = ForeignKeyField(Instance, null=True, column_name="instance_pk", on_delete="CASCADE")

    class Meta:
        indexes = ((("level", "patient", "study", "series", "instance", "label"), True),)


class Export(BaseModel):
    """The export journal: one anonymization or modification, who asked, from what, to what.

    Kept when the source or the result is deleted later (ids and UIDs are text, not keys).
    """

    pk = AutoField()
    at = DateTimeField(default=utcnow, index=True)
    user = CharField(default="")  # the web user, or the calling program's address
    kind = CharField()  # anonymize | modify
    level = CharField()  # Patient | Study | Series | Instance
    source_id = CharField(max_length=44, index=True)
    source_label = CharField(default="")  # e.g. "DOE^JOHN / CT head 2024-01-02", for the journal page
    result_id = CharField(max_length=44, default="", index=True)
    profile = CharField(default="")
    options = TextField(default="[]")  # JSON list of the options
    instances = IntegerField(default=0)
    failed = IntegerField(default=0)
    status = CharField(default="running")  # running | success | failure
    message = TextField(default="")
    job = IntegerField(null=True)


MODELS: tuple[type[BaseModel], ...] = (Patient, Study, Series, Instance, Modality, Job, AssociationEvent,
                                       DicomwebServer, Change, Label, Export)


class IndexUnavailable(DolmenError):
    """The index database cannot be opened or answered with an error."""

    code = "index_unavailable"
    http_status = 503


def _sqlite_path(url: str) -> str:
    path = url[len("sqlite:///"):]
    return path


class _ReapsDeadThreads:
    """Closes the connections of threads that have ended, whenever a thread connects; keeps a
    few closed connections open for the next thread that connects.

    Each thread has its own connection (peewee keeps it in a thread-local). A thread that ends
    without :func:`close_index` (a socketserver request thread, a pynetdicom event raised outside
    the association thread) leaves its connection to the garbage collector, three file
    descriptors each on SQLite, closed at no predictable time; here the next connect closes it.

    Every DICOM association runs in a thread of its own that connects once and closes at its
    end: opening a connection (with its pragmas) took ~0.4 ms on SQLite and ~18 ms on
    PostgreSQL, a large part of a C-FIND. Up to :attr:`IDLE_CONNECTIONS` closed connections
    outside a transaction stay open and are handed to the next connect instead.
    """

    _owners_lock = threading.Lock()
    IDLE_CONNECTIONS = 4

    def _connect(self) -> Any:
        conn = None
        with self._owners_lock:
            idle: list[Any] = self.__dict__.setdefault("_idle", [])
            if idle:
                conn = idle.pop()
        if conn is None or not self._alive(conn):
            if conn is not None:
                self.__dict__.get("_file_ids", {}).pop(id(conn), None)
                with contextlib.suppress(Exception):
                    conn.close()
            conn = super()._connect()  # type: ignore[misc]
            if isinstance(conn, sqlite3.Connection):
                with contextlib.suppress(OSError):
                    st = os.stat(self.database)  # type: ignore[attr-defined]
                    with self._owners_lock:
                        self.__dict__.setdefault("_file_ids", {})[id(conn)] = (st.st_dev, st.st_ino)
        me = threading.current_thread()
        with self._owners_lock:
            owners: dict[int, tuple[threading.Thread, Any]] = self.__dict__.setdefault("_owners", {})
            for key, (thread, old) in list(owners.items()):
                if not thread.is_alive():
                    del owners[key]
                    self.__dict__.get("_file_ids", {}).pop(key, None)
                    with contextlib.suppress(Exception):
                        old.close()
            owners[id(conn)] = (me, conn)
        return conn

    def _close(self, conn: Any) -> None:
        with self._owners_lock:
            self.__dict__.get("_owners", {}).pop(id(conn), None)
            idle: list[Any] = self.__dict__.setdefault("_idle", [])
            if len(idle) < self.IDLE_CONNECTIONS and _reusable(conn):
                idle.append(conn)
                return
            self.__dict__.get("_file_ids", {}).pop(id(conn), None)
        super()._close(conn)  # type: ignore[misc]

    def _alive(self, conn: Any) -> bool:
        """Whether a kept connection still reaches the index: on SQLite, the database file it
        opened is still the one at its path; elsewhere, the server answers (a restarted
        PostgreSQL leaves connections that look idle but fail at the first statement)."""
        if not _reusable(conn):
            return False
        if isinstance(conn, sqlite3.Connection):
            try:
                st = os.stat(self.database)  # type: ignore[attr-defined]
            except OSError:
                return False
            return self.__dict__.get("_file_ids", {}).get(id(conn)) == (st.st_dev, st.st_ino)
        try:
            with conn.cursor() as cursor:
                cursor.execute("SELECT 1")
                cursor.fetchone()
            return _reusable(conn)
        except Exception:  # noqa: BLE001 - any failure: open a new connection instead
            return False

    def close_idle(self) -> None:
        """Close the connections kept for reuse."""
        with self._owners_lock:
            idle, self.__dict__["_idle"] = self.__dict__.get("_idle", []), []
        for conn in idle:
            with contextlib.suppress(Exception):
                conn.close()


def _reusable(conn: Any) -> bool:
    """An open connection outside any transaction (SQLite's sqlite3, PostgreSQL's psycopg)."""
    try:
        if isinstance(conn, sqlite3.Connection):
            return not conn.in_transaction
        if getattr(conn, "closed", True):
            return False
        status = conn.get_transaction_status() if hasattr(conn, "get_transaction_status") else conn.info.transaction_status
        return int(status) == 0  # idle
    except Exception:  # noqa: BLE001 - a connection that cannot say is not reused
        return False


class _SqliteIndex(_ReapsDeadThreads, peewee.SqliteDatabase):
    pass


class _PostgresqlIndex(_ReapsDeadThreads, peewee.PostgresqlDatabase):
    pass


def open_index(url: str, *, synchronous_full: bool = True, create: bool = True,
               busy_timeout: float = 30.0) -> peewee.Database:
    """Open the index at ``url``, bind :data:`db` to it and create missing tables.

    Parameters
    ----------
    url : str
        ``sqlite:///path/to/index.db`` or ``postgresql://user:password@host:port/dbname``.
    synchronous_full : bool
        SQLite ``synchronous=FULL`` (every commit reaches the disk) when True, else ``NORMAL``
        (safe against a crash of Dolmen, not of the machine).
    create : bool
        Create tables that do not exist yet.
    busy_timeout : float
        SQLite: seconds a statement waits for a lock held by another connection
        (``[storage] busy_timeout``).

    Raises
    ------
    IndexUnavailable
        When the database cannot be opened.
    """
    database: peewee.Database
    if url.startswith("sqlite:///"):
        path = _sqlite_path(url)
        parent = os.path.dirname(os.path.abspath(path))
        os.makedirs(parent, exist_ok=True)
        database = _SqliteIndex(
            path,
            pragmas={
                "journal_mode": "wal",
                "busy_timeout": int(busy_timeout * 1000),
                "synchronous": "full" if synchronous_full else "normal",
                "foreign_keys": 1,
                "cache_size": -32000,
                "temp_store": "memory",
            },
            timeout=busy_timeout,
            check_same_thread=False,
        )
    elif url.startswith(("postgresql://", "postgres://")):
        parsed = urlparse(url)
        database = _PostgresqlIndex(
            (parsed.path or "/").lstrip("/") or "dolmen",
            user=parsed.username,
            password=parsed.password,
            host=parsed.hostname,
            port=parsed.port or 5432,
            autorollback=True,
        )
    else:
        raise IndexUnavailable(f"Unsupported database URL {url!r}: use sqlite:/// or postgresql://")
    if isinstance(db.obj, _ReapsDeadThreads):
        db.obj.close_idle()  # an earlier index of this process
    db.initialize(database)
    try:
        database.connect(reuse_if_open=True)
        if create:
            with _WRITE_LOCK:
                # Columns first: create_tables also makes the indexes of every field, and an index
                # on a column an old table lacks fails on PostgreSQL and, on SQLite, indexes the
                # constant string of its name (a double-quoted unknown identifier is a string
                # there), which corrupted the index at the first update of the new column.
                _add_missing_columns(database)
                database.create_tables(MODELS, safe=True)
                if isinstance(database, peewee.PostgresqlDatabase):
                    # PostgreSQL's b-tree in the database's collation serves no LIKE 'FAMILY^%':
                    # a PatientName wildcard read every patient. text_pattern_ops serves it.
                    for column in ("patient_name_key", "patient_name_ideo", "patient_name_phon"):
                        database.execute_sql(f"CREATE INDEX IF NOT EXISTS {column}_pattern "
                                             f"ON patient ({column} text_pattern_ops)")
    except peewee.OperationalError as exc:
        raise IndexUnavailable(f"The index at {url} cannot be opened: {exc}") from exc
    return database


def name_groups(name: str) -> tuple[str, str]:
    """The ideographic and phonetic component groups of a person name, upper-cased."""
    groups = name.upper().split("=")
    return (groups[1] if len(groups) > 1 else ""), (groups[2] if len(groups) > 2 else "")


def _fill_name_groups(database: peewee.Database) -> None:
    """Set the name-group columns of patients indexed before they existed."""
    p = database.param
    rows = database.execute_sql("SELECT pk, patient_name FROM patient WHERE patient_name LIKE '%=%'").fetchall()
    with database.atomic():
        for pk, name in rows:
            ideo, phon = name_groups(str(name))
            database.execute_sql(f"UPDATE patient SET patient_name_ideo = {p}, patient_name_phon = {p} WHERE pk = {p}",
                                 (ideo, phon, pk))


def _add_missing_columns(database: peewee.Database) -> None:
    """Add the columns a newer Dolmen declares to the tables of an older index (new columns only).

    Plain ``ALTER TABLE ... ADD COLUMN ... NOT NULL DEFAULT``: peewee's migrator rebuilds a
    SQLite table to make a column NOT NULL, and dropping the old table would cascade to its
    children. Two processes may open an old index at once: a column the other added is fine.
    """
    ddl = {TextField: "TEXT NOT NULL DEFAULT ''", CharField: "VARCHAR(255) NOT NULL DEFAULT ''",
           BooleanField: "BOOLEAN NOT NULL DEFAULT FALSE", IntegerField: "INTEGER NOT NULL DEFAULT 0",
           DateTimeField: "TIMESTAMP"}  # a nullable date: the new rows set it
    tables = set(database.get_tables())
    for model in MODELS:
        table = model._meta.table_name
        if table not in tables:
            continue  # a new table: create_tables makes it whole
        present = {c.name for c in database.get_columns(table)}
        for field in model._meta.sorted_fields:
            if field.column_name in present:
                continue
            kind = ddl.get(type(field))
            if kind is None:
                raise IndexUnavailable(f"The index lacks {table}.{field.column_name} and it cannot be added "
                                       "in place: export the archive and re-import it")
            LOGGER.info("Adding the column %s.%s to the index", table, field.column_name)
            try:
                with database.atomic():
                    database.execute_sql(f'ALTER TABLE "{table}" ADD COLUMN "{field.column_name}" {kind}')
            except (peewee.OperationalError, peewee.ProgrammingError) as exc:
                if "duplicate" not in str(exc).lower() and "already exists" not in str(exc).lower():
                    raise
            if field.index:
                database.execute_sql(f'CREATE INDEX IF NOT EXISTS "{table}_{field.column_name}" '
                                     f'ON "{table}" ("{field.column_name}")')
            if field.column_name == "patient_name_phon":
                _fill_name_groups(database)


@contextlib.contextmanager
def write_transaction() -> Iterator[Any]:
    """A write transaction that takes the write lock up front.

    On SQLite, ``BEGIN IMMEDIATE`` avoids the deadlock of two readers upgrading to writers
    (where SQLite fails at once instead of waiting out the busy timeout); inside one process a
    lock serialises writers so threads do not spin on the busy handler.
    """
    with _WRITE_LOCK:
        database = db.obj
        if isinstance(database, peewee.SqliteDatabase):
            with database.atomic("IMMEDIATE") as txn:
                yield txn
        else:
            with database.atomic() as txn:
                yield txn


def close_index() -> None:
    """Close this thread's connection, if any."""
    if db.obj is not None and not db.is_closed():
        db.close()
