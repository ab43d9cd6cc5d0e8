"""``deephash-train``: train a registered model on a retrieval data set (resumable; DDP under torchrun)."""
import argparse
import sys
from typing import List, Optional

from deephash_zoo.losses.similarity import OBJECTIVE_REDUCTIONS
from deephash_zoo.training import TrainConfig, keep_freed_memory, train
from deephash_zoo.training.recipes import RECIPES

from ._common import run_main


def _recipe_lines() -> str:
    lines = []
    for name, families in RECIPES.items():
        for family, r in families.items():
            extra = ''.join([f', warm-up {r.warmup_steps} steps' if r.warmup_steps else '',
                             f', gamma ramp {r.gamma_ramp_steps} steps' if r.gamma_ramp_steps else '',
                             ', flips' if r.flip else '', ', Nesterov' if r.nesterov else '',
                             ', centred hash biases' if r.center_hash else '',
                             f', dropout {r.drop_rate:g}' if r.drop_rate is not None else '',
                             f', label term x{r.label_weight:g} (not the paper\'s)' if r.label_weight else '',
                             f', attention gates open at {r.attn_gate_init:g} (DANet: 0)' if r.attn_gate_init else ''])
            decay = f' (x{r.lr_decay} every {r.lr_step_epochs} epochs)' if r.lr_schedule == 'step' else ''
            lines.append(f'  {name:8s} {family:6s} {r.optimizer} lr {r.lr:g}{decay}, {r.lr_schedule} schedule, '
                         f'wd {r.weight_decay:g}, batch {r.batch_size}, {r.img_size}x{r.img_size}, '
                         f'loss reduction {r.loss_reduction}{extra}')
    return '\n'.join(lines)


def add_schedule_args(p: argparse.ArgumentParser) -> None:
    """Optimiser and schedule flags shared with deephash-pretrain; unset ones take the recipe's value."""
    p.add_argument('--batch-size', type=int, default=None)
    p.add_argument('--optimizer', choices=('rmsprop', 'sgd', 'adam'), default=None)
    p.add_argument('--lr', type=float, default=None)
    p.add_argument('--weight-decay', type=float, default=None)
    p.add_argument('--momentum', type=float, default=0.9, help='SGD momentum (default: %(default)s)')
    p.add_argument('--lr-schedule', choices=('constant', 'step', 'cosine'), default=None)
    p.add_argument('--lr-step-epochs', type=int, default=None, help='step schedule: decay every N epochs')
    p.add_argument('--lr-decay', type=float, default=None, help='step schedule: factor of each decay')
    p.add_argument('--warmup-steps', type=int, default=None, help='linear lr warm-up over N steps (0: none)')
    p.add_argument('--drop-rate', type=float, default=None, help="dropout before fc6 and fc7 (model's: 0.5)")
    p.add_argument('--grad-clip', type=float, default=None,
                   help="clip the gradient's global L2 norm to this (0: never); steadies small batches")
    p.add_argument('--flip', action=argparse.BooleanOptionalAction, default=None,
                   help='random horizontal flips of training images')


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog='deephash-train', description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog='Unset settings take the recipe\'s (--recipe; recorded in the checkpoint\'s config.json):\n'
               + _recipe_lines() + '\n"paper" is the papers\' setting for an ImageNet initialisation (--init); '
               '"scratch" trains here from a trunk pretrained by deephash-pretrain (--init RUN/trunk.safetensors).')
    p.add_argument('--model', required=True, help='registered model name, e.g. dath_alexnet_32, admth_cnnf_multi')
    p.add_argument('--recipe', choices=tuple(RECIPES), default='paper',
                   help='named settings (default: %(default)s); see below')
    p.add_argument('--data', default='fashion-mnist',
                   help='fashion-mnist | mosaic[-pair|-quadrant|-single] | cifar10[-1|-2]:DIR | list:PATH | coco:PATH '
                        '| folder:DIR (your own images, one subfolder per class; split by the "own" protocol) '
                        '(default: %(default)s)')
    p.add_argument('--data-root', default=None, help='image root (list:/coco:) or Fashion-MNIST folder')
    p.add_argument('--out', required=True, help='run folder: checkpoint/, last/, train_log.jsonl')
    p.add_argument('--epochs', type=int, default=1)
    add_schedule_args(p)
    p.add_argument('--loss-reduction', choices=OBJECTIVE_REDUCTIONS, default=None,
                   help="'sum': the papers' sums over triplets / pairs / items; 'mean': each term averaged; "
                        "'scaled-sum': the papers' sums divided by the triplet (DATH) or pair (ADMTH) count")
    p.add_argument('--gamma-ramp-steps', type=int, default=None,
                   help="DATH: raise gamma (J3's weight) linearly from 0 over N steps (0: none)")
    p.add_argument('--center-hash', action=argparse.BooleanOptionalAction, default=None,
                   help="start the hash layers' biases centred on the features of one training batch")
    p.add_argument('--label-weight', type=float, default=None,
                   help="ADMTH family: add a label classifier on each branch's codes with this weight (not in the "
                        "paper; 0: off, the paper's objective; recorded in config.json and named in the card). "
                        "Long runs at lr 1e-3 need --grad-clip (5 with --grad-clip 100 trained the zoo's schedule)")
    p.add_argument('--attn-gate-init', type=float, default=None,
                   help="DATH family: start DANet's attention scale (gamma) at this value instead of 0, the value "
                        "projection of position attention at the identity (DANet's formula unchanged; recorded in "
                        "config.json and named in the card). From a trunk pretrained without attention, gamma = 0 "
                        "stays 0 in a short run and the attention adds nothing")
    p.add_argument('--img-size', type=int, default=None,
                   help="input size (default: the recipe's: paper 224, scratch 64; >= 63)")
    p.add_argument('--subset', type=int, default=None, help='train on this many items (seeded choice)')
    p.add_argument('--max-steps', type=int, default=None, help='stop after this many optimiser steps')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--data-seed', type=int, default=None,
                   help='seed of the benchmark split (queries, database, training set) and of --subset, so that runs '
                        'of several seeds train and are scored on one split (default: --seed)')
    p.add_argument('--workers', type=int, default=0, help='data loader processes')
    p.add_argument('--init', default=None, help='initial weights: a trunk file of deephash-pretrain, or safetensors '
                                                'in this model layout (converted ImageNet weights); default: '
                                                'from scratch')
    p.add_argument('--resume', action='store_true', help='continue from OUT/last')
    p.add_argument('--overwrite', action='store_true',
                   help='replace a run already in OUT (without it, or --resume, such a folder is refused)')
    p.add_argument('--log-every', type=int, default=10, help='steps between log records')
    p.add_argument('--no-amp', action='store_true', help='no mixed precision on CUDA')
    p.add_argument('--device', choices=('auto', 'cpu', 'cuda'), default='auto')
    p.add_argument('--loss-arg', action='append', default=[], metavar='NAME=VALUE',
                   help='loss hyper-parameter, e.g. beta=1 gamma=0.01 margin=5 multi_label_form=paper (DATH), '
                        'alpha=20 beta=1 (ADMTH)')
    return p


