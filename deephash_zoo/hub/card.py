"""Model cards rendered from files, never typed: ``config.json`` + ``deephash-eval``'s metrics JSON (+ the
efficiency table) through the package's ``card_template.md`` with huggingface_hub's ``ModelCard``.

The template ships inside the package (``importlib.resources``), so an installed wheel renders cards
without the source tree. The YAML front matter is ``ModelCardData`` (``library_name: timm``, tags,
datasets, pipeline tag) and a ``model-index`` of one ``EvalResult`` per code length (task
``image-feature-extraction``, named Image Retrieval: the Hub's task ids have no retrieval task; metric ``map`` named
``mAP@K (B bits)``, ``metric_config`` ``B bits``), so the Hub shows the same numbers as ``metrics.json``.
A card refuses metrics measured on other weights (their ``weights_sha256`` must match).
"""
import json
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from deephash_zoo.data.protocols import PATH_DATA
from deephash_zoo.extras import check_installed
from deephash_zoo.utils import read_json, write_atomic

from .folder import read_checkpoint_config, resolve_checkpoint_dir, weights_sha256

__all__ = ['TEMPLATE_PATH', 'TAGS', 'PAPERS', 'Paper', 'paper_for', 'render_card', 'write_card', 'load_metrics',
           'load_efficiency', 'efficiency_rows', 'default_repo_id', 'card_evals', 'strip_local_path']

PathLike = Union[str, Path]
TEMPLATE_PATH = Path(str(resources.files('deephash_zoo.hub') / 'card_template.md'))
TAGS = ['image-retrieval', 'hashing', 'timm', 'deephash-zoo']
PACKAGE = 'deephash-zoo'  # what `pip install` takes
PIPELINE_TAG = 'image-feature-extraction'
METRICS_SCHEMA = 1
_P_AT_NS = ('100', '500', '1000')  # P@N columns of the card (all N are in metrics.json)
MAP_AT = 1000  # the second mAP column: deephash-eval's map_at_1000
_TRAINING_KEYS = ('recipe', 'data', 'epochs', 'batch_size', 'optimizer', 'lr', 'weight_decay', 'momentum', 'nesterov',
                  'lr_schedule', 'warmup_steps', 'lr_step_epochs', 'lr_decay', 'loss_reduction', 'gamma_ramp_steps',
                  'center_hash', 'grad_clip', 'drop_rate', 'flip', 'img_size', 'label_weight', 'attn_gate_init',
                  'subset', 'max_steps', 'seed', 'world_size', 'amp', 'loss_args', 'loss', 'init', 'machine')
_PATH_KEYS = ('data', 'init', 'data_root', 'out')
# what the path of a data name holding one (data.protocols.PATH_DATA) is: a card names only its last component
_PATH_WHAT = {'list': 'DeepHash list file', 'coco': 'MS-COCO annotations', 'folder': 'image folder'}  # else CIFAR-10


@dataclass(frozen=True)
class Paper:
    """A seed paper, as its publisher cites it (authors' initials only: that is what the papers print)."""

    key: str
    family: str
    title: str
    authors: Tuple[str, ...]
    journal: str
    volume: str
    pages: str
    year: int
    doi: str
    number: Optional[str] = None

    def bibtex(self) -> str:
        fields = [('title', self.title), ('author', ' and '.join(self.authors)), ('journal', self.journal),
                  ('volume', self.volume), ('number', self.number), ('pages', self.pages), ('year', str(self.year)),
                  ('doi', self.doi)]
        body = ',\n'.join(f'  {k:<7} = {{{v}}}' for k, v in fields if v is not None)
        return f'@article{{{self.key},\n{body}\n}}'


PAPERS: Dict[str, Paper] = {
    'dath': Paper('jiang2021dath', 'DATH', 'Dual Attention Triplet Hashing Network for Image Retrieval',
                  ('Jiang, Z.', 'Lian, Z.', 'Wang, J.'), 'Frontiers in Neurorobotics', '15', '728161', 2021,
                  '10.3389/fnbot.2021.728161'),
    'admth': Paper('wang2023admth', 'ADMTH', 'Attention-Oriented Deep Multi-Task Hash Learning',
                   ('Wang, L.', 'Meng, Z.', 'Dong, F.', 'Yang, X.', 'Xi, X.', 'Nie, X.'), 'Electronics', '12', '1226',
                   2023, '10.3390/electronics12051226', number='5'),
}

# metrics.json "dataset" -> (Hugging Face dataset id or None, what the card calls it)
_DATASETS = {
    'fashion-mnist': ('zalando-datasets/fashion_mnist', 'Fashion-MNIST (10 classes, single label)'),
    'mosaic': ('zalando-datasets/fashion_mnist',
               'Fashion-MNIST 2x2 mosaics (multi-label: the union of the four item classes)'),
}


