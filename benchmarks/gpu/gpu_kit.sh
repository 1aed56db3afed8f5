#!/usr/bin/env bash
# Builds, on the development machine, what benchmarks/gpu/gpu_check.sh needs on a GPU machine that has PyTorch but
# neither nnU-Net nor the real data, in one folder small enough to carry there (the device tool carries 64 MiB):
#   KIT/site.tar.xz      nnU-Net and the packages it needs beyond such a machine's image, for Python 3.12
#                        (the versions installed here), unpacked there and put on PYTHONPATH
#   KIT/prepared.tar.xz  acdc3/ and la4/: a few preprocessed cases of ACDC (3 labeled patients, 2d) and LA
#                        (4 labeled scans, 3d_fullres) at nnU-Net's native plans (real_data.py --prepare-only, then
#                        subset_prepared.py), the folder that gpu_check.sh's M3HL_PREPARED names
# (xz: the packages are 325 MB unpacked, SimpleITK most of it; both archives together about 53 MB)
#
# Usage: bash benchmarks/gpu/gpu_kit.sh ACDC_H5_FOLDER LA_CASE_FOLDER [KIT]      (run from the repository root)
#   e.g. bash benchmarks/gpu/gpu_kit.sh /data/ACDC "/data/LA/2018LA_Seg_Training Set" gpu_kit
# then, with KIT ignored by git (echo /gpu_kit/ >> .git/info/exclude) and named in the device run's carry:
#   M3HL_KIT=gpu_kit bash benchmarks/gpu/gpu_check.sh "$OUT"
# Set M3HL_KIT_WORK to keep the full prepared datasets somewhere (default: a temporary folder).
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: bash benchmarks/gpu/gpu_kit.sh ACDC_H5_FOLDER LA_CASE_FOLDER [KIT]"; exit 2; }
acdc=$1 la=$2 kit=${3:-gpu_kit}
for d in "$acdc" "$la"; do
    [ -d "$d" ] || { echo "$d not found: give the ACDC h5 folder (data/, *.list) and the LA case folder"; exit 2; }
done
[ ! -e "$kit" ] || { echo "$kit exists: remove it first, or name another folder"; exit 2; }
python=${PYTHON:-python3}
work=${M3HL_KIT_WORK:-$(mktemp -d)}
building=$(mktemp -d)
trap 'rm -rf "$building"' EXIT

# what nnU-Net needs beyond the GPU image's packages (that image has torch, numpy, scipy, pandas, scikit-image,
# timm, einops, h5py, tifffile, ...): pure-Python sdists are built into wheels here, compiled packages are
# downloaded for CPython 3.12 on manylinux
packages="nnunetv2 batchgenerators batchgeneratorsv2 acvl_utils blosc2 ndindex numexpr pydantic pydantic_core
annotated_types typing_inspection SimpleITK connected-components-3d dynamic_network_architectures graphviz nibabel
yacs future unittest2 linecache2 traceback2 medpy pynrrd"
platforms="--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64
--platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64"
target="--python-version 3.12 --implementation cp $platforms"
mkdir -p "$building/wheels"
for name in $packages; do
    version=$("$python" -m pip show "$name" 2>/dev/null | sed -n 's/^Version: //p')
    spec=$name${version:+==$version}
    "$python" -m pip download -q --no-deps --only-binary=:all: $target -d "$building/wheels" "$spec" 2>/dev/null \
        || "$python" -m pip wheel -q --no-deps -w "$building/wheels" "$spec" \
        || { echo "no wheel for $spec"; exit 1; }
done
"$python" -m pip install -q --no-deps --no-compile --only-binary=:all: $target --target "$building/site" \
    "$building"/wheels/*.whl
rm -rf "$building/site/bin"
mkdir -p "$building/kit"
echo "packing $(ls "$building/wheels" | wc -l) packages (xz, a few minutes)"
tar -cf - -C "$building/site" . | xz -9 -T0 > "$building/kit/site.tar.xz"

"$python" benchmarks/quality/real_data.py --dataset acdc --data "$acdc" --labeled 3 --budget gpu --prepare-only \
    --workdir "$work/acdc3" -o "$work/acdc3_prepare.json"
"$python" benchmarks/quality/real_data.py --dataset la --data "$la" --labeled 4 --budget gpu --prepare-only \
    --workdir "$work/la4" -o "$work/la4_prepare.json"
"$python" benchmarks/gpu/subset_prepared.py "$work/acdc3/nnUNet_preprocessed/Dataset271_ACDC" \
    "$building/prepared/acdc3/nnUNet_preprocessed" -c 2d --train 3 --val 1 --unlabeled 3
"$python" benchmarks/gpu/subset_prepared.py "$work/la4/nnUNet_preprocessed/Dataset281_LA" \
    "$building/prepared/la4/nnUNet_preprocessed" -c 3d_fullres --train 2 --val 1 --unlabeled 2
tar -cf - -C "$building/prepared" acdc3 la4 | xz -9 -T0 > "$building/kit/prepared.tar.xz"
# only a finished kit appears under its name: a run that stops early leaves nothing there
mv "$building/kit" "$kit"
du -sh "$kit" "$kit"/*
