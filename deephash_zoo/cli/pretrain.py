"""``deephash-pretrain``: train a trunk (AlexNet or CNN-F, with fc6/fc7) as a classifier on a data set's
labels and write ``OUT/trunk.safetensors``, the initialisation that takes the place of ImageNet weights.

``deephash-train --recipe scratch --init OUT/trunk.safetensors`` copies it into both DATH streams or all
ADMTH branches. The run folder is resumable (``--resume``) like a ``deephash-train`` run.
"""
import argparse
import sys
from typing import List, Optional

from deephash_zoo.training import TrainConfig, keep_freed_memory, train
from deephash_zoo.training.recipes import PRETRAIN

from ._common import run_main
from .train import add_schedule_args, schedule_settings


def _parser() -> argparse.ArgumentParser:
    r = PRETRAIN
    p = argparse.ArgumentParser(
        prog='deephash-pretrain', description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f'Unset settings: {r.optimizer} (Nesterov) lr {r.lr:g}, {r.lr_schedule} schedule after a '
               f'{r.warmup_steps}-step warm-up, wd {r.weight_decay:g}, batch {r.batch_size}, random flips, '
               'cross-entropy. DATH models take the alexnet trunk, ADMTH / DMLH models the cnnf trunk.')
    p.add_argument('--trunk', required=True, choices=('alexnet', 'cnnf'), help='alexnet (DATH) or cnnf (ADMTH)')
    p.add_argument('--data', default='fashion-mnist',
                   help='fashion-mnist | mosaic[-pair|-quadrant|-single] | cifar10[-1|-2]:DIR | list:PATH | coco:PATH '
                        '| folder:DIR (your own images, one subfolder per class; split by the "own" protocol) '
                        '(default: %(default)s)')
    p.add_argument('--data-root', default=None, help='image root (list:/coco:) or Fashion-MNIST folder')
    p.add_argument('--out', required=True, help='run folder: trunk.safetensors, last/, train_log.jsonl')
    p.add_argument('--epochs', type=int, default=5, help='default: %(default)s')
    add_schedule_args(p)
    p.add_argument('--img-size', type=int, default=None, help="input size (default: 64, the scratch recipe's; >= 63)")
    p.add_argument('--subset', type=int, default=None, help='train on this many items (seeded choice)')
    p.add_argument('--max-steps', type=int, default=None, help='stop after this many optimiser steps')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--workers', type=int, default=0, help='data loader processes')
    p.add_argument('--resume', action='store_true', help='continue from OUT/last')
    p.add_argument('--overwrite', action='store_true',
                   help='replace a run already in OUT (without it, or --resume, such a folder is refused)')
    p.add_argument('--device', choices=('auto', 'cpu', 'cuda'), default='auto')
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    cfg = TrainConfig(
        model=args.trunk, stage='pretrain', data=args.data, out=args.out, data_root=args.data_root,
        epochs=args.epochs, img_size=args.img_size, subset=args.subset, max_steps=args.max_steps, seed=args.seed,
        num_workers=args.workers, resume=args.resume, overwrite=args.overwrite, device=args.device,
        **schedule_settings(args),
    )
    summary = train(cfg)
    print(f"trunk: {summary['checkpoint']} ({summary['step']} steps)")
    return 0


def cli() -> None:
    keep_freed_memory()  # this process trains: it reuses freed fc6-sized blocks (see the module)
    sys.exit(run_main(main))


if __name__ == '__main__':
    cli()
