# Dolmen: the two commands are `make run` and `make test` (see README.md).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
CONFIG ?=
HTMX_VERSION ?= 2.0.11
DEBIAN_TEST_PACKAGES := dcmtk orthanc orthanc-dicomweb chromium socat postgresql

.PHONY: run test test-long lint vendor-htmx deid-table install install-test debian-test-packages clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install -q -e .

install-test: $(BIN)/python
	$(BIN)/pip install -q -e '.[test,postgresql]'

## run: create the virtual environment, install Dolmen and start it on the embedded defaults
run: install
	$(BIN)/dolmen serve $(if $(CONFIG),--config $(CONFIG))

## Debian packages the tests talk to (installed only when running as root)
debian-test-packages:
	@missing=""; for p in $(DEBIAN_TEST_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "Installing Debian packages:$$missing"; \
	    apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing >/dev/null; \
	  else echo "Not root: install$$missing yourself (tests needing them are skipped)"; fi; \
	fi

#: The network tests, run a second time without the latency patches (DOLMEN_NO_NETPATCH=1):
#: the hardening and the services must not depend on them.
NETWORK_TESTS := tests/test_scp_store.py tests/test_scp_qr.py tests/test_scu.py tests/test_associations.py \
                 tests/test_hostile_dicom.py tests/test_hostile_retrieve.py

## test: install what the tests need (Debian packages too when root), then run pytest
test: install-test debian-test-packages
	$(BIN)/python -m pytest $(PYTEST_ARGS)
	DOLMEN_NO_NETPATCH=1 $(BIN)/python -m pytest -q $(NETWORK_TESTS)

## test-long: the full-size versions of the long tests (kill loop, duplicate storm)
test-long: install-test debian-test-packages
	DOLMEN_LONG_TESTS=1 $(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install-test
	$(BIN)/pip install -q ruff mypy
	$(BIN)/ruff check dicomnode webapp tests
	$(BIN)/mypy dicomnode

## deid-table: regenerate dicomnode/anonymize/e11.py (PS3.15 Table E.1-1) from its PyPI sources
deid-table: install-test
	$(BIN)/python -m dicomnode.anonymize.generate > dicomnode/anonymize/e11.py

## vendor-htmx: refresh static/vendor/htmx-*.min.js and VENDORED.md from the npm registry
vendor-htmx:
	rm -rf /tmp/dolmen-htmx && mkdir -p /tmp/dolmen-htmx
	cd /tmp/dolmen-htmx && npm pack -q htmx.org@$(HTMX_VERSION) >/dev/null && tar xzf htmx.org-$(HTMX_VERSION).tgz
	rm -f static/vendor/htmx-*.min.js
	cp /tmp/dolmen-htmx/package/dist/htmx.min.js static/vendor/htmx-$(HTMX_VERSION).min.js
	printf '# Vendored assets\n\n| file | npm package | version | sha256 |\n|---|---|---|---|\n| htmx-%s.min.js | htmx.org | %s | %s |\n' \
	  $(HTMX_VERSION) $(HTMX_VERSION) $$(sha256sum static/vendor/htmx-$(HTMX_VERSION).min.js | cut -d' ' -f1) > static/vendor/VENDORED.md

clean:
	rm -rf $(VENV) build dist *.egg-info
