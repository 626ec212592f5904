"""The launchers' `--dry_run`: every command they would run, printed, nothing started."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ["--config", "configs/classkd.py:size=tiny", "--workdir", "runs/x"]


def _dry(script: str, *args: str) -> list[str]:
    out = subprocess.run(
        ["bash", str(ROOT / "launch" / script), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()


def test_local_starts_one_train_process_per_rank_with_the_coordinator():
    lines = _dry("local.sh", "--dry_run", "--num_processes", "2", "--port", "4321",
                 "--cpu_devices", "4", "--", *TRAIN)  # fmt: skip
    assert len(lines) == 2
    for rank, line in enumerate(lines):
        assert "python -m classkd_jax.train --config configs/classkd.py:size=tiny" in line
        assert "--coordinator_address 127.0.0.1:4321 --num_processes 2" in line
        assert line.endswith(f"--process_id {rank}")
        assert "--xla_force_host_platform_device_count=4" in line
    (single,) = _dry("local.sh", "--dry_run", "--", *TRAIN)
    assert "--coordinator_address" not in single


def test_tpu_pod_creates_copies_installs_mounts_and_runs_on_every_worker():
    lines = _dry("tpu_pod.sh", "--dry_run", "--tpu", "pod", "--zone", "us-central2-b",
                 "--accelerator", "v4-32", "--bucket", "bkt", "--", *TRAIN)  # fmt: skip
    text = "\n".join(lines)
    assert (
        "gcloud compute tpus tpu-vm create pod --zone us-central2-b --accelerator-type v4-32"
        in text
    )
    assert "gcloud compute tpus tpu-vm scp --recurse --zone us-central2-b --worker=all ." in text
    ssh = [line for line in lines if " ssh pod " in line]
    assert len(ssh) == 3 and all("--worker=all" in line for line in ssh)
    assert "launch/env.sh" in ssh[0] and "gcsfuse" in ssh[1]
    assert "python\\ -m\\ classkd_jax.train\\ --config" in ssh[2]


def test_tpu_pod_can_pull_a_repository_instead_of_copying():
    lines = _dry("tpu_pod.sh", "--dry_run", "--tpu", "pod", "--zone", "z",
                 "--repo", "https://example.com/classkd-jax.git", "--", *TRAIN)  # fmt: skip
    assert not any(" scp " in line for line in lines)
    assert any("git\\ clone" in line and "--worker=all" in line for line in lines)


def test_slurm_installs_once_and_starts_one_process_per_gpu():
    lines = _dry("slurm_gpu.sbatch", "--dry_run", *TRAIN)
    assert any("launch/env.sh" in line and "cuda" in line for line in lines)
    (srun,) = [line for line in lines if line.startswith("srun")]
    assert "--gpus-per-task=1" in srun and "--kill-on-bad-exit=1" in srun
    assert "-m classkd_jax.train --config configs/classkd.py:size=tiny --workdir runs/x" in srun


def test_a_launcher_without_train_arguments_says_so():
    out = subprocess.run(["bash", str(ROOT / "launch/local.sh"), "--dry_run"], capture_output=True,
                         text=True, cwd=ROOT)  # fmt: skip
    assert out.returncode == 2 and "train arguments" in out.stderr


def test_the_trainer_finds_a_multi_process_job_in_its_environment():
    from classkd_jax import distributed

    assert distributed.cluster_processes({}) == 1
    assert distributed.cluster_processes({"SLURM_NTASKS": "16"}) == 16
    assert distributed.cluster_processes({"TPU_WORKER_HOSTNAMES": "w0,w1,w2,w3"}) == 4
    assert distributed.cluster_processes({"OMPI_COMM_WORLD_SIZE": "2"}) == 2
    args, rest = distributed.split_flags(
        ["--config", "c.py", "--num_processes", "2", "--config.steps=3", "--process_id", "1"]
    )
    assert (args.num_processes, args.process_id, rest) == (
        2,
        1,
        ["--config", "c.py", "--config.steps=3"],
    )
