#!/bin/bash
# Multi-node training: one `accelerate launch` per node through srun; hyperparameters come from
# configs/, never from here. The #SBATCH lines can be overridden on the command line (see slurm/README.md):
#
#   sbatch slurm/imagenet_cutmix.sh                  # CONFIG's recipe on 1 node x 8 GPUs: global batch 8 x 32 = 256
#   sbatch --nodes=4 slurm/imagenet_cutmix.sh --config configs/imagenet1k/resnet50_baseline.yaml \
#       data.shards=/data/inet run.out_dir=runs/r50_baseline
#   CONFIG=configs/demo.yaml sbatch --nodes=2 --gpus-per-node=0 --cpus-per-task=2 slurm/imagenet_cutmix.sh
#
# Arguments: [--config FILE] [section.key=value ...], passed to pipeline/train.py as they are;
# without --config, $CONFIG (default configs/imagenet1k/resnet50_cutmix.yaml). $MAIN_PROCESS_PORT
# pins the rendezvous port (default: one derived from the job id, the next free one if it is taken).
# run.resume=auto comes first (and last on a restart), so a requeued job continues from its newest
# checkpoint.
# Before the time limit Slurm sends USR1 to this shell (--signal=B:USR1@...): the training
# processes checkpoint and exit, then the job requeues itself. See slurm/README.md.
#
#SBATCH --job-name=cutmix
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --time=24:00:00
#SBATCH --signal=B:USR1@300
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=%x-%j.out

set -euo pipefail

if [[ -z ${SLURM_JOB_ID:-} ]]; then
    echo "error: submit this script with sbatch (it takes its nodes and GPUs from the Slurm job): sbatch $0 $*" >&2
    exit 2
fi
# USR1 (the time-limit warning, or `scancel --signal=USR1 --batch JOB`): stop with a checkpoint,
# then requeue. Trapped from the start: bash's default for USR1 ends the shell, and the job
# with it, without a word.
requeue=0
termed=0
srun_pid=
srun_ended=0
resender=
trapped=0
# The handlers below end in `return 0`: a bare return inside a trap gives back the status from
# before the trap (138 or 143 from an interrupted wait), which `set -e` took for a failure and
# ended the shell while srun ran.
# Asks every step's processes (not this shell) to stop with a checkpoint, with USR1; and again
# every 10 s until they end: a training process still starting ignores USR1 (the launcher's
# `trap ""` is inherited) until its own handler is in place, so a single signal in that window
# would be lost. A stop already under way ignores the repeats.
start_resender() {
    if [[ -n $resender ]]; then
        return 0
    fi
    (
        pause=
        trap 'kill $pause 2>/dev/null; exit 0' TERM
        while :; do
            scancel --signal=USR1 "$SLURM_JOB_ID" || true   # a failed try (slurmctld busy): the next one
            sleep 10 & pause=$!
            wait $pause
        done
    ) &
    resender=$!
}
on_usr1() {
    requeue=1
    trapped=1
    if [[ -z $srun_pid || -n $resender ]]; then
        return 0   # not started yet (said below, before srun), or already asked
    fi
    echo "USR1: asking the training processes to checkpoint; the job will requeue"
    start_resender
}
trap on_usr1 USR1
# SIGTERM: scancel, a preemption or `scontrol requeue` (Slurm signals each node's task too, which
# passes it on), or a TERM sent to this shell alone (`scancel --signal=TERM --batch`, `kill`).
# Either way the training processes are asked to checkpoint as for USR1, and this shell goes on
# waiting for srun, which carries their last lines into the log; it does not requeue the job (a
# cancel stays a cancel; Slurm requeues a preempted or requeued job itself). Before srun starts the
# shell ends, as bash's default would (once the command in the foreground, if any, returns: bash
# runs a trap after it); after srun ended it ends with the training's status, not requeued.
on_term() {
    trapped=1
    if [[ -z $srun_pid ]]; then
        if ((!srun_ended)); then
            exit 143
        fi
        termed=1
        return 0
    fi
    if ((!termed)); then
        echo "SIGTERM: asking the training processes to checkpoint; the job will not requeue itself"
    fi
    termed=1
    start_resender
}
trap on_term TERM

