"""benchmarks/gpu/gpu_check.sh's plumbing with the kit of benchmarks/gpu/gpu_kit.sh, on stand-ins for nvidia-smi and the
benchmark scripts: what comes back from a device run is one archive that every finished measurement is in, and a
failing measurement does not stop the others."""
import os
import subprocess
import tarfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# stands in for python3: writes the file named by -o, prints one line, fails for the script named in FAIL_SCRIPT
FAKE_PYTHON = '''#!/usr/bin/env bash
script=$1
[ "$script" = -c ] && { echo "torch stand-in"; exit 0; }
[ "$(basename "$script")" = "${FAIL_SCRIPT:-}" ] && { echo "boom"; exit 3; }
while [ $# -gt 0 ]; do
    if [ "$1" = -o ]; then echo '{}' > "$2"; fi
    shift
done
echo "ran $(basename "$script") compile=${nnUNet_compile:-unset}"
'''


def make_kit(tmp_path):
    kit = tmp_path / 'kit'
    kit.mkdir()
    site = tmp_path / 'site'
    site.mkdir()
    (site / 'stand_in.py').write_text('')
    prepared = tmp_path / 'prepared'
    for name, dataset in (('acdc3', 'Dataset271_ACDC'), ('la4', 'Dataset281_LA')):
        folder = prepared / name / 'nnUNet_preprocessed' / dataset
        folder.mkdir(parents=True)
        (folder / 'nnUNetPlans.json').write_text('{}')
    subprocess.run(['tar', '-cJf', str(kit / 'site.tar.xz'), '-C', str(site), '.'], check=True)
    subprocess.run(['tar', '-cJf', str(kit / 'prepared.tar.xz'), '-C', str(prepared), 'acdc3', 'la4'], check=True)
    return kit


def run_check(tmp_path, fail_script=None):
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir(exist_ok=True)
    for name, text in (('python3', FAKE_PYTHON), ('nvidia-smi', '#!/usr/bin/env bash\necho "stand-in GPU"\n')):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    out = tmp_path / 'out'
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", M3HL_KIT=str(make_kit(tmp_path)),
               M3HL_GPU_WORKDIR=str(tmp_path / 'work'))
    if fail_script:
        env['FAIL_SCRIPT'] = fail_script
    proc = subprocess.run(['bash', 'benchmarks/gpu/gpu_check.sh', str(out)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    return proc, out


def archived(out):
    with tarfile.open(out / 'gpu_check.tgz') as archive:
        return {os.path.basename(n) for n in archive.getnames() if not n.endswith('/') and n != '.'}


def test_every_measurement_lands_in_one_archive(tmp_path):
    proc, out = run_check(tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert os.listdir(out) == ['gpu_check.tgz']  # a device run brings back 8 files at most
    names = archived(out)
    for config in ('acdc_2d', 'la_3d'):
        for kind in ('step_cost', 'memory_breakdown', 'mixing_cost', 'step_profile'):
            assert f'{kind}_{config}_cuda.json' in names, (kind, config, sorted(names))
        assert f'step_cost_{config}_compiled_cuda.json' in names
    assert 'lcc_cost_cuda.json' in names and 'gpu.txt' in names
    assert 'ran step_cost.py compile=t' in proc.stdout and 'ran step_cost.py compile=f' in proc.stdout


def test_a_failing_measurement_is_reported_and_the_rest_still_run(tmp_path):
    proc, out = run_check(tmp_path, fail_script='step_profile.py')
    assert proc.returncode == 1
    assert proc.stdout.count('FAILED (exit 3)') == 2 and 'boom' in proc.stdout
    names = archived(out)
    assert 'step_cost_la_3d_cuda.json' in names and 'step_cost_la_3d_compiled_cuda.json' in names
    assert 'step_profile_acdc_2d_cuda.log' in names and 'step_profile_acdc_2d_cuda.json' not in names
    assert 'with failures' in proc.stdout
