"""The browser tests' tab: a Chromium page on the module's ``server`` that fails the test on any
console error or page error (a CSP violation, a script error). Modules with another server
fixture define their own ``page``."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture
def page(browser: Any, server: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900}, base_url=server.url)
    tab = context.new_page()
    errors: list[str] = []
    tab.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    tab.on("pageerror", lambda e: errors.append(str(e)))
    tab.expected_errors = []  # type: ignore[attr-defined]  # messages a test provokes on purpose
    yield tab
    context.close()
    errors = [e for e in errors if e not in tab.expected_errors]  # type: ignore[attr-defined]
    assert not errors, errors  # a CSP violation or a script error shows here
