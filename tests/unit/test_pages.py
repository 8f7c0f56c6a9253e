"""The owners' pages come from one set of templates (issue 19): autoescaping on in every page,
a site's directory first (its template replaces the packaged one and may extend the packaged
base), StrictUndefined for a variable a template names and the page does not pass, one
environment per hub kept in the Tornado settings."""

from __future__ import annotations

import os

import jinja2
import pytest
from traitlets.config import Config

from xnat_hpc_governance import owner_render as R
from xnat_hpc_governance import pages as P
from xnat_hpc_governance.owner_access import access_section_html
from xnat_hpc_governance.owner_access import render_page as access_page
from xnat_hpc_governance.review_page import render_page as review_page
from xnat_hpc_governance.review_page import render_preview

EVIL = '<script>alert("x")</script>'
ESCAPED = "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;"


def _owner_view(evil: str = EVIL) -> R.PageView:
    ev = {"seq": 1, "time": "t", "user": evil, "server": evil, "action": "submit", "outcome": "allowed",
          "items": ["A/S1"], "detail": evil, "hashes": {"manifest": evil}, "extra": {"job": "j1", "x": evil}}
    project = R.ProjectView("A", [{"login": evil, "firstname": evil, "displayname": "Members"}], "",
                            [{"user": evil, "server": evil, "started": "s", "scope": ["A/S1"]}],
                            R.jobs_from_events([ev], []), [ev])
    failed = R.ProjectView("B", None, evil, [], [], [])
    return R.PageView(evil, ["A", "B"], False, evil, evil, R.Filters(user=evil), [ev], 1, [project, failed],
                      [evil], "/hub/xnat-hpc/owner", links=[(evil, "/x")], error=evil)


def _review_args(evil: str = EVIL) -> tuple:
    job = {"user": "bob", "job": "j000000000001", "dataset": evil, "dataset_version": 1, "projects": ["A", "B"],
           "manifest_sha256": evil, "script_sha256": evil, "slurm_job_id": evil,
           "results": [{"name": evil, "size": 1, "sha256": evil}], "since": evil, "state": "held", "reason": "",
           "by": "", "decided": "", "pending": ["A", "B"], "decisions": {}}
    rejected = {**job, "job": "j000000000002", "state": "rejected", "reason": evil, "pending": [],
                "decisions": {"A": {"decision": "reject", "owner": evil, "time": "t", "reason": evil}}}
    previews = {("bob", "j000000000001"): {evil: evil.encode(), "t.csv": f"h\n{evil}\n".encode()}}
    return evil, ["A"], {"A": {"by": evil, "time": evil}}, [job, rejected], previews, "XS", evil


# -- autoescaping ----------------------------------------------------------------------------------
def test_every_page_escapes_what_it_prints():
    access = access_section_html("A", [{"login": "bob", "displayname": EVIL, "firstname": EVIL}], xsrf="XS",
                                 action_url="/hub/xnat-hpc/owner/access")
    pages = {
        "owner": R.render_page(_owner_view()),
        "access": access_page(EVIL, [EVIL], [access], message=EVIL, error=True, back_url="/o"),
        "review": review_page(*_review_args()),
        "preview": render_preview(EVIL, EVIL.encode()),
        "preview-csv": render_preview("t.csv", f"{EVIL},b\n1,{EVIL}\n".encode()),
    }
    for name, page in pages.items():
        assert "<script" not in page, name
        assert ESCAPED in page, name
    # the access section, HTML the page was given as such, is printed once, not escaped twice
    assert pages["access"].count("<section ") == 1 and "&amp;lt;" not in pages["access"]


def test_autoescape_is_on_for_any_template_name_and_for_strings():
    env = P.environment()
    assert env.from_string("{{ v }}").render(v="<b>") == "&lt;b&gt;"
    assert env.autoescape("site.txt") and env.autoescape("x.html") and env.autoescape(None)


