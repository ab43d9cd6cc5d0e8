"""The GPU efficiency table: ms per image of the headline models per PyTorch runtime, in one call.

``python -m deephash_zoo.export.gpu_bench`` (what ``.ci/gpu_bench.sh`` runs on a lent GPU machine, from source
and without network) times, for each model at batch 1 and batch 64:

* PyTorch eager fp32, and eager under fp16 autocast (the attention energies stay fp32, see
  :mod:`deephash_zoo.models.attention`);
* ``torch.compile`` (inductor, default mode) fp32;
* a CUDA graph of the eager fp32 forward (captured once per batch size, replayed: no launch overhead).

Weights are random (seed 0): time does not depend on them. Each row also reports the share of code signs
that agree with eager fp32 on the same inputs. A row that cannot run (no CUDA, a capture that fails, the
time budget spent) says why. Writes ``efficiency-gpu.json`` and ``efficiency-gpu.md`` into ``--out``.
``--device cpu`` runs the same code on the CPU (CUDA-graph rows then say why not): the tests use it.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import timm
import torch

import deephash_zoo
from deephash_zoo.utils import cpu_model, write_atomic

__all__ = ['run', 'render_markdown', 'main']

MODELS = ('dath_alexnet_32', 'admth_cnnf_multi')
BATCHES = (1, 64)
Runner = Callable[[torch.Tensor], torch.Tensor]


def _sync(device: str) -> None:
    if device == 'cuda':
        torch.cuda.synchronize()


def _time(run: Runner, x: torch.Tensor, device: str, warmup: int, repeats: int) -> tuple[List[float], torch.Tensor]:
    for _ in range(warmup):
        out = run(x)
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = run(x)
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times, out.float()


def _eager(model: torch.nn.Module, device: str, fp16: bool) -> Runner:
    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), torch.autocast(device, dtype=torch.float16, enabled=fp16):
            return model(x)
    return run


def _compiled(model: torch.nn.Module) -> Runner:
    compiled = torch.compile(model, dynamic=False)

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return compiled(x)
    return run


def _cuda_graph(model: torch.nn.Module, example: torch.Tensor) -> Runner:
    """Capture the eager fp32 forward for ``example``'s shape; replays copy the input into the static buffer."""
    static_in = example.clone()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream), torch.inference_mode():
        for _ in range(3):  # warm-up on a side stream, as CUDA graph capture requires
            model(static_in)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), torch.inference_mode():
        static_out = model(static_in)

    def run(x: torch.Tensor) -> torch.Tensor:
        static_in.copy_(x)
        graph.replay()
        return static_out
    return run


def _row(runtime: str, precision: str) -> Dict[str, Any]:
    return {'runtime': runtime, 'precision': precision, 'status': 'ok', 'reason': '', 'batches': {}}


def bench_model(name: str, device: str, img_size: int, warmup: int, repeats: int, deadline: float,
                say: Callable[[str], None] = print, compile: bool = True) -> Dict[str, Any]:
    """Every runtime's row for ``name``; rows past ``deadline`` (time.monotonic) are 'not run'."""
    torch.manual_seed(0)
    model = timm.create_model(name).eval().to(device)
    specs = [('PyTorch eager', 'fp32'), ('PyTorch eager, fp16 autocast', 'fp16'),
             ('torch.compile (inductor)', 'fp32'), ('CUDA graph (eager fp32)', 'fp32')]
    rows = [_row(*spec) for spec in specs]
    if not compile:
        rows[2].update(status='not run', reason='skipped (--no-compile)')
    generator = torch.Generator().manual_seed(0)
    for batch in BATCHES:
        x = torch.randn(batch, 3, img_size, img_size, generator=generator).to(device)
        reference: Optional[torch.Tensor] = None
        for row in rows:
            if row['status'] != 'ok':
                continue
            if time.monotonic() > deadline:
                row.update(status='not run', reason='time budget spent')
                continue
            try:
                if row['runtime'] == 'PyTorch eager':
                    runner = _eager(model, device, fp16=False)
                elif row['precision'] == 'fp16':
                    if device != 'cuda':
                        row.update(status='not run', reason='fp16 autocast is a CUDA row')
                        continue
                    runner = _eager(model, device, fp16=True)
                elif row['runtime'].startswith('torch.compile'):
                    runner = _compiled(model)
                else:
                    if device != 'cuda':
                        row.update(status='not run', reason='CUDA graphs need a CUDA device')
                        continue
                    runner = _cuda_graph(model, x)
                say(f'{name}: {row["runtime"]} ({row["precision"]}), batch {batch}')
                times, out = _time(runner, x, device, warmup, repeats)
            except Exception as e:  # a runtime that fails is a row that says why, not a lost table
                row.update(status='failed', reason=f'{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""}')
                continue
            if reference is None:
                reference = out
            median = statistics.median(times)
            row['batches'][str(batch)] = {
                'ms_per_image': 1000 * median / batch, 'ms_per_call': 1000 * median,
                'min_ms_per_call': 1000 * min(times), 'max_ms_per_call': 1000 * max(times), 'repeats': repeats,
                'sign_agreement_vs_eager_fp32': float(((out >= 0) == (reference >= 0)).float().mean()),
            }
    if device == 'cuda':
        torch.cuda.empty_cache()
    return {'model': name, 'rows': rows}


