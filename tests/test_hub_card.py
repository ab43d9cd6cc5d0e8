"""Model cards: rendered from config.json + metrics.json through the package card template, parsed back with
huggingface_hub, and every number traced to those files."""
import json
import re

import numpy as np
import pytest
import timm
import torch
from huggingface_hub import ModelCard

import deephash_zoo  # noqa: F401  (registers the models)
from deephash_zoo.cli._common import run_main
from deephash_zoo.cli.card import main as card_main
from deephash_zoo.evaluation import score_codes
from deephash_zoo.hub.card import PAPERS, TEMPLATE_PATH, paper_for, render_card
from deephash_zoo.hub.checkpoint import save_checkpoint, weights_sha256
from deephash_zoo.retrieval.metrics import TIE_BREAK

BITS = (8, 16)


def _metrics(ckpt, arch='dath_n_16', seed=0):
    """A metrics.json in deephash-eval's schema, its numbers from score_codes() on random codes."""
    rng = np.random.default_rng(seed)
    ql, dl = rng.integers(0, 10, 30), rng.integers(0, 10, 90)
    results = {}
    for b in BITS:
        q = rng.choice([-1, 1], size=(30, b)).astype(np.int8)
        d = rng.choice([-1, 1], size=(90, b)).astype(np.int8)
        results[str(b)] = score_codes(q, d, np.eye(10)[ql], np.eye(10)[dl], None, b, seed=0)
    sha = weights_sha256(ckpt / 'model.safetensors')
    return dict(schema_version=1, model=arch, checkpoint=str(ckpt), weights_sha256=sha,
                dataset='fashion-mnist', img_size=64, results=results, tie_break=TIE_BREAK, package_version='0.1.0',
                protocol=dict(data='fashion-mnist', seed=0, num_queries=30, num_database=90, protocol_num_queries=1000,
                              protocol_num_database=60000, query_subset=30, db_subset=90, map_topk='all', num_labels=10,
                              multi_label=False))


@pytest.fixture(scope='module')
def ckpt(module_tmp):
    torch.manual_seed(0)
    model = timm.create_model('dath_n_16')
    model.reset_classifier(sum(BITS), bits=BITS)
    root = module_tmp.mktemp('card')
    path = save_checkpoint(model, root / 'checkpoint', dataset='fashion-mnist',
                           training=dict(epochs=3, lr=1e-5, img_size=64, seed=0, data_root='/home/me/fmnist'))
    report = _metrics(path)
    (root / 'metrics.json').write_text(json.dumps(report, indent=2))
    return path, root / 'metrics.json', report


