# The two commands a newcomer needs: `make demo` and `make test`. Both set up .venv themselves.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: demo test lint schema dashboards deploy check-generated clean

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@rm -f $(VENV)/.installed-* && touch $@

demo: $(STAMP)  ## run the whole pipeline on the embedded broker and print the report
	$(VENV)/bin/guardstream demo

test: $(STAMP)  ## unit, integration (real broker + DuckDB + promtool) and end-to-end tests
	@$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: treating that as a failure"; exit 1; fi; exit $$rc

lint: $(STAMP)  ## ruff, formatting, mypy, and generated files up to date
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(MAKE) --no-print-directory check-generated

schema: $(STAMP)  ## regenerate the published JSON Schema of the event contract
	$(VENV)/bin/guardstream schema > schema/guardrail-decision-v1.json

dashboards: $(STAMP)  ## regenerate the committed Grafana dashboard JSON from dashboards/build.py
	$(PY) -m dashboards.build

deploy: dashboards  ## regenerate the Kubernetes PrometheusRule and dashboard ConfigMaps (deploy/build.py)
	$(PY) -m deploy.build

check-generated: $(STAMP)
	@$(VENV)/bin/guardstream schema | diff -u schema/guardrail-decision-v1.json - \
	  || { echo "schema/guardrail-decision-v1.json is stale: run 'make schema' and commit it"; exit 1; }
	@$(PY) -m dashboards.build --check || { echo "run 'make dashboards' and commit the result"; exit 1; }
	@$(PY) -m deploy.build --check || { echo "run 'make deploy' and commit the result"; exit 1; }

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache guardstream-demo.duckdb* guardstream-demo.labels.jsonl
