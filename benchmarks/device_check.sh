#!/usr/bin/env bash
# Every GPU measurement of the performance section in one run, numbers written under OUT_DIR.
#
#     bash benchmarks/device_check.sh OUT_DIR
#
# 1. bench_train.py at the VOC configuration, fp32 and --amp, all three phases;
# 2. a VOC-sized synthetic val set (N_VAL images of H x W, written to a temporary folder);
# 3. bench_eval.py on it: multi-scale inference fp32 and --amp, saved logits, CRF loop vs workers;
# 4. bench_crf.py: the dense CRF at VOC and COCO sizes, pydensecrf per core and on all cores
#    against the torch CRF on the CPU and batched on the GPU (images/s, agreement, peak memory);
# 5. eval_seg_voc.py end to end (multi-scale + CRF with the default backend: torch on a GPU) on
#    the N_VAL images, fp32;
# 6. a short train_final_voc.py run under torch.distributed.run (NCCL on a GPU, gloo on the CPU);
# 7. bench_families.py: one phase-C step of a DINOv2-B and a CLIP-B student pair at crop CROP,
#    2 images, fp32 and --amp, with and without --grad_checkpointing (s/step, peak memory);
# 8. summary.json: every number above with the date, GPU, torch version and COMMIT (the
#    environment variable, else git's HEAD), to be copied to benchmarks/results/.
#
# pydensecrf is built from its source archive when it is missing and .whl/pydensecrf2-*.tar.gz is
# there (fetch it where pip works: pip download pydensecrf2 --no-deps --no-binary :all: -d .whl);
# without it the pydensecrf parts are skipped and the log says so (the torch CRF still runs).
#
# Environment overrides (defaults in brackets) keep a CPU rehearsal short: PYTHON [python3],
# BACKBONE [deit_base_patch16_224], CROP [448], ITERS [20], WARMUP [5], N_EVAL [20], N_VAL [1449],
# H [375], W [500], N_CRF [16], CRF_SIZE [the real sizes; "H W" for a rehearsal],
# NPROC [GPUs, at least 1], DDP_BACKBONE [deit_tiny_patch16_224],
# FAMILY_BACKBONES ["vit_base_patch14_reg4_dinov2 vit_base_patch16_clip_224"], FAMILY_ITERS [10],
# FAMILY_WARMUP [3], FAMILY_ARGS [none; e.g. "depth=1,embed_dim=32,num_heads=1" for a rehearsal].
set -euo pipefail
OUT=${1:?usage: bash benchmarks/device_check.sh OUT_DIR}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
BACKBONE=${BACKBONE:-deit_base_patch16_224}
CROP=${CROP:-448}
ITERS=${ITERS:-20}
WARMUP=${WARMUP:-5}
N_EVAL=${N_EVAL:-20}
N_VAL=${N_VAL:-1449}
N_CRF=${N_CRF:-16}
CRF_SIZE=${CRF_SIZE:-}
H=${H:-375}
W=${W:-500}
CORES=$(nproc)
GPUS=$($PY -c "import torch; print(torch.cuda.device_count())")
NPROC=${NPROC:-$(( GPUS > 0 ? GPUS : 1 ))}
DDP_BACKBONE=${DDP_BACKBONE:-deit_tiny_patch16_224}
FAMILY_BACKBONES=${FAMILY_BACKBONES:-vit_base_patch14_reg4_dinov2 vit_base_patch16_clip_224}
FAMILY_ITERS=${FAMILY_ITERS:-10}
FAMILY_WARMUP=${FAMILY_WARMUP:-3}
FAMILY_ARGS=${FAMILY_ARGS:-}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

stamp() { echo "== $(date +%H:%M:%S) $*" | tee -a "$OUT/log.txt"; }
timed() {  # timed NAME cmd...: run, keep its output (without progress bars), record its wall time
    local name=$1; shift
    local t0=$SECONDS
    "$@" 2>&1 | { grep -v "it/s]" || true; } | tee "$OUT/$name.txt"
    echo "$name $(( SECONDS - t0 )) s" | tee -a "$OUT/wall.txt"
}

CRF=yes
if ! $PY -c "import pydensecrf" 2>/dev/null; then
    SDIST=$(ls .whl/pydensecrf2-*.tar.gz 2>/dev/null | head -1 || true)
    if [ -n "$SDIST" ] && $PY -m pip install -q --no-index --no-deps --no-build-isolation \
            --target "$TMP/site" "$SDIST" >"$OUT/pydensecrf_build.txt" 2>&1; then
        export PYTHONPATH="$TMP/site${PYTHONPATH:+:$PYTHONPATH}"
    fi
    $PY -c "import pydensecrf" 2>/dev/null || CRF=no
