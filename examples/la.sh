#!/usr/bin/env bash
# LA, UA-MT protocol: UA-MT h5 files or the challenge nrrd files -> M3HL and the nnU-Net baseline ->
# the papers' metrics (with their largest-component post-processing) side by side.
# Usage: bash examples/la.sh /path/to/LA [LABELED_SCANS=8] [DATASET_ID=281]
# Needs nnUNet_raw, nnUNet_preprocessed and nnUNet_results exported. A GPU is assumed.
# The protocol has no validation set: nnU-Net validates on the labeled scans; the test set is only
# predicted and evaluated once, at the end.
set -euo pipefail
la=${1:?usage: examples/la.sh LA_ROOT [LABELED] [DATASET_ID]}
labeled=${2:-8}
id=${3:-281}
export nnUNet_extTrainer=$(nnUNetv2_m3hl_trainer_path)
name=$(printf 'Dataset%03d_LA' "$id")

nnUNetv2_m3hl_convert_la -i "$la" --labeled "$labeled" -d "$id"
nnUNetv2_plan_and_preprocess -d "$id" -c 3d_fullres --verify_dataset_integrity
for trainer in M3HLTrainer nnUNetTrainer; do
    nnUNetv2_train "$id" 3d_fullres 0 -tr "$trainer"
    nnUNetv2_predict -i "$nnUNet_raw/$name/imagesTs" -o "$nnUNet_results/$name/test_$trainer" \
        -d "$id" -c 3d_fullres -f 0 -tr "$trainer"
    nnUNetv2_m3hl_evaluate -ref "$nnUNet_raw/$name/labelsTs" -pred "$nnUNet_results/$name/test_$trainer" \
        --convention paper --largest-component -o "$nnUNet_results/$name/metrics_$trainer.json" > /dev/null
done
python3 -m nnunetv2_m3hl.compare "$nnUNet_results/$name/metrics_M3HLTrainer.json" \
    "$nnUNet_results/$name/metrics_nnUNetTrainer.json"
