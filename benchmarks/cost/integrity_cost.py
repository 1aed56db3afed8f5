"""Cost of the whole-file check (``nnUNetv2_m3hl_check_dataset``) against a plain SimpleITK read of the same
files, on the demo's synthetic dataset (default) or on any raw dataset folder.

    python benchmarks/cost/integrity_cost.py                       # demo dataset: 4 labeled, 40 unlabeled, 12 test
    python benchmarks/cost/integrity_cost.py --raw $nnUNet_raw/Dataset271_ACDC
"""
import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--raw', default=None, help='a raw dataset folder (default: generate the demo dataset)')
    p.add_argument('--repeats', type=int, default=3)
    p.add_argument('-o', default=None, help='JSON output')
    args = p.parse_args()
    import SimpleITK as sitk
    from nnunetv2_m3hl.integrity import check_dataset_files
    with tempfile.TemporaryDirectory() as tmp:
        raw = args.raw
        if raw is None:
            from dataset_conversion.synthetic import make_synthetic_dataset
            raw = make_synthetic_dataset(tmp, 990, 4, 40, 12, shape=(96, 96), seed=0)
        files = [os.path.join(raw, s, f) for s in ('imagesTr', 'labelsTr', 'imagesUnlabeledTr', 'imagesTs', 'labelsTs')
                 if os.path.isdir(os.path.join(raw, s)) for f in os.listdir(os.path.join(raw, s))]
        check, read = [], []
        for _ in range(args.repeats):  # interleaved, so that both see the same machine load
            t = time.perf_counter()
            n, problems = check_dataset_files(raw, verbose=False)
            check.append(time.perf_counter() - t)
            t = time.perf_counter()
            for f in files:
                sitk.GetArrayFromImage(sitk.ReadImage(f))
            read.append(time.perf_counter() - t)
        assert not problems, problems
        name = os.path.basename(os.path.normpath(raw)) if args.raw else 'demo (4 labeled, 40 unlabeled, 12 test, 96x96)'
        result = {'dataset': name, 'files': n,
                  'megabytes': sum(os.path.getsize(f) for f in files) / 1e6,
                  'check_seconds_min': min(check), 'sitk_read_seconds_min': min(read),
                  'check_over_read': min(check) / min(read)}
    print(json.dumps(result, indent=1))
    if args.o:
        with open(args.o, 'w') as f:
            json.dump(result, f, indent=1)


if __name__ == '__main__':
    main()
