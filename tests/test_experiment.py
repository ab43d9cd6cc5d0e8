"""deephash-experiment at the tiny budget (two training steps per cell): the JSON, the markdown table and the
README block are produced and say the same numbers; resuming re-trains nothing; verdicts follow the rule."""
import json
import re
import statistics
from pathlib import Path

import pytest

from deephash_zoo.cli.experiment import main
from deephash_zoo.experiments import BUDGETS, arms_for, get_budget, render_markdown, summarize
from deephash_zoo.experiments.publish import markers, update_readme, write_cards, zoo_cards
from deephash_zoo.experiments.report import at_chance, claims, multitask_time, verdict
from deephash_zoo.utils import tensors_file_sha256
from tests.test_data_fashion_mnist import HAS_FMNIST

REPO = Path(__file__).resolve().parents[1]

needs_fmnist = pytest.mark.skipif(not HAS_FMNIST, reason='Fashion-MNIST not installed (apt-get install '
                                                         'dataset-fashion-mnist)')


def _committed_result(key: str) -> dict:
    """An experiment's committed raw JSON, ``hub_cards/results/KEY.json``."""
    return json.loads((REPO / 'hub_cards' / 'results' / f'{key}.json').read_text())


def _assert_quotes_means(section: str, result: dict, arms=None, bits=('16', '32', '48', '64')) -> None:
    """``section`` quotes every arm's (or the named arms') mAP@all as mean ± std at 4 decimals, at ``bits``."""
    for arm, summary in summarize(result).items():
        for b, stats in summary['bits'].items():
            if (arms is None or arm in arms) and b in bits:
                mean, std, _ = stats['map']
                assert f'{mean:.4f} ± {std:.4f}' in section, (result['budget']['name'], arm, b)


def _table_rows(markdown: str, title: str) -> dict:
    """{arm label: [cell texts]} of the markdown table that follows the bold ``title`` line."""
    block = markdown.split(f'**{title}**', 1)[1].split('\n\n', 2)[1]
    rows = {}
    for line in block.splitlines()[2:]:
        cells = [c.strip() for c in line.strip('|').split('|')]
        rows[cells[0]] = cells[1:]
    return rows


def _mean_from_cells(result: dict, model: str, bits: str, key: str = 'map') -> float:
    vals = [c['results'][bits][key] if key == 'map' else c['results'][bits]['p_at_n']['100']
            for c in result['cells'] if c['model'] == model]
    return statistics.fmean(vals)


def _check_agree(result: dict, markdown: str) -> None:
    """Every mAP / P@100 cell of the markdown equals the mean over seeds of the JSON's cells (3 decimals)."""
    for title, key in (('mAP@', 'map'), ('P@100', 'p100')):
        head = next(t for t in re.findall(r'\*\*([^*]+)\*\*', markdown) if t.startswith(title))
        rows = _table_rows(markdown, head)
        assert set(rows) == {a['label'] for a in result['arms']}
        for arm in result['arms']:
            for i, bits in enumerate(str(b) for b in result['bits']):
                if bits not in arm['models']:  # a length this arm did not run: blank
                    assert rows[arm['label']][i] == ''
                    continue
                model = arm['models'][bits]
                shown = float(rows[arm['label']][i].split('±')[0])
                assert shown == pytest.approx(_mean_from_cells(result, model, bits, key), abs=5e-4)


@needs_fmnist
@pytest.mark.slow
def test_ablation_tiny_json_and_table_agree_and_resume(tmp_path, capsys):
    work = tmp_path / 'work'
    argv = ['ablation', '--budget', 'tiny', '--arms', 'DATH-S,DATH-N', '--bits', '16', '--work', str(work),
            '--keep', 'first-seed']
    assert main(argv) == 0
    key = 'ablation-fashion-mnist-tiny'
    result = json.loads((work / f'{key}.json').read_text())
    markdown = (work / f'{key}.md').read_text()
    assert result['seeds'] == list(BUDGETS['tiny'].seeds) and len(result['cells']) == 2 * 2
    assert all(c['steps'] == 2 for c in result['cells'])
    _check_agree(result, markdown)
    assert markdown in capsys.readouterr().out and 'in the last call' not in markdown  # nothing was resumed
    # the claim DATH-S over DATH-N is judged
    assert 'position attention helps (DATH-S over DATH-N)' in markdown
    # first-seed checkpoints are kept with their metrics; the others are gone
    kept = sorted(p.name for p in work.iterdir() if p.is_dir())
    assert kept == ['dath_n_16-seed0', 'dath_s_16-seed0']
    assert not (work / 'dath_n_16-seed0' / 'last').exists()
    cards = write_cards(result, tmp_path / 'cards')
    assert sorted(p.name for p in cards) == [f'{k.split("-seed")[0]}.fmnist.md' for k in kept]
    card = (tmp_path / 'cards' / 'dath_n_16.fmnist.md').read_text()
    cell = next(c for c in result['cells'] if c['model'] == 'dath_n_16' and c['seed'] == 0)
    assert 'model-index' in card and f"{cell['results']['16']['map']}" in card
    # a card the zoo's published table lists is the zoo's: the experiment leaves it as it is
    zoo_dir = tmp_path / 'zoo-cards'
    (zoo_dir / 'results').mkdir(parents=True)
    (zoo_dir / 'results' / 'zoo-fmnist.json').write_text(json.dumps(
        {'plan': {'data': 'fashion-mnist'}, 'models': [{'model': 'dath_n_16'}]}))
    (zoo_dir / 'dath_n_16.fmnist.md').write_text('the zoo card\n')
    said = []
    assert [p.name for p in write_cards(result, zoo_dir, say=said.append)] == ['dath_s_16.fmnist.md']
    assert (zoo_dir / 'dath_n_16.fmnist.md').read_text() == 'the zoo card\n'
    assert said == [f"kept {zoo_dir / 'dath_n_16.fmnist.md'}: the zoo build publishes it "
                    f"({zoo_dir / 'results' / 'zoo-fmnist.json'})"]

    # resume: every cell is read back, nothing is trained again, the numbers are the same
    assert main(argv + ['--resume', '--no-encoding-time']) == 0
    again = json.loads((work / f'{key}.json').read_text())
    assert again['resumed_cells'] == 4 and again['cells'] == result['cells']
    # its header says what the experiment took, not only the seconds of a call that trained nothing
    spent = sum(c['train_wall_seconds'] + c['eval_seconds'] for c in again['cells']) / 60
    assert (f"in the last call, which resumed 4 of the 4 cells from earlier runs (the cells' training and "
            f"scoring, summed: {spent:.1f} min)") in (work / f'{key}.md').read_text()

    # a 32-bit column for DATH-S alone: the table keeps DATH-N from the cells file, blank where it did not run
    assert main(argv[:4] + ['DATH-S', '--bits', '16,32'] + argv[7:] + ['--resume', '--no-encoding-time']) == 0
    grown = json.loads((work / f'{key}.json').read_text())
    markdown = (work / f'{key}.md').read_text()
    assert grown['bits'] == [16, 32] and grown['resumed_cells'] == 4
    assert {a['label']: sorted(a['models']) for a in grown['arms']} == {'DATH-S': ['16', '32'], 'DATH-N': ['16']}
    assert [c for c in grown['cells'] if c['model'].endswith('_16')] == result['cells']
    assert sorted(c['seed'] for c in grown['cells'] if c['model'] == 'dath_s_32') == [0, 1]
    _check_agree(grown, markdown)
    assert 'Not run (blank above; this table grew a length for some arms only): DATH-N at 32 bits.' in markdown
    assert 'at 16 bits' in markdown and 'at 32 bits' not in markdown.split("orderings in these runs")[1]
    # training totals count the lengths both arms ran: DATH-S's 16-bit model only, as before the column
    summary, before = summarize(grown), summarize(result)
    assert summary['DATH-S']['train_seconds_per_seed'] == before['DATH-S']['train_seconds_per_seed']
    assert "the arm's models at the lengths every arm ran" in markdown


