"""The zoo build: pretrain each trunk, train each headline model with the ``scratch`` recipe, evaluate it
on the full protocol and render its card; resumable stage by stage.

Each stage is recorded in ``WORK/stages.jsonl`` when it finishes, with its CPU
time (``time.process_time``: every thread of this process) and wall time, so an interrupted build
continues where it stopped (an interrupted training stage continues from its ``last/`` state) and the
final table still reports what every stage cost, summed over the pieces an interrupted stage ran in
(:class:`~deephash_zoo.experiments.stages.StageLog`):

1. ``pretrain:ARCH``, before the first model that needs it: one trunk per architecture (AlexNet for every
   DATH model, CNN-F for ADMTH and DMLH), ``WORK/pretrain-ARCH/trunk.safetensors``: shared within a family,
   as one set of ImageNet weights is.
2. ``train:MODEL``: ``WORK/MODEL/checkpoint`` (recipe ``scratch``, ``--init`` the trunk).
3. ``eval:MODEL``: ``WORK/MODEL/eval/`` (metrics.json, plots and the retrieval grid), the protocol's full
   query and database sets (Fashion-MNIST: the 10,000 test images against the 60,000 training images).

A record may carry a ``note`` (how a stage ran when it shared the machine or was paused); the table
lists the notes under it.
"""
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from safetensors import safe_open

from deephash_zoo.hub.checkpoint import weights_sha256
from deephash_zoo.training.recipes import family_of, get_recipe, trunk_of
from deephash_zoo.training.trainer import TRUNK_FILE, TrainConfig, train
from deephash_zoo.utils import read_jsonl

from .stages import StageLog

__all__ = ['ZooPlan', 'PLANS', 'get_plan', 'build_zoo', 'zoo_result', 'render_zoo_markdown', 'trunk_of',
           'refresh_checkpoint']

SCHEMA_VERSION = 1
HEADLINE = ('dath_alexnet_16', 'dath_alexnet_32', 'dath_alexnet_48', 'dath_alexnet_64', 'admth_cnnf_multi',
            'dmlh_cnnf_multi')


@dataclass(frozen=True)
class ZooPlan:
    """What the zoo is trained on and for how long."""

    name: str
    description: str
    data: str
    img_size: int
    pretrain_epochs: int
    hash_epochs: Dict[str, int]  # per family
    models: Tuple[str, ...] = HEADLINE
    subset: Optional[int] = None  # training items (None: the whole training set)
    max_steps: Optional[int] = None  # per training stage (tests)
    batch_size: Optional[int] = None  # None: the recipe's
    query_subset: Optional[int] = None  # evaluation (None: the full protocol)
    db_subset: Optional[int] = None
    seed: int = 0
    publishable: bool = True
    extra: Dict[str, Any] = field(default_factory=dict)
    # per family: loss hyper-parameters of its hashing stages beyond the recipe's (``--loss-arg``); a card and the
    # table name any that is not the paper's objective
    loss_args: Dict[str, Dict[str, float]] = field(default_factory=dict)


PLANS: Dict[str, ZooPlan] = {
    'fmnist': ZooPlan(
        name='fmnist',
        description='Fashion-MNIST at 64x64 on CPU: each trunk pretrained 10 epochs on the 60,000 training images '
                    '(cross-entropy), then each model 2 epochs of its hashing objective (recipe scratch; ADMTH '
                    "and DMLH with balanced pairs, --loss-arg pair_balance=1); evaluated with the 10,000 test images "
                    'as queries against the 60,000 training images',
        data='fashion-mnist', img_size=64, pretrain_epochs=10, hash_epochs={'dath': 2, 'admth': 2},
        loss_args={'admth': {'pair_balance': 1.0}},
    ),
    'tiny': ZooPlan(
        name='tiny', description='tests only: 64 training images, 2 steps a stage, 20 queries x 60 database items',
        data='fashion-mnist', img_size=64, pretrain_epochs=1, hash_epochs={'dath': 1, 'admth': 1}, subset=64,
        max_steps=2, batch_size=16, query_subset=20, db_subset=60, publishable=False,
    ),
}


def get_plan(name: str) -> ZooPlan:
    if name not in PLANS:
        raise ValueError(f'unknown zoo plan {name!r}; expected one of {", ".join(PLANS)}')
    return PLANS[name]


def _read_stages(path: Path) -> Dict[str, Dict[str, Any]]:
    return {rec['stage']: rec for rec in read_jsonl(path)}


