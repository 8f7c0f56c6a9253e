"""Bundle format constants and small shared helpers."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

log = logging.getLogger(__name__)

FORMAT = "xnat-hpc-bundle"
FORMAT_VERSION = 1
INFO_FORMAT = "xnat-hpc-bundle-info"
MANIFEST_NAME = "MANIFEST.json"
DATA_PREFIX = "data/"
SUFFIX = ".tar.age"
PARTIAL = ".partial"
CHUNK = 1 << 20  # reads of staged files, encrypted output buffer, pipe size
# extraction reads: below glibc's initial mmap threshold (128 KiB), so that the
# per-chunk bytes objects come from the heap, not from a fresh mmap each time
# (with 1 MiB chunks a new process extracts ~30 % slower)
XCHUNK = 64 << 10
MAX_MANIFEST_BYTES = 64 << 20
PROGRESS_INTERVAL = 0.2

_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
_USER_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._@+\-]{0,127}$")
_BUNDLE_ID_RE = re.compile(r"^[0-9a-f]{12}-[0-9a-f]{12}$")
_SECRET_PREFIX = "AGE-SECRET-KEY-1"

ProgressCallback = Callable[[int, int, int, int], None]


