"""The researcher's server image for the development Kubernetes, built here without a registry
or a container engine (issue 21).

:func:`server_image` makes what ``images/Dockerfile`` makes for a site — Debian with Python,
``age`` and ``tini``, the package's wheel installed with the ``server`` extra in a virtualenv,
the unprivileged account ``jovyan`` (uid 1000) — from Debian's packages with ``mmdebstrap``
(one root file system tar, no chroot left behind) and writes it as an OCI archive
(:mod:`devstack.oci`) to import into the cluster's containerd. Python packages come from PyPI,
or first from a local wheelhouse when given (the tests' one: nothing downloaded twice).

The archive is made again only when its inputs change (a stamp of the wheel's digest, the
Debian suite and packages, and this module's recipe beside it).
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import subprocess
from pathlib import Path

from xnat_bridge.errors import XnatHpcError

#: the image the Kubernetes backend's test profiles run (``imagePullPolicy: Never``)
SERVER_IMAGE = "docker.io/xnat-hpc-hub/server:dev"
SUITE = "bookworm"
#: ``slurm-client``: a server submits its offload jobs with ``sbatch`` (the pod a client of the
#: secure partition, with the site's ``slurm.conf`` and the node's munge socket mounted)
PACKAGES = ("python3", "python3-venv", "age", "ca-certificates", "tini", "slurm-client")
VENV = "/opt/xnat-hpc-hub/venv"
USER_UID = 1000
ENV = {"PATH": f"{VENV}/bin:/usr/local/bin:/usr/bin:/bin", "HOME": "/home/jovyan", "LC_ALL": "C.UTF-8"}


class ImageBuildFailed(XnatHpcError):
    status = 500
    reason = "image_build"


def recipe(wheel_name: str) -> list[str]:
    """mmdebstrap's customize hooks that put the wheel into the image, from the wheelhouse copied
    in beside it (no network in the chroot) (pure)."""
    return [
        'mkdir -p "$1/tmp/wheels"',
        f'chroot "$1" python3 -m venv {VENV}',
        f'chroot "$1" {VENV}/bin/pip install -q --no-cache-dir --no-index --find-links /tmp/wheels '
        f'"/tmp/wheels/{wheel_name}[server]"',
        # the optional checker jsonschema imports when present: 0.9 s of every server start
        # (scripts/bootstrap.sh says why)
        f'chroot "$1" {VENV}/bin/pip uninstall -y -q rfc3987-syntax',
        f'chroot "$1" {VENV}/bin/python -c "import xnat_bridge, jupyterhub"',
        f'chroot "$1" useradd -m -u {USER_UID} -s /bin/bash jovyan',
        'rm -rf "$1/tmp/wheels"',
    ]


def _stamp(wheel: Path) -> str:
    """What the image is made of: the wheel's members (names and bytes, not the zip's file times:
    the same commit built in another checkout is the same image) and the recipe."""
    import zipfile

    h = hashlib.sha256()
    with zipfile.ZipFile(wheel) as zf:
        for name in sorted(zf.namelist()):
            h.update(name.encode() + b"\0" + hashlib.sha256(zf.read(name)).digest())
    h.update(json.dumps([SUITE, PACKAGES, recipe(wheel.name), ENV]).encode())
    return h.hexdigest()


def wheelhouse_for(wheel: Path, wheelhouse: Path, timeout: float = 1800) -> None:
    """Every wheel the server extra needs, in *wheelhouse* (``pip wheel`` on this machine, from
    PyPI and what is there already: a second call downloads nothing new)."""
    import sys

    wheelhouse.mkdir(parents=True, exist_ok=True)
    base = [sys.executable, "-m", "pip", "wheel", "-q", "--wheel-dir", str(wheelhouse), "--find-links",
            str(wheelhouse), f"{wheel}[server]"]
    r = subprocess.run([*base, "--no-index"], capture_output=True, text=True, timeout=timeout)  # all there?
    if r.returncode != 0:
        r = subprocess.run(base, capture_output=True, text=True, timeout=timeout)  # what is missing, from PyPI
    if r.returncode != 0:
        raise ImageBuildFailed(f"pip could not gather the server extra's wheels: {r.stderr.strip()[-1500:]}")


def server_image(wheel: Path, out: Path, *, wheelhouse: Path, timeout: float = 1800) -> bool:
    """The server image's OCI archive at *out* (made again when its inputs changed), its
    Python packages from *wheelhouse* (filled first: :func:`wheelhouse_for`); True when it was
    made now. mmdebstrap works in *out*'s directory (never /tmp: other accounts' and the tests'
    scans look there)."""
    from .oci import image_archive

    stamp_file = out.with_name(out.name + ".stamp")
    want = _stamp(wheel)
    if out.exists() and stamp_file.exists() and stamp_file.read_text().strip() == want:
        return False
    stamp_file.unlink(missing_ok=True)  # the stamp names a whole archive only
    wheelhouse_for(wheel, wheelhouse, timeout)
    rootfs = out.with_name(f"{out.name}.rootfs-{os.getpid()}.tar")
    steps = recipe(wheel.name)
    hooks = [steps[0], f"copy-in {shlex.quote(str(wheel))} /tmp/wheels",
             f"sync-in {shlex.quote(str(wheelhouse))} /tmp/wheels", *steps[1:]]
    cmd = ["mmdebstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}",
           *(f"--customize-hook={h}" for h in hooks), SUITE, str(rootfs)]
    work = out.parent / "tmp"
    work.mkdir(mode=0o700, parents=True, exist_ok=True)
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ, "TMPDIR": str(work)})
    if r.returncode != 0:
        raise ImageBuildFailed(f"mmdebstrap could not build the server image: {r.stderr.strip()[-1500:]}")
    partial = out.with_name(f"{out.name}.partial-{os.getpid()}")
    try:  # written aside and renamed: a build that dies midway leaves no torn archive under *out*
        image_archive(SERVER_IMAGE, [rootfs], partial, entrypoint=["/usr/bin/tini", "--"], env=ENV,
                      user=str(USER_UID), workdir="/home/jovyan")
        os.replace(partial, out)
    finally:
        os.unlink(rootfs)
        if partial.exists():
            os.unlink(partial)
    stamp_file.write_text(want + "\n")
    return True
