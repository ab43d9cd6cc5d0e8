"""Training benchmarks (commands, not tests): ``python -m deephash_zoo.training.benchmark {throughput,multitask}``.

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

Both print a table and write JSON (``--out``). Every figure of one table comes from one run.
"""
import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import timm
import torch

from deephash_zoo.losses import ADMTHLoss, DATHLoss
from deephash_zoo.utils import cpu_model, write_atomic

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
    params = [*model.parameters(), *loss.parameters()]
    opt = _build_optimizer(fam['optimizer'], params, lr, fam['weight_decay'], momentum=0.9)  # as the trainer
    x = torch.randn(batch, 3, img_size, img_size)
    y = torch.randint(0, num_labels, (batch,))
    model.train()

    def step() -> None:
        codes = model(x)
        parts = loss(codes, model.label_logits(codes), y) if fam['family'] == 'dath' else loss(codes, y)
        opt.zero_grad(set_to_none=True)
        parts['loss'].backward()
        opt.step()

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


def _table(result: Dict[str, Any]) -> str:
    m = result['machine']
    head = f"machine: {m['cpu']}, {m['threads']} threads, torch {m['torch']}, timm {m['timm']}, cuda {m['cuda']}"
    if result['benchmark'] == 'throughput':
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
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix='deephash-bench-') as tmp:
        result = _throughput(args, Path(tmp)) if args.what == 'throughput' else _multitask(args, Path(tmp))
    result['machine'] = _machine()
    table = _table(result)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(args.out, json.dumps(dict(result, table=table), indent=2).encode())
    print(f'wrote {args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
