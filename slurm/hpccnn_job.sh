# Sourced by every template in slurm/: what they share lives here, once.
# Runs python -m hpccnn.train with one rank per SLURM task (srun --mpi=pmix), in the folder the job was
# submitted from: its hpccnn.toml (or $HPCCNN_CONFIG) names your experiments and grids, and a model given
# as package.module:function is imported from there. Settings come from --export'ed variables
# (EXPERIMENT, or GRID for an array job; DATASET, EPOCHS, BATCH_SIZE, DATA_DIR, RESULTS_DIR)
# and any script arguments, which are passed to hpccnn.train as they are (--learning-rate 1e-4 ...).
set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-.}"
venv=${HPCCNN_VENV:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/.venv}  # the repository's own
if [ -f "$venv/bin/activate" ]; then source "$venv/bin/activate"; fi
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
if [ "$(id -u)" -eq 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi
settings=()
[ -n "${DATASET:-}" ] && settings+=(--dataset "$DATASET")
[ -n "${EPOCHS:-}" ] && settings+=(--epochs "$EPOCHS")
[ -n "${BATCH_SIZE:-}" ] && settings+=(--batch-size "$BATCH_SIZE")
if [ -n "${GRID:-}" ]; then  # one grid point per array task, its run folder in the grid's folder
  mapfile -t args < <(python -m hpccnn.grids "$GRID" --task "${SLURM_ARRAY_TASK_ID:?GRID needs an array job: sbatch --array=...}" \
                        --results-dir "${RESULTS_DIR:-results}" "${settings[@]}")
  [ "${#args[@]}" -gt 0 ] || exit 2  # hpccnn.grids has said what was wrong
else
  args=(--experiment "${EXPERIMENT:?set EXPERIMENT}" --results-dir "${RESULTS_DIR:-results}" "${settings[@]}")
fi
[ -n "${DATA_DIR:-}" ] && args+=(--data-dir "$DATA_DIR")
echo "hpccnn: job $SLURM_JOB_ID on $SLURM_JOB_NODELIST: $SLURM_NTASKS rank(s), ${SLURM_CPUS_PER_TASK:-1} core(s) each, gpus=${CUDA_VISIBLE_DEVICES:-none}"
status=0
srun --mpi=pmix --kill-on-bad-exit=1 --cpus-per-task="${SLURM_CPUS_PER_TASK:-1}" python -m hpccnn.train "${args[@]}" "$@" || status=$?
# a run that ended without saying so (a rank killed with its guard, as proctrack/cgroup does) is failed
[ "$status" -eq 0 ] || python -m hpccnn.guard --job-ended "$status" "${RESULTS_DIR:-results}" || true
exit "$status"
