"""``deephash-convert``: ImageNet weights (torchvision AlexNet, MatConvNet CNN-F) -> a safetensors file that
``deephash-train --init FILE`` reads."""
import argparse
import sys
from pathlib import Path
from typing import List, Optional

from ._common import run_main


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog='deephash-convert', description=__doc__)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument('--torchvision-alexnet', type=Path, metavar='PATH',
                     help="torchvision's AlexNet state dict (alexnet-owt-7be5be79.pth), for dath_* models")
    src.add_argument('--matconvnet-vggf', type=Path, metavar='PATH',
                     help="MatConvNet's imagenet-vgg-f.mat (CNN-F), for admth_* / dmlh_* models")
    p.add_argument('--model', required=True, help='registered model name the file is for, e.g. dath_alexnet_32')
    p.add_argument('--out', required=True, type=Path, help='output .safetensors file')
    p.add_argument('--download', action='store_true', help='download the source file to PATH first if it is missing')
    return p


def main(argv: Optional[List[str]] = None) -> int:
    from deephash_zoo.hub.checkpoint import weights_sha256
    from deephash_zoo.hub.convert import convert_file

    args = _parser().parse_args(argv)
    kind, path = (('torchvision-alexnet', args.torchvision_alexnet) if args.torchvision_alexnet is not None
                  else ('matconvnet-vggf', args.matconvnet_vggf))
    report = convert_file(kind, path, args.model, args.out, download=args.download)
    size = args.out.stat().st_size
    print(f'{kind} {path} -> {args.model}: {len(report.tensors)} tensors, {size / 1e6:.1f} MB')
    for note in report.notes:
        print(f'  {note}')
    print(f'wrote {args.out} (sha256 {weights_sha256(args.out)}); use it with deephash-train --model {args.model} '
          f'--init {args.out}')
    return 0


def cli() -> None:
    sys.exit(run_main(main))


if __name__ == '__main__':
    cli()
