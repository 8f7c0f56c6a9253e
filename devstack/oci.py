"""OCI image archives written here, without a registry or a container engine (issue 21).

:func:`image_archive` writes an ``oci-layout`` tar (``index.json``, ``blobs/sha256/…``) of one
image: layers given as lists of files, a config (entrypoint, environment, user, working
directory), the ref name in the index annotations that ``ctr images import`` reads. The
output is deterministic (every mtime 0, sorted JSON): the same inputs give the same digests.
:func:`import_image` loads an archive into containerd's ``k8s.io`` namespace, where the kubelet
looks (pods use it with ``imagePullPolicy: Never``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import tarfile
from collections.abc import Iterable
from pathlib import Path

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar"


@dataclasses.dataclass(frozen=True)
class File:
    """One file of a layer: its path in the image, content and mode."""

    path: str
    data: bytes
    mode: int = 0o644


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def layer(files: Iterable[File]) -> bytes:
    """An uncompressed layer tar holding *files* and their parent directories (pure)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirs: set[str] = set()
        for f in sorted(files, key=lambda f: f.path):
            parts = f.path.strip("/").split("/")
            for i in range(1, len(parts)):
                d = "/".join(parts[:i])
                if d not in dirs:
                    dirs.add(d)
                    info = tarfile.TarInfo(d)
                    info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
                    tar.addfile(info)
            info = tarfile.TarInfo("/".join(parts))
            info.size, info.mode, info.mtime = len(f.data), f.mode, 0
            tar.addfile(info, io.BytesIO(f.data))
    return buf.getvalue()


def _file_digest(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest(), path.stat().st_size


def image_archive(name: str, layers: list[bytes | Path], out: Path, *, entrypoint: list[str],
                  env: dict[str, str] | None = None, user: str = "", workdir: str = "") -> str:
    """Write the OCI archive of image *name* (e.g. ``docker.io/xnat-hpc-hub/pause:3.10``) to
    *out*; its manifest digest. A layer is its tar's bytes, or a tar file (a root file system,
    copied into the archive without being read into memory)."""
    described = [(_digest(b), len(b)) if isinstance(b, bytes) else _file_digest(b) for b in layers]
    config = {"architecture": "amd64", "os": "linux",
              "config": {"Entrypoint": entrypoint, "Env": [f"{k}={v}" for k, v in (env or {"PATH": "/"}).items()]},
              "rootfs": {"type": "layers", "diff_ids": [d for d, _ in described]},
              "history": [{"created_by": "xnat-hpc-hub devstack.oci"} for _ in layers]}
    if user:
        config["config"]["User"] = user
    if workdir:
        config["config"]["WorkingDir"] = workdir
    config_blob = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    manifest = json.dumps({"schemaVersion": 2, "mediaType": MANIFEST,
                           "config": {"mediaType": CONFIG, "digest": _digest(config_blob), "size": len(config_blob)},
                           "layers": [{"mediaType": LAYER, "digest": d, "size": n} for d, n in described]},
                          sort_keys=True, separators=(",", ":")).encode()
    index = json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": MANIFEST, "digest": _digest(manifest), "size": len(manifest),
        "annotations": {"org.opencontainers.image.ref.name": name, "io.containerd.image.name": name}}]},
        sort_keys=True, separators=(",", ":")).encode()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part")
    with tarfile.open(tmp, "w") as tar:
        def add(path: str, data: bytes) -> None:
            info = tarfile.TarInfo(path)
            info.size, info.mtime = len(data), 0
            tar.addfile(info, io.BytesIO(data))

        add("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        add("index.json", index)
        seen = set()
        for blob, (d, _) in zip((*layers, config_blob, manifest),
                                (*described, (_digest(config_blob), 0), (_digest(manifest), 0))):
            if d in seen:
                continue
            seen.add(d)
            if isinstance(blob, bytes):
                add("blobs/sha256/" + d.split(":", 1)[1], blob)
            else:
                info = tar.gettarinfo(str(blob), arcname="blobs/sha256/" + d.split(":", 1)[1])
                info.mtime, info.uid, info.gid, info.uname, info.gname, info.mode = 0, 0, 0, "", "", 0o644
                with open(blob, "rb") as f:
                    tar.addfile(info, f)
    tmp.replace(out)
    return _digest(manifest)


def single_binary_image(name: str, binary: Path, path: str, out: Path) -> str:
    """An image of one static program at *path*, its entrypoint (the pause image)."""
    return image_archive(name, [layer([File(path, binary.read_bytes(), 0o755)])], out, entrypoint=[path])


def import_image(containerd_socket: Path, archive: Path) -> None:
    """Load *archive* into containerd's ``k8s.io`` namespace (unpacked for the overlayfs snapshotter)."""
    from xnat_bridge.procs import run

    run(["ctr", "--address", str(containerd_socket), "-n", "k8s.io", "images", "import", str(archive)], timeout=300)
