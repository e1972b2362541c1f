"""The widgets in a real JupyterLab, driven by headless Chromium: what a person sees change.

JupyterLab runs on a free loopback port with a random token, in a temporary folder holding a tiny run
(`lskd.stages.inspect.demo_run`), a photo that is not part of it, and three notebooks a user would write: the
inspector, point-and-ask (selecting the run's regions, and drawing boxes on the photo), and labelling.
Each is run from the page (command palette, "Run All Cells"); then the test clicks, drags and types as a
person would and checks what changes on the page and on disk. Screenshots go to
`$LSKD_TEST_OUTPUTS/browser` (default `tests/_outputs/browser`). The server is stopped in every case.

Needs Debian's chromium and Playwright (`.ci/setup` installs both); without them the module is skipped,
unless LSKD_BROWSER_REQUIRED=1 (set by `.ci/run`), which makes a missing browser a failure.
"""
import json, os, secrets, shutil, signal, socket, subprocess, sys, time, urllib.request
from pathlib import Path
import pytest

pytestmark = pytest.mark.browser
REPO = Path(__file__).resolve().parent.parent
OUT = Path(os.environ.get('LSKD_TEST_OUTPUTS', REPO/'tests'/'_outputs'))/'browser'

def chromium():
    "The browser binary: $LSKD_CHROMIUM, Debian's chromium, or None"
    for c in (os.environ.get('LSKD_CHROMIUM'), '/usr/lib/chromium/chromium', shutil.which('chromium')):
        if c and Path(c).exists(): return c

def _require():
    why = None
    try: import playwright.sync_api  # noqa: F401
    except ImportError: why = 'playwright is not installed (pip install playwright)'
    if why is None and chromium() is None: why = "no chromium (apt-get install chromium, or set LSKD_CHROMIUM)"
    if why and os.environ.get('LSKD_BROWSER_REQUIRED') == '1': pytest.fail(why)
    if why: pytest.skip(why)

SETUP = "from lskd.stages.inspect import *\nfrom lskd.stages.evaluate import OverlapScorer\nrv = RunView('run')"
NOTEBOOKS = {
    'inspect.ipynb': [SETUP, "Inspector(rv)"],
    'point.ipynb': [SETUP, "PointAndAsk(OverlapScorer(), rv)", "DrawAndAsk(OverlapScorer(), 'photo.jpg')"],
    'label.ipynb': ["from lskd.stages.critic import LabelSession, label_widget\nfrom lskd.io.jsonl import read_jsonl\nfrom lskd.data.records import QAR\n"
                    "corpus = list(read_jsonl('run/critic/scored.jsonl', QAR))",
                    "label_widget(LabelSession(corpus, 'labels.jsonl', 'browser', root='run/verbalize/images'))"],
    'aspect.ipynb': [SETUP.replace("RunView('run')", "RunView('longrun')") + "\nfrom lskd.stages.critic import LabelSession, label_widget\n"
                     "from lskd.io.jsonl import read_jsonl\nfrom lskd.data.records import QAR",
                     "Inspector(rv)", "PointAndAsk(OverlapScorer(), rv)", "DrawAndAsk(OverlapScorer(), 'photo.jpg')",
                     "label_widget(LabelSession(list(read_jsonl('longrun/critic/scored.jsonl', QAR)), 'long_labels.jsonl', 'browser', root='longrun/verbalize/images'))"],
}

def long_run(run, dest):
    "A copy of the demo run whose first image has 30 more triples, the first of them with a long rationale: long lists beside the photos"
    shutil.copytree(run, dest)
    f = dest/'critic'/'scored.jsonl'; rows = f.read_text().splitlines(); q = json.loads(rows[0])
    long = [json.dumps({**q, 'id': f'long-{i}', 'question': f"{q['question']} (variant {i} of a question asked again and again)",
                        'rationale': q['rationale'] + ' And so on.'*(60 if i == 0 else 1)}) for i in range(30)]
    f.write_text('\n'.join(long[:1] + rows + long[1:]) + '\n')

