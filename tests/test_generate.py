"""Tests of lskd.stages.generate against a fake OpenAI-compatible server (retries, timeouts, cache, resume after a kill,
budget, rejects) and one end-to-end run through a real local llama.cpp server (marked `server`)."""
import json, os, signal, subprocess, sys, time, sqlite3
from pathlib import Path
import pytest
from lskd.data.records import Verbalization, ImageRecord, Region, Description, QAPair, QAR
from lskd.io.jsonl import read_jsonl, write_jsonl
from lskd.stages.generate import generate, main, GenerationError
from lskd.teacher.client import request_key, ReplyCache
from lskd.teacher.fake import FakeTeacher, fake_reply

QUICK = dict(teacher='remote', model='fake', progress=False, backoff=0.01, timeout=10, choices='separate')   # a request per sample (n: below)


def verbs(n, people=2):
    out = []
    for i in range(n):
        rs = [Region(j, (10 + 100*j, 20, 90 + 100*j, 300), 'person', f'person {j} of image {i}') for j in range(people)]
        out.append(Verbalization(ImageRecord(f'img{i:03d}.jpg', 640, 480, rs, id=f'im{i}'),
                                 globals=[Description(f'scene number {i}', 'cap')]))
    return out


@pytest.fixture
def vfile(tmp_path): return write_jsonl(tmp_path/'verbalizations.jsonl', verbs(6))


@pytest.fixture
def fake():
    with FakeTeacher() as ft: yield ft


def run(vfile, out, ft, **kw): return generate(vfile, out, dict(QUICK, base_url=ft.base_url, **kw))


# ---------- outputs and cache ----------

def test_outputs_and_rerun_sends_nothing(vfile, tmp_path, fake):
    res = run(vfile, tmp_path/'o', fake, samples=2)
    assert res.status == 'complete' and res['requests_sent'] == 12 == len(fake.requests)
    corpus = list(read_jsonl(tmp_path/'o'/'corpus.jsonl', QAR))
    assert len(corpus) == res['accepted'] > 0 and [q.index for q in corpus] == list(range(len(corpus)))
    assert [q.image for q in corpus] == sorted(q.image for q in corpus)              # input order
    for q in corpus: q.check()
    rows = list(read_jsonl(tmp_path/'o'/'corpus_lskd.jsonl'))
    assert len(rows) == len(corpus) and isinstance(rows[0]['question'], list) and rows[0]['region_all'] == [0, 1]
    s = json.loads((tmp_path/'o'/'summary.json').read_text())
    assert s['parse_success_rate'] == 1.0 and s['prompt_tokens'] > 0 and s['completion_tokens'] > 0
    outputs = lambda: {p.name: p.read_bytes() for p in (tmp_path/'o').iterdir() if p.suffix in ('.jsonl', '.json') and p.stem not in ('attempts', 'progress')}
    files = outputs()
    res2 = run(vfile, tmp_path/'o', fake, samples=2)
    assert len(fake.requests) == 12 and res2['requests_sent'] == 0 and res2['requests_cached'] == 12
    assert res2['sent_completion_tokens'] == 0 and res2['completion_tokens'] == res['completion_tokens'] > 0   # nothing spent on a rerun
    assert outputs() == files and 'summary.json' in files                                # the summary too: the corpus's figures
    assert [json.loads(l)['requests_sent'] for l in (tmp_path/'o'/'attempts.jsonl').read_text().splitlines()] == [12, 0]
    # a changed sampling parameter is a different request
    run(vfile, tmp_path/'o', fake, samples=2, temperature=0.3)
    assert len(fake.requests) == 24


# ---------- n choices per request ----------

