"""``deephash-encode``: encode images with a model and print their codes and the time it took, or (``--out``)
write the codes of a whole folder to a .npy file, ids beside it.

``--images DIR --out codes.npy`` streams the folder (recursive) in batches: memory holds one batch and the
codes; ``codes.ids.txt`` lists the images in row order, one line a row (paths relative to DIR), unreadable
files are skipped and counted. A file whose name holds a line break is skipped too (the ids file could not
hold it); a name that is not UTF-8 is written as its bytes on disk (read the file with
``errors='surrogateescape'`` to get the path back). An existing ``--out`` is replaced only with
``--overwrite``; the path is checked before the model is loaded, and the codes and ids are written whole,
together, or not at all."""
import argparse
import io
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, List, Optional, Sequence, Tuple

import numpy as np
import timm
import torch
from PIL import Image
from timm.data import resolve_data_config

import deephash_zoo
from deephash_zoo.data import FASHION_MNIST_CLASSES, load_fashion_mnist
from deephash_zoo.data.images import open_rgb
from deephash_zoo.hub import create_pretrained
from deephash_zoo.precision import PRECISIONS, autocast, choose_precision, precision_models, relaxed_codes
from deephash_zoo.retrieval.encoding import model_transform
from deephash_zoo.utils import file_in_the_way, write_temporary

from ._common import UserError, print_skipped, run_main

if TYPE_CHECKING:
    from deephash_zoo.retrieval.folder import EncodedImages


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog='deephash-encode', description=__doc__)
    p.add_argument('--model', default='dath_alexnet_32', help='registered model name (default: %(default)s)')
    p.add_argument('--pretrained', action='store_true', help="load the model's published weights (Hub or cache)")
    p.add_argument('--checkpoint', default=None,
                   help='a checkpoint folder (or run folder, hf-hub:/local-dir: name) instead of --model')
    p.add_argument('--out', default=None, metavar='CODES.npy',
                   help='write the packed codes here (.npy) and the ids beside it (.ids.txt), e.g. for a folder')
    p.add_argument('--overwrite', action='store_true', help='replace an existing --out (and its ids file)')
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
    p.add_argument('--bits', type=int, default=None,
                   help="code length (multi-length models; default: the longest, the one an index uses)")
    p.add_argument('--repeats', type=int, default=5, help='timed repeats; the median is reported')
    p.add_argument('--seed', type=int, default=0, help='seed of the randomly initialised weights')
    p.add_argument('--json', action='store_true', help='print the codes and timings as JSON instead of the table')
    p.add_argument('--json-out', default=None, metavar='PATH', help='also write that JSON to PATH')
    return p


def _file_target(raw: str, flag: str, example: str) -> Path:
    """The path ``raw`` of an output file, refused (before minutes of encoding) where no file can be written:
    a folder, a path ending in a slash (``Path`` would drop the slash and write a file named like the folder),
    or a path under a file."""
    path = Path(raw)
    if raw.endswith(('/', os.sep)) or path.is_dir():
        raise UserError(f'{flag} {raw} names a folder; give a file path, e.g. {path / example}')
    blocking = file_in_the_way(path)
    if blocking is not None:
        raise UserError(f'{flag} {path}: a file stands at {blocking}, where a folder would go')
    return path


def _ids_path(out: Path) -> Path:
    return out.with_suffix('.ids.txt')


def _check_out(args: argparse.Namespace) -> Path:
    """``--out``'s path, checked before the model is loaded: a .npy file that is new, or replaced on purpose."""
    if not args.images:
        raise UserError('--out writes the codes of --images (a folder or image files)')
    if args.json or args.json_out:
        raise UserError('--json and --json-out print the codes of a few images; with --out the codes go to the '
                        '.npy file: drop one')
    out = _file_target(args.out, '--out', 'codes.npy')
    if out.suffix != '.npy':
        raise UserError(f'--out {out}: the codes are written as a .npy file; name one, e.g. '
                        f'{out.with_suffix(".npy")}')
    for path in (out, _ids_path(out)):
        if path.is_dir():
            raise UserError(f'{path} is a folder; choose another --out')
        if path.exists() and not args.overwrite:
            raise UserError(f'{path} exists; pass --overwrite to replace it, or choose another --out')
    return out