def _train_stage(cfg: TrainConfig) -> Callable[[], Dict[str, Any]]:
    def run() -> Dict[str, Any]:
        resume = (Path(cfg.out) / 'last' / 'state.json').is_file()
        summary = train(TrainConfig(**dict(asdict(cfg), resume=resume, overwrite=not resume)))
        return dict(steps=summary['step'], resumed=resume)
    return run


def refresh_checkpoint(ckpt: Path, img_size: int, say: Callable[[str], None] = print) -> bool:
    """Re-save a checkpoint written by an older version in the current form (inference model only, the training
    input size in ``pretrained_cfg``); True when it did. The codes do not change: only DATH's label classifier
    leaves the weights."""
    from deephash_zoo.hub.checkpoint import load_checkpoint, read_checkpoint_config, save_checkpoint

    config = read_checkpoint_config(ckpt)
    with safe_open(str(ckpt / 'model.safetensors'), 'pt') as f:
        has_aux = any(k.startswith('aux_classifier.') for k in f.keys())
    sized = list(config['pretrained_cfg'].get('input_size', [])[1:]) == [img_size, img_size]
    if not has_aux and sized and 'num_labels' not in (config.get('model_args') or {}):
        return False
    model = load_checkpoint(ckpt)
    save_checkpoint(model, ckpt, dataset=config.get('dataset'), training=config.get('training') or {})
    say(f'{ckpt}: re-saved in the current checkpoint form (inference model only, input {img_size}x{img_size})')
    return True


def _eval_stage(plan: ZooPlan, run_dir: Path, device: str, progress: bool) -> Callable[[], Dict[str, Any]]:
    def run() -> Dict[str, Any]:
        from deephash_zoo.evaluation import EvalOptions, default_out, run_evaluation, write_evaluation

        ev = run_evaluation(EvalOptions(
            checkpoint=run_dir / 'checkpoint', data=plan.data, seed=plan.seed, device=device, img_size=plan.img_size,
            query_subset=plan.query_subset, db_subset=plan.db_subset, progress=progress))
        write_evaluation(ev, default_out(run_dir / 'checkpoint'))
        return dict(weights_sha256=ev.report['weights_sha256'])
    return run


def _pretrain_settings(plan: ZooPlan) -> Dict[str, Any]:
    """What a pretraining stage's trunk depends on (recorded with it; another value builds it again)."""
    return dict(epochs=plan.pretrain_epochs, data=plan.data, img_size=plan.img_size, subset=plan.subset,
                seed=plan.seed)


def _plan_loss_args(plan: ZooPlan, model: str) -> Dict[str, float]:
    """The loss hyper-parameters the plan adds to ``model``'s hashing stage (a copy; empty where it adds none)."""
    return dict(plan.loss_args.get(family_of(model), {}))


def _train_settings(plan: ZooPlan, model: str, trunk_sha256: Optional[str]) -> Dict[str, Any]:
    """What a hashing stage's checkpoint depends on, the trunk it starts from included, and the recipe's
    label term and dropout where it sets them (so a checkpoint trained without them is trained again)."""
    settings = dict(_pretrain_settings(plan), epochs=plan.hash_epochs[family_of(model)], init_sha256=trunk_sha256)
    recipe = get_recipe('scratch', model)
    loss_args = _plan_loss_args(plan, model)
    if loss_args:
        settings['loss_args'] = loss_args
    if recipe.label_weight:
        settings['label_weight'] = recipe.label_weight
    if recipe.drop_rate is not None:
        settings['drop_rate'] = recipe.drop_rate
    return settings


def _built_under(plan: ZooPlan, stages: Dict[str, Dict[str, Any]], model: str,
                 trunk_sha: Callable[[str], Optional[str]]) -> bool:
    """Whether the model's recorded stages are what ``plan`` builds now: the trunk it was trained from is the
    current trunk, pretrained and trained with the plan's settings. Records without settings (older builds)
    count as current, as when they were made."""
    arch = trunk_of(model)
    pre, train_rec = stages.get(f'pretrain:{arch}'), stages.get(f'train:{model}')
    if pre is None or train_rec is None:
        return False
    if 'settings' in pre and pre['settings'] != _pretrain_settings(plan):
        return False
    return 'settings' not in train_rec or train_rec['settings'] == _train_settings(plan, model, trunk_sha(arch))


