"""Anonymization (PS3.15 Annex E, Basic Profile and options) and modification of stored resources.

* :mod:`.e11`: Table E.1-1, generated from published tables (:mod:`.generate`), never typed;
* :mod:`.profile`: a :class:`~.profile.Plan` from an Orthanc body, applied to one dataset;
* :mod:`.run`: over a patient, study, series or instance, through the one ingest path, journaled.
"""
