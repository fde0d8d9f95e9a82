"""A real two-node Slurm cluster on localhost for the tests: munged, slurmctld and two slurmd
(nodes n1 and n2, Debian's slurmd runs several daemons on one host with ``-N``), each with its own
config, state and log files under one folder, stopped by PID at the end.

    with SlurmCluster(tmp_path) as cluster:
        job = cluster.sbatch(["--wrap", "hostname"], "-N", "2")
        cluster.wait(job)

The daemons run as root (these machines' tests run as root); nothing outside the folder is
written, except the cgroups proctrack/cgroup makes under /sys/fs/cgroup/*/slurm_<node>/.
Daemons and client commands are started by tests/processes.py (own session, killed as a tree).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from processes import TAG_VARIABLE, describe, kill_processes, processes_with, run_process, started_process

PROGRAMS = ("munged", "slurmctld", "slurmd", "sbatch", "srun", "squeue", "scontrol", "sinfo")
NODES = ("n1", "n2")
# Job states after which a job does not run again by itself.
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
                "DEADLINE", "PREEMPTED"}


def missing_slurm() -> str | None:
    """Why a cluster cannot be started here (a missing program), or None."""
    absent = [name for name in PROGRAMS if shutil.which(name) is None and not Path("/usr/sbin", name).exists()]
    if absent:
        return "Slurm is not installed (missing " + ", ".join(absent) + "): apt-get install slurm-wlm munge"
    if os.geteuid() != 0:
        return "the test Slurm cluster runs its daemons as root"
    return None


def install_slurm() -> str | None:
    """Install slurm-wlm and munge with apt-get when absent (about 14 MB); the reason for a skip, or None."""
    if missing_slurm() is None:
        return None
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return missing_slurm()
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for command in (["apt-get", "update"],
                    ["apt-get", "install", "-y", "--no-install-recommends", "slurm-wlm", "munge"]):
        done = run_process(command, env=env, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            return f"could not install Slurm: {' '.join(command)} failed: {done.stderr.strip()[-300:]}"
    return missing_slurm()


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _sbin(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


def job_env() -> dict:
    """What a user's shell would hold: this venv first on PATH, no GPU, quiet warnings."""
    bin_dir = str(Path(sys.executable).parent)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "CUDA_VISIBLE_DEVICES": "",
            "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}