def test_card_round_trips_through_huggingface_hub(ckpt, tmp_path, capsys):
    path, metrics, report = ckpt
    out = tmp_path / 'hub_cards' / 'dath_n_16.fmnist.md'
    assert run_main(card_main, ['--checkpoint', str(path), '--metrics', str(metrics), '--out', str(out)]) == 0
    assert 'wrote' in capsys.readouterr().out
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # written atomically: no temporary left
    card = ModelCard.load(out)
    data = card.data
    assert data.library_name == 'timm' and data.license == 'apache-2.0'
    assert data.tags == ['image-retrieval', 'hashing', 'timm', 'deephash-zoo']
    assert data.pipeline_tag == 'image-feature-extraction'
    assert data.datasets == ['zalando-datasets/fashion_mnist']
    by_bits = {r.metric_config: r for r in data.eval_results}
    assert sorted(by_bits) == ['16 bits', '8 bits']
    for b in BITS:
        r = by_bits[f'{b} bits']
        assert r.metric_value == report['results'][str(b)]['map']  # exactly the JSON's number
        # a Hub task id (the Hub has none for retrieval), named for what it measures
        assert (r.task_type, r.task_name) == ('image-feature-extraction', 'Image Retrieval')
        assert (r.metric_type, r.metric_name) == ('map', f'mAP@all ({b} bits)')
        assert r.dataset_type == 'zalando-datasets/fashion_mnist' and r.dataset_split == 'test'
    text = card.text
    assert PAPERS['dath'].bibtex() in text and 'doi     = {10.3389/fnbot.2021.728161}' in text
    assert "import deephash_zoo" in text and "timm.create_model('dath_n_16', pretrained=True)" in text
    # install and import lines come first, before anything else the card says
    first_code = text.index('```')
    assert text[first_code:].startswith('```bash\npip install deephash-zoo\n```')
    assert text.index('import deephash_zoo') < text.index('## Retrieval results')
    limits = text[text.index('## Limitations'):text.index('## Export')]
    assert 'single label), at 64x64' in limits and 'encode at 64x64' in limits  # the size it was trained at
    assert 'deephash-export --onnx --checkpoint dath_n_16.fmnist' in text
    assert 'Not measured.' in text and '/home/me' not in text
    # the results table: each cell is the JSON's value, formatted
    rows = [line for line in text.splitlines() if re.match(r'\| (8|16) \|', line)]
    assert len(rows) == 2
    for line in rows:
        cells = [c.strip() for c in line.strip('|').split('|')]
        r = report['results'][cells[0]]
        chance = r['random_codes']['map']
        want = [f"{r['map']:.4f}", f'{chance:.4f}', f"{r['map'] / chance:.2f}x", f"{r['map_at_1000']:.4f}",
                f"{r['map_tie_aware']:.4f}"]
        want += [f'{v:.4f}' for v in (r['p_at_n']['100'], r['p_at_n']['500'], r['p_at_n']['1000'],
                                      r['precision_radius2'], r['recall_radius2'])]
        assert cells[1:] == want + [f"{100 * r['distinct_codes']['fraction']:.1f}%"]
    # beside each row, the same metrics of random codes (the level each number is read against)
    chance_rows = [line for line in text.splitlines() if re.match(r'\| (8|16), random codes \|', line)]
    assert len(chance_rows) == 2
    for line in chance_rows:
        cells = [c.strip() for c in line.strip('|').split('|')]
        rand = report['results'][cells[0].split(',')[0]]['random_codes']
        assert cells[1] == f"{rand['map']:.4f}" and cells[4] == f"{rand['map_at_1000']:.4f}"
        assert cells[5] == f"{rand['map_tie_aware']:.4f}"
        assert cells[6] == f"{rand['p_at_n']['100']:.4f}" and cells[9] == f"{rand['precision_radius2']:.4f}"
    assert 'P@N with N above 90 counts the whole database' in text


def _batch(ms, lo, hi, batch):
    return dict(ms_per_image=ms, min=lo, max=hi, q25=ms, q75=ms, images_per_s=1000.0 / ms, repeats=3, batch=batch)


def _bench_json(arch):
    """deephash-export --bench's efficiency.json (schema_version 1), two models, one runtime that did not run."""
    def model(name, ms):
        return dict(model=name, bits=[16], params=1, weight_bytes=4, inputs='random', rows=[
            dict(runtime='ONNX Runtime fp32', device='cpu', precision='fp32', status='ok', reason='',
                 config=dict(threads=1), probes=[], batches={'1': _batch(ms, ms - 1, ms + 1, 1),
                                                             '64': _batch(ms / 2, ms / 2 - 0.5, ms / 2 + 0.5, 64)},
                 sign_agreement=0.99875, max_abs_diff=1e-6),
            dict(runtime='ORT TensorRT fp16', device='cuda', precision='fp16', status='not run',
                 reason='no CUDA device', config={}, probes=[], batches={}, sign_agreement=None, max_abs_diff=None)])
    return dict(schema_version=1, command='deephash-export --bench --models x --out export', generated='2025-01-01',
                machine=dict(cpu='AMD EPYC', cores=2, usable_cores=2, gpu='none (no CUDA device)', torch='2.14.1',
                             onnxruntime='1.32.0'),
                settings=dict(img_size=224, large_batch=64), wall_seconds=1.0,
                models=[model(arch, 33.25), model('admth_cnnf_multi', 91.5)])


