#!/bin/bash
# Build shards as a Slurm job array, then merge the part manifests: one command submits both.
#
#   slurm/build_shards.sh SRC OUT --split train [python -m shards build options ...]
#   PARTS=16 CPUS_PER_TASK=32 slurm/build_shards.sh ILSVRC2012_img_train.tar /data/inet --split train
#
# Array task I runs `python -m shards build SRC OUT ... --num-parts PARTS --part-id I`; the merge
# job (`python -m shards merge OUT --split SPLIT`) starts only when every task succeeded
# (--dependency=afterok). Resources come from the environment:
# PARTS (array size, default 8), CPUS_PER_TASK (default 16, also the build's --workers), TIME
# (default 12:00:00), LOG_DIR (default: the current folder), PYTHON (default python); partition,
# account and anything else through sbatch's own variables (SBATCH_PARTITION, SBATCH_ACCOUNT, ...).
set -euo pipefail

python=${PYTHON:-python}

if [[ "${1-}" == "--array-task" ]]; then   # inside the array: one part of the build
    # The part count as submitted, not SLURM_ARRAY_TASK_COUNT: a task array resubmitted for some
    # parts only (sbatch --array=3,7 ...) would count 2.
    parts=$2
    shift 2
    exec "$python" -m shards build "$@" --quiet --workers "${SLURM_CPUS_PER_TASK:-1}" \
        --num-parts "$parts" --part-id "$SLURM_ARRAY_TASK_ID"
fi
if [[ "${1-}" == "--merge" ]]; then         # after the array: the combined manifest
    shift
    exec "$python" -m shards merge "$@"
fi

usage="usage: $0 SRC OUT --split train|val|test [python -m shards build options ...]"
if (($# < 2)) || [[ ${1-} == -* || ${2-} == -* ]]; then
    echo "error: SRC and OUT come first, then the options; $usage" >&2
    exit 2
fi
split=
args=("$@")
for ((i = 2; i < $#; i++)); do
    case "${args[i]}" in
        --split) split=${args[i + 1]-} ;;
        --split=*) split=${args[i]#--split=} ;;
    esac
done
if [[ -z $split ]]; then
    echo "error: --split is needed (the merge job merges that split); $usage" >&2
    exit 2
fi
if [[ ! -e $1 ]]; then   # found here, not by every array task after it has waited in the queue
    echo "error: SRC $1: no such file or folder" >&2
    exit 2
fi
out=$2
parts=${PARTS:-8}
cpus=${CPUS_PER_TASK:-16}
for setting in "PARTS=$parts" "CPUS_PER_TASK=$cpus"; do
    if [[ ! ${setting#*=} =~ ^0*[1-9][0-9]*$ ]]; then
        echo "error: $setting: a whole number >= 1 is needed" >&2
        exit 2
    fi
done
parts=$((10#$parts)) cpus=$((10#$cpus))   # 08 is 8 (bash arithmetic would read it as octal)
# The build's own checks (options, SRC's kind, label and class files, a previous build in OUT)
# here, once, rather than in every array task after it has waited in the queue.
if ! "$python" -m shards build "$@" --num-parts "$parts" --part-id 0 --dry-run >/dev/null; then
    exit 2   # its one error line is above
fi
log_dir=${LOG_DIR:-.}
mkdir -p "$log_dir"
# sbatch runs a spool copy of this script: the jobs start from this folder and call it by path.
script=$(realpath "$0")
common=(--parsable --chdir "$PWD" --time "${TIME:-12:00:00}" --ntasks 1)

array_id=$(sbatch "${common[@]}" --job-name shards-build --array "0-$((parts - 1))" \
    --cpus-per-task "$cpus" --output "$log_dir/%x-%A_%a.out" \
    "$script" --array-task "$parts" "$@")
array_id=${array_id%%;*}
echo "submitted build array $array_id ($parts tasks); logs in $log_dir"
if ! merge_id=$(sbatch "${common[@]}" --job-name shards-merge --cpus-per-task 1 \
    --dependency "afterok:$array_id" --kill-on-invalid-dep=yes --output "$log_dir/%x-%j.out" \
    "$script" --merge "$out" --split "$split"); then
    # %q: a command to paste, an OUT with spaces in it included
    echo "error: the merge job was not submitted (sbatch's message above); the array $array_id runs: once all" \
         "its tasks have succeeded, merge with \`$(printf '%q ' "$python" -m shards merge "$out" --split "$split" \
         | sed 's/ $//')\`" >&2
    exit 1
fi
merge_id=${merge_id%%;*}
echo "submitted merge job $merge_id (after every task of $array_id succeeded)"
echo "$array_id $merge_id"