def _check_images(args: argparse.Namespace) -> None:
    """``--images`` is one folder (with ``--out``) or image files: a folder among files is refused, not skipped
    as an unreadable image."""
    images = args.images or []
    folders = [p for p in images if p.is_dir()]
    if folders and len(images) > 1:
        raise UserError(f'--images takes one folder or image files, not both: {folders[0]} is a folder among '
                        f'{len(images)} paths')
    if folders and args.out is None:
        raise UserError('--images names a folder: add --out codes.npy to write its codes')


def _check_request(args: argparse.Namespace) -> None:
    """Everything that can be refused without the model, refused before loading it and encoding (minutes)."""
    _check_images(args)
    if args.out is not None:
        args.out = _check_out(args)
    if args.json_out is not None:
        args.json_out = _file_target(args.json_out, '--json-out', 'codes.json')


def _load_images(args: argparse.Namespace) -> tuple:
    if args.images:
        pil, names = [], []
        for path in args.images:
            pil.append(open_rgb(path))  # ImageRejected: one line naming the file
            names.append(str(path))  # as given: two a.png in different folders stay apart
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


def _weights(args: argparse.Namespace) -> str:
    """Where the weights came from: codes of random weights must not pass for a trained model's."""
    if args.checkpoint:
        return f'weights of {args.checkpoint}'
    return 'published weights' if args.pretrained else f'random (seed {args.seed}) weights'


def _shown(name: str) -> str:
    """``name`` as one printable line, characters that are not printable escaped: a line break split a table
    row, and a name that is not UTF-8 failed to print with a UnicodeEncodeError naming no file."""
    return ''.join(c if c.isprintable() else c.encode('unicode_escape').decode('ascii') for c in name)


def _drop_multiline_names(found: 'EncodedImages') -> None:
    """Skip (rows and ids together) the images whose name holds a line break: the ids file has one line a row,
    and such a name would add lines, shifting every later id off its row."""
    keep = [len(name.splitlines()) == 1 for name in found.ids]
    if all(keep):
        return
    found.skipped += [(name, 'its name holds a line break, which the ids file (one line a row) cannot hold')
                      for name, kept in zip(found.ids, keep, strict=True) if not kept]
    found.codes = found.codes[np.asarray(keep)]
    found.ids = [name for name, kept in zip(found.ids, keep, strict=True) if kept]
    if not found.ids:
        name, why = found.skipped[-1]
        raise UserError(f'none of the images could be written (the last, {_shown(name)}: {why})')


