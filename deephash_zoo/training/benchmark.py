"""Training benchmarks (commands, not tests): ``python -m deephash_zoo.training.benchmark WHAT``.

* ``throughput``: the trainer's steady images/s (its own per-epoch measurement after the first
  step: data loading, transforms, loss, backward, optimiser step, logging) against a bare loop of
  forward + loss + backward + step on random tensors already in memory, same model, batch and
  loss. A ratio near 1 means the data pipeline is never the bottleneck.
* ``multitask``: training time of one multi-length model (16/32/48/64 learned at once) against
  the four single-length models trained one after the other on the same data, the ADMTH paper's
  Table 3 framing (209.6 s vs 629.8 s, ratio 0.33). The paper makes that comparison "with the ...
  attention mechanism removed", so the default family is DMLH (``dmlh_cnnf_multi`` against
  ``dmlh_cnnf_{16,32,48,64}``); ``--family admth`` times the SE-attention models. Each model's time is its
  steady seconds per step (the trainer's own figure without its first step, which carries one-off
  allocation and would weigh a few-step run by its model's size); the paper's per-epoch times scale alike.

* ``steps``: seconds per SGD step at 64x64, batch 128, for both pretraining trunks and two hashing models,
  in three forms timed in alternating rounds on in-memory tensors: every fc6 tap updated by torch's
  default (foreach) SGD, as the trainer did before; the same with fused SGD; and what the trainer does now,
  fused SGD on fc6's tap sums (:mod:`~deephash_zoo.training.tapfold`). The scratch recipe's settings and
  losses; what the zoo build's CPU time is made of.

Each prints a table and writes JSON (``--out``). Every figure of one table comes from one run. ``--malloc``:
``kept`` (default) times the process as the training commands run it, freed blocks kept for the next step
(:mod:`~deephash_zoo.training.allocator`); ``glibc`` with glibc's default, each large block mapped anew.
"""
import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import timm
import torch
import torch.nn.functional as F

from deephash_zoo.losses import ADMTHLoss, DATHLoss
from deephash_zoo.models.pretrain import TRUNK_ARCHS, TrunkClassifier
from deephash_zoo.utils import cpu_model, provenance, write_atomic

from .allocator import keep_freed_memory, malloc_environment
from .recipes import PRETRAIN, get_recipe
from .tapfold import TapFold
from .trainer import TrainConfig, _build_optimizer, epoch_records, family_defaults, train

__all__ = ['main', 'multitask_models', 'MULTITASK_FAMILIES']


def _machine() -> Dict[str, Any]:
    return dict(cpu=cpu_model(), threads=torch.get_num_threads(), torch=torch.__version__, timm=timm.__version__,
                cuda=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)


def _trainer_epoch(model: str, data: str, img_size: int, batch: int, steps: int, out: Path,
                   lr: Optional[float] = None) -> Dict[str, Any]:
    train(TrainConfig(model=model, data=data, out=str(out), img_size=img_size, subset=batch * steps,
                      batch_size=batch, epochs=1, lr=lr, log_every=10_000, overwrite=True))
    return epoch_records(out)[-1]


def _bare_loop(model_name: str, img_size: int, batch: int, steps: int, num_labels: int, lr: float) -> float:
    """images/s of forward + loss + backward + step on in-memory random tensors."""
    fam = family_defaults(model_name)
    model = timm.create_model(model_name, **({'num_labels': num_labels} if fam['family'] == 'dath' else {}))
    loss = DATHLoss() if fam['family'] == 'dath' else ADMTHLoss(bits=model.bits)
    fold = TapFold.attach(model, img_size) if fam['optimizer'] == 'sgd' else None  # as the trainer
    params = [*model.parameters(), *loss.parameters()]
    if fold:
        params = fold.param_groups(params, lr, fam['weight_decay'])
    opt = _build_optimizer(fam['optimizer'], params, lr, fam['weight_decay'], momentum=0.9)
    x = torch.randn(batch, 3, img_size, img_size)
    y = torch.randint(0, num_labels, (batch,))
    model.train()

    def step() -> None:
        codes = model(x)
        parts = loss(codes, model.label_logits(codes), y) if fam['family'] == 'dath' else loss(codes, y)
        opt.zero_grad(set_to_none=True)
        parts['loss'].backward()
        opt.step()
        if fold:
            fold.after_step(opt)

    step()  # warm-up, as the trainer's steady figure leaves out its first step
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return batch * steps / (time.perf_counter() - t0)


