"""The development Slurm started by `xnat-hpc-hub slurm up` runs real jobs."""

import subprocess

import pytest

from tests.fixtures.slurm import cli

pytestmark = pytest.mark.slurm


def test_secure_partition_runs_a_job_and_its_output_is_read(slurm, tmp_path):
    out = tmp_path / "job.out"
    job = slurm.sbatch(
        "-p", "secure", "-o", str(out), "--wrap",
        "echo partition=$SLURM_JOB_PARTITION job=$SLURM_JOB_ID; python3 -c 'print(6*7)'",
    )
    assert slurm.wait(job) == "COMPLETED"
    text = out.read_text()
    assert f"partition=secure job={job}" in text
    assert "42" in text


def test_interactive_is_the_default_partition(slurm, tmp_path):
    out = tmp_path / "job.out"
    job = slurm.sbatch("-o", str(out), "--wrap", "echo $SLURM_JOB_PARTITION")
    assert slurm.wait(job) == "COMPLETED"
    assert out.read_text().strip() == "interactive"


def test_failing_job_is_reported_failed(slurm, tmp_path):
    job = slurm.sbatch("-p", "secure", "-o", str(tmp_path / "o"), "--wrap", "exit 3")
    assert slurm.wait(job) == "FAILED"


def test_up_is_idempotent_and_status_says_what_runs(slurm):
    before = cli("slurm", "status", "--run-dir", str(slurm.run_dir)).stdout
    again = cli("slurm", "up", "--run-dir", str(slurm.run_dir)).stdout
    after = cli("slurm", "status", "--run-dir", str(slurm.run_dir)).stdout
    # same daemons, same pids: a second `up` started nothing new
    assert before.splitlines()[:4] == after.splitlines()[:4] == again.splitlines()[:4]
    for daemon in ("munged", "slurmctld", "slurmd"):
        assert f"{daemon}" in after and "NOT running" not in after
    assert "secure" in after and "interactive*" in after


@pytest.mark.exclusive  # the cluster every other test process uses goes down for a moment
def test_down_then_up_recovers_and_status_exit_code(slurm, tmp_path):
    cli("slurm", "down", "--keep-munge", "--run-dir", str(slurm.run_dir))
    st = cli("slurm", "status", "--run-dir", str(slurm.run_dir), check=False)
    assert st.returncode == 3
    assert "slurmctld  NOT running" in st.stdout and "slurmd     NOT running" in st.stdout
    sb = subprocess.run(["sbatch", "--wrap", "true"], capture_output=True, text=True)
    assert sb.returncode != 0  # controller really is down
    cli("slurm", "up", "--run-dir", str(slurm.run_dir))
    job = slurm.sbatch("-p", "secure", "-o", str(tmp_path / "o"), "--wrap", "echo back")
    assert slurm.wait(job) == "COMPLETED"
    assert (tmp_path / "o").read_text().strip() == "back"
