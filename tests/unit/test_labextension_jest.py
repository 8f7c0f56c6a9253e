"""The JupyterLab extension's jest suite (labextension/src/__tests__) as part of `make test`.

The front-end models (API client, formatting, lazy tree and selection JSON, submit
validation and double-submit guard, poller backoff, job list diffing) are tested by
jest; this runs it through npm and checks that it passed. `make lab` (or `make venv`)
installs labextension/node_modules first.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXT = ROOT / "labextension"


def test_labextension_jest_suite_passes():
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail("npm is not installed: run `make install` (scripts/bootstrap.sh system installs nodejs/npm)")
    if not (EXT / "node_modules" / ".bin" / "jest").exists():
        pytest.fail("labextension/node_modules is missing: run `make lab` (scripts/build-labextension.sh)")
    proc = subprocess.run(
        [npm, "test", "--prefix", str(EXT), "--", "--ci", "--colors=false"],
        check=False, capture_output=True, text=True, timeout=600, cwd=ROOT,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"jest failed (exit {proc.returncode}):\n{out[-8000:]}"
    m = re.search(r"^Tests:\s+(?:(\d+) skipped, )?(\d+) passed, (\d+) total", out, re.MULTILINE)
    assert m, f"no jest summary in the output:\n{out[-4000:]}"
    skipped, passed, total = int(m.group(1) or 0), int(m.group(2)), int(m.group(3))
    assert skipped == 0 and passed == total, out[-4000:]
    assert total >= 100, f"only {total} jest tests ran; the suite lost tests?\n{out[-4000:]}"
    suites = re.search(r"^Test Suites:\s+(\d+) passed, (\d+) total", out, re.MULTILINE)
    assert suites and suites.group(1) == suites.group(2), out[-4000:]