def test_n_choices_send_each_prompt_once(vfile, tmp_path, fake):
    res = run(vfile, tmp_path/'n', fake, samples=3, choices='auto')
    assert res['requests_sent'] == 6 == len(fake.requests) and all(r['n'] == 3 for r in fake.requests) and res['choices'] == 'n'
    sep = run(vfile, tmp_path/'s', fake, samples=3)
    assert res['replies'] == sep['replies'] == 18 and sep['requests_sent'] == 18
    assert res['prompt_tokens'] * 3 == sep['prompt_tokens']                        # the prompt billed once per image, not per sample
    files = {p.name: p.read_bytes() for p in (tmp_path/'n').glob('*.jsonl') if p.stem != 'attempts'}
    res2 = run(vfile, tmp_path/'n', fake, samples=3, choices='auto')
    assert res2['requests_sent'] == 0 and res2['requests_cached'] == 6
    assert files == {p.name: p.read_bytes() for p in (tmp_path/'n').glob('*.jsonl') if p.stem != 'attempts'}

def test_endpoint_that_ignores_n_falls_back_to_a_request_per_sample(vfile, tmp_path):
    with FakeTeacher(n_choices=False) as ft:
        res = run(vfile, tmp_path/'n', ft, samples=3, choices='auto', concurrency=1)
        assert res['choices'] == 'separate' and 'n' in ft.requests[0] and not any('n' in r for r in ft.requests[1:])
        assert res['requests_sent'] == 18 == len(ft.requests)
        sep = run(vfile, tmp_path/'s', ft, samples=3)
    drop = lambda q: {**q.to_dict(), 'meta': {k: v for k, v in q.meta.items() if k != 'request'}}
    assert [drop(q) for q in read_jsonl(tmp_path/'n'/'corpus.jsonl', QAR)] == [drop(q) for q in read_jsonl(tmp_path/'s'/'corpus.jsonl', QAR)]


def test_seeds_differ_per_image_and_sample(vfile, tmp_path, fake):
    run(vfile, tmp_path/'o', fake, samples=3)
    seeds = [b['seed'] for b in fake.requests]
    assert len(set(seeds)) == 18
    assert all(b['temperature'] == 0.8 and b['response_format']['type'] == 'json_schema' for b in fake.requests)


def test_no_cache_option(vfile, tmp_path, fake):
    run(vfile, tmp_path/'o', fake, cache=None); run(vfile, tmp_path/'o', fake, cache=None)
    assert len(fake.requests) == 12 and not (tmp_path/'o'/'cache.sqlite').exists()


def test_failures_are_never_cached(vfile, tmp_path, fake):
    fake.fail(3, 500)                      # first image: all 3 attempts fail
    with pytest.raises(GenerationError, match=r'1 teacher request\(s\) failed[\s\S]*img000.jpg sample 0: InternalServerError'):
        run(vfile, tmp_path/'o', fake, max_retries=2, concurrency=1)
    assert not (tmp_path/'o'/'corpus.jsonl').exists() and (tmp_path/'o'/'corpus.jsonl.partial').exists()
    assert (tmp_path/'o'/'corpus.jsonl.partial').read_bytes() == b''          # nothing after the failed first image
    assert json.loads((tmp_path/'o'/'summary.json').read_text())['status'] == 'failed'
    assert [f['image'] for f in read_jsonl(tmp_path/'o'/'failures.jsonl')] == ['img000.jpg']
    keys = {r[0] for r in sqlite3.connect(tmp_path/'o'/'cache.sqlite').execute('SELECT key FROM replies')}
    assert len(keys) == 5
    n = len(fake.requests)
    res = run(vfile, tmp_path/'o', fake)
    assert res.status == 'complete' and res['requests_sent'] == 1 and len(fake.requests) == n + 1
    assert not (tmp_path/'o'/'failures.jsonl').exists()


# ---------- retries, Retry-After, timeouts ----------

def test_retry_after_is_honoured(vfile, tmp_path, fake):
    fake.fail(2, 429, retry_after=0.4)
    res = run(vfile, tmp_path/'o', fake, concurrency=1, max_images=1, backoff=0.01)
    assert res.status == 'complete' and res['retries'] == 2 and len(fake.requests) == 3
    gaps = [b - a for a, b in zip(fake.times, fake.times[1:])]
    assert all(g >= 0.4 for g in gaps), gaps


