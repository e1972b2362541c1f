"The lskd console script"
import subprocess, sys, shutil
from pathlib import Path
import pytest

def lskd(*args):
    exe = shutil.which('lskd', path=str(Path(sys.executable).parent)) or shutil.which('lskd') or pytest.fail('the lskd console script is not installed (pip install -e .)')
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=120)

def test_help_lists_commands():
    r = lskd('--help')
    assert r.returncode == 0
    for cmd in ('fetch-models', 'serve-teacher', 'verbalize', 'generate', 'critic', 'distill', 'evaluate', 'run'):
        assert cmd in r.stdout

def test_unknown_command_is_a_usage_error():
    r = lskd('frobnicate')
    assert r.returncode == 2 and "unknown command 'frobnicate'" in r.stderr and 'Traceback' not in r.stderr
