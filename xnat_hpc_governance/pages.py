"""The owners' pages from Jinja2 templates: one set, shipped in ``xnat_hpc_governance/templates/``,
overridable by a site the way kubespawner's form templates are
(``profile_form_template`` + ``additional_profile_form_template_paths``).

One :class:`jinja2.Environment` per hub (:func:`ensure_pages` keeps it in the Tornado
settings, made from the hub's configuration on first use; nothing module-global):

* **autoescape on** for every template (``select_autoescape``, strings included): a value
  is escaped wherever a template prints it, so a hostile XNAT name, file name or preview
  is shown, never run;
* ``StrictUndefined``: a template naming a variable the page does not pass fails loudly
  instead of printing nothing;
* a :class:`~jinja2.ChoiceLoader` over the site's directories first
  (``c.XnatHpcPages.template_paths``), then the package's ``templates/``; the packaged
  ones are also reachable as ``xnat-hpc-hub/<name>``, so a site's ``xnat-hpc-base.html``
  can ``{% extends "xnat-hpc-hub/xnat-hpc-base.html" %}`` and change one block.

The pages' data is shaped by pure functions in :mod:`xnat_hpc_governance.owner_render`,
:mod:`xnat_hpc_governance.owner_access` and :mod:`xnat_hpc_governance.review_page`; the templates only lay it out.
:data:`TEMPLATES` names the templates and what each receives (docs/admin.md,
"Customising the owners' pages").
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, MutableMapping

import jinja2
from traitlets import List, Unicode, observe
from traitlets.config import LoggingConfigurable

#: the packaged templates (shipped in the wheel and the sdist with the package's files)
PACKAGE_TEMPLATES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates")
#: the prefix under which the packaged templates stay reachable when a site overrides one
PACKAGE_PREFIX = "xnat-hpc-hub"
#: where :func:`ensure_pages` keeps the hub's one :class:`XnatHpcPages` in the Tornado settings
SETTINGS_KEY = "xnat_hpc_pages"

#: the templates a site may override, and what each is given
TEMPLATES = {
    "xnat-hpc-base.html": "the page shell every page extends: blocks title, style, head, header, "
                          "body, footer",
    "xnat-hpc-macros.html": "macros: table(t) (t: id, caption, headers, rows, empty)",
    "xnat-hpc-owner.html": "/services/xnat-hpc-governance/owner: visitor, owned, chain_ok, chain, chain_checked, links, "
                           "projects, form, csv_url, json_url, total, page, pages, prev_url, next_url, "
                           "events, error, recorded_by_hub, reported_by_server",
    "xnat-hpc-owner-project.html": "one project's section of the owner page: p (project, members, "
                                   "members_error, actions_html, servers, jobs, downloads)",
    "xnat-hpc-owner-filters.html": "the owner page's filter form: form (action_url, projects, user, users, "
                                   "actions, since, until, sizes)",
    "xnat-hpc-owner-actions.html": "a project's owner actions: project, access_url, review_url",
    "xnat-hpc-access.html": "/services/xnat-hpc-governance/owner/access: visitor, owned, sections, message, error, back_url",
    "xnat-hpc-access-section.html": "one project on the access page: project, members (login, name, group), "
                                    "groups, xsrf, action_url",
    "xnat-hpc-review.html": "/services/xnat-hpc-governance/review: user, notice, owned, projects, held, decided, xsrf",
    "xnat-hpc-preview.html": "one held result's preview: preview (name, kind, header, rows, text, notes)",
    "xnat-hpc-error.html": "a page that could not be shown: status, message, home_url",
}


def environment(paths: Iterable[str] = (), log: logging.Logger | None = None) -> jinja2.Environment:
    """The pages' environment: the directories *paths* (a site's) first, then the packaged
    templates; autoescaping, ``StrictUndefined``. A plain function (tests call it with a
    temporary directory); the hub keeps one per process through :func:`ensure_pages`."""
    site = [str(p) for p in paths]
    for p in site:
        if not os.path.isdir(p):
            (log or logging.getLogger(__name__)).warning(
                "c.XnatHpcPages.template_paths: %s is not a directory; the packaged templates are used", p)
    packaged = jinja2.FileSystemLoader(PACKAGE_TEMPLATES)
    loader = jinja2.ChoiceLoader([jinja2.FileSystemLoader(site), packaged,
                                  jinja2.PrefixLoader({PACKAGE_PREFIX: packaged})])
    return jinja2.Environment(
        loader=loader,
        autoescape=jinja2.select_autoescape(enabled_extensions=("html", "htm", "xml"),
                                            default_for_string=True, default=True),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=False,
    )


class XnatHpcPages(LoggingConfigurable):
    """Where the owners' pages come from (one per hub, in the Tornado settings under
    :data:`SETTINGS_KEY`; see the module docstring)."""

    template_paths = List(
        Unicode(),
        help="""Directories searched for the owners' page templates (the audit page
        /services/xnat-hpc-governance/owner, the access page …/owner/access, the results review
        …/review; served by the governance service, which reads the hub's configuration) before the packaged ones, in this order: a file there named
        like a packaged template (xnat-hpc-base.html, xnat-hpc-owner.html, ... listed in
        docs/admin.md) replaces it. A site template may {% extends "xnat-hpc-base.html" %}, and
        reaches the packaged version of a template it replaces as
        "xnat-hpc-hub/<name>" (e.g. {% extends "xnat-hpc-hub/xnat-hpc-base.html" %} in the
        site's own xnat-hpc-base.html, to add a banner in its header block). Autoescaping is
        on in every template: values are escaped when printed. Warning: a site template that
        turns it off ({% autoescape false %}) or marks a value |safe must escape every value
        it adds itself with |e, or a hostile project, user or file name runs in the owners'
        browsers. Templates are re-read when they change. Example:
        c.XnatHpcPages.template_paths = ["/etc/xnat-hpc-hub/templates"]""",
    ).tag(config=True)

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._env: jinja2.Environment | None = None

    @observe("template_paths")
    def _paths_changed(self, change) -> None:
        self._env = None

    @property
    def env(self) -> jinja2.Environment:
        """The environment of :attr:`template_paths`, made on first use."""
        if self._env is None:
            self._env = environment(self.template_paths, self.log)
        return self._env

    def render(self, name: str, /, **context) -> str:
        """The template *name* rendered with *context*."""
        return self.env.get_template(name).render(**context)


def ensure_pages(tornado_settings: MutableMapping, log=None) -> XnatHpcPages:
    """The hub's one :class:`XnatHpcPages`, made from the hub's configuration
    (``settings["config"]``) on first use and kept in the Tornado settings."""
    pages = tornado_settings.get(SETTINGS_KEY)
    if pages is None:
        kwargs = {"log": log} if log is not None else {}
        pages = tornado_settings[SETTINGS_KEY] = XnatHpcPages(config=tornado_settings.get("config"), **kwargs)
    return pages


def render(name: str, pages: XnatHpcPages | None = None, /, **context) -> str:
    """The template *name* rendered with *context* through *pages* (the hub's, from
    :func:`ensure_pages`); without it, through the packaged templates alone (pure callers,
    tests)."""
    return (pages if pages is not None else XnatHpcPages()).render(name, **context)