# Under sbatch the script runs from a spool copy: the repository is the job's working folder
# (sbatch --chdir=REPO) or else the submission folder (a --chdir given for the logs' sake).
if [[ ! -f pipeline/train.py ]]; then
    cd "$SLURM_SUBMIT_DIR"
fi
if [[ ! -f pipeline/train.py ]]; then
    echo "error: no pipeline/train.py in $PWD: submit from the repository's root folder (or sbatch --chdir=REPO)" >&2
    exit 2
fi

# ---- The job's environment --------------------------------------------------------------------
# The job inherits the submitting shell's (activate the project's venv, then sbatch). On a cluster
# that submits with --export=NONE (or a site default like it), the batch shell starts without your
# PATH: activate the environment here instead, e.g.
#     module load cuda/13.0
#     source /path/to/cutmix/.venv/bin/activate
# ------------------------------------------------------------------------------------------------
# (find_spec: whether they are there, without the seconds an import of torch takes; the nodes
# launch with this python's accelerate, `python -m accelerate.commands.accelerate_cli`)
if ! python -c "import importlib.util as u, sys; sys.exit(not (u.find_spec('torch') and u.find_spec('accelerate')))" \
        2>/dev/null; then
    echo "error: the job's python ($(command -v python || echo "none on PATH")) has no torch and accelerate:" \
         "activate the project's environment before sbatch, or in the marked place of" \
         "slurm/imagenet_cutmix.sh (clusters that submit with --export=NONE)" >&2
    exit 2
fi

