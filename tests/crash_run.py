"""Crash test of `lskd run`: SIGKILL at random points in every stage, `lskd run --resume`, and compare with an
uninterrupted run of the same configuration, file by file.

    python tests/crash_run.py WORK_DIR [--kills 12] [--seed 0] [--min-fraction 0.05] [--at-checkpoint] [--twice]
                                       [--stages a,b] [-p key=value ...]

1. A reference run (uninterrupted; with `--twice`, two, which must agree with each other too).
2. A kill plan: one point per stage, then the rest spread over generate, critic, distill and evaluate, each a
   random fraction of the reference's time in that stage (or, when the crashed run is faster than the reference, the
   moment the stage's progress shows it nearly done, so the kill still lands in the stage); with `--at-checkpoint`, also critic and distill the moment
   they write a new checkpoint (mid-training: the resume must continue from it exactly).
3. One run killed at each point in turn, the whole process tree at once (the `lskd run` process, its papermill
   kernel and the llama.cpp server, which run in sessions of their own), each kill followed by `--resume`.
4. Every file of the reference and the crashed run compared: byte for byte, or, for a file that holds wall times
   (JSON, JSONL, a checkpoint's safetensors metadata), after dropping the keys in `WALL_KEYS`; executed notebooks and progress files are logs (`LOGS`); the teacher's
   reply cache is compared by content (key, request, reply), without its timings.
5. Teacher requests counted from the crashed run's cache (`sent` logs every request before it goes out):
   a request sent again after its reply had been stored must not happen.

Both runs use the same folder (`WORK_DIR/runs/run`), moved aside when done, so paths inside files agree.
Prints the figures, writes `WORK_DIR/crash_report.json`; exit status 1 when anything differs or was re-sent.
"""
import argparse, json, os, random, re, shutil, signal, sqlite3, subprocess, sys, threading, time
from pathlib import Path

STAGES = ['verbalize', 'generate', 'critic', 'distill', 'evaluate', 'inspect']
HEAVY = ['generate', 'critic', 'distill', 'evaluate']
TRAINING, CHECKPOINT = ['critic', 'distill'], 'checkpoint'
WALL_KEYS = {'seconds', 'wall_s', 'request_seconds', 'peak_rss_mib', 'created', 'finished', 'per_second', 'triples_per_s',
             'examples_per_s', 'images_per_s', 'completion_tokens_per_s',   # wall times and rates (and peak memory)
             'mtime_ns'}                # a file's modification time (a corpus table's key file: lskd.data.table.content_key)
RESUME_KEYS = {'skipped_on_resume',       # the manifest's record that a resume skipped a complete stage
               'scored_now', 'executor'}  # the critic's filter report: triples scored by this session, and its tasks and workers
LOGS = [r'(^|/)\.[^/]+\.\d+\.tmp$',      # the temporary of a write that a kill interrupted (lskd.io.files.atomic_path): the file itself is whole
        r'^notebooks/.*\.ipynb$', r'(^|/)progress\.json$', r'(^|/)attempts\.jsonl$', r'(^|/)[^/]*server[^/]*\.log$', r'(^|/)cache\.sqlite(-wal|-shm|-journal)?$']
RUN = 'run'


def lskd_exe():
    exe = Path(sys.executable).parent/'lskd'
    return str(exe) if exe.exists() else shutil.which('lskd')


