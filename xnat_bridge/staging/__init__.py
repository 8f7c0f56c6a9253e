"""Encrypted staging bundles: a tar stream encrypted with age, written to shared storage.

The user's server stages a dataset for the secure partition as **one file**,
``<staging_dir>/<user>/<bundle_id>.tar.age``; the worker decrypts it into
node-local storage with the dataset key it received over TLS. Results travel
back the same way (:func:`encrypt_directory` on the worker,
:func:`decrypt_to_directory` in the user's server).

Bundle format
-------------
An age v1 file (https://age-encryption.org/v1), encrypted to one X25519
recipient (``age1...``) — ChaCha20-Poly1305 STREAM in 64 KiB authenticated
chunks, readable by the ``age`` command-line tool
(``age -d -i KEYFILE bundle.tar.age | tar -t``). Its plaintext is a PAX
(POSIX.1-2001) tar stream of regular files only (mode 0600, uid/gid 0, no
directories, no links), in this order (format version 2):

1. ``MANIFEST.json``, the *head*: canonical JSON (sorted keys, no spaces) of
   what is known before any data is read::

       {"format": "xnat-hpc-bundle", "format_version": 2,
        "files": [{"name": "S1/E1/1/NIFTI/t1.nii.gz", "size": 123, "md5": "<XNAT's md5 or ''>"}, ...],
        "extra": [{"name": "script/train.py", "size": 456, "sha256": "..."}],
        "metadata": {...what the caller passed, e.g. the training script's hash...},
        "file_count": 1, "total_size": 123}

   ``files`` is sorted by name. The head holds no time stamp and no data
   digest, so the sha256 of its bytes (``contents_sha256``) identifies the
   bundle's inputs *before* staging: the bundle cache's key.
2. every data file as ``data/<name>``, in the order of ``files``;
3. the extra members (e.g. ``script/train.py``), sorted by name;
4. ``HASHES.json``, the *trailer*: the sha256 of every data file, computed
   while it streamed into the bundle (the dataset's first staging is where a
   file's sha256 becomes known)::

       {"format": "xnat-hpc-bundle-hashes", "format_version": 2,
        "contents_sha256": "<sha256 of MANIFEST.json>",
        "files": [{"name": "S1/E1/1/NIFTI/t1.nii.gz", "sha256": "..."}, ...],
        "manifest_sha256": "<sha256 of the canonical JSON of [{name, size, sha256}]>"}

Why a head and a trailer rather than one manifest at the end: the extractor
learns every member's name and size (and XNAT's md5) from the first member,
so it refuses an unlisted, duplicate, oversized or non-regular member as it
arrives, before writing it; only the sha256s wait for the trailer, and
:func:`extract_bundle` returns (and writes the *final manifest* —
MANIFEST.json with the sha256s filled in) only after every file matched it.
``manifest_sha256`` — the digest of the final manifest's file list — is
what the server hands the worker to check it got the right data;
``contents_sha256`` checks the rest (script, metadata).

Next to the bundle, ``<bundle_id>.json`` (mode 0600) holds public facts only —
format, bundle id, manifest and contents digests, recipient public key, size
in bytes, creation time — for :func:`find_bundle`.

Security rules
--------------
* No plaintext byte is ever written to the staging area, not even a temporary
  file: each file is read once (:class:`~.fetch.Prefetcher`: several threads
  open and read the files ahead of the tar writer, in manifest order), hashed
  as it streams, framed into the tar stream in memory and handed to age as
  it is produced. Memory stays bounded whatever the dataset size: at most
  ``buffer_bytes`` (64 MiB by default) of queued file data, plus one chunk
  per reader thread and a 1 MiB pipe.
* What runs where: the age engine is an object (:class:`AgeEngine`), a plug
  point: every function that encrypts or decrypts takes ``engine=``
  (default :func:`default_engine`), and :func:`engine_by_name` maps
  ``"auto"``, ``"age-cli"`` or ``"pyrage"`` to one. With
  :class:`AgeCliEngine` (the default when the ``age`` CLI is on PATH,
  Debian package ``age``) this process reads, hashes and frames the tar
  stream and writes it into a pipe to a child ``age -r <recipient>`` whose
  stdout is the ``.partial`` file — two cores, like ``tar | age``; only the
  public recipient is on its command line. Decryption runs
  ``age -d -i /dev/fd/N`` with the ciphertext on its stdin and the identity
  written into an anonymous pipe (never a file, an argument or an
  environment variable; the child gets PATH and LC_ALL only); the tar reader
  verifies what it reads from age's stdout and requires exit status 0 (the
  whole stream authenticated). :class:`PyrageEngine` (the default without
  the CLI) does the same in-process. A failing age process is reaped, its
  stderr goes into the error (CommandFailed; OSError ENOSPC for a full
  disk), and the partial file is removed.
* The ciphertext is written to ``<bundle_id>.tar.age.partial`` (O_CREAT|O_EXCL,
  0600) and renamed to its final name only when complete (its sidecar, with
  the bundle's size, fsynced before); on any error the partial file (and
  sidecar) is removed and the error re-raised. The bundle itself is not
  fsynced: it is a cache that every use authenticates end to end (age's
  AEAD, every file's sha256, both digests), and one cut short by a crash of
  the machine has another size than its sidecar says, so it is not found
  again (:func:`find_bundle`); a results archive, the only copy of what it
  holds, is.
* The per-user directory is created 0700; an existing one that is a symlink,
  belongs to another uid or is open to group/others is refused. The staging
  root must exist (an administrator creates it).
* Each file is hashed (sha256) as it streams; its size is checked, and a
  sha256 known beforehand (recorded in the dataset version by an earlier
  staging) must match: a file that changed raises
  :class:`~xnat_bridge.errors.Conflict` naming it, and nothing is left
  behind. XNAT's md5 is checked by the source (:mod:`xnat_bridge.files`
  streams verify it at their end) or, with ``verify_md5=True``, by the
  readers for files whose sha256 is not known yet (a known one stands for
  bytes whose md5 the staging that recorded it verified). Names are checked with :func:`xnat_bridge.files.safe_relpath`
  (relative, no ``..``/``.``/empty segments, no NUL, no backslash) →
  :class:`~xnat_bridge.errors.InvalidRequest`.
* The first error of any reader (a file that changed, a transfer that cannot
  resume, a cancelled job) stops every reader thread, closes every open
  stream and removes the partial bundle; so does a full staging area
  (OSError ENOSPC/EDQUOT).
* Identities (``AGE-SECRET-KEY-1...``) are never logged and never written to a
  file by this module; :class:`AgeIdentity` hides its secret in ``repr`` and
  refuses to be pickled. Only recipients (public keys) reach the sidecar.
* Extraction decrypts streaming (age's stdout, or a thread running
  ``pyrage.decrypt_io`` into a pipe; the tar reader takes from the pipe) and writes through directory file
  descriptors with O_NOFOLLOW, files 0600 and directories 0700 (umask 077
  without touching the process-wide umask). It refuses members that would
  escape the destination, links, devices, FIFOs, anything not listed in
  MANIFEST.json or listed twice, anything after HASHES.json and a bundle
  without it; verifies every size and sha256 (XNAT md5 too without an expected
  manifest digest: the staging verified it for the worker's bundles) and the expected
  digests, reads the age stream to its authenticated end, and on any
  failure removes everything it created.

Modules, bottom-up (each imports only from modules earlier in this list):
:mod:`.common` (constants, chunk-stream items, progress, file helpers) →
:mod:`.keys`, :mod:`.manifest` (pure) → :mod:`.fetch` (the reader pool),
:mod:`.age_cli`, :mod:`.age_pyrage` (the two engines) → :mod:`.engine` (the
contract and the choice) → :mod:`.stream` (tar writer, encryption into a
file) → :mod:`.area`, :mod:`.results`, :mod:`.extract` (the entry points).
"""