def test_5xx_backoff_then_success(vfile, tmp_path, fake):
    fake.fail(3, 503)
    res = run(vfile, tmp_path/'o', fake, concurrency=1, max_images=1, backoff=0.05)
    assert res['retries'] == 3 and res['requests_sent'] == 1 and len(fake.requests) == 4
    gaps = [b - a for a, b in zip(fake.times, fake.times[1:])]
    assert gaps[2] > gaps[0] and gaps[0] >= 0.025          # exponential: 0.05 * 2**k * [0.5, 1)


def test_timeout_is_retried(vfile, tmp_path, fake):
    fake.fail(1, status=None, delay=1.5)   # the first request hangs past the timeout
    t0 = time.perf_counter()
    res = run(vfile, tmp_path/'o', fake, concurrency=1, max_images=1, timeout=0.5)
    assert res.status == 'complete' and res['retries'] == 1 and len(fake.requests) == 2
    assert time.perf_counter() - t0 < 5


def test_non_retryable_aborts_with_clear_error(vfile, tmp_path, fake):
    fake.fail(100, 401)
    with pytest.raises(GenerationError, match='AuthenticationError'):
        run(vfile, tmp_path/'o', fake, concurrency=1)
    assert len(fake.requests) == 1                         # no retries, and the run stopped sending


@pytest.mark.parametrize('status', [400, 500])         # vLLM-like 400, llama-cpp-python's 500
def test_response_format_auto_fallback(vfile, tmp_path, status):
    with FakeTeacher(formats={'json_object'}, format_status=status) as ft:       # like llama.cpp: no 'json_schema'
        res = run(vfile, tmp_path/'o', ft, concurrency=1, backoff=1.0)
        assert res['retries'] == 0
        assert res.status == 'complete' and res['response_format'] == 'llama_cpp'
        assert res['requests_sent'] == 6 and len(ft.requests) == 7   # one refused probe
        assert ft.requests[1]['response_format']['schema']['properties']['triples']['maxItems'] == 3
        res = run(vfile, tmp_path/'o', ft, concurrency=1)
        assert res['requests_sent'] == 0 and len(ft.requests) == 7     # the rerun finds the cached spelling


# ---------- API key ----------

def test_api_key_from_env_never_written(vfile, tmp_path, fake, monkeypatch):
    secret = 'sk-test-SECRET-0123456789'
    monkeypatch.setenv('LSKD_TEST_KEY', secret)
    run(vfile, tmp_path/'o', fake, api_key_env='LSKD_TEST_KEY')
    assert {k.lower(): v for k, v in fake.headers[0].items()}['authorization'] == f'Bearer {secret}'
    for p in (tmp_path/'o').iterdir(): assert secret.encode() not in p.read_bytes(), p


def test_missing_key_for_openai(vfile, tmp_path, monkeypatch):
    monkeypatch.delenv('LSKD_NO_SUCH_KEY', raising=False)
    with pytest.raises(ValueError, match="set the environment variable 'LSKD_NO_SUCH_KEY'"):
        generate(vfile, tmp_path/'o', dict(teacher='remote', model='gpt-4o-mini', api_key_env='LSKD_NO_SUCH_KEY'))
    with pytest.raises(ValueError, match="'model' is required"):
        generate(vfile, tmp_path/'o', dict(teacher='remote', base_url='http://127.0.0.1:9/v1'))


# ---------- budget ----------

