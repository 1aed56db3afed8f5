"""The demo's reference, measured with the command a user types: ``nnUNetv2_m3hl_demo --seed S`` for every seed,
each in its own process and output folder, and the printed models' test Dice collected into the JSON the demo reads
(``nnunetv2_m3hl/demo_reference.json``), with the command, the package commit and the machine.

    python benchmarks/quality/demo_reference.py --seeds 0 1 2 --workdir /scratch/demo_reference \
        -o nnunetv2_m3hl/demo_reference.json

A seed whose output folder already holds the demo's ``summary.json`` with the default settings is read, not run
again, so a stopped call resumes.
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import time
from typing import List, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from nnunetv2_m3hl.demo import DEFAULT_SETTINGS  # noqa: E402
from nnunetv2_m3hl.demo_expectation import COMPARED_SETTINGS, environment  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from real_data import package_commit  # noqa: E402

DEMO_COMMAND = 'nnUNetv2_m3hl_demo'


def demo_summary(folder: str) -> Optional[dict]:
    """The summary a finished demo wrote into ``folder`` when it ran with the default settings, else None."""
    path = os.path.join(folder, 'summary.json')
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        summary = json.load(f)
    same = all(summary['settings'][k] == DEFAULT_SETTINGS[k] for k in COMPARED_SETTINGS)
    return summary if same else None


def run_demo(seed: int, folder: str, device: str) -> dict:
    command = [os.path.join(os.path.dirname(sys.executable), DEMO_COMMAND), '--seed', str(seed), '-o', folder,
               '--device', device]
    print(f"[demo_reference {time.strftime('%H:%M:%S')}] {' '.join(command)}", flush=True)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, 'demo_stdout.txt'), 'w') as log:
        subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=True)
    summary = demo_summary(folder)
    if summary is None:
        raise RuntimeError(f"{folder}/summary.json is missing after the demo ran; see {folder}/demo_stdout.txt")
    return summary


def reference(summaries: List[dict], device: str) -> dict:
    seeds = [s['settings']['seed'] for s in summaries]
    return {'command': f"{DEMO_COMMAND} --seed S --device {device}, S = {' '.join(map(str, seeds))}",
            'source': 'benchmarks/quality/demo_reference.py', 'code': package_commit(),
            'machine': f"{platform.machine()}, {os.cpu_count()} cores",
            # the demo's own record where it has one, else this interpreter's (the demo ran in it)
            'environment': summaries[0].get('environment') or environment(),
            'settings': {k: DEFAULT_SETTINGS[k] for k in COMPARED_SETTINGS},
            'runs': [{'seed': s['settings']['seed'], 'mean_dice': s['mean_dice']} for s in summaries]}


def main(argv: Optional[List[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    p.add_argument('--workdir', required=True, help='one demo output folder per seed is made here')
    p.add_argument('--device', default='cpu')
    p.add_argument('-o', '--output', required=True, help='the reference JSON to write')
    args = p.parse_args(argv)
    summaries = []
    for seed in args.seeds:
        folder = os.path.join(os.path.abspath(args.workdir), f'seed{seed}')
        summary = demo_summary(folder) or run_demo(seed, folder, args.device)
        summaries.append(summary)
        print(f"seed {seed}: " + '  '.join(f"{k} {100 * v:.2f}" for k, v in summary['mean_dice'].items()), flush=True)
    tmp = f'{args.output}.tmp'
    with open(tmp, 'w') as f:
        json.dump(reference(summaries, args.device), f, indent=1)
    os.replace(tmp, args.output)
    print(f"{len(summaries)} seeds written to {args.output}")


if __name__ == '__main__':
    main()
