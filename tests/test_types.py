"""Type hints on the public API, and mypy over `lskd/` (the checker and what it leaves out: tests/typecheck.py)."""
import textwrap
from pathlib import Path
import pytest
from typecheck import ROOT, check, unannotated


def test_every_public_function_has_type_hints():
    "every exported function, public method and `@patch` method: each parameter and the return"
    miss = unannotated([ROOT/'lskd'])
    assert not miss, f'{len(miss)} public functions lack type hints:\n' + '\n'.join(miss[:40])


def test_hint_check_finds_a_missing_hint(tmp_path):
    (tmp_path/'m.py').write_text(textwrap.dedent('''
        __all__ = ['f', 'C']
        def f(a:int, b)->int: return a
        def _private(a): return a
        class C:
            def __init__(self, n:int): self.n = n
            def get(self, k:str): return k
    '''))
    miss = unannotated([tmp_path/'m.py'])
    assert [m.split(' ', 1)[1] for m in miss] == ["f ['b']", "C.get ['return']"]


def test_mypy_is_clean():
    "mypy finds nothing in lskd/ but what fastcore's `@patch` explains"
    left, dropped = check()
    assert not left, f'{len(left)} mypy errors:\n' + '\n'.join(left[:40])
    assert dropped > 0, 'no @patch report was dropped: the filter no longer sees the notebooks\' @patch methods'


def test_mypy_check_keeps_real_errors(tmp_path):
    "the @patch filter drops the reports about patched methods, and keeps a real error beside them"
    pkg = tmp_path/'lskd'; pkg.mkdir()
    (pkg/'__init__.py').write_text('')
    (pkg/'m.py').write_text(textwrap.dedent('''
        from __future__ import annotations
        from dataclasses import dataclass
        from fastcore.basics import patch

        @dataclass
        class Box:
            w: int

        @patch
        def area(self:Box)->int: return self.w * self.w

        @patch(cls_method=True)
        def square(cls:Box, w:int)->Box: return cls(w)

        def use(b:Box)->int: return b.area() + Box.square(2).w

        def wrong(b:Box)->str: return b.w          # a real error: returns an int
        def typo(b:Box)->int: return b.height      # a real error: no such attribute
    '''))
    (tmp_path/'pyproject.toml').write_text((ROOT/'pyproject.toml').read_text())
    left, dropped = check(['lskd'], cwd=tmp_path)
    assert dropped >= 2
    assert len(left) == 2 and 'return-value' in left[0] and '"Box" has no attribute "height"' in left[1], left


def test_tensor_not_callable_is_dropped_only_at_a_patched_call(tmp_path):
    "On an `nn.Module`, mypy reports a call of an unseen @patch method as `\"Tensor\" not callable` at the call's column"
    import re
    from typecheck import _ERROR, explained_by_patch
    (tmp_path/'m.py').write_text("y = self.net.embed(x).mean(1)\ny = self.proj(x).mean(1)\n")
    methods, spans, bases = {'Net': {'embed'}}, {}, {}
    def dropped(line, col): return explained_by_patch(_ERROR.match(f'm.py:{line}:{col}: error: "Tensor" not callable  [operator]'), methods, spans, bases, tmp_path)
    assert dropped(1, 5)            # self.net.embed(...): a @patch method
    assert not dropped(2, 5)        # self.proj(...): not one, the error stays