@needs_fmnist
@pytest.mark.slow
def test_multitask_tiny_reports_time_ratio(tmp_path):
    work = tmp_path / 'work'
    argv = ['multitask', '--budget', 'tiny', '--bits', '16,32', '--arms', 'ADMTH (multi-length),ADMTH (single-length)',
            '--work', str(work), '--keep', 'none', '--no-encoding-time', '--seeds', '0,1']
    assert main(argv) == 0
    key = 'multitask-mosaic-tiny'
    result = json.loads((work / f'{key}.json').read_text())
    markdown = (work / f'{key}.md').read_text()
    assert result['budget']['topk']['mosaic'] == 10 and 'mAP@10' in markdown
    _check_agree(result, markdown)
    models = {c['model'] for c in result['cells']}
    assert models == {'admth_cnnf_multi', 'admth_cnnf_16', 'admth_cnnf_32'}
    assert not any(p.is_dir() for p in work.iterdir())  # --keep none
    multi = [c['train_seconds'] for c in result['cells'] if c['model'] == 'admth_cnnf_multi']
    singles = [sum(c['train_seconds'] for c in result['cells'] if c['seed'] == s and c['model'] != 'admth_cnnf_multi')
               for s in (0, 1)]
    expected = statistics.fmean(m / s for m, s in zip(multi, singles, strict=True))
    ratio = float(re.search(r'ratio ([0-9.]+) ±', markdown).group(1))
    assert ratio == pytest.approx(expected, abs=5e-4)
    assert 'the paper: 209.6 s vs 629.8 s' in markdown


@needs_fmnist
@pytest.mark.slow
def test_pretrained_budget_pretrains_one_trunk_and_starts_every_cell_from_it(tmp_path, capsys):
    from deephash_zoo.hub.checkpoint import read_checkpoint_config

    work = tmp_path / 'work'
    cells_path = tmp_path / 'tracked' / 'cells.jsonl'  # --cells: kept outside the work folder
    argv = ['ablation', '--budget', 'tiny-pretrained', '--arms', 'DATH-N,DATH-S', '--work', str(work),
            '--cells', str(cells_path), '--keep', 'first-seed', '--no-encoding-time', '--seeds', '0']
    assert main(argv) == 0
    assert len(cells_path.read_text().splitlines()) == 2 and not (work / 'cells.jsonl').exists()
    key = 'ablation-fashion-mnist-tiny-pretrained'
    result = json.loads((work / f'{key}.json').read_text())
    assert result['bits'] == [16]  # the budget's own default lengths
    trunk = work / 'pretrain-alexnet' / 'trunk.safetensors'
    assert set(result['pretrain']) == {'alexnet'} and result['pretrain']['alexnet']['trunk'] == str(trunk)
    assert trunk.is_file() and not (work / 'pretrain-alexnet' / 'last').exists()  # resumable state dropped
    for model in ('dath_n_16', 'dath_s_16'):
        training = read_checkpoint_config(work / f'{model}-seed0' / 'checkpoint')['training']
        assert training['recipe'] == 'scratch' and training['init'] == str(trunk)
    markdown = (work / f'{key}.md').read_text()
    assert 'Recipe `scratch`' in markdown and 'loss form `mean`' in markdown
    assert 'Trunk: alexnet pretrained by this run, 1 epochs' in markdown
    distinct = _table_rows(markdown, next(t for t in re.findall(r'\*\*([^*]+)\*\*', markdown)
                                          if t.startswith('Distinct codes')))
    cells = [c for c in result['cells'] if c['model'] == 'dath_n_16']
    assert float(distinct['DATH-N'][0]) == pytest.approx(cells[0]['results']['16']['distinct_codes'], abs=5e-4)
    assert 'among the first 20 queries' in markdown  # the tiny budget's 20, not 1,000

    # resume with one more seed: the trunk is kept, not pretrained again
    mtime = trunk.stat().st_mtime_ns
    capsys.readouterr()
    assert main(argv[:-1] + ['0,1', '--resume']) == 0
    assert 'pretrain:alexnet: done before' in capsys.readouterr().out and trunk.stat().st_mtime_ns == mtime
    again = json.loads((work / f'{key}.json').read_text())
    assert again['resumed_cells'] == 2 and len(again['cells']) == 4 and again['pretrain'] == result['pretrain']
    cell = again['cells'][0]
    settings = cell['settings']
    assert settings['init_tensors_sha256'] == tensors_file_sha256(trunk) and settings['recipe'] == 'scratch'

    # a cell from other starting weights or another setting is never mixed into the table
    rows = [json.loads(line) for line in cells_path.read_text().splitlines()]
    for key_, value, needle in (('init_tensors_sha256', '0' * 64, 'init_tensors_sha256'),
                                ('lr', 0.5, 'lr: 0.5 -> 0.001')):
        changed = [dict(r, settings=dict(r['settings'], **{key_: value})) if i == 0 else r for i, r in enumerate(rows)]
        cells_path.write_text(''.join(json.dumps(r) + '\n' for r in changed))
        with pytest.raises(ValueError, match=f"{rows[0]['model']} seed 0 was trained with other settings .*{needle}"):
            main(argv[:-1] + ['0,1', '--resume'])
    old = [{k: v for k, v in r.items() if k != 'settings'} for r in rows]
    cells_path.write_text(''.join(json.dumps(r) + '\n' for r in old))
    with pytest.raises(ValueError, match='does not record its settings'):
        main(argv[:-1] + ['0,1', '--resume'])


