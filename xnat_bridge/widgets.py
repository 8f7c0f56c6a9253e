"""Notebook widgets for the whole flow, driving the Python API (never the REST API).

    from xnat_bridge.widgets import DatasetPicker, OffloadForm
    picker = DatasetPicker()          # browse the scope lazily, select, name, create
    picker                            # display it; picker.manifest after "Create dataset"
    form = OffloadForm()              # dataset + script + resources within the limits
    form                              # Submit → job monitor: state, elapsed, log tail, Cancel

Both take the objects they drive as arguments (a
:class:`~xnat_bridge.connection.Connection`, an
:class:`~xnat_bridge.offload.manager.OffloadManager`); the defaults are
``xnat_bridge.connect()`` and the notebook API's default manager. Every
button has a public handler (``on_add``, ``on_create``, ``on_submit``,
``on_cancel``, ...), so the widgets can be driven and tested without a
browser. Errors are shown in the widget in words; they never raise into the
notebook.
"""

from __future__ import annotations

import datetime as _dt
import html
import logging
import os
import threading
import time
import uuid

from .errors import XnatHpcError
from .extras import needs_extra

with needs_extra("server", "the notebook widgets (xnat_bridge.widgets)"):
    import ipywidgets as w

log = logging.getLogger(__name__)

TERMINAL = {"done", "failed", "cancelled", "lost"}
LOG_TAIL_LINES = 40


