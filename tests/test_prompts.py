"Tests of lskd.teacher.prompts: prompt folders and variants, rendering, the tolerant parser, validation of triples"
import json
import pytest
from lskd.data.records import Verbalization, ImageRecord, Region, Description, QAPair, QAR
from lskd.teacher.prompts import load_prompt, build_prompt, prompt_regions, render_verbalization, parse_triples, ParseError, check_triple, read_reply, normalize_refs, response_format, answer_schema, reject_shares, NoRegionsError, prompt_dirs


def verb(n_people=2, extra=()):
    regions = [Region(10 + i, (20 + 150*i, 40, 150 + 150*i, 400), 'person', f'person number {i}') for i in range(n_people)]
    regions += list(extra)
    return Verbalization(ImageRecord('img.jpg', 640, 480, regions),
                         globals=[Description('people in a park', 'cap'), Description('park, tree', 'tagger', 'tags')],
                         regions={10: [Description('wearing a red hat', 'cap')]},
                         qa=[QAPair('Is [10] happy?', 'yes', 'vqa')])


GOOD = dict(question='Why is [0] waving at [1]?', answer='[0] is greeting [1], a friend.',
            rationale='[0] raises a hand toward [1] and smiles.')


@pytest.fixture
def spec(): return load_prompt('v1')


# ---------- prompt folders ----------

def test_variants_inherit_and_override(spec):
    ppl = load_prompt('v1-people')
    assert ppl.regions == 'people' and spec.regions == 'any'
    assert ppl.system == spec.system and ppl.task == spec.task and len(ppl.examples) == len(spec.examples) >= 1
    assert load_prompt('v1', triples=5, max_examples=0).triples == 5


def test_user_prompt_folder_and_env(tmp_path, monkeypatch):
    d = tmp_path/'mine'; d.mkdir()
    (d/'prompt.yaml').write_text('base: v1\ntriples: 2\nmax_examples: 0\n')
    (d/'system.txt').write_text('Be brief.')
    s = load_prompt(str(d))          # a path
    assert (s.name, s.triples, s.system) == ('mine', 2, 'Be brief.')
    monkeypatch.setenv('LSKD_PROMPTS', str(tmp_path))
    assert load_prompt('mine').system == 'Be brief.' and prompt_dirs()[0] == tmp_path
    p = build_prompt(verb(), s)
    assert [m['role'] for m in p.messages] == ['system', 'user'] and p.messages[0]['content'] == 'Be brief.'


def test_bad_prompt_folders(tmp_path):
    d = tmp_path/'bad'; d.mkdir(); (d/'prompt.yaml').write_text('triples: 2\n')
    with pytest.raises(FileNotFoundError, match='system.txt is missing'): load_prompt(str(d))
    (d/'prompt.yaml').write_text('base: v1\nregions: animals\n')
    with pytest.raises(ValueError, match="'any' or 'people'"): load_prompt(str(d))
    (d/'prompt.yaml').write_text('base: v1\n'); (d/'examples.jsonl').write_text('{"nope": 1}\n')
    with pytest.raises(ValueError, match='examples.jsonl:1'): load_prompt(str(d))


# ---------- rendering ----------

def test_render_numbers_regions_and_maps_back(spec):
    v = verb(3)
    p = build_prompt(v, spec)
    user = p.messages[-1]['content']
    assert '[0] person (on the left): person number 0; wearing a red hat' in user
    assert '[2] person' in user and '[3]' not in user.split('Regions:')[1]
    assert 'Q: Is [0] happy? A: yes' in user and 'tags: park, tree' in user
    assert p.rmap.order == [10, 11, 12] and p.rmap.from_draw('[2] and [0]') == '[12] and [10]'
    assert user.endswith('Write 3 question/answer/rationale triples about this image as JSON.')
    ex = json.loads(p.messages[2]['content'])['triples']
    assert len(ex) == 3 and all('[' in t['question'] for t in ex)


def test_people_only_and_max_regions(spec):
    v = verb(2, [Region(3, (0, 0, 600, 100), 'kite'), Region(4, (5, 5, 10, 10), 'Person')])
    assert [r.id for r in prompt_regions(v.image, load_prompt('v1-people'))] == [10, 11, 4]
    assert [r.id for r in prompt_regions(v.image, load_prompt('v1', max_regions=2))] == [10, 3]   # largest two, input order
    with pytest.raises(NoRegionsError, match='no region to show'):
        build_prompt(Verbalization(ImageRecord('x.jpg', 64, 64, [Region(0, (1, 1, 9, 9), 'kite')])), load_prompt('v1-people'))


def test_qa_hidden_region_dropped():
    v = verb(1, [Region(3, (0, 0, 600, 100), 'kite')])
    v.qa.append(QAPair('Who flies [3]?', 'a boy', 'vqa'))
    text, _ = render_verbalization(v, prompt_regions(v.image, load_prompt('v1-people')), load_prompt('v1-people'))
    assert 'Who flies' not in text and 'Is [0] happy' in text


def test_response_formats():
    s = answer_schema(4)
    assert s['properties']['triples']['maxItems'] == 4 and s['required'] == ['triples']
    assert response_format('openai')['json_schema']['strict'] is True
    assert response_format('llama_cpp', 2)['type'] == 'json_object'
    assert response_format('none') is None