def test_the_long_budget_differs_from_cpu_pretrained_in_its_hashing_steps_alone():
    """cpu-pretrained-long asks whether longer training narrows the seeds' spread, so nothing else may differ: the
    same recipe, trunk pretraining, gates, sizes, seeds and scoring draw, and 2 epochs of Fashion-MNIST a cell."""
    import dataclasses

    short, long = get_budget('cpu-pretrained'), get_budget('cpu-pretrained-long')
    differ = {f.name for f in dataclasses.fields(short) if getattr(short, f.name) != getattr(long, f.name)}
    assert differ == {'name', 'description', 'max_steps'}
    assert (short.max_steps, long.max_steps) == (300, 2 * (60_000 // long.batch_size))
    assert '936 hashing steps' in long.description and '300 hashing steps' in short.description


def test_the_readme_compares_the_long_budget_with_its_control_from_the_committed_runs():
    """The README reads the seeds' spread at 936 steps against 300 from two committed runs that differ in their
    hashing steps alone (same arms, lengths, seeds, trunk and scoring draw); every figure it quotes is theirs."""
    long = _committed_result('ablation-fashion-mnist-cpu-pretrained-long')
    control = json.loads((REPO / 'benchmarks' / 'ablation-c-vs-n-300-steps.intel-xeon.json').read_text())
    assert (long['budget']['name'], control['budget']['name']) == ('cpu-pretrained-long', 'cpu-pretrained')
    cells = {(c['model'], c['seed']): c['settings'] for c in control['cells']}
    assert len(cells) == len(long['cells']) == 12
    for cell in long['cells']:
        short = cells[(cell['model'], cell['seed'])]
        differ = {k for k in set(short) | set(cell['settings']) if short.get(k) != cell['settings'].get(k)}
        assert differ == {'budget', 'max_steps'}
    # its cells start from the zoo's trunk, and the table says that replaced the budget's pretraining stage
    assert "(`--init`), in place of the budget's pretraining stage" in render_markdown(long, json_path='long.json')
    readme = (REPO / 'README.md').read_text()
    section = readme.split("Longer training and the seeds' spread", 1)[1].split('The pair mosaics left', 1)[0]
    for result in (long, control):
        assert result['machine']['cpu'] in section
        _assert_quotes_means(section, result)


def test_the_readme_reads_the_long_mosaic_table_from_its_committed_run():
    """The reading after the pair mosaics' cpu-pretrained-long table quotes that run's machine and its arms' means
    and spreads at 4 decimals, beside the cpu-pretrained table's for the same arms and lengths."""
    result = _committed_result('ablation-mosaic-pair-cpu-pretrained-long')
    assert result['budget']['name'] == 'cpu-pretrained-long' and result['bits'] == [32, 64]
    assert sorted(a['label'] for a in result['arms']) == ['DATH-C', 'DATH-N', 'DATH-S']
    readme = (REPO / 'README.md').read_text()
    _, end = markers('ablation-mosaic-pair-cpu-pretrained-long')
    section = readme.split(end, 1)[1].split('How to read the `cpu-small`', 1)[0]
    assert result['machine']['cpu'] in section
    _assert_quotes_means(section, result)
    short = _committed_result('ablation-mosaic-pair-cpu-pretrained')  # the 300-step table it is read beside
    _assert_quotes_means(section, short, arms={'DATH-S', 'DATH-C', 'DATH-N'}, bits=('32', '64'))


@needs_fmnist
def test_a_budget_with_an_eval_seed_scores_every_training_seed_on_the_same_subsets(tmp_path):
    """cpu-pretrained trains and scores every cell on seed 0's split and subsets, so seeds vary the training alone;
    a budget without eval_seed uses the cell's own seed's draw. The row, its settings and the checkpoint say which."""
    import dataclasses

    from deephash_zoo.cli.eval import main as eval_main
    from deephash_zoo.evaluation import default_out
    from deephash_zoo.experiments.runs import cell_settings, run_cell
    from deephash_zoo.hub.checkpoint import read_checkpoint_config

    assert get_budget('cpu-pretrained').eval_seed == 0 and get_budget('tiny').eval_seed is None
    fixed = dataclasses.replace(get_budget('tiny'), eval_seed=0)
    for budget, scored_on in ((fixed, 0), (get_budget('tiny'), 1)):
        run_dir = tmp_path / f'{budget.eval_seed}'
        row = run_cell('dmlh_cnnf_16', 'fashion-mnist', budget, 1, run_dir, keep=True)
        report = json.loads((default_out(run_dir / 'checkpoint') / 'metrics.json').read_text())
        assert row['seed'] == 1 and row['eval_seed'] == report['protocol']['seed'] == scored_on
        assert row['results']['16']['map'] == pytest.approx(report['results']['16']['map'])
        assert row['settings']['eval_seed'] == budget.eval_seed
        # trained on that split too (a mosaic's training mosaics come from it), and deephash-eval defaults to it
        training = read_checkpoint_config(run_dir / 'checkpoint')['training']
        assert training['seed'] == 1 and training['data_seed'] == budget.eval_seed
        assert eval_main(['--checkpoint', str(run_dir), '--query-subset', '20', '--db-subset', '60', '--no-plots',
                          '--out', str(tmp_path / 'eval'), '--no-progress']) == 0
        assert json.loads((tmp_path / 'eval' / 'metrics.json').read_text())['protocol']['seed'] == scored_on
    # a cell scored on its own seed's draw is not resumed into a table scored on one draw
    assert cell_settings('dmlh_cnnf_16', 'fashion-mnist', fixed, None) != \
        cell_settings('dmlh_cnnf_16', 'fashion-mnist', get_budget('tiny'), None)


def _fake_result(maps: dict) -> dict:
    """An ablation result with the given per-seed mAPs {arm label: [seed0, seed1, seed2]} at 16 bits."""
    arms = [a for a in arms_for('ablation', (16,)) if a.label in maps]
    cells = []
    for arm in arms:
        for seed, m in enumerate(maps[arm.label]):
            cells.append(dict(model=arm.models[16], seed=seed, results={'16': dict(map=m, p_at_n={'100': m})},
                              epoch_seconds=1.0, images_per_s=10.0, train_seconds=1.0))
    return dict(experiment='ablation', data='fashion-mnist', seeds=[0, 1, 2], bits=[16],
                arms=[dict(label=a.label, description=a.description, models={'16': a.models[16]}) for a in arms],
                params={a.models[16]: 1 for a in arms}, cells=cells, encoding={}, chance=dict(map=0.1, p_at_100=0.1),
                budget=dict(name='cpu-small', description='d', topk={}), wall_seconds=60.0,
                generated='2026-11-25T00:00',
                command='deephash-experiment ablation', machine=dict(cpu='x', usable_cores=2, gpu=None))


def test_verdicts_follow_the_spread_rule():
    assert verdict((0.50, 0.01, 3), (0.40, 0.01, 3)) == 'confirmed'
    assert verdict((0.40, 0.01, 3), (0.50, 0.01, 3)) == 'contradicted'
    assert verdict((0.50, 0.06, 3), (0.40, 0.05, 3)) == 'cannot tell'
    assert verdict((0.50, 0.0, 1), (0.40, 0.0, 1)) == 'cannot tell'  # one seed: no spread to judge by
    result = _fake_result({'DATH-S': [0.50, 0.51, 0.52], 'DATH-C': [0.30, 0.31, 0.29],
                           'DATH-N': [0.40, 0.60, 0.20]})
    found = {c['claim']: c['per_bits']['16'] for c in claims(result)}
    assert found == {'position attention helps': 'cannot tell', 'channel attention helps': 'cannot tell',
                     'position attention helps more than channel attention': 'confirmed'}
    markdown = render_markdown(result)
    assert '(DATH-S over DATH-C): confirmed at 16 bits.' in markdown
    assert summarize(result)['DATH-S']['bits']['16']['map'][0] == pytest.approx(0.51)
    assert 'At the random-codes level' not in markdown


def test_each_ordering_shows_its_differences_seed_by_seed():
    """An arm ahead at every seed by less than the seeds' spread: the unpaired verdict cannot tell, and the table
    shows the seed-by-seed differences (same query and database subsets per seed) that say more."""
    from deephash_zoo.experiments.report import paired_differences

    result = _fake_result({'DATH-S': [0.42, 0.61, 0.25], 'DATH-N': [0.40, 0.60, 0.20]})
    [found] = claims(result)
    assert found['per_bits'] == {'16': 'cannot tell'}
    assert found['per_seed']['16'] == pytest.approx([0.02, 0.01, 0.05])
    assert paired_differences(result, 'DATH-N', 'DATH-S')['16'] == pytest.approx([-0.02, -0.01, -0.05])
    assert ('(DATH-S over DATH-N): cannot tell at 16 bits. Seed by seed, DATH-S minus DATH-N: '
            '+0.0200 / +0.0100 / +0.0500 at 16 bits (DATH-S ahead in 3 of 3).') in render_markdown(result)
    one_seed = dict(result, seeds=result['seeds'][:1], cells=[c for c in result['cells'] if c['seed'] == 0])
    assert 'Seed by seed' not in render_markdown(one_seed)  # one difference is no pattern


def test_rows_at_the_random_codes_level_are_named():
    result = _fake_result({'DATH-S': [0.50, 0.51, 0.52], 'DATH-N': [0.10, 0.11, 0.09]})
    assert at_chance(result, summarize(result)) == ['DATH-N']
    assert 'At the random-codes level (mean within one std of 0.100) at every length: DATH-N.' in \
        render_markdown(result)


def test_cards_go_where_no_zoo_card_stands_and_only_for_published_data(tmp_path):
    """The committed zoo table owns its six headline cards; data the zoo publishes no weights for, and a model
    on data it is not registered for, get none (the card would name weights timm could not resolve)."""
    owned = zoo_cards(REPO / 'hub_cards')
    assert {'dath_alexnet_32.fmnist', 'admth_cnnf_multi.fmnist', 'dmlh_cnnf_multi.fmnist'} <= set(owned)
    assert not any(name.startswith(('dath_s_', 'dath_n_')) for name in owned)
    said = []
    cell = {'model': 'dath_n_16', 'checkpoint': str(tmp_path)}
    assert write_cards({'data': 'mosaic-quadrant', 'cells': [cell]}, tmp_path / 'cards', say=said.append) == []
    assert said and 'mosaic-quadrant' in said[0] and not (tmp_path / 'cards').exists()
    (tmp_path / 'model.safetensors').write_bytes(b'')  # kept, but its tag is not registered: no card is rendered
    said.clear()
    unregistered = {'data': 'fashion-mnist', 'cells': [dict(cell, model='dmlh_cnnf_32')]}
    assert write_cards(unregistered, tmp_path / 'cards', say=said.append) == []
    assert said == ['no card for dmlh_cnnf_32: fmnist is not one of its published tags '
                    '(deephash_zoo/models/published.py)']


def test_readme_block_is_replaced_between_markers_only(tmp_path):
    readme = tmp_path / 'README.md'
    start, end = markers('ablation-fashion-mnist-cpu-small')
    readme.write_text(f'intro\n{start}\nold table\n{end}\noutro\n')
    update_readme(readme, 'ablation-fashion-mnist-cpu-small', 'new table\n')
    assert readme.read_text() == f'intro\n{start}\nnew table\n{end}\noutro\n'
    update_readme(readme, 'ablation-fashion-mnist-cpu-small', 'newer\n')  # idempotent: the markers stay
    assert readme.read_text() == f'intro\n{start}\nnewer\n{end}\noutro\n'
    with pytest.raises(ValueError, match='no block for multitask-mosaic-cpu-small'):
        update_readme(readme, 'multitask-mosaic-cpu-small', 'x')


@needs_fmnist
def test_subsets_the_data_cannot_give_stop_the_experiment_before_it_trains(tmp_path):
    """The mosaics hold 1,000 queries: a budget asking for more fails at once, not after its first trunk and cell."""
    import dataclasses

    from deephash_zoo.experiments.run import run_experiment

    budget = dataclasses.replace(get_budget('tiny-pretrained'), query_subset=5000)
    with pytest.raises(ValueError, match=r"--query-subset 5,000 is larger than the protocol's 1,000 items"):
        run_experiment('ablation', 'mosaic', budget, tmp_path / 'work', bits=(16,), only=('DATH-N',),
                       measure_encoding=False, say=lambda _: None)
    assert [p.name for p in (tmp_path / 'work').iterdir()] == []  # no trunk, no run folder, no cell


def test_bad_requests_are_one_line_errors(tmp_path, capsys):
    from deephash_zoo.cli._common import run_main

    assert run_main(main, ['ablation', '--budget', 'tiny', '--publish', '--work', str(tmp_path)]) == 2
    assert 'tiny budget is for tests' in capsys.readouterr().err
    assert run_main(main, ['ablation', '--arms', 'DATH-X', '--work', str(tmp_path)]) == 2
    assert "has no arm ['DATH-X']" in capsys.readouterr().err
    assert run_main(main, ['ablation', '--bits', '24', '--work', str(tmp_path)]) == 2
    assert 'code lengths must be among' in capsys.readouterr().err
    readme = tmp_path / 'README.md'
    readme.write_text('no markers\n')
    assert run_main(main, ['multitask', '--publish', '--readme', str(readme), '--work', str(tmp_path)]) == 2
    assert 'has no block for multitask-mosaic-cpu-small' in capsys.readouterr().err
    missing = ['multitask', '--publish', '--readme', str(tmp_path / 'NOPE.md'), '--work', str(tmp_path)]
    assert run_main(main, missing) == 2
    assert 'NOPE.md: not found' in capsys.readouterr().err
    with pytest.raises(ValueError, match='unknown budget'):
        get_budget('huge')


COMMITTED = sorted(p.stem for p in (REPO / 'hub_cards' / 'results').glob('*.json') if not p.stem.startswith('zoo-'))


def test_the_committed_experiments_are_found():
    assert {'ablation-fashion-mnist-cpu-small', 'ablation-mosaic-cpu-small', 'multitask-mosaic-cpu-small'} <= set(
        COMMITTED)


@pytest.mark.parametrize('key', COMMITTED)
def test_committed_tables_are_the_render_of_the_committed_json(key):
    """README blocks and hub_cards/results/*.md are exactly what the command renders from the raw JSON."""
    result = _committed_result(key)
    markdown = render_markdown(result, json_path=f'hub_cards/results/{key}.json')
    assert (REPO / 'hub_cards' / 'results' / f'{key}.md').read_text() == markdown
    start, end = markers(key)
    readme = (REPO / 'README.md').read_text()
    block = readme.split(start + '\n', 1)[1].split(end, 1)[0]
    assert block == markdown.replace('### ', '#### ', 1)
    assert len(result['seeds']) == 3 and key.endswith('-' + result['budget']['name'])


def test_readme_blocks_without_results_are_empty():
    """An experiment's README block holds its command's output or nothing (not run yet): never typed text."""
    readme = (REPO / 'README.md').read_text()
    keys = re.findall(r'<!-- deephash-experiment:(\S+):start -->', readme)
    assert 'ablation-fashion-mnist-cpu-pretrained' in keys
    for key in set(keys) - set(COMMITTED) - {'zoo-fmnist'}:
        start, end = markers(key)
        assert readme.split(start + '\n', 1)[1].split(end, 1)[0] == '', key


def test_training_setup_names_open_attention_gates_for_dath_only():
    from deephash_zoo.experiments.report import training_setup

    opened = {'budget': {'recipe': 'scratch', 'attn_gate_init': 1.0}, 'experiment': 'ablation'}
    assert any('`--attn-gate-init 1`' in line for line in training_setup(opened))
    closed = {'budget': {'recipe': 'scratch', 'attn_gate_init': None}, 'experiment': 'ablation'}
    assert not any('gate' in line for line in training_setup(closed))
    admth = dict(opened, experiment='multitask')  # SE has no gate: nothing to say
    assert not any('gate' in line for line in training_setup(admth))


def test_mosaic_trunks_are_pretrained_on_the_items_their_tiles_are_cut_from():
    """A mosaic's 5,000 training mosaics are too few to pretrain on: its stage trains on mosaic-single (the source
    items at tile scale and position), and the table says so (a Fashion-MNIST table, pretrained on its own data,
    says nothing more)."""
    from deephash_zoo.experiments.report import training_setup
    from deephash_zoo.experiments.run import pretraining_data

    assert [pretraining_data(d) for d in ('mosaic', 'mosaic-pair', 'mosaic-quadrant')] == ['mosaic-single'] * 3
    assert pretraining_data('fashion-mnist') == 'fashion-mnist'
    assert pretraining_data('list:nus.txt') == 'list:nus.txt'
    source = ("on single Fashion-MNIST items on a random tile of the 2x2 mosaic canvas (the mosaics' source items "
              'at tile scale and position, one class label each)')
    for data, pretrained_on, named in (('mosaic-pair', 'mosaic-single', source),
                                       ('fashion-mnist', 'fashion-mnist', None)):
        record = dict(epochs=5, steps=2340, wall_seconds=60.0, cpu_seconds=120.0, accuracy=0.9,
                      settings=dict(data=pretrained_on))
        result = {'budget': {'recipe': 'scratch'}, 'experiment': 'ablation', 'data': data,
                  'pretrain': {'alexnet': record}}
        trunk = [line for line in training_setup(result) if line.startswith('Trunk:')]
        assert len(trunk) == 1, trunk
        assert f'pretrained by this run {named},' in trunk[0] if named else 'pretrained by this run, ' in trunk[0]


def test_spread_separates_training_seeds_from_evaluation_draws():
    from deephash_zoo.experiments.spread import summarize_spread

    table = {0: {0: 0.80, 1: 0.84}, 1: {0: 0.81, 1: 0.85}}  # the draw moves both seeds by 0.04, training by 0.01
    s = summarize_spread(table)
    assert s['mean_std_over_training_seeds'] == pytest.approx(0.01 / 2 ** 0.5)
    assert s['mean_std_over_eval_seeds'] == pytest.approx(0.04 / 2 ** 0.5)
    assert s['std_own_draw'] == pytest.approx(0.05 / 2 ** 0.5)


@needs_fmnist
def test_spread_command_scores_every_training_seed_on_every_draw_and_reuses_its_checkpoints(tmp_path, capsys):
    from deephash_zoo.evaluation import default_out
    from deephash_zoo.experiments.spread import main

    work, out = tmp_path / 'work', tmp_path / 'spread.json'
    argv = ['--model', 'dmlh_cnnf_16', '--budget', 'tiny', '--seeds', '0,1', '--work', str(work), '--out', str(out)]
    assert main(argv) == 0
    record = json.loads(out.read_text())
    assert set(record['map']) == {'0', '1'} and all(set(row) == {'0', '1'} for row in record['map'].values())
    assert record['machine']['cpu'] and 'std over training seeds' in capsys.readouterr().out
    # the diagonal is what a cell of a budget without eval_seed reports: its own seed's draw
    for seed in (0, 1):
        checkpoint = work / f'dmlh_cnnf_16-seed{seed}' / 'checkpoint'
        metrics = json.loads((default_out(checkpoint) / 'metrics.json').read_text())
        assert metrics['protocol']['seed'] == seed
        assert record['map'][str(seed)][str(seed)] == pytest.approx(metrics['results']['16']['map'])
    weights = work / 'dmlh_cnnf_16-seed0' / 'checkpoint' / 'model.safetensors'
    mtime = weights.stat().st_mtime_ns
    assert main(argv) == 0 and weights.stat().st_mtime_ns == mtime  # scored again, not retrained
    assert json.loads(out.read_text())['map'] == record['map']
    assert main(argv[:4] + ['--seeds', '0', '--work', str(work)]) == 2
    assert 'two or more distinct seeds' in capsys.readouterr().err


def _at_lengths(result: dict, bits: tuple) -> dict:
    """``result`` as if its table had run at ``bits`` only: the arms' models and the cells of those lengths."""
    keep = [str(b) for b in bits]
    arms = [dict(arm, models={b: m for b, m in arm['models'].items() if b in keep}) for arm in result['arms']]
    models = {m for arm in arms for m in arm['models'].values()}
    cells = [dict(c, results={b: r for b, r in c['results'].items() if b in keep})
             for c in result['cells'] if c['model'] in models]
    return dict(result, bits=list(bits), arms=arms, cells=cells)


def test_the_time_claim_counts_the_single_length_models_that_ran():
    """At 32 and 64 bits a multi-task table times two single-length models, not the paper's four: the claim says so
    rather than judging the paper's four-model claim on half of them; a table of all four lengths judges that claim.
    Read from the committed mosaic-pair study (Intel Xeon), whose 16 and 48-bit columns were added to its 32 and 64."""
    full = _committed_result('multitask-mosaic-pair-cpu-pretrained')
    two = _at_lengths(full, (32, 64))
    timed = [c for c in claims(two) if 'time' in c['per_bits']]
    assert len(timed) == 1 and 'the 2 single-length models of the lengths run' in timed[0]['claim']
    assert 'the four' not in timed[0]['claim']
    # one multi-length model's step against one single-length model's: parity within its spread (1.023 +- 0.028)
    ratio = multitask_time(two, summarize(two))
    assert ratio['num_singles'] == 2 and abs(ratio['ratio'][0] - 1.0) < ratio['ratio'][1]
    assert timed[0]['per_bits']['time'] == 'cannot tell'
    # with all four lengths run, the claim is the paper's: one model against the four
    for key in ('multitask-mosaic-pair-cpu-pretrained', 'multitask-fashion-mnist-cpu-pretrained'):
        result = _committed_result(key)
        timed = [c for c in claims(result) if 'time' in c['per_bits']]
        assert len(timed) == 1 and 'the four single-length models' in timed[0]['claim']
        ratio = multitask_time(result, summarize(result))  # about 0.5 on both (Intel Xeon)
        assert ratio['num_singles'] == 4 and ratio['ratio'][0] + ratio['ratio'][1] < 1.0
        assert timed[0]['per_bits']['time'] == 'confirmed'


def test_the_readme_quotes_the_committed_spread_measurement():
    """The README's spread table and figures are the committed JSON's, not typed numbers."""
    record = json.loads((REPO / 'benchmarks' / 'eval-spread.amd-epyc.json').read_text())
    readme = (REPO / 'README.md').read_text()
    section = readme.split('How far a seed moves a cell, and why', 1)[1].split('How to read', 1)[0]
    assert record['machine']['cpu'].startswith('AMD EPYC') and 'AMD EPYC' in section
    for t in record['seeds']:
        row = f'| {t} | ' + ' | '.join(f"{record['map'][str(t)][str(e)]:.4f}" for e in record['seeds']) + ' |'
        assert row in section
    for key in ('mean_std_over_eval_seeds', 'mean_std_over_training_seeds', 'std_own_draw'):
        assert f'{record[key]:.4f}' in section


def _cell_line(model: str = 'dath_n_16', data: str = 'fashion-mnist', budget: str = 'tiny', seed: int = 0) -> str:
    """A cells-file line naming what a cell records of where it belongs (its numbers are not read here)."""
    return json.dumps(dict(model=model, data=data, seed=seed, results={}, settings=dict(budget=budget, data=data)))


_TINY_DATH_N = ['ablation', '--budget', 'tiny', '--arms', 'DATH-N', '--bits', '16', '--seeds', '0', '--keep', 'none',
                '--no-encoding-time']


def test_a_cells_file_that_holds_cells_is_refused_without_resume_and_kept(tmp_path, capsys):
    """The README keeps cells files under version control: a run without --resume named one and emptied it."""
    from deephash_zoo.cli._common import run_main

    cells = tmp_path / 'kept.jsonl'
    cells.write_text(_cell_line() + '\n')
    assert run_main(main, _TINY_DATH_N + ['--work', str(tmp_path / 'w'), '--cells', str(cells)]) == 2
    assert 'already holds cells: --resume goes on from it; to start over, delete it or name another file' in \
        capsys.readouterr().err
    assert cells.read_text() == _cell_line() + '\n' and not (tmp_path / 'w').exists()  # refused before any work


@pytest.mark.parametrize('line, why', [
    (_cell_line(model='admth_cnnf_multi'), 'the model admth_cnnf_multi belongs to no arm of the ablation experiment'),
    (_cell_line(data='mosaic'), 'a cell trained on mosaic, not fashion-mnist'),
    (_cell_line(budget='cpu-small'), 'a cell of the cpu-small budget, not tiny'),
    ('[1, 2]', 'not a JSON record'),
])
def test_a_cell_of_another_experiment_is_refused_naming_its_line(tmp_path, capsys, line, why):
    """Two experiments sharing a --work (or a cells file) destroyed each other's cells; now the second is refused."""
    from deephash_zoo.cli._common import run_main

    cells = tmp_path / 'cells.jsonl'
    cells.write_text(_cell_line(model='dath_s_32') + '\n' + line + '\n')
    assert run_main(main, _TINY_DATH_N + ['--work', str(tmp_path / 'w'), '--cells', str(cells), '--resume']) == 2
    assert capsys.readouterr().err.startswith(f'error: {cells}, line 2: {why}')
    assert not (tmp_path / 'w').exists()


def test_a_card_is_not_written_from_a_checkpoint_holding_other_weights(tmp_path):
    """Run folders are named by model and seed: a checkpoint another run trained over is not the cell's weights."""
    from safetensors.torch import save_file

    ckpt = tmp_path / 'dath_n_16-seed0' / 'checkpoint'
    ckpt.mkdir(parents=True)
    save_file({'w': __import__('torch').zeros(2)}, str(ckpt / 'model.safetensors'))
    cell = {'model': 'dath_n_16', 'seed': 0, 'checkpoint': str(ckpt), 'weights_sha256': '0' * 64}
    said = []
    assert write_cards({'data': 'fashion-mnist', 'cells': [cell]}, tmp_path / 'cards', say=said.append) == []
    assert len(said) == 1 and said[0].startswith(f'no card for dath_n_16: {ckpt} holds other weights')


@needs_fmnist
def test_resumed_cells_count_the_tables_and_new_cells_record_machine_and_time(tmp_path, capsys):
    """A cells file holding another length's cell: the header counted it as resumed ('resumed 1 of the 1 cells');
    a new cell records where and when it ran (a cells file outlives the call whose header describes it)."""
    cells = tmp_path / 'cells.jsonl'
    cells.write_text(_cell_line(model='dath_s_32') + '\n')
    assert main(_TINY_DATH_N + ['--work', str(tmp_path / 'w'), '--cells', str(cells), '--resume']) == 0
    result = json.loads((tmp_path / 'w' / 'ablation-fashion-mnist-tiny.json').read_text())
    assert result['resumed_cells'] == 0 and [c['model'] for c in result['cells']] == ['dath_n_16']
    cell = result['cells'][0]
    assert cell['machine']['cpu'] == result['machine']['cpu'] and cell['machine']['device'] == 'cpu'
    assert cell['finished'].endswith('+00:00') and cell['finished'][:10] == result['generated'][:10]
    assert 'in the last call' not in (tmp_path / 'w' / 'ablation-fashion-mnist-tiny.md').read_text()


def test_resume_without_a_cells_file_says_every_cell_runs(tmp_path):
    from deephash_zoo.experiments.run import run_experiment

    said = []

    def stop_before_training(line: str) -> None:
        said.append(line)
        if line.startswith('chance level'):
            raise KeyboardInterrupt

    cells = tmp_path / 'nowhere.jsonl'
    with pytest.raises(KeyboardInterrupt):
        run_experiment('ablation', 'fashion-mnist', get_budget('tiny'), tmp_path / 'w', bits=(16,), only=('DATH-N',),
                       resume=True, cells_path=cells, measure_encoding=False, say=stop_before_training)
    assert said[0] == f'{cells}: no cells file found, so every cell runs'


def test_resume_with_other_settings_is_refused_before_the_pretraining_stage(tmp_path):
    """The settings check waited for the stage's trunk (hours at cpu-pretrained) before refusing."""
    from deephash_zoo.experiments.run import run_experiment
    from deephash_zoo.experiments.runs import cell_settings

    budget = get_budget('tiny-pretrained')
    trunk = str(tmp_path / 'w' / 'pretrain-alexnet' / 'trunk.safetensors')
    settings = dict(cell_settings('dath_n_16', 'fashion-mnist', budget, trunk, 'a' * 64), lr=0.5)
    cells = tmp_path / 'cells.jsonl'
    cells.write_text(json.dumps(dict(model='dath_n_16', data='fashion-mnist', seed=0, settings=settings)) + '\n')
    with pytest.raises(ValueError, match='dath_n_16 seed 0 was trained with other settings .*lr: 0.5 ->'):
        run_experiment('ablation', 'fashion-mnist', budget, tmp_path / 'w', only=('DATH-N',), seeds=(0,),
                       resume=True, cells_path=cells, measure_encoding=False, say=lambda _: None)
    assert not (tmp_path / 'w' / 'pretrain-alexnet').exists()


def test_unreadable_init_and_unknown_models_are_one_line_errors(tmp_path, capsys):
    from deephash_zoo.cli._common import run_main
    from deephash_zoo.experiments.spread import main as spread_main

    trunc = tmp_path / 'trunc.safetensors'
    trunc.write_bytes(b'\x10\x00\x00\x00\x00\x00\x00\x00{"w": ')  # a header cut short
    assert run_main(main, _TINY_DATH_N + ['--work', str(tmp_path / 'w'), '--init', str(trunc)]) == 2
    assert capsys.readouterr().err.startswith(f'error: {trunc}: not a readable safetensors file')
    assert not (tmp_path / 'w').exists()
    spread = ['--budget', 'tiny', '--work', str(tmp_path / 's'), '--seeds', '0,1']
    assert spread_main(spread + ['--model', 'dmlh_cnnf_16', '--init', str(trunc)]) == 2
    assert capsys.readouterr().err.startswith(f'error: {trunc}: not a readable safetensors file')
    assert spread_main(spread + ['--model', 'dath_x_16']) == 2
    assert 'error: Unknown model (dath_x_16)' in capsys.readouterr().err


def test_the_time_claim_names_the_singles_its_sum_covers_in_a_partly_grown_table():
    """A table grown for some arms only: the singles' time sums the lengths every arm ran, and the label says how
    many models that is (it named all four lengths of the arm against a two-model sum)."""
    full = _committed_result('multitask-mosaic-pair-cpu-pretrained')
    arms = [dict(a, models={b: m for b, m in a['models'].items() if a['label'] != 'ADMTH (single-length)'
                            or b in ('32', '64')}) for a in full['arms']]
    grown = dict(full, arms=arms)
    [timed] = [c for c in claims(grown) if 'time' in c['per_bits']]
    assert 'the 2 single-length models of the lengths every arm ran' in timed['claim']
    assert 'one multi-length model vs the 2 single-length models of the lengths every arm ran' in \
        render_markdown(grown)
    assert multitask_time(grown, summarize(grown))['num_singles'] == 2


def test_the_header_names_other_cpus_the_resumed_cells_ran_on():
    result = _fake_result({'DATH-S': [0.50, 0.51, 0.52], 'DATH-N': [0.40, 0.60, 0.20]})
    assert 'other CPUs' not in render_markdown(result)  # cells that record no machine: nothing said
    result['cells'][0]['machine'] = {'cpu': 'AMD EPYC'}
    result['cells'][1]['machine'] = {'cpu': 'x'}
    assert "Of the 6 cells, some ran on other CPUs than this call's: 1 on AMD EPYC." in render_markdown(result)


@pytest.mark.parametrize('flags, said', [
    (['--render-only', '--bits', '16', '--resume'], '--render-only trains nothing and re-renders the JSON as written: '
                                                   'drop --bits, --resume'),
    (['--bits', '32,32'], 'argument --bits: expected distinct non-negative integers'),
    (['--bits', ''], 'argument --bits: expected at least one integer, got none'),
    (['--seeds', ''], 'argument --seeds: expected at least one integer, got none'),
    (['--seeds', '-1'], 'argument --seeds: expected distinct non-negative integers'),
    (['--arms', ','], 'argument --arms: expected comma-separated arm labels'),
])
def test_flags_it_cannot_honour_are_refused_in_one_line(tmp_path, capsys, flags, said):
    from deephash_zoo.cli._common import run_main

    argv = ['ablation', '--budget', 'tiny', '--work', str(tmp_path)] + flags
    if flags[0] == '--render-only':
        assert run_main(main, argv) == 2
    else:
        with pytest.raises(SystemExit, match='2'):  # argparse's usage line and the one error line
            run_main(main, argv)
    assert said in capsys.readouterr().err


def test_empty_items_of_arms_are_ignored_as_bits_and_seeds_do():
    from deephash_zoo.cli.experiment import _labels

    assert _labels('DATH-S,') == ('DATH-S',) and _labels(' DATH-S , DATH-N') == ('DATH-S', 'DATH-N')