fi

stamp "machine: $CORES cores, $GPUS GPU(s), pydensecrf: $CRF"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || true; } > "$OUT/gpu.txt"
$PY -c "import torch, timm; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'timm', timm.__version__)" \
    | tee -a "$OUT/log.txt"

stamp "1. training step, $BACKBONE, crop $CROP, 2 images"
for amp in no-amp amp; do
    timed "train_$amp" $PY benchmarks/bench_train.py --backbone "$BACKBONE" --crop_size "$CROP" \
        --samples_per_gpu 2 --iters "$ITERS" --warmup "$WARMUP" --"$amp" --json "$OUT/train_$amp.json"
done

stamp "2. synthetic val set: $N_VAL images of ${H}x$W"
timed data $PY -m datasets.synthetic --out "$TMP/data" --num_train 8 --num_val "$N_VAL" --num_test 0 \
    --no-coco --image_size "$H" "$W"
VOC="$TMP/data/VOC2012"

stamp "3. bench_eval, $N_EVAL images"
if [ "$CRF" = yes ]; then WORKERS="1 $CORES"; else WORKERS=0; fi
timed eval_no-amp $PY benchmarks/bench_eval.py --data_folder "$VOC" --backbone "$BACKBONE" \
    --num_images "$N_EVAL" --crf_workers $WORKERS --json "$OUT/eval_no-amp.json"
timed eval_amp $PY benchmarks/bench_eval.py --data_folder "$VOC" --backbone "$BACKBONE" \
    --num_images "$N_EVAL" --crf_workers 0 --amp --json "$OUT/eval_amp.json"

stamp "4. dense CRF: pydensecrf against the torch CRF, $N_CRF images per size"
timed crf $PY benchmarks/bench_crf.py --num_images "$N_CRF" ${CRF_SIZE:+--size $CRF_SIZE} \
    --json "$OUT/crf.json"

stamp "5. eval_seg_voc.py end to end on $N_VAL images, multi-scale + CRF (default backend)"
$PY - "$BACKBONE" "$TMP/random.pth" <<'EOF'
import sys, torch
from model.network import DualStudentNet
torch.manual_seed(0)
torch.save({"model": DualStudentNet(sys.argv[1], 21).state_dict()}, sys.argv[2])
EOF
timed e2e $PY eval_seg_voc.py --data_folder "$VOC" --model_path "$TMP/random.pth" \
    --backbone "$BACKBONE" --work_dir "$TMP/e2e"

stamp "6. train_final_voc.py under torch.distributed.run, $NPROC process(es)"
timed ddp $PY -m torch.distributed.run --standalone --nproc_per_node="$NPROC" train_final_voc.py \
    --data_folder "$VOC" --work_dir "$TMP/ddp" --backbone "$DDP_BACKBONE" --no-pretrained \
    --crop_size 128 --samples_per_gpu 2 --max_iters 30 --cam_iters 10 --gmm_iters 20 \
    --warmup_iters 5 --log_iters 10 --eval_iters 30 --num_workers 2 \
    $($PY -c "import torch; print('' if torch.cuda.is_available() else '--cpu')")

stamp "7. encoder families: $FAMILY_BACKBONES, phase C, crop $CROP, 2 images"
# shellcheck disable=SC2086
timed families $PY benchmarks/bench_families.py --backbones $FAMILY_BACKBONES --crop_size "$CROP" \
    --samples_per_gpu 2 --iters "$FAMILY_ITERS" --warmup "$FAMILY_WARMUP" --amp off on \
    --grad_checkpointing off on --data_folder "$VOC" ${FAMILY_ARGS:+--backbone_args "$FAMILY_ARGS"} \
    --json "$OUT/families.json"

stamp "8. summary"
COMMIT=${COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}
$PY - "$OUT" "$COMMIT" <<'EOF'
import datetime, json, os, sys, torch
out, commit = sys.argv[1], sys.argv[2]
summary = {"date": datetime.date.today().isoformat(), "commit": commit, "torch": torch.__version__,
           "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
           "cores": len(os.sched_getaffinity(0))}
for name in sorted(os.listdir(out)):
    if name.endswith(".json") and name != "summary.json":
        with open(os.path.join(out, name)) as f:
            summary[name[:-5]] = json.load(f)
with open(os.path.join(out, "wall.txt")) as f:
    summary["wall_s"] = {l.split()[0]: int(l.split()[1]) for l in f if l.strip()}
with open(os.path.join(out, "summary.json"), "w") as f:
    json.dump(summary, f, indent=2)
print("summary:", os.path.join(out, "summary.json"))
EOF
stamp "done"