def test_budget_cap_stops_cleanly_and_resumes(vfile, tmp_path, fake):
    prices = {'fake': {'prompt': 1000.0, 'completion': 1000.0}}          # USD per 1M tokens
    one = run(vfile, tmp_path/'probe', fake, max_images=1, prices=prices)['cost_usd']
    n0 = len(fake.requests)
    res = run(vfile, tmp_path/'o', fake, concurrency=1, prices=prices, budget_usd=2.5*one)
    assert res.status == 'budget' and res['requests_sent'] == 3 and len(fake.requests) - n0 == 3
    assert res['sent_cost_usd'] >= 2.5*one and res['images_done'] == 3
    assert len(list(read_jsonl(tmp_path/'o'/'corpus.jsonl.partial'))) == res['accepted'] > 0
    assert not (tmp_path/'o'/'corpus.jsonl').exists()
    # CLI: exit code 3 when stopped by the budget; then finishing without a cap sends only the rest
    cfg = tmp_path/'c.yaml'; cfg.write_text(json.dumps(dict(prices=prices)))
    args = [str(vfile), str(tmp_path/'o'), '--config', str(cfg), '--base-url', fake.base_url, '--model', 'fake', '--quiet']
    assert main(args + ['--budget-usd', str(1.5*one), '--concurrency', '1']) == 3
    assert main(args) == 0
    assert len(fake.requests) - n0 == 6
    ref = run(vfile, tmp_path/'ref', fake)
    assert (tmp_path/'o'/'corpus.jsonl').read_bytes() == (tmp_path/'ref'/'corpus.jsonl').read_bytes()


def test_budget_tokens(vfile, tmp_path, fake):
    res = run(vfile, tmp_path/'o', fake, concurrency=1, budget_tokens=1)
    assert res.status == 'budget' and res['requests_sent'] == 1


# ---------- validation and rejects ----------

def mixed_reply(body):
    "Replies of every kind, chosen by the image"
    text = body['messages'][-1]['content']
    if 'scene number 0' in text: return 'Sorry, I cannot help with that.'
    g = dict(question='Why is [0] next to [1]?', answer='[0] and [1] are friends.', rationale='[0] smiles at [1] warmly.')
    if 'scene number 1' in text:
        return '```json\n{"triples": [' + json.dumps(g) + ', ' + json.dumps(dict(g, question='What is [5] doing?')) + ',]}\n```'
    return json.dumps([g, g, dict(g, question='Why is he here?', answer='He is waiting.', rationale='He looks at the door.'),
                       dict(g, answer='')])


def test_rejects_and_shares(vfile, tmp_path):
    with FakeTeacher(reply=mixed_reply) as ft: res = run(vfile, tmp_path/'o', ft)
    rej = list(read_jsonl(tmp_path/'o'/'rejects.jsonl'))
    from collections import Counter
    c = Counter(r['reason'] for r in rej)
    assert c == Counter(parse_error=1, bad_region=1, duplicate=4, no_region=4, missing_field=4)
    assert res['accepted'] == 1 + 4 and res['replies'] == 6 and res['parse_success_rate'] == round(5/6, 4)
    assert res['triples_parsed'] == 2 + 4*4 and res['valid_ref_rate'] == round(1 - 1/18, 4)
    total = res['accepted'] + sum(c.values())
    assert res['reject_shares'] == {k: round(v/total, 4) for k, v in sorted(c.items())}
    assert all(r['image'].startswith('img') and r['prompt'] == 'v1' for r in rej)
    assert next(r for r in rej if r['reason'] == 'parse_error')['raw'] == 'Sorry, I cannot help with that.'


def test_images_without_regions(tmp_path, fake):
    vs = verbs(3); vs[1] = Verbalization(ImageRecord('empty.jpg', 64, 64, []))
    p = write_jsonl(tmp_path/'v.jsonl', vs)
    res = run(p, tmp_path/'o', fake, prompt_options={'regions': 'people'})
    assert res.status == 'complete' and res['images_no_regions'] == 1 and res['requests_sent'] == 2
    assert [r['reason'] for r in read_jsonl(tmp_path/'o'/'rejects.jsonl')] == ['no_regions']


# ---------- concurrency and kill-and-resume ----------