def test_efficiency_row_absent_file_and_other_repo(ckpt, tmp_path):
    path, metrics, _ = ckpt
    eff = tmp_path / 'efficiency.json'
    eff.write_text(json.dumps(_bench_json('dath_n_16')))
    text = str(render_card(path, metrics, efficiency=eff))
    assert '| ONNX Runtime fp32 | cpu | fp32 | 33.25 [32.25-34.25] | 16.62 [16.12-17.12] | 60.2 | 0.9988 |' in text
    assert '| ORT TensorRT fp16 | cuda | fp16 | not run: no CUDA device |' in text
    assert '91.50' not in text and 'AMD EPYC' in text and '224x224 input' in text
    eff.write_text(json.dumps(_bench_json('dath_alexnet_16')))
    assert 'efficiency.json` has no row for `dath_n_16`' in str(render_card(path, metrics, efficiency=eff))
    eff.write_text(json.dumps({'rows': []}))
    with pytest.raises(ValueError, match=r'efficiency\.json: expected deephash-export --bench output'):
        render_card(path, metrics, efficiency=eff)
    text = str(render_card(path, metrics, efficiency=tmp_path / 'missing.json'))
    assert 'Not measured (`' in text and 'missing.json` does not exist yet)' in text
    card = render_card(path, metrics, repo_id='someone/my-hash')
    assert "timm.create_model('hf-hub:someone/my-hash', pretrained=True)" in card.text
    assert card.data.to_dict()['model-index'][0]['name'] == 'my-hash'


def test_card_without_metrics_has_no_model_index(ckpt):
    path, _, _ = ckpt
    card = render_card(path)
    assert card.data.eval_results is None and 'model-index' not in str(card)
    assert 'Not evaluated yet' in card.text


def test_refuses_metrics_of_other_weights_or_models(ckpt, tmp_path, capsys):
    path, _, report = ckpt
    other = dict(report, weights_sha256='0' * 64)
    with pytest.raises(ValueError, match=r'measured on weights sha256 000000000000\.\.\., but .*model\.safetensors '
                                         r'has [0-9a-f]{12}\.\.\.; re-run deephash-eval'):
        render_card(path, other)
    with pytest.raises(ValueError, match=r"metrics of 'admth_cnnf_16', but .* holds 'dath_n_16'"):
        render_card(path, dict(report, model='admth_cnnf_16'))
    bad = tmp_path / 'm.json'
    bad.write_text(json.dumps({'schema_version': 2}))
    assert run_main(card_main, ['--checkpoint', str(path), '--metrics', str(bad), '--out', str(tmp_path / 'c.md')]) == 2
    err = capsys.readouterr().err
    assert 'm.json: expected deephash-eval metrics with schema_version 1, got 2' in err and err.count('\n') == 1
    assert not (tmp_path / 'c.md').exists()
    broken = dict(report, results={'16': {'map': 0.5}})
    with pytest.raises(ValueError, match=r"results\['16'\] lacks \['p_at_n', 'precision_radius2'"):
        bad.write_text(json.dumps(broken))
        render_card(path, bad)


def test_papers_and_template():
    assert paper_for('dath_alexnet_32') is PAPERS['dath'] and paper_for('dmlh_cnnf_multi') is PAPERS['admth']
    admth = PAPERS['admth'].bibtex()
    assert admth.startswith('@article{wang2023admth,') and 'number  = {5}' in admth and 'pages   = {1226}' in admth
    assert 'author  = {Wang, L. and Meng, Z. and Dong, F. and Yang, X. and Xi, X. and Nie, X.}' in admth
    assert 'doi     = {10.3390/electronics12051226}' in admth
    # no number typed into the template: outside Jinja expressions only definitions (the r<=2 metric, the code
    # alphabet {-1, +1}, the HF_HUB_OFFLINE=1 switch); names such as int8 or sha256 are not numbers
    literal = re.sub(r'{{.*?}}|{%.*?%}|{#.*?#}', '', TEMPLATE_PATH.read_text(), flags=re.S)
    for definition in ('r<=2', '{-1, +1}', 'HF_HUB_OFFLINE=1'):
        literal = literal.replace(definition, '')
    assert re.findall(r'(?<![\w.])[-+]?\d+(?:\.\d+)?(?!\w)', literal) == []


