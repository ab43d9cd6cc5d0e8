"""deephash-zoo build: pretraining, hashing, evaluation and the table, resumable stage by stage (tiny plan)."""
import json
import subprocess
import sys
from dataclasses import asdict

import pytest
import torch

from deephash_zoo.cli.zoo import main
from deephash_zoo.experiments.zoo import get_plan, render_zoo_markdown, zoo_result
from tests.test_data_fashion_mnist import HAS_FMNIST

needs_fmnist = pytest.mark.skipif(not HAS_FMNIST, reason='dataset-fashion-mnist not installed (.ci/setup.sh)')
MODELS = 'dath_n_16,dmlh_cnnf_multi'


@pytest.fixture(scope='module')
def built(module_tmp):
    work = module_tmp.mktemp('zoo')
    assert main(['build', '--plan', 'tiny', '--models', MODELS, '--work', str(work), '--no-progress']) == 0
    return work


@needs_fmnist
@pytest.mark.slow
def test_build_runs_every_stage_once_and_reports_them(built, capsys):
    stages = [json.loads(line) for line in (built / 'stages.jsonl').read_text().splitlines()]
    assert [s['stage'] for s in stages] == ['pretrain:alexnet', 'train:dath_n_16', 'eval:dath_n_16', 'pretrain:cnnf',
                                            'train:dmlh_cnnf_multi', 'eval:dmlh_cnnf_multi']
    assert all(s['cpu_seconds'] > 0 and s['wall_seconds'] > 0 for s in stages)
    assert (built / 'pretrain-alexnet' / 'trunk.safetensors').is_file()
    config = json.loads((built / 'dath_n_16' / 'checkpoint' / 'config.json').read_text())
    assert config['training']['recipe'] == 'scratch'
    assert config['training']['init'].endswith('pretrain-alexnet/trunk.safetensors')
    report = json.loads((built / 'dmlh_cnnf_multi' / 'eval' / 'metrics.json').read_text())
    assert sorted(report['results'], key=int) == ['16', '32', '48', '64']
    for r in report['results'].values():  # every length carries its random-codes level and distinct codes
        assert 0 < r['random_codes']['map'] < 1 and r['map_at_1000'] == pytest.approx(r['map'])  # 60 items < 1000
        assert r['distinct_codes']['num_items'] == 20
    assert (built / 'dath_n_16' / 'eval' / 'retrieval_grid.png').is_file()
    table = (built / 'zoo-tiny.md').read_text()
    assert '| `dath_n_16` | 16 |' in table and 'random codes' in table and '(trunk shared by 1)' in table


@needs_fmnist
@pytest.mark.slow
def test_second_build_skips_what_is_done_and_resumes_a_cut_stage(built, capsys):
    """A finished stage is skipped; a stage whose record is missing is redone (from last/ when there)."""
    lines = (built / 'stages.jsonl').read_text().splitlines()
    (built / 'stages.jsonl').write_text('\n'.join(lines[:-1]) + '\n')  # the last eval "was interrupted"
    capsys.readouterr()
    assert main(['build', '--plan', 'tiny', '--models', MODELS, '--work', str(built), '--no-progress']) == 0
    out = capsys.readouterr().out
    assert out.count('skipped') == 5 and 'eval:dmlh_cnnf_multi: running' in out
    result = zoo_result(get_plan('tiny'), built, tuple(MODELS.split(',')))
    assert [m['model'] for m in result['models']] == MODELS.split(',')
    assert render_zoo_markdown(result, 'x.json', 'cmd') == render_zoo_markdown(result, 'x.json', 'cmd')


