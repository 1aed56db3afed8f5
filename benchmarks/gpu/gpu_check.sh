#!/usr/bin/env bash
# GPU check. Usage: bash benchmarks/gpu/gpu_check.sh [OUTPUT_DIR]        (run from the repository root)
#
# With real data (the benchmark datasets on the GPU machine):
#   M3HL_ACDC=/data/ACDC M3HL_LA="/data/LA/2018LA_Seg_Training Set" bash benchmarks/gpu/gpu_check.sh
# runs, at nnU-Net's native plans: the step cost on ACDC 2d and LA 3d_fullres with every pseudo-label cleanup
# mode (teacher_side_stream also for its peak memory), where the extra memory goes (memory_breakdown.py), the
# cost of masks, mixing and deep-supervision targets (mixing_cost.py) and a profile of both steps by phase
# (step_profile.py) on both, the cleanup cost, and real_data.py --budget gpu on ACDC with 3 labeled patients (both
# trainers, bounded by wall-clock time). With M3HL_PREPARED (below) it ends with the step cost of both configurations
# with torch.compile on, as nnUNetv2_train runs on a GPU. Without any of them: the step cost and a short 3d training
# on synthetic phantoms.
# Where the raw data cannot travel to the GPU machine, carry the prepared datasets instead, trimmed to a few cases
# (the step costs depend on the plans, not on the number of cases):
#   python benchmarks/quality/real_data.py --dataset acdc --data /data/ACDC --labeled 3 --budget gpu --prepare-only --workdir W/acdc3
#   python benchmarks/quality/real_data.py --dataset la --data /data/LA --labeled 4 --budget gpu --prepare-only --workdir W/la4
#   python benchmarks/gpu/subset_prepared.py W/acdc3/nnUNet_preprocessed/Dataset271_ACDC C/acdc3/nnUNet_preprocessed -c 2d
#   python benchmarks/gpu/subset_prepared.py W/la4/nnUNet_preprocessed/Dataset281_LA C/la4/nnUNet_preprocessed -c 3d_fullres
#   M3HL_PREPARED=C bash benchmarks/gpu/gpu_check.sh          # the same measurements, without the ACDC training
# Both variants were sized to fit 10 minutes of one H100/H200 before the profiles and the compiled step costs were
# added (not timed since); the compiled step costs come last, and every measurement writes its own files, so a run
# stopped at the limit keeps what it finished.
# On a GPU machine without nnU-Net, carry the folder that benchmarks/gpu/gpu_kit.sh builds (the packages and the prepared
# datasets) and run  M3HL_KIT=gpu_kit bash benchmarks/gpu/gpu_check.sh "$OUT"  (the same as M3HL_PREPARED).
set -euo pipefail
dest=${1:-${OUT:-gpu_check_out}}
work=${M3HL_GPU_WORKDIR:-$(mktemp -d)}
if [ -n "${M3HL_KIT:-}" ]; then
    mkdir -p "$work/site" "$work/prepared"
    tar -xJf "$M3HL_KIT/site.tar.xz" -C "$work/site" && tar -xJf "$M3HL_KIT/prepared.tar.xz" -C "$work/prepared"
    export PYTHONPATH=$work/site${PYTHONPATH:+:$PYTHONPATH} M3HL_PREPARED=$work/prepared
fi
# a device run brings back at most 8 files: with the kit, the files are gathered elsewhere and $dest holds them as
# one archive, gpu_check.tgz, written anew after every measurement (so a run stopped at its limit keeps the rest)
if [ -n "${M3HL_KIT:-}" ]; then out=$work/gpu_check; else out=$dest; fi
mkdir -p "$dest" "$out"
pack() {
    [ "$out" = "$dest" ] || { tar -czf "$dest/gpu_check.tgz.part" -C "$out" . && mv "$dest/gpu_check.tgz.part" "$dest/gpu_check.tgz"; }
}
failed=0
measure() {  # lines to show, log file, command...: the whole output goes to the log; a failure is reported and the
             # next measurement runs all the same
    local lines=$1 log=$2
    shift 2
    if "$@" > "$log" 2>&1; then tail -n "$lines" "$log"; else
        echo "FAILED (exit $?): $*"; tail -n 20 "$log"; failed=1
    fi
    pack
}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export nnUNet_extTrainer="$PWD/nnunetv2_m3hl/trainers" nnUNet_n_proc_DA=${nnUNet_n_proc_DA:-8}
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$out/gpu.txt"
python3 -c "import torch, nnunetv2; print('torch', torch.__version__)" | tee -a "$out/gpu.txt"
pack

lcc_cost() {
    echo "== [${SECONDS}s] pseudo-label cleanup (largest connected component) on CUDA, earlier and current forms, host path"
    measure 40 "$out/lcc_cost_cuda.log" python3 benchmarks/cost/lcc_cost.py --device cuda -o "$out/lcc_cost_cuda.json"
}

