# xnat-hpc-hub — the two commands a newcomer needs:
#   make demo   install what is missing, start devxnat + local Slurm (+ hub), print how to reach them
#   make test   install what is missing, run the whole test suite (starts what it needs itself)
# Both run as root on Debian 12 and are idempotent.

VENV ?= /opt/xnat-hpc-hub/venv
VENV_OLDEST ?= /opt/xnat-hpc-hub/venv-jupyterhub-oldest
PY := $(VENV)/bin/python
RUN_DIR ?= /var/lib/xnat-hpc-hub
PYTEST_ARGS ?=

.PHONY: demo test test-fast install system venv kube lab dist lint clean-run bench

install: system venv

system:
	@VENV=$(VENV) scripts/bootstrap.sh system

venv:
	@VENV=$(VENV) scripts/bootstrap.sh venv

# the development Kubernetes the tests start (containerd, runc, CNI from Debian; Kubernetes, etcd
# and pause built from the Go module proxy, about five minutes the first time): `make test` needs it,
# `make demo` does not
kube:
	@scripts/bootstrap.sh kube

# the JupyterLab extension (labextension/ -> xnat_bridge/labextension/, linked into $(VENV));
# `make venv` runs it too. The wheel build runs the same `npm run build:prod` (pyproject.toml)
lab:
	@VENV=$(VENV) scripts/build-labextension.sh

# what a site installs: dist/xnat_hpc_hub-<version>.tar.gz and -py3-none-any.whl, the lab
# extension built into both (docs/admin.md, "Installing"); `pip install 'dist/...whl[hub]'`
dist: install
	$(PY) -m build --outdir dist .

demo: install
	$(VENV)/bin/xnat-hpc-hub demo --run-dir $(RUN_DIR)/demo

# the whole suite on the newest JupyterHub pip brings, then the in-process hub tests (JupyterHub's
# own MockHub: XNAT's plugin API, the job ledger, governance, servers' scopes, audit ingestion) on
# the oldest one pyproject.toml declares
OLDEST_HUB_TESTS := tests/unit/test_plugin_gateway.py tests/unit/test_plugin_names.py tests/unit/test_ledger_api.py \
                    tests/unit/test_hub_rest.py tests/unit/test_server_scopes.py tests/unit/test_audit_ingest.py \
                    tests/unit/test_governance_service.py tests/unit/test_governance_forward.py \
                    tests/unit/test_owner_pages_service.py tests/unit/test_share_api.py tests/unit/test_publish_api.py

# in parallel (pytest-xdist: each test module whole on one worker, so that its stack starts once),
# in a random order of modules and of the tests in each (pytest-random-order; the seed is printed:
# rerun one order with `make test PYTEST_SEED=N`), the 15 slowest tests listed at the end; then,
# alone, the few tests marked `exclusive` (they take a machine-wide service such as Slurm down, or
# need it to themselves: the quick runs of the Slurm and Kubernetes benchmarks). Every benchmark
# runs in its quick mode on the way (tests/integration/test_benchmarks.py; no timing asserted)
PYTEST_WORKERS ?= 3
PYTEST_SEED ?= $(shell od -An -N2 -tu2 /dev/urandom | tr -d ' ')
PYTEST_RUN = -n $(PYTEST_WORKERS) --dist loadscope --random-order-bucket=module --random-order-seed=$(PYTEST_SEED) \
             --durations=15 --durations-min=1

test: install kube
	@VENV_OLDEST=$(VENV_OLDEST) scripts/bootstrap.sh oldest-hub
	$(PY) -m pytest $(PYTEST_RUN) -m "not exclusive" $(PYTEST_ARGS)
	$(PY) -m pytest -p no:cacheprovider -m exclusive $(PYTEST_ARGS) || [ $$? -eq 5 ]
	XNAT_HPC_DEVXNAT_PYTHON=$(PY) PYTHONPATH=$(CURDIR) $(VENV_OLDEST)/bin/python -m pytest -p no:cacheprovider \
	    $(OLDEST_HUB_TESTS)

# the edit loop: the unit and in-process tests only (no Slurm, devxnat or browser; about a minute),
# on an installed venv (`make install` once)
test-fast:
	@test -x $(PY) || { echo "no $(VENV): run make install first"; exit 1; }
	$(PY) -m pytest -n 2 --dist loadscope --durations=15 --durations-min=0.5 tests/unit $(PYTEST_ARGS)

bench: install
	$(PY) benchmarks/run_all.py

clean-run:
	-$(VENV)/bin/xnat-hpc-hub slurm down --run-dir $(RUN_DIR)/slurm
	rm -rf $(RUN_DIR)
