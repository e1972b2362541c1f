"""The crash test (tests/crash_run.py) under pytest, with a real local teacher on llama.cpp: SIGKILL of the whole
process tree at random points in the stages, `lskd run --resume` after each, every file compared with an
uninterrupted run's, teacher requests counted. The short variant (CI, ~5 min): SmolLM2-135M, 4 images, one kill at
a random time in each of verbalize, generate, critic and distill, and one in critic and in distill as each writes a
checkpoint (mid-training). The full one (`pytest --slow`, ~20 min): the default teacher, every
stage, 12 kills at random times and 2 at checkpoints, and two uninterrupted runs that must agree with each other too."""
import json, subprocess, sys
from pathlib import Path
import pytest
from lskd.teacher.server import fetch_models, DEFAULT_TEACHER

HERE = Path(__file__).parent
SMOL = 'smollm2-135m-instruct'
FAST = ['critic.epochs=2', 'critic.threshold=0.3', 'distill.steps=10', 'distill.batch_size=8', 'distill.save_every=4']
SHORT = [f'generate.local_model={SMOL}', 'generate.local_n_threads=1', 'generate.max_images=4', 'generate.samples=2',
         'generate.max_tokens=250', *FAST]

def crash(work, model, args):
    "Run tests/crash_run.py into `work`; its exit status and output, and its report"
    fetch_models(model, progress=False)                     # explicit: `lskd run` is not the place for a download
    r = subprocess.run([sys.executable, str(HERE/'crash_run.py'), str(work), *map(str, args)], capture_output=True, text=True, timeout=4*3600)
    assert (work/'crash_report.json').exists(), r.stdout[-3000:] + r.stderr[-3000:]
    return r, json.loads((work/'crash_report.json').read_text())

def check(r, rep, stages):
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert all(rep['killed_per_stage'][s] >= 1 for s in stages), rep['kills']
    f = rep['files']
    assert not (f['differ'] or f['only_in_reference'] or f['only_in_crashed']), f
    assert f['identical'] >= 20 and 'same content' in f['cache'], f
    q, ref = rep['requests']['crashed'], rep['requests']['reference']
    assert q['sent_again_after_success'] == 0 and q['distinct'] == ref['sent'] == ref['distinct'], rep['requests']
    assert rep['corpus']['crashed'] == rep['corpus']['reference'] and rep['corpus']['crashed']['duplicates'] == 0

@pytest.mark.server
def test_crash_in_every_stage_resumes_to_the_same_run(tmp_path):
    stages = ['verbalize', 'generate', 'critic', 'distill']
    r, rep = crash(tmp_path, SMOL, ['--kills', 4, '--min-fraction', 0.5, '--at-checkpoint', '--stages', ','.join(stages), *[x for p in SHORT for x in ('-p', p)]])
    check(r, rep, stages)

@pytest.mark.slow
def test_crash_at_twelve_points_two_references(tmp_path):
    r, rep = crash(tmp_path, DEFAULT_TEACHER, ['--kills', 12, '--seed', 1, '--at-checkpoint', '--twice', *[x for p in ['generate.samples=1', *FAST] for x in ('-p', p)]])
    check(r, rep, ['verbalize', 'generate', 'critic', 'distill', 'evaluate', 'inspect'])
    c = rep['reference_vs_reference2']; assert not (c['differ'] or c['only_in_reference'] or c['only_in_crashed']), c
