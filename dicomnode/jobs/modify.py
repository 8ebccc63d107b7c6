"""Job kinds ``anonymize`` and ``modify``: :func:`dicomnode.anonymize.run.run` in the sidecar,
with progress per instance (Orthanc's ``"Asynchronous": true``, and the pages' forms).

Parameters: ``{"body": <the request body>, "level": "Study", "id": <public id>, "user": ...}``;
the answer (Orthanc's ``{ID, Path, PatientID, Type, ...}``) is noted in the transcript.
"""
from __future__ import annotations

from dicomnode import jobs
from dicomnode.anonymize.profile import plan_for
from dicomnode.anonymize.run import run


def _run(job: jobs.JobContext) -> None:
    params = job.params
    settings = job.settings
    plan = plan_for(settings, params["body"], job.kind, params["level"])

    def progress(done: int, total: int) -> None:
        job.progress(done=done, total=total)

    assert job.store is not None and job.ingestor is not None  # the sidecar's runner has both
    result = run(plan, params["level"], params["id"], store=job.store, ingestor=job.ingestor,
                 user=params.get("user", ""), job=job.id, progress=progress, cancelled=job.cancelled)
    job.note(type="result", **result)


jobs.register_kind("anonymize", _run, label="Anonymize")
jobs.register_kind("modify", _run, label="Modify")