def paper_for(architecture: str) -> Optional[Paper]:
    """The paper an architecture comes from (DMLH and single-length ADMTH are the ADMTH paper's variants)."""
    if architecture.startswith('dath'):
        return PAPERS['dath']
    if architecture.startswith(('admth_', 'dmlh_')):
        return PAPERS['admth']
    return None


def _dataset_info(name: Optional[str]) -> Tuple[Optional[str], str, str]:
    """(Hub dataset id or None, display name, model-index dataset type) without local paths."""
    if not name:
        return None, 'not recorded', 'unknown'
    if name in _DATASETS:
        hub_id, display = _DATASETS[name]
        return hub_id, display, hub_id
    kind, _, path = name.partition(':')
    if kind in PATH_DATA and path:
        base = Path(path).name
        return None, f"{_PATH_WHAT.get(kind, 'CIFAR-10 folder')} `{base}`", f'{kind}:{base}'
    return None, name, name


def strip_local_path(value: Any) -> Any:
    """Local paths reduced to their last component (a card or upload should not carry a home folder)."""
    if isinstance(value, str):
        kind, sep, rest = value.partition(':')
        if sep and kind in PATH_DATA and os.path.isabs(rest):
            return f'{kind}:{Path(rest).name}'
        return Path(value).name if os.path.isabs(value) else value
    return value


def default_repo_id(config: Dict[str, Any]) -> Optional[str]:
    """The ``hf_hub_id`` timm's ``pretrained=True`` reads for this architecture and tag."""
    from timm.models import get_pretrained_cfg

    tag = (config.get('pretrained_cfg') or {}).get('tag')
    if not tag:  # weights of data the zoo does not publish: no repository of ours to name
        return None
    try:
        cfg = get_pretrained_cfg(f"{config['architecture']}.{tag}", allow_unregistered=False)
    except RuntimeError:  # a tag this version does not publish
        return None
    return getattr(cfg, 'hf_hub_id', None) or None


def load_metrics(path: PathLike) -> Dict[str, Any]:
    """``deephash-eval``'s metrics.json, checked for what a card reads (schema_version 1)."""
    path = Path(path)
    report = read_json(path, 'metrics file not found (deephash-eval writes metrics.json)')
    if not isinstance(report, dict) or report.get('schema_version') != METRICS_SCHEMA:
        found = report.get('schema_version') if isinstance(report, dict) else type(report).__name__
        raise ValueError(f'{path}: expected deephash-eval metrics with schema_version {METRICS_SCHEMA}, got {found}')
    missing = [k for k in ('model', 'dataset', 'protocol', 'results') if k not in report]
    results = report.get('results')
    if missing or not isinstance(results, dict) or not results:
        raise ValueError(f'{path}: missing {missing or ["results"]}; expected deephash-eval metrics '
                         f'(model, dataset, protocol, results per code length)')
    for bits, r in results.items():
        absent = [k for k in ('map', 'p_at_n', 'precision_radius2', 'recall_radius2') if k not in r]
        if absent or not str(bits).isdigit():
            raise ValueError(f'{path}: results[{bits!r}] lacks {absent or "a numeric code length"}; '
                             f'expected map, map_topk, p_at_n, precision_radius2, recall_radius2')
    return report


def load_efficiency(path: Optional[PathLike]) -> Optional[Dict[str, Any]]:
    """The efficiency JSON (``deephash-export --bench``), or None when no path is given or it does not exist."""
    if path is None or not Path(path).is_file():
        return None
    return read_json(path, 'efficiency JSON not found (deephash-export --bench writes it)')


def _ms(batch: Optional[Dict[str, Any]]) -> str:
    if not batch:
        return ''
    return f'{batch["ms_per_image"]:.2f} [{batch["min"]:.2f}-{batch["max"]:.2f}]'