def schedule_settings(args: argparse.Namespace) -> dict:
    """The ``TrainConfig`` fields of :func:`add_schedule_args`' flags."""
    names = ('batch_size', 'optimizer', 'lr', 'weight_decay', 'momentum', 'lr_schedule', 'lr_step_epochs',
             'lr_decay', 'warmup_steps', 'drop_rate', 'flip', 'grad_clip')
    return {n: getattr(args, n) for n in names}


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    loss_args = {}
    for item in args.loss_arg:
        name, sep, value = item.partition('=')
        if not sep:
            raise ValueError(f'--loss-arg expects NAME=VALUE, got {item!r}')
        try:
            loss_args[name] = float(value)
        except ValueError:  # a word (multi_label_form=paper): the loss's own check says which it takes
            loss_args[name] = value
    cfg = TrainConfig(
        model=args.model, recipe=args.recipe, data=args.data, out=args.out, data_root=args.data_root,
        epochs=args.epochs, img_size=args.img_size, subset=args.subset, max_steps=args.max_steps, seed=args.seed,
        data_seed=args.data_seed,
        num_workers=args.workers, init=args.init, resume=args.resume, overwrite=args.overwrite,
        log_every=args.log_every,
        amp=not args.no_amp, device=args.device, loss_args=loss_args, loss_reduction=args.loss_reduction,
        gamma_ramp_steps=args.gamma_ramp_steps, center_hash=args.center_hash, label_weight=args.label_weight,
        attn_gate_init=args.attn_gate_init, **schedule_settings(args),
    )
    summary = train(cfg)
    if summary.get('replicas_identical') is False:
        print('error: DDP replicas ended with different weights', file=sys.stderr)
        return 1
    print(f"checkpoint: {summary['checkpoint']} ({summary['step']} steps)")
    return 0


def cli() -> None:
    keep_freed_memory()  # this process trains: it reuses freed fc6-sized blocks (see the module)
    sys.exit(run_main(main))


if __name__ == '__main__':
    cli()
