"""``deephash-encode``: encode images with a model and print their codes and the time it took, or (``--out``)
write the codes of a whole folder to a .npy file, ids beside it.

``--images DIR --out codes.npy`` streams the folder (recursive) in batches: memory holds one batch and the
codes; ``codes.ids.txt`` lists the images in row order (paths relative to DIR), unreadable files are
skipped and counted."""
import argparse
import io
import json
import statistics
import sys
import time
from pathlib import Path
from typing import List, Optional

import numpy as np
import timm
import torch
from PIL import Image
from timm.data import create_transform, resolve_data_config

import deephash_zoo
from deephash_zoo.data import FASHION_MNIST_CLASSES, load_fashion_mnist
from deephash_zoo.data.images import open_rgb
from deephash_zoo.hub import create_pretrained
from deephash_zoo.precision import PRECISIONS, autocast, choose_precision, precision_models, relaxed_codes
from deephash_zoo.utils import write_atomic

from ._common import UserError, run_main


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog='deephash-encode', description=__doc__)
    p.add_argument('--model', default='dath_alexnet_32', help='registered model name (default: %(default)s)')
    p.add_argument('--pretrained', action='store_true', help="load the model's published weights (Hub or cache)")
    p.add_argument('--checkpoint', default=None,
                   help='a checkpoint folder (or run folder, hf-hub:/local-dir: name) instead of --model')
    p.add_argument('--out', type=Path, default=None,
                   help='write the packed codes here (.npy) and the ids beside it (.ids.txt), e.g. for a folder')
    p.add_argument('--batch-size', type=int, default=64, help='images per batch with --out (default: %(default)s)')
    p.add_argument('--device', choices=('auto', 'cpu', 'cuda'), default='auto')
    p.add_argument('--precision', choices=PRECISIONS, default='auto',
                   help='fp32, bf16 (CPU: weights cast once) or fp16 (CUDA autocast); auto: bf16 on AMX CPUs '
                        "/ fp16 on CUDA when the first batch's code signs agree with fp32's on 99%% of the bits, "
                        'else fp32 (default)')
    p.add_argument('--images', nargs='*', type=Path, default=None,
                   help='image files, or one folder with --out (default: Fashion-MNIST test images)')
    p.add_argument('--data-root', '--fmnist-dir', dest='data_root', type=Path, default=None,
                   help='folder of the Fashion-MNIST idx files (default: the Debian package\'s)')
    p.add_argument('--num', type=int, default=8, help='Fashion-MNIST test images to encode (default: %(default)s)')
    p.add_argument('--img-size', type=int, default=None,
                   help="input size (default: the model's pretrained_cfg: 64 for the zoo's weights)")
    p.add_argument('--bits', type=int, default=None, help='code length to print (multi-length models)')
    p.add_argument('--repeats', type=int, default=5, help='timed repeats; the median is reported')
    p.add_argument('--seed', type=int, default=0, help='seed of the randomly initialised weights')
    p.add_argument('--json', action='store_true', help='print the codes and timings as JSON instead of the table')
    p.add_argument('--json-out', type=Path, default=None, metavar='PATH', help='also write that JSON to PATH')
    return p


def _load_images(args: argparse.Namespace) -> tuple:
    if args.images:
        pil, names = [], []
        for path in args.images:
            pil.append(open_rgb(path))  # ImageRejected: one line naming the file
            names.append(path.name)
        return pil, names
    if args.num <= 0:
        raise UserError(f'--num must be positive, got {args.num}')
    images, labels = load_fashion_mnist('test', args.data_root)
    pil = [Image.fromarray(img, mode='L').convert('RGB') for img in images[:args.num]]
    return pil, [FASHION_MNIST_CLASSES[int(y)] for y in labels[:args.num]]


def _device(name: str) -> torch.device:
    if name == 'cuda' and not torch.cuda.is_available():
        raise UserError('--device cuda: no CUDA device here')
    return torch.device('cuda' if name != 'cpu' and torch.cuda.is_available() else 'cpu')


def _load_model(args: argparse.Namespace) -> torch.nn.Module:
    if args.checkpoint and args.pretrained:
        raise UserError('--checkpoint and --pretrained both name weights: give one')
    if args.checkpoint:
        from deephash_zoo.hub.checkpoint import load_checkpoint

        model = load_checkpoint(args.checkpoint)
        args.model = model.pretrained_cfg.get('architecture', args.model)
        return model
    return create_pretrained(args.model) if args.pretrained else timm.create_model(args.model)