real_step_cost() {  # dataset id, configuration, folder of the prepared nnU-Net environment, name
    measure 8 "$out/step_cost_$4_cuda.log" env nnUNet_raw="$3/nnUNet_raw" nnUNet_preprocessed="$3/nnUNet_preprocessed" \
        nnUNet_results="$3/step_cost_results" nnUNet_compile=f \
        python3 benchmarks/cost/step_cost.py --device cuda --dataset "$1" -c "$2" --steps 15 --warmup 3 \
        --cleanup-modes sync side_stream host_thread teacher_side_stream --memory-cleanup-modes teacher_side_stream \
        --skip-loading -o "$out/step_cost_$4_cuda.json"
    local plans
    plans=$(ls "$3"/nnUNet_preprocessed/Dataset"$1"_*/nnUNetPlans.json)
    measure 4 "$out/memory_breakdown_$4_cuda.log" python3 benchmarks/cost/memory_breakdown.py --device cuda \
        --plans "$plans" -c "$2" -o "$out/memory_breakdown_$4_cuda.json"
    measure 12 "$out/mixing_cost_$4_cuda.log" python3 benchmarks/cost/mixing_cost.py --device cuda --plans "$plans" -c "$2" \
        -o "$out/mixing_cost_$4_cuda.json"
    measure 26 "$out/step_profile_$4_cuda.log" python3 benchmarks/cost/step_profile.py --device cuda --plans "$plans" \
        -c "$2" -o "$out/step_profile_$4_cuda.json"
}

compiled_step_cost() {  # the same step cost with torch.compile on for both trainers (nnU-Net's default on a GPU)
    echo "== [${SECONDS}s] step cost with torch.compile, $4"
    measure 4 "$out/step_cost_$4_compiled_cuda.log" env nnUNet_raw="$3/nnUNet_raw" \
        nnUNet_preprocessed="$3/nnUNet_preprocessed" nnUNet_results="$3/step_cost_results" nnUNet_compile=t \
        python3 benchmarks/cost/step_cost.py --device cuda --dataset "$1" -c "$2" --steps 10 --warmup 3 \
        --cleanup-modes side_stream --skip-memory --skip-loading -o "$out/step_cost_$4_compiled_cuda.json"
}

if [ -n "${M3HL_PREPARED:-}" ]; then
    for d in "$M3HL_PREPARED"/acdc3/nnUNet_preprocessed/Dataset271_ACDC "$M3HL_PREPARED"/la4/nnUNet_preprocessed/Dataset281_LA; do
        [ -d "$d" ] || { echo "M3HL_PREPARED: $d not found (see the head of this script for how to make it)"; exit 1; }
    done
    echo "== [${SECONDS}s] prepared ACDC (3 labeled patients), native 2d plans"
    real_step_cost 271 2d "$M3HL_PREPARED/acdc3" acdc_2d
    echo "== [${SECONDS}s] prepared LA (4 labeled scans), native 3d_fullres plans"
    real_step_cost 281 3d_fullres "$M3HL_PREPARED/la4" la_3d
    lcc_cost
    # last, since compiling takes minutes: what a default nnUNetv2_train run on a GPU costs
    compiled_step_cost 271 2d "$M3HL_PREPARED/acdc3" acdc_2d
    compiled_step_cost 281 3d_fullres "$M3HL_PREPARED/la4" la_3d
    echo "== [${SECONDS}s] done$( [ $failed = 0 ] || echo ', with failures (above)')"
    exit $failed
fi

if [ -n "${M3HL_ACDC:-}" ] || [ -n "${M3HL_LA:-}" ]; then
    if [ -n "${M3HL_ACDC:-}" ]; then
        echo "== real ACDC, 3 labeled patients, native 2d plans"
        python3 benchmarks/quality/real_data.py --dataset acdc --data "$M3HL_ACDC" --labeled 3 --budget gpu --minutes 1.5 \
            --workdir "$work/acdc3" -o "$out/real_acdc3_gpu.json" 2>&1 | tee "$out/real_acdc3_gpu.log" | tail -n 12
        real_step_cost 271 2d "$work/acdc3" acdc_2d
    fi
    if [ -n "${M3HL_LA:-}" ]; then
        echo "== real LA, 4 labeled scans, native 3d_fullres plans (step cost only)"
        python3 benchmarks/quality/real_data.py --dataset la --data "$M3HL_LA" --labeled 4 --budget gpu --prepare-only \
            --workdir "$work/la4" -o "$out/real_la4_gpu.json" > "$out/real_la4_prepare.log" 2>&1
        real_step_cost 281 3d_fullres "$work/la4" la_3d
    fi
    lcc_cost
    exit $failed
fi

lcc_cost
export nnUNet_raw=$work/raw nnUNet_preprocessed=$work/preprocessed nnUNet_results=$work/results
echo "== step cost on CUDA, synthetic phantoms (compile off, both trainers alike)"
nnUNet_compile=f python3 benchmarks/cost/step_cost.py --device cuda --configurations 2d 3d_fullres --steps 20 \
    --cleanup-modes sync side_stream host_thread teacher_side_stream --workdir "$work" -o "$out/step_cost_cuda.json" \
    2>&1 | tee "$out/step_cost_cuda.log"

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