# -- site templates ----------------------------------------------------------------------------------
def test_a_site_template_replaces_the_packaged_one_and_extends_the_packaged_base(tmp_path):
    (tmp_path / "xnat-hpc-review.html").write_text(
        '{% extends "xnat-hpc-base.html" %}{% block body %}<h1>Site review</h1><p id="u">{{ user }}</p>'
        '{% endblock %}')
    pages = P.XnatHpcPages(template_paths=[str(tmp_path)])
    page = review_page(*_review_args(), pages=pages)
    assert "<h1>Site review</h1>" in page and f'<p id="u">{ESCAPED}</p>' in page  # still escaped
    assert "<title>XNAT projects</title>" in page and "<!DOCTYPE html>" in page  # the packaged base
    # the other pages are still the packaged ones
    assert "<h1>Audit of your XNAT projects</h1>" in R.render_page(_owner_view(), pages=pages)


def test_a_site_base_extends_the_packaged_base_under_its_prefix(tmp_path):
    (tmp_path / "xnat-hpc-base.html").write_text(
        '{% extends "xnat-hpc-hub/xnat-hpc-base.html" %}'
        '{% block header %}<div id="site-banner">Example University</div>{% endblock %}')
    pages = P.XnatHpcPages(template_paths=[str(tmp_path / "missing"), str(tmp_path)])
    for page in (R.render_page(_owner_view(), pages=pages),
                 access_page("dave", [], [], pages=pages),
                 review_page(*_review_args(), pages=pages)):
        assert '<div id="site-banner">Example University</div>' in page
        assert page.count("<h1>") == 1 and "<style>" in page
    assert "site-banner" not in R.render_page(_owner_view())  # without the site's path: the packaged set


def test_a_site_template_that_turns_autoescape_off_is_on_its_own(tmp_path):
    (tmp_path / "xnat-hpc-access.html").write_text(
        "{% autoescape false %}<p>{{ visitor }}</p><p>{{ visitor|e }}</p>{% endautoescape %}")
    page = access_page(EVIL, [], [], pages=P.XnatHpcPages(template_paths=[str(tmp_path)]))
    assert f"<p>{EVIL}</p>" in page and f"<p>{ESCAPED}</p>" in page  # what the trait's help warns of


def test_the_trait_is_configurable_and_the_hub_keeps_one_environment(tmp_path):
    (tmp_path / "xnat-hpc-preview.html").write_text("SITE {{ preview.name }}")
    c = Config()
    c.XnatHpcPages.template_paths = [str(tmp_path)]
    settings: dict = {"config": c}
    pages = P.ensure_pages(settings)
    assert P.ensure_pages(settings) is pages and settings[P.SETTINGS_KEY] is pages
    assert pages.env is pages.env
    assert render_preview("<n>", b"x", pages=pages) == "SITE &lt;n&gt;"
    pages.template_paths = []  # a changed setting makes a new environment
    assert render_preview("n", b"x", pages=pages).startswith("<figure>")
    assert "example" in P.XnatHpcPages.class_traits()["template_paths"].help.lower()
    assert "|e" in P.XnatHpcPages.class_traits()["template_paths"].help


# -- StrictUndefined ------------------------------------------------------------------------------------
def test_a_variable_the_page_does_not_pass_fails_loudly(tmp_path):
    with pytest.raises(jinja2.UndefinedError):
        P.environment().from_string("{{ missing }}").render()
    (tmp_path / "xnat-hpc-access.html").write_text("<p>{{ visitor }} {{ no_such_variable }}</p>")
    with pytest.raises(jinja2.UndefinedError, match="no_such_variable"):
        access_page("dave", [], [], pages=P.XnatHpcPages(template_paths=[str(tmp_path)]))
    with pytest.raises(jinja2.UndefinedError):  # an attribute too
        P.environment().from_string("{{ p.nope }}").render(p={})


def test_the_packaged_templates_are_the_documented_set():
    shipped = {n for n in os.listdir(P.PACKAGE_TEMPLATES) if n.endswith(".html")}
    assert shipped == set(P.TEMPLATES)
    env = P.environment()
    for name in shipped:  # each compiles; each is reachable under the prefix too
        env.get_template(name)
        env.get_template(f"{P.PACKAGE_PREFIX}/{name}")
