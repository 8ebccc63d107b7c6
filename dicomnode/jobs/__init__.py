"""Jobs: long work (send, retrieve, DICOMweb transfers) run by the sidecar, with state in the index.

A job is a row of :class:`~dicomnode.archive.index.Job`, so the jobs page reads it directly and it
survives a restart of the sidecar. Its life::

    pending ──> running ──> success | failure | cancelled
       └──────────────────> cancelled            (cancelled before it started)

A job still ``running`` when the sidecar died is marked ``failure`` with the error
"interrupted: the DICOM service restarted" when the next sidecar starts
(:meth:`Runner.start`); it can be retried.

The API for a new kind of job
-----------------------------
A *kind* is a name and a function that does the work in a runner thread of the sidecar::

    from dicomnode import jobs

    def run_wado(job: jobs.JobContext) -> None:
        urls = job.params["urls"]
        job.progress(total=len(urls))
        for n, url in enumerate(urls, 1):
            job.check_cancelled()            # raises JobCancelled when a cancel was asked
            ...                              # fetch; job.ingestor.ingest_bytes(data, Source("retrieve", ...))
            job.progress(done=n, bytes_done=job.bytes_done + len(data))
            # a failure of one item: job.fail_item(item=url, status=404, message="...")
        if job.failed:
            raise jobs.JobFailed(f"{job.failed} of {len(urls)} instances failed")

    jobs.register_kind("wado", run_wado, label="DICOMweb retrieve")

* ``register_kind(kind, run, label=...)`` adds the kind to the registry of this process.
  Register at import time in your module and add the module's name to :data:`KIND_MODULES`
  (one line): the runner imports those modules when the sidecar starts.
* ``submit(kind, target, params, description) -> job id`` queues a job (``params`` is a
  JSON-serialisable dict, ``target`` a short name shown in the list, e.g. the modality or
  server name). It is called in the sidecar, by a control operation: the web process asks
  with ``control.call("job_submit", kind=..., target=..., params=..., description=...)``
  (or a dedicated op such as ``send``), which answers ``{"job": id}``.
* Inside ``run(job)``: ``job.params``, ``job.settings``, ``job.ingestor``, ``job.store``;
  ``job.progress(done=, total=, failed=, warning=, bytes_done=)`` (``done`` counts items
  handled successfully, warnings included; ``warning`` is a subset; written to the index at
  most every :data:`PROGRESS_INTERVAL` seconds, and always at the end);
  ``job.fail_item(**detail)`` records one failed item (with the peer's status code when there
  is one) and counts it; ``job.note(**entry)`` appends to the transcript;
  ``job.cancelled()`` / ``job.check_cancelled()`` for cancel points. Return normally for
  *success*; raise :class:`JobFailed` (or any :class:`~dicomnode.errors.DolmenError`) for
  *failure* with its message; :class:`JobCancelled` ends it *cancelled*. Any other exception
  is logged and ends the job as a failure ("internal error").
* ``cancel(job_id)`` and ``retry(job_id) -> new job id`` are the control ops ``job_cancel``
  and ``job_retry``; a retry is a new job with the same kind, target and parameters.

Concurrency is ``[jobs] concurrency`` runner threads; each takes the oldest pending job of a
registered kind. ``details`` holds a JSON list of entries, each a dict with ``"type"``:
``"failure"`` (one failed item) or ``"transcript"`` (a request or a response as it came).
"""

from __future__ import annotations

import datetime as dt
import importlib
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import peewee

from dicomnode.archive.index import Job
from dicomnode.archive.index import utcnow
from dicomnode.archive.index import write_transaction
from dicomnode.archive.ingest import Ingestor
from dicomnode.archive.store import Store
from dicomnode.config import Settings
from dicomnode.errors import DolmenError
from dicomnode.errors import NotFound

LOGGER = logging.getLogger(__name__)

PENDING = "pending"
RUNNING = "running"
SUCCESS = "success"
FAILURE = "failure"
CANCELLED = "cancelled"
STATES = (PENDING, RUNNING, SUCCESS, FAILURE, CANCELLED)
ACTIVE = (PENDING, RUNNING)
ENDED = (SUCCESS, FAILURE, CANCELLED)

