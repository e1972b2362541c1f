"Shared pytest configuration for lskd's tests"
import os
import pytest

def pytest_addoption(parser):
    parser.addoption('--slow', action='store_true', default=False, help='also run the tests marked slow (or set LSKD_SLOW=1)')

def pytest_configure(config):
    # `server`: starts a real llama.cpp server (and fetches a small model); runs by default, deselect with -m "not server"
    config.addinivalue_line('markers', 'server: end-to-end test with a real local teacher LLM server')
    # `slow`: minutes to an hour (the full crash test); skipped unless `--slow` or LSKD_SLOW=1
    config.addinivalue_line('markers', 'slow: long test, skipped unless --slow or LSKD_SLOW=1')
    # `browser`: JupyterLab + headless Chromium (tests/test_browser.py); runs by default, skipped where no browser is installed
    config.addinivalue_line('markers', 'browser: widgets driven in a real JupyterLab by headless Chromium')

def pytest_collection_modifyitems(config, items):
    if config.getoption('--slow') or os.environ.get('LSKD_SLOW') == '1': return
    skip = pytest.mark.skip(reason='slow: run with --slow or LSKD_SLOW=1')
    for it in items:
        if 'slow' in it.keywords: it.add_marker(skip)