def _throughput(args: argparse.Namespace, work: Path) -> Dict[str, Any]:
    lr = family_defaults(args.model)['lr']
    rows = []
    for rep in range(args.repeats):
        rec = _trainer_epoch(args.model, args.data, args.img_size, args.batch_size, args.steps, work / f't{rep}')
        bare = _bare_loop(args.model, args.img_size, args.batch_size, args.steps, 10, lr)
        rows.append(dict(trainer=rec['steady_images_per_s'], bare=bare, ratio=rec['steady_images_per_s'] / bare))
    ratio = statistics.median(r['ratio'] for r in rows)
    return dict(benchmark='throughput', model=args.model, data=args.data, img_size=args.img_size,
                batch_size=args.batch_size, steps=args.steps, runs=rows, median_ratio=ratio,
                trainer_images_per_s=statistics.median(r['trainer'] for r in rows),
                bare_images_per_s=statistics.median(r['bare'] for r in rows))


MULTITASK_FAMILIES = ('dmlh', 'admth')


def multitask_models(family: str) -> List[str]:
    """The multi-length model of ``family`` first, then its four single-length models."""
    if family not in MULTITASK_FAMILIES:
        raise ValueError(f'family must be one of {MULTITASK_FAMILIES}, got {family!r}')
    return [f'{family}_cnnf_multi'] + [f'{family}_cnnf_{b}' for b in (16, 32, 48, 64)]


def _multitask(args: argparse.Namespace, work: Path) -> Dict[str, Any]:
    if args.steps < 2:
        raise ValueError('--steps must be >= 2: the first step is left out of the steady time')
    models = multitask_models(args.family)
    seconds: Dict[str, List[float]] = {m: [] for m in models}
    for rep in range(args.repeats):
        for m in models:
            rec = _trainer_epoch(m, 'mosaic', args.img_size, args.batch_size, args.steps, work / f'{m}-{rep}')
            seconds[m].append(args.batch_size / rec['steady_images_per_s'])
    med = {m: statistics.median(v) for m, v in seconds.items()}
    singles = sum(med[m] for m in models[1:])
    return dict(benchmark='multitask', family=args.family, data='mosaic', img_size=args.img_size,
                batch_size=args.batch_size, steps=args.steps, step_seconds=seconds, median_step_seconds=med,
                multi_step_seconds=med[models[0]], four_singles_step_seconds=singles, ratio=med[models[0]] / singles,
                paper=dict(multi_seconds=209.6, four_singles_seconds=629.8, ratio=round(209.6 / 629.8, 3)))


STEP_MODELS = ('alexnet', 'cnnf', 'dath_alexnet_32', 'admth_cnnf_multi')
STEP_FORMS = ('every tap, foreach SGD', 'every tap, fused SGD', 'tap sums, fused SGD')


def _step_runner(name: str, form: str, img_size: int, batch: int, num_labels: int = 10) -> Callable[[], None]:
    """One training step of ``name`` (a trunk's pretraining or a hash model's scratch objective) in ``form``."""
    torch.manual_seed(0)
    x = torch.randn(batch, 3, img_size, img_size)
    y = torch.randint(0, num_labels, (batch,))
    if name in TRUNK_ARCHS:
        recipe, model = PRETRAIN, TrunkClassifier(name, num_labels)
        loss: torch.nn.Module = torch.nn.Module()

        def objective() -> torch.Tensor:
            return F.cross_entropy(model(x), y)
    else:
        recipe = get_recipe('scratch', name)
        dath = name.startswith('dath')
        model = timm.create_model(name, **({'num_labels': num_labels} if dath else {}))
        loss = DATHLoss(reduction=recipe.loss_reduction) if dath else \
            ADMTHLoss(bits=model.bits, reduction=recipe.loss_reduction)

        def objective() -> torch.Tensor:
            codes = model(x)
            return (loss(codes, model.label_logits(codes), y) if dath else loss(codes, y))['loss']
    model.train()
    fold = TapFold.attach(model, img_size) if form.startswith('tap sums') else None
    params: List[Any] = [*model.parameters(), *loss.parameters()]
    if fold:
        params = fold.param_groups(params, recipe.lr, recipe.weight_decay)
    opt = _build_optimizer('sgd', params, recipe.lr, recipe.weight_decay, 0.9, nesterov=recipe.nesterov,
                           fused='fused' in form)

    def step() -> None:
        value = objective()
        opt.zero_grad(set_to_none=True)
        value.backward()
        opt.step()
        if fold:
            fold.after_step(opt)
    return step