INTERRUPTED = "interrupted: the DICOM service restarted"

#: Modules that register job kinds when imported (the runner imports each at start).
KIND_MODULES: tuple[str, ...] = ("dicomnode.jobs.transfer", "dicomnode.dicomweb.client", "dicomnode.jobs.modify")

#: Seconds between two progress writes of one job.
PROGRESS_INTERVAL = 0.5

#: Set by the sidecar: True while its DICOM server is receiving objects (a piece arrived in the
#: last quarter second, :class:`dicomnode.net.service.Reception`). A send job then pauses
#: :data:`YIELD_TO_RECEPTION` seconds between two instances (:meth:`JobContext.give_way`), so
#: that background work does not slow what a modality is sending us; an association that is
#: open but idle does not slow the send.
reception_busy: Callable[[], bool] | None = None
YIELD_TO_RECEPTION = 0.02
#: Entries kept in ``details`` (failures and transcript); further ones are only counted.
MAX_DETAILS = 1000
#: Seconds a runner thread waits before looking for pending jobs queued by another process.
POLL_INTERVAL = 1.0


class JobFailed(DolmenError):
    """Raised by a job's run function: the job ends as a failure with this message."""

    code = "job_failed"


class JobCancelled(DolmenError):
    """Raised at a cancel point: the job ends as cancelled."""

    code = "job_cancelled"


RunFunction = Callable[["JobContext"], None]


@dataclass(frozen=True)
class Kind:
    """A registered kind of job."""

    name: str
    run: RunFunction
    label: str


_KINDS: dict[str, Kind] = {}
_RUNNER: Runner | None = None


def register_kind(kind: str, run: RunFunction, *, label: str | None = None) -> None:
    """Register the function that runs jobs of ``kind`` (replacing an earlier registration).

    Parameters
    ----------
    kind : str
        Short snake_case name stored in the job row (``send``, ``move``, ``wado``...).
    run : callable
        ``run(job: JobContext) -> None``, called in a runner thread.
    label : str, optional
        What the jobs page shows for this kind (default: the kind).
    """
    _KINDS[kind] = Kind(kind, run, label or kind)


def kinds() -> dict[str, Kind]:
    """The registered kinds of this process."""
    return dict(_KINDS)


def load_kinds(modules: tuple[str, ...] = KIND_MODULES) -> None:
    """Import the modules that register kinds; a module that does not exist (yet) is skipped."""
    for name in modules:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            LOGGER.debug("Job kind module %s is not installed", name)


def _dumps(value: Any) -> str:
    return json.dumps(value, default=str, separators=(",", ":"))


def submit(kind: str, target: str, params: dict[str, Any], description: str = "") -> int:
    """Queue a job and wake the runner; return the new job's id.

    Raises
    ------
    DolmenError
        ``unknown_job_kind`` when no function is registered for ``kind`` in this process.
    """
    if kind not in _KINDS:
        raise DolmenError(
            f"Unknown job kind {kind!r}: known kinds are {', '.join(sorted(_KINDS)) or 'none'}",
            code="unknown_job_kind",
        )
    with write_transaction():
        job = Job.create(
            kind=kind,
            target=target[:255],
            description=description[:255],
            params=_dumps(params),
            state=PENDING,
        )
    LOGGER.info("Job %d queued: %s %s %s", job.pk, kind, target, description)
    _wake()
    return int(job.pk)


def _wake() -> None:
    if _RUNNER is not None:
        _RUNNER.wake()


def get(job_id: int) -> Job:
    """The job row.

    Raises
    ------
    NotFound
        When there is no such job.
    """
    job = Job.get_or_none(Job.pk == job_id)
    if job is None:
        raise NotFound(f"No job #{job_id}: it may have been removed")
    return job


