"""Benchmark metrics as the semi-supervised segmentation papers report them.

Convention ``paper`` (BCP, ABD and M3HL evaluation code): medpy's ``dc``, ``jc``, ``hd95`` and ``asd`` per
class on the 3D volume without spacing (distances in voxels); a class predicted empty scores
(0, 0, 0, 0); means over cases, then over classes. Convention ``mm`` uses the image spacing and reports
an empty prediction honestly: Dice/Jaccard 0, distances undefined (NaN) and the case flagged.
"""
import csv
import json
import os
from typing import Dict, List, Optional, Sequence

import numpy as np
import SimpleITK as sitk
import torch
from medpy import metric
from tqdm import tqdm

from nnunetv2_m3hl.teacher import largest_component_per_class

METRICS = ('dice', 'jaccard', 'hd95', 'asd')


def class_metrics(pred: np.ndarray, ref: np.ndarray, convention: str = 'paper',
                  spacing: Optional[Sequence[float]] = None) -> Dict[str, float]:
    """Metrics of one binary class; ``spacing`` is used only with the ``mm`` convention."""
    pred, ref = pred.astype(bool), ref.astype(bool)
    if convention not in ('paper', 'mm'):
        raise ValueError(f"unknown convention '{convention}' (paper or mm)")
    if not pred.any():
        if convention == 'paper':
            return {'dice': 0.0, 'jaccard': 0.0, 'hd95': 0.0, 'asd': 0.0, 'empty_prediction': True}
        both_empty = not ref.any()
        return {'dice': 1.0 if both_empty else 0.0, 'jaccard': 1.0 if both_empty else 0.0,
                'hd95': 0.0 if both_empty else float('nan'), 'asd': 0.0 if both_empty else float('nan'),
                'empty_prediction': True}
    if not ref.any():
        # medpy's distances are undefined against an empty reference
        return {'dice': 0.0, 'jaccard': 0.0, 'hd95': float('nan'), 'asd': float('nan'), 'empty_reference': True}
    voxelspacing = None if convention == 'paper' else spacing
    return {'dice': float(metric.binary.dc(pred, ref)), 'jaccard': float(metric.binary.jc(pred, ref)),
            'hd95': float(metric.binary.hd95(pred, ref, voxelspacing=voxelspacing)),
            'asd': float(metric.binary.asd(pred, ref, voxelspacing=voxelspacing))}


def keep_largest_component(prediction: np.ndarray, labels: Sequence[int]) -> np.ndarray:
    """Largest connected component (full connectivity) of every predicted class, on the whole volume."""
    num_classes = int(max(max(labels), prediction.max())) + 1
    kept = largest_component_per_class(torch.from_numpy(prediction.astype(np.int64))[None], num_classes)
    return kept[0].numpy().astype(prediction.dtype)


def nominal_spacing_note(ref_folder: str) -> Optional[str]:
    """A warning when the dataset that holds ``ref_folder`` says its spacing is made up (its source stored none)."""
    from dataset_conversion.common import NOMINAL_SPACING_KEY
    dataset_json = os.path.join(os.path.dirname(os.path.abspath(ref_folder)), 'dataset.json')
    if not os.path.isfile(dataset_json):
        return None
    with open(dataset_json) as f:
        spacing = json.load(f).get(NOMINAL_SPACING_KEY)
    if spacing is None:
        return None
    return (f"the spacing of this dataset ({spacing}, x y z) is nominal, not physical: its source files stored "
            f"none, so mm distances are in made-up units; use --convention paper (voxels) for this dataset")


def _read(path: str):
    image = sitk.ReadImage(path)
    # numpy axes are z, y, x: reverse sitk's x, y, z spacing
    return sitk.GetArrayFromImage(image), tuple(reversed(image.GetSpacing()))


def evaluate_folders(ref_folder: str, pred_folder: str, output_json: str, labels: Optional[List[int]] = None,
                     convention: str = 'paper', largest_component: bool = False, verbose: bool = True) -> dict:
    """Evaluate every reference file against the prediction of the same name; write JSON and CSV."""
    refs = sorted(f for f in os.listdir(ref_folder) if not f.startswith('.'))
    if not refs:
        raise FileNotFoundError(f"no reference files in {ref_folder}")
    missing = [f for f in refs if not os.path.isfile(os.path.join(pred_folder, f))]
    if missing:
        raise FileNotFoundError(f"{os.path.join(pred_folder, missing[0])} is missing ({len(missing)} prediction(s) "
                                f"missing); predict every reference case or point -pred to the right folder")
    per_case = {}
    for name in tqdm(refs, desc='Evaluating', disable=not verbose):
        ref, spacing = _read(os.path.join(ref_folder, name))
        pred, _ = _read(os.path.join(pred_folder, name))
        if ref.shape != pred.shape:
            raise ValueError(f"{os.path.join(pred_folder, name)}: shape {pred.shape} differs from the reference "
                             f"{ref.shape}; predictions must be in the reference geometry")
        case_labels = labels or sorted(int(v) for v in np.unique(ref) if v != 0)
        if largest_component:
            pred = keep_largest_component(pred, case_labels)
        per_case[name] = {str(c): class_metrics(pred == c, ref == c, convention, spacing) for c in case_labels}
    all_labels = sorted({c for case in per_case.values() for c in case}, key=int)
    per_class = {c: {m: float(np.nanmean([per_case[n][c][m] for n in per_case if c in per_case[n]]))
                     for m in METRICS} for c in all_labels}
    mean = {m: float(np.nanmean([per_class[c][m] for c in all_labels])) for m in METRICS}
    note = nominal_spacing_note(ref_folder) if convention == 'mm' else None
    result = {'convention': convention, 'largest_component': largest_component, 'labels': [int(c) for c in all_labels],
              'mean': mean, 'per_class': per_class, 'per_case': per_case,
              'flagged': sorted(f"{n}: class {c}" for n in per_case for c in per_case[n]
                                if per_case[n][c].get('empty_prediction') or per_case[n][c].get('empty_reference'))}
    if note:
        result['spacing_not_physical'] = note
    os.makedirs(os.path.dirname(os.path.abspath(output_json)), exist_ok=True)
    with open(output_json, 'w') as f:
        json.dump(result, f, indent=1)
    with open(os.path.splitext(output_json)[0] + '.csv', 'w', newline='') as f:
        writer = csv.writer(f)
        writer.writerow(['case', 'class', *METRICS])
        for n, classes in per_case.items():
            for c, values in classes.items():
                writer.writerow([n, c, *[values[m] for m in METRICS]])
    if verbose:
        print(format_table(result))
    if note:
        print(f"WARNING: {note}")
    return result


def format_table(result: dict) -> str:
    """The papers' layout: Dice %, Jaccard %, 95HD, ASD; mean first, then per class."""
    unit = 'voxels' if result['convention'] == 'paper' else 'mm'
    lines = [f"| class | Dice (%) | Jaccard (%) | 95HD ({unit}) | ASD ({unit}) |", "|---|---|---|---|---|"]
    rows = [('mean', result['mean'])] + [(c, v) for c, v in result['per_class'].items()]
    for name, v in rows:
        lines.append(f"| {name} | {100 * v['dice']:.2f} | {100 * v['jaccard']:.2f} | {v['hd95']:.2f} | {v['asd']:.2f} |")
    return '\n'.join(lines)


if __name__ == '__main__':
    import sys
    evaluate_folders(sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else 'metrics.json')
