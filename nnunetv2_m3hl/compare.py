"""Print metrics files of nnUNetv2_m3hl_evaluate side by side: ``python -m nnunetv2_m3hl.compare A.json B.json``."""
import json
import os
import sys
from typing import List


def side_by_side(files: List[str]) -> str:
    results = [json.load(open(f)) for f in files]
    names = [os.path.splitext(os.path.basename(f))[0].replace('metrics_', '') for f in files]
    unit = 'vox' if results[0]['convention'] == 'paper' else 'mm'
    header = ['class'] + [f'{n} {m}' for n in names for m in ('Dice%', 'Jac%', f'95HD {unit}', f'ASD {unit}')]
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    for cls in ['mean'] + [str(c) for c in results[0]['labels']]:
        row = [cls]
        for r in results:
            v = r['mean'] if cls == 'mean' else r['per_class'][cls]
            row += [f"{100 * v['dice']:.2f}", f"{100 * v['jaccard']:.2f}", f"{v['hd95']:.2f}", f"{v['asd']:.2f}"]
        lines.append('| ' + ' | '.join(row) + ' |')
    return '\n'.join(lines)


if __name__ == '__main__':
    print(side_by_side(sys.argv[1:]))