@needs_fmnist
@pytest.mark.slow
def test_an_older_checkpoint_is_resaved_and_evaluated_again(built, capsys):
    """A checkpoint in the older form (label classifier in the weights, 224 in pretrained_cfg) is re-saved in the
    current one before its eval stage. Re-saving alone gives back the evaluated file (the eval is kept); weights
    that differ from the evaluated ones are evaluated again."""
    from safetensors.torch import load_file, save_file

    ckpt = built / 'dath_n_16' / 'checkpoint'
    config = json.loads((ckpt / 'config.json').read_text())
    assert config['pretrained_cfg']['input_size'] == [3, 64, 64] and 'num_labels' not in config.get('model_args', {})
    state = load_file(str(ckpt / 'model.safetensors'))
    assert not [k for k in state if k.startswith('aux_classifier.')]
    original = (ckpt / 'model.safetensors').read_bytes()
    with_aux = dict(state, **{'aux_classifier.weight': torch.zeros(10, 16), 'aux_classifier.bias': torch.zeros(10)})
    save_file(with_aux, str(ckpt / 'model.safetensors'), metadata={'format': 'pt'})
    capsys.readouterr()
    assert main(['build', '--plan', 'tiny', '--models', 'dath_n_16', '--work', str(built), '--no-progress']) == 0
    out = capsys.readouterr().out
    assert 're-saved in the current checkpoint form' in out and 'eval:dath_n_16: done before (' in out
    assert (ckpt / 'model.safetensors').read_bytes() == original

    state['head.hash.fc.0.bias'] = state['head.hash.fc.0.bias'] + 1  # other weights, in the older form
    state.update({'aux_classifier.weight': torch.zeros(10, 16), 'aux_classifier.bias': torch.zeros(10)})
    save_file(state, str(ckpt / 'model.safetensors'), metadata={'format': 'pt'})
    config['pretrained_cfg']['input_size'] = [3, 224, 224]
    (ckpt / 'config.json').write_text(json.dumps(config))
    capsys.readouterr()
    assert main(['build', '--plan', 'tiny', '--models', 'dath_n_16', '--work', str(built), '--no-progress']) == 0
    out = capsys.readouterr().out
    assert 're-saved in the current checkpoint form' in out and 'eval:dath_n_16: done before on other weights' in out
    assert not [k for k in load_file(str(ckpt / 'model.safetensors')) if k.startswith('aux_classifier.')]
    assert json.loads((ckpt / 'config.json').read_text())['pretrained_cfg']['input_size'] == [3, 64, 64]
    report = json.loads((built / 'dath_n_16' / 'eval' / 'metrics.json').read_text())
    stages = [json.loads(line) for line in (built / 'stages.jsonl').read_text().splitlines()]
    assert stages[-1]['stage'] == 'eval:dath_n_16' and stages[-1]['weights_sha256'] == report['weights_sha256']


@needs_fmnist
@pytest.mark.slow
def test_a_stage_built_with_other_settings_is_built_again(tmp_path, monkeypatch, capsys):
    """Changing the plan (here its seed) re-runs the pretraining, the hashing stage that starts from the new trunk
    and its evaluation, from the start; records written before settings were recorded are kept as they are."""
    from dataclasses import replace

    from deephash_zoo.experiments import zoo

    argv = ['build', '--plan', 'tiny', '--models', 'dath_n_16', '--work', str(tmp_path), '--no-progress']
    assert main(argv) == 0
    records = [json.loads(line) for line in (tmp_path / 'stages.jsonl').read_text().splitlines()]
    assert records[0]['settings'] == dict(epochs=1, data='fashion-mnist', img_size=64, subset=64, seed=0)
    assert records[1]['settings']['init_sha256'] and records[1]['settings']['epochs'] == 1
    legacy = [{k: v for k, v in rec.items() if k != 'settings'} for rec in records]
    (tmp_path / 'stages.jsonl').write_text(''.join(json.dumps(rec) + '\n' for rec in legacy))
    capsys.readouterr()
    assert main(argv) == 0
    assert capsys.readouterr().out.count('skipped') == 3  # the older records are taken as they are

    (tmp_path / 'stages.jsonl').write_text(''.join(json.dumps(rec) + '\n' for rec in records))
    (tmp_path / 'dath_n_16' / 'last').mkdir(exist_ok=True)  # a stale resumable state must not be resumed
    (tmp_path / 'dath_n_16' / 'last' / 'state.json').write_text('{}')
    monkeypatch.setitem(zoo.PLANS, 'tiny', replace(zoo.PLANS['tiny'], seed=1))
    assert zoo_result(get_plan('tiny'), tmp_path, ('dath_n_16',))['models'] == []  # not what the plan builds now
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert 'pretrain:alexnet: done before with other settings, run again' in out
    assert 'train:dath_n_16: done before with other settings, run again' in out
    assert 'eval:dath_n_16: done before on other weights, run again' in out
    again = [json.loads(line) for line in (tmp_path / 'stages.jsonl').read_text().splitlines()][-3:]
    assert [rec['settings'].get('seed') for rec in again] == [1, 1, None] and not again[1]['resumed']
    result = zoo_result(get_plan('tiny'), tmp_path, ('dath_n_16',))
    assert [m['model'] for m in result['models']] == ['dath_n_16']
    assert [rec['settings'].get('seed') for rec in result['stages']] == [1, 1, None]  # the eval's has no seed


