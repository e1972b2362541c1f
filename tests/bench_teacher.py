"""The teacher stage side by side on one local server (issue: the teacher stage at the machine's limit).

    python tests/bench_teacher.py VERBALIZATIONS [--images 2] [--samples 6] [--setups separate n] [--grammars last] [--out DIR]

For each setup, a `choices` way of asking (`separate`: a request per sample, as lskd's local teacher did before;
`n`: an image's samples in one request, decoded together by `lskd.teacher.server.n_choices`) and a sampler of lskd's llama.cpp
server (`grammar='first'`, llama-cpp-python's chain; `grammar='last'`, `lskd.teacher.server.GrammarLast`), it starts one
server and, on it, one after the other:
1. `lskd.stages.generate.generate` on the first `--images` images of VERBALIZATIONS (the embedded default's prompt, a fresh
   cache), `--samples` replies each;
2. the same work as direct requests: the very bodies lskd sent (built with lskd.teacher.client.request_body and
   request_seed), sent one by one with the openai client and nothing else (no cache, no parsing, no files).
It prints, per setup: prompt and completion tokens per accepted triple, seconds per accepted triple, the cost of
1,000 accepted triples at PRICE (USD per 1M prompt / completion tokens, default gpt-4o-mini's list price, 0.15 / 0.60:
what the same tokens would cost on that API; on the local server they cost nothing), and lskd's throughput over
direct requests (completion tokens per second, lskd / direct). It also checks that the direct replies are lskd's.
Measure with nothing else running: on 2 cores llama.cpp slows down several times under contention.
"""
import argparse, json, sys, time
from pathlib import Path


LIMITS_DOC = """`python tests/bench_teacher.py limits [--requests 300] [--threads 16]`: lskd's rate limiter against a fake teacher
that enforces the same limits (`FakeTeacher(rpm=, tpm=, burst=1)`: a 429 with retry-after past them). Three runs of
`--requests` requests through `lskd.teacher.client.send` from `--threads` threads: rpm-bound (rpm 600, tpm unbounded),
tpm-bound (rpm 600, tpm 60,000 with 200-token requests: 5 a second), and no limiter (rpm 600 enforced). For each: the
achieved rate against the limit, and the requests answered 429. Targets: >= 0.9x the limit, <= 1% answered 429."""


def limits_main(argv):
    "The rate-limit benchmark (`LIMITS_DOC`)"
    from concurrent.futures import ThreadPoolExecutor
    from lskd.teacher.client import send, TeacherConfig, RateLimiter, request_tokens
    from lskd.teacher.fake import FakeTeacher
    ap = argparse.ArgumentParser(description=LIMITS_DOC); ap.add_argument('--requests', type=int, default=300); ap.add_argument('--threads', type=int, default=16)
    a = ap.parse_args(argv)
    body = {'model': 'fake', 'messages': [{'role': 'user', 'content': 'Regions:\n[0] person\nWrite 1 triple. ' + 'x'*370}], 'max_tokens': 100}
    cost = request_tokens(body)
    cfg = TeacherConfig(max_retries=50, timeout=30)
    print(f'{a.requests} requests of {cost} tokens (request_tokens) from {a.threads} threads; the fake enforces its limits with 1 s of slack')
    print('| run | limit | achieved | achieved / limit | answered 429 |\n|---|---|---|---|---|')
    for name, rpm, tpm, use in [('rpm-bound', 600, None, True), ('tpm-bound', 600, 60_000, True), ('no limiter', 600, None, False)]:
        with FakeTeacher(rpm=rpm, tpm=tpm, burst=1.0) as ft:
            lim = RateLimiter(rpm, tpm) if use else None
            cl = ft.client()
            with ThreadPoolExecutor(a.threads) as ex: list(ex.map(lambda _: send(cl, body, cfg, limiter=lim), range(a.requests)))
            ts = sorted(ft.served)
        per_s = (len(ts) - 1) / (ts[-1] - ts[0])         # accepted requests a second, first to last
        limit = min(rpm/60, tpm/60/cost if tpm else float('inf'))
        what = f'{tpm:,} tpm = {limit:.1f}/s' if tpm else f'{rpm} rpm = {limit:.1f}/s'
        print(f'| {name} | {what} | {per_s:.2f}/s | {per_s/limit:.3f} | {ft.limited} of {len(ft.times)} ({100*ft.limited/len(ft.times):.1f}%) |')

