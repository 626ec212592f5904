"""Pod runs that finish (1 of 2): SeqKD and GKD through `python -m
classkd_jax.train` on 2 processes x 4 CPU devices, validating and checkpointing
mid-run and at the end, exporting the student; each logs the losses and
exports the student of its 1-process, 8-device run (another mesh), and no
program of either makes XLA replicate a sharded tensor (`tests/pod.py`).
The other methods and checkpoint portability: tests/test_pod_runs_b.py.
"""

import pytest

from tests.pod import check_pod_run, pod_run

pytestmark = pytest.mark.multiprocess


# SFT and KD have no pod run of their own: KD's whole step (the teacher's forward and
# the forward KL on dataset rows, sharded the same way) is ClassKD's off-policy term
# (tests/test_pod_runs_b.py), and SFT's cross-entropy is a part of KD's.
@pytest.mark.parametrize("method", ["seqkd", "gkd"])
def test_method_runs_to_completion_on_two_processes_as_on_one(method, tmp_path):
    check_pod_run(pod_run(method, tmp_path))
