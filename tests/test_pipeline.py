"`lskd run` end to end (papermill runs of the stage notebooks), resume, failures and secrets"
import json, os, shutil, subprocess, sys
from pathlib import Path
import pytest
from lskd.teacher.fake import FakeTeacher

SECRET = 'sk-lskd-test-SECRET-3f9a0c7e1b2d4c6a8e0f'
FAST = ['-p', 'generate.samples=2', '-p', 'critic.epochs=2', '-p', 'critic.threshold=0.3', '-p', 'distill.steps=10', '-p', 'distill.batch_size=8',  # 2 of the fake teacher's 3-triple replies per image: a third of the default's questions
        '-p', 'distill.num_processes=2', '-p', 'critic.num_processes=2']   # the training stages data parallel: 2 CPU processes each (gloo)

def lskd(*args, env=None, timeout=900):
    exe = shutil.which('lskd', path=str(Path(sys.executable).parent)) or shutil.which('lskd') or pytest.fail('the lskd console script is not installed (pip install -e .)')
    return subprocess.run([exe, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})

@pytest.fixture(scope='module')
def run(tmp_path_factory):
    "One fast run through an OpenAI-compatible endpoint that needs a key (the fake teacher), key in the environment"
    runs = tmp_path_factory.mktemp('runs')
    with FakeTeacher() as ft:
        r = lskd('run', '--runs-dir', runs, '--run-id', 'r1', '-p', 'generate.teacher=remote', '-p', f'generate.base_url={ft.base_url}',
                 '-p', 'generate.model=fake', '-p', 'generate.api_key_env=LSKD_TEST_API_KEY', *FAST,
                 env={'LSKD_TEST_API_KEY': SECRET})
        n_requests = ft.requests if hasattr(ft, 'requests') else None
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return runs, runs/'r1', r

def test_run_writes_every_stage_and_a_manifest(run):
    runs, d, r = run
    man = json.loads((d/'manifest.json').read_text())
    stages = ['verbalize', 'generate', 'critic', 'distill', 'evaluate', 'inspect']
    assert list(man['stages']) == stages and all(man['stages'][s]['status'] == 'done' for s in stages)
    for s in stages:
        assert (d/man['stages'][s]['notebook']).exists()                     # the executed notebook
        assert man['stages'][s]['seconds'] > 0 and man['stages'][s]['peak_rss_mib'] > 50
    assert man['config']['generate']['api_key_env'] == 'LSKD_TEST_API_KEY' and man['git_commit'] is not None
    assert man['stages']['generate']['counts']['accepted'] > 0 and man['stages']['generate']['models'] == ['fake']
    sums = man['stages']['distill']['model_sha256']
    assert set(sums) == {'base', 'distilled', 'no-critic'} and all(len(h) == 64 for v in sums.values() for h in v.values())
    assert all(v['processes'] == 2 for v in man['stages']['distill']['summaries'].values())      # trained in 2 processes
    assert (d/'critic/processes.log').exists() and (d/'distill/distilled_processes.log').exists()
    for f in ['verbalize/verbalizations.jsonl', 'generate/corpus.jsonl', 'generate/corpus_lskd.jsonl', 'critic/scored.jsonl',
              'critic/filtered.jsonl', 'distill/distilled/model.json', 'distill/base/model.json', 'evaluate/results.json',
              'evaluate/results.png', 'inspect/overview.png', 'config.yaml']:
        assert (d/f).exists(), f
    res = json.loads((d/'evaluate/results.json').read_text())
    assert {m['name'] for m in res['models']} == {'base', 'distilled', 'no-critic'} and res['n_questions'] >= 2
    assert 'distilled' in r.stdout and 'report:' in r.stdout                 # the table and where the report is
    assert 'Kernel is running over TCP' not in r.stdout + r.stderr            # no kernel start-up chatter
    out = r.stdout.splitlines(); i = next(i for i,l in enumerate(out) if l.startswith('model '))
    table = out[i:next(j for j in range(i, len(out)) if out[j].startswith('(itm scores'))]
    assert len(table) == 5 and max(map(len, table)) <= 100, table         # the compact table: base, 2 students, no boxes; a terminal shows it whole
    import re                                                               # the teacher stage's progress, from generate/progress.json
    assert re.search(r'\[lskd run\] generate: (\d+)/\1 samples, (\d+)/\2 images, \d+ triples, \d+ requests, [\d.]+ tokens/s, [\d.]+ samples/(s|min)', r.stdout), r.stdout
    md = (d/'evaluate/results.md').read_text()                             # one table: MC and pointing, rates with intervals and n
    assert 'pointing accuracy (itm)' in md and 'mc accuracy (itm)' in md and '| n (mc) |' in md and 'distilled - base, accuracy (itm)' in md and 'separable' in md, md
    nb = json.loads((d/'notebooks/40_verbalize.ipynb').read_text())          # the examples are in the executed copy, not run
    ex = [c for c in nb['cells'] if c['cell_type'] == 'code' and 'skip-execution' in c['metadata'].get('tags', [])]
    assert len(ex) > 20 and all(c['execution_count'] is None and not c['outputs'] for c in ex)
    pt = json.loads((d/'evaluate/pointing/results.json').read_text())
    assert pt['benchmark'] == 'pointing' and all(m['n'] > 0 and 'accuracy' in m['intervals']['itm'] for m in pt['models'])

def test_api_key_never_lands_in_the_run_folder(run):
    runs, d, r = run
    assert SECRET not in r.stdout + r.stderr
    for p in d.rglob('*'):
        if p.is_file(): assert SECRET.encode() not in p.read_bytes(), p