from .area import find_bundle, list_bundles, remove_bundle, stage_files, user_dir
from .common import (
    FETCH_BUFFER,
    FETCH_THREADS,
    FORMAT,
    FORMAT_VERSION,
    HASHES_NAME,
    MANIFEST_NAME,
    PROGRESS_INTERVAL,
)
from .engine import ENGINE_NAMES, AgeCliEngine, AgeEngine, PyrageEngine, default_engine, engine_by_name
from .extract import decrypt_to_directory, extract_bundle
from .fetch import Prefetcher
from .keys import AgeIdentity, generate_keypair
from .manifest import (
    BundleInfo,
    StagedFile,
    build_manifest,
    canonical_json,
    contents_sha256,
    file_entries,
    manifest_sha256,
)
from .results import encrypt_directory

__all__ = [
    "AgeCliEngine", "AgeEngine", "AgeIdentity", "BundleInfo", "StagedFile", "FETCH_BUFFER", "FETCH_THREADS",
    "FORMAT", "FORMAT_VERSION", "HASHES_NAME", "MANIFEST_NAME", "PROGRESS_INTERVAL", "Prefetcher", "PyrageEngine", "build_manifest", "canonical_json",
    "contents_sha256", "decrypt_to_directory", "default_engine", "encrypt_directory", "engine_by_name",
    "ENGINE_NAMES",
    "extract_bundle", "file_entries", "find_bundle", "generate_keypair", "list_bundles",
    "manifest_sha256", "remove_bundle", "stage_files", "user_dir",
]
