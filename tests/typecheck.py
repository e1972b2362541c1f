"""Type-check `lskd/` with mypy (settings: `[tool.mypy]` in pyproject.toml) and say what is left.

`python tests/typecheck.py` prints every error and exits 1 if there is one; `tests/test_types.py` runs the same check.

mypy cannot see fastcore's `@patch`, the notebooks' way of adding a method beside its explanation: it reads
`@patch def to_dict(self:Region)` as a module-level function (redefined in every notebook that patches a `to_dict`),
so it reports `"Region" has no attribute "to_dict"` at each call. Those reports, and only those, are dropped here:
the method names and the classes come from the `@patch` definitions in the source (an `ast` walk), and an error is
dropped only when its class and name match such a definition (or the class inherits from one that matches).
Every other error stays, and fails the check.
"""
import ast, re, sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_ERROR = re.compile(r'^(?P<path>[^:]+):(?P<line>\d+):(?P<col>\d+): error: (?P<msg>.*?)(?:  \[(?P<code>[a-z-]+)\])?$')


def _names(ann):
    "The class names an annotation names: `A`, `'A'`, `A|B`, `(A,B)`"
    if ann is None: return []
    if isinstance(ann, ast.Constant) and isinstance(ann.value, str): return _names(ast.parse(ann.value, mode='eval').body)
    if isinstance(ann, ast.Name): return [ann.id]
    if isinstance(ann, ast.Attribute): return [ann.attr]
    if isinstance(ann, ast.BinOp): return _names(ann.left) + _names(ann.right)
    if isinstance(ann, ast.Tuple): return [n for e in ann.elts for n in _names(e)]
    return []


def _is_patch(d):
    f = d.func if isinstance(d, ast.Call) else d
    return isinstance(f, ast.Name) and f.id == 'patch'


def patched(pkg):
    "`(methods, spans, bases)`: `{class: {method}}` added by `@patch` in `pkg`, `{path: [(first, last line)]}` of those definitions, `{class: [base classes]}`"
    methods, spans, bases = defaultdict(set), defaultdict(list), defaultdict(list)
    for p in sorted(Path(pkg).rglob('*.py')):
        tree = ast.parse(p.read_text())
        for n in ast.walk(tree):
            if isinstance(n, ast.ClassDef): bases[n.name] += [b for e in n.bases for b in _names(e)]
            if not isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) or not any(map(_is_patch, n.decorator_list)): continue
            args = n.args.posonlyargs + n.args.args
            for c in _names(args[0].annotation if args else None): methods[c].add(n.name)
            spans[str(p.relative_to(Path(pkg).parent))].append((n.lineno - len(n.decorator_list), n.end_lineno))
    return methods, spans, bases


def _has(methods, bases, cls, name, seen=()):
    if name in methods.get(cls, ()): return True
    return any(_has(methods, bases, b, name, seen + (cls,)) for b in bases.get(cls, ()) if b not in seen)


def explained_by_patch(err, methods, spans, bases, root=ROOT):
    "Whether the mypy error `err` (a match of `_ERROR`) is one that fastcore's `@patch` explains"
    msg, code, path, line = err['msg'], err['code'], err['path'], int(err['line'])   # mypy's line and column count from 1
    every = {m for ms in methods.values() for m in ms}
    if code == 'attr-defined':
        m = re.match(r'"(?:type\[)?(\w+)\]?" has no attribute "(\w+)"', msg)
        return bool(m) and _has(methods, bases, m[1], m[2])
    if code == 'union-attr':   # `x.get()` where `x: ReplyCache|NoCache` and `ReplyCache.get` is a @patch method
        m = re.match(r'Item "(\w+)" of "[^"]*" has no attribute "(\w+)"', msg)
        return bool(m) and _has(methods, bases, m[1], m[2])
    if code == 'no-redef':     # the module-level name each @patch leaves behind
        m = re.match(r'Name "(\w+)" already defined', msg)
        return bool(m) and m[1] in every and any(a <= line <= b for a, b in spans.get(path, ()))
    if code == 'operator':
        m = re.match(r'"(\w+)" not callable', msg)
        if not m: return False
        # `cls(...)` in a `@patch(cls_method=True)`: `cls:Region` names the class, mypy reads an instance
        if m[1] in methods and any(a <= line <= b for a, b in spans.get(path, ())): return True
        if _has(methods, bases, m[1], '__call__'): return True       # `graph(x)` where `__call__` is a @patch method
        # `module.patched_method(...)` on an `nn.Module`: its `__getattr__` makes the unseen method a `Tensor | Module`
        if m[1] == 'Tensor':
            src = ((Path(root)/path).read_text().splitlines() + [''])[line - 1][int(err['col']) - 1:]
            call = re.match(r"(?:\w+(?:\([^()]*\))?\.)+?(\w+)\(", src)   # the first call: `a.b.m(`, `f(x).m(`
            return bool(call) and call[1] in every
    return False