def efficiency_rows(table: Dict[str, Any], architecture: str, source: str = 'efficiency JSON'
                    ) -> Tuple[List[str], List[List[str]], Optional[str]]:
    """(columns, rows, where it was measured) of ``architecture`` in ``deephash-export --bench``'s JSON
    (schema_version 1: ``models[].rows[]`` with ``batches`` of ms/image); rows empty when it has none."""
    if not isinstance(table, dict) or table.get('schema_version') != 1 or not isinstance(table.get('models'), list):
        found = table.get('schema_version') if isinstance(table, dict) else type(table).__name__
        raise ValueError(f'{source}: expected deephash-export --bench output (schema_version 1 with "models"), '
                         f'got {found}')
    entry = next((m for m in table['models'] if isinstance(m, dict) and m.get('model') == architecture), None)
    if entry is None:
        return [], [], None
    large = str((table.get('settings') or {}).get('large_batch', ''))
    columns = ['runtime', 'device', 'precision', 'batch 1 ms/image', f'batch {large} ms/image',
               f'batch {large} images/s', 'sign agreement']
    rows = []
    for r in entry.get('rows', []):
        if r.get('status') != 'ok':
            rows.append([r.get('runtime', ''), r.get('device', ''), r.get('precision', ''),
                         f'{r.get("status")}: {r.get("reason", "")}'.replace('|', '/'), '', '', ''])
            continue
        big = (r.get('batches') or {}).get(large)
        agree = r.get('sign_agreement')
        rows.append([r['runtime'], r['device'], r['precision'], _ms((r.get('batches') or {}).get('1')), _ms(big),
                     f'{big["images_per_s"]:.1f}' if big else '', '' if agree is None else f'{agree:.4f}'])
    m, st = table.get('machine') or {}, table.get('settings') or {}
    where = (f'{st.get("img_size")}x{st.get("img_size")} input; {m.get("cpu")}, {m.get("usable_cores")} usable '
             f'cores, GPU: {m.get("gpu")}; torch {m.get("torch")}, onnxruntime {m.get("onnxruntime")}; '
             f'{table.get("generated")}, by `{table.get("command")}`; ms per image, median [min-max]')
    return columns, rows, where


def card_evals(report: Dict[str, Any], dataset_type: str, dataset_name: str) -> List[EvalResult]:
    """One ``EvalResult`` per code length: mAP@K of the Hamming ranking, exactly as metrics.json has it."""
    proto = report['protocol']
    k = proto.get('map_topk', 'all')
    split_args = {key: proto[key] for key in ('seed', 'num_queries', 'num_database') if key in proto}
    out = []
    for bits, r in sorted(report['results'].items(), key=lambda kv: int(kv[0])):
        out.append(EvalResult(
            task_type=PIPELINE_TAG, task_name='Image Retrieval',
            dataset_type=dataset_type, dataset_name=dataset_name, dataset_split='test',
            dataset_args=split_args or None,
            metric_type='map', metric_value=float(r['map']),
            metric_name=f'mAP@{r.get("map_topk", k)} ({int(bits)} bits)', metric_config=f'{int(bits)} bits',
        ))
    return out


def _num_params(weights: Path) -> int:
    """The weights' element count, from the file's header (a corrupt or cut file: one line naming it)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(weights), framework='pt') as f:
            total = 0
            for name in f.keys():
                n = 1
                for d in f.get_slice(name).get_shape():
                    n *= int(d)
                total += n
    except (SafetensorError, OSError) as e:
        raise ValueError(f'{weights}: corrupt or truncated safetensors file ({e})') from e
    return total


def _summary(architecture: str) -> str:
    from timm.models import is_model, model_entrypoint

    if is_model(architecture):
        doc = (model_entrypoint(architecture).__doc__ or '').strip().split('\n')[0]
        if doc:
            return doc
    return f'`{architecture}`: deep hashing model for image retrieval.'


def subset_of_protocol(protocol: Dict[str, Any]) -> Optional[str]:
    """"N x M of the full protocol's Q x D" where the evaluation scored seeded subsets (--query-subset,
    --db-subset), else None: such numbers are not the protocol's and vary with the draw."""
    full_q, full_db = protocol.get('protocol_num_queries'), protocol.get('protocol_num_database')
    n_q, n_db = int(protocol['num_queries']), int(protocol['num_database'])
    if full_q is None or full_db is None or (n_q, n_db) == (int(full_q), int(full_db)):
        return None
    return f'{n_q:,} x {n_db:,} of the full protocol\'s {int(full_q):,} x {int(full_db):,}'


def _metrics_notes(report: Dict[str, Any], ns: List[str], ds_name: str, trained_on: Optional[str],
                   train_name: str) -> List[str]:
    notes = []
    subset = subset_of_protocol(report['protocol'])
    if subset:
        notes.append(f'Scored on seeded subsets, {subset} (`--query-subset` / `--db-subset`): not the protocol\'s '
                     'numbers, and another draw moves them.')
    n_db = int(report['protocol']['num_database'])
    if any(int(n) > n_db for n in ns):
        notes.append(f'P@N with N above {n_db:,} counts the whole database.')
    if report['dataset'] != trained_on:
        notes.append(f'Evaluated on {ds_name}; trained on {train_name}.')
    return notes


