"""What a server removes from its user's staging directory when it starts (issue 25).

A server killed (``kill -9``, a node failure, the OOM killer) runs no clean-up: its jobs'
bundles — which nobody can decrypt any more, their identities lived in its memory — and the
per-job TLS directories of dask-jobqueue, which hold the **worker's private key**, stay on
shared storage. When the next :class:`~.manager.OffloadManager` of the user starts (after it
marked the dead server's jobs lost and cancelled their Slurm jobs), it removes:

* ``.tls-<job>-*`` directories of jobs that are not running under a live server;
* ``results-<job>-*.tar.age[.partial]`` of jobs neither live nor held for review (a held job's
  sealed results wait there for the owners' decision);
* bundles (``<12 hex>-<12 hex>.tar.age``, their ``.json`` sidecars and ``.partial`` files) when
  no job of the user runs under a live server — a bundle belongs to the server process that
  made it, and another live server of the same user may be using its own.

Nothing else in the directory is touched. Entries are removed through a descriptor of the
directory without following a link: a link planted under one of these names is removed
itself, never what it points to (:func:`remove_entries`). :func:`stale_entries` is pure.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import stat
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger(__name__)

_TLS_RE = re.compile(r"^\.tls-(j[0-9a-f]{12})-")
_RESULTS_RE = re.compile(r"^results-(j[0-9a-f]{12})-[0-9a-f]{8}\.tar\.age(\.partial)?$")
_BUNDLE_RE = re.compile(r"^[0-9a-f]{12}-[0-9a-f]{12}(\.tar\.age|\.json)(\.partial)?$")


def stale_entries(names: Iterable[str], *, live_jobs: set[str], held_jobs: set[str],
                  bundles_in_use: bool) -> list[str]:
    """The entries of a staging directory (*names*) that no live job needs (pure)."""
    out = []
    for name in names:
        if (m := _TLS_RE.match(name)) is not None:
            if m.group(1) not in live_jobs:
                out.append(name)
        elif (m := _RESULTS_RE.match(name)) is not None:
            if m.group(1) not in live_jobs | held_jobs:
                out.append(name)
        elif _BUNDLE_RE.match(name) and not bundles_in_use:
            out.append(name)
    return sorted(out)


def remove_entries(directory: Path, names: Iterable[str]) -> list[str]:
    """Remove *names* from *directory* through its descriptor, following no link; the names
    removed (an entry gone meanwhile, or one that cannot be removed, is skipped and logged)."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    removed = []
    try:
        for name in names:
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    shutil.rmtree(name, dir_fd=fd)  # fd-based: no link inside is followed
                else:
                    os.unlink(name, dir_fd=fd)  # a link is removed itself
                removed.append(name)
            except OSError as e:
                if e.errno != errno.ENOENT:
                    log.warning("staging clean-up: could not remove %s from %s: %s", name, directory, e)
    finally:
        os.close(fd)
    return removed