def test_concurrency_is_bounded(vfile, tmp_path):
    with FakeTeacher(latency=0.2) as ft:
        t0 = time.perf_counter(); run(vfile, tmp_path/'o', ft, concurrency=3, samples=2); dt = time.perf_counter() - t0
        ts = sorted(ft.times)
    in_flight = max(sum(1 for t in ts if s <= t < s + 0.15) for s in ts)
    assert 2 <= in_flight <= 3             # requests overlap, never more than `concurrency` at once


def test_rate_limit_keeps_under_an_enforcing_server(vfile, tmp_path):
    "`rpm` against a server enforcing the same limit: nothing refused, requests spread at the rate; without it, the server refuses some"
    with FakeTeacher(rpm=240, burst=1.0) as ft:          # 4 a second, with a second of slack for the arrival jitter
        run(vfile, tmp_path/'a', ft, concurrency=4, samples=2, rpm=240)
        ts = sorted(ft.times)
    assert (ft.ok, ft.limited) == (12, 0)
    assert ts[-1] - ts[0] >= 11/4 - 1.0                 # 12 requests at 4 a second: at least the slack short of 2.75 s
    with FakeTeacher(rpm=240, burst=1.0) as ft:
        run(vfile, tmp_path/'b', ft, concurrency=4, samples=2, max_retries=20)
    assert ft.limited > 0 and ft.ok == 12                # the limit is real: sent at once, some were refused (then retried)
    assert (tmp_path/'a'/'corpus.jsonl').read_text() == (tmp_path/'b'/'corpus.jsonl').read_text()


CHILD = '''
import sys
from lskd.stages.generate import main
sys.exit(main(sys.argv[1:]))
'''