def machine_text(machine: Optional[Dict[str, Any]]) -> Optional[str]:
    """A run's recorded machine in words (None where the record has none: runs from before it was kept)."""
    if not machine:
        return None
    device = machine.get('device')
    where = f"{machine.get('cpu', 'an unnamed CPU')}, {machine.get('cores', '?')} cores" + \
        (f', {device}' if device and device != 'cpu' else '')
    versions = ', '.join(f'{k.replace("_", "-")} {machine[k]}' for k in ('torch', 'timm', 'deephash_zoo')
                         if k in machine)
    return f'{where}; {versions}' if versions else where


def _training_items(training: Dict[str, Any]) -> List[Tuple[str, str]]:
    items = []
    for key in _TRAINING_KEYS:
        if training.get(key) in (None, {}, ''):
            continue
        if key == 'machine':
            items.append((key, machine_text(training[key]) or ''))
            continue
        value = strip_local_path(training[key]) if key in _PATH_KEYS else training[key]
        items.append((key, json.dumps(value) if isinstance(value, (dict, list)) else str(value)))
    return items


def _fmt(value: Optional[float], spec: str, suffix: str = '') -> str:
    return '-' if value is None else f'{value:{spec}}{suffix}'


def _results_context(report: Dict[str, Any], trained_on: Optional[str], train_hub_id: Optional[str],
                     train_name: str) -> Tuple[List[EvalResult], Dict[str, Any], List[str]]:
    """(model-index entries, template variables of the results section, Hub dataset ids) of one metrics report."""
    ds_hub, ds_name, ds_type = _dataset_info(report['dataset'])
    proto = report['protocol']
    first = next(iter(report['results'].values()))
    ns = [n for n in _P_AT_NS if n in first['p_at_n']] or list(first['p_at_n'])[:3]
    results = []
    for b, r in sorted(report['results'].items(), key=lambda kv: int(kv[0])):
        rand = r.get('random_codes') or {}
        chance = rand.get('map')
        distinct = r.get('distinct_codes')
        rand_p = rand.get('p_at_n') or {'100': rand.get('p_at_100')}
        results.append(dict(bits=int(b), map=f"{r['map']:.4f}", random=_fmt(chance, '.4f'),
                            above=_fmt(r['map'] / chance if chance else None, '.2f', 'x'),
                            map_at_1000=_fmt(r.get('map_at_1000', r['map'] if r.get('map_topk') == MAP_AT else None),
                                             '.4f'),
                            tie_aware=_fmt(r.get('map_tie_aware'), '.4f'),
                            p_at_n=[f"{r['p_at_n'][n]:.4f}" for n in ns],
                            precision_radius2=f"{r['precision_radius2']:.4f}",
                            recall_radius2=f"{r['recall_radius2']:.4f}",
                            distinct=_fmt(distinct['fraction'] * 100 if distinct else None, '.1f', '%'),
                            # the same metrics of seeded random codes: the level each number is read against
                            chance=dict(map=_fmt(chance, '.4f'), map_at_1000=_fmt(rand.get('map_at_1000'), '.4f'),
                                        tie_aware=_fmt(rand.get('map_tie_aware'), '.4f'),
                                        p_at_n=[_fmt(rand_p.get(n), '.4f') for n in ns],
                                        precision_radius2=_fmt(rand.get('precision_radius2'), '.4f'))))
    context = dict(
        results=results, p_at_ns=ns, map_topk=proto.get('map_topk', 'all'), protocol_seed=proto.get('seed'),
        map_at=MAP_AT, distinct_of=f"{(first.get('distinct_codes') or {}).get('num_items', 0):,}",
        num_queries=f'{int(proto["num_queries"]):,}', num_database=f'{int(proto["num_database"]):,}',
        relevance='sharing at least one label' if proto.get('multi_label') else 'same class',
        tie_break=report.get('tie_break', 'database index (stable)'), metrics_img_size=report.get('img_size'),
        metrics_version=report.get('package_version'), metrics_machine=machine_text(report.get('machine')),
        metrics_notes=_metrics_notes(report, ns, ds_name, trained_on, train_name),
    )
    return card_evals(report, ds_type, ds_name), context, sorted({d for d in (train_hub_id, ds_hub) if d})


