"""Dolmen's DICOM engine: configuration, store, index, ingest, rendering and networking.

This package never imports Flask; the web application in :mod:`webapp` is a client of it.
"""
from __future__ import annotations

__version__ = "0.1.0"
