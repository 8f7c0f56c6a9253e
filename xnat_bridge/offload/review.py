"""Results held for review ("safe outputs"): the job's and the server's side.

When the hub's job ledger says, as it enters a job at submission
(``POST /hub/api/xnat-hpc/jobs/{id}``, :meth:`ReviewClient.enter`), that a project of
the submitting server's scope needs results review, it answers a review recipient made
for that job alone, and the job seals its results so that neither the user's server nor
the hub alone can open them:

* on the node, :func:`seal_held_results` makes a fresh age identity *K* for the
  results, encrypts ``OUTPUT_DIR`` to it, splits K's secret into two shares
  (:func:`split_secret`: ``K = user_share XOR hub_share``, a one-time pad: each
  share alone is uniformly random), wraps the user's share to the server's
  per-job result recipient and the hub's share to the job's review recipient,
  and encrypts small text previews to that recipient only; K itself is dropped;
* the server unwraps its share (useless alone), keeps it 0600 in the job's
  directory with the sealed archive in the staging area, and registers the
  job with the hub (:class:`ReviewClient`): result list, the hub's wrapped
  share and the previews — all ciphertext or public facts (the hub takes the
  projects from its ledger, and accepts only a share that opens with the job's key);
* the owners decide on the hub; after approval the hub answers its share to
  this user's token, :func:`combine_shares` gives K back and the results are
  decrypted as before; after a rejection the server deletes the archive and
  its share, and :meth:`HeldResults.raise_if_closed` tells the user why.
* the job's output is held with its results: the worker streams none of the
  script's lines, it seals them as the member :data:`LOG_MEMBER` of the results
  (previewed for the reviewers); opening approved results moves it to the end of
  the job's ``log.txt`` (:meth:`HeldResults.release_log`), a rejection deletes it
  with them, and until then the log ends with :meth:`HeldResults.log_note`.

Imports the staging layer only; nothing of the hub.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import stat
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pyrage

from ..errors import Conflict, InvalidRequest, NotFound, PermissionDenied, XnatHpcError, XnatUnavailable
from ..staging import AgeIdentity, encrypt_directory
from ..staging.keys import as_identity, as_recipient

log = logging.getLogger(__name__)

#: what a preview may be: small text files the hub can show to the reviewer
PREVIEW_SUFFIXES = (".txt", ".json", ".csv", ".tsv", ".md", ".log", ".yaml", ".yml")
PREVIEW_MAX_FILE = 64 * 1024
PREVIEW_MAX_FILES = 20
PREVIEW_MAX_TOTAL = 512 * 1024
STATE_FILE = "review.json"
SHARE_FILE = "review-share"
#: the member of held results that is the job's output log (stdout+stderr of the script,
#: never streamed for a held job): released with the results into the job's ``log.txt``
LOG_MEMBER = "xnat-hpc-job-output.log"
#: the job's log in its directory (written by the run; the released output is appended)
LOG_FILE = "log.txt"
STATES = ("held", "approved", "rejected")


class ResultsHeld(Conflict):
    """The results wait for the project owners' review."""


class ResultsRejected(Conflict):
    """An owner rejected the results; they were deleted."""

    status = 410


# -- the key split (pure) ------------------------------------------------------------
def split_secret(secret: bytes, pad: bytes | None = None) -> tuple[bytes, bytes]:
    """``(user_share, hub_share)`` with ``user_share XOR hub_share == secret``; *hub_share*
    is *pad* (default: fresh random bytes), so each share alone says nothing about *secret*."""
    hub = os.urandom(len(secret)) if pad is None else pad
    if len(hub) != len(secret):
        raise ValueError("the pad must be as long as the secret")
    return bytes(a ^ b for a, b in zip(secret, hub)), hub


def combine_shares(user_share: bytes, hub_share: bytes) -> bytes:
    """The secret of :func:`split_secret`; InvalidRequest when the shares cannot belong together."""
    if len(user_share) != len(hub_share) or not user_share:
        raise InvalidRequest("the two key shares of the held results differ in length; "
                             "they are not the shares of one key")
    return bytes(a ^ b for a, b in zip(user_share, hub_share))