def _steps(args: argparse.Namespace, work: Path) -> Dict[str, Any]:
    models = [m.strip() for m in args.models.split(',') if m.strip()]
    seconds: Dict[str, Dict[str, List[float]]] = {}
    for name in models:
        runners = {form: _step_runner(name, form, args.img_size, args.batch_size) for form in STEP_FORMS}
        for run in runners.values():
            run()  # one-off allocations (optimiser state) out of the timing
        times: Dict[str, List[float]] = {form: [] for form in STEP_FORMS}
        for _ in range(args.repeats):  # alternating rounds: every form sees the same minutes of a shared machine
            for form, run in runners.items():
                t0 = time.perf_counter()
                for _ in range(args.steps):
                    run()
                times[form].append((time.perf_counter() - t0) / args.steps)
        seconds[name] = times
        del runners
    med = {n: {f: statistics.median(v) for f, v in t.items()} for n, t in seconds.items()}
    return dict(benchmark='steps', img_size=args.img_size, batch_size=args.batch_size, steps=args.steps,
                repeats=args.repeats, forms=list(STEP_FORMS), step_seconds=seconds, median_step_seconds=med,
                speedup={n: m[STEP_FORMS[0]] / m[STEP_FORMS[-1]] for n, m in med.items()})


def _set_malloc(choice: str) -> str:
    """Put the process's allocator in the state ``--malloc`` asks for; returns how the table names it."""
    if choice == 'glibc':
        if malloc_environment():
            raise ValueError("--malloc glibc: this process started with malloc settings in its environment "
                             "(MALLOC_*_, GLIBC_TUNABLES or LD_PRELOAD); unset them to time glibc's default")
        return "glibc's default"
    if not keep_freed_memory():
        raise ValueError('--malloc kept: not in force here (it needs Linux with glibc, and no MALLOC_*_, '
                         'GLIBC_TUNABLES malloc or LD_PRELOAD settings of your own); time with --malloc glibc')
    return 'freed blocks kept, as the training commands'


