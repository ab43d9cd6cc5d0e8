"""An experiment's JSON as tables: mean +- std over seeds, the papers' own numbers beside them (labelled
as other datasets), and which of the papers' orderings these runs confirm, contradict or cannot tell.

An ordering "A beats B" is *confirmed* at a code length when mean(A) - mean(B) exceeds std(A) + std(B)
over the seeds, *contradicted* when mean(B) - mean(A) does, and *cannot tell* otherwise. Beside each verdict the
tables give A - B seed by seed (:func:`paired_differences`): both arms of a seed are scored on the same query and
database subsets (a budget with ``eval_seed`` scores every cell on one draw), so those differences show what the
unpaired rule's spread hides.
"""
import statistics
from typing import Any, Dict, List, Optional, Sequence, Tuple

from deephash_zoo.evaluation.report import DISTINCT_OF

__all__ = ['summarize', 'render_markdown', 'claims', 'PAPER_NOTES', 'verdict', 'at_chance', 'training_setup',
           'paired_differences']

_DATA_NAMES = {'fashion-mnist': 'Fashion-MNIST', 'mosaic': 'the Fashion-MNIST 2x2 mosaic (multi-label)',
               'mosaic-quadrant': 'the Fashion-MNIST 2x2 mosaic with (tile, class) labels (40 labels)',
               'mosaic-pair': 'Fashion-MNIST pair mosaics (two items on a 2x2 grid, multi-label)',
               'mosaic-single': 'single Fashion-MNIST items on a random tile of the 2x2 mosaic canvas'}
# a trunk pretrained on other data than the table's (a mosaic's): what that data is to the table
_PRETRAINED_ON = {'mosaic-single': "single Fashion-MNIST items on a random tile of the 2x2 mosaic canvas (the "
                                   "mosaics' source items at tile scale and position, one class label each)"}

PAPER_NOTES = {
    'ablation': [
        'The DATH paper (Jiang et al. 2021) reports NUS-WIDE and MS-COCO (not CIFAR-10), with mAP@5000 after '
        'ImageNet pre-training at 224x224 for 200 epochs. Its Tables 2, 3, 5 and 6 did not survive in our copy '
        'of the paper, so no absolute mAP is quoted here; its text gives:',
        'DATH vs the best traditional method on deep features, NUS-WIDE: +7.9 / +5.4 / +6.6 / +5.8 points of mAP '
        'at 16 / 32 / 48 / 64 bits; vs the deep method GAH on MS-COCO: +5.6 / +5.2 / +3.9 / +4.1 points.',
        'Table 3 (variants): DATH-S beats DATH-C and both beat DATH-N ("adding spatial attention improves the model '
        'more significantly"); DATH beats both single attentions; the gain from attention shrinks as codes grow; '
        'DATH "can almost achieve better results" than DATH-1.',
        'Table 5: DATH\'s encoding time is "close to twice" that of other deep methods (GTX 1080Ti). Table 6: DATH '
        'trains slower per epoch than DATH-1.',
    ],
    'multitask': [
        'The ADMTH paper (Wang et al. 2023), CNN-F pre-trained on ImageNet, 224x224, mAP@5000: NUS-WIDE '
        '76.2 / 79.5 / 80.4 / 83.7 and MS-COCO 67.7 / 72.8 / 73.0 / 74.2 at 16 / 32 / 48 / 64 bits (Tables 4, 5).',
        'Table 3: training one multi-length model took 209.6 s against 629.8 s for the four single-length models '
        '(ratio 0.33, average over 150 epochs). Table 2: splitting into branches at the first fully connected '
        'layer beats splitting at the convolutional layers (not run here: our models split at fc6 only).',
        'Its ablations: the attention module helps (ADMTH above DMLH), and learning the lengths together is at '
        'least as good as learning them one by one.',
    ],
}

# (claim text, better arm, worse arm); arms missing from a run are skipped
_CLAIMS = {
    'ablation': [
        ('position attention helps', 'DATH-S', 'DATH-N'),
        ('channel attention helps', 'DATH-C', 'DATH-N'),
        ('position attention helps more than channel attention', 'DATH-S', 'DATH-C'),
        ('two attention streams beat position attention alone', 'DATH', 'DATH-S'),
        ('two attention streams beat channel attention alone', 'DATH', 'DATH-C'),
        ('two streams beat one shared trunk', 'DATH', 'DATH-1'),
    ],
    'multitask': [
        ('attention helps', 'ADMTH (multi-length)', 'DMLH (multi-length)'),
        ('multi-length learning beats single-length learning (no attention in either arm, as the paper)',
         'DMLH (multi-length)', 'DMLH (single-length)'),
        ('multi-length learning beats single-length learning, attention in both arms (extra)',
         'ADMTH (multi-length)', 'ADMTH (single-length)'),
    ],
}


