"""``deephash-train``: train a registered model on a retrieval data set (resumable; DDP under torchrun)."""
import argparse
import sys
from typing import List, Optional

from deephash_zoo.training import TrainConfig, train

from ._common import run_main


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog='deephash-train', description=__doc__,
        epilog='Unset optimiser settings take the paper defaults of the model family: DATH RMSProp lr 1e-5 '
               'wd 1e-5 batch 128; ADMTH SGD lr 1e-3 momentum 0.9 (x0.01 every 30 epochs) batch 128 '
               "(the paper's lr 0.15 diverges here).")
    p.add_argument('--model', required=True, help='registered model name, e.g. dath_alexnet_32, admth_cnnf_multi')
    p.add_argument('--data', default='fashion-mnist',
                   help='fashion-mnist | mosaic | list:PATH | coco:PATH (default: %(default)s)')
    p.add_argument('--data-root', default=None, help='image root (list:/coco:) or Fashion-MNIST folder')
    p.add_argument('--out', required=True, help='run folder: checkpoint/, last/, train_log.jsonl')
    p.add_argument('--epochs', type=int, default=1)
    p.add_argument('--batch-size', type=int, default=None)
    p.add_argument('--optimizer', choices=('rmsprop', 'sgd', 'adam'), default=None)
    p.add_argument('--lr', type=float, default=None)
    p.add_argument('--weight-decay', type=float, default=None)
    p.add_argument('--momentum', type=float, default=0.9, help='SGD momentum (default: %(default)s)')
    p.add_argument('--lr-step-epochs', type=int, default=None, help='decay the lr every N epochs (0: never)')
    p.add_argument('--lr-decay', type=float, default=None, help='factor of each decay')
    p.add_argument('--img-size', type=int, default=None, help="input size (default: the model's 224; >= 63)")
    p.add_argument('--subset', type=int, default=None, help='train on this many items (seeded choice)')
    p.add_argument('--max-steps', type=int, default=None, help='stop after this many optimiser steps')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--workers', type=int, default=0, help='data loader processes')
    p.add_argument('--init', default=None, help='initial weights (safetensors in this model layout, e.g. '
                                                'converted ImageNet weights); default: from scratch')
    p.add_argument('--resume', action='store_true', help='continue from OUT/last')
    p.add_argument('--log-every', type=int, default=10, help='steps between log records')
    p.add_argument('--no-amp', action='store_true', help='no mixed precision on CUDA')
    p.add_argument('--device', choices=('auto', 'cpu', 'cuda'), default='auto')
    p.add_argument('--loss-arg', action='append', default=[], metavar='NAME=VALUE',
                   help='loss hyper-parameter, e.g. beta=1 gamma=0.01 margin=5 (DATH), alpha=20 beta=1 (ADMTH)')
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    loss_args = {}
    for item in args.loss_arg:
        name, sep, value = item.partition('=')
        if not sep:
            raise ValueError(f'--loss-arg expects NAME=VALUE, got {item!r}')
        loss_args[name] = float(value)
    cfg = TrainConfig(
        model=args.model, data=args.data, out=args.out, data_root=args.data_root, epochs=args.epochs,
        batch_size=args.batch_size, optimizer=args.optimizer, lr=args.lr, weight_decay=args.weight_decay,
        momentum=args.momentum, lr_step_epochs=args.lr_step_epochs, lr_decay=args.lr_decay,
        img_size=args.img_size, subset=args.subset, max_steps=args.max_steps, seed=args.seed,
        num_workers=args.workers, init=args.init, resume=args.resume, log_every=args.log_every,
        amp=not args.no_amp, device=args.device, loss_args=loss_args,
    )
    summary = train(cfg)
    if summary.get('replicas_identical') is False:
        print('error: DDP replicas ended with different weights', file=sys.stderr)
        return 1
    print(f"checkpoint: {summary['checkpoint']} ({summary['step']} steps)")
    return 0


def cli() -> None:
    sys.exit(run_main(main))


if __name__ == '__main__':
    cli()
