#!/usr/bin/env bash
# ACDC, SSL4MIS protocol: official or SSL4MIS h5 data -> M3HL and the nnU-Net baseline -> the papers' metrics side by side.
# Usage: bash examples/acdc.sh /path/to/ACDC [LABELED_PATIENTS=7] [DATASET_ID=271]
# /path/to/ACDC is the official release (training/patient<NNN>/) or the SSL4MIS h5 folder (data/ and *.list);
# the converter detects which.
# Needs nnUNet_raw, nnUNet_preprocessed and nnUNet_results exported. A GPU is assumed (add -device cpu to
# nnUNetv2_train/nnUNetv2_predict otherwise).
set -euo pipefail
acdc=${1:?usage: examples/acdc.sh ACDC_ROOT [LABELED] [DATASET_ID]}
labeled=${2:-7}
id=${3:-271}
export nnUNet_extTrainer=$(nnUNetv2_m3hl_trainer_path)
name=$(printf 'Dataset%03d_ACDC' "$id")

nnUNetv2_m3hl_convert_acdc -i "$acdc" --labeled "$labeled" -d "$id"
nnUNetv2_plan_and_preprocess -d "$id" -c 2d --verify_dataset_integrity
for trainer in M3HLTrainer nnUNetTrainer; do
    nnUNetv2_train "$id" 2d 0 -tr "$trainer"
    nnUNetv2_predict -i "$nnUNet_raw/$name/imagesTs" -o "$nnUNet_results/$name/test_$trainer" \
        -d "$id" -c 2d -f 0 -tr "$trainer"
    nnUNetv2_m3hl_evaluate -ref "$nnUNet_raw/$name/labelsTs" -pred "$nnUNet_results/$name/test_$trainer" \
        --convention paper -o "$nnUNet_results/$name/metrics_$trainer.json" > /dev/null
done
python3 -m nnunetv2_m3hl.compare "$nnUNet_results/$name/metrics_M3HLTrainer.json" \
    "$nnUNet_results/$name/metrics_nnUNetTrainer.json"