def direct(base_url, model, bodies):
    "Send `bodies` one by one; (seconds, completion tokens, replies: the texts of each body's choices)"
    import openai
    cl = openai.OpenAI(base_url=base_url, api_key='none', max_retries=0, timeout=3600)
    t, ct, out = time.perf_counter(), 0, []
    for b in bodies:
        r = cl.chat.completions.create(**b); ct += r.usage.completion_tokens; out.append([c.message.content for c in r.choices])
    return time.perf_counter() - t, ct, out

def bodies_of(verbs, cfg, model):
    "The request bodies lskd sends for `verbs`: one per sample (choices separate), or one per image with `n` (choices n)"
    from lskd.stages.generate import sample_bodies, image_key, asks_n
    from lskd.teacher.client import request_body, request_seed
    from lskd.teacher.prompts import load_prompt, build_prompt
    spec = load_prompt(cfg.prompt, **cfg.prompt_options)
    if asks_n(cfg): return [request_body(cfg, build_prompt(v, spec), model, request_seed(cfg.seed, image_key(v), 0), 'llama_cpp', n=cfg.samples) for v in verbs]
    return [b for v in verbs for b in sample_bodies(v, spec, cfg, model, 'llama_cpp')]

SCALE_DOC = """`python tests/bench_teacher.py overhead [--sizes 10000 100000] [--concurrency 8]`: lskd's live path (`generate`,
the reply cache on, one request per image) against bare openai-client calls of the same request bodies, with the same
number of threads, to the same zero-latency fake teacher (`FakeTeacher` in another process): requests a second, the
ratio (target >= 0.8), and each side's peak RSS (its own process; target: flat within 10% from the smallest size to the
largest; measured as the child's VmHWM); `--sides` picks what runs, `post`: bare `client.post` calls (the openai client's untyped path, which lskd's `send` uses: the
limit of lskd's own path). `python tests/bench_teacher.py batch [--requests 10000] [--delay 20]`: the same job in `mode: batch` through
the fake's Batch API taking `--delay` seconds a batch: wall time against the delay, duplicates and requests lost."""


def _verbs(n, path):
    "`n` verbalizations (two people each), written to `path`"
    from lskd.data.records import Verbalization, ImageRecord, Region, Description
    from lskd.io.jsonl import JsonlWriter
    with JsonlWriter(path) as w:
        for i in range(n):
            rs = [Region(j, (10 + 100*j, 20, 90 + 100*j, 300), 'person', f'person {j} of image {i}') for j in range(2)]
            w.write(Verbalization(ImageRecord(f'img{i:06d}.jpg', 640, 480, rs, id=f'im{i}'), globals=[Description(f'scene number {i}', 'cap')]))
    return path


