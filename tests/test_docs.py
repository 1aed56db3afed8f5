"""The documents a newcomer reads: every relative link points to a file that exists, and the README's set-up
commands are the ones CI runs."""
import glob
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCUMENTS = sorted([os.path.join(ROOT, 'README.md'), os.path.join(ROOT, 'benchmarks', 'RESULTS.md'),
                    os.path.join(ROOT, 'benchmarks', 'HISTORY.md')]
                   + glob.glob(os.path.join(ROOT, 'documentation', '*.md')))
LINK = re.compile(r'\[[^\]]*\]\(([^)\s]+)\)')


def relative_links(path):
    with open(path) as f:
        text = f.read()
    for target in LINK.findall(text):
        if re.match(r'[a-z]+:', target) or target.startswith('#'):
            continue
        yield target


@pytest.mark.parametrize('document', DOCUMENTS, ids=lambda p: os.path.relpath(p, ROOT))
def test_relative_links_point_to_existing_files(document):
    missing = [t for t in relative_links(document)
               if not os.path.exists(os.path.join(os.path.dirname(document), t.split('#')[0]))]
    assert not missing, f"{os.path.relpath(document, ROOT)} links to missing files: {missing}"


def test_every_documentation_page_is_linked_from_the_readme_and_says_what_it_gives():
    readme_links = set(relative_links(os.path.join(ROOT, 'README.md')))
    for page in glob.glob(os.path.join(ROOT, 'documentation', '*.md')):
        assert os.path.relpath(page, ROOT) in readme_links, page
        with open(page) as f:
            lines = [line for line in f.read().splitlines() if line.strip()]
        assert lines[0].startswith('# ') and lines[1].startswith('What you get from this page'), page


def test_the_readme_is_short_and_its_setup_is_what_ci_runs():
    with open(os.path.join(ROOT, 'README.md')) as f:
        readme = f.read()
    assert len(readme.splitlines()) <= 150
    with open(os.path.join(ROOT, '.ci', 'run')) as f:
        ci = f.read()
    assert "pip install -q -e '.[test]'" in ci and "pip install -e '.[test]'" in readme
    assert 'python -m pytest -q tests' in ci and 'python -m pytest -q tests' in readme


RESULT_FILE = re.compile(r'(?:real|step|memory|mixing|lcc|label|schedules|integrity|gpu_check)_[\w*]+\.json')


@pytest.mark.parametrize('document', DOCUMENTS, ids=lambda p: os.path.relpath(p, ROOT))
def test_every_cited_result_file_exists(document):
    with open(document) as f:
        # a command's output (-o) is written by that command: it may be still to run
        cited = set(RESULT_FILE.findall(re.sub(r'-o \S+\.json', '', f.read())))
    results = os.path.join(ROOT, 'benchmarks', 'results')
    missing = [name for name in sorted(cited) if not glob.glob(os.path.join(results, name))]
    assert not missing, f"{os.path.relpath(document, ROOT)} cites result files that do not exist: {missing}"


def test_the_results_tables_are_the_results_jsons():
    """The tables of RESULTS and the README's are generated from the JSONs; a JSON changed without regenerating them
    fails here."""
    import subprocess
    import sys
    script = os.path.join(ROOT, 'benchmarks', 'quality', 'results_tables.py')
    for args in (['--check', 'benchmarks/RESULTS.md'], ['--summary', '--check', 'README.md']):
        proc = subprocess.run([sys.executable, script] + args, cwd=ROOT, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_results_is_a_page_not_a_notebook():
    with open(os.path.join(ROOT, 'benchmarks', 'RESULTS.md')) as f:
        assert len(f.read().splitlines()) < 400