def _public(n): return not n.startswith('_') or n in ('__init__', '__call__')


def unannotated(paths=('lskd',)):
    "`path:line name [what lacks a hint]` for every public function of `paths` (in a module's `__all__`, a public method of a class in it, or a `@patch` method) with a parameter or return left without a type hint"
    out = []
    files = [f for p in map(Path, paths) for f in (sorted(p.rglob('*.py')) if p.is_dir() else [p])]
    for f in files:
        if f.name.startswith('_') and f.name != '__init__.py': continue
        tree = ast.parse(f.read_text())
        alls = set()
        for n in tree.body:
            if isinstance(n, ast.Assign) and any(getattr(t, 'id', None) == '__all__' for t in n.targets): alls = {e.value for e in n.value.elts}
        def lacks(fn, name):
            a = fn.args
            bad = [p.arg for p in a.posonlyargs + a.args + a.kwonlyargs if p.annotation is None and p.arg not in ('self', 'cls')]
            bad += [pre + v.arg for pre, v in (('*', a.vararg), ('**', a.kwarg)) if v is not None and v.annotation is None]
            if fn.returns is None and fn.name != '__init__': bad.append('return')
            if bad: out.append(f'{f}:{fn.lineno} {name} {bad}')
        for n in tree.body:
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and (n.name in alls or any(map(_is_patch, n.decorator_list))): lacks(n, n.name)
            elif isinstance(n, ast.ClassDef) and n.name in alls:
                for m in n.body:
                    if isinstance(m, (ast.FunctionDef, ast.AsyncFunctionDef)) and _public(m.name): lacks(m, f'{n.name}.{m.name}')
    return out


def run_mypy(paths=('lskd',), cwd=ROOT):
    "mypy's report lines for `paths` (settings from `cwd`'s pyproject.toml)"
    from mypy import api
    import os
    old = os.getcwd(); os.chdir(cwd)
    try: out, err, _ = api.run(['--no-error-summary', '--no-pretty', '--show-column-numbers', *map(str, paths)])
    finally: os.chdir(old)
    if err.strip(): raise RuntimeError(f'mypy failed to run: {err}')
    return out.splitlines()


def check(paths=('lskd',), pkg=None, cwd=ROOT):
    "`(left, dropped)`: the mypy errors on `paths` that `@patch` does not explain, and how many it does"
    methods, spans, bases = patched(pkg or Path(cwd)/'lskd')
    left, dropped = [], 0
    for line in run_mypy(paths, cwd):
        m = _ERROR.match(line)
        if not m: left += [line] if ': note:' not in line else []; continue
        if explained_by_patch(m, methods, spans, bases, cwd): dropped += 1
        else: left.append(line)
    return left, dropped


if __name__ == '__main__':
    args = sys.argv[1:]
    if args[:1] == ['--hints']:    # only the type-hint check (fast: no mypy)
        miss = unannotated(args[1:] or ('lskd',)); print('\n'.join(miss)); print(f'{len(miss)} public functions lack type hints'); sys.exit(1 if miss else 0)
    left, dropped = check(args or ('lskd',))
    print('\n'.join(left))
    print(f'{len(left)} errors ({dropped} reports about @patch methods dropped)')
    sys.exit(1 if left else 0)