def test_bad_requests_are_one_line(tmp_path):
    for argv, message in ((['build', '--plan', 'tiny', '--models', 'resnet18', '--work', str(tmp_path)],
                           "no training recipe for 'resnet18'"),
                          (['build', '--plan', 'tiny', '--publish'], 'for tests'),
                          (['build', '--plan', 'tiny', '--render-only', '--work', str(tmp_path)],
                           'no evaluated model yet')):
        proc = subprocess.run([sys.executable, '-m', 'deephash_zoo.cli.zoo', *argv], capture_output=True, text=True)
        assert proc.returncode == 2 and message in proc.stderr and 'Traceback' not in proc.stderr, proc.stderr


def test_rows_of_an_earlier_build_are_carried_over_and_marked(tmp_path):
    """A zoo rebuilt in pieces keeps one table: the published JSON's rows of models this work folder has not
    evaluated are carried over with their stage records (and said to be), others are left out."""
    from deephash_zoo.experiments.zoo import SCHEMA_VERSION

    plan = get_plan('tiny')
    cost = dict(pretrain=60.0, train=120.0, eval=30.0)
    row = dict(model='dath_n_16', checkpoint='gone/dath_n_16/checkpoint', weights_sha256='0' * 64,
               protocol=dict(num_queries=20, num_database=60), img_size=64, cpu_seconds=cost, wall_seconds=cost,
               pretrain_shared_by=1, results={'16': dict(map=0.5, map_at_1000=0.5, p_at_100=0.4,
                                                         precision_radius2=0.3, random_map=0.1, distinct_codes=0.9)})
    stages = [dict(stage=s, cpu_seconds=60.0, wall_seconds=60.0, cpu='Some CPU')
              for s in ('pretrain:alexnet', 'train:dath_n_16', 'eval:dath_n_16', 'train:dath_s_16')]
    earlier = dict(schema_version=SCHEMA_VERSION, plan=json.loads(json.dumps(asdict(plan))),  # as published
                   models=[row, dict(row, model='dath_s_16')], stages=stages)
    result = zoo_result(plan, tmp_path, ('dath_n_16', 'dmlh_cnnf_multi'), earlier=earlier)
    assert [(m['model'], m.get('carried_over')) for m in result['models']] == [('dath_n_16', True)]
    assert sorted(s['stage'] for s in result['stages']) == ['eval:dath_n_16', 'pretrain:alexnet', 'train:dath_n_16']
    assert result['total_cpu_seconds'] == 180.0
    table = render_zoo_markdown(result, 'x.json', 'cmd')
    assert '| `dath_n_16` | 16 | 0.5000 | 0.1000 | 5.00x |' in table and 'Some CPU' in table
    assert 'Carried over from the earlier published build' in table and '`dath_n_16`' in table.split('Carried')[1]
    with pytest.raises(ValueError, match="not of plan 'tiny'"):
        zoo_result(plan, tmp_path, ('dath_n_16',), earlier=dict(earlier, plan=dict(name='fmnist')))
    # rows built under other settings of the plan (a shorter pretraining) are carried and named as such
    shorter = dict(asdict(plan), pretrain_epochs=0, description='an older plan')
    table = render_zoo_markdown(zoo_result(plan, tmp_path, ('dath_n_16',), earlier=dict(earlier, plan=shorter)),
                                'x.json', 'cmd')
    assert 'with other plan settings, not rebuilt yet (an older plan): `dath_n_16`.' in table
    names = {rec['stage'] for rec in zoo_result(plan, tmp_path, ('dath_n_16',),
                                                 earlier=dict(earlier, plan=shorter))['stages']}
    assert names == {f'{stage} (earlier plan)' for stage in ('pretrain:alexnet', 'train:dath_n_16', 'eval:dath_n_16')}
    assert 'Carried over from the earlier published build' not in table