def _mean_std(values: Sequence[float]) -> Tuple[float, float, int]:
    values = list(values)
    return (statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0, len(values))


def _cells_of(result: Dict[str, Any], model: str) -> List[Dict[str, Any]]:
    return [c for c in result['cells'] if c['model'] == model]


def summarize(result: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    """Per arm: mAP, P@100 and distinct codes (mean, std, n; distinct None for results from before it was
    recorded) per code length; training seconds per epoch and in total
    (the arm's models summed, per seed); encoding ms/image (the arm's models summed)."""
    out = {}
    # a table grown in pieces may give some arms fewer lengths: training totals count the lengths every arm has
    common = set.intersection(*(set(a['models']) for a in result['arms'])) if result['arms'] else set()
    for arm in result['arms']:
        per_bits = {}
        for b, model in arm['models'].items():
            cells = _cells_of(result, model)
            distinct = [c['results'][b].get('distinct_codes') for c in cells]
            per_bits[b] = dict(map=_mean_std([c['results'][b]['map'] for c in cells]),
                               p_at_100=_mean_std([c['results'][b]['p_at_n']['100'] for c in cells]),
                               distinct=_mean_std(distinct) if None not in distinct else None)
        models = list(dict.fromkeys(arm['models'].values()))
        counted = list(dict.fromkeys(m for b, m in arm['models'].items() if b in common)) or models
        totals = [sum(c['train_seconds'] for m in counted for c in _cells_of(result, m) if c['seed'] == s)
                  for s in result['seeds']]  # per seed, in the order of result['seeds']
        enc = result.get('encoding', {}).get('models', {})
        # an arm of one model per length is compared per model (the paper's Table 5 times its 16-bit models);
        # the single-length ADMTH arm stands for the four models a multi-length one replaces: summed
        costed = models if result['experiment'] == 'multitask' else models[:1]
        out[arm['label']] = dict(
            bits=per_bits, models=models,
            epoch_seconds=_mean_std([c['epoch_seconds'] for m in models for c in _cells_of(result, m)]),
            images_per_s=_mean_std([c['images_per_s'] for m in models for c in _cells_of(result, m)]),
            train_seconds_per_seed=totals, train_seconds_total=_mean_std(totals), train_models=counted,
            costed=costed, params=sum(result['params'][m] for m in costed),
            encode_ms=sum(enc[m]['ms_per_image'] for m in costed) if all(m in enc for m in costed) else None,
        )
    return out


def at_chance(result: Dict[str, Any], summary: Dict[str, Dict[str, Any]]) -> List[str]:
    """Arms whose mAP is within one standard deviation of random codes' at every code length."""
    level = result['chance']['map']
    return [label for label, s in summary.items()
            if all(abs(v['map'][0] - level) <= max(v['map'][1], 1e-3) for v in s['bits'].values())]


def verdict(better: Tuple[float, float, int], worse: Tuple[float, float, int]) -> str:
    """'confirmed', 'contradicted' or 'cannot tell' for "better beats worse" (see the module docstring)."""
    diff, spread = better[0] - worse[0], better[1] + worse[1]
    if better[2] < 2 or worse[2] < 2:
        return 'cannot tell'  # one seed has no spread to judge by
    if diff > spread:
        return 'confirmed'
    if -diff > spread:
        return 'contradicted'
    return 'cannot tell'


def claims(result: Dict[str, Any], summary: Optional[Dict[str, Dict[str, Any]]] = None) -> List[Dict[str, Any]]:
    """Each paper ordering with its verdict per code length (mAP), plus the multi-task time claim."""
    summary = summary or summarize(result)
    out = []
    for text, better, worse in _CLAIMS.get(result['experiment'], []):
        if better not in summary or worse not in summary:
            continue
        per_bits = {b: verdict(summary[better]['bits'][b]['map'], summary[worse]['bits'][b]['map'])
                    for b in summary[better]['bits'] if b in summary[worse]['bits']}
        out.append(dict(claim=text, better=better, worse=worse, per_bits=per_bits,
                        per_seed=paired_differences(result, better, worse)))
    ratio = multitask_time(result, summary)
    if ratio is not None:
        parity = (1.0, 0.0, ratio['ratio'][2])  # "multi takes less time": its time ratio falls below 1
        v = verdict(parity, ratio['ratio'])
        against = _singles_timed(ratio, "the paper's claim counts four")
        out.append(dict(claim=f'one multi-length model trains in less time than {against}',
                        better=f"{ratio['family']} (multi-length)", worse=f"{ratio['family']} (single-length)",
                        per_bits={'time': v}))
    return out


def paired_differences(result: Dict[str, Any], better: str, worse: str) -> Dict[str, List[float]]:
    """Per code length, mAP(better) - mAP(worse) seed by seed (the seeds both arms ran). The arms of one seed are
    scored on the same seeded query and database subsets and trained in the same data order, so a difference that
    keeps its sign over the seeds is worth reading beside the verdict, which compares the arms' spreads unpaired."""
    arms = {a['label']: a['models'] for a in result['arms']}
    out = {}
    for b, model in arms[better].items():
        if b not in arms[worse]:
            continue
        ours = {c['seed']: c['results'][b]['map'] for c in _cells_of(result, model)}
        theirs = {c['seed']: c['results'][b]['map'] for c in _cells_of(result, arms[worse][b])}
        out[b] = [ours[s] - theirs[s] for s in result['seeds'] if s in ours and s in theirs]
    return out


def _scored_on(budget: Dict[str, Any]) -> str:
    """Which query and database subsets the cells were scored on, for the reader of the seed-by-seed differences."""
    if budget.get('eval_seed') is None:
        return 'each seed scoring both arms on the same query and database subsets (its own draw)'
    return f'every cell scored on the same query and database subsets (seed {budget["eval_seed"]}\'s draw)'


def _describe_pairs(better: str, worse: str, per_seed: Dict[str, List[float]]) -> str:
    parts = [f"{' / '.join(f'{d:+.4f}' for d in diffs)} at {b} bits ({better} ahead in "
             f'{sum(d > 0 for d in diffs)} of {len(diffs)})' for b, diffs in per_seed.items() if len(diffs) > 1]
    return f' Seed by seed, {better} minus {worse}: ' + '; '.join(parts) + '.' if parts else ''


def multitask_time(result: Dict[str, Any], summary: Dict[str, Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """Total training seconds of one multi-length model against the four singles, per seed and as a ratio: the
    attention-free arms where the run has them (the paper's Table 3 comparison), else the ADMTH ones."""
    family = 'DMLH' if 'DMLH (single-length)' in summary and 'DMLH (multi-length)' in summary else 'ADMTH'
    multi, single = summary.get(f'{family} (multi-length)'), summary.get(f'{family} (single-length)')
    if multi is None or single is None or len(single['models']) < 2:
        return None
    ratios = [m / t for m, t in zip(multi['train_seconds_per_seed'], single['train_seconds_per_seed'], strict=True)]
    # the singles' totals sum the lengths every arm ran (see summarize): the count the claim names is theirs
    return dict(multi=multi['train_seconds_total'], singles=single['train_seconds_total'],
                ratio=_mean_std(ratios), family=family, num_singles=len(single['train_models']),
                partial=single['train_models'] != single['models'])


def _singles_timed(ratio: Dict[str, Any], paper: str) -> str:
    """The single-length models a multi-task time comparison sums, as its label names them."""
    n = ratio.get('num_singles', 4)
    if n == 4:
        return 'the four single-length models'
    which = 'the lengths every arm ran' if ratio.get('partial') else 'the lengths run'
    return f'the {n} single-length models of {which} ({paper})'


def _load(machine: Dict[str, Any]) -> str:
    start, end = machine.get('load_average') or [], machine.get('load_average_end') or []
    return f'{start[0] if start else "?"} at the start, {end[0] if end else "?"} at the end'


def _pm(ms: Tuple[float, float, int], digits: int = 3) -> str:
    return f'{ms[0]:.{digits}f} ± {ms[1]:.{digits}f}' if ms[2] > 1 else f'{ms[0]:.{digits}f}'


def _table(head: List[str], rows: List[List[str]]) -> List[str]:
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '|'.join(' --- ' for _ in head) + '|']
    return lines + ['| ' + ' | '.join(r) + ' |' for r in rows]


def _describe_verdicts(per_bits: Dict[str, str]) -> str:
    groups: Dict[str, List[str]] = {}
    for b, v in per_bits.items():
        groups.setdefault(v, []).append(b)
    parts = []
    for v in ('confirmed', 'contradicted', 'cannot tell'):
        if v in groups:
            where = ', '.join(groups[v])
            parts.append(v if where == 'time' else f'{v} at {where} bits')
    return '; '.join(parts)


def training_setup(result: Dict[str, Any]) -> List[str]:
    """What the cells started from and which recipe and loss form they trained with, as sentences; empty for
    results written before budgets named a recipe (their budget description says it)."""
    from deephash_zoo.training.recipes import RECIPES

    budget = result['budget']
    if 'recipe' not in budget:
        return []
    family = 'dath' if result['experiment'] == 'ablation' else 'admth'
    recipe = RECIPES[budget['recipe']][family]
    out = [f"Recipe `{budget['recipe']}` (`deephash-train --help`): {recipe.optimizer} lr {recipe.lr:g}, "
           f"{recipe.lr_schedule} schedule, loss form `{recipe.loss_reduction}`."]
    gate = budget.get('attn_gate_init')
    if family == 'dath' and gate:
        out.append(f'Attention gates opened (`--attn-gate-init {gate:g}`): every DANet module starts with its scale '
                   f"gamma at {gate:g} and position attention's value projection at the identity, not at DANet's 0, "
                   'at which a short run from a trunk pretrained without attention leaves the attention unused.')
    pretrain = result.get('pretrain') or {}
    for arch, rec in pretrain.items():
        acc = f", last-epoch training accuracy {rec['accuracy']:.3f}" if rec.get('accuracy') is not None else ''
        pieces = f" over {rec['pieces']} pieces (stopped and continued)" if rec.get('pieces', 1) > 1 else ''
        source = (rec.get('settings') or {}).get('data', result['data'])
        on = f' on {_PRETRAINED_ON.get(source, source)}' if source != result['data'] else ''
        out.append(f"Trunk: {arch} pretrained by this run{on}, {rec['epochs']} epochs ({rec['steps']:,} steps, "
                   f"{rec['wall_seconds'] / 60:.1f} min wall, {rec['cpu_seconds'] / 60:.1f} CPU min{pieces}{acc}), "
                   'shared by every cell.')
    if not pretrain and result.get('init'):
        # the budget's line above describes its own pretraining stage, which --init skipped
        instead = ", in place of the budget's pretraining stage" if budget.get('pretrain_epochs') else ''
        out.append(f"Every cell starts from `{result['init']}` (`--init`){instead}.")
    return out


def _wall_time(result: Dict[str, Any]) -> str:
    """The run's wall time; for a resumed run, that of the last call and the cells' own training and scoring
    summed (a call that resumed every cell took seconds: its time alone says nothing of the experiment's)."""
    wall = f'{result["wall_seconds"] / 60:.1f} min wall time'
    resumed = result.get('resumed_cells')
    if not resumed:
        return wall
    cells = result['cells']
    spent = sum(c.get('train_wall_seconds', 0.0) + c.get('eval_seconds', 0.0) for c in cells) / 60
    return (f'{wall} in the last call, which resumed {resumed} of the {len(cells)} cells from earlier runs (the '
            f'cells\' training and scoring, summed: {spent:.1f} min)')


def _other_machines(result: Dict[str, Any]) -> str:
    """A sentence naming the CPUs resumed cells ran on where they are not the last call's (the header describes
    that call); nothing for cells that do not record their machine (written before cells did)."""
    here = result['machine']['cpu']
    counts: Dict[str, int] = {}
    for cell in result['cells']:
        cpu = (cell.get('machine') or {}).get('cpu')
        if cpu and cpu != here:
            counts[cpu] = counts.get(cpu, 0) + 1
    if not counts:
        return ''
    where = '; '.join(f'{n} on {cpu}' for cpu, n in counts.items())
    return f' Of the {len(result["cells"])} cells, some ran on other CPUs than this call\'s: {where}.'


def render_markdown(result: Dict[str, Any], json_path: Optional[str] = None, heading_level: int = 3) -> str:
    """The experiment's tables as GitHub markdown (the README block and the .md file are this text)."""
    summary = summarize(result)
    budget, machine = result['budget'], result['machine']
    bits = [str(b) for b in result['bits']]
    topk = (budget.get('topk') or {}).get(result['data'])
    metric = f'mAP@{topk}' if topk else 'mAP@all'
    title = 'DATH ablation' if result['experiment'] == 'ablation' else 'ADMTH multi-task study'
    h = '#' * heading_level
    seeds = ', '.join(str(s) for s in result['seeds'])
    lines = [f'{h} {title} on {_DATA_NAMES.get(result["data"], result["data"])} ({budget["name"]} budget)', '',
             f'Generated by `{result["command"]}` on {result["generated"][:10]}: {machine["cpu"]}, '
             f'{machine["usable_cores"]} usable cores, GPU: {machine["gpu"] or "none"}; '
             f'{_wall_time(result)}, load average {_load(machine)} '
             f'(a shared machine: times vary between runs).{_other_machines(result)}',
             f'Budget: {budget["description"]}. Mean ± std over seeds {seeds}'
             + (f'; raw JSON: `{json_path}`' if json_path else '') + '.']
    lines += training_setup(result) + ['']
    chance = result['chance']
    lines += [f'**{metric}** (random codes score {chance["map"]:.3f} on these query and database sets)', '']
    lines += _table(['model'] + [f'{b} bits' for b in bits],
                    [[label] + [_pm(s['bits'][b]['map']) if b in s['bits'] else '' for b in bits]
                     for label, s in summary.items()])
    missing = [f'{label} at {", ".join(b for b in bits if b not in s["bits"])} bits'
               for label, s in summary.items() if any(b not in s['bits'] for b in bits)]
    if missing:
        lines += ['', f'Not run (blank above; this table grew a length for some arms only): {"; ".join(missing)}.']
    flat = at_chance(result, summary)
    if flat:
        lines += ['', f'At the random-codes level (mean within one std of {chance["map"]:.3f}) at every length: '
                  f'{", ".join(flat)}. These runs learned no measurable ranking at this budget; their orderings '
                  f'below say nothing about the methods.']
    lines += ['', f'**P@100** (random codes: {chance["p_at_100"]:.3f})', '']
    lines += _table(['model'] + [f'{b} bits' for b in bits],
                    [[label] + [_pm(s['bits'][b]['p_at_100']) if b in s['bits'] else '' for b in bits]
                     for label, s in summary.items()])
    if all(v['distinct'] is not None for s in summary.values() for v in s['bits'].values()):
        counted = min(budget.get('query_subset') or DISTINCT_OF, DISTINCT_OF)  # a small budget scores fewer
        lines += ['', f'**Distinct codes** (share of different codes among the first {counted:,} queries; 1 when '
                  f'every query has its own code, the number of classes / {counted:,} when the codes collapse onto '
                  'one per class)', '']
        lines += _table(['model'] + [f'{b} bits' for b in bits],
                        [[label] + [_pm(s['bits'][b]['distinct']) if b in s['bits'] else '' for b in bits]
                         for label, s in summary.items()])
    enc = result.get('encoding') or {}
    enc_head = f'encode ms/image ({enc.get("runtime", "eager")}, batch 1, {enc.get("img_size", 224)}x' \
               f'{enc.get("img_size", 224)})'
    cost_rows = []
    for label, s in summary.items():
        which = f' ({len(s["costed"])} models)' if len(s['costed']) > 1 else \
            f' ({s["costed"][0]})' if len(s['models']) > 1 else ''
        cost_rows.append([label, f'{s["params"]:,}{which}', _pm(s['epoch_seconds'], 1), _pm(s['images_per_s'], 1),
                          _pm(s['train_seconds_total'], 1),
                          '' if s['encode_ms'] is None else f'{s["encode_ms"]:.1f}{which}'])
    partial = any(s['train_models'] != s['models'] for s in summary.values())
    total_head = ('train s in total (the arm\'s models at the lengths every arm ran, per seed)' if partial else
                  'train s in total (all the arm\'s models, per seed)')
    lines += ['', '**Cost** (the DATH paper\'s Tables 5 and 6 framing; training at the budget\'s input size, '
              'encoding at the papers\')', '']
    lines += _table(['model', 'parameters', 'train s/epoch (each model)', 'train images/s',
                     total_head, enc_head], cost_rows)
    mt = multitask_time(result, summary)
    if mt is not None:
        counts = 'four single-length models' if mt['num_singles'] == 4 else \
            _singles_timed(mt, "the paper's ratio counts four")
        lines += ['', f'**Training time, one multi-length model vs {counts}** ({mt["family"]} '
                  f'arms; same data, epochs and batch): {_pm(mt["multi"], 1)} s vs {_pm(mt["singles"], 1)} s, ratio '
                  f'{_pm(mt["ratio"])} (the paper: 209.6 s vs 629.8 s, ratio 0.33).']
    lines += ['', '**The papers\' own numbers** (other datasets, other budgets: not comparable with the rows '
              'above)', '']
    lines += [f'- {n}' for n in PAPER_NOTES[result['experiment']]]
    found = claims(result, summary)
    if found:
        lines += ['', '**The papers\' orderings in these runs** (mAP; confirmed / contradicted when the means '
                  'differ by more than the sum of their standard deviations; then the differences seed by seed, '
                  f'{_scored_on(budget)})', '']
        for c in found:
            lines.append(f'- {c["claim"]} ({c["better"]} over {c["worse"]}): {_describe_verdicts(c["per_bits"])}.'
                         + _describe_pairs(c['better'], c['worse'], c.get('per_seed', {})))
    return '\n'.join(lines) + '\n'