def cancel(job_id: int) -> str:
    """Ask a job to stop; return its state afterwards.

    A pending job is cancelled at once; a running one stops at its next cancel point (between
    two instances of a send, at the next response of a retrieve).

    Raises
    ------
    NotFound
        No such job.
    DolmenError
        ``job_ended`` when the job has already ended.
    """
    with write_transaction():
        job = get(job_id)
        if job.state in ENDED:
            raise DolmenError(f"Job #{job_id} has already ended ({job.state})", code="job_ended")
        if job.state == PENDING:
            job.state = CANCELLED
            job.ended_at = utcnow()
            job.error = "cancelled before it started"
        job.cancel_requested = True
        job.save()
        state = str(job.state)
    if _RUNNER is not None:
        _RUNNER.cancel(job_id)
    LOGGER.info("Job %d: cancel requested (now %s)", job_id, state)
    return state


def retry(job_id: int) -> int:
    """Queue a new job with the kind, target and parameters of an ended, unsuccessful one.

    Raises
    ------
    NotFound
        No such job.
    DolmenError
        ``job_not_retriable`` when the job is still active or succeeded.
    """
    job = get(job_id)
    if job.state not in (FAILURE, CANCELLED):
        raise DolmenError(
            f"Job #{job_id} is {job.state}: only failed or cancelled jobs can be retried",
            code="job_not_retriable",
        )
    params = params_of(job)
    params["retry_of"] = job_id
    return submit(str(job.kind), str(job.target), params, str(job.description))


def recent(state: str = "", limit: int = 100) -> list[Job]:
    """The latest jobs, newest first: all, those in ``state`` (one of :data:`STATES`), or the
    ``active`` ones."""
    query = Job.select().order_by(Job.created_at.desc(), Job.pk.desc())
    if state in STATES:
        query = query.where(Job.state == state)
    elif state == "active":
        query = query.where(Job.state.in_(ACTIVE))
    return list(query.limit(limit))