def build_zoo(plan: ZooPlan, work: Path, models: Optional[Tuple[str, ...]] = None, device: str = 'auto',
              say: Callable[[str], None] = print, progress: bool = True) -> Dict[str, Any]:
    """Run every stage the models need that is not done yet; returns :func:`zoo_result`."""
    models = tuple(models or plan.models)
    for m in models:
        trunk_of(m)  # refuses a model outside the two families before any work
    work.mkdir(parents=True, exist_ok=True)
    stages = StageLog(work / 'stages.jsonl', say)
    common = dict(data=plan.data, img_size=plan.img_size, subset=plan.subset, max_steps=plan.max_steps,
                  seed=plan.seed, device=device, batch_size=plan.batch_size, log_every=50, progress=progress)
    trunks: Dict[str, Path] = {}
    for model in models:  # a trunk is pretrained just before the first model that needs it
        arch = trunk_of(model)
        pre = work / f'pretrain-{arch}'
        if arch not in trunks:
            stages.run(f'pretrain:{arch}', pre / TRUNK_FILE, _train_stage(TrainConfig(
                model=arch, stage='pretrain', out=str(pre), epochs=plan.pretrain_epochs, **common)),
                settings=_pretrain_settings(plan))
            trunks[arch] = pre / TRUNK_FILE
        run_dir = work / model
        stages.run(f'train:{model}', run_dir / 'checkpoint', _train_stage(TrainConfig(
            model=model, recipe='scratch', out=str(run_dir), init=str(trunks[arch]),
            loss_args=_plan_loss_args(plan, model),
            epochs=plan.hash_epochs[family_of(model)], **common)),
            settings=_train_settings(plan, model, weights_sha256(trunks[arch])))
        refresh_checkpoint(run_dir / 'checkpoint', plan.img_size, say)
        weights = weights_sha256(run_dir / 'checkpoint' / 'model.safetensors')
        stages.run(f'eval:{model}', run_dir / 'eval' / 'metrics.json', _eval_stage(plan, run_dir, device, progress),
                   still_valid=lambda rec, w=weights: rec.get('weights_sha256') == w)
    return zoo_result(plan, work, models)


