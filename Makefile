# Every target creates and reuses .venv by itself; it is re-installed only when pyproject.toml changes.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: help venv test demo caption report bench clean

help:
	@echo "make demo                       run the job on sample_data/ against the bundled simulator (no key, no network)"
	@echo "make test                       run the test suite"
	@echo "make caption MANIFEST=path [OUTPUT=out.parquet] [JOB=jobs/x.toml] [ARGS='--concurrency 32']"
	@echo "make report [OUTPUT=output/demo.parquet]   write an HTML review page beside the output"
	@echo "make bench [ARGS=--quick]       measure speed against baselines (latency, overhead, rate limits, memory, resume)"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	scripts/ensure-chromium
	$(PY) -m pytest -q

demo: $(STAMP)
	$(PY) -m pipeline demo

bench: $(STAMP)
	$(PY) bench/run.py $(ARGS)

report: $(STAMP)
	$(PY) -m pipeline report $(or $(OUTPUT),output/demo.parquet) $(ARGS)

caption: $(STAMP)
	$(PY) -m pipeline caption $(if $(MANIFEST),"$(MANIFEST)") $(if $(OUTPUT),--output "$(OUTPUT)") $(if $(JOB),--job "$(JOB)") $(ARGS)

clean:
	rm -rf $(VENV) output .pytest_cache
