#!/bin/bash
# The radar_gpu suite's rows still to run, each mode one GPU device call (a call runs at most 10
# minutes; every step has a deadline inside it). From the repository root, with the wheels in .whl/
# and the bench's store in .gpu/skill/stores/, both carried; earlier rows need not come, the report
# keeps the recorded ones (docs/gpu.md, "The whole MRMS domain: the EDM and the GAN" and "The next
# lease"):
#   bash bench/skill/radar_gpu_lease.sh rows   # the whole-domain EDM and GAN (505 s on an H200)
#   bash bench/skill/radar_gpu_lease.sh long   # the residual EDM continued to 7 min (about 575 s)
#   bash bench/skill/radar_gpu_lease.sh heun   # the EDM's 2 members with dpm2_heun 20 (about 200 s)
# long and heun start from earlier calls' checkpoints, which are not in git: heun after a rows call
# whose checkpoints_edm.tar was unpacked into .gpu/ (docs/gpu.md, "The next lease")
# rows: experiment=radar_mrms_edm and radar_mrms_gan trained side by side on the card for 3 minutes
# each (the tiny net's steps are host-bound, so two can share it), then their 8-member draws, side by
# side too, scored on the GPU machine by the bench's own stages. On an H200 (docs/gpu.md): install
# 2 s, the trainings with their start and save 213 s, the EDM's draw 250 s with the GAN's draw and
# scoring beside it, its scoring 40 s.
# long: the first lease's training (3.5 min) resumed to 7 min in all (220 s more), which leaves room
# in one call for its 8-member draw (230 s) and scoring, if not by much: a draw cut short by its
# deadline is resumable, so a second call of the same command (the machine still warm) finishes it.
# What comes back under $OUT: records.tar (scores.json with every row, the rows' records, the
# trainings' summaries, the logs) and checkpoints_<model>.tar (best.ckpt, last.ckpt), to unpack into
# outputs/skill/radar_gpu (records) and its train/<model>/checkpoints before `--stage report`.
# LEASE_OUT=<folder> runs it elsewhere and LEASE_CPU=1 on a CPU (a few steps in fp32, for checking
# the script on a store of the crop, which then stands in for the whole domain).
set -u
t0=$(date +%s)
el() { echo "=== $(($(date +%s) - t0)) s: $*"; }
left() { echo $(($1 - ($(date +%s) - t0))); } # seconds from now to second $1 of the run
S=${LEASE_OUT:-.gpu/skill}
OUT=${OUT:-$S/lease_out}
mkdir -p "$OUT" "$S/logs"
if [ -d .whl ] && [ -z "${LEASE_CPU:-}" ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
fi
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled DOWNSCALE_DATA_ROOT=${DOWNSCALE_DATA_ROOT:-/work/shared/data}
PY=${PYTHON:-python3}
R="$PY -m bench.skill.run --suite radar_gpu --out $S"
MODE=${1:-rows}
TRAIN=()
if [ -n "${LEASE_CPU:-}" ]; then # 2 steps: one epoch (rows), or the resumed run's next (long)
    TRAIN=(trainer=cpu trainer.precision=32 trainer.limit_train_batches=2 data.num_workers=0)
    if [ "$MODE" = long ]; then
        TRAIN+=(trainer.max_epochs=56 trainer.limit_val_batches=0)
    else
        TRAIN+=(trainer.max_epochs=1 trainer.check_val_every_n_epoch=1 "data.regions.storm=[0,0,256,256]")
    fi
fi
overrides() { for o in ${TRAIN[@]+"${TRAIN[@]}"}; do printf -- "--train-override %s " "$o"; done; }
step() { # step <stage> <model> <deadline s>: one bench stage of one model, logged
    timeout "$(left "$3")" $R --stage "$1" --only "$2" $([ "$1" = train ] && overrides) \
        >"$S/logs/lease_$1_$2.log" 2>&1
}
case $MODE in
rows) # the EDM and the GAN, side by side; the GAN's rows are scored during the EDM's draw
    MODELS=(edm gan)
    el train edm and gan
    step train edm 330 & step train gan 330 & wait
    el draw gan and edm
    (step sample gan 420 && step evaluate gan 560) &
    step sample edm 540
    wait # both models' rows write scores.json: one after the other
    el evaluate edm
    step evaluate edm 595
    ;;
long) # the first lease's residual EDM (3.5 min of training) continued to 7 min in all: the
    # bench resumes a run folder that holds checkpoints and no summary (Timer's elapsed time is in
    # its last.ckpt), so train/residual_long/checkpoints/last.ckpt must be that run's last.ckpt
    MODELS=(residual_long)
    [ -f "$S/radar_gpu/train/residual_long/checkpoints/last.ckpt" ] || {
        echo "error: put the first lease's last.ckpt in $S/radar_gpu/train/residual_long/checkpoints/"
        exit 2
    }
    el train residual_long
    step train residual_long 330
    el draw residual_long
    step sample residual_long 555
    el evaluate residual_long
    step evaluate residual_long 595
    ;;
heun) # the rows' EDM (train/edm: its checkpoints and summary.json, from the rows' call) drawn with
    # the issue's dpm2_heun 20: no training, one row (the mode names no model to collect)
    MODELS=()
    ROW=edm_sigma_data_auto_dpm2_heun_20_39_nfe_2_members_conserved
    [ -f "$S/radar_gpu/train/edm/checkpoints/best.ckpt" ] || {
        echo "error: put the rows' EDM (best.ckpt, summary.json) in $S/radar_gpu/train/edm/"
        exit 2
    }
    el draw $ROW
    step sample $ROW 420
    el evaluate $ROW
    step evaluate $ROW 560
    ;;
*)
    echo "error: unknown mode $MODE; use rows (the EDM and GAN), long (the residual EDM" \
        "continued) or heun (the EDM with dpm2_heun 20)"
    exit 2
    ;;
esac
for m in "${MODELS[@]}"; do grep -h "train_seconds\|steps\|sigma_data" "$S/radar_gpu/train/$m/summary.json"; done
el collect # a device call returns at most 8 files of 16 MiB: the records in one tar, each model's
# checkpoints in another
G=$S/radar_gpu
B=$(mktemp -d)
cp "$G/scores.json" "$S"/logs/lease_*.log "$B/" 2>/dev/null
(cd "$G" && find "${MODELS[@]/#/train/}" samples eval -name "*.json" -not -path "*.zarr*" 2>/dev/null |
    tar cf - -T - 2>/dev/null) | (cd "$B" && tar xf -)
tar cf "$OUT/records.tar" -C "$B" .
for m in "${MODELS[@]}"; do
    tar cf "$OUT/checkpoints_$m.tar" -C "$G/train/$m/checkpoints" best.ckpt last.ckpt 2>/dev/null
done
ls -l "$OUT"
grep -h "evaluated\|error" "$S"/logs/lease_evaluate_*.log
el done
