"""``deephash-export``: verified ONNX / int8 / TensorRT exports of a hash model, or the efficiency table.

  deephash-export --onnx --model dath_alexnet_32 --out export/            # random weights (seeded)
  deephash-export --onnx --int8 --checkpoint runs/x --out export/         # a trained checkpoint
  deephash-export --bench --models dath_alexnet_32,admth_cnnf_multi --out export/

Every graph is compared with PyTorch (max abs difference, share of agreeing sign bits) and refused
below the thresholds of deephash_zoo.export.verify; a refused export writes nothing and exits with status 1.
A folder holds the graphs of one set of weights: an export into one holding others is refused (status 2)
unless --overwrite.
"""
import argparse
import logging
import sys
from pathlib import Path
from typing import List, Optional

from ._common import UserError, run_main


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog='deephash-export', description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    what = p.add_argument_group('what to do (at least one)')
    what.add_argument('--onnx', action='store_true', help='export the fp32 ONNX graph (implied by --int8/--tensorrt)')
    what.add_argument('--int8', action='store_true', help='also write an int8 graph (onnxruntime quantisation)')
    what.add_argument('--tensorrt', action='store_true', help='also build a TensorRT engine (onnxruntime-gpu)')
    what.add_argument('--bench', action='store_true', help='measure runtimes, write efficiency.{md,json,png}')
    p.add_argument('--model', default=None, help='registered model name (random weights unless --checkpoint)')
    p.add_argument('--checkpoint', type=Path, default=None, help='checkpoint folder or training run folder')
    p.add_argument('--pretrained', action='store_true', help="the model's published weights (Hub or cache)")
    p.add_argument('--seed', type=int, default=0, help='seed of random weights (default: %(default)s)')
    p.add_argument('--out', type=Path, default=Path('export'), help='output folder (default: %(default)s)')
    p.add_argument('--img-size', type=int, default=None,
                   help="input size (default: the checkpoint's training size, else the model's 224)")
    p.add_argument('--sign-output', action='store_true', help='add int8 {-1,+1} sign outputs (signs / signs_<bits>)')
    p.add_argument('--int8-mode', choices=('static', 'dynamic'), default=None,
                   help='with --int8; static: calibrated on training images of --calib-data (default); '
                        'dynamic: weights only')
    p.add_argument('--fp16', action='store_true', help='with --tensorrt: the TensorRT engine in fp16')
    p.add_argument('--overwrite', action='store_true',
                   help='replace the graphs --out holds of other weights, model or input size (else refused)')
    p.add_argument('--verify-images', type=int, default=None,
                   help='test images of --calib-data in the verification (default: 32, or all the queries of a '
                        'smaller split)')
    p.add_argument('--calib-data', default=None, metavar='DATA',
                   help="data set whose test images verify the graphs and whose training images calibrate static "
                        "int8: fashion-mnist | mosaic[-pair|-quadrant|-single] | cifar10[-1|-2]:DIR | list:PATH | "
                        "coco:PATH | folder:DIR (default: the checkpoint's own, else fashion-mnist)")
    p.add_argument('--data-root', '--fmnist-dir', dest='data_root', type=Path, default=None,
                   help='folder of --calib-data (default: the Debian package\'s for Fashion-MNIST)')
    bench = p.add_argument_group('--bench')
    bench.add_argument('--models', default='dath_alexnet_32,admth_cnnf_multi', help='comma-separated model names')
    bench.add_argument('--repeats', type=int, default=10, help='timed runs at batch 1 (default: %(default)s)')
    bench.add_argument('--repeats-large', type=int, default=3, help='timed runs at the large batch (default: 3)')
    bench.add_argument('--large-batch', type=int, default=64, help='the large batch size (default: %(default)s)')
    bench.add_argument('--threads', type=int, default=None, help='fix the intra-op thread count (default: tuned)')
    bench.add_argument('--no-compile', action='store_true', help='skip the torch.compile rows')
    return p


