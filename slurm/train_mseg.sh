#!/usr/bin/env bash
# Train LSeg with Slurm: one `python -m lseg.train` process per GPU, requeued on time limit and
# preemption, resumed from the run dir's checkpoints.
#
#   sbatch slurm/train_mseg.sh [--config FILE] [--output-dir DIR] [key=value ...]
#   CONFIG=FILE OUTPUT_DIR=DIR sbatch slurm/train_mseg.sh [key=value ...]
#
# Submit from the repository root (or set LSEG_ROOT). Every #SBATCH default below can be overridden
# on the sbatch command line, e.g. `sbatch --nodes=4 --time=12:00:00 -p gpu slurm/train_mseg.sh`.
# CPU-only (tests): `sbatch --nodes=2 --ntasks-per-node=1 --gpus-per-node=0 --cpus-per-task=1 ...`.
#
# Signals (one meaning for both launchers, see lseg/engine/preemption.py):
#   SIGUSR1/SIGUSR2 - Slurm sends SIGUSR2 to this batch shell 5 minutes before the time limit or when
#     the job is preempted (--signal=B:USR2@300; the latter needs SlurmctldParameters=
#     preempt_send_user_signal); `scancel --signal=USR2 JOBID` sends it to the trainers directly.
#     The trap forwards it to srun, which passes it to every trainer process; the ranks agree at the
#     next step, save a checkpoint and exit 75. This script then runs `scontrol requeue`, and the
#     restarted job (same job id, same run dir) auto-resumes.
#   SIGTERM - `scancel JOBID`, the time limit itself, or preemption without the user signal: Slurm
#     signals every process of the job; the trainers save and exit 143 and the job ENDS: this
#     script never requeues it (with PreemptMode=REQUEUE Slurm requeues a preempted job by itself).
#     The save must fit in Slurm's KillWait (30 s by default) before SIGKILL.
# A rank that dies ends the whole step at once (srun --kill-on-bad-exit=1).
#
#SBATCH --job-name=lseg-mseg
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=10
#SBATCH --time=24:00:00
#SBATCH --signal=B:USR2@300
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%j.out
set -uo pipefail  # no -e: srun's exit status is inspected below

readonly REQUEUE_EXIT_CODE=75   # lseg.engine.preemption.REQUEUE_EXIT_CODE: saved, requeue me
readonly STOPPED_EXIT_CODE=143  # lseg.engine.preemption.STOPPED_EXIT_CODE: saved, stopped for good

# --- Arguments: --config/--output-dir (or CONFIG/OUTPUT_DIR), everything else goes to the trainer.
LSEG_ROOT=${LSEG_ROOT:-${SLURM_SUBMIT_DIR:-$PWD}}
CONFIG=${CONFIG:-configs/lseg_vitl16_480_mseg.yaml}
# The job id survives requeues, so the default run dir is stable across restarts of one job.
OUTPUT_DIR=${OUTPUT_DIR:-runs/${SLURM_JOB_NAME:-lseg}-${SLURM_JOB_ID:-local}}
overrides=()
while (($#)); do
  case $1 in
    --config) CONFIG=$2; shift 2 ;;
    --config=*) CONFIG=${1#*=}; shift ;;
    --output-dir) OUTPUT_DIR=$2; shift 2 ;;
    --output-dir=*) OUTPUT_DIR=${1#*=}; shift ;;
    *) overrides+=("$1"); shift ;;
  esac
done

cd "$LSEG_ROOT" || { echo "LSEG_ROOT=$LSEG_ROOT does not exist" >&2; exit 1; }
if [[ -z ${PYTHON:-} ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=$PWD/.venv/bin/python; else PYTHON=python3; fi
fi

# --- Logs: this shell's output and every rank's output (prefixed "rank: ") go into the run dir.
mkdir -p "$OUTPUT_DIR/slurm"
LOG=$OUTPUT_DIR/slurm/job-${SLURM_JOB_ID:-local}.out
echo "lseg: logging to $LOG"
exec >>"$LOG" 2>&1

# The checkout itself is importable even where the package is not installed into $PYTHON.
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}
export PYTHONUNBUFFERED=1
echo "=== $(date -Is) job ${SLURM_JOB_ID:-?} restart ${SLURM_RESTART_COUNT:-0}:" \
  "${SLURM_JOB_NUM_NODES:-?} node(s) [${SLURM_JOB_NODELIST:-?}], ${SLURM_NTASKS:-?} task(s)"
echo "config=$CONFIG output_dir=$OUTPUT_DIR overrides=${overrides[*]:-} python=$PYTHON"

# --- Signals: remember them, and hand USR1/USR2 on to the training step.
requeue_signal=""
stop_signal=""
srun_pid=""
on_signal() {
  echo "=== $(date -Is) batch shell got SIG$1"
  if [[ $1 == TERM ]]; then
    stop_signal=$1  # Slurm sends TERM to the tasks itself
  else
    requeue_signal=$1
    if [[ -n $srun_pid ]]; then kill -s "$1" "$srun_pid" 2>/dev/null || true; fi  # srun passes it on
  fi
}
trap 'on_signal USR1' USR1
trap 'on_signal USR2' USR2
trap 'on_signal TERM' TERM

# One task per GPU; each task announces its rank so the log shows who took part.
# --cpus-per-task is repeated because srun in 22.05+ no longer inherits it from sbatch.
srun --kill-on-bad-exit=1 --label --cpus-per-task="${SLURM_CPUS_PER_TASK:-1}" \
  bash -c 'echo "task $SLURM_PROCID/$SLURM_NTASKS on ${SLURMD_NODENAME:-$(hostname)} (local $SLURM_LOCALID)"; exec "$@"' \
  lseg-task "$PYTHON" -m lseg.train --config "$CONFIG" --output-dir "$OUTPUT_DIR" "${overrides[@]}" &
srun_pid=$!

# `wait` returns early whenever a trapped signal arrives; keep waiting until srun has really exited.
while :; do
  wait "$srun_pid"
  rc=$?
  kill -0 "$srun_pid" 2>/dev/null || break
done
caught=${stop_signal:-$requeue_signal}
echo "=== $(date -Is) srun exited with $rc${caught:+ after SIG$caught}"

if ((rc == 0)); then
  exit 0  # finished (even if a signal came too late to matter)
fi
if [[ -n $stop_signal ]] || ((rc == STOPPED_EXIT_CODE)); then
  echo "=== stopped, not requeueing; to resume, submit again with --output-dir $OUTPUT_DIR"
  exit "$rc"
fi
if ((rc == REQUEUE_EXIT_CODE)) || [[ -n $requeue_signal ]]; then
  # A checkpoint was saved (exit 75), or a rank died before it could save: either way the
  # restarted job resumes from the newest valid checkpoint in $OUTPUT_DIR.
  echo "=== requeueing job $SLURM_JOB_ID"
  if scontrol requeue "$SLURM_JOB_ID"; then
    exit 0  # normally not reached: the requeue ends this shell
  fi
  echo "=== scontrol requeue failed; resubmit with OUTPUT_DIR=$OUTPUT_DIR to resume"
  exit "$REQUEUE_EXIT_CODE"
fi
exit "$rc"
