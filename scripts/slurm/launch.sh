# The launch both sbatch files share (sourced after they set SCRIPT, PAPER_BATCH, SAMPLES_PER_GPU,
# WORK_DIR, NODES and GPUS_PER_NODE; "$@" are the user's flags).
#
# 1. The user's flags may not set what this recipe sets: --resume (always auto in WORK_DIR, so
#    that every requeue continues the same run), --work_dir (WORK_DIR), --samples_per_gpu / --spg
#    (SAMPLES_PER_GPU) and --grad_accum (derived from the allocation). Such a flag, or an
#    abbreviation of it that argparse would accept, stops the job before any step, in one line.
# 2. The paper's global batch: nodes x GPUs per node x SAMPLES_PER_GPU x grad_accum = PAPER_BATCH.
# 3. Data loader workers per GPU: the task's CPUs shared by the GPUs of the node (NUM_WORKERS
#    overrides; --num_workers among the user's flags too, since they come last).
# 4. SIGUSR1 before the time limit: SIGTERM to the step (checkpoint), then `scontrol requeue`;
#    a requeue that fails ends the job with status 1, never as COMPLETED.

refuse_recipe_flags() {
    local arg name flag hint
    for arg in "$@"; do
        [[ "$arg" == --?* ]] || continue
        name=${arg%%=*}
        [ "${#name}" -ge 5 ] || continue                  # "--xyz" at least: shorter ones are ambiguous
        for flag in --resume --work_dir --samples_per_gpu --spg --grad_accum; do
            [[ "$flag" == "$name"* ]] || continue
            case "$flag" in
                --resume) hint="set WORK_DIR: every run and requeue resumes from WORK_DIR/checkpoint.pth" ;;
                --work_dir) hint="set WORK_DIR" ;;
                --samples_per_gpu|--spg) hint="set SAMPLES_PER_GPU" ;;
                *) hint="it follows from the allocation (nodes x GPUs per node) and SAMPLES_PER_GPU" ;;
            esac
            echo "error: $name is set by this sbatch file ($flag); $hint" >&2
            exit 2
        done
    done
}
refuse_recipe_flags "$@"

PER_STEP=$((NODES * GPUS_PER_NODE * SAMPLES_PER_GPU))
if [ $((PAPER_BATCH % PER_STEP)) -ne 0 ]; then
    echo "error: $NODES node(s) x $GPUS_PER_NODE GPU(s) x $SAMPLES_PER_GPU image(s) = $PER_STEP images per" \
         "micro-batch does not divide the paper's global batch of $PAPER_BATCH; change the allocation" \
         "or SAMPLES_PER_GPU" >&2
    exit 2
fi
GRAD_ACCUM=$((PAPER_BATCH / PER_STEP))
CPUS=${SLURM_CPUS_PER_TASK:-16}
NUM_WORKERS=${NUM_WORKERS:-$(( CPUS / GPUS_PER_NODE > 1 ? CPUS / GPUS_PER_NODE : 1 ))}
MASTER=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
echo "global batch: $NODES x $GPUS_PER_NODE x $SAMPLES_PER_GPU x $GRAD_ACCUM = $PAPER_BATCH; run folder $WORK_DIR;" \
     "$NUM_WORKERS loader workers per GPU"

stop_requested=0
on_time_limit() {
    stop_requested=1
    echo "time limit near: the ranks write a checkpoint, then the job is requeued"
    scancel --signal=TERM "$SLURM_JOB_ID"          # every step but this script
}
trap on_time_limit USR1

srun --ntasks-per-node=1 --kill-on-bad-exit=1 --cpus-per-task="$CPUS" \
    "$PYTHON" -m torch.distributed.run --nnodes "$NODES" --nproc_per_node "$GPUS_PER_NODE" \
    --rdzv-backend c10d --rdzv-endpoint "$MASTER:$MASTER_PORT" --rdzv-id "$SLURM_JOB_ID" --max-restarts 3 \
    "$SCRIPT" --samples_per_gpu "$SAMPLES_PER_GPU" --grad_accum "$GRAD_ACCUM" --num_workers "$NUM_WORKERS" \
    --work_dir "$WORK_DIR" --resume auto "$@" &
step=$!
while :; do
    wait "$step"
    status=$?
    kill -0 "$step" 2>/dev/null || break           # wait returned for the trap: the step still runs
done

if [ "$stop_requested" -eq 1 ]; then
    echo "requeueing job $SLURM_JOB_ID; it continues from $WORK_DIR/checkpoint.pth"
    if ! scontrol requeue "$SLURM_JOB_ID"; then
        echo "error: scontrol requeue $SLURM_JOB_ID failed; resubmit the same command: it continues from" \
             "$WORK_DIR/checkpoint.pth" >&2
        exit 1
    fi
    exit 0
fi
exit "$status"
