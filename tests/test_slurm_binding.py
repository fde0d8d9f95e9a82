"""slurm/imagenet_cutmix.sh on a cluster that binds tasks to CPUs (task/affinity with autobind, as
many clusters do): each node's task gets every CPU asked for with --cpus-per-task, not one. Since
Slurm 22.05 srun does not take --cpus-per-task from sbatch, so without SRUN_CPUS_PER_TASK the
training processes of a node (and their DALI threads) would share a single CPU.

A cluster of its own (its module's fixture), not the one of tests/test_slurm.py: pytest ends that
module's cluster before this one starts, so the two never share the nodes' cgroup folders."""

from __future__ import annotations

import re

import pytest
from slurm_cluster import SlurmCluster, install_slurm, job_env
from train_helpers import REPO, small_run_args

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


@pytest.fixture(scope="module")
def binding_cluster(tmp_path_factory):
    reason = install_slurm()
    if reason:
        pytest.skip(reason)
    with SlurmCluster(tmp_path_factory.mktemp("slurm_binding"), cpus_per_node=2, bind_tasks=True) as running:
        yield running


def test_each_nodes_task_gets_the_cpus_asked_for(binding_cluster, demo_shards, tmp_path):
    # The training itself is not the point (tests/test_slurm.py runs it): one step of one epoch,
    # after each task has printed the CPUs it was bound to. (A config mistake would now end the
    # job in the batch shell's --check, before srun starts any task.)
    args = small_run_args(demo_shards, tmp_path / "run", "schedule.epochs=1", "run.max_train_steps=1",
                          "loader.batch_size=16")
    job = binding_cluster.sbatch("--nodes=2", "--gpus-per-node=0", "--cpus-per-task=2", "--time=5",
                                 f"--output={tmp_path}/%x-%j.out", str(REPO / "slurm" / "imagenet_cutmix.sh"),
                                 *args, env=job_env(), cwd=REPO)
    record = binding_cluster.wait(job, timeout=300)
    log = (tmp_path / f"cutmix-{job}.out").read_text()
    # (node id, CPUs its task may run on), as each task printed them
    cpus = sorted(re.findall(r"^node (\d+) \(.*\): (\d+) CPUs for its processes(?:; gloo on .*)?$", log,
                             flags=re.MULTILINE))
    assert cpus == [("0", "2"), ("1", "2")], log[-3000:]
    assert record["JobState"] == "COMPLETED", log[-3000:]