def render_card(
        checkpoint_dir: PathLike,
        metrics: Optional[Union[PathLike, Dict[str, Any]]] = None,
        efficiency: Optional[PathLike] = None,
        repo_id: Optional[str] = None,
        template: Optional[PathLike] = None,
) -> ModelCard:
    """The model card of a checkpoint folder.

    ``metrics``: deephash-eval's metrics.json (path or dict; None: a card without results). ``efficiency``:
    the efficiency JSON; a missing file or no row for this architecture gives "Not measured". ``repo_id``:
    where the card will live (default: the architecture's ``hf_hub_id``, which ``pretrained=True`` reads).
    """
    check_installed('jinja2')  # huggingface_hub renders the template with it
    ckpt = resolve_checkpoint_dir(checkpoint_dir)
    config = read_checkpoint_config(ckpt)
    arch = str(config['architecture'])
    weights = ckpt / 'model.safetensors'
    if not weights.is_file():
        raise FileNotFoundError(f'{weights}: missing; a card describes a checkpoint with safetensors weights')
    sha = weights_sha256(weights)
    template = Path(template) if template is not None else TEMPLATE_PATH
    if not template.is_file():
        raise FileNotFoundError(f'{template}: card template not found; pass template=PATH')
    pcfg = config.get('pretrained_cfg') or {}
    bits = [int(b) for b in config['bits']]
    default_id = default_repo_id(config)
    repo_id = repo_id or default_id
    trained_on = config.get('dataset') or (config.get('training') or {}).get('data')
    train_hub_id, train_name, _ = _dataset_info(trained_on)
    paper = paper_for(arch)

    report, metrics_source = None, None
    if metrics is not None:
        metrics_source = str(metrics) if not isinstance(metrics, dict) else 'the metrics dict'
        report = metrics if isinstance(metrics, dict) else load_metrics(metrics)
        if report.get('model') != arch:
            raise ValueError(f'{metrics_source}: metrics of {report.get("model")!r}, but {ckpt} holds {arch!r}')
        if report.get('weights_sha256') not in (None, sha):
            raise ValueError(f'{metrics_source}: measured on weights sha256 {report["weights_sha256"][:12]}..., but '
                             f'{weights} has {sha[:12]}...; re-run deephash-eval on this checkpoint')
    evals, ctx_metrics, datasets = None, {}, [train_hub_id] if train_hub_id else []
    if report is not None:
        evals, ctx_metrics, datasets = _results_context(report, trained_on, train_hub_id, train_name)

    table = load_efficiency(efficiency)
    eff_cols, eff_rows, machine = (efficiency_rows(table, arch, str(efficiency)) if table is not None
                                   else ([], [], None))
    title = repo_id.split('/')[-1] if repo_id else arch
    card_data = ModelCardData(
        library_name='timm', license=pcfg.get('license', 'apache-2.0'), tags=list(TAGS),
        datasets=datasets or None, pipeline_tag=PIPELINE_TAG, model_name=title if evals else None,
        eval_results=evals,
    )
    local_dir = title if repo_id else 'CHECKPOINT'
    training = config.get('training') or {}
    context = dict(
        title=title, repo_id=repo_id, summary=_summary(arch), architecture=arch,
        family_name=paper.family if paper else 'hash head', paper_title=paper.title if paper else 'no paper',
        bits=bits, bits_text=', '.join(str(b) for b in bits), input_size=list(pcfg.get('input_size', (3, 224, 224))),
        mean=tuple(pcfg.get('mean', ())), std=tuple(pcfg.get('std', ())), interpolation=pcfg.get('interpolation'),
        train_img_size=training.get('img_size'), dataset_name=train_name, num_params=f'{_num_params(weights):,}',
        weights_sha256=sha,
        load_name=arch if repo_id == default_id else f'hf-hub:{repo_id}' if repo_id else 'local-dir:CHECKPOINT',
        hub_name=bool(repo_id), local_dir=local_dir,
        efficiency_columns=eff_cols, efficiency_rows=eff_rows, efficiency_machine=machine,
        efficiency_source=strip_local_path(str(efficiency)) if efficiency is not None else None,
        efficiency_found=table is not None,
        training=_training_items(training), bibtex=paper.bibtex() if paper else None, package=PACKAGE,
        recipe=training.get('recipe'), init=strip_local_path(training.get('init')) if training.get('init') else None,
        max_steps=training.get('max_steps'), train_subset=training.get('subset'),
        eval_subset=subset_of_protocol(report['protocol']) if report else None,
        label_weight=training.get('label_weight') or 0,
        pair_balance=(training.get('loss_args') or {}).get('pair_balance') or 0,
        attn_gate_init=training.get('attn_gate_init') or 0,
        **ctx_metrics,
    )
    return ModelCard.from_template(card_data, template_path=str(template), **context)


def write_card(card: ModelCard, path: PathLike) -> Path:
    """Write ``card`` to ``path`` atomically (a temporary sibling renamed into place)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, str(card).encode('utf-8'))
    return path