def write_notebooks(root):
    import nbformat, matplotlib.cbook
    from lskd.stages.inspect import demo_run
    demo_run(root/'run'); long_run(root/'run', root/'longrun')
    shutil.copy(matplotlib.cbook.get_sample_data('grace_hopper.jpg', asfileobj=False), root/'photo.jpg')
    for name, cells in NOTEBOOKS.items():
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
        nb.metadata['kernelspec'] = {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'}
        nbformat.write(nb, str(root/name))

def free_port():
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

@pytest.fixture(scope='module')
def lab(tmp_path_factory):
    "(base url, token, folder) of a JupyterLab serving a temporary folder; stopped, with its kernels, in every case"
    _require()
    root = tmp_path_factory.mktemp('lab'); write_notebooks(root)
    port, token = free_port(), secrets.token_hex(16)
    settings = root/'_lab'/'settings'                      # every cell rendered (no windowing), no news pop-up
    for ext, val in [('notebook-extension/tracker', {'windowingMode': 'none'}), ('apputils-extension/notification', {'fetchNews': 'false'})]:
        f = settings/'@jupyterlab'/f'{ext}.jupyterlab-settings'; f.parent.mkdir(parents=True, exist_ok=True); f.write_text(json.dumps(val))
    env = {**os.environ, 'JUPYTERLAB_SETTINGS_DIR': str(settings), 'JUPYTERLAB_WORKSPACES_DIR': str(root/'_lab'/'workspaces')}
    log = open(root/'jupyterlab.log', 'w')
    proc = subprocess.Popen([sys.executable, '-m', 'jupyter', 'lab', '--no-browser', f'--port={port}', '--ServerApp.ip=127.0.0.1',
                             f'--ServerApp.token={token}', f'--ServerApp.root_dir={root}', '--allow-root',
                             '--LabApp.news_url=', '--ServerApp.port_retries=0'],
                            cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url, t0 = f'http://127.0.0.1:{port}', time.monotonic()
        while True:
            try:
                with urllib.request.urlopen(f'{url}/api/status?token={token}', timeout=5) as r:
                    if r.status == 200: break
            except OSError: pass
            if proc.poll() is not None or time.monotonic() - t0 > 180:
                pytest.fail(f'JupyterLab did not start: {(root/"jupyterlab.log").read_text()[-2000:]}')
            time.sleep(0.5)
        yield url, token, root
    finally:
        try: os.killpg(proc.pid, signal.SIGTERM); proc.wait(20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try: os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError: pass
        log.close()

@pytest.fixture(scope='module')
def browser(lab):
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium(), args=['--no-sandbox', '--disable-gpu'])
        try: yield b
        finally: b.close()

def wait_for(cond, timeout=60, what='the page to change'):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if v := cond(): return v
        time.sleep(0.25)
    pytest.fail(f'timed out after {timeout} s waiting for {what}')

def open_and_run(browser, lab, name):
    "A page with notebook `name` open and all its cells run"
    url, token, root = lab
    page = browser.new_page(viewport={'width': 1400, 'height': 1400})
    page.goto(f'{url}/lab/workspaces/{Path(name).stem}/tree/{name}?reset&token={token}')     # a workspace of its own
    page.wait_for_selector('.jp-Notebook .jp-Cell', timeout=120_000)
    n = len(NOTEBOOKS[name])
    prompts = lambda: [t.strip() for t in page.locator('.jp-CodeCell .jp-InputPrompt').all_inner_texts()]
    def done(): ps = prompts(); return len(ps) == n and all(p not in ('[*]:', '[ ]:', '') for p in ps)
    for attempt in range(6):                     # the kernel may still be starting: run all again until the cells run
        page.wait_for_function("() => document.body.innerText.includes('| Idle')", timeout=120_000)
        page.locator('.lm-MenuBar-itemLabel', has_text='Run').first.click()
        page.locator('.lm-Menu-itemLabel', has_text='Run All Cells').first.click()
        try: wait_for(lambda: prompts() != ['[ ]:']*n, 20, 'the cells to start'); break
        except BaseException: page.keyboard.press('Escape')
    try: wait_for(done, 180, f'the cells of {name} to run')
    except BaseException:
        shot(page, f'{Path(name).stem}-not-run.png'); raise
    errs = page.locator('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]').all_inner_texts()
    assert not any('Error' in e or 'Traceback' in e for e in errs), errs
    assert 'Error displaying widget' not in page.content()
    return page

def shot(el, name):
    OUT.mkdir(parents=True, exist_ok=True); el.screenshot(path=str(OUT/name)); return OUT/name

def test_inspector_redraws_the_image_after_a_toggle(browser, lab):
    page = open_and_run(browser, lab, 'inspect.ipynb')
    w = page.locator('.lskd-inspector'); w.wait_for(timeout=60_000)
    img = w.locator('img').first; img.wait_for()
    before_src, before = img.get_attribute('src'), shot(w, 'inspector-before.png').read_bytes()
    boxes = w.locator('input[type=checkbox]'); assert boxes.count() == 3      # one per region of the run's image
    boxes.first.click()
    wait_for(lambda: img.get_attribute('src') != before_src, 30, 'the image to be redrawn')
    assert shot(w, 'inspector-after-toggle.png').read_bytes() != before
    page.close()

def _ask(w, question, answers):
    w.locator('input[type=text]').first.fill(question)
    w.locator('textarea').first.fill('\n'.join(answers))
    w.get_by_role('button', name='Rank').click()

def test_point_and_ask_ranks_after_rank(browser, lab):
    page = open_and_run(browser, lab, 'point.ipynb')
    w = page.locator('.lskd-point-and-ask'); w.wait_for(timeout=60_000)
    w.get_by_role('button', name='[2] medals').click(); w.get_by_role('button', name='[0] person').click()
    _ask(w, 'Why does [0] wear [2]?', ['the cat is asleep', '[0] was awarded [2] for service'])
    table = w.locator('table'); table.wait_for(timeout=30_000)
    rows = table.locator('tr').all_inner_texts()
    assert 'ITM' in rows[0] and len(rows) == 3 and 'was awarded' in rows[1], rows
    shot(w, 'point-and-ask-ranked.png')
    page.close()

def test_a_box_drawn_with_the_mouse_becomes_region_0(browser, lab):
    page = open_and_run(browser, lab, 'point.ipynb')
    w = page.locator('.lskd-draw-and-ask'); w.wait_for(timeout=60_000)
    assert 'draw a box on the photo' in w.inner_text()
    img = w.locator('img[alt="annotate me"]'); img.wait_for(); img.scroll_into_view_if_needed(); b = img.bounding_box()
    nat_w = page.evaluate('(el) => el.naturalWidth', img.element_handle())
    x0, y0, x1, y1 = b['x'] + 0.2*b['width'], b['y'] + 0.1*b['height'], b['x'] + 0.8*b['width'], b['y'] + 0.9*b['height']
    page.mouse.move(x0, y0); page.mouse.down(); page.mouse.move(x1, y1, steps=8); page.mouse.up()
    try: wait_for(lambda: '1 regions' in w.inner_text(), 30, 'the drawn box to be listed as a region')
    except BaseException: shot(page, 'draw-and-ask-not-drawn.png'); raise
    item = w.locator('li').first.inner_text()
    assert item.startswith('[0]'), item
    box = [float(v) for v in item[item.index('(') + 1:item.index(')')].split(',')]
    s = nat_w/b['width']                                   # the widget reports boxes in the image's own pixels
    for got, want in zip(box, [0.2*b['width']*s, 0.1*b['height']*s, 0.8*b['width']*s, 0.9*b['height']*s]):
        assert abs(got - want) <= 0.03*nat_w, (box, s)
    _ask(w, 'What is [0] wearing?', ['the sky is green', '[0] is wearing a uniform'])
    table = w.locator('table.lskd-ranking'); table.wait_for(timeout=30_000)
    rows = table.locator('tr').all_inner_texts()
    assert len(rows) == 3 and '[0] is wearing a uniform' in rows[1], rows
    shot(w, 'draw-and-ask-ranked.png')
    page.close()

def test_labelling_appends_a_line_per_key_press_and_click(browser, lab):
    url, token, root = lab
    labels = root/'labels.jsonl'
    page = open_and_run(browser, lab, 'label.ipynb')
    w = page.locator('.lskd-label'); w.wait_for(timeout=60_000)
    shot(w, 'label-first-triple.png')
    rect = w.locator('svg rect.movable').first; rect.wait_for(); rect.scroll_into_view_if_needed(); r = rect.bounding_box()
    img = w.locator('img[alt="annotate me"]')
    scale = page.evaluate('(el) => el.naturalWidth', img.element_handle())/img.bounding_box()['width']
    page.mouse.move(r['x'] + r['width']/2, r['y'] + r['height']/2); page.mouse.down()
    page.mouse.move(r['x'] + r['width']/2 + 30, r['y'] + r['height']/2, steps=6); page.mouse.up()   # move region [0] 30 px right
    w.locator('input[type=text]').first.click(); page.keyboard.type('a')                            # accept by key
    wait_for(lambda: labels.exists() and len(labels.read_text().splitlines()) == 1, 30, 'a label line after the key press')
    first = json.loads(labels.read_text().splitlines()[0])
    assert first['accept'] is True and first['annotator'] == 'browser'
    from lskd.stages.inspect import RunView
    orig = RunView(root/'run').qars[0].regions[0].box
    assert set(first.get('boxes', {})) == {'0'}, first
    assert abs(first['boxes']['0'][0] - (orig[0] + 30*scale)) <= 3*scale and first['boxes']['0'][1] == pytest.approx(orig[1], abs=1), (first, orig)
    w.get_by_role('button', name='reject (r)').click()                                              # reject by click
    wait_for(lambda: len(labels.read_text().splitlines()) == 2, 30, 'a second label line after the click')
    second = json.loads(labels.read_text().splitlines()[1])
    assert second['accept'] is False and 'boxes' not in second and second['key'] != first['key']
    shot(w, 'label-after-two.png')
    page.close()


def _ratios(page, img):
    "`(the photo's width/height, the drawn image's width/height)` of an <img>"
    img.wait_for(); img.scroll_into_view_if_needed()
    w, h = page.evaluate('(el) => [el.naturalWidth, el.naturalHeight]', img.element_handle()); b = img.bounding_box()
    return w/h, b['width']/b['height']

def test_photos_keep_their_aspect_ratio_beside_long_lists(browser, lab):
    "Each widget that shows a photo beside text, on a run whose image has 33 triples (one with a long rationale) and after ranking 30 answers"
    page = open_and_run(browser, lab, 'aspect.ipynb')
    got = {}
    for cls in ('.lskd-point-and-ask', '.lskd-draw-and-ask'):                  # a long ranking table beside the photo
        w = page.locator(cls); w.wait_for(timeout=60_000)
        if cls == '.lskd-point-and-ask': w.get_by_role('button', name='[0] person').click()
        else:
            img = w.locator('img[alt="annotate me"]'); img.wait_for(); img.scroll_into_view_if_needed(); b = img.bounding_box()
            page.mouse.move(b['x'] + 0.3*b['width'], b['y'] + 0.2*b['height']); page.mouse.down()
            page.mouse.move(b['x'] + 0.6*b['width'], b['y'] + 0.7*b['height'], steps=6); page.mouse.up()
            wait_for(lambda: '1 regions' in w.inner_text(), 30, 'the drawn box')
        _ask(w, 'Why is [0] here?', [f'[0] is here for reason number {i}, which takes a while to explain' for i in range(30)])
        w.locator('table').first.wait_for(timeout=30_000)
    for cls, sel in [('.lskd-inspector', 'img'), ('.lskd-point-and-ask', 'img'), ('.lskd-draw-and-ask', 'img[alt="annotate me"]'),
                     ('.lskd-label', 'img[alt="annotate me"]')]:
        w = page.locator(cls); w.wait_for(timeout=60_000)
        got[cls] = _ratios(page, w.locator(sel).first)
        shot(w, f'aspect{cls.replace(".lskd", "")}.png')
    page.close()
    bad = {k: v for k,v in got.items() if abs(v[1]/v[0] - 1) > 0.02}
    assert not bad, f'photos drawn out of shape (photo w/h, drawn w/h): {bad}'