def _work_with_a_cnnf_row(work, plan):
    """A work folder holding this build's own pretrain:cnnf (a tiny trunk file) and an evaluated dmlh row."""
    from safetensors.torch import save_file

    from deephash_zoo.experiments.zoo import _pretrain_settings, _train_settings
    from deephash_zoo.hub.checkpoint import weights_sha256

    trunk = work / 'pretrain-cnnf' / 'trunk.safetensors'
    trunk.parent.mkdir(parents=True)
    save_file({'w': torch.ones(3)}, str(trunk))
    sha = weights_sha256(trunk)
    records = [dict(stage='pretrain:cnnf', cpu_seconds=600.0, wall_seconds=300.0, cpu='Some CPU',
                    settings=_pretrain_settings(plan)),
               dict(stage='train:dmlh_cnnf_multi', cpu_seconds=120.0, wall_seconds=60.0, cpu='Some CPU',
                    settings=_train_settings(plan, 'dmlh_cnnf_multi', sha)),
               dict(stage='eval:dmlh_cnnf_multi', cpu_seconds=30.0, wall_seconds=15.0, cpu='Some CPU', settings={})]
    (work / 'stages.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in records))
    result = dict(map=0.6, map_at_1000=0.6, map_tie_aware=0.6, p_at_n={'100': 0.5}, precision_radius2=0.4,
                  random_codes=dict(map=0.1), distinct_codes=dict(fraction=0.2))
    report = dict(weights_sha256='1' * 64, protocol=dict(num_queries=20, num_database=60), img_size=64,
                  results={'16': result})
    (work / 'dmlh_cnnf_multi' / 'eval').mkdir(parents=True)
    (work / 'dmlh_cnnf_multi' / 'eval' / 'metrics.json').write_text(json.dumps(report))
    return sha


def test_a_carried_row_is_tied_to_the_trunk_it_was_trained_from(tmp_path):
    """A build that pretrains a trunk again (its work folder lost the earlier one) and carries a row of the
    same architecture: the same trunk bit for bit is shared and costs once; another trunk keeps the carried
    row's own pretraining in the table, said to be another trunk, and survives being carried again."""
    from deephash_zoo.experiments.zoo import SCHEMA_VERSION

    plan = get_plan('tiny')
    sha = _work_with_a_cnnf_row(tmp_path / 'work', plan)
    cost = dict(pretrain=900.0, train=240.0, eval=60.0)
    row = dict(model='admth_cnnf_multi', checkpoint='gone', weights_sha256='0' * 64,
               protocol=dict(num_queries=20, num_database=60), img_size=64, cpu_seconds=cost, wall_seconds=cost,
               pretrain_shared_by=1, results={'16': dict(map=0.7, map_at_1000=0.7, p_at_100=0.6,
                                                         precision_radius2=0.5, random_map=0.1, distinct_codes=0.1)})

    def earlier_with(trunk_sha):
        stages = [dict(stage='pretrain:cnnf', cpu_seconds=900.0, wall_seconds=900.0, cpu='Some CPU',
                       note='shared the cores'),
                  dict(stage='train:admth_cnnf_multi', cpu_seconds=240.0, wall_seconds=240.0, cpu='Some CPU',
                       settings=dict(init_sha256=trunk_sha)),
                  dict(stage='eval:admth_cnnf_multi', cpu_seconds=60.0, wall_seconds=60.0, cpu='Some CPU')]
        return dict(schema_version=SCHEMA_VERSION, plan=json.loads(json.dumps(asdict(plan))), models=[row],
                    stages=stages)

    models = ('admth_cnnf_multi', 'dmlh_cnnf_multi')
    same = zoo_result(plan, tmp_path / 'work', models, earlier=earlier_with(sha))
    assert [(m['model'], m['pretrain_shared_by']) for m in same['models']] == [('admth_cnnf_multi', 2),
                                                                             ('dmlh_cnnf_multi', 2)]
    assert same['models'][0]['cpu_seconds']['pretrain'] == 600.0  # this build's pretraining, counted once
    assert sorted(s['stage'] for s in same['stages']) == [
        'eval:admth_cnnf_multi', 'eval:dmlh_cnnf_multi', 'pretrain:cnnf', 'train:admth_cnnf_multi',
        'train:dmlh_cnnf_multi']
    assert same['total_cpu_seconds'] == 600.0 + 240 + 60 + 120 + 30
    table = render_zoo_markdown(same, 'x.json', 'cmd')
    assert 'ran again in this build and made, bit for bit, the trunk `admth_cnnf_multi` was trained from' in table
    assert '| 5.0 (10.0) / 4.0 (4.0) / 1.0 (1.0) (trunk shared by 2) |' in table

    other = zoo_result(plan, tmp_path / 'work', models, earlier=earlier_with('f' * 64))
    assert [m['pretrain_shared_by'] for m in other['models']] == [1, 1]
    assert other['models'][0]['cpu_seconds']['pretrain'] == 900.0
    assert 'pretrain:cnnf (earlier run)' in {s['stage'] for s in other['stages']}
    assert other['total_cpu_seconds'] == 600.0 + 900 + 240 + 60 + 120 + 30
    table = render_zoo_markdown(other, 'x.json', 'cmd')
    assert ('`admth_cnnf_multi` was trained from another `cnnf` trunk than the other `cnnf` rows' in table
            and f'(trunk sha256 ffffffffffff, the other rows\' {sha[:12]})' in table)
    assert '- `pretrain:cnnf (earlier run)`: shared the cores' in table
    assert '| 15.0 (15.0) / 4.0 (4.0) / 1.0 (1.0) (trunk shared by 1) |' in table

    # rendered again from the same work folder with that result as the published one: nothing moves
    rerendered = zoo_result(plan, tmp_path / 'work', models, earlier=json.loads(json.dumps(other)))
    assert [m['cpu_seconds'] for m in rerendered['models']] == [m['cpu_seconds'] for m in other['models']]
    assert rerendered['total_cpu_seconds'] == other['total_cpu_seconds']
    assert render_zoo_markdown(rerendered, 'x.json', 'cmd') == render_zoo_markdown(other, 'x.json', 'cmd')
    # the published result carried again by a build that has nothing of its own keeps both trunks apart
    again = zoo_result(plan, tmp_path / 'empty', models, earlier=json.loads(json.dumps(other)))
    assert [m['pretrain_shared_by'] for m in again['models']] == [1, 1]
    assert again['total_cpu_seconds'] == other['total_cpu_seconds']
    assert render_zoo_markdown(again, 'x.json', 'cmd').count('another `cnnf` trunk') == 1
    # and the same-trunk case carried again no longer claims a pretraining "in this build"
    again = zoo_result(plan, tmp_path / 'empty', models, earlier=json.loads(json.dumps(same)))
    assert [m['pretrain_shared_by'] for m in again['models']] == [2, 2]
    assert 'ran again in this build' not in render_zoo_markdown(again, 'x.json', 'cmd')


def test_a_row_trained_with_the_label_term_says_so(tmp_path, monkeypatch):
    """Were the scratch recipe to take ADMTH's label term (not the paper's), the row records its weight and the
    table names the rows that used it; a hashing stage recorded without it is not what the plan builds then."""
    from dataclasses import replace

    from deephash_zoo.training.recipes import RECIPES

    plan, weight = get_plan('tiny'), 5.0
    _work_with_a_cnnf_row(tmp_path / 'plain', plan)
    plain = zoo_result(plan, tmp_path / 'plain', ('dmlh_cnnf_multi',))
    assert [m['label_weight'] for m in plain['models']] == [0.0]
    assert 'label term' not in render_zoo_markdown(plain, 'x.json', 'cmd')

    monkeypatch.setitem(RECIPES['scratch'], 'admth', replace(RECIPES['scratch']['admth'], label_weight=weight))
    assert zoo_result(plan, tmp_path / 'plain', ('dmlh_cnnf_multi',))['models'] == []  # trained without it
    _work_with_a_cnnf_row(tmp_path, plan)
    result = zoo_result(plan, tmp_path, ('dmlh_cnnf_multi',))
    assert [m['label_weight'] for m in result['models']] == [weight]
    table = render_zoo_markdown(result, 'x.json', 'cmd')
    assert (f"label classifier on each code length's codes, cross-entropy with weight {weight:g}" in table
            and table.rstrip().count('`dmlh_cnnf_multi`.') == 1)


def test_the_plans_balanced_pairs_are_recorded_rebuilt_and_named(tmp_path):
    """The published plan trains ADMTH and DMLH with balanced pairs and DATH without; a CNN-F hashing stage
    recorded without them is not what the plan builds; a row trained with them is named under the table."""
    from dataclasses import replace

    from deephash_zoo.experiments.zoo import _train_settings

    fmnist = get_plan('fmnist')
    assert fmnist.loss_args == {'admth': {'pair_balance': 1.0}}
    assert _train_settings(fmnist, 'admth_cnnf_multi', 'x')['loss_args'] == {'pair_balance': 1.0}
    assert 'loss_args' not in _train_settings(fmnist, 'dath_alexnet_32', 'x')

    plain = get_plan('tiny')
    _work_with_a_cnnf_row(tmp_path / 'plain', plain)
    result = zoo_result(plain, tmp_path / 'plain', ('dmlh_cnnf_multi',))
    assert [m['loss_args'] for m in result['models']] == [{}]
    assert 'balanced pairs' not in render_zoo_markdown(result, 'x.json', 'cmd')

    balanced = replace(plain, loss_args={'admth': {'pair_balance': 1.0}})
    assert zoo_result(balanced, tmp_path / 'plain', ('dmlh_cnnf_multi',))['models'] == []  # trained without them
    _work_with_a_cnnf_row(tmp_path / 'balanced', balanced)
    result = zoo_result(balanced, tmp_path / 'balanced', ('dmlh_cnnf_multi',))
    assert [m['loss_args'] for m in result['models']] == [{'pair_balance': 1.0}]
    table = render_zoo_markdown(result, 'x.json', 'cmd')
    assert 'Trained with balanced pairs' in table and table.rstrip().count('`dmlh_cnnf_multi`.') == 1


def test_a_hashing_stage_trained_with_another_dropout_is_trained_again(tmp_path):
    """The scratch recipe trains ADMTH's hashing stage without dropout; a stage recorded before that (no drop rate
    in its settings, so the model's 0.5) is not what the plan builds, and its row is left to the earlier build."""
    from deephash_zoo.experiments.zoo import _train_settings
    from deephash_zoo.training.recipes import get_recipe

    plan = get_plan('tiny')
    sha = _work_with_a_cnnf_row(tmp_path, plan)
    assert get_recipe('scratch', 'dmlh_cnnf_multi').drop_rate == 0.0
    assert _train_settings(plan, 'dmlh_cnnf_multi', sha)['drop_rate'] == 0.0
    assert 'drop_rate' not in _train_settings(plan, 'dath_alexnet_32', sha)  # DATH keeps AlexNet's dropout
    assert len(zoo_result(plan, tmp_path, ('dmlh_cnnf_multi',))['models']) == 1
    stages = tmp_path / 'stages.jsonl'
    records = [json.loads(line) for line in stages.read_text().splitlines()]
    for record in records:
        record.get('settings', {}).pop('drop_rate', None)
    stages.write_text(''.join(json.dumps(r) + '\n' for r in records))
    assert zoo_result(plan, tmp_path, ('dmlh_cnnf_multi',))['models'] == []
