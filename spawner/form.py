"""The spawn form: a pure function of the profiles and projects a user may use.

Server-rendered HTML that works without JavaScript (radio buttons for the
profile, checkboxes for the projects), every input with a ``<label>``, grouped
in ``<fieldset>``\\ s with a ``<legend>``. JupyterHub puts it inside its own
``<form>`` (with the XSRF token and the Start button). Every value is escaped.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from html import escape

from hub_ext.profiles import Profile, format_memory, format_walltime


def _resources(p: Profile) -> str:
    r = p.resources
    parts = [f"{r.cpus} CPU{'s' * (r.cpus != 1)}"]
    if r.memory:
        parts.append(format_memory(r.memory))
    if r.gpus:
        parts.append(f"{r.gpus} GPU{'s' * (r.gpus != 1)}")
    if r.walltime:
        parts.append(f"up to {format_walltime(r.walltime)}")
    if r.partition:
        parts.append(f"partition {r.partition}")
    return ", ".join(parts)


def render_form(profiles: Iterable[Profile], project_roles: Mapping[str, str], *,
                selected_profile: str | None = None, selected_projects: Iterable[str] = (),
                project_names: Mapping[str, str] | None = None) -> str:
    """HTML for the spawn page (no ``<form>`` element: JupyterHub adds it)."""
    profiles = list(profiles)
    chosen = set(selected_projects)
    names = project_names or {}
    if not profiles:
        return ('<p class="xnat-hpc-empty" role="alert">No server profile is available to you. '
                "Ask your hub administrator which XNAT role or project gives access.</p>")
    default = selected_profile or next((p.slug for p in profiles if p.default), profiles[0].slug)
    out = ['<div class="xnat-hpc-form">',
           '<fieldset id="xnat-hpc-profiles"><legend>Server profile</legend>']
    for p in profiles:
        pid = f"profile-{escape(p.slug)}"
        checked = " checked" if p.slug == default else ""
        out.append(
            f'<div class="xnat-hpc-profile"><input type="radio" name="profile" id="{pid}" '
            f'value="{escape(p.slug)}"{checked} aria-describedby="{pid}-desc"> '
            f'<label for="{pid}"><strong>{escape(p.display_name)}</strong></label> '
            f'<span class="xnat-hpc-backend">({escape(p.backend)})</span>'
            f'<div id="{pid}-desc" class="xnat-hpc-desc">{escape(p.description)}'
            f' — {escape(_resources(p))}</div></div>')
    out.append("</fieldset>")
    out.append('<fieldset id="xnat-hpc-projects"><legend>XNAT projects to work on</legend>')
    if not project_roles:
        out.append('<p class="xnat-hpc-empty" role="alert">You cannot read any XNAT project. '
                   "Ask a project owner to add you to their project in XNAT.</p>")
    for project in sorted(project_roles):
        role = project_roles[project]
        fid = f"project-{escape(project)}"
        checked = " checked" if project in chosen else ""
        title = names.get(project) or ""
        label = escape(project) + (f" — {escape(title)}" if title and title != project else "")
        out.append(
            f'<div class="xnat-hpc-project"><input type="checkbox" name="project" id="{fid}" '
            f'value="{escape(project)}"{checked}> <label for="{fid}">{label}</label> '
            f'<span class="xnat-hpc-role" data-role="{escape(role)}">{escape(role)}</span></div>')
    out.append("</fieldset>")
    out.append('<p class="xnat-hpc-note">Only the selected projects are visible in the server, '
               "read-only, and XNAT checks your rights again when the server starts.</p></div>")
    return "\n".join(out)