class SlurmCluster:
    """Context manager: writes the configs, starts the daemons, waits for idle nodes; on exit
    cancels every job, stops the daemons and kills any process left with this cluster's SLURM_CONF."""

    def __init__(self, root: Path, *, cpus_per_node: int = 1, proctrack: str = "proctrack/cgroup",
                 bind_tasks: bool = False) -> None:
        self.root = Path(root)
        self.cpus_per_node = cpus_per_node
        self.proctrack = proctrack
        # True: task/affinity binding each task to its CPUs (autobind), as many clusters do.
        self.bind_tasks = bind_tasks
        self.conf = self.root / "etc" / "slurm.conf"
        self.processes: dict[str, subprocess.Popen] = {}
        self._daemons = contextlib.ExitStack()  # kills each daemon's process tree when closed
        self.leftovers: list[str] = []  # processes the teardown had to kill (should stay empty)

    # ---- configuration -------------------------------------------------------------------
    @property
    def env(self) -> dict:
        """The environment in which Slurm commands talk to this cluster. A job gets its submitter's
        environment: without the override it would carry the tag of the `sbatch` process, and
        run_process would kill the job as that sbatch's straggler."""
        return dict(os.environ, SLURM_CONF=str(self.conf), SBATCH_EXPORT=f"ALL,{TAG_VARIABLE}=slurm-job")

    def _write_configs(self) -> None:
        for folder in ("etc", "munge", "state", "log", "spool/n1", "spool/n2"):
            (self.root / folder).mkdir(parents=True, exist_ok=True)
        os.chmod(self.root / "munge", 0o700)
        ctld_port, *node_ports = _free_ports(1 + len(NODES))
        host = socket.gethostname()
        r = self.root
        lines = [
            "ClusterName=testcluster",
            f"SlurmctldHost={host}(127.0.0.1)",
            f"SlurmctldPort={ctld_port}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            # cred_expire: a requeued job waits this long before it may start again (default 120 s).
            f"AuthInfo=socket={r}/munge/munge.socket,cred_expire=10",
            f"StateSaveLocation={r}/state",
            f"SlurmdSpoolDir={r}/spool/%n",
            f"SlurmctldPidFile={r}/slurmctld.pid",
            f"SlurmdPidFile={r}/slurmd-%n.pid",
            f"SlurmctldLogFile={r}/log/slurmctld.log",
            f"SlurmdLogFile={r}/log/slurmd-%n.log",
            "SlurmctldDebug=info",
            "SlurmdDebug=info",
            f"ProctrackType={self.proctrack}",
            *(["TaskPlugin=task/affinity", "TaskPluginParam=autobind=threads"] if self.bind_tasks
              else ["TaskPlugin=task/none"]),
            "JobRequeue=1",
            "ReturnToService=2",
            "MpiDefault=none",
            "SwitchType=switch/none",
            "SchedulerType=sched/backfill",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_CPU",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/none",
            "MailProg=/bin/true",
            # The two slurmd share this machine's cores: do not compare CPUs with the hardware.
            "SlurmdParameters=config_overrides",
            "SlurmdTimeout=60",
            "InactiveLimit=0",
            "KillWait=10",
            "MinJobAge=600",
            # Start (and restart) jobs within seconds, not at the default 30-60 s scheduling passes.
            "SchedulerParameters=batch_sched_delay=0,bf_interval=2,sched_interval=2",
        ]
        for node, port in zip(NODES, node_ports):
            lines.append(f"NodeName={node} NodeHostname={host} NodeAddr=127.0.0.1 Port={port} "
                         f"CPUs={self.cpus_per_node} RealMemory=1000 State=UNKNOWN")
        lines.append(f"PartitionName=debug Nodes={','.join(NODES)} Default=YES MaxTime=INFINITE State=UP")
        self.conf.write_text("\n".join(lines) + "\n")
        # cgroup v1 here (a tmpfs at /sys/fs/cgroup); the plugin only tracks processes, limits nothing.
        (self.root / "etc" / "cgroup.conf").write_text(
            "CgroupPlugin=autodetect\nCgroupMountpoint=/sys/fs/cgroup\nConstrainCores=no\n"
            "ConstrainRAMSpace=no\nConstrainDevices=no\n")
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o400)

    # ---- daemons -------------------------------------------------------------------------
    def _start(self, name: str, command: list[str]) -> None:
        with open(self.root / "log" / f"{name}.out", "wb") as log:
            self.processes[name] = self._daemons.enter_context(
                started_process(command, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=self.root))

    def start(self) -> "SlurmCluster":
        """Write the configs and start munged, slurmctld, slurmd n1 and n2; wait until both nodes are idle."""
        self._write_configs()
        m = self.root / "munge"
        self._start("munged", [_sbin("munged"), "-F", "--force", f"--socket={m}/munge.socket",
                               f"--key-file={m}/munge.key", f"--pid-file={m}/munged.pid",
                               f"--log-file={self.root}/log/munged.log", f"--seed-file={m}/munged.seed"])
        self._wait_for(lambda: (m / "munge.socket").exists(), "munged socket", timeout=20)
        self._start("slurmctld", [_sbin("slurmctld"), "-D", "-i"])
        for node in NODES:
            self._start(f"slurmd-{node}", [_sbin("slurmd"), "-D", "-N", node])
        self.wait_until_idle(timeout=60)
        return self

    def wait_until_idle(self, *, timeout: float = 120) -> None:
        """Wait until both nodes are idle: by Slurm's reckoning no job's processes are left on them."""
        self._wait_for(self._nodes_idle, "both nodes idle in sinfo", timeout=timeout)

    def _nodes_idle(self) -> bool:
        for name, process in self.processes.items():
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with {process.returncode}:\n{self.logs()}")
        done = run_process(["sinfo", "-h", "-N", "-o", "%N %t"], env=self.env, capture_output=True, text=True,
                           timeout=60)
        states = dict(line.split() for line in done.stdout.splitlines() if line.strip())
        return all(states.get(node) == "idle" for node in NODES)

    def _wait_for(self, condition, what: str, *, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out waiting for {what}:\n{self.logs()}")
            time.sleep(0.5)

    def logs(self, tail: int = 3000) -> str:
        """The end of every daemon log, for failure messages."""
        parts = []
        for path in sorted((self.root / "log").glob("*")):
            text = path.read_text(errors="replace")[-tail:]
            parts.append(f"--- {path.name}\n{text}")
        return "\n".join(parts)

    # ---- jobs ----------------------------------------------------------------------------
    def run(self, command: list[str], **kwargs) -> subprocess.CompletedProcess:
        """A Slurm client command against this cluster; raises with its output on failure."""
        done = run_process(command, env=kwargs.pop("env", self.env), capture_output=True, text=True,
                           timeout=kwargs.pop("timeout", 60), **kwargs)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
        return done

    def sbatch(self, *args: str, env: dict | None = None, cwd: Path | None = None) -> int:
        """Submit a job (``sbatch --parsable ARGS``); its id."""
        done = self.run(["sbatch", "--parsable", *args], env={**self.env, **(env or {})}, cwd=cwd)
        return int(done.stdout.strip().split(";")[0])

    def job(self, job_id: int) -> dict:
        """``scontrol show job`` as a dict (the first record: an array's first task)."""
        done = self.run(["scontrol", "-o", "show", "job", str(job_id)])
        record = done.stdout.splitlines()[0]
        return dict(field.split("=", 1) for field in record.split() if "=" in field)

    def wait(self, job_id: int, *, timeout: float = 600, states=FINAL_STATES) -> dict:
        """Wait until the job reaches one of ``states``; its last record."""
        deadline = time.monotonic() + timeout
        while True:
            record = self.job(job_id)
            if record["JobState"] in states:
                return record
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {record['JobState']} after {timeout} s:\n{self.logs()}")
            time.sleep(1)

    # ---- teardown ------------------------------------------------------------------------
    def own_processes(self) -> list[int]:
        """PIDs (not ours) whose environment names this cluster's SLURM_CONF: the daemons, job and
        step processes, and whatever those started."""
        return processes_with("SLURM_CONF", str(self.conf))

    def job_processes(self, job_id: int) -> list[int]:
        """What job ``job_id`` runs, or left behind: its batch shell, srun, tasks and all they started
        (they carry SLURM_JOB_ID; the daemons, slurmstepd and slurmctld's slurmscriptd do not)."""
        ours = set(self.own_processes())
        return [pid for pid in processes_with("SLURM_JOB_ID", str(job_id)) if pid in ours]

    def stop(self) -> None:
        """Cancel every job, stop the daemons by PID, kill whatever a job left behind."""
        if "slurmctld" in self.processes and self.processes["slurmctld"].poll() is None:
            run_process(["scancel", "--full", "--user=root"], env=self.env, capture_output=True, timeout=30)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                done = run_process(["squeue", "-h", "-t", "all", "-o", "%i %T"], env=self.env,
                                   capture_output=True, text=True, timeout=30)
                live = [ln for ln in done.stdout.splitlines() if ln.split()[-1] in {"RUNNING", "COMPLETING"}]
                if not live:
                    break
                time.sleep(0.5)
        for name in ("slurmd-n1", "slurmd-n2", "slurmctld", "munged"):
            process = self.processes.get(name)
            if process is None or process.poll() is not None:
                continue
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        time.sleep(0.5)
        daemons = {p.pid for p in self.processes.values()}
        left = [pid for pid in self.own_processes() if pid not in daemons]
        self.leftovers += [describe(pid) for pid in left]
        kill_processes(left)
        self._daemons.close()  # a daemon that ignored SIGTERM, and anything it started
        self._remove_cgroups()

    @staticmethod
    def _remove_cgroups() -> None:
        """The empty cgroup folders proctrack/cgroup made for our nodes (slurm_n1, slurm_n2)."""
        for node in NODES:
            for top in Path("/sys/fs/cgroup").glob(f"*/slurm_{node}"):
                for folder in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                    try:
                        folder.rmdir()
                    except OSError:
                        pass
                try:
                    top.rmdir()
                except OSError:
                    pass

    def __enter__(self) -> "SlurmCluster":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()