class Run:
    "`lskd run ...` in a session of its own, its stdout read line by line into `lines`"
    def __init__(self, args, log):
        self.log, self.lines, self.started = log, [], time.time()
        self.proc = subprocess.Popen([lskd_exe(), *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, start_new_session=True, env={**os.environ, 'PYTHONUNBUFFERED': '1'})
        self.t = threading.Thread(target=self._read, daemon=True); self.t.start()
    def _read(self):
        for l in self.proc.stdout:
            self.lines.append((time.monotonic(), l.rstrip('\n'))); self.log.write(l); self.log.flush()
    def wait_line(self, pat, timeout=3600):
        "Wait for a stdout line matching `pat`; its time, or None when the run ended first"
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            for t, l in self.lines:
                if re.search(pat, l): return t
            if self.proc.poll() is not None: self.t.join(5); return next((t for t, l in self.lines if re.search(pat, l)), None)
            time.sleep(0.05)
        raise TimeoutError(pat)
    def stage(self):
        "The stage running now, from the `[lskd run] <stage>: running` / `done in` lines"
        cur = None
        for _, l in self.lines:
            if m := re.match(r'\[lskd run\] (\w+): running', l): cur = m[1]
            elif (m := re.match(r'\[lskd run\] (\w+): done', l)) and m[1] == cur: cur = None
        return cur
    def kill(self):
        "SIGKILL the whole tree at once: stop every process first, so none acts on another's death"
        import psutil
        try: root = psutil.Process(self.proc.pid); procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess: procs = []
        for p in procs:
            try: p.suspend()
            except psutil.NoSuchProcess: pass
        for p in procs:
            try: p.kill()
            except psutil.NoSuchProcess: pass
        try: os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError: pass
        self.proc.wait(); psutil.wait_procs(procs, timeout=30)
        alive = [p.pid for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        if alive: raise RuntimeError(f'processes survived SIGKILL: {alive}')
        return len(procs)
    def finish(self, timeout=7200):
        rc = self.proc.wait(timeout); self.t.join(10); return rc


def reference(work, params, name, log):
    "An uninterrupted run, moved to `work/name`; its manifest"
    dest = work/name; shutil.rmtree(dest, ignore_errors=True)
    r = Run(['run', '--runs-dir', work/'runs', '--run-id', RUN, *params], log)
    if rc := r.finish(): sys.exit(f'the reference run {name} failed (rc {rc}); see {log.name}')
    shutil.move(work/'runs'/RUN, dest)
    return json.loads((dest/'manifest.json').read_text())


def kill_plan(man, n, rng, lo=0.05, at_checkpoint=False):
    "(stage, fraction of the reference's stage time in [lo, 0.95]): one per stage, the rest over the heavy stages, in run order;\n    `at_checkpoint`: also one per training stage the moment it writes a new checkpoint (killed mid-training)"
    stages = [s for s in STAGES if s in man['stages']]
    heavy = [s for s in HEAVY if s in stages]
    pts = [(s, rng.uniform(lo, 0.95)) for s in stages]
    pts += [(heavy[i % len(heavy)], rng.uniform(lo, 0.95)) for i in range(max(0, n - len(stages)))]
    if at_checkpoint: pts += [(s, CHECKPOINT) for s in TRAINING if s in stages]
    return sorted(pts, key=lambda p: (stages.index(p[0]), 1.0 if p[1] == CHECKPOINT else p[1]))


def nearly_done(path, since):
    "Whether the stage's own `progress.json` (written after `since`) shows all but its last unit done, or all done (the\n    stage writing its outputs): a run faster than the reference (warm caches) is killed then, not let finish the stage"
    try:
        if path.stat().st_mtime < since: return False
        p = json.loads(path.read_text())
    except (OSError, ValueError): return False
    return p.get('total', 0) >= 1 and p.get('done', 0) >= max(p['total'] - 1, 1)


def progress_of(run_dir, stage):
    "The stage's own progress at the kill, e.g. '12/30 requests' (from progress.json)"
    try: p = json.loads((run_dir/stage/'progress.json').read_text())
    except Exception: return ''
    return f"{p.get('done')}/{p.get('total')} {p.get('unit', '')}".strip()


def crash_chain(work, params, plan, man, log):
    "Kill at each point of `plan`, resuming after each; then resume to the end. The list of kills"
    kills, run_dir, prev = [], work/'runs'/RUN, {}
    shutil.rmtree(run_dir, ignore_errors=True)
    args = ['run', '--runs-dir', work/'runs', '--run-id', RUN, *params]
    for i, (stage, u) in enumerate(plan):
        r = Run(args, log); args = ['run', '--runs-dir', work/'runs', '--resume', RUN]
        t = r.wait_line(rf'^\[lskd run\] {stage}: (running|done already)')
        k = dict(point=i, target=stage, fraction=u if u == CHECKPOINT else round(u, 3))
        if t is None or any(re.match(rf'\[lskd run\] {stage}: done already', l) for _, l in r.lines):
            k.update(killed=False, why=f'{stage} was done already'); r.finish(); kills.append(k); continue
        if u == CHECKPOINT:                      # the moment a new checkpoint is in place
            ckpts = lambda: {p for p in (run_dir/stage).glob('**/checkpoints/step-*') if p.is_dir()}
            before = ckpts()
            while not ckpts() - before and r.proc.poll() is None and r.stage() == stage: time.sleep(0.01)
        else:                                    # a resumed stage goes on from where it was: wait for the rest of the way to u
            delay = max(0.0, u - prev.get(stage, 0.0))*man['stages'][stage]['seconds']; prev[stage] = u
            while (time.monotonic() - t < delay and r.proc.poll() is None and r.stage() == stage
                   and not nearly_done(run_dir/stage/'progress.json', r.started)): time.sleep(0.02)
            k['when'] = 'time' if time.monotonic() - t >= delay else 'nearly done'
        k.update(stage=r.stage(), seconds_in=round(time.monotonic() - t, 1))
        if r.proc.poll() is not None: k.update(killed=False, why=f'the run ended (rc {r.proc.returncode})')
        else:
            k['stage'] = r.stage(); k['progress'] = progress_of(run_dir, k['stage'] or stage)
            k.update(killed=True, processes=r.kill(), time=time.time())
            k['checkpoints'] = len(list((run_dir/(k['stage'] or stage)).glob('**/checkpoints/step-*')))   # training to resume from
        kills.append(k); print(f"  kill {i}: {k}", flush=True)
    r = Run(['run', '--runs-dir', work/'runs', '--resume', RUN], log)
    if rc := r.finish(): sys.exit(f'the final resume failed (rc {rc}); see {log.name}')
    shutil.rmtree(work/'crash', ignore_errors=True); shutil.move(run_dir, work/'crash')
    return kills


def drop_wall(x, dropped, path=''):
    "`x` without the keys of WALL_KEYS (recording which were dropped)"
    if isinstance(x, dict):
        out = {}
        for k, v in x.items():
            if k in WALL_KEYS | RESUME_KEYS: dropped.add(k); continue
            out[k] = drop_wall(v, dropped)
        return out
    if isinstance(x, list): return [drop_wall(v, dropped) for v in x]
    return x


def parsed(name, data):
    "What a file holds, for comparing without wall times: JSON, JSONL lines, or a safetensors header + its tensor bytes"
    try:
        if name.endswith('.json'): return json.loads(data)
        if name.endswith('.jsonl'): return [json.loads(l) for l in data.splitlines() if l.strip()]
        if name.endswith('.safetensors'):
            n = int.from_bytes(data[:8], 'little'); h = json.loads(data[8:8+n])
            meta = {k: _maybe_json(v) for k, v in h.pop('__metadata__', {}).items()}
            return dict(header=h, metadata=meta, tensors=data[8+n:].hex())
    except ValueError: return None
    return None


def _maybe_json(v):
    try: return json.loads(v)
    except ValueError: return v


def replies(path):
    "The reply cache's content without timings: {key: (request, reply)}"
    if not path.exists(): return {}
    db = sqlite3.connect(f'file:{path}?mode=ro', uri=True)
    try: return {k: (q, json.loads(a)['choices'] if a else None) for k, q, a in db.execute('SELECT key, request, reply FROM replies')}
    finally: db.close()


def compare(a, b):
    "Compare run folders `a` and `b`: counts of files by outcome, the differing files, the wall-time keys dropped"
    fa = {p.relative_to(a).as_posix() for p in a.rglob('*') if p.is_file()}
    fb = {p.relative_to(b).as_posix() for p in b.rglob('*') if p.is_file()}
    out = dict(identical=0, identical_without_wall_times=0, logs=0, differ=[], only_in_reference=sorted(fa - fb),
               only_in_crashed=sorted(fb - fa), wall_keys={}, cache='')
    for f in sorted(fa & fb):
        if any(re.search(p, f) for p in LOGS): out['logs'] += 1; continue
        x, y = (a/f).read_bytes(), (b/f).read_bytes()
        if x == y: out['identical'] += 1; continue
        d = set()
        if (p := parsed(f, x)) is not None and drop_wall(p, d) == drop_wall(parsed(f, y), d):
            out['identical_without_wall_times'] += 1; out['wall_keys'][f] = sorted(d); continue
        out['differ'].append(f)
    for c in sorted(f for f in fa & fb if f.endswith('cache.sqlite')):
        ra, rb = replies(a/c), replies(b/c)
        out['cache'] = f'{c}: {len(ra)} vs {len(rb)} replies, ' + ('same content' if ra == rb else 'CONTENT DIFFERS')
        if ra != rb: out['differ'].append(c)
    out['only_in_reference'] = [f for f in out['only_in_reference'] if not any(re.search(p, f) for p in LOGS)]
    out['only_in_crashed'] = [f for f in out['only_in_crashed'] if not any(re.search(p, f) for p in LOGS)]
    return out


def requests(run_dir):
    "Teacher requests of a run, from its cache: sent in all, distinct, sent again after success, lost in flight"
    p = run_dir/'generate'/'cache.sqlite'
    if not p.exists(): return None
    db = sqlite3.connect(f'file:{p}?mode=ro', uri=True)
    try:
        total, distinct = db.execute('SELECT COUNT(*), COUNT(DISTINCT key) FROM sent').fetchone()
        again = db.execute('SELECT COUNT(*) FROM sent s JOIN replies r ON s.key = r.key WHERE s.time > r.created').fetchone()[0]
        stored = db.execute('SELECT COUNT(*) FROM replies').fetchone()[0]
    finally: db.close()
    return dict(sent=total, distinct=distinct, replies=stored, sent_again_after_success=again,
                lost_in_flight=total - distinct - again)


def rows(path):
    ls = [json.loads(l) for l in path.read_text().splitlines() if l.strip()] if path.exists() else []
    ids = [json.dumps(r.get('id', r), sort_keys=True) for r in ls]
    return dict(rows=len(ls), duplicates=len(ids) - len(set(ids)))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('work', type=Path, help='a scratch folder (runs, logs and the report go there)')
    ap.add_argument('--kills', type=int, default=12, help='kill points in all (at least one per stage)')
    ap.add_argument('--seed', type=int, default=0, help='seeds the kill plan')
    ap.add_argument('--min-fraction', type=float, default=0.05,
                    help="earliest kill, as a fraction of the reference's stage time (a stage's first ~8 s are its kernel starting)")
    ap.add_argument('--at-checkpoint', action='store_true', help='also kill each training stage as it writes a new checkpoint')
    ap.add_argument('--twice', action='store_true', help='two reference runs, which must be identical too')
    ap.add_argument('--stages', help='the stages to run (lskd run --stages; default: all)')
    ap.add_argument('-p', '--param', action='append', default=[], help='key=value for every lskd run')
    a = ap.parse_args(argv)
    work = a.work.resolve(); work.mkdir(parents=True, exist_ok=True)
    params = [x for p in a.param for x in ('-p', p)] + (['--stages', a.stages] if a.stages else [])
    log = open(work/'runs.log', 'w'); t0 = time.time()
    man = reference(work, params, 'reference', log)
    print('reference run: ' + ', '.join(f"{s} {v['seconds']} s" for s, v in man['stages'].items()), flush=True)
    rep = dict(params=a.param, stages=a.stages, seed=a.seed, min_fraction=a.min_fraction, reference_seconds={s: v['seconds'] for s, v in man['stages'].items()})
    if a.twice:
        reference(work, params, 'reference2', log)
        rep['reference_vs_reference2'] = compare(work/'reference', work/'reference2')
    plan = kill_plan(man, a.kills, random.Random(a.seed), a.min_fraction, a.at_checkpoint)
    rep['kills'] = crash_chain(work, params, plan, man, log)
    rep['files'] = compare(work/'reference', work/'crash')
    rep['requests'] = dict(reference=requests(work/'reference'), crashed=requests(work/'crash'))
    rep['corpus'] = dict(reference=rows(work/'reference'/'generate'/'corpus.jsonl'), crashed=rows(work/'crash'/'generate'/'corpus.jsonl'))
    rep['seconds'] = round(time.time() - t0)
    done = [k for k in rep['kills'] if k['killed']]
    per = {s: sum(k['stage'] == s for k in done) for s in STAGES}
    rep['killed_per_stage'] = per
    fails = []
    for name in ['reference_vs_reference2', 'files']:
        c = rep.get(name)
        if c and (c['differ'] or c['only_in_reference'] or c['only_in_crashed']): fails.append(f'{name}: files differ')
    q = rep['requests']['crashed']
    if q and q['sent_again_after_success']: fails.append(f"{q['sent_again_after_success']} requests sent again after success")
    if q and rep['requests']['reference'] and q['distinct'] != rep['requests']['reference']['distinct']: fails.append('other requests than the reference')
    if rep['corpus']['crashed']['duplicates']: fails.append('duplicated corpus rows')
    rep['failures'] = fails
    (work/'crash_report.json').write_text(json.dumps(rep, indent=1))
    f = rep['files']
    print(f"\nkills: {len(done)} of {len(plan)} points, per stage: {per}")
    print(f"files: {f['identical']} identical, {f['identical_without_wall_times']} identical without wall times "
          f"({sorted({k for v in f['wall_keys'].values() for k in v})}), {f['logs']} logs not compared; "
          f"differ: {f['differ']}; only in reference: {f['only_in_reference']}; only in crashed: {f['only_in_crashed']}")
    print(f"cache: {f['cache']}")
    print(f"requests: reference {rep['requests']['reference']}; crashed {q}")
    print(f"corpus: {rep['corpus']}")
    if 'reference_vs_reference2' in rep: r2 = rep['reference_vs_reference2']; print(f"reference vs reference2: {r2['identical']} identical, {r2['identical_without_wall_times']} without wall times, differ {r2['differ']}")
    print(f"{rep['seconds']} s in all; report: {work/'crash_report.json'}")
    print('FAIL: ' + '; '.join(fails) if fails else 'OK: the crashed run equals the uninterrupted one')
    return 1 if fails else 0


if __name__ == '__main__':
    sys.exit(main())