def zoo_result(plan: ZooPlan, work: Path, models: Tuple[str, ...],
               earlier: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The build's JSON: the plan, each stage's cost, each model's metrics (the ``eval`` stage's report).

    ``earlier``: a JSON this function wrote before for the same plan (the published one). Its rows of models
    not evaluated in ``work`` are carried over with their stage records, so that a zoo built in pieces, on
    different machines or sessions, keeps one table; such rows are marked ``carried_over``.
    """
    from deephash_zoo.experiments.run import machine_info
    from deephash_zoo.utils import read_json

    stages = _read_stages(work / 'stages.jsonl')
    shas: Dict[str, Optional[str]] = {}

    def trunk_sha(arch: str) -> Optional[str]:
        if arch not in shas:
            trunk = work / f'pretrain-{arch}' / TRUNK_FILE
            shas[arch] = weights_sha256(trunk) if trunk.is_file() else None
        return shas[arch]

    rows = []
    for model in models:  # rows built under other settings of the plan are left to the earlier build's JSON
        if f'eval:{model}' not in stages or not _built_under(plan, stages, model, trunk_sha):
            continue
        report = read_json(work / model / 'eval' / 'metrics.json', 'run the build first')
        own = _stage_names(model)
        trained = stages[own['train']].get('settings') or {}  # what its hashing stage was trained with
        rows.append(dict(
            model=model, checkpoint=str(work / model / 'checkpoint'), weights_sha256=report['weights_sha256'],
            protocol=report['protocol'], img_size=report['img_size'],
            results={b: dict(map=r['map'], map_at_1000=r.get('map_at_1000'), map_tie_aware=r.get('map_tie_aware'),
                             p_at_100=r['p_at_n']['100'],
                             precision_radius2=r['precision_radius2'], random_map=r['random_codes']['map'],
                             distinct_codes=r['distinct_codes']['fraction'])
                     for b, r in report['results'].items()},
            cpu_seconds={s: stages[name]['cpu_seconds'] for s, name in own.items()},
            wall_seconds={s: stages[name]['wall_seconds'] for s, name in own.items()},
            label_weight=trained.get('label_weight', 0.0),
            loss_args=trained.get('loss_args') or {},
        ))
    for row in rows:  # the cost of a trunk is shared by the rows built on it
        row['pretrain_shared_by'] = sum(1 for r in rows if trunk_of(r['model']) == trunk_of(row['model']))
    behind = {name for row in rows for name in _stage_names(row['model']).values()}
    stages = {name: rec for name, rec in stages.items() if name in behind}  # the stages behind the rows shown
    if earlier is not None:
        rows, stages = _carry_over(plan, earlier, models, rows, stages)
        _match_trunks(rows, stages, {r['stage']: r for r in earlier.get('stages', [])}, trunk_sha)
    return dict(schema_version=SCHEMA_VERSION, plan=asdict(plan), recipe='scratch', machine=machine_info(),
                stages=list(stages.values()), models=rows,
                total_cpu_seconds=sum(rec['cpu_seconds'] for rec in stages.values()),
                total_wall_seconds=sum(rec['wall_seconds'] for rec in stages.values()))


EARLIER_PLAN = ' (earlier plan)'  # suffix of a stage record kept for rows built under other plan settings
EARLIER_RUN = ' (earlier run)'  # suffix of a carried row's own pretraining when this build made another trunk


def _stage_names(model: str) -> Dict[str, str]:
    return {'pretrain': f'pretrain:{trunk_of(model)}', 'train': f'train:{model}', 'eval': f'eval:{model}'}


def _carry_over(plan: ZooPlan, earlier: Dict[str, Any], models: Tuple[str, ...], rows: List[Dict[str, Any]],
                stages: Dict[str, Dict[str, Any]]) -> Tuple[List[Dict[str, Any]], Dict[str, Dict[str, Any]]]:
    """``rows`` and ``stages`` with the earlier build's rows of ``models`` that this build has not evaluated.

    Rows the earlier build made under other settings of the plan (e.g. a shorter pretraining) say so
    (``other_plan``: that plan's description), and their stage records are kept beside this build's records of
    the same name (suffixed :data:`EARLIER_PLAN`): their trunk was another one."""
    if earlier.get('schema_version') != SCHEMA_VERSION or (earlier.get('plan') or {}).get('name') != plan.name:
        raise ValueError(f'the earlier zoo JSON is not of plan {plan.name!r} and schema {SCHEMA_VERSION}')
    have = {row['model'] for row in rows}
    same = earlier['plan'] == json.loads(json.dumps(asdict(plan)))  # as the JSON holds it: lists, not tuples
    other = {} if same else dict(other_plan=earlier['plan'].get('description', '?'))
    kept = [dict({k: v for k, v in row.items() if k != 'trunk_rebuilt'}, carried_over=True,
                 **({} if row.get('other_plan') else other))
            for row in earlier.get('models', []) if row['model'] in models and row['model'] not in have]
    wanted = {False: set(), True: set()}  # stage names of the kept rows, by "built under other plan settings"
    for row in kept:
        wanted[bool(row.get('other_plan'))].update(_stage_names(row['model']).values())
    stages = dict(stages)
    for rec in earlier.get('stages', []):
        base = rec['stage'].removesuffix(EARLIER_PLAN)
        if base in wanted[True]:
            stages.setdefault(base + EARLIER_PLAN, dict(rec, stage=base + EARLIER_PLAN, carried_over=True))
        elif base == rec['stage'] and base in wanted[False] and base not in stages:
            stages[base] = dict(rec, carried_over=True)
        elif base.endswith(EARLIER_RUN):  # the own pretraining of a kept row trained from another trunk
            for row in kept:
                if row.get('other_trunk') and f"pretrain:{trunk_of(row['model'])}{EARLIER_RUN}" == base:
                    name = base + (EARLIER_PLAN if row.get('other_plan') else '')
                    stages.setdefault(name, dict(rec, stage=name, carried_over=True))
    order = {m: i for i, m in enumerate(models)}
    return sorted(rows + kept, key=lambda row: order[row['model']]), stages


def _match_trunks(rows: List[Dict[str, Any]], stages: Dict[str, Dict[str, Any]],
                  earlier_stages: Dict[str, Dict[str, Any]], trunk_sha: Callable[[str], Optional[str]]) -> None:
    """Tie each carried row of this plan to the trunk it was trained from, where this build pretrained the same
    architecture again (e.g. in a new session whose work folder lost the earlier one).

    The same trunk bit for bit (its train record's ``init_sha256``): the row shares this build's pretraining,
    which costs once. Another trunk (or one not recorded): the row's own pretraining stays in the table as
    ``pretrain:ARCH (earlier run)`` and the row says so (``other_trunk``), so that rows which look alike are not
    read as built on one trunk. Changes ``rows`` and ``stages`` in place."""
    variant: Dict[str, Tuple[str, str]] = {}  # model -> (architecture, which trunk)
    for row in rows:
        arch = trunk_of(row['model'])
        pre = f'pretrain:{arch}'
        variant[row['model']] = (arch, 'this build')
        if not row.get('carried_over') or row.get('other_plan'):
            continue
        if pre not in stages or stages[pre].get('carried_over'):  # nothing pretrained again here
            variant[row['model']] = (arch, 'earlier run' if row.get('other_trunk') else 'earlier build')
            continue
        theirs = ((earlier_stages.get(f"train:{row['model']}") or {}).get('settings') or {}).get('init_sha256')
        if theirs is not None and theirs == trunk_sha(arch):
            row['trunk_rebuilt'] = True
            _cost_pretrain_from(row, stages[pre])
            continue
        variant[row['model']] = (arch, 'earlier run')
        # its own pretraining: already set apart when the earlier JSON was rendered this way, else under its name
        own = earlier_stages.get(pre + EARLIER_RUN) if row.get('other_trunk') else None
        own = own or earlier_stages.get(pre)
        row['other_trunk'] = dict(theirs=theirs, this_build=trunk_sha(arch))
        if own is not None:
            stages.setdefault(pre + EARLIER_RUN, dict(own, stage=pre + EARLIER_RUN, carried_over=True))
            _cost_pretrain_from(row, own)
    for row in rows:
        if not row.get('other_plan'):
            row['pretrain_shared_by'] = sum(1 for v in variant.values() if v == variant[row['model']])


def _cost_pretrain_from(row: Dict[str, Any], rec: Dict[str, Any]) -> None:
    """The row's pretraining cost is that of the stage record ``rec`` (the run that made its trunk)."""
    for kind in ('cpu_seconds', 'wall_seconds'):
        row[kind] = dict(row[kind], pretrain=rec[kind])


def _trunk_lines(rows: List[Dict[str, Any]]) -> List[str]:
    """What the table says under it about carried rows whose trunk this build pretrained again."""
    lines = []
    for row in rows:
        arch = trunk_of(row['model'])
        if row.get('trunk_rebuilt'):
            lines.append(f"`pretrain:{arch}` ran again in this build and made, bit for bit, the trunk "
                         f"`{row['model']}` was trained from (same sha256), so that row counts this build's "
                         'pretraining.')
        elif row.get('other_trunk'):
            theirs, ours = row['other_trunk']['theirs'], row['other_trunk']['this_build']
            lines.append(f"`{row['model']}` was trained from another `{arch}` trunk than the other `{arch}` rows: "
                         f"an earlier run of `pretrain:{arch}` with the same settings, listed as "
                         f"`pretrain:{arch}{EARLIER_RUN}` (trunk sha256 {(theirs or 'not recorded')[:12]}, the "
                         f"other rows' {(ours or '?')[:12]}); the two runs' trunks differ, so these rows do not "
                         'share one.')
    return lines


def _stage_notes(rec: Dict[str, Any]) -> List[str]:
    """What the table says under it about how a stage ran: its note, and the pieces it was run in."""
    notes = [rec['note']] if rec.get('note') else []
    cores = rec.get('cores') or rec.get('threads')
    if rec.get('load_mean') is not None and cores and rec['load_mean'] > cores + 0.5:
        notes.append(f"ran beside other work (1-minute load {rec['load_mean']:.1f} on average on {cores} cores), "
                     'so it took longer than it would alone')
    if rec.get('pieces', 1) > 1:
        notes.append(f"run in {rec['pieces']} pieces (stopped and continued); its times are their sum")
    return notes


def render_zoo_markdown(result: Dict[str, Any], json_path: str, command: str) -> str:
    """The zoo table: one row per model and code length, with the random-codes level and each stage's cost."""
    plan, machine = result['plan'], result['machine']
    cpus = sorted({rec.get('cpu') or 'an unrecorded CPU' for rec in result['stages']})
    lines = [f"### The zoo: {plan['name']}", '',
             f"{plan['description']}. Recipe `scratch` (see `deephash-train --help`). Stages built by "
             f"`deephash-zoo build` on {' and '.join(cpus)} (torch {machine['torch']}); this table rendered by "
             f"`{command}`; raw numbers in `{json_path}`.", '',
             '| model | bits | mAP@all | random codes | x random | mAP@1000 | mAP@all, tie-aware | P@100 | '
             'precision (r<=2) | distinct codes | minutes, wall (CPU): pretrain / hashing / eval |',
             '| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |']
    for row in result['models']:
        cpu, wall = row['cpu_seconds'], row['wall_seconds']
        cost = ' / '.join(f'{wall[s] / 60:.1f} ({cpu[s] / 60:.1f})' for s in ('pretrain', 'train', 'eval'))
        cost += f" (trunk shared by {row['pretrain_shared_by']})"
        for b, r in sorted(row['results'].items(), key=lambda kv: int(kv[0])):
            at = f"{r['map_at_1000']:.4f}" if r['map_at_1000'] is not None else '-'
            tie = f"{r['map_tie_aware']:.4f}" if r.get('map_tie_aware') is not None else '-'
            lines.append(f"| `{row['model']}` | {b} | {r['map']:.4f} | {r['random_map']:.4f} | "
                         f"{r['map'] / r['random_map']:.2f}x | {at} | {tie} | {r['p_at_100']:.4f} | "
                         f"{r['precision_radius2']:.4f} | {100 * r['distinct_codes']:.1f}% | {cost} |")
            cost = ''
    if result['models']:
        proto = result['models'][0]['protocol']
        lines += ['', f"{proto['num_queries']:,} queries against {proto['num_database']:,} database items, "
                      f"{result['models'][0]['img_size']}x{result['models'][0]['img_size']} input; ties in Hamming "
                      "distance ranked by database index. *random codes*: mAP@all of seeded random codes on the "
                      "same sets. *tie-aware*: mAP@all averaged over every order of the items a Hamming distance ties "
                      "(He et al., \"Hashing as Tie-Aware Learning to Rank\"; '-': not measured by that build). "
                      "*distinct codes*: share of different codes among the first 1,000 queries."]
    carried = [row['model'] for row in result['models'] if row.get('carried_over') and not row.get('other_plan')]
    if carried:
        lines += ['', f"Carried over from the earlier published build (stages and metrics as recorded then; this "
                      f"build did not retrain them): {', '.join(f'`{m}`' for m in carried)}."]
    older = {}
    for row in result['models']:
        if row.get('other_plan'):
            older.setdefault(row['other_plan'], []).append(row['model'])
    for description, names in older.items():
        lines += ['', f"Carried over from an earlier published build with other plan settings, not rebuilt yet "
                      f"({description}): {', '.join(f'`{m}`' for m in names)}."]
    labelled: Dict[float, List[str]] = {}
    for row in result['models']:
        if row.get('label_weight'):
            labelled.setdefault(row['label_weight'], []).append(row['model'])
    for weight, names in labelled.items():
        lines += ['', f"Trained with the `scratch` recipe's label term, which the ADMTH paper does not have: a label "
                      f"classifier on each code length's codes, cross-entropy with weight {weight:g} beside the "
                      f"paper's pairwise and consistency terms (`deephash-train --label-weight`; training only, the "
                      f"checkpoints keep the paper's architecture): {', '.join(f'`{m}`' for m in names)}."]
    balanced = [row['model'] for row in result['models'] if (row.get('loss_args') or {}).get('pair_balance')]
    if balanced:
        lines += ['', "Trained with balanced pairs, which the ADMTH paper does not have: the pairwise likelihood "
                      "weighs a batch's similar and dissimilar pairs half the total weight each (HashNet's weighting; "
                      "`--loss-arg pair_balance=1`; the architecture is the paper's): "
                      f"{', '.join(f'`{m}`' for m in balanced)}."]
    trunks = _trunk_lines(result['models'])
    if trunks:
        lines += ['', *trunks]
    notes = [f"- `{rec['stage']}`: " + '; '.join(_stage_notes(rec)) for rec in result['stages'] if _stage_notes(rec)]
    if notes:
        lines += ['', 'Notes on how stages ran:', *notes]
    threads = sorted({str(rec.get('threads', '?')) for rec in result['stages']})
    parts = {False: [], True: []}  # stage records of this plan, and of rows built under earlier settings
    for rec in result['stages']:
        parts[rec['stage'].endswith(EARLIER_PLAN)].append(rec)
    totals = [f"{sum(r['wall_seconds'] for r in recs) / 60:.1f} minutes wall, "
              f"{sum(r['cpu_seconds'] for r in recs) / 60:.1f} CPU minutes over {len(recs)} stages{what}"
              for recs, what in ((parts[False], ' of this plan' if parts[True] else ''),
                                 (parts[True], ' of the rows built under earlier settings')) if recs]
    lines += ['', f"Total: {'; '.join(totals)} (CPU: every thread of the build process, {'/'.join(threads)} "
                  'threads).', '']
    return '\n'.join(lines)
