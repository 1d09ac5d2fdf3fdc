#!/bin/bash
# The radar_gpu suite's missing model rows on one GPU lease, in one device call (at most 10 minutes):
# the whole-domain EDM and GAN (experiment=radar_mrms_edm, radar_mrms_gan) trained side by side on the
# card for 3 minutes each (the tiny net's steps are host-bound, so two can share it), then their
# 8-member draws over the whole domain, side by side too, scored on the GPU machine by the bench's own
# stages. About 540 s by the earlier leases' timings: install 35 s, the trainings with their start and
# save 230 s, the EDM's draw 230 s and its scoring 40 s; the GAN's draw and scoring fit beside the
# EDM's draw. From the repository root, with the wheels in .whl/ and the bench's radar_gpu folder (its
# store and the earlier rows' records) in .gpu/skill/, both carried:
#   bash bench/skill/radar_gpu_lease.sh
# What comes back under $OUT: logs, scores.json, the rows' records and the two trainings' summaries
# and checkpoints, to copy into outputs/skill/radar_gpu before `--stage report`.
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
TRAIN=()
if [ -n "${LEASE_CPU:-}" ]; then
    TRAIN=(trainer=cpu trainer.precision=32 trainer.max_epochs=1 trainer.limit_train_batches=2
        trainer.check_val_every_n_epoch=1 data.num_workers=0 "data.regions.storm=[0,0,256,256]")
fi
overrides() { for o in "${TRAIN[@]}"; do printf -- "--train-override %s " "$o"; done; }

el train edm and gan, side by side
for m in edm gan; do
    timeout "$(left 330)" $R --stage train --only $m $(overrides) >"$S/logs/lease_train_$m.log" 2>&1 &
done
wait
for m in edm gan; do grep -h "train_seconds\|steps\|sigma_data" "$S/radar_gpu/train/$m/summary.json"; done
el draw gan and edm, side by side
(timeout "$(left 420)" $R --stage sample --only gan >"$S/logs/lease_sample_gan.log" 2>&1
    timeout "$(left 560)" $R --stage evaluate --only gan >"$S/logs/lease_evaluate_gan.log" 2>&1) &
timeout "$(left 530)" $R --stage sample --only edm >"$S/logs/lease_sample_edm.log" 2>&1
wait # both rows write scores.json: one after the other
el evaluate edm
timeout "$(left 595)" $R --stage evaluate --only edm >"$S/logs/lease_evaluate_edm.log" 2>&1
el collect
G=$S/radar_gpu
cp "$G/scores.json" "$OUT/" 2>/dev/null
(cd "$G" && find train/edm train/gan samples eval -name "*.json" -not -path "*.zarr*" 2>/dev/null |
    tar cf - -T - 2>/dev/null) | (cd "$OUT" && tar xf -)
for m in edm gan; do
    mkdir -p "$OUT/train/$m" && cp "$G/train/$m/checkpoints/best.ckpt" "$OUT/train/$m/" 2>/dev/null
done
cp "$S"/logs/lease_*.log "$OUT/"
grep -h "evaluated\|error" "$S"/logs/lease_evaluate_*.log
el done