_CHILD = r"""
import json, resource, sys, time
from concurrent.futures import ThreadPoolExecutor
side, vpath, out, url, conc = sys.argv[1:6]; conc = int(conc)
from lskd.stages.generate import generate, GenerateConfig, image_key
from lskd.teacher.client import request_body, request_seed
from lskd.teacher.prompts import load_prompt, build_prompt
from lskd.io.jsonl import read_jsonl
from lskd.data.records import Verbalization
cfg = GenerateConfig(teacher='remote', base_url=url, model='fake', progress=False, concurrency=conc, choices='separate', response_format='openai')
if side == 'lskd':
    t = time.perf_counter(); r = generate(vpath, out, cfg); dt = time.perf_counter() - t; n = r.summary['requests']; ok = r.summary['images_done']
else:
    import openai
    spec = load_prompt(cfg.prompt)
    bodies = [request_body(cfg, build_prompt(v, spec), 'fake', request_seed(cfg.seed, image_key(v), 0), 'openai') for v in read_jsonl(vpath, Verbalization)]
    cl = openai.OpenAI(base_url=url, api_key='none', max_retries=0)
    def one(b):
        if side == 'post':      # the client's untyped path, as lskd's `send` uses it: the body as it is, the reply's JSON
            import httpx
            return cl.post('/chat/completions', body=b, cast_to=httpx.Response).json()
        rest = {k: v for k, v in b.items() if k not in ('model', 'messages')}
        return cl.chat.completions.create(model=b['model'], messages=b['messages'], extra_body=rest)
    t = time.perf_counter()
    with ThreadPoolExecutor(conc) as ex: ok = sum(1 for _ in ex.map(one, bodies))
    dt = time.perf_counter() - t; n = len(bodies)
hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM:')]      # this program's peak RSS: ru_maxrss would count the parent's at the fork
print(json.dumps({'side': side, 'requests': n, 'ok': ok, 'seconds': dt, 'peak_rss_mib': int(hwm[0].split()[1]) / 1024 if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def overhead_main(argv):
    "lskd's live path against bare client calls (`SCALE_DOC`)"
    import subprocess, tempfile
    from lskd.teacher.fake import FakeTeacher
    ap = argparse.ArgumentParser(description=SCALE_DOC); ap.add_argument('--sizes', type=int, nargs='+', default=[10_000, 100_000])
    ap.add_argument('--concurrency', type=int, default=8)
    ap.add_argument('--sides', nargs='+', default=['bare', 'lskd'], choices=['bare', 'lskd', 'post'],
                    help='what to run: bare create() calls, lskd generate, bare client.post calls (the untyped path lskd uses)'); a = ap.parse_args(argv)
    print('| requests | side | requests/s | peak RSS (MiB) |\n|---|---|---|---|')
    for n in a.sizes:
        with tempfile.TemporaryDirectory() as d:
            vpath = _verbs(n, Path(d)/'v.jsonl'); got = {}
            for side in a.sides:
                with FakeTeacher() as ft:     # a fresh fake per side; the fake runs in this process, each side in its own
                    r = subprocess.run([sys.executable, '-c', _CHILD, side, str(vpath), str(Path(d)/f'out-{side}'), ft.base_url, str(a.concurrency)],
                                       capture_output=True, text=True)
                    assert r.returncode == 0, r.stderr[-2000:]
                    got[side] = json.loads(r.stdout.strip().splitlines()[-1]); assert got[side]['ok'] == n and ft.ok == n
                print(f"| {n:,} | {side} | {n/got[side]['seconds']:.0f} | {got[side]['peak_rss_mib']:.0f} |", flush=True)
            if 'lskd' in got:
                for side in set(got) - {'lskd'}: print(f"lskd / {side} at {n:,} requests: {got[side]['seconds']/got['lskd']['seconds']:.2f}", flush=True)


def batch_main(argv):
    "A job through the fake's Batch API (`SCALE_DOC`)"
    import tempfile
    from lskd.stages.generate import generate
    from lskd.teacher.fake import FakeTeacher
    ap = argparse.ArgumentParser(description=SCALE_DOC); ap.add_argument('--requests', type=int, default=10_000)
    ap.add_argument('--delay', type=float, default=20.0); a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as d, FakeTeacher(batch_delay=a.delay) as ft:
        vpath = _verbs(a.requests, Path(d)/'v.jsonl')
        t = time.perf_counter()
        r = generate(vpath, Path(d)/'b', dict(teacher='remote', base_url=ft.base_url, model='fake', progress=False, choices='separate',
                                              response_format='openai', mode='batch', batch_poll_s=1.0))
        wall = time.perf_counter() - t
        t = time.perf_counter()     # the same job again: every reply in the cache, so only the corpus is written (the live path's own work)
        r2 = generate(vpath, Path(d)/'b', dict(teacher='remote', base_url=ft.base_url, model='fake', progress=False, choices='separate',
                                               response_format='openai', mode='batch', batch_poll_s=1.0))
        rerun = time.perf_counter() - t; assert r2.summary['images_done'] == a.requests
        keys = [json.loads(l)['custom_id'] for f in ft.batches.values() for l in ft.files[f['input_file_id']].decode().splitlines()]
        print(f"{a.requests:,} requests in {len(ft.batches)} batch(es), the fake taking {a.delay:.0f} s a batch: wall {wall:.1f} s "
              f"({wall/a.requests*1000:.2f} ms a request beyond nothing; {wall - a.delay:.1f} s beyond the delay); submitted {len(keys):,}, "
              f"distinct {len(set(keys)):,} (duplicates {len(keys) - len(set(keys))}); answered {ft.batch_served:,}; live requests {len(ft.requests)}; "
              f"images written {r.summary['images_done']:,} of {a.requests:,} (lost {a.requests - r.summary['images_done']}); "
              f"a rerun (all from the cache: prompts, parsing, the corpus files) {rerun:.1f} s, so the Batch API's part (files, polls, the fake "
              f"answering {a.requests:,} lines in this process, loading the replies) {wall - a.delay - rerun:.1f} s")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ['limits']: return limits_main(argv[1:])
    if argv[:1] == ['overhead']: return overhead_main(argv[1:])
    if argv[:1] == ['batch']: return batch_main(argv[1:])
    ap = argparse.ArgumentParser()
    ap.add_argument('verbalizations'); ap.add_argument('--images', type=int, default=2); ap.add_argument('--samples', type=int, default=6)
    ap.add_argument('--model', default='qwen2.5-coder-1.5b-instruct'); ap.add_argument('--out', default='/tmp/lskd-bench-teacher')
    ap.add_argument('--price', type=float, nargs=2, default=[0.15, 0.60], metavar=('PROMPT', 'COMPLETION'))
    ap.add_argument('--grammars', nargs='+', default=['last'])
    ap.add_argument('--setups', nargs='+', default=['separate', 'n'], help='choices: separate (a request per sample), n (one per image)')
    a = ap.parse_args(argv)
    from lskd.io.jsonl import read_jsonl, write_jsonl
    from lskd.data.records import Verbalization
    from lskd.stages.generate import generate, GenerateConfig
    from lskd.teacher.client import ReplyCache, request_key
    from lskd.app.pipeline import DEFAULT_CONFIG
    from lskd.teacher.server import fetch_models, TeacherServer
    out = Path(a.out); out.mkdir(parents=True, exist_ok=True)
    verbs = list(read_jsonl(a.verbalizations, Verbalization))[:a.images]
    vpath = write_jsonl(out/'verbalizations.jsonl', verbs)
    g = {**DEFAULT_CONFIG['generate'], 'samples': a.samples, 'response_format': 'llama_cpp', 'teacher': 'remote',
         'concurrency': 1, 'timeout': 3600}   # the local teacher's way: the server answers one request at a time (an n-choice request takes minutes)
    path = fetch_models(a.model, progress=False)[a.model]
    rows = []
    for gr, ch in [(gr, ch) for gr in a.grammars for ch in a.setups]:
        g['choices'] = ch
        with TeacherServer(path, alias='teacher', n_threads=2, log_path=out/f'server-{gr}-{ch}.log', grammar=gr) as srv:
            run = out/f'lskd-{gr}-{ch}'
            t = time.perf_counter()
            res = generate(vpath, run, dict(g, base_url=srv.base_url, model='teacher', cache=f'cache-{time.time_ns()}.sqlite'))
            lskd_s = time.perf_counter() - t; s = res.summary
            cfg = GenerateConfig.load(dict(g, base_url=srv.base_url, model='teacher'))
            bodies = bodies_of(verbs, cfg, 'teacher')
            d_s, d_ct, d_replies = direct(srv.base_url, 'teacher', bodies)
        cache = ReplyCache(next(run.glob('cache-*.sqlite')))
        lskd_replies = [[c.get('message', {}).get('content') for c in (cache.get(request_key(b)) or {}).get('choices', [])] for b in bodies]
        acc, pt, ct = s['accepted'], s['prompt_tokens'], s['completion_tokens']
        r = dict(grammar=gr, choices=ch, images=len(verbs), samples=a.samples, requests=s['requests_sent'], accepted=acc, prompt_tokens=pt,
                 completion_tokens=ct, lskd_s=round(lskd_s, 1), direct_s=round(d_s, 1), direct_completion_tokens=d_ct,
                 prompt_tokens_per_triple=round(pt/acc, 1), completion_tokens_per_triple=round(ct/acc, 1), s_per_triple=round(lskd_s/acc, 2),
                 usd_per_1000_triples=round(1000*(pt*a.price[0] + ct*a.price[1])/1e6/acc, 4),
                 throughput_vs_direct=round((ct/lskd_s)/(d_ct/d_s), 3), direct_replies_equal_lskd=f'{sum(d == l for d, l in zip(d_replies, lskd_replies))}/{len(bodies)}')
        rows.append(r); print(json.dumps(r), flush=True)
    print(f'\nprice: {a.price[0]} / {a.price[1]} USD per 1M prompt / completion tokens\n')
    print('| choices | sampler | requests | accepted | prompt tok / triple | completion tok / triple | s / triple | USD / 1k triples | lskd / direct throughput |')
    print('|---|---|---|---|---|---|---|---|---|')
    for r in rows: print(f"| {r['choices']} | grammar {r['grammar']} | {r['requests']} | {r['accepted']} | {r['prompt_tokens_per_triple']} | {r['completion_tokens_per_triple']} | "
                         f"{r['s_per_triple']} | {r['usd_per_1000_triples']} | {r['throughput_vs_direct']} |")

if __name__ == '__main__': main()
