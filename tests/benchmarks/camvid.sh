#!/usr/bin/env bash
# The CamVid real-data benchmark of docs/results.md (issue 8); never run by CI.
# Trains each CamVid config from scratch on the CPU, then evaluates its checkpoint on the
# test split; wall time and peak memory come from /usr/bin/time.
#
#   bash tests/benchmarks/camvid.sh [CAMVID_ROOT] [CONFIG_NAME ...]
# CAMVID_ROOT defaults to ../shared/data/camvid. Results go to work_dirs/camvid/<config>/.
set -uo pipefail
root=${1:-../shared/data/camvid}; shift || true
names=("$@")
[ ${#names[@]} -gt 0 ] || names=(pspnet_r18-deep_camvid_288x288 lraspp_mobilenet-v3-large_camvid_288x288
  deeplabv3_r18-deep_camvid_288x288 deeplabv3_mobilenet-v3-large_camvid_288x288 denseaspp_r18-deep_camvid_288x288)
for name in "${names[@]}"; do
  cfg=apps/trainer/configs/camvid/$name.yaml
  out=work_dirs/camvid/$name
  mkdir -p "$out"
  echo "=== $name: train ($(date -u +%H:%M:%S))"
  /usr/bin/time -v -o "$out/time_train.txt" seg-train --config "$cfg" --cpu \
    --set "data.root=$root" logging.progress_bar=false > "$out/train.log" 2>&1 || { echo "train failed: $out/train.log"; continue; }
  echo "=== $name: test ($(date -u +%H:%M:%S))"
  /usr/bin/time -v -o "$out/time_test.txt" seg-eval --config "$cfg" --cpu \
    --checkpoint "$out/checkpoints/best.pth" --split test --set "data.root=$root" > "$out/test.log" 2>&1 || echo "eval failed: $out/test.log"
  tail -18 "$out/test.log"
done
echo "=== done ($(date -u +%H:%M:%S))"