@pytest.mark.parametrize('choices,total,kills', [('separate', 28, (2, 9, 17)), ('n', 14, (1, 5, 9))])
def test_kill_and_resume_gives_identical_corpus(tmp_path, choices, total, kills):
    vfile = write_jsonl(tmp_path/'v.jsonl', verbs(14, people=3))
    with FakeTeacher(latency=0.15) as ft:
        args = [str(vfile), str(tmp_path/'k'), '--base-url', ft.base_url, '--model', 'fake', '--quiet',
                '--samples', '2', '--concurrency', '3', '--choices', choices]
        for kill_after in kills:                          # kill three times at different points
            proc = subprocess.Popen([sys.executable, '-c', CHILD] + args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            while ft.ok < kill_after and proc.poll() is None: time.sleep(0.01)
            proc.send_signal(signal.SIGKILL); proc.wait()
            assert proc.returncode == -signal.SIGKILL
            assert not (tmp_path/'k'/'corpus.jsonl').exists()
        cached = len(ReplyCache(tmp_path/'k'/'cache.sqlite'))
        assert ft.ok - 3*3 <= cached <= ft.ok    # at most the replies in flight at each kill are lost
        n_before = len(ft.requests)
        assert subprocess.run([sys.executable, '-c', CHILD] + args, capture_output=True).returncode == 0
        attempts = [json.loads(l) for l in (tmp_path/'k'/'attempts.jsonl').read_text().splitlines()]
        assert len(attempts) == 1 and attempts[-1]['requests_cached'] == cached and attempts[-1]['requests_sent'] == total - cached   # killed calls write none
        assert len(ft.requests) - n_before == total - cached
        ref = generate(vfile, tmp_path/'ref', dict(QUICK, base_url=ft.base_url, samples=2, concurrency=1, choices=choices))
        assert ref.status == 'complete'
    for name in ('corpus.jsonl', 'corpus_lskd.jsonl', 'rejects.jsonl'):
        assert (tmp_path/'k'/name).read_bytes() == (tmp_path/'ref'/name).read_bytes(), name
    assert ref['accepted'] > 20


# ---------- the Batch API ----------

BATCH = dict(mode='batch', batch_poll_s=0.02)
FILES = ('corpus.jsonl', 'corpus_lskd.jsonl', 'rejects.jsonl')


@pytest.fixture
def live(vfile, tmp_path):
    "The folder of a live run (a request per sample, 12 requests)"
    with FakeTeacher() as ft: run(vfile, tmp_path/'live', ft, samples=2)
    return tmp_path/'live'


def same_corpus(a, b): return all((a/f).read_bytes() == (b/f).read_bytes() for f in FILES)


def test_batch_run_gives_the_live_corpus(vfile, tmp_path, live):
    "mode batch: each request answered once, in one batch, none live; the corpus is the live run's; the report prices the batch"
    with FakeTeacher(batch_delay=0.05) as ft:
        run(vfile, tmp_path/'b', ft, samples=2, prices={'fake': {'prompt': 1.0, 'completion': 2.0}}, **BATCH)
        assert (len(ft.requests), ft.batch_served, len(ft.batches)) == (0, 12, 1)
    assert same_corpus(live, tmp_path/'b')
    att = json.loads((tmp_path/'b'/'attempts.jsonl').read_text().splitlines()[-1])
    assert (att['batch']['replies'], att['batch']['failed'], att['requests_sent'], att['requests_cached']) == (12, 0, 0, 12)
    u, s = att['batch']['usage'], json.loads((tmp_path/'b'/'summary.json').read_text())
    assert s['cost_usd'] == att['batch']['cost_usd'] == round((u['prompt_tokens'] + 2*u['completion_tokens']) / 1e6 / 2, 6) > 0


@pytest.mark.parametrize('how', ['failed', 'expired', 'cancelled', 'errors'])
def test_batch_failures_go_into_a_new_batch_never_the_answered(vfile, tmp_path, live, how):
    with FakeTeacher(batch_delay=0.05) as ft:
        ft.fail_batch(how, 3)
        run(vfile, tmp_path/'b', ft, samples=2, **BATCH)
        first = ft.batches['batch-000002']['request_counts']
        assert (len(ft.batches), len(ft.requests)) == (2, 0)                  # one more batch, nothing live
        assert ft.batch_served == 12                                          # each request answered once: none sent again
        assert first['completed'] == {'failed': 0, 'expired': 6, 'cancelled': 6, 'errors': 9}[how]
    assert same_corpus(live, tmp_path/'b')


def test_batch_keeps_the_budget(vfile, tmp_path):
    "With a budget, the batch holds only what cannot take the run over it (at most, at the batch price); the live phase spends what is left"
    from lskd.stages.generate import _within_budget, GenerateConfig, Teacher, image_key
    from lskd.teacher.client import Meter, NoCache
    from lskd.teacher.prompts import load_prompt, build_prompt
    from lskd.data.records import Verbalization
    cfg = GenerateConfig(**QUICK, samples=2, **BATCH)
    spec = load_prompt(cfg.prompt, **cfg.prompt_options); t = Teacher(cfg, None, 'fake', NoCache(), Meter())
    bodies = [b for v in read_jsonl(vfile, Verbalization) for b in t.first_bodies(build_prompt(v, spec), image_key(v))]
    cost = [FakeTeacher().completion(b)['usage']['total_tokens'] for b in bodies]      # what the fake will bill each
    budget = sum(cost) // 2
    fit = len(_within_budget(bodies, GenerateConfig(**QUICK, samples=2, budget_tokens=budget, **BATCH), Meter()))
    assert 0 < fit < len(bodies)
    with FakeTeacher(batch_delay=0.05) as ft:
        r = run(vfile, tmp_path/'b', ft, samples=2, budget_tokens=budget, **BATCH)
        assert ft.batch_served == fit and r.status == 'budget'
    att = json.loads((tmp_path/'b'/'attempts.jsonl').read_text().splitlines()[-1])
    u = att['batch']['usage']; batch, live = u['prompt_tokens'] + u['completion_tokens'], att['sent_prompt_tokens'] + att['sent_completion_tokens']
    assert att['batch']['held_back_by_budget'] == len(bodies) - fit and batch < budget
    assert budget <= batch + live < budget + 4*max(cost)      # live requests start only under the budget (4 in flight at most)


def test_batch_failures_go_live_after_batch_rounds(vfile, tmp_path, live):
    with FakeTeacher(batch_delay=0.05) as ft:
        ft.fail_batch('expired')
        run(vfile, tmp_path/'b', ft, samples=2, batch_rounds=1, **BATCH)
        assert (ft.batch_served, ft.ok, len(ft.batches)) == (6, 6, 1)       # half in the batch, the expired half live
    assert same_corpus(live, tmp_path/'b')


def test_kill_while_a_batch_is_in_flight_resumes_polling_it(vfile, tmp_path, live):
    "Killed while its batch runs, generate resumes by polling the same batch: nothing submitted or sent again"
    with FakeTeacher(batch_delay=4.0) as ft:
        args = [str(vfile), str(tmp_path/'k'), '--base-url', ft.base_url, '--model', 'fake', '--quiet', '--samples', '2',
                '--choices', 'separate', '--mode', 'batch', '--batch-poll-s', '0.05']
        proc = subprocess.Popen([sys.executable, '-c', CHILD] + args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        state = tmp_path/'k'/'batches.json'
        t0 = time.time()
        while not (state.exists() and json.loads(state.read_text())['batches'][-1]['id']) and time.time() - t0 < 60: time.sleep(0.02)
        proc.send_signal(signal.SIGKILL); proc.wait()
        assert list(ft.batches) == ['batch-000002'] and ft.batches['batch-000002']['status'] != 'completed'   # killed in flight
        assert subprocess.run([sys.executable, '-c', CHILD] + args, capture_output=True).returncode == 0
        assert (len(ft.batches), len(ft.files), ft.batch_served, len(ft.requests)) == (1, 2, 12, 0)   # input + output file only
    assert same_corpus(live, tmp_path/'k')


def test_import_replies_from_a_batch_output_file(vfile, tmp_path, live):
    "Replies made elsewhere (vLLM run-batch's output format) are loaded; only the rest is sent live"
    from lskd.teacher.batch import batch_line
    with FakeTeacher() as ft:
        rows = sqlite3.connect(live/'cache.sqlite').execute('SELECT key, request FROM replies').fetchall()
        half = [json.loads(r) for _, r in sorted(rows)[:6]]
        out = tmp_path/'vllm_output.jsonl'
        out.write_text(''.join(json.dumps({'id': f'vllm-{i}', 'custom_id': batch_line(b)['custom_id'], 'error': None,
                                           'response': {'status_code': 200, 'request_id': f'vllm-{i}', 'body': ft.completion(b)}}) + '\n'
                               for i, b in enumerate(half)))
        run(vfile, tmp_path/'i', ft, samples=2, import_replies=str(out))
        assert len(ft.requests) == 6
    att = json.loads((tmp_path/'i'/'attempts.jsonl').read_text().splitlines()[-1])
    assert att['imported'] == {'replies': 6, 'errors': 0, 'imported': 6, 'unknown': 0} and att['requests_sent'] == 6
    assert same_corpus(live, tmp_path/'i')


def test_batch_needs_the_cache(vfile, tmp_path):
    with pytest.raises(ValueError, match='mode batch and import_replies put the replies in the reply cache'):
        generate(vfile, tmp_path/'o', dict(QUICK, cache=None, **BATCH))


def test_cli_errors(tmp_path, capsys):
    assert main([str(tmp_path/'missing.jsonl'), str(tmp_path/'o'), '--teacher', 'fake', '--quiet']) == 2
    assert 'verbalizations not found' in capsys.readouterr().err
    bad = tmp_path/'c.yaml'; bad.write_text('temprature: 1\n')
    assert main([str(tmp_path/'missing.jsonl'), str(tmp_path/'o'), '--config', str(bad)]) == 2
    assert "unknown key 'temprature'; the valid keys of generate are:" in capsys.readouterr().err


def test_cli_dispatch(vfile, tmp_path):
    "`lskd generate ...` reaches lskd.stages.generate.main through the CLI table"
    r = subprocess.run([sys.executable, '-c', 'import sys; from lskd.app.cli import main; sys.exit(main(sys.argv[1:]))',
                        'generate', str(vfile), str(tmp_path/'o'), '--teacher', 'fake', '--quiet', '--max-images', '2'],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert 'GenResult(complete: 2/2 images' in r.stdout
    assert len(list(read_jsonl(tmp_path/'o'/'corpus.jsonl'))) > 0


# ---------- a real local llama.cpp server ----------

@pytest.mark.server
@pytest.mark.slow   # ~2.4 min in CI; the crash test (tests/test_crash.py) runs generate on a real llama.cpp server in every CI
def test_real_llama_cpp_server_end_to_end(tmp_path):
    pytest.importorskip('llama_cpp')
    from lskd.teacher.server import fetch_models, TeacherServer
    name = 'smollm2-135m-instruct'
    path = fetch_models(name, progress=False)[name]
    vfile = write_jsonl(tmp_path/'v.jsonl', verbs(2))
    with TeacherServer(path, alias=name, log_path=tmp_path/'server.log') as srv:
        res = generate(vfile, tmp_path/'o', dict(teacher='remote', base_url=srv.base_url, model=name, max_tokens=48,
                                                 concurrency=2, timeout=120, progress=False, prompt_options={'triples': 2}))
        # the same through the CLI, into the same folder: all cached
        assert main([str(vfile), str(tmp_path/'o'), '--base-url', srv.base_url, '--model', name, '--max-tokens', '48',
                     '--concurrency', '2', '--triples', '2', '--quiet']) == 0
    assert res.status == 'complete' and res['requests_sent'] == 2 and res['replies'] == 2
    assert res['prompt_tokens'] > 100 and res['completion_tokens'] > 0
    assert res['response_format'] in ('llama_cpp', 'openai', 'none')
    for f in ('corpus.jsonl', 'corpus_lskd.jsonl', 'rejects.jsonl', 'summary.json'): assert (tmp_path/'o'/f).exists()
    n = len(list(read_jsonl(tmp_path/'o'/'corpus.jsonl'))) + len(list(read_jsonl(tmp_path/'o'/'rejects.jsonl')))
    assert n >= 1                          # something came back and was either accepted or rejected with a reason
    assert json.loads((tmp_path/'o'/'attempts.jsonl').read_text().splitlines()[-1])['requests_sent'] == 0


@pytest.mark.parametrize('choices,requests,billed', [('separate', 10, 2), ('n', 5, 1)])
def test_dry_run_counts_before_sending(tmp_path, capsys, choices, requests, billed):
    "`lskd generate --dry-run`: requests, tokens, cost and time, and not one request sent; the counts match a real run's"
    vp = write_jsonl(tmp_path/'v.jsonl', verbs(5))
    cfg = tmp_path/'c.yaml'; cfg.write_text('prices: {fake: {prompt: 0.5, completion: 1.5}}\n')
    with FakeTeacher() as ft:
        assert main([str(vp), str(tmp_path/'dry'), '--config', str(cfg), '--base-url', ft.base_url, '--model', 'fake', '--samples', '2',
                     '--choices', choices, '--dry-run', '--tokens-per-s', '25']) == 0
        assert ft.requests == [] and not (tmp_path/'dry'/'corpus.jsonl').exists()
        e = json.loads((tmp_path/'dry'/'estimate.json').read_text())
        assert (e['images'], e['requests'], e['prompt_tokens']) == (5, requests, billed*e['prompt_tokens_local'])
        assert e['cost_usd'] == pytest.approx((e['prompt_tokens']*0.5 + e['completion_tokens']*1.5)/1e6) and e['wall_s'] == pytest.approx(e['completion_tokens']/25)
        res = generate(vp, tmp_path/'real', base_url=ft.base_url, model='fake', samples=2, choices=choices, progress=False)
        assert res.summary['requests_sent'] == e['requests'] == len(ft.requests)
    capsys.readouterr()