def params_of(job: Job) -> dict[str, Any]:
    """The job's parameters as a dict."""
    try:
        value = json.loads(str(job.params) or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def details_of(job: Job) -> list[dict[str, Any]]:
    """The job's failure and transcript entries."""
    try:
        value = json.loads(str(job.details) or "[]")
    except ValueError:
        return []
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def percent(job: Job) -> int:
    """Progress in whole percent: items handled (done or failed) over the total; 100 on success.

    ``done`` counts items handled successfully, warnings included (``warning`` is a subset).
    """
    if job.state == SUCCESS:
        return 100
    total = int(job.total or 0)
    if total <= 0:
        return 0
    handled = int(job.done or 0) + int(job.failed or 0)
    return max(0, min(100, handled * 100 // total))


def duration(job: Job) -> float | None:
    """Seconds from start to end (or to now while running); ``None`` before it started."""
    if job.started_at is None:
        return None
    end = job.ended_at or utcnow()
    return max(0.0, (end - job.started_at).total_seconds())


#: Seconds between a runner's heartbeats on the jobs it runs, and after which a running job
#: whose node has been silent is taken for dead (marked interrupted, so it can be retried).
HEARTBEAT = 10.0
STALE_AFTER = 60.0


def node_name(settings: Settings) -> str:
    """This node's name in the jobs table: ``[jobs] node``, else host name and storage folder."""
    import socket

    return settings["jobs.node"] or f"{socket.gethostname()}:{settings.storage_path}"[:255]


def mark_interrupted(node: str = "", *, stale_after: float = STALE_AFTER) -> int:
    """Mark as failed the jobs left ``running`` by this node's previous sidecar, and those of any
    node silent for ``stale_after`` seconds (it died); the other nodes' live jobs are left alone.
    How many were marked."""
    silent = utcnow() - dt.timedelta(seconds=stale_after)
    with write_transaction():
        count = (
            Job.update(state=FAILURE, error=INTERRUPTED, ended_at=utcnow())
            .where((Job.state == RUNNING) & ((Job.node == node) | (Job.node == "") | Job.beat_at.is_null()
                                             | (Job.beat_at < silent)))
            .execute()
        )
    if count:
        LOGGER.warning("%d job(s) were interrupted by a restart of the DICOM service (or a node's death)", count)
    return int(count)


class JobContext:
    """What a run function sees of its job: parameters, engine objects, progress and cancel.

    Counters (``done``, ``total``, ``failed``, ``warning``, ``bytes_done``) are attributes;
    :meth:`progress` sets them and writes them to the index now and then.
    """

    def __init__(
        self, job: Job, settings: Settings, ingestor: Ingestor | None, cancel_event: threading.Event
    ) -> None:
        self.id = int(job.pk)
        self.kind = str(job.kind)
        self.target = str(job.target)
        self.description = str(job.description)
        self.params = params_of(job)
        self.settings = settings
        self.ingestor = ingestor
        self.store: Store | None = ingestor.store if ingestor is not None else None
        self.total = 0
        self.done = 0
        self.failed = 0
        self.warning = 0
        self.bytes_done = 0
        self.details: list[dict[str, Any]] = []
        self.dropped = 0
        self._cancel = cancel_event
        self._last_write = 0.0
        self._dirty = False
        self._lock = threading.Lock()

    # -- progress ---------------------------------------------------------------------------

    def progress(
        self,
        *,
        done: int | None = None,
        total: int | None = None,
        failed: int | None = None,
        warning: int | None = None,
        bytes_done: int | None = None,
        force: bool = False,
    ) -> None:
        """Set counters; write them to the index when :data:`PROGRESS_INTERVAL` has passed."""
        with self._lock:
            for name, value in (
                ("done", done),
                ("total", total),
                ("failed", failed),
                ("warning", warning),
                ("bytes_done", bytes_done),
            ):
                if value is not None:
                    setattr(self, name, int(value))
            self._dirty = True
        self.flush(force=force)

    def _append(self, entry: dict[str, Any]) -> None:
        with self._lock:
            if len(self.details) < MAX_DETAILS:
                self.details.append(entry)
            else:
                self.dropped += 1
            self._dirty = True

    def fail_item(self, *, count: bool = True, **detail: Any) -> None:
        """Record one failed item (e.g. ``sop_instance_uid=..., status="0xA700", message=...``).

        ``count=False`` records it without adding to ``failed`` (when the peer's own counters
        already include it).
        """
        if count:
            self.failed += 1
        self._append({"type": "failure", **detail})
        self.flush()

    def note(self, **entry: Any) -> None:
        """Append a transcript entry (a request sent or a response received)."""
        entry.setdefault("at", utcnow().isoformat(timespec="milliseconds"))
        self._append({"type": "transcript", **entry})
        self.flush()

    def flush(self, force: bool = False) -> None:
        """Write counters and details now if due (or ``force``); read a cancel asked by another process."""
        now = time.monotonic()
        if not force and (not self._dirty or now - self._last_write < PROGRESS_INTERVAL):
            return
        with self._lock:
            values = {
                "total": self.total,
                "done": self.done,
                "failed": self.failed,
                "warning": self.warning,
                "bytes_done": self.bytes_done,
                "details": _dumps(self._details_out()),
            }
            self._dirty = False
            self._last_write = now
        try:
            with write_transaction():
                Job.update(**values).where(Job.pk == self.id).execute()
            if not self._cancel.is_set():
                asked = Job.select(Job.cancel_requested).where(Job.pk == self.id).scalar()
                if asked:
                    self._cancel.set()
        except peewee.DatabaseError as exc:  # progress is best effort; the end state is not
            LOGGER.warning("Cannot record the progress of job %d: %s", self.id, exc)

    def _details_out(self) -> list[dict[str, Any]]:
        out = list(self.details)
        if self.dropped:
            out.append({"type": "note", "message": f"{self.dropped} more entries were not kept"})
        return out

    # -- cancel -----------------------------------------------------------------------------

    def cancelled(self) -> bool:
        """True once a cancel was asked."""
        return self._cancel.is_set()

    def give_way(self) -> None:
        """Pause :data:`YIELD_TO_RECEPTION` seconds while the DICOM server is receiving objects
        (:data:`reception_busy`), unless a cancel was asked.

        For jobs that compete with reception (a send), between two items. Not for a retrieve:
        what the server then receives is the retrieve's own, and a paused C-MOVE would read
        its pending responses late.
        """
        busy = reception_busy
        if busy is not None and not self._cancel.is_set() and busy():
            time.sleep(YIELD_TO_RECEPTION)

    def check_cancelled(self) -> None:
        """Raise :class:`JobCancelled` when a cancel was asked."""
        if self._cancel.is_set():
            raise JobCancelled("cancelled by the user")


class Runner:
    """Runner threads that take pending jobs from the index and run them.

    Parameters
    ----------
    settings : Settings
        Passed to each job; ``[jobs] concurrency`` threads are started.
    ingestor : Ingestor, optional
        The one ingest path, for jobs that bring instances in.
    """

    def __init__(
        self, settings: Settings, ingestor: Ingestor | None = None, concurrency: int | None = None
    ) -> None:
        self.settings = settings
        self.ingestor = ingestor
        self.concurrency = concurrency or int(settings["jobs.concurrency"])
        self.node = node_name(settings)
        self._wakeup = threading.Condition()
        self._pending_wake = False
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._running: dict[int, threading.Event] = {}
        self._lock = threading.Lock()

    def start(self) -> None:
        """Load the kinds, mark interrupted jobs, start the threads."""
        global _RUNNER
        load_kinds()
        mark_interrupted(self.node)
        _RUNNER = self
        for n in range(self.concurrency):
            thread = threading.Thread(target=self._loop, name=f"job-runner-{n}", daemon=True)
            thread.start()
            self._threads.append(thread)
        beat = threading.Thread(target=self._heartbeat, name="job-heartbeat", daemon=True)
        beat.start()
        self._threads.append(beat)

    def _heartbeat(self) -> None:
        """Say every :data:`HEARTBEAT` seconds that this node's running jobs are alive, and take
        for dead the running jobs of nodes silent for :data:`STALE_AFTER` seconds."""
        from dicomnode.archive import index

        try:
            while not self._stopping.wait(HEARTBEAT):
                try:
                    ids = self.running()
                    if ids:
                        with write_transaction():
                            Job.update(beat_at=utcnow()).where(Job.pk.in_(ids) & (Job.node == self.node)).execute()
                    stale = utcnow() - dt.timedelta(seconds=STALE_AFTER)
                    with write_transaction():
                        dead = (Job.update(state=FAILURE, error=INTERRUPTED, ended_at=utcnow())
                                .where((Job.state == RUNNING) & (Job.node != self.node) & (Job.beat_at < stale))
                                .execute())
                    if dead:
                        LOGGER.warning("%d job(s) of a silent node marked interrupted", dead)
                except peewee.DatabaseError as exc:
                    LOGGER.warning("Job heartbeat cannot write the index: %s", exc)
        finally:
            index.close_index()

    def stop(self, timeout: float = 10.0) -> None:
        """Ask running jobs to stop at their next cancel point and wait a little for them.

        Jobs that do not stop in time stay ``running`` in the index and are marked interrupted
        by the next sidecar.
        """
        global _RUNNER
        self._stopping.set()
        with self._lock:
            for event in self._running.values():
                event.set()
        self.wake()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        if _RUNNER is self:
            _RUNNER = None

    def wake(self) -> None:
        """Have an idle thread look for pending jobs now."""
        with self._wakeup:
            self._pending_wake = True
            self._wakeup.notify_all()

    def cancel(self, job_id: int) -> None:
        """Signal a job running in this process."""
        with self._lock:
            event = self._running.get(job_id)
        if event is not None:
            event.set()

    def running(self) -> list[int]:
        """Ids of the jobs running in this process."""
        with self._lock:
            return list(self._running)

    # -- threads ----------------------------------------------------------------------------

    def _loop(self) -> None:
        from dicomnode.archive import index

        try:
            while not self._stopping.is_set():
                try:
                    job = self._claim()
                except peewee.DatabaseError as exc:
                    LOGGER.warning("Job runner cannot read the index: %s", exc)
                    job = None
                if job is None:
                    with self._wakeup:
                        if not self._pending_wake:
                            self._wakeup.wait(POLL_INTERVAL)
                        self._pending_wake = False
                    continue
                self._run(job)
        finally:
            index.close_index()

    def _claim(self) -> Job | None:
        """Take the oldest pending job of a known kind, or mark an unknown kind failed."""
        candidates = (
            Job.select(Job.pk, Job.kind)
            .where(Job.state == PENDING)
            .order_by(Job.created_at, Job.pk)
            .limit(20)
        )
        for row in list(candidates):
            with write_transaction():
                if row.kind not in _KINDS:
                    Job.update(
                        state=FAILURE,
                        ended_at=utcnow(),
                        error=f"No runner for job kind {row.kind!r} in this version of Dolmen",
                    ).where((Job.pk == row.pk) & (Job.state == PENDING)).execute()
                    continue
                claimed = (
                    Job.update(state=RUNNING, started_at=utcnow(), ended_at=None, error="", node=self.node,
                               beat_at=utcnow())
                    .where((Job.pk == row.pk) & (Job.state == PENDING))
                    .execute()
                )
            if claimed:
                return Job.get_by_id(row.pk)
        return None

    def _run(self, job: Job) -> None:
        kind = _KINDS[str(job.kind)]
        event = threading.Event()
        with self._lock:
            self._running[int(job.pk)] = event
        if job.cancel_requested or self._stopping.is_set():
            event.set()
        ctx = JobContext(job, self.settings, self.ingestor, event)
        state, error = SUCCESS, ""
        started = time.monotonic()
        LOGGER.info("Job %d started: %s %s", ctx.id, ctx.kind, ctx.target)
        try:
            ctx.check_cancelled()
            kind.run(ctx)
            if ctx.cancelled() and self._stopping.is_set():
                state, error = FAILURE, INTERRUPTED
        except JobCancelled as exc:
            state, error = CANCELLED, exc.message
            if self._stopping.is_set() and not _cancel_asked(ctx.id):
                state, error = FAILURE, INTERRUPTED
        except DolmenError as exc:
            state, error = FAILURE, exc.message
        except Exception as exc:
            LOGGER.exception("Job %d (%s) failed unexpectedly", ctx.id, ctx.kind)
            state, error = FAILURE, f"internal error: {type(exc).__name__}: {exc}"
        finally:
            with self._lock:
                self._running.pop(ctx.id, None)
        ctx.flush(force=True)
        try:
            with write_transaction():
                Job.update(state=state, error=error, ended_at=utcnow()).where(Job.pk == ctx.id).execute()
        except peewee.DatabaseError as exc:
            LOGGER.error("Cannot record the end of job %d: %s", ctx.id, exc)
        LOGGER.info(
            "Job %d ended %s after %.1f s: %d done, %d failed%s",
            ctx.id,
            state,
            time.monotonic() - started,
            ctx.done,
            ctx.failed,
            f" ({error})" if error else "",
        )


def _cancel_asked(job_id: int) -> bool:
    try:
        return bool(Job.select(Job.cancel_requested).where(Job.pk == job_id).scalar())
    except peewee.DatabaseError:
        return False


def as_dict(job: Job, *, with_details: bool = False) -> dict[str, Any]:
    """A job as JSON-ready data (for the JSON API and the control protocol)."""

    def iso(value: dt.datetime | None) -> str | None:
        return value.isoformat(timespec="seconds") + "Z" if value else None

    out: dict[str, Any] = {
        "ID": int(job.pk),
        "Type": str(job.kind),
        "State": str(job.state),
        "Target": str(job.target),
        "Description": str(job.description),
        "Progress": percent(job),
        "Total": int(job.total),
        "Done": int(job.done),
        "Failed": int(job.failed),
        "Warning": int(job.warning),
        "Bytes": int(job.bytes_done),
        "Error": str(job.error),
        "CreationTime": iso(job.created_at),
        "StartTime": iso(job.started_at),
        "EndTime": iso(job.ended_at),
        "Duration": duration(job),
        "Parameters": params_of(job),
    }
    if with_details:
        out["Details"] = details_of(job)
    return out
