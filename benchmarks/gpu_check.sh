#!/usr/bin/env bash
# GPU check: the step-cost benchmark on CUDA, then a 2-epoch 3d_fullres M3HL training (torch.compile and
# AMP as nnU-Net uses them on CUDA) on a small synthetic dataset, then prediction of its test cases.
# Usage: bash benchmarks/gpu_check.sh [OUTPUT_DIR]     (run from the repository root; about 8 minutes)
set -euo pipefail
out=${1:-${OUT:-gpu_check_out}}
work=${M3HL_GPU_WORKDIR:-$(mktemp -d)}
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export nnUNet_raw=$work/raw nnUNet_preprocessed=$work/preprocessed nnUNet_results=$work/results
export nnUNet_extTrainer="$PWD/nnunetv2_m3hl/trainers" nnUNet_n_proc_DA=${nnUNet_n_proc_DA:-8}
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$out/gpu.txt"
python3 -c "import torch, nnunetv2; print('torch', torch.__version__)" | tee -a "$out/gpu.txt"

echo "== pseudo-label cleanup (largest connected component) on CUDA, earlier and current form"
python3 benchmarks/lcc_cost.py --device cuda -o "$out/lcc_cost_cuda.json" 2>&1 | tee "$out/lcc_cost_cuda.log"

echo "== step cost on CUDA (compile off, both trainers alike)"
nnUNet_compile=f python3 benchmarks/step_cost.py --device cuda --configurations 2d 3d_fullres --steps 20 \
    --workdir "$work" -o "$out/step_cost_cuda.json" 2>&1 | tee "$out/step_cost_cuda.log"

echo "== 2-epoch 3d_fullres training with torch.compile"
python3 -c "from dataset_conversion.synthetic import make_synthetic_dataset as m; m('$work/raw', 933, 6, 12, 2, shape=(64, 64, 64))"
python3 -c "from nnunetv2.experiment_planning.plan_and_preprocess_entrypoints import plan_and_preprocess_entry as m; m()" \
    -d 933 -c 3d_fullres -np 8 > "$out/plan.log" 2>&1
start=$(date +%s)
nnUNet_compile=t python3 -c "from nnunetv2.run.run_training import run_training_entry as m; m()" \
    933 3d_fullres 0 -tr M3HLTrainer_2epochs 2>&1 | tee "$out/train_3d.log" | grep -vE '^\s*$' | tail -n 40
echo "training wall time: $(( $(date +%s) - start )) s" | tee -a "$out/train_3d.log"
python3 -c "from nnunetv2.inference.predict_from_raw_data import predict_entry_point as m; m()" \
    -i "$work/raw/Dataset933_M3HLPhantom/imagesTs" -o "$work/pred" -d 933 -c 3d_fullres -f 0 -tr M3HLTrainer_2epochs \
    > "$out/predict.log" 2>&1
python3 -m nnunetv2_m3hl.evaluation "$work/raw/Dataset933_M3HLPhantom/labelsTs" "$work/pred" "$out/test_metrics.json" | tee "$out/test_metrics.txt"