def wrap(data: bytes, recipient) -> str:
    """*data* age-encrypted to *recipient*, base64 (for JSON)."""
    rcpt, _ = as_recipient(recipient)
    return base64.b64encode(pyrage.encrypt(data, [rcpt])).decode("ascii")


def unwrap(text: str, identity) -> bytes:
    """The bytes :func:`wrap` sealed; PermissionDenied when *identity* is not the recipient."""
    try:
        blob = base64.b64decode(text.encode("ascii"), validate=True)
    except (ValueError, UnicodeError, AttributeError):
        raise InvalidRequest("a wrapped share or preview is not base64") from None
    try:
        return pyrage.decrypt(blob, [as_identity(identity)])
    except pyrage.DecryptError:
        raise PermissionDenied("a wrapped share or preview was not sealed to this key "
                               "(wrong recipient, or altered)") from None


def identity_from_shares(user_share: bytes, hub_share: bytes) -> AgeIdentity:
    secret = combine_shares(user_share, hub_share)
    try:
        return AgeIdentity(secret.decode("ascii"))
    except (UnicodeError, XnatHpcError):
        raise PermissionDenied("the key shares of the held results do not combine into their key; "
                               "the hub's share or the server's was altered") from None


def preview_candidates(listing: list[dict]) -> list[dict]:
    """Which result files get a preview (pure): small text files, at most
    PREVIEW_MAX_FILES and PREVIEW_MAX_TOTAL bytes, in listing order."""
    out, total = [], 0
    for f in listing:
        name, size = f["name"], int(f["size"])
        if not name.lower().endswith(PREVIEW_SUFFIXES) or size > PREVIEW_MAX_FILE:
            continue
        if len(out) >= PREVIEW_MAX_FILES or total + size > PREVIEW_MAX_TOTAL:
            break
        out.append(f)
        total += size
    return out


