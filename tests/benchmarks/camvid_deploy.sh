#!/usr/bin/env bash
# Deployment check on a trained CamVid checkpoint (docs/results.md, "On a trained CamVid
# model"); never run by CI. Exports fp32 and int8 ONNX at 480x360, evaluates the test split
# through PyTorch, onnxruntime and OpenVINO (fp32 and int8), then times each path at batch 1
# (tests/benchmarks/camvid_deploy_speed.py; for a torchvision twin such as
# deeplabv3_r50_camvid_288x288 beside torchvision's own eager model). Needs `seg-trainer[deploy]`.
#
#   bash tests/benchmarks/camvid_deploy.sh [CONFIG_NAME] [CAMVID_ROOT]
# CONFIG_NAME: a finished tests/benchmarks/camvid.sh run (default ddrnet_23-slim_camvid_288x288).
set -uo pipefail
name=${1:-ddrnet_23-slim_camvid_288x288}
root=${2:-../shared/data/camvid}
ck=work_dirs/camvid/$name/checkpoints/best.pth
out=work_dirs/deploy_camvid/$name
mkdir -p "$out"
seg-export --checkpoint "$ck" --format onnx --output "$out/fp32.onnx" --size 360 480
seg-export --checkpoint "$ck" --format onnx --output "$out/int8.onnx" --size 360 480 \
  --int8 --calib-data "$root/train" --calib-images 32
seg-eval --checkpoint "$ck" --split test --no-progress --set "data.root=$root" "output_dir=$out/torch"
for b in onnxruntime openvino; do
  seg-eval --backend $b --checkpoint "$out/fp32.onnx" --split test --no-progress \
    --set "data.root=$root" "output_dir=$out/fp32"
done
for b in onnxruntime openvino; do
  seg-eval --backend $b --checkpoint "$out/int8.onnx" --split test --no-progress \
    --set "data.root=$root" "output_dir=$out/int8"
done
tv=()
case $name in deeplabv3_r50_*) tv=(--torchvision deeplabv3_resnet50) ;; esac
python tests/benchmarks/camvid_deploy_speed.py "$ck" "$out" "${tv[@]}"