config=${CONFIG:-configs/imagenet1k/resnet50_cutmix.yaml}
overrides=()
while (($#)); do
    case "$1" in
        --config)
            if (($# < 2)); then
                echo "error: --config needs a file: --config FILE or --config=FILE" >&2
                exit 2
            fi
            config=$2; shift 2 ;;
        --config=*) config=${1#--config=}; shift ;;
        *) overrides+=("$1"); shift ;;
    esac
done
# run.resume=auto before the user's overrides (theirs win on the first start); after a requeue
# also after them: a restart must continue from the newest checkpoint, not start over again
# (run.resume=none) or go back to the checkpoint the first start named (run.resume=PATH).
# run.progress=false, also before them: the bar's redraws garble a log file (the epoch lines carry
# the same figures); run.progress=true brings it back.
train_args=(--config "$config" run.resume=auto run.progress=false ${overrides[@]+"${overrides[@]}"})
if ((${SLURM_RESTART_COUNT:-0} > 0)); then
    train_args+=(run.resume=auto)
fi
# The rendezvous port, where the user pins one (a site whose firewall opens only some ports).
pinned_port=${MAIN_PROCESS_PORT:-}
if [[ -n $pinned_port ]] && ! { [[ $pinned_port =~ ^[0-9]{1,5}$ ]] && ((10#$pinned_port >= 1 && 10#$pinned_port <= 65535)); }; then
    echo "error: MAIN_PROCESS_PORT=$pinned_port: a port number 1-65535 is needed (or unset it: a free port" \
         "derived from the job id)" >&2
    exit 2
fi
# GPUs per node as allocated; none (or --gpus-per-node=0): the same job on CPU with gloo.
gpus_per_node=${SLURM_GPUS_ON_NODE:-${SLURM_GPUS_PER_NODE:-0}}
gpus_per_node=${gpus_per_node##*:}   # "a100:8" -> 8
if [[ ! $gpus_per_node =~ ^[0-9]+$ ]]; then
    # Every node runs as many processes as node 0 has GPUs: a count per node is needed (not --gpus=N).
    echo "error: GPUs per node: cannot read a count from SLURM_GPUS_ON_NODE=${SLURM_GPUS_ON_NODE-} /" \
         "SLURM_GPUS_PER_NODE=${SLURM_GPUS_PER_NODE-}: give every node the same number with --gpus-per-node=N" \
         "(or --gres=gpu:N)" >&2
    exit 2
fi
if ((gpus_per_node > 0)); then
    procs_per_node=$gpus_per_node
    # srun takes its GPUs per node from SLURM_GPUS_PER_NODE, which the #SBATCH line above set to
    # 8 even when the job was given its GPUs with --gres=gpu:N: the step would ask for 8.
    export SLURM_GPUS_PER_NODE=$gpus_per_node
else
    procs_per_node=1
    export ACCELERATE_USE_CPU=true   # --multi_gpu + this = one gloo process per node
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}
fi
# A config mistake (a key misspelt, shards not there) is one error line here, before srun starts
# a launcher and its ranks on every node, each with a traceback.
python pipeline/train.py --check "${train_args[@]}" || exit $?

# The head node's address: its NodeAddr (the host name itself on most clusters).
# (sed, not head: head stops reading, and with pipefail scontrol's SIGPIPE would end this shell on a
# long node list; `|| true`: a node record Slurm does not show, PrivateData=nodes, falls back to the name.)
head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | sed -n 1p)
head_addr=$(scontrol show node "$head_node" 2>/dev/null | grep -o 'NodeAddr=[^ ]*' | cut -d= -f2 || true)
head_addr=${head_addr:-$head_node}
# The port of the head's TCP store: MAIN_PROCESS_PORT where pinned, else one derived from the job id
# (20000-29999: below 32768, where Linux hands out ports for outgoing connections). This shell runs
# on the head node (Slurm's batch host is the allocation's first node): the port is tried there,
# and where something already listens on the derived one (another job whose id differs by a
# multiple of 10,000 on this node, any server) the next free one is taken. Without the try, the
# head's launcher refuses the taken port ("another process is utilizing it") and the job fails.
# (SO_REUSEADDR as the store sets it: a port the previous start of this job left in TIME_WAIT is
# free to it.)
if [[ -n $pinned_port ]]; then
    port=$((10#$pinned_port)) first=$((10#$pinned_port)) count=1
else
    port=$((20000 + SLURM_JOB_ID % 10000)) first=20000 count=10000
fi
if [[ ${SLURMD_NODENAME:-} == "$head_node" ]]; then
    port=$(python - "$port" "$first" "$count" <<'PYTHON'
import socket
import sys

start, first, count = map(int, sys.argv[1:])
for step in range(count):
    port = first + (start - first + step) % count
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(("", port))
    except OSError:
        continue
    print(port)
    break
PYTHON
) || true
    if [[ -z $port ]]; then
        if [[ -n $pinned_port ]]; then
            echo "error: MAIN_PROCESS_PORT=$pinned_port: the port is taken on the head node $head_node" \
                 "(something listens on it): pin another or unset it" >&2
        else
            echo "error: no free port in 20000-29999 on the head node $head_node: pin one with" \
                 "MAIN_PROCESS_PORT=N" >&2
        fi
        exit 2
    fi
fi

# Since Slurm 22.05 srun does not take --cpus-per-task from sbatch: where the cluster binds tasks
# to CPUs (task/affinity, task/cgroup), each node's task (its training processes and their DALI
# threads) would be bound to one CPU. Each task prints the CPUs it got.
if [[ -n ${SLURM_CPUS_PER_TASK:-} ]]; then
    export SRUN_CPUS_PER_TASK=$SLURM_CPUS_PER_TASK
fi
export NUM_PROCESSES=$((SLURM_NNODES * procs_per_node))
# accelerate refuses --multi_gpu for one process (one node with one GPU, or one CPU node); its
# launcher for one process sets ACCELERATE_USE_CPU from --cpu alone (the export above would be
# overwritten, and a CPU job on a node whose GPUs are visible would train on a GPU).
if ((NUM_PROCESSES > 1)); then
    export MULTI=--multi_gpu
elif ((gpus_per_node == 0)); then
    export MULTI=--cpu
else
    export MULTI=
fi
export HEAD_ADDR=$head_addr PORT=$port PROCS_PER_NODE=$procs_per_node
# Where the launcher itself gets a SIGTERM (a cluster that signals every process of the step, or
# proctrack/pgid), torchrun's agent passes it on and SIGKILLs its ranks after this many seconds
# (torch's default 30, short for a checkpoint on a slow file system): run.stop_grace_seconds'
# default; set it in the environment to change it.
export TORCH_ELASTIC_SHUTDOWN_TIMEOUT=${TORCH_ELASTIC_SHUTDOWN_TIMEOUT:-120}
nodes_said="$SLURM_NNODES node$( ((SLURM_NNODES == 1)) || echo s)"
procs_said="$procs_per_node process$( ((procs_per_node == 1)) || echo es)"
echo "job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}): $nodes_said x $procs_said" \
     "per node, head $head_node ($head_addr:$port), pipeline/train.py ${train_args[*]}"

if ((requeue)); then
    # The warning came before any training: the time limit leaves no time to train after it, and
    # a requeued job would get the same warning as early, again and again.
    echo "error: USR1 came before the training started ($SECONDS s into the job): not started, not" \
         "requeued; if it was the time-limit warning, give the job a --time longer than the" \
         "--signal=B:USR1@SECONDS lead plus the start-up" >&2
    exit 1
fi

# One task per node: a small bash that starts `accelerate launch` (the torchrun agent, whose
# children are the training processes) and forwards USR1 to those children. The launcher ignores
# USR1 (trap '' survives exec; train.py installs its own handler): where proctrack signals every
# process of the step, the agent must not die of it; where it reaches only the task (seen under
# gVisor), the forwarding does the job. $SLURM_NODEID is expanded inside each task: expanded here,
# in the batch shell, every node would get machine rank 0.
# The static rendezvous: node N is machine rank N, node 0's launcher hosts the one TCP store at
# HEAD_ADDR:PORT and every rank finds its process group there. (torchrun's c10d rendezvous starts
# a second store for the ranks on the first node's own host name, socket.getfqdn(): where that
# name does not resolve on the other nodes, they hang. Gloo and NCCL still open ports of their own.)
# --config_file: accelerate launch would otherwise take every setting not given here from the
# user's ~/.cache/huggingface/accelerate/default_config.yaml (gpu_ids, FSDP, DeepSpeed, ...).
# --export=ALL: the tasks get this shell's environment (MULTI, NUM_PROCESSES, ... and the
# environment activated above), also where the job was submitted with --export=NONE or a list,
# which srun would otherwise apply to its tasks too.
# One task per node whatever --ntasks-per-node the job was given (two launchers per node would
# fight over the port).
srun --export=ALL --kill-on-bad-exit=1 --ntasks-per-node=1 --ntasks="$SLURM_NNODES" bash -c '
    trap "" USR1   # until the forwarding below is in place: a USR1 now must not end the task (it comes again)
    cpus=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)   # nproc alone would echo OMP_NUM_THREADS
    gloo=
    if [[ -z ${GLOO_SOCKET_IFNAME:-} ]] && ((SLURM_NNODES > 1)); then
        # Gloo (the CPU group: the stop flags; on CPU nodes all the traffic) binds to the address
        # the host name resolves to, which is 127.0.1.1 on many Debian/Ubuntu hosts: the other
        # nodes then cannot reach it. Bind it to the interface this node reaches another node of
        # the job through (node 0: the second node; the others: node 0), at the NodeAddr Slurm
        # itself uses. A GLOO_SOCKET_IFNAME set by the user wins.
        peer=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | sed -n "$((SLURM_NODEID == 0 ? 2 : 1))p")
        addr=$(scontrol show node "$peer" 2>/dev/null | grep -o "NodeAddr=[^ ]*" | cut -d= -f2)
        ip4=$(getent ahostsv4 "${addr:-$peer}" 2>/dev/null | awk "{print \$1; exit}")
        ifname=$(ip -o -4 route get "${ip4:-none}" 2>/dev/null | grep -o "dev [^ ]*" | cut -d" " -f2)
        if [[ -n $ifname ]]; then
            export GLOO_SOCKET_IFNAME=$ifname
            gloo="; gloo on $ifname (the way to $peer, $ip4)"
        else
            gloo="; warning: no interface found towards $peer: gloo binds to the address of the host name (set GLOO_SOCKET_IFNAME if the nodes cannot connect)"
        fi
    fi
    echo "node $SLURM_NODEID ($(hostname)): $cpus CPUs for its processes$gloo"
    ( trap "" USR1
      exec python -m accelerate.commands.accelerate_cli launch --config_file slurm/accelerate.yaml $MULTI \
        --num_machines "$SLURM_NNODES" \
        --machine_rank "$SLURM_NODEID" --num_processes "$NUM_PROCESSES" --main_process_ip "$HEAD_ADDR" \
        --main_process_port "$PORT" --rdzv_backend static --dynamo_backend no pipeline/train.py "$@" ) &
    launcher=$!
    trap "trapped=1; pkill -USR1 -P $launcher" USR1
    # scancel, a preemption, a requeue: Slurm sends SIGTERM to this task (here only it: seen with
    # proctrack/cgroup, Slurm 22.05), whose end then gets the rest of the step SIGKILLed: pass it
    # to the training processes, which checkpoint and exit, and wait for them (until KillWait).
    # None there yet (the launcher still starting): USR1 every 2 s until the launcher ends, which
    # reaches them once their handler is in place (a stop under way ignores the repeats; a second
    # SIGTERM would end them at once).
    trap "trapped=1; pkill -TERM -P $launcher || { (while kill -0 $launcher 2>/dev/null; do sleep 2; pkill -USR1 -P $launcher; done) & }" TERM
    # wait returns early (> 128) when the trap runs: wait again. After a wait that returned the
    # status (the USR1 came just after the launcher ended), a second finds nothing: 127 in bash
    # before 5.2 (5.2 says the status again): keep the first.
    status=
    while :; do
        trapped=0
        code=0
        wait $launcher || code=$?
        if [[ -n $status ]] && ((status <= 128 && code == 127)); then break; fi
        status=$code
        ((trapped)) || break
    done
    exit $status' train "${train_args[@]}" &
srun_pid=$!
if ((requeue)); then
    on_usr1   # USR1 came between the check above and here
fi
# wait returns early (status > 128) when a trapped signal arrives: wait again until it returns
# without one, with srun's own status (bash keeps an ended child's status until it is waited for;
# after a wait that returned it, the signal having come just after srun ended, a second finds
# nothing: 127 in bash before 5.2, which says the status again: the first status is srun's).
status=
while :; do
    trapped=0
    code=0
    wait "$srun_pid" || code=$?
    if [[ -n $status ]] && ((status <= 128 && code == 127)); then
        break
    fi
    status=$code
    if ((!trapped)); then
        break
    fi
done
srun_ended=1   # first: a TERM between the two lines must not take srun for not started
srun_pid=   # a USR1 from now on starts no repeats: the training processes have ended
if [[ -n $resender ]]; then
    kill "$resender" 2>/dev/null || true
    wait "$resender" 2>/dev/null || true
fi

if ((status != 0)); then
    # The training processes' own error line is somewhere above torchrun's report of the failed
    # ranks: say it again last, where a reader of the log looks first (this start's part of it).
    # StdOut= is a line of its own, the path unquoted to the line's end (it may hold spaces).
    log=$(scontrol show job "$SLURM_JOB_ID" 2>/dev/null | sed -n 's/^[[:space:]]*StdOut=//p' | head -n 1 || true)
    cause=
    if [[ -n $log && -f $log ]]; then
        cause=$(awk -v start="job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}):" \
            'index($0, start) == 1 {found = 1; next} found && /^error: / {print; exit}' "$log")
    fi
    echo "error: the training ended with exit status $status${cause:+: ${cause#error: }}" >&2
fi
if ((requeue)) && ((status == 0)) && ((!termed)); then
    # A USR1 during the last epoch's evaluation or export: the run ended, nothing to requeue for.
    if python pipeline/train.py --check "${train_args[@]}" run.resume=auto 2>/dev/null | grep -q "already finished"; then
        echo "the run has finished: no requeue"
    elif ((termed)); then   # came during the check (bash runs a trap after the command in the foreground)
        echo "SIGTERM: no requeue"
    else
        echo "checkpoint written: requeueing job $SLURM_JOB_ID"
        scontrol requeue "$SLURM_JOB_ID"
    fi
fi
exit "$status"
