"A wheel of lskd installs like a package: `pip install` (not editable) into a fresh venv, then `lskd run` from any folder"
import json, os, shutil, subprocess, sys, sysconfig, zipfile
from pathlib import Path
import pytest
from lskd.app.pipeline import STAGES
from lskd.teacher.fake import FakeTeacher

REPO = Path(__file__).resolve().parent.parent
FAST = ['-p', 'critic.epochs=2', '-p', 'critic.threshold=0.3', '-p', 'distill.steps=10', '-p', 'distill.batch_size=8']
NOT_SOURCE = shutil.ignore_patterns('.git', '.venv', 'venv', 'build', 'dist', 'runs', '*.egg-info', '__pycache__', '.lskd_cache',
                                    '.pytest_cache', '_assets', '.ipynb_checkpoints')

def clean_env(venv):
    "The environment of a user of the venv: no PYTHONPATH or lskd variables pointing into a checkout"
    env = {k: v for k, v in os.environ.items() if k not in ('LSKD_NOTEBOOKS', 'LSKD_PROMPTS', 'PYTHONPATH', 'VIRTUAL_ENV')}
    return {**env, 'PATH': f"{venv/'bin'}:{env.get('PATH', '')}"}

@pytest.fixture(scope='module')
def wheel(tmp_path_factory):
    "A wheel built from a copy of the source tree (pip wheel, no dependencies)"
    t = tmp_path_factory.mktemp('wheel'); src = t/'src'
    shutil.copytree(REPO, src, ignore=NOT_SOURCE)
    r = subprocess.run([sys.executable, '-m', 'pip', 'wheel', '-q', '--no-deps', '--no-build-isolation', str(src), '-w', str(t/'dist')],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    [whl] = (t/'dist').glob('lskd-*.whl')
    return whl

def test_wheel_carries_the_stage_notebooks_and_data(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for nb, *_ in STAGES.values(): assert f'lskd/_assets/nbs/{nb}' in names, nb
    shipped = {p.relative_to(REPO).as_posix() for p in (REPO/'data').rglob('*') if p.is_file()}
    assert shipped and {f'lskd/_assets/{p}' for p in shipped} <= names
    assert not any(n.startswith(('tests/', 'nbs/', 'data/')) for n in names)      # only inside the package

@pytest.fixture(scope='module')
def venv(wheel, tmp_path_factory):
    """A fresh venv with the wheel installed (not editable). Its dependencies come from this venv's site-packages through
    a .pth line (a user's pip fetches them; the path adds no .pth of its own, so the editable lskd stays out of sight)"""
    v = tmp_path_factory.mktemp('venv')/'v'
    subprocess.run([sys.executable, '-m', 'venv', str(v)], check=True, timeout=300)
    py = v/'bin'/'python'
    site = Path(subprocess.run([py, '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])'], capture_output=True,
                               text=True, check=True).stdout.strip())
    (site/'zz_lskd_test_deps.pth').write_text(sysconfig.get_paths()['purelib'] + '\n')
    r = subprocess.run([py, '-m', 'pip', 'install', '-q', '--no-deps', '--no-index', str(wheel)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    return v

def test_installed_lskd_is_the_wheel_not_the_checkout(venv):
    r = subprocess.run([venv/'bin'/'python', '-c', 'import lskd, lskd.io.files as c; print(lskd.__file__); print(c.shipped("nbs"))'],
                       capture_output=True, text=True, cwd='/', env=clean_env(venv), timeout=120)
    f, nbs = r.stdout.split()
    assert str(venv) in f and not f.startswith(str(REPO)), r.stdout + r.stderr
    assert nbs.endswith('lskd/_assets/nbs') and str(venv) in nbs

@pytest.mark.slow
def test_lskd_run_from_any_folder(venv, tmp_path):
    """Every stage, in an empty folder far from the checkout, with the fake teacher.
    Marked slow (about 4 min: the module's three tests took 243 s on 2 cores with nothing else running, 2026-12-03);
    beside a llama.cpp teacher it did not finish in 20 min, so run it alone: `pytest --slow tests/test_wheel.py`"""
    work = tmp_path/'anywhere'; work.mkdir()
    env = clean_env(venv)
    with FakeTeacher() as ft:
        r = subprocess.run([venv/'bin'/'lskd', 'run', '--run-id', 'w', '-p', 'generate.teacher=remote', '-p', f'generate.base_url={ft.base_url}',
                            '-p', 'generate.model=fake', *FAST], capture_output=True, text=True, cwd=work, env=env, timeout=1200)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    d = work/'runs'/'w'
    man = json.loads((d/'manifest.json').read_text())
    assert all(man['stages'][s]['status'] == 'done' for s in STAGES), man['stages']
    assert man['notebooks'].startswith(str(venv)) and man['notebooks'].endswith('lskd/_assets/nbs'), man['notebooks']
    ex = (d/man['stages']['verbalize']['notebook']).read_text()     # the examples that read the checkout's tests/ were left out
    assert 'tests/fixtures' not in ex and 'A `#| checkout` cell of the source notebook, not run by `lskd run`' in ex
    assert (d/'evaluate'/'results.json').exists() and (d/'inspect'/'overview.png').exists()
    assert not (REPO/'runs'/'w').exists()