def _make_parents(folder: Path) -> List[Path]:
    """Create ``folder`` and its missing parents; the ones created, deepest first, to remove after a failure."""
    missing = [p for p in (folder, *folder.parents) if not p.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    return missing


def _write_together(files: Sequence[Tuple[Path, bytes]]) -> None:
    """Write every file to a hidden temporary beside it, then rename them all, back to back, in order: a failure
    before the renames (a full disk) leaves what was there untouched and removes the temporaries and any
    folders made for them; the error names the user's path, not a temporary's."""
    created: List[Path] = []
    temps: List[Path] = []
    current = files[0][0]
    try:
        for path, data in files:
            current = path
            created += _make_parents(path.parent)
            temps.append(write_temporary(path, data))
        for tmp, (path, _) in zip(temps, files, strict=True):
            current = path
            os.replace(tmp, path)
    except BaseException as e:
        for tmp in temps:
            tmp.unlink(missing_ok=True)
        for folder in created:
            try:
                folder.rmdir()
            except OSError:
                pass
        if isinstance(e, OSError) and e.errno is not None:
            raise OSError(e.errno, e.strerror, str(current)) from e
        raise


def _write_codes(args: argparse.Namespace, model: torch.nn.Module) -> int:
    """``--out``: stream the images (a folder or files) through the model, write codes.npy + codes.ids.txt."""
    from deephash_zoo.retrieval.folder import encode_images

    source = args.images[0] if len(args.images) == 1 and args.images[0].is_dir() else args.images
    t0 = time.perf_counter()
    found = encode_images(model, source, bits=args.bits, batch_size=args.batch_size, progress=True,
                          device=_device(args.device), img_size=args.img_size, precision=args.precision)
    seconds = time.perf_counter() - t0
    _drop_multiline_names(found)
    out, ids = args.out, _ids_path(args.out)
    buffer = io.BytesIO()
    np.save(buffer, found.codes, allow_pickle=False)
    lines = ''.join(f'{name}\n' for name in found.ids).encode('utf-8', 'surrogateescape')  # bytes as on disk
    _write_together([(out, buffer.getvalue()), (ids, lines)])
    print_skipped(found.skipped, _shown)
    print(f'{len(found.ids):,} images ({len(found.skipped)} skipped), {found.bits}-bit codes of {args.model} '
          f'at {found.manifest["img_size"]}x{found.manifest["img_size"]} in {found.precision}: '
          f'{1000 * seconds / len(found.ids):.2f} '
          f'ms/image with reading -> {out} ({found.codes.shape[0]} x {found.codes.shape[1]} bytes) and {ids}')
    return 0


def _transform(model: torch.nn.Module, img_size: Optional[int]) -> Tuple[Callable[..., torch.Tensor], tuple]:
    """The transform ``--out`` encodes with (so a size the model cannot take is refused alike), and its input
    size."""
    transform = model_transform(model, img_size)
    input_size = tuple(resolve_data_config(model=model)['input_size'])
    if img_size is not None:
        input_size = (input_size[0], img_size, img_size)
    return transform, input_size


def _print_codes(args: argparse.Namespace, model: torch.nn.Module, build_s: float) -> int:
    """Encode a few images (files, or Fashion-MNIST test images), time it, print the codes (table or JSON)."""
    model_bits = tuple(getattr(model, 'bits', ()) or ())
    if not model_bits:
        raise UserError(f'{args.model} has no hash layer (it is not a hashing model, or num_classes=0)')
    if args.bits is not None and args.bits not in model_bits:
        raise UserError(f'{args.model} has code lengths {model_bits}; got --bits {args.bits}')
    bits = max(model_bits) if args.bits is None else args.bits  # as --out: all lengths joined fit no index
    transform, input_size = _transform(model, args.img_size)
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
            codes = at(chosen).encode(batch, bits=bits)
            times.append(time.perf_counter() - t0)
    ms_per_image = 1000 * statistics.median(times) / len(batch)

    rows = [dict(item=name, bits=''.join('1' if b > 0 else '0' for b in code),
                 hex=np.packbits(code > 0).tobytes().hex())
            for name, code in zip(names, codes.cpu().numpy(), strict=True)]
    record = dict(model=args.model, input_size=input_size, bits=bits, codes=rows, ms_per_image=ms_per_image,
                  precision=chosen, build_seconds=build_s, version=deephash_zoo.__version__)
    if args.json_out:
        _write_together([(args.json_out, json.dumps(record, indent=2).encode())])
    if args.json:
        print(json.dumps(record, indent=2))
        return 0
    print(f'{args.model}: {sum(p.numel() for p in model.parameters()):,} parameters, {_weights(args)}, '
          f'input {input_size[1]}x{input_size[2]}, {bits}-bit codes, {chosen}')
    shown = [_shown(name) for name in names]
    width = max(len(n) for n in shown)
    for name, row in zip(shown, rows, strict=True):
        print(f"  {name:<{width}}  {row['bits']}  0x{row['hex']}")
    print(f'model built in {build_s:.2f} s; encoding {len(batch)} images: {ms_per_image:.2f} ms/image '
          f'(median of {len(times)}, torch {torch.__version__}, {torch.get_num_threads()} threads)')
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    _check_request(args)
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    model = _load_model(args).eval()
    build_s = time.perf_counter() - start
    if args.out is not None:
        return _write_codes(args, model)
    return _print_codes(args, model, build_s)


def cli() -> None:
    sys.exit(run_main(main))


if __name__ == '__main__':
    cli()