def _export(args: argparse.Namespace) -> int:
    from deephash_zoo.export import check_requirements, export_verified, load_model_source, prepare_out_dir

    int8 = (args.int8_mode or 'static') if args.int8 else None
    check_requirements(int8, args.tensorrt)  # before building a model: missing packages fail in a second
    out, created = Path(args.out), not Path(args.out).exists()
    prepare_out_dir(out)
    try:
        source = load_model_source(args.model, args.checkpoint, args.img_size, args.pretrained, args.seed)
        print(f'{source.name}: codes {list(source.bits)}, input {source.img_size}x{source.img_size}, '
              f'weights sha256 {source.weights_sha256[:16]}... ({source.weights_of})', flush=True)
        result = export_verified(source, out, sign_output=args.sign_output, int8=int8, tensorrt=args.tensorrt,
                                 fp16=args.fp16, num_real=args.verify_images, fmnist_root=args.data_root,
                                 calib_data=args.calib_data, overwrite=args.overwrite,
                                 progress=lambda msg: print(f'  {msg}', flush=True))
    except BaseException:
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # a failed export leaves no empty folder behind
        raise
    for name, report in result.reports.items():
        inputs = ', '.join(f'{k} {v["sign_agreement"]:.4f}' for k, v in report['inputs'].items())
        print(f'{name}: max abs diff {report["max_abs_diff"]:.2e}, sign agreement {report["sign_agreement"]:.4f} '
              f'({report["bits_compared"]} bits; {inputs}); threshold >= {report["thresholds"]["min_sign_agreement"]}'
              + (f' on {", ".join(report["held_on"])} ({report["held_sign_agreement"]:.4f})'
                 if report['thresholds'].get('real_data_only') else '') + ' -> verified')
    print('wrote ' + ', '.join(str(f) for f in result.files))
    return 0


def _bench(args: argparse.Namespace) -> int:
    from deephash_zoo.export.bench import BenchSettings, check_models, run_bench

    logging.getLogger('torch.utils.cpp_extension').setLevel(logging.ERROR)  # "no CUDA runtime" on CPU hosts
    models = [m.strip() for m in args.models.split(',') if m.strip()]
    if not models:
        raise UserError('--models is empty')
    size = 224 if args.img_size is None else args.img_size  # 0 is refused, not taken for the default
    check_models(models, size)
    settings = BenchSettings(img_size=size, repeats=args.repeats, repeats_large=args.repeats_large,
                             large_batch=args.large_batch, threads=args.threads, compile=not args.no_compile,
                             fmnist_root=args.data_root)
    result = run_bench(models, settings, args.out, progress=lambda msg: print(f'  {msg}', flush=True))
    print(result['markdown'])
    print('wrote ' + ', '.join(result['files']))
    return 0


def _check_flags(args: argparse.Namespace) -> None:
    """Refuse flags that would be silently ignored, before any work."""
    if not (args.onnx or args.int8 or args.tensorrt or args.bench):
        raise UserError('nothing to do: pass --onnx (and --int8 / --tensorrt) or --bench')
    if args.verify_images is not None and args.verify_images < 1:
        raise UserError(f'--verify-images must be positive, got {args.verify_images}')
    if args.bench and (args.onnx or args.int8 or args.tensorrt):
        raise UserError('--bench measures models by name; run the export (--onnx ...) as a separate command')
    if args.fp16 and not args.tensorrt:
        raise UserError('--fp16 is the precision of the TensorRT engine: add --tensorrt, or drop --fp16')
    if args.int8_mode is not None and not args.int8:
        raise UserError(f'--int8-mode {args.int8_mode} needs --int8: add it, or drop --int8-mode')
    if args.overwrite and args.bench:
        raise UserError('--overwrite replaces exported graphs; --bench rewrites its efficiency.* files anyway')


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    _check_flags(args)
    if args.bench:
        return _bench(args)
    from deephash_zoo.export import VerificationError

    try:
        return _export(args)
    except VerificationError as e:  # the command ran and its check failed: status 1 (cli/_common.py), one line
        print(f'error: {e}', file=sys.stderr)
        return 1


def cli() -> None:
    sys.exit(run_main(main))


if __name__ == '__main__':
    cli()
