"""One declaration per setting: for every stage, the settings seen through its function, its command line and a run's
config section are those of one config dataclass, with the same defaults and types; values are checked by type and range.

`python tests/test_settings.py` prints, for every stage, the settings and how each is reached.
"""
import argparse, inspect
from dataclasses import fields, MISSING
import pytest
from lskd.io.config import field_types, flag, config_overrides, check_config, describe
from lskd.app.pipeline import stage_config_class, run_config, check_run_config, STAGES
from lskd.stages import verbalize, generate, critic, distill, evaluate, inspect as inspect_stage


def _sub(p, name):
    "The subcommand `name` of parser `p`"
    return next(a for a in p._actions if isinstance(a, argparse._SubParsersAction)).choices[name]

# stage: (config class, the stage's function, its command's parser (None: lskd run only), positional arguments of the command,
#         fields with no flag of their own (set in a config file, or a run's own), data arguments of the function that share a field's name)
STAGE_SETTINGS = {
    'verbalize': (verbalize.VerbalizeConfig, verbalize.verbalize, verbalize.parser, ['imgs', 'out'], verbalize.COMPONENTS, ()),
    'generate': (generate.GenerateConfig, generate.generate, generate.parser, ['v.jsonl', 'out'], generate.FILE_ONLY, ()),
    'critic': (critic.CriticConfig, critic.train_critic, lambda: _sub(critic.parser(), 'train'), ['--corpus', 'c.jsonl', '--out', 'o'],
               ('synthetic',), ('labels',)),
    'distill': (distill.DistillConfig, distill.distill, distill.parser, ['c.jsonl', 'out'], ('variants',), ()),
    'evaluate': (evaluate.EvaluateConfig, evaluate.evaluate, evaluate.parser, ['--out', 'o'], evaluate.RUN_ONLY, ()),
    'inspect': (inspect_stage.InspectConfig, None, None, [], (), ()),
}


def _default(f): return f.default if f.default is not MISSING else f.default_factory()

def test_every_stage_is_covered():
    assert set(STAGE_SETTINGS) == set(STAGES)


@pytest.mark.parametrize('stage', list(STAGE_SETTINGS))
def test_run_section_is_the_config_class(stage):
    cls = STAGE_SETTINGS[stage][0]
    assert stage_config_class(stage) is cls and cls.section == stage
    assert check_config(cls, {}, stage) == cls()                       # an empty section: the class's defaults
    assert cls.load(run_config(overrides=[])[stage]) == cls.load(run_config()[stage])


@pytest.mark.parametrize('stage', [s for s,v in STAGE_SETTINGS.items() if v[1]])
def test_function_takes_the_config_not_its_own_defaults(stage):
    cls, fn, *_, data = STAGE_SETTINGS[stage]
    ps = inspect.signature(fn).parameters
    assert 'config' in ps and any(p.kind is p.VAR_KEYWORD for p in ps.values()), f'{fn.__name__} takes config and **overrides'
    dup = [f.name for f in fields(cls) if f.name in ps and f.name not in data]
    assert not dup, f'{fn.__name__} declares settings of {cls.__name__} again: {dup}'


@pytest.mark.parametrize('stage', [s for s,v in STAGE_SETTINGS.items() if v[2]])
def test_cli_has_a_flag_per_setting_with_the_config_default(stage):
    cls, _, parser, pos, skip, _ = STAGE_SETTINGS[stage]
    p = parser(); acts = {o: a for a in p._actions for o in a.option_strings}
    for f in fields(cls):
        if f.name in skip: continue
        a = acts.get(flag(f.name))
        assert a is not None, f'lskd {stage}: no flag {flag(f.name)} for {cls.__name__}.{f.name}'
        assert a.default is None, f'lskd {stage} {flag(f.name)} has a default of its own ({a.default!r}): it must come from {cls.__name__}'
    assert cls.load(**config_overrides(p.parse_args(pos), cls, skip)) == cls()      # no flag given: the defaults


@pytest.mark.parametrize('stage', [s for s,v in STAGE_SETTINGS.items() if v[2]])
def test_cli_and_run_config_read_every_default_back_as_itself(stage):
    "Each field's default, given as text on the command line and in a run's `-p` override, reads back as the same value: the types agree"
    cls, _, parser, pos, skip, _ = STAGE_SETTINGS[stage]
    p, ts = parser(), field_types(cls)
    for f in fields(cls):
        d = _default(f)
        if f.name in skip or d is None or isinstance(d, (list, dict)): continue
        args = [flag(f.name) if d else '--no-' + flag(f.name)[2:]] if isinstance(d, bool) else [flag(f.name), str(d)]
        assert getattr(cls.load(**config_overrides(p.parse_args(pos + args), cls, skip)), f.name) == d, (stage, f.name, describe(ts[f.name]))
        if f.name not in ('seed', 'heldout', 'heldout_seed'):
            sec = check_config(cls, check_run_config(run_config(overrides=[f'{stage}.{f.name}={str(d).lower() if isinstance(d, bool) else d}']))[stage], stage)
            assert getattr(sec, f.name) == d, (stage, f.name)


@pytest.mark.parametrize('override, message', [
    ('distill.steps=ten', "distill.steps: expected an integer >= 1, got 'ten'"),
    ('critic.threshold=2', 'critic.threshold: expected a number in [0, 1], got 2'),
    ('heldout=-1', 'heldout: expected a number in [0, 1), got -1'),
    ('generate.samples=0', 'generate.samples: expected an integer >= 1, got 0'),
    ('evaluate.on_bad_row=skip', "evaluate.on_bad_row: expected one of 'error', 'record', got 'skip'"),
    ('verbalize.batch_size=-2', 'verbalize.batch_size: expected an integer >= 1, got -2'),
    ('critic.heldout=0.3', 'critic.heldout is set once for the whole run'),
])
def test_bad_values_are_named_before_anything_runs(override, message):
    with pytest.raises(ValueError, match=None) as e: check_run_config(run_config(overrides=[override]))
    assert message in str(e.value)


def test_yaml_scientific_notation_is_a_number():
    "PyYAML reads `lr: 1e-5` as the text '1e-5': it reaches the optimiser as the number 1e-05"
    import yaml
    assert yaml.safe_load('lr: 1e-5') == {'lr': '1e-5'}
    assert distill.DistillConfig.load(yaml.safe_load('lr: 1e-5')).lr == 1e-5
    assert critic.CriticConfig.load({'lr': '1e-5'}).lr == 1e-5


if __name__ == '__main__':
    for stage, (cls, fn, parser, *_ , skip, _d) in STAGE_SETTINGS.items():
        print(f'{stage}: {cls.__name__} ({len(fields(cls))} settings), function {getattr(fn, "__name__", "-")}, '
              f'{"lskd " + stage if parser else "lskd run only"}; set in a config file only: {", ".join(skip) or "-"}')
