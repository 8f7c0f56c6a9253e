"""Unix accounts for the demo and the tests.

The local and Slurm backends run each server as the user's own Unix account,
as JupyterHub's LocalProcessSpawner and batchspawner do. Production sites have
these accounts already (LDAP/SSSD). The demo and the tests create their demo
users' accounts themselves with ``useradd`` — and say so.
"""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import subprocess
from pathlib import Path

log = logging.getLogger(__name__)


def ensure_accounts(names: list[str], *, shell: str = "/bin/bash") -> list[str]:
    """Create missing accounts (with a home, no password); return the names created."""
    created = []
    for name in names:
        try:
            pwd.getpwnam(name)
            continue
        except KeyError:
            pass
        subprocess.run(["useradd", "--create-home", "--shell", shell, "--user-group", name],
                       check=True, capture_output=True, text=True)
        home = pwd.getpwnam(name).pw_dir
        os.chmod(home, 0o700)  # a user's workspace is theirs alone
        log.info("created Unix account %s for the demo users", name)
        created.append(name)
    return created


def install_file(name: str, source: Path, relative: str) -> bool:
    """Copy *source* to ``~name/relative`` (owned by the user, 0644) unless it exists."""
    entry = pwd.getpwnam(name)
    target = Path(entry.pw_dir) / relative
    if target.exists():
        return False
    for directory in reversed([p for p in target.parents if str(p).startswith(entry.pw_dir + "/")]):
        if not directory.exists():
            directory.mkdir(mode=0o755)
            os.chown(directory, entry.pw_uid, entry.pw_gid)
    shutil.copyfile(source, target)
    os.chmod(target, 0o644)
    os.chown(target, entry.pw_uid, entry.pw_gid)
    return True