def test_a_truncated_checkpoint_gets_no_card_and_one_line(ckpt, tmp_path, capsys):
    import shutil

    path = tmp_path / 'cut'
    shutil.copytree(ckpt[0], path)
    weights = path / 'model.safetensors'
    weights.write_bytes(weights.read_bytes()[:weights.stat().st_size // 2])
    assert run_main(card_main, ['--checkpoint', str(path), '--out', str(tmp_path / 'c.md')]) == 2
    err = capsys.readouterr().err
    assert 'model.safetensors: corrupt or truncated safetensors file' in err and err.count('\n') == 1, err
    assert not (tmp_path / 'c.md').exists()


def test_the_card_says_what_kind_of_run_and_scoring_its_numbers_come_from(tmp_path):
    """A card claimed the trunk was pretrained (recipe scratch) when the run had no --init, and presented a smoke
    run scored on subsets as an ordinary result."""
    model = timm.create_model('dath_n_16')
    model.reset_classifier(sum(BITS), bits=BITS)
    smoke = save_checkpoint(model, tmp_path / 'smoke', dataset='fashion-mnist', card=False,
                            training=dict(recipe='scratch', max_steps=3, subset=256, img_size=64, seed=0))
    text = render_card(smoke, _metrics(smoke)).text
    assert 'trunk was pretrained as a classifier' not in text
    assert '**No pretrained start**' in text and 'without the pretrained trunk that recipe starts from' in text
    assert '**A short run**: training stopped after 3 steps and saw 256 training images' in text
    assert "**Scored on a subset**: the results above come from seeded subsets, 30 x 90 of the full protocol's " \
           '1,000 x 60,000' in text
    assert "Scored on seeded subsets, 30 x 90 of the full protocol's 1,000 x 60,000" in text  # under the table
    pretrained = save_checkpoint(model, tmp_path / 'zoo', dataset='fashion-mnist', card=False,
                                 training=dict(recipe='scratch', init='/home/me/runs/trunk.safetensors', img_size=64))
    full = _metrics(pretrained)
    full['protocol'].update(protocol_num_queries=30, protocol_num_database=90, query_subset=None, db_subset=None)
    text = render_card(pretrained, full).text
    assert 'the trunk was pretrained as a classifier on the training set' in text
    assert not any(s in text for s in ('No pretrained start', 'A short run', 'Scored on a subset', 'seeded subsets'))
    # where the numbers came from: the run's and the evaluation's machines, as their records keep them
    from deephash_zoo.utils import run_machine

    machine = run_machine('cpu')
    trained = save_checkpoint(model, tmp_path / 'kept', dataset='fashion-mnist', card=False,
                              training=dict(recipe='scratch', init='trunk.safetensors', machine=machine))
    scored = dict(_metrics(trained), machine=machine)
    text = render_card(trained, scored).text
    said = f"{machine['cpu']}, {machine['cores']} cores; torch {machine['torch']}, timm {machine['timm']}, " \
           f"deephash-zoo {machine['deephash_zoo']}"
    assert f'- `machine`: {said}' in text and f'(deephash-zoo 0.1.0) on {said}.' in text


def test_a_card_names_no_local_folder_of_own_or_cifar_data(tmp_path):
    """folder:DIR and cifar10:DIR hold local paths as list: and coco: do; the card carried the whole home folder."""
    model = timm.create_model('dath_n_16')
    model.reset_classifier(sum(BITS), bits=BITS)
    for data, shown in (('folder:/home/me/photos', 'image folder `photos`'),
                        ('cifar10-1:/home/me/cifar-10-batches-py', 'CIFAR-10 folder `cifar-10-batches-py`')):
        path = save_checkpoint(model, tmp_path / data.split(':')[0], dataset=data, card=False,
                               training=dict(data=data, img_size=64))
        text = str(render_card(path))
        assert '/home/me' not in text and shown in text, data