def machine(device: str) -> Dict[str, Any]:
    gpu = torch.cuda.get_device_name(0) if device == 'cuda' else 'none (run on the CPU)'
    return {'gpu': gpu, 'cpu': cpu_model(), 'torch': torch.__version__, 'timm': timm.__version__,
            'cuda': torch.version.cuda, 'deephash_zoo': deephash_zoo.__version__}


def render_markdown(data: Dict[str, Any]) -> str:
    m = data['machine']
    lines = [f"### GPU efficiency ({m['gpu']}; torch {m['torch']}, CUDA {m['cuda']})", '',
             f"`{data['command']}`: {data['img_size']}x{data['img_size']}, random weights, median of "
             f"{data['repeats']} timed calls after {data['warmup']} warm-up; ms per image = one call / batch size; "
             'signs compared with eager fp32 on the same inputs.', '',
             '| model | runtime | precision | batch 1 ms/img | batch 64 ms/img | sign agreement (b64) | note |',
             '| --- | --- | --- | ---: | ---: | ---: | --- |']
    for model in data['models']:
        for row in model['rows']:
            cells = [f"{row['batches'][b]['ms_per_image']:.3f}" if b in row['batches'] else '-' for b in ('1', '64')]
            agree = row['batches'].get('64', {}).get('sign_agreement_vs_eager_fp32')
            lines.append(f"| `{model['model']}` | {row['runtime']} | {row['precision']} | {cells[0]} | {cells[1]} | "
                         f"{'-' if agree is None else f'{agree:.4f}'} | {row['reason'] or row['status']} |")
    return '\n'.join(lines) + '\n'


def run(models: Sequence[str], device: str, img_size: int, warmup: int, repeats: int, budget_s: float,
        out: Path, say: Callable[[str], None] = print, compile: bool = True) -> Dict[str, Any]:
    deadline = time.monotonic() + budget_s
    data = {'command': f'python -m deephash_zoo.export.gpu_bench --models {",".join(models)} --img-size {img_size}',
            'img_size': img_size, 'warmup': warmup, 'repeats': repeats, 'machine': machine(device),
            'models': [bench_model(name, device, img_size, warmup, repeats, deadline, say, compile)
                       for name in models]}
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / 'efficiency-gpu.json', (json.dumps(data, indent=2) + '\n').encode())
    write_atomic(out / 'efficiency-gpu.md', render_markdown(data).encode())
    return data


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog='python -m deephash_zoo.export.gpu_bench', description=__doc__.split('\n')[0])
    p.add_argument('--models', default=','.join(MODELS))
    p.add_argument('--device', choices=('cuda', 'cpu'), default='cuda')
    p.add_argument('--img-size', type=int, default=224)
    p.add_argument('--warmup', type=int, default=5)
    p.add_argument('--repeats', type=int, default=30)
    p.add_argument('--budget', type=float, default=420, help='seconds after which the remaining rows are skipped')
    p.add_argument('--out', type=Path, default=Path('export'))
    p.add_argument('--no-compile', action='store_true', help='skip the torch.compile rows')
    args = p.parse_args(argv)
    if args.device == 'cuda' and not torch.cuda.is_available():
        raise SystemExit('error: no CUDA device here (pass --device cpu to run the same code on the CPU)')
    data = run([m for m in args.models.split(',') if m], args.device, args.img_size, args.warmup, args.repeats,
               args.budget, args.out, compile=not args.no_compile)
    print(render_markdown(data))
    print(f'wrote {args.out / "efficiency-gpu.json"} and {args.out / "efficiency-gpu.md"}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