def _write_codes(args: argparse.Namespace, model: torch.nn.Module) -> int:
    """``--out``: stream the images (a folder or files) through the model, write codes.npy + codes.ids.txt."""
    from deephash_zoo.retrieval.folder import encode_images

    if not args.images:
        raise UserError('--out writes the codes of --images (a folder or files)')
    source = args.images[0] if len(args.images) == 1 and args.images[0].is_dir() else args.images
    t0 = time.perf_counter()
    found = encode_images(model, source, bits=args.bits, batch_size=args.batch_size, progress=True,
                          device=_device(args.device), img_size=args.img_size, precision=args.precision)
    seconds = time.perf_counter() - t0
    out = args.out if args.out.suffix == '.npy' else args.out.with_suffix('.npy')
    out.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    np.save(buffer, found.codes, allow_pickle=False)
    ids = out.with_suffix('.ids.txt')
    write_atomic(ids, ('\n'.join(found.ids) + '\n').encode())
    write_atomic(out, buffer.getvalue())
    for name, why in found.skipped[:5]:
        print(f'skipped {name}: {why}', file=sys.stderr)
    print(f'{len(found.ids):,} images ({len(found.skipped)} skipped), {found.bits}-bit codes of {args.model} '
          f'at {found.manifest["img_size"]}x{found.manifest["img_size"]} in {found.precision}: '
          f'{1000 * seconds / len(found.ids):.2f} '
          f'ms/image with reading -> {out} ({found.codes.shape[0]} x {found.codes.shape[1]} bytes) and {ids}')
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    model = _load_model(args).eval()
    build_s = time.perf_counter() - start
    if args.out is not None:
        return _write_codes(args, model)
    if args.images and any(p.is_dir() for p in args.images):
        raise UserError('--images names a folder: add --out codes.npy to write its codes')
    if args.bits is not None and args.bits not in model.bits:
        raise UserError(f'{args.model} has code lengths {model.bits}; got --bits {args.bits}')
    cfg = resolve_data_config(model=model)
    if args.img_size:
        cfg['input_size'] = (3, args.img_size, args.img_size)
    transform = create_transform(**cfg)
    pil, names = _load_images(args)
    batch = torch.stack([transform(img) for img in pil])

    device = _device(args.device)
    model, batch = model.to(device), batch.to(device)
    at = precision_models(model, device.type)
    chosen = choose_precision(args.precision, device.type, lambda p: relaxed_codes(at(p), batch, p))
    with autocast(chosen, device.type):
        at(chosen).encode(batch[:1])  # warm-up
        times = []
        for _ in range(max(1, args.repeats)):
            t0 = time.perf_counter()
            codes = at(chosen).encode(batch, bits=args.bits)
            times.append(time.perf_counter() - t0)
    ms_per_image = 1000 * statistics.median(times) / len(batch)

    bits = codes.shape[1]
    rows = [dict(item=name, bits=''.join('1' if b > 0 else '0' for b in code),
                 hex=np.packbits(code > 0).tobytes().hex())
            for name, code in zip(names, codes.cpu().numpy(), strict=True)]
    record = dict(model=args.model, input_size=cfg['input_size'], bits=bits, codes=rows, ms_per_image=ms_per_image,
                  precision=chosen, build_seconds=build_s, version=deephash_zoo.__version__)
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(args.json_out, json.dumps(record, indent=2).encode())
    if args.json:
        print(json.dumps(record, indent=2))
        return 0
    print(f'{args.model}: {sum(p.numel() for p in model.parameters()):,} parameters, '
          f'{"published" if args.pretrained else "random (seed " + str(args.seed) + ")"} weights, '
          f'input {cfg["input_size"][1]}x{cfg["input_size"][2]}, {bits}-bit codes, {chosen}')
    width = max(len(n) for n in names)
    for row in rows:
        print(f"  {row['item']:<{width}}  {row['bits']}  0x{row['hex']}")
    print(f'model built in {build_s:.2f} s; encoding {len(batch)} images: {ms_per_image:.2f} ms/image '
          f'(median of {len(times)}, torch {torch.__version__}, {torch.get_num_threads()} threads)')
    return 0


def cli() -> None:
    sys.exit(run_main(main))


if __name__ == '__main__':
    cli()