def human_size(n: int) -> str:
    """``1536`` → ``"1.5 KiB"`` (pure)."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover


def elapsed(record, now: _dt.datetime | None = None) -> str:
    """Elapsed ``H:MM:SS`` of a job record since it was created, until it ended (pure)."""
    def parse(s):
        return _dt.datetime.fromisoformat(s.replace("Z", "+00:00")) if s else None

    start = parse(record.created)
    end = parse(record.ended) or now or _dt.datetime.now(_dt.timezone.utc)
    secs = max(0, int((end - start).total_seconds())) if start else 0
    return f"{secs // 3600}:{secs // 60 % 60:02d}:{secs % 60:02d}"


def _message(text: str, error: bool = False) -> str:
    color = "#b00020" if error else "inherit"
    return f'<span style="color:{color}">{html.escape(text, quote=False)}</span>'


def _state(record) -> str:
    return getattr(record.state, "value", record.state)


class DatasetPicker(w.VBox):
    """Browse projects → subjects → experiments → scans, collect a selection, create a dataset."""

    def __init__(self, connection=None, *, page: int = 100):
        self.conn = connection
        self.page = page
        self.items: list[dict] = []  # the selection, as XNAT items
        self.manifest = None  # the dataset created last
        self._subjects_shown = 0
        self.project = w.Dropdown(description="Project", options=[])
        self.subjects = w.SelectMultiple(description="Subjects", options=[], rows=6)
        self.more_subjects = w.Button(description="More subjects", disabled=True)
        self.experiments = w.SelectMultiple(description="Experiments", options=[], rows=6)
        self.scans = w.SelectMultiple(description="Scans", options=[], rows=6)
        self.add = w.Button(description="Add to selection", icon="plus")
        self.selection = w.SelectMultiple(description="Selection", options=[], rows=5)
        self.remove = w.Button(description="Remove", icon="minus")
        self.name = w.Text(description="Name", placeholder="e.g. t1-all")
        self.create = w.Button(description="Create dataset", button_style="primary")
        self.status = w.HTML()
        self.project.observe(lambda _: self.load_subjects(), names="value")
        self.subjects.observe(lambda _: self.load_experiments(), names="value")
        self.experiments.observe(lambda _: self.load_scans(), names="value")
        self.more_subjects.on_click(lambda _: self.load_subjects(more=True))
        self.add.on_click(self.on_add)
        self.remove.on_click(self.on_remove)
        self.create.on_click(self.on_create)
        super().__init__([self.project, w.HBox([self.subjects, self.more_subjects]), self.experiments,
                          self.scans, w.HBox([self.add, self.remove]), self.selection,
                          w.HBox([self.name, self.create]), self.status])
        self._guard(self.load_projects)

    # -- plumbing ---------------------------------------------------------------
    def _connection(self):
        if self.conn is None:
            from . import connect

            self.conn = connect()
        return self.conn

    def _guard(self, fn, *args):
        """Run *fn*; show an XnatHpcError (or an unexpected error) in the status line."""
        try:
            return fn(*args)
        except XnatHpcError as e:
            self.status.value = _message(e.message, error=True)
        except Exception as e:
            log.exception("DatasetPicker: %s failed", getattr(fn, "__name__", fn))
            self.status.value = _message(f"unexpected error: {e}", error=True)
        return None

    # -- lazy browsing -------------------------------------------------------------
    def load_projects(self):
        projects = self._connection().projects()
        self.project.options = [(f"{p.id} ({p.role})", p.id) for p in projects]
        if projects and self.project.value is None:
            self.project.value = projects[0].id  # loads its subjects
        if not projects:
            self.status.value = _message("no XNAT project in this server's scope is readable for you")

    def load_subjects(self, more: bool = False):
        def work():
            if not self.project.value:
                self.subjects.options = []
                return
            offset = self._subjects_shown if more else 0
            pg = self._connection().subjects(self.project.value, offset, self.page)
            opts = [(s.label, s.label) for s in pg.items]
            self.subjects.options = (list(self.subjects.options) + opts) if more else opts
            self._subjects_shown = offset + len(pg.items)
            self.more_subjects.disabled = not pg.has_more
            if not more:
                self.load_experiments()

        self._guard(work)

    def load_experiments(self):
        def work():
            project = self.project.value
            if not project:
                return
            subjects = list(self.subjects.value) or [None]
            exps = []
            for subject in subjects:
                exps += self._connection().experiments(project, subject, 0, 500).items
            self.experiments.options = [(f"{e.label} [{e.subject_label}] {e.date}", e.label) for e in exps]
            self.scans.options = []

        self._guard(work)

    def load_scans(self):
        def work():
            chosen = list(self.experiments.value)
            if len(chosen) != 1:
                self.scans.options = []
                return
            scans = self._connection().scans(self.project.value, chosen[0])
            self.scans.options = [(f"{s.id} {s.type} ({s.file_count} files, {human_size(s.size)})", s.id)
                                  for s in scans]

        self._guard(work)

    # -- selection and creation ------------------------------------------------------
    def current_items(self) -> list[dict]:
        """What "Add" adds: the most specific level that has a choice."""
        p = self.project.value
        if not p:
            return []
        if self.scans.value and len(self.experiments.value) == 1:
            e = self.experiments.value[0]
            return [{"project": p, "experiment": e, "scan": s} for s in self.scans.value]
        if self.experiments.value:
            return [{"project": p, "experiment": e} for e in self.experiments.value]
        if self.subjects.value:
            return [{"project": p, "subject": s} for s in self.subjects.value]
        return [{"project": p}]

    def _show_items(self):
        self.selection.options = [("/".join(i.values()), n) for n, i in enumerate(self.items)]

    def on_add(self, _=None):
        for item in self.current_items():
            if item not in self.items:
                self.items.append(item)
        self._show_items()

    def on_remove(self, _=None):
        drop = set(self.selection.value)
        self.items = [i for n, i in enumerate(self.items) if n not in drop]
        self._show_items()

    def on_create(self, _=None):
        def work():
            if not self.items:
                self.on_add()
            self.status.value = _message(f"listing the files of {len(self.items)} item(s) in XNAT …")
            m = self._connection().create_dataset(self.name.value.strip(), list(self.items))
            self.manifest = m
            self.status.value = _message(f"dataset {m.name} v{m.version}: {len(m.files)} files, "
                                         f"{human_size(m.total_size)}")
            return m

        self.create.disabled = True
        try:
            return self._guard(work)
        finally:
            self.create.disabled = False


class OffloadForm(w.VBox):
    """Dataset, script and resources within the site's limits; Submit; then a job monitor."""

    def __init__(self, manager=None, *, script_dir: str | None = None, interval: float = 2.0,
                 monitor: bool = True):
        if manager is None:
            from .offload.api import default_manager

            manager = default_manager()
        self.manager = manager
        self.policy = manager.policy
        self.interval = interval
        self.monitor = monitor
        self.job = None  # the JobRecord submitted last
        self._log_offset = 0
        self._log_lines: list[str] = []
        self._token = uuid.uuid4().hex
        self._thread: threading.Thread | None = None
        p = self.policy
        gib = 2**30
        self.dataset = w.Dropdown(description="Dataset", options=self._datasets())
        self.script = w.Combobox(description="Script", options=self._scripts(script_dir),
                                 placeholder="train.py", ensure_option=False)
        self.partition = w.Dropdown(description="Partition", options=[p.partition], value=p.partition)
        self.cpus = w.BoundedIntText(description="CPUs", value=p.default_cpus, min=1,
                                     max=p.max_cpus or 1024)
        self.memory = w.BoundedFloatText(description="Memory GiB", value=p.default_memory / gib,
                                         min=0.125, max=(p.max_memory or 64 * 2**40) / gib, step=0.5)
        self.gpus = w.BoundedIntText(description="GPUs", value=p.default_gpus, min=0,
                                     max=p.max_gpus if p.max_gpus is not None else 64)
        self.walltime = w.Text(description="Walltime", value=_hms(p.default_walltime),
                               placeholder="HH:MM:SS")
        self.submit = w.Button(description="Submit", button_style="primary", icon="rocket")
        self.status = w.HTML()
        self.state = w.HTML()
        #: the bundle's staging progress (bytes, files, rate, time left), shown while the job stages
        self.progress = w.IntProgress(value=0, min=0, max=100, description="Staging",
                                      layout=w.Layout(display="none"))
        self.log_tail = w.Textarea(layout=w.Layout(width="100%", height="12em"), disabled=True)
        self.cancel = w.Button(description="Cancel job", button_style="danger", disabled=True)
        self.results = w.HTML()
        for field in (self.dataset, self.script, self.partition, self.cpus, self.memory, self.gpus,
                      self.walltime):
            field.observe(self._inputs_changed, names="value")
        self.submit.on_click(self.on_submit)
        self.cancel.on_click(self.on_cancel)
        limits = ", ".join(f"{k} ≤ {v}" for k, v in (
            ("CPUs", p.max_cpus), ("memory", p.max_memory and human_size(p.max_memory)),
            ("GPUs", p.max_gpus), ("walltime", p.max_walltime and _hms(p.max_walltime))) if v is not None)
        super().__init__([
            self.dataset, self.script, self.partition, w.HBox([self.cpus, self.gpus]),
            w.HBox([self.memory, self.walltime]), w.HTML(_message(f"limits: {limits or 'none'}")),
            self.submit, self.status, self.state, self.progress, self.log_tail, self.cancel, self.results])

    def _datasets(self) -> list[str]:
        try:
            conn = self.manager.connection
            store = conn.datasets if conn is not None else None
            return store.names() if store is not None else []
        except XnatHpcError:
            return []

    def _scripts(self, script_dir: str | None) -> list[str]:
        from .serverext.views import list_scripts

        root = script_dir or getattr(self.manager, "root_dir", None) or os.getcwd()
        return [s["path"] for s in list_scripts(root)]

    def _inputs_changed(self, _=None):
        self._token = uuid.uuid4().hex  # a changed form is a new job; an unchanged one is the same

    # -- actions --------------------------------------------------------------------
    def on_submit(self, _=None):
        """Submit (twice without changing the form: the same job, thanks to the client token)."""
        self.submit.disabled = True
        try:
            if not self.dataset.value or not self.script.value:
                raise XnatHpcError("choose a dataset and a script first")
            rec = self.manager.submit(
                self.dataset.value, self.script.value.strip(), partition=self.partition.value,
                cpus=int(self.cpus.value), mem=int(self.memory.value * 2**30), gpus=int(self.gpus.value),
                walltime=self.walltime.value.strip(), client_token=self._token)
        except XnatHpcError as e:
            self.status.value = _message(e.message, error=True)
            return None
        except Exception as e:
            log.exception("OffloadForm: submit failed")
            self.status.value = _message(f"unexpected error: {e}", error=True)
            return None
        finally:
            self.submit.disabled = False
        if self.job is None or self.job.id != rec.id:
            self._log_offset, self._log_lines = 0, []
        self.job = rec
        self.status.value = _message(f"job {rec.id} submitted")
        self.refresh()
        if self.monitor:
            self.start_monitor()
        return rec

    def on_cancel(self, _=None):
        if self.job is None:
            return None
        try:
            self.job = self.manager.cancel(self.job.id)
        except XnatHpcError as e:
            self.status.value = _message(e.message, error=True)
        self.refresh()
        return self.job

    def refresh(self) -> str | None:
        """Read the job's state, log tail and (when done) results once; returns the state."""
        if self.job is None:
            return None
        try:
            rec = self.job = self.manager.get(self.job.id)
            text, self._log_offset = self.manager.logs(rec.id, self._log_offset)
        except XnatHpcError as e:
            self.status.value = _message(e.message, error=True)
            return None
        if text:
            self._log_lines = (self._log_lines + text.splitlines())[-LOG_TAIL_LINES:]
            self.log_tail.value = "\n".join(self._log_lines)
        state = _state(rec)
        slurm = f", Slurm job {rec.slurm_job_id}" if rec.slurm_job_id else ""
        from .offload.progress import progress_percent, progress_text

        live = self._staging_progress(rec.id) if state == "staging" else None
        detail = progress_text(live) if live else rec.message
        self.state.value = _message(f"{rec.id}: {state} — {elapsed(rec)}{slurm} — {detail}",
                                    error=state in ("failed", "lost"))
        if live:
            self.progress.value = progress_percent(live)
            self.progress.layout.display = None
        else:
            self.progress.layout.display = "none"
        self.cancel.disabled = state in TERMINAL
        if state == "done" and not self.results.value:
            try:
                res = self.manager.results(rec.id)
                files = ", ".join(f"{f['name']} ({human_size(f['size'])})" for f in res["files"][:20])
                self.results.value = _message(f"results in {res['path']}: {files}")
            except XnatHpcError as e:
                self.results.value = _message(e.message, error=True)
        return state

    def _staging_progress(self, job_id: str) -> dict | None:
        of = getattr(self.manager, "progress", None)
        return of(job_id) if of is not None else None

    def start_monitor(self) -> threading.Thread:
        """Refresh every ``interval`` seconds in a thread until the job has ended."""
        if self._thread is not None and self._thread.is_alive():
            return self._thread

        def loop():
            while self.refresh() not in TERMINAL | {None}:
                time.sleep(self.interval)

        self._thread = threading.Thread(target=loop, name=f"xnat-hpc-monitor-{self.job.id}", daemon=True)
        self._thread.start()
        return self._thread


def _hms(seconds: int) -> str:
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


__all__ = ["DatasetPicker", "OffloadForm", "elapsed", "human_size"]