def test_resume_skips_complete_stages(run):
    runs, d, _ = run
    before = (d/'generate/corpus.jsonl').read_bytes()
    r = lskd('run', '--runs-dir', runs, '--resume', 'r1', '-p', 'evaluate.kept_only=true')
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count('done already, skipped') == 6
    assert (d/'generate/corpus.jsonl').read_bytes() == before
    cfg = json.loads((d/'manifest.json').read_text())['config']     # overrides apply on top of the run's own config
    assert cfg['evaluate']['kept_only'] is True and cfg['generate']['api_key_env'] == 'LSKD_TEST_API_KEY'

def test_failed_stage_names_notebook_and_cell_and_keeps_earlier_outputs(tmp_path):
    r = lskd('run', '--runs-dir', tmp_path, '--run-id', 'bad', '--stages', 'verbalize,generate',
             '-p', 'generate.teacher=remote', '-p', 'generate.base_url=http://127.0.0.1:9/v1', '-p', 'generate.model=x',
             '-p', 'generate.max_retries=0', '-p', 'generate.timeout=5')
    assert r.returncode == 1
    assert 'stage generate failed in notebook 41_generate.ipynb, cell' in r.stderr and 'Traceback' not in r.stderr
    d = tmp_path/'bad'
    assert (d/'verbalize/verbalizations.jsonl').exists() and (d/'verbalize/stage.json').exists()
    man = json.loads((d/'manifest.json').read_text())
    assert man['stages']['verbalize']['status'] == 'done' and man['stages']['generate']['status'] == 'failed'
    assert (d/'notebooks/41_generate.ipynb').exists()
    # --resume runs the stages the run was started with (verbalize done, generate again), not the whole pipeline
    with FakeTeacher() as ft:
        r = lskd('run', '--runs-dir', tmp_path, '--resume', 'bad', '-p', f'generate.base_url={ft.base_url}')
    assert r.returncode == 0, r.stderr[-2000:]
    man = json.loads((d/'manifest.json').read_text())
    assert 'verbalize: done already, skipped' in r.stdout and list(man['stages']) == ['verbalize', 'generate'], r.stdout
    assert man['stages']['generate']['status'] == 'done' and not (d/'critic').exists()

@pytest.mark.slow   # ~50 s in CI, on its critical path: out of the default run to keep CI under 30 min
def test_examples_run_when_asked(tmp_path):
    r = lskd('run', '--runs-dir', tmp_path, '--run-id', 'ex', '--stages', 'verbalize', '--examples')
    assert r.returncode == 0, r.stderr[-2000:]
    nb = json.loads((tmp_path/'ex/notebooks/40_verbalize.ipynb').read_text())
    code = [c for c in nb['cells'] if c['cell_type'] == 'code']
    assert not any('skip-execution' in c['metadata'].get('tags', []) for c in code) and all(c['execution_count'] for c in code)

def test_usage_errors(tmp_path):
    r = lskd('run', '--runs-dir', tmp_path, '-p', 'generate.n_triples')
    assert r.returncode == 2 and 'expected key=value' in r.stderr
    r = lskd('run', '--runs-dir', tmp_path, '--resume', 'nope')
    assert r.returncode == 2 and 'no run to resume' in r.stderr
    r = lskd('run', '--runs-dir', tmp_path, '-p', 'generate.api_key=sk-abcdefghijklmnopqrstuvwxyz012345')
    assert r.returncode == 2 and 'generate.api_key is named like a secret' in r.stderr and 'api_key_env' in r.stderr
    assert 'sk-abc' not in r.stderr

def test_config_checked_before_any_stage(tmp_path):
    "Unknown keys name themselves and the valid keys; secret-named keys are refused whatever their value; nothing is written"
    r = lskd('run', '--runs-dir', tmp_path, '-p', 'generate.n_triples=5')
    assert r.returncode == 2, r.stderr
    assert "generate: unknown key 'n_triples'; the valid keys of generate are: teacher, base_url, model" in r.stderr
    r = lskd('run', '--runs-dir', tmp_path, '-p', 'generate.api_key=abc')           # short: no value check could catch it
    assert r.returncode == 2 and 'generate.api_key is named like a secret' in r.stderr
    r = lskd('run', '--runs-dir', tmp_path, '-p', 'distill.stpes=10')
    assert r.returncode == 2 and "distill: unknown key 'stpes'" in r.stderr and 'steps' in r.stderr
    assert not any(tmp_path.iterdir())                                              # no run folder was made
    r = lskd('run', '--help')
    assert 'generate.samples=3' in r.stdout and 'n_triples' not in r.stdout


def test_offline_full_config_is_the_default_at_twice_its_size():
    "data/configs/offline-full.yaml is a valid run config: the default but for the teacher's triples per choice and the students' steps"
    from lskd.app.pipeline import run_config, check_run_config
    full, default = check_run_config(run_config(Path(__file__).parents[1]/'data'/'configs'/'offline-full.yaml')), run_config()
    assert (full['generate']['prompt_options']['triples'], default['generate']['prompt_options']['triples']) == (6, 3)
    assert (full['distill']['steps'], default['distill']['steps']) == (300, 100)
    others = lambda c: {k: v for k,v in c.items() if k != 'distill'} | {'generate': {k: v for k,v in c['generate'].items() if k != 'prompt_options'}}
    assert {k: v for k,v in full['distill'].items() if k != 'steps'} == {k: v for k,v in default['distill'].items() if k != 'steps'}
    assert others(full) == others(default)
