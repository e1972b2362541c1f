"""The package's layers: every import in `lskd/` goes down (or stays inside its own subpackage), and no import cycle.

Run alone to see the graph: `python tests/test_layers.py` prints each subpackage with its line count and what it imports.
"""
import ast
from collections import defaultdict
from pathlib import Path

PKG = Path(__file__).resolve().parents[1]/'lskd'
LAYERS = {'io': 0, 'data': 1, 'models': 2, 'teacher': 2, 'stages': 3, 'app': 4, 'testing': 5}   # a layer imports only lower ones


def modules():
    "`{dotted name: path}` of every module of the package (the generated index `_modidx` aside)"
    out = {}
    for p in sorted(PKG.rglob('*.py')):
        if p.name == '_modidx.py': continue
        parts = p.relative_to(PKG.parent).with_suffix('').parts
        out['.'.join(parts[:-1] if parts[-1] == '__init__' else parts)] = p
    return out


def imports(name, path):
    "The lskd modules `name` imports, anywhere in the file (imports inside functions count): `[(module, line)]`"
    pkg = name if path.name == '__init__.py' else name.rpartition('.')[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import): out += [(a.name, node.lineno) for a in node.names if a.name.split('.')[0] == 'lskd']
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split('.'); base = base[:len(base) - node.level + 1]
                mod = '.'.join(base + ([node.module] if node.module else []))
            else: mod = node.module or ''
            if mod.split('.')[0] != 'lskd': continue
            mods = modules()
            out += [(f'{mod}.{a.name}' if f'{mod}.{a.name}' in mods else mod, node.lineno) for a in node.names]
    return out


def layer(mod):
    "`(subpackage, layer)` of a dotted module name (`lskd` itself: the bottom)"
    sub = mod.split('.')[1] if mod.count('.') else ''
    return sub, LAYERS.get(sub, -1)


def graph():
    mods = modules()
    return {m: sorted({i for i,_ in imports(m, p) if i != m and i in mods}) for m,p in mods.items()}, mods


def violations():
    "Imports that go up a layer or across to a sibling subpackage of the same layer"
    g, mods = graph(); bad = []
    for m,p in mods.items():
        (sm, lm) = layer(m)
        for i, line in imports(m, p):
            (si, li) = layer(i)
            if si == sm or i == 'lskd' or li < lm: continue
            bad.append(f"{p.relative_to(PKG.parent)}:{line}: {m} (layer {lm}, {sm}) imports {i} (layer {li}, {si})")
    return bad


def cycles():
    "Each import cycle among modules, once"
    g, _ = graph(); found, state = [], {}
    def visit(m, stack):
        state[m] = 1; stack.append(m)
        for n in g.get(m, []):
            if state.get(n) == 1: found.append(stack[stack.index(n):] + [n])
            elif not state.get(n): visit(n, stack)
        stack.pop(); state[m] = 2
    for m in g:
        if not state.get(m): visit(m, [])
    return found


def summary():
    "Lines per subpackage, and the subpackages each imports"
    g, mods = graph(); lines, deps = defaultdict(int), defaultdict(set)
    for m,p in mods.items():
        s = layer(m)[0] or 'lskd'
        lines[s] += len(p.read_text().splitlines())
        deps[s] |= {layer(i)[0] for i in g[m]} - {s, ''}
    return '\n'.join(f"lskd/{s:<8} layer {LAYERS.get(s, '-')}  {lines[s]:>6} lines  imports: {', '.join(sorted(deps[s], key=lambda x: LAYERS.get(x, 9))) or '-'}"
                     for s in sorted(lines, key=lambda x: LAYERS.get(x, -1)))


def test_layers_only_import_down():
    bad = violations()
    assert not bad, 'imports that go up or across a layer:\n' + '\n'.join(bad)


def test_no_import_cycles():
    cs = cycles()
    assert not cs, 'import cycles:\n' + '\n'.join(' -> '.join(c) for c in cs)


def test_stages_never_import_each_other():
    "A stage reads the other stages' output files, never their functions"
    g, _ = graph()
    bad = [f'{m} imports {i}' for m in g if m.startswith('lskd.stages.') for i in g[m] if i.startswith('lskd.stages.')]
    assert not bad, bad


def test_every_module_in_a_layer():
    assert not [m for m in modules() if m != 'lskd' and layer(m)[1] < 0], 'a module outside the layers: add it to LAYERS'


def test_checker_sees_violations(tmp_path, monkeypatch):
    "The checks fail on an upward import and on a cycle (a fake package with both)"
    for f,s in {'__init__.py': '', 'io/__init__.py': '', 'io/a.py': 'from ..app import b\n', 'app/__init__.py': '',
                'app/b.py': 'from lskd.io import a\n'}.items():
        (tmp_path/'lskd'/f).parent.mkdir(parents=True, exist_ok=True); (tmp_path/'lskd'/f).write_text(s)
    monkeypatch.setattr(__import__(__name__), 'PKG', tmp_path/'lskd')
    assert any('lskd.io.a (layer 0, io) imports lskd.app.b' in v for v in violations())
    assert [set(c) for c in cycles()] == [{'lskd.io.a', 'lskd.app.b'}]


if __name__ == '__main__':
    print(summary())
    for v in violations(): print('VIOLATION', v)
    for c in cycles(): print('CYCLE', ' -> '.join(c))
