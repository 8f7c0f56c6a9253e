"""Slurm and Kubernetes shared by parallel test processes (tests/fixtures/shared_service.py): up for
the first, down after the last, and never down when the tests did not bring them up."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.fixtures import shared_service as svc


@pytest.fixture
def service(tmp_path, monkeypatch):
    monkeypatch.setattr(svc, "ROOT", tmp_path)
    state = {"up": False, "ups": 0, "downs": 0}

    def up():
        state["up"], state["ups"] = True, state["ups"] + 1

    def down():
        state["up"], state["downs"] = False, state["downs"] + 1

    def hold():
        return svc.shared_service("thing", is_up=lambda: state["up"], up=up, down=down)

    return state, hold, tmp_path / "thing"


def test_brought_up_by_the_tests_it_goes_down_after_them(service):
    state, hold, _ = service
    with hold():
        assert state["up"]
    assert state == {"up": False, "ups": 1, "downs": 1}


def test_up_before_the_tests_it_stays_up(service):
    state, hold, _ = service
    state["up"] = True  # a developer's `make demo`
    with hold():
        pass
    assert state["up"] and state["downs"] == 0


def test_it_stays_up_while_another_test_process_holds_it(service):
    state, hold, users = service
    with hold():
        (users / "1").touch()  # another live process (pid 1 always is)
    assert state["up"] and state["downs"] == 0
    (users / "1").unlink()
    with hold():  # the last one out brings it down: the tests started it
        pass
    assert not state["up"] and state["downs"] == 1


def test_a_killed_process_does_not_keep_it_up(service):
    state, hold, users = service
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    with hold():
        (users / dead).touch()  # registered, then killed before its teardown
    assert not state["up"] and state["downs"] == 1
    assert not (users / dead).exists()