def _table(result: Dict[str, Any]) -> str:
    m = result['machine']
    cpu = result['cpu_seconds']
    head = (f"machine: {m['cpu']}, {m['threads']} threads, torch {m['torch']}, timm {m['timm']}, cuda {m['cuda']}; "
            f"malloc: {result['malloc']}\nthis process's CPU time over the run: user {cpu['user']:.1f} s, system "
            f"{cpu['system']:.1f} s ({cpu['minor_page_faults']:,} page faults)")
    if result['benchmark'] == 'steps':
        forms = result['forms']
        lines = [f"seconds per SGD step, {result['img_size']}x{result['img_size']}, batch {result['batch_size']}, "
                 f"median of {result['repeats']} alternating rounds of {result['steps']} steps; trunks: pretraining, "
                 'hash models: recipe scratch',
                 f"{'model':<18}" + ''.join(f'{f:>24}' for f in forms) + f"{'speed-up':>10}"]
        for name, m in result['median_step_seconds'].items():
            lines.append(f'{name:<18}' + ''.join(f'{m[f]:>24.3f}' for f in forms)
                         + f"{result['speedup'][name]:>9.2f}x")
    elif result['benchmark'] == 'throughput':
        lines = [f"trainer vs bare loop: {result['model']} on {result['data']}, {result['img_size']}x"
                 f"{result['img_size']}, batch {result['batch_size']}, {result['steps']} steps, "
                 f"{len(result['runs'])} run(s)",
                 f"{'run':>4} {'trainer img/s':>14} {'bare img/s':>11} {'ratio':>7}"]
        for i, r in enumerate(result['runs']):
            lines.append(f"{i:>4} {r['trainer']:>14.2f} {r['bare']:>11.2f} {r['ratio']:>7.3f}")
        lines.append(f"median ratio {result['median_ratio']:.3f} (goal >= 0.9)")
    else:
        multi = f"{result['family']}_cnnf_multi"
        lines = [f"steady seconds per training step on the mosaic (batch {result['batch_size']}, "
                 f"{result['img_size']}x{result['img_size']}, {result['steps']} steps a run, the first left out), "
                 f"median of {len(result['step_seconds'][multi])} run(s)",
                 f"{'model':<18} {'s/step':>8}"]
        for name, s in result['median_step_seconds'].items():
            lines.append(f'{name:<18} {s:>8.3f}')
        lines.append(f"{'four singles':<18} {result['four_singles_step_seconds']:>8.3f}")
        lines.append(f"ratio multi / four singles: {result['ratio']:.3f} (paper Table 3: 209.6 s / 629.8 s = "
                     f"{result['paper']['ratio']}; goal <= 0.35)")
    return '\n'.join([*lines, head])


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog='python -m deephash_zoo.training.benchmark', description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest='what', required=True)
    t = sub.add_parser('throughput', help='trainer images/s vs a bare forward+backward loop')
    t.add_argument('--model', default='dath_alexnet_32')
    t.add_argument('--data', default='fashion-mnist')
    t.add_argument('--img-size', type=int, default=64)
    t.add_argument('--batch-size', type=int, default=32)
    t.add_argument('--steps', type=int, default=6)
    t.add_argument('--repeats', type=int, default=3)
    t.add_argument('--out', type=Path, default=Path('runs/benchmarks/train_throughput.json'))
    m = sub.add_parser('multitask', help='one multi-length model vs four single-length models, s/step')
    m.add_argument('--family', choices=MULTITASK_FAMILIES, default='dmlh',
                   help="dmlh: no attention in either arm, as the paper compares (default); admth: SE attention")
    m.add_argument('--img-size', type=int, default=224)
    m.add_argument('--batch-size', type=int, default=128, help="the paper's batch (default: %(default)s)")
    m.add_argument('--steps', type=int, default=4, help='steps per model and run, the first left out (>= 2)')
    m.add_argument('--repeats', type=int, default=1)
    m.add_argument('--out', type=Path, default=Path('runs/benchmarks/train_multitask.json'))
    s = sub.add_parser('steps', help='s/step at 64x64: every fc6 tap (foreach or fused SGD) vs tap sums')
    s.add_argument('--models', default=','.join(STEP_MODELS),
                   help='trunks (alexnet, cnnf) and hash models (default: %(default)s)')
    s.add_argument('--img-size', type=int, default=64)
    s.add_argument('--batch-size', type=int, default=128)
    s.add_argument('--steps', type=int, default=2, help='steps a form and round')
    s.add_argument('--repeats', type=int, default=5, help='alternating rounds')
    s.add_argument('--out', type=Path, default=Path('runs/benchmarks/train_steps.json'))
    for sp in (t, m, s):
        sp.add_argument('--malloc', choices=('kept', 'glibc'), default='kept',
                        help='kept: freed blocks stay for the next step, as the training commands run; glibc: its '
                             'default, each block above 32 MB mapped anew (default: %(default)s)')
    args = p.parse_args(argv)
    made = provenance('deephash_zoo.training.benchmark', argv)
    malloc = _set_malloc(args.malloc)
    run = {'throughput': _throughput, 'multitask': _multitask, 'steps': _steps}[args.what]
    before = resource.getrusage(resource.RUSAGE_SELF)
    with tempfile.TemporaryDirectory(prefix='deephash-bench-') as tmp:
        result = run(args, Path(tmp))
    after = resource.getrusage(resource.RUSAGE_SELF)
    result['machine'] = _machine()
    result['malloc'] = malloc
    # the whole run's CPU time, this process only: system time is mostly page faults (what --malloc changes)
    result['cpu_seconds'] = dict(user=after.ru_utime - before.ru_utime, system=after.ru_stime - before.ru_stime,
                                 minor_page_faults=after.ru_minflt - before.ru_minflt)
    table = _table(result)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(args.out, json.dumps(dict(made, **result, table=table), indent=2).encode())
    print(f'wrote {args.out}')
    return 0


if __name__ == '__main__':
    try:
        sys.exit(main())
    except ValueError as e:  # a request the benchmark cannot time: one line, the commands' exit status 2
        print(f'error: {e}', file=sys.stderr)
        sys.exit(2)