# ---------- parser ----------

@pytest.mark.parametrize('text', [
    json.dumps({'triples': [GOOD]}),
    json.dumps([GOOD]),
    json.dumps(GOOD),
    '```json\n' + json.dumps({'triples': [GOOD]}) + '\n```',
    '```\n' + json.dumps([GOOD]) + '\n```\nLet me know if you need more.',
    'Here you go:\n' + json.dumps({'triples': [GOOD]}) + '\nThese are plausible.',
    '{"triples": [' + json.dumps(GOOD) + ',],}',
    '[' + json.dumps(GOOD) + ',\n]',
    '{"qars": {"items": [' + json.dumps(GOOD) + ']}}',
    json.dumps({'Question': GOOD['question'], 'Answer': GOOD['answer'], 'Explanation': GOOD['rationale']}),
    '{"triples": [' + json.dumps(GOOD) + ', {"question": "What is [1] going to',            # cut at max_tokens
    '```json\n{"triples": [' + json.dumps(GOOD),                                           # unclosed fence and array
    f"Question: {GOOD['question']}\nAnswer: {GOOD['answer']}\nRationale: {GOOD['rationale']}",
])
def test_parser_tolerates(text):
    ts = parse_triples(text)
    assert len(ts) == 1 and {k: ts[0][k] for k in GOOD} == GOOD


def test_parser_keeps_commas_and_brackets_inside_strings():
    t = dict(GOOD, answer='[0] says "hi, ]" to [1],')
    assert parse_triples(json.dumps([t]))[0]['answer'] == '[0] says "hi, ]" to [1],'


@pytest.mark.parametrize('text', ['', '   ', 'I am sorry, I cannot do that.', '{"answer": 3}', '[1, 2, 3]', '{"triples": []}'])
def test_parser_errors(text):
    with pytest.raises(ParseError): parse_triples(text)


# ---------- validation ----------

def test_check_triple_reasons(spec):
    cases = {'missing_field': dict(GOOD, rationale=''), 'too_short': dict(GOOD, answer='yes'),
             'bad_region': dict(GOOD, answer='[7] is greeting [1].'), 'no_region': dict(question='Why is he waving?',
             answer='He is greeting a friend.', rationale='He raises a hand and smiles.')}
    for reason, t in cases.items(): assert check_triple(t, 2, spec)[1][0] == reason, reason
    assert check_triple(dict(GOOD, question=3), 2, spec)[1][0] == 'missing_field'
    assert check_triple('a string', 2, spec)[1][0] == 'missing_field'
    assert check_triple(GOOD, 2, load_prompt('v1', min_refs=3))[1][0] == 'no_region'
    assert check_triple(cases['no_region'], 2, load_prompt('v1', min_refs=0, question_refs=False))[1] is None
    q_only_in_answer = dict(GOOD, question='Why is this man waving?')
    assert check_triple(q_only_in_answer, 2, spec)[1] == ('no_region', 'the question refers to no region')
    assert check_triple(q_only_in_answer, 2, load_prompt('v1', question_refs=False))[1] is None


def test_dedup_modes(spec):
    seen = set()
    assert check_triple(GOOD, 2, spec, seen)[1] is None
    again = dict(GOOD, question='why is  [0] WAVING at [1] ?', answer='Something else entirely here.')
    assert check_triple(again, 2, spec, seen)[1][0] == 'duplicate'
    seen = set(); s = load_prompt('v1', dedup='qa')
    assert check_triple(GOOD, 2, s, seen)[1] is None and check_triple(again, 2, s, seen)[1] is None


def test_normalize_refs():
    assert normalize_refs('[0,1] and [2][3] and [4]') == '[0] , [1] and [2] , [3] and [4]'


def test_read_reply_maps_ids_and_reports(spec):
    v = verb(3)
    p = build_prompt(v, spec)
    reply = json.dumps({'triples': [GOOD, dict(GOOD, question='What will [2] do next?'), dict(GOOD, question='Why is [3] here?'),
                                    GOOD, dict(GOOD, question='What will [0, 2] do?')]})
    qars, rej = read_reply(reply, p, spec, meta={'teacher': 't'}, id_prefix='img-0')
    assert [q.question for q in qars] == ['Why is [10] waving at [11]?', 'What will [12] do next?', 'What will [10] , [12] do?']
    assert all(isinstance(q, QAR) and q.region_all == [10, 11, 12] and q.meta['teacher'] == 't' for q in qars)
    assert qars[0].region == [10, 11] and qars[0].id == 'img-0-0' and qars[2].id == 'img-0-4'
    assert [r['reason'] for r in rej] == ['bad_region', 'duplicate'] and rej[0]['triple']['question'] == 'Why is [3] here?'
    for q in qars: q.check()
    _, rej = read_reply('```json\n{"tri', p, spec)
    assert rej[0]['reason'] == 'parse_error' and rej[0]['raw'] == '```json\n{"tri'


def test_reject_shares():
    from collections import Counter
    assert reject_shares(6, Counter(bad_region=2, duplicate=2)) == {'bad_region': 0.2, 'duplicate': 0.2}
    assert reject_shares(0, Counter()) == {}