# -- on the node -------------------------------------------------------------------
def seal_held_results(out_dir: Path, results_path: str, result_recipient: str,
                      hub_recipient: str, log_member: str | None = None) -> tuple[dict, dict]:
    """Encrypt *out_dir* for review (runs in the job): ``(archive facts, sealed)`` where
    *sealed* holds ``user_share`` (to *result_recipient*), ``hub_share`` and ``previews``
    (to *hub_recipient*): ciphertext only. The results' own key is never returned.

    *log_member* names the job's output log in *out_dir* (:data:`LOG_MEMBER`, put there by
    the worker after the script ended): it is sealed with the results, and always previewed
    for the reviewers (its first PREVIEW_MAX_FILE bytes, whatever its size)."""
    as_recipient(hub_recipient)
    key = AgeIdentity.generate()
    facts = encrypt_directory(out_dir, key.recipient, results_path)
    user_share, hub_share = split_secret(key.secret().encode("ascii"))
    del key
    previews = {}
    shown = preview_candidates([f for f in facts["files"] if f["name"] != log_member])
    if log_member and any(f["name"] == log_member for f in facts["files"]):
        shown.insert(0, {"name": log_member})
    for f in shown:
        fd = os.open(Path(out_dir) / f["name"], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as src:
            previews[f["name"]] = wrap(src.read(PREVIEW_MAX_FILE), hub_recipient)
    sealed = {"user_share": wrap(user_share, result_recipient), "hub_share": wrap(hub_share, hub_recipient),
              "previews": previews, "hub_recipient": hub_recipient}
    return facts, sealed


# -- the hub's API, as the server calls it --------------------------------------------
class ReviewClient:
    """The hub's job ledger and review API with this server's hub token (``$JUPYTERHUB_API_URL``,
    ``$JUPYTERHUB_API_TOKEN``); the token goes in the Authorization header only."""

    def __init__(self, api_url: str, token: str, timeout: float = 15):
        self.api_url = api_url.rstrip("/")
        self._token = token
        self.timeout = timeout

    @classmethod
    def from_env(cls, environ=os.environ) -> ReviewClient | None:
        url, token = environ.get("JUPYTERHUB_API_URL", ""), environ.get("JUPYTERHUB_API_TOKEN", "")
        return cls(url, token) if url and token else None

    def __repr__(self) -> str:
        return f"ReviewClient({self.api_url!r}, token=<hidden>)"

    def _call(self, method: str, path: str, body: dict | None = None) -> dict:
        """*method* on ``{hub api}/xnat-hpc/{path}``; typed errors with the hub's message."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"{self.api_url}/xnat-hpc/{path}", data=data, method=method,
                                     headers={"Authorization": f"token {self._token}",
                                              "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:  # noqa: S310 - hub URL
                return json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as e:
            try:
                message = json.loads(e.read() or b"{}").get("message") or e.reason
            except ValueError:
                message = e.reason
            if e.code == 404:
                raise NotFound(f"the hub answered 404 for {path.partition('?')[0]}: "
                               f"{message} (a hub without the route: add xnat_hpc_handlers() to "
                               "c.JupyterHub.extra_handlers)") from None
            if e.code in (401, 403):
                raise PermissionDenied(f"the hub refused the request: {message}") from None
            if e.code == 409:
                raise Conflict(f"the hub refused the request: {message}") from None
            if e.code < 500:
                raise InvalidRequest(f"the hub refused the request: {message}") from None
            raise XnatUnavailable(f"the hub's review API failed ({e.code}): {message}; "
                                  "try again later") from None
        except (urllib.error.URLError, OSError, ValueError) as e:
            raise XnatUnavailable(f"the hub's review API is not reachable ({e}); try again "
                                  "when the hub is back") from None

    def enter(self, job_id: str, facts: dict) -> dict:
        """Enter *job_id* in the hub's job ledger at its submission (*facts*: dataset,
        dataset_version, manifest_sha256, script_sha256). The hub stamps the user and this
        server and takes the job's projects from this server's scope as it decided it; the
        answer has ``review`` (the projects whose owners review the results) and
        ``recipient`` (this job's own review recipient, or None)."""
        return self._call("POST", f"jobs/{job_id}", facts)

    def report(self, job_id: str, **facts) -> dict:
        """Tell the ledger the job's Slurm id, state, manifest digest or message (claims the
        hub records as this server's; it checks a Slurm id against Slurm before acting on it)."""
        return self._call("PATCH", f"jobs/{job_id}", {k: v for k, v in facts.items() if v not in (None, "")})

    def register(self, job_id: str, payload: dict) -> dict:
        return self._call("POST", f"review/jobs/{job_id}", payload)

    def sign_publication(self, job_id: str, body: dict) -> dict:
        """The hub's signed RO-Crate of *job_id*'s results for XNAT (:mod:`.publish`)."""
        return self._call("POST", f"jobs/{job_id}/publish", body)

    def report_publication(self, job_id: str, state: str, message: str = "") -> dict:
        """Tell the hub how the upload ended (``published`` or ``failed``; audited there)."""
        return self._call("PATCH", f"jobs/{job_id}/publish", {"state": state, "message": message[:500]})

    # -- sharing this server (xnat_bridge.sharing) -------------------------------------------
    def shares(self) -> dict:
        """``{"server", "shares": [{"user", "created"}]}`` of this server."""
        return self._call("GET", "shares")

    def share(self, user: str) -> dict:
        """Share this server with *user* (the hub checks XNAT: every project of its scope)."""
        return self._call("POST", "shares", {"user": user})

    def unshare(self, user: str) -> None:
        self._call("DELETE", f"shares/{urllib.parse.quote(user, safe='')}")

    def check_guest(self, user: str) -> dict:
        """Whether *user* may use this server now (PermissionDenied when not)."""
        return self._call("GET", f"shares/{urllib.parse.quote(user, safe='')}")

    def status(self, job_id: str, share: bool = False) -> dict:
        """``{"state", "reason", "since", "projects", "pending", ...}``; with *share*, once
        approved, also ``share`` (base64 of the hub's share; the hub audits each release)."""
        return self._call("GET", f"review/jobs/{job_id}" + ("?share=1" if share else ""))


# -- the server's record of a held job ---------------------------------------------------
def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


class HeldResults:
    """``<job dir>/review.json`` (public facts, no secret) and ``<job dir>/review-share``
    (the server's share: random bytes, useless without the hub's)."""

    def __init__(self, job_dir: Path):
        self.job_dir = Path(job_dir)
        self.path = self.job_dir / STATE_FILE

    def exists(self) -> bool:
        return self.path.exists()

    def load(self) -> dict:
        return json.loads(self.path.read_text())

    def save(self, state: dict) -> None:
        _write_private(self.path, json.dumps(state, indent=1, sort_keys=True).encode())

    def save_share(self, share: bytes) -> None:
        _write_private(self.job_dir / SHARE_FILE, base64.b64encode(share))

    def share(self) -> bytes:
        return base64.b64decode((self.job_dir / SHARE_FILE).read_bytes())

    def forget_secrets(self, archive: str | None) -> None:
        """Delete the server's share and the sealed archive (after rejection or opening)."""
        for p in (self.job_dir / SHARE_FILE, Path(archive) if archive else None):
            if p is None:
                continue
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass

    @staticmethod
    def public(state: dict | None) -> dict | None:
        """The ``review`` field of a job's JSON: ``{"state", "reason", "since", "projects"}``."""
        if not state:
            return None
        return {"state": state.get("state", "held"), "reason": state.get("reason", ""),
                "since": state.get("since", ""), "projects": list(state.get("projects") or ()),
                "pending": list(state.get("pending") or ())}

    @staticmethod
    def raise_if_closed(job_id: str, state: dict) -> None:
        """ResultsHeld / ResultsRejected with the reason, unless *state* is approved."""
        st = state.get("state")
        if st == "rejected":
            by = f" ({state['by']})" if state.get("by") else ""
            raise ResultsRejected(f"the results of job {job_id} were rejected by an owner{by}: "
                                  f"{state.get('reason') or 'no reason given'}; they were deleted",
                                  item=job_id)
        if st != "approved":
            waiting = ", ".join(state.get("pending") or state.get("projects") or ()) or "its projects"
            raise ResultsHeld(f"the results of job {job_id} are held for review by the owners of "
                              f"{waiting} since {state.get('since', '?')}; they open once every "
                              "project's owner approved", item=job_id)

    # -- the job's output, held with the results ------------------------------------
    @staticmethod
    def log_note(state: dict) -> str | None:
        """The line a held job's log shows for *state* (pure): where its output is and when
        it comes; None once the results (and so the output) were opened."""
        if state.get("opened"):
            return None
        st = state.get("state")
        if st == "rejected":
            reason = " ".join(str(state.get("reason") or "no reason given").split())[:300]
            return (f"[xnat-hpc] an owner rejected this job's results ({reason}); the script's output "
                    "was deleted with them\n")
        if st == "approved":
            return ("[xnat-hpc] the project owners approved this job's results; the script's output is "
                    "shown here once the results are opened (job.results(), or Results in the job's "
                    "panel)\n")
        waiting = ", ".join(state.get("pending") or state.get("projects") or ()) or "its projects"
        return ("[xnat-hpc] this job's output is held for review with its results; it is released when "
                f"the project owners approve (waiting for the owners of {waiting})\n")

    def note_log(self) -> str | None:
        """Append :meth:`log_note` for the saved state to the job's ``log.txt`` unless the log
        ends with it already (idempotent: a new line only when the state changed); returns it."""
        note = self.log_note(self.load())
        if note is None:
            return None
        data = note.encode()
        path = self.job_dir / LOG_FILE
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                     0o600)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise Conflict(f"{path} is not a regular file; remove it", item=str(path))
            size = os.fstat(fd).st_size
            if size < len(data) or os.pread(fd, len(data), size - len(data)) != data:
                _write_all(fd, data)
        finally:
            os.close(fd)
        return note

    def release_log(self, results_dir: Path, files: list[dict]) -> list[dict]:
        """Move the job's output (member :data:`LOG_MEMBER` of opened results in *results_dir*)
        to the end of the job's ``log.txt``; returns *files* without it."""
        if not any(f["name"] == LOG_MEMBER for f in files):
            return files
        src = os.open(Path(results_dir) / LOG_MEMBER, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            dst = os.open(self.job_dir / LOG_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW
                          | os.O_NONBLOCK | os.O_CLOEXEC, 0o600)
        except BaseException:
            os.close(src)
            raise
        try:
            if not (stat.S_ISREG(os.fstat(src).st_mode) and stat.S_ISREG(os.fstat(dst).st_mode)):
                raise Conflict(f"the job's output log or {self.job_dir / LOG_FILE} is not a regular file",
                               item=LOG_MEMBER)
            _write_all(dst, b"[xnat-hpc] the script's output, released with the approved results:\n")
            while chunk := os.read(src, 1 << 20):
                _write_all(dst, chunk)
        finally:
            os.close(src)
            os.close(dst)
        os.unlink(Path(results_dir) / LOG_MEMBER)
        return [f for f in files if f["name"] != LOG_MEMBER]


# -- the server's side of a job run ---------------------------------------------------------
def registration(job_id: str, rec, review_projects: list[str], slurm_job_id: str | None, facts: dict,
                 sealed: dict) -> dict:
    """What the server registers with the hub for a held job (pure): public facts and
    ciphertext sealed to the job's review key; never the server's share. *review_projects*
    are the projects the hub's ledger named when it entered the job (the hub takes them
    from its ledger anyway; they are kept here so that the server shows the same)."""
    return {"job": job_id, "dataset": rec.dataset, "dataset_version": rec.dataset_version,
            "projects": sorted(review_projects), "manifest_sha256": rec.manifest_sha256,
            "script_sha256": rec.script_sha256, "slurm_job_id": slurm_job_id or "",
            "results": [{"name": f["name"], "size": int(f["size"]), "sha256": f["sha256"]}
                        for f in facts["files"]],
            "share": sealed["hub_share"], "previews": sealed["previews"]}


def hold(run, result: dict, provenance: dict, now: str) -> dict:
    """Keep a finished job's sealed results for review (in the server, after the job):
    unwrap and store the server's share, keep the archive (the run's clean-up no longer
    deletes it), register with the hub (retried later by :func:`refresh` when the hub is
    down). Returns the review state written to ``review.json``."""
    facts, sealed = result["results"], result["review"]
    held = HeldResults(run.job_dir)
    held.save_share(unwrap(sealed["user_share"], run.result_identity))
    archive, run.results_archive = str(run.results_archive), None
    rec = run.ctx.registry.get(run.id)
    payload = registration(run.id, rec, run.review["review"], run.slurm_job_id, facts, sealed)
    state = {"state": "held", "reason": "", "since": now, "projects": payload["projects"],
             "pending": list(payload["projects"]), "archive": archive,
             "registered": False, "payload": payload, "provenance": provenance}
    held.save(state)
    run.ctx.audit("review_hold", items=payload["projects"], files=len(payload["results"]),
                  bytes=sum(f["size"] for f in payload["results"]),
                  hashes={"manifest": rec.manifest_sha256, "script": rec.script_sha256},
                  detail=f"job {run.id} slurm {run.slurm_job_id}: results held for review")
    return register(run.review["client"], held, state, run.id)


def register(client: ReviewClient | None, held: HeldResults, state: dict, job_id: str) -> dict:
    """Register *state*'s payload with the hub once; a hub that is down: try again later."""
    if state.get("registered") or client is None:
        return state
    try:
        answer = client.register(job_id, state["payload"])
    except XnatUnavailable as e:
        log.warning("job %s: held results not yet registered with the hub: %s", job_id, e.message)
        return state
    state = {**state, "registered": True, "pending": list(answer.get("pending") or state["pending"])}
    held.save(state)
    return state


def refresh(client: ReviewClient | None, held: HeldResults, job_id: str, audit,
            want_share: bool = False) -> tuple[dict, bytes | None]:
    """Ask the hub about a held job: ``(state, hub_share)``; the share only when approved
    and *want_share* (to open the results now).

    Registers first if that has not happened yet. A rejection deletes the sealed archive
    and the server's share here and now (audited ``review_delete``). Without a hub
    (*client* None) the saved state is returned unchanged.
    """
    state = held.load()
    if state.get("state") == "rejected" or state.get("opened") or client is None:
        return state, None
    state = register(client, held, state, job_id)
    if not state.get("registered"):
        return state, None
    answer = client.status(job_id, share=want_share)
    hub_state = answer.get("state")
    if hub_state not in STATES:
        raise XnatUnavailable(f"the hub answered an unknown review state {str(hub_state)[:40]!r} "
                              f"for job {job_id}")
    state = {**state, "state": hub_state, "reason": answer.get("reason", ""), "by": answer.get("by", ""),
             "pending": list(answer.get("pending") or ())}
    share = None
    if hub_state == "approved" and want_share:
        share = base64.b64decode(str(answer.get("share") or ""))
    elif hub_state == "rejected":
        held.forget_secrets(state.get("archive"))
        state["decided"] = answer.get("decided", "")
        audit("review_delete", items=state.get("projects") or (),
              detail=f"job {job_id}: results rejected by an owner and deleted: "
                     f"{state['reason']}"[:500])
    held.save(state)
    return state, share


def open_approved(held: HeldResults, state: dict, hub_share: bytes, out_dir: Path, engine=None) -> list[dict]:
    """Decrypt the approved results into *out_dir* with the combined key, the job's output
    (:data:`LOG_MEMBER`) to the end of its ``log.txt`` (:meth:`HeldResults.release_log`);
    then delete the sealed archive and the server's share. Returns the result files'
    listing (the output log not among them)."""
    from ..staging import decrypt_to_directory

    identity = identity_from_shares(held.share(), hub_share)
    listing = decrypt_to_directory(state["archive"], identity, out_dir, engine=engine)
    del identity
    files = held.release_log(out_dir, listing["files"])  # the job's output, into its log.txt
    held.forget_secrets(state["archive"])
    held.save({**state, "state": "approved", "opened": True, "pending": []})
    return files


def open_held(client: ReviewClient | None, held: HeldResults, job_id: str, audit, rec, engine=None) -> None:
    """Open a held job's results into ``<job dir>/results`` once the hub approved them, with
    ``provenance.json`` and an audited ``result_retrieve``; otherwise raise
    :class:`ResultsHeld` / :class:`ResultsRejected`. Opened before: nothing to do."""
    state = held.load()
    if state.get("opened"):
        return
    state, share = refresh(client, held, job_id, audit, want_share=True)
    if share is None:
        HeldResults.raise_if_closed(job_id, state)
    files = open_approved(held, state, share, held.job_dir / "results", engine=engine)
    prov = {**state.get("provenance", {}), "results": files,
            "review": {"state": "approved", "projects": state.get("projects", [])}}
    _write_private(held.job_dir / "provenance.json", json.dumps(prov, indent=1, sort_keys=True).encode())
    audit("result_retrieve", items=state.get("projects") or (), files=len(files),
          bytes=sum(f["size"] for f in files),
          hashes={"manifest": rec.manifest_sha256, "script": rec.script_sha256},
          detail=f"job {job_id} slurm {rec.slurm_job_id}: approved results opened")
