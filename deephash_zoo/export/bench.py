"""The efficiency table: ms per image at batch 1 and a large batch, per runtime, all in one process.

Runtimes (a row each; one that cannot run says why instead of vanishing): PyTorch eager, as shipped
and with oneDNN off (see below); torch.compile (inductor with ``freezing``, which pre-packs weights as
ORT does; plain inductor measured 383 ms against eager's 420 ms on dath_alexnet_32, as it keeps the
per-call weight re-layout); ONNX Runtime fp32, int8 dynamic and int8 static (see :mod:`.quantize`); and
with a CUDA device PyTorch fp32 and fp16 autocast, ORT CUDA and ORT TensorRT fp32/fp16.

How it measures, and why:
* Inputs are Fashion-MNIST test images through the model's transform (random normalised images when
  the files are absent): batch 1 is the first image, the large batch the first N. Weights are random
  (seed 0): time does not depend on them. ms/image = wall time of one call / batch size, preprocessing
  excluded (the DATH paper's Table 5 measure).
* Each runtime gets warm-up calls, then timed calls; the table shows the median and the min-max range
  (the JSON also has the quartiles). Defaults: batch 1: 2 warm-up + 10 timed; batch 64: 1 + 3, so the two
  models of ``export/efficiency.md`` at 224x224 take about 5 minutes on 2 cores (compiles included).
* Tuning: unless ``threads`` is fixed, each CPU runtime is probed at batch 1 with 1 thread and with all
  usable cores and runs with the faster (on a shared 2-core machine one thread often wins: OpenMP and
  ORT's spinning threads wait on a core another process holds). ORT fp32 also probes graph optimisation
  level (basic / extended / all) and IO binding; int8 graphs run at level all (QDQ fusion needs it).
  Every configuration is probed again at the large batch: one thread can win at batch 1 and lose 2x at
  64, and ORT's optimisation levels trade places. A probe is 2 warm-up calls and the quickest of its timed
  calls (see :data:`PROBE_WARMUP`). Every probe is recorded in the JSON.
* Each model is measured in a fresh process (:func:`bench_model_isolated`).
* Sign agreement and max abs difference of each row's batch outputs against eager's are reported: a
  fast row that changes the codes is not a speed-up.

Why eager is slow on CPU at batch 1, measured (dath_n_16, 224x224, 1 thread): 138 ms a call, of which
127 ms is fc6, the 6x6 convolution over the 6x6 conv5 map, because oneDNN converts its 151 MB weight to
its blocked layout on every call; with ``torch.backends.mkldnn`` off the same model takes 33 ms. ORT,
``torch.compile`` with freezing and TensorRT convert weights once. At batch 1 the "oneDNN off" row is
the fair eager baseline (at batch 64 oneDNN wins: the re-layout is paid once per batch); the ratios
against both are in the table.
"""
from __future__ import annotations

import contextlib
import datetime
import gc
import json
import os
import platform
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple, Union

import numpy as np
import timm
import torch

import deephash_zoo
from deephash_zoo.extras import check_installed
from deephash_zoo.precision import at_precision, bf16_support
from deephash_zoo.utils import cpu_model, load_average, usable_cores

from .onnx_export import INPUT_NAME, ModelSource, check_img_size, export_onnx, min_input_size, require, state_sha256
from .quantize import quantize_int8
from .tensorrt import GPU_INSTALL, TRT_PROVIDER, tensorrt_session
from .verify import create_session, fashion_mnist_batch

__all__ = ['BenchSettings', 'machine_info', 'bench_model', 'run_bench', 'render_markdown', 'plot_png',
           'eager_encoding_time']

SCHEMA_VERSION = 1
EAGER_NO_MKLDNN = 'PyTorch eager, oneDNN off'
EAGER_BF16 = 'PyTorch eager, bf16 autocast'
EAGER_BF16_WEIGHTS = 'PyTorch eager, bf16 weights'  # what deephash-encode --precision bf16 runs on a CPU
Progress = Optional[Callable[[str], None]]
# Probes are short, and one slow call decided them: with one warm-up and one timed call at batch 64, ORT fp32's
# probes without IO binding (each on a fresh session) read 1.3-1.5x those with it (the same session, warm), and
# int8 static's 2-thread probe read 11.0 ms an image against 3.9 when timed: the table ran it on 1 thread (6.0).
# Two warm-up calls, and the quickest of the timed ones (two at the large batch), decide now.
PROBE_WARMUP = 2
LARGE_BATCH_PROBE_REPEATS = 2
Runner = Callable[[np.ndarray], np.ndarray]


@dataclass
class BenchSettings:
    """What to measure and how often (the committed ``export/efficiency.*`` tables ran these defaults with
    ``repeats_large=5``; their headers give the exact command)."""

    img_size: int = 224
    repeats: int = 10
    repeats_large: int = 3
    warmup: int = 2
    warmup_large: int = 1
    large_batch: int = 64
    threads: Optional[int] = None  # None: probe 1 and all usable cores per runtime
    compile: bool = True
    probe_repeats: int = 3
    calibration_images: int = 64
    fmnist_root: Optional[Union[str, Path]] = None
    isolate: bool = True  # each model in a fresh process (see bench_model_isolated)

    def __post_init__(self) -> None:
        for name in ('img_size', 'repeats', 'repeats_large', 'large_batch', 'probe_repeats', 'calibration_images'):
            if getattr(self, name) < 1:  # a batch of 0 ended the process with SIGFPE, not an error
                raise ValueError(f'{name} (--{name.replace("_", "-")}) must be at least 1, got {getattr(self, name)}')
        for name in ('warmup', 'warmup_large'):
            if getattr(self, name) < 0:
                raise ValueError(f'{name} must be 0 or more, got {getattr(self, name)}')
        if self.threads is not None and self.threads < 1:
            raise ValueError(f'threads (--threads) must be at least 1, got {self.threads}')

    def command(self, models: List[str], out: Union[str, Path]) -> str:
        """The command line that regenerates the table with these settings."""
        cmd = (f'deephash-export --bench --models {",".join(models)} --img-size {self.img_size} '
               f'--repeats {self.repeats} --repeats-large {self.repeats_large} --large-batch {self.large_batch}')
        cmd += f' --threads {self.threads}' if self.threads else ''
        cmd += '' if self.compile else ' --no-compile'
        return cmd + f' --out {out}'


def machine_info() -> Dict[str, Any]:
    """CPU, cores, GPU, library versions and load: the header of the table."""
    ort = require('onnxruntime')
    onnx = require('onnx')
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none (no CUDA device)'
    return dict(cpu=cpu_model(), cores=os.cpu_count(), usable_cores=usable_cores(), gpu=gpu,
                python=platform.python_version(), torch=torch.__version__, onnxruntime=ort.__version__,
                onnx=onnx.__version__, timm=timm.__version__, numpy=np.__version__,
                deephash_zoo=deephash_zoo.__version__, ort_providers=ort.get_available_providers(),
                bf16=bf16_support(), load_average_start=load_average())


def _stats(seconds: List[float], batch: int) -> Dict[str, Any]:
    ms = np.array(seconds) * 1000.0 / batch
    median = float(np.median(ms))
    return dict(ms_per_image=median, min=float(ms.min()), max=float(ms.max()), q25=float(np.percentile(ms, 25)),
                q75=float(np.percentile(ms, 75)), images_per_s=1000.0 / median, repeats=len(ms), batch=batch)


def _time(run: Runner, x: np.ndarray, warmup: int, repeats: int) -> Tuple[Dict[str, Any], np.ndarray]:
    out = None
    for _ in range(warmup):
        out = run(x)
    seconds = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = run(x)
        seconds.append(time.perf_counter() - t0)
    return _stats(seconds, len(x)), np.asarray(out)


def eager_encoding_time(name: str, img_size: int = 224, warmup: int = 2, repeats: int = 10, batch: int = 1,
                        **model_kwargs: Any) -> Dict[str, Any]:
    """ms/image of PyTorch eager at ``batch``, measured as the table's eager row (random weights, seed 0,
    preprocessing excluded): the DATH paper's Table 5 figure for one model, without exporting anything."""
    torch.manual_seed(0)
    model = timm.create_model(name, **model_kwargs).eval()
    chans = int(getattr(model, 'in_chans', 3))
    x = np.random.default_rng(0).standard_normal((batch, chans, img_size, img_size), dtype=np.float32)
    stats, _ = _time(_torch_runner(model), x, warmup, repeats)
    return dict(stats, img_size=img_size, threads=torch.get_num_threads())


def _reason(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else ''
    return f'{type(e).__name__}: {text}'[:200]


# ------------------------------------------------------------------------------------------------ runners
@contextlib.contextmanager
def _onednn(enabled: bool) -> Iterator[None]:
    """Switch oneDNN convolutions for the duration (``mkldnn.flags`` would also touch TF32 and warn)."""
    before = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = enabled
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = before


def _torch_runner(model: torch.nn.Module, device: str = 'cpu', fp16: bool = False, mkldnn: bool = True,
                  bf16: bool = False) -> Runner:
    def run(x: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(x).to(device)
        with (torch.inference_mode(), torch.autocast('cuda', dtype=torch.float16, enabled=fp16),
              torch.autocast('cpu', dtype=torch.bfloat16, enabled=bf16), _onednn(mkldnn)):
            y = model(t)
        if device != 'cpu':
            torch.cuda.synchronize()
        return y.float().cpu().numpy()
    return run


def _compiled_runner(model: torch.nn.Module) -> Runner:
    import torch._inductor.config as inductor_config

    compiled = torch.compile(model, dynamic=False)

    def run(x: np.ndarray) -> np.ndarray:
        with inductor_config.patch(freezing=True), torch.inference_mode():
            return compiled(torch.from_numpy(x)).numpy()
    return run


def _ort_runner(session, io_binding: bool = False) -> Runner:
    outputs = [o.name for o in session.get_outputs()]

    def run(x: np.ndarray) -> np.ndarray:
        if io_binding:
            binding = session.io_binding()
            binding.bind_cpu_input(INPUT_NAME, x)
            for name in outputs:
                binding.bind_output(name)
            session.run_with_iobinding(binding)
            res = binding.copy_outputs_to_cpu()
        else:
            res = session.run(None, {INPUT_NAME: x})
        return np.concatenate(res, axis=1)
    return run


@dataclass
class _Row:
    runtime: str
    device: str
    precision: str
    status: str = 'ok'  # ok | failed | not run
    reason: str = ''
    config: Dict[str, Any] = field(default_factory=dict)
    large_config: Dict[str, Any] = field(default_factory=dict)  # what the large batch ran with (probed on its own)
    probes: List[Dict[str, Any]] = field(default_factory=list)
    batches: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    sign_agreement: Optional[float] = None
    max_abs_diff: Optional[float] = None


class _ModelBench:
    """One model's rows: shared inputs, the eager reference, temporary graphs."""

    def __init__(self, name: str, settings: BenchSettings, workdir: Path, say: Callable[[str], None]) -> None:
        self.name, self.s, self.workdir, self.say = name, settings, workdir, say
        torch.manual_seed(0)
        self.model = timm.create_model(name).eval()
        size = settings.img_size
        try:
            self.inputs_from = f'Fashion-MNIST test images 0..{settings.large_batch - 1}'
            self.large = fashion_mnist_batch(self.model, size, 'test', 0, settings.large_batch, settings.fmnist_root)
        except FileNotFoundError:
            self.inputs_from = 'random normalised images (Fashion-MNIST not found)'
            chans = int(getattr(self.model, 'in_chans', 3))
            self.large = np.random.default_rng(0).standard_normal((settings.large_batch, chans, size, size),
                                                                  dtype=np.float32)
        self.one = np.ascontiguousarray(self.large[:1])
        self.reference: Optional[np.ndarray] = None
        self.graphs: Dict[str, Path] = {}
        self.thread_options = [settings.threads] if settings.threads else sorted({1, usable_cores()})

    # -- measurement of one runtime: probe configurations at batch 1, then time the best at both batches
    def measure(self, row: _Row, configs: List[Dict[str, Any]], make: Callable[[Dict[str, Any]], Runner]) -> _Row:
        self.say(f'{self.name}: {row.runtime}')
        try:
            best, run = self._fastest(row, configs, make, self.one, self.s.probe_repeats)
            row.config = dict(best)
            self._apply_threads(row.config)
            row.batches['1'], _ = _time(run, self.one, self.s.warmup, self.s.repeats)
            if len(configs) > 1:  # one thread can win at batch 1 and lose 2x at 64; ORT's levels trade places
                best, run = self._fastest(row, configs, make, self.large, LARGE_BATCH_PROBE_REPEATS,
                                          batch=self.s.large_batch)
                self._apply_threads(best)
            row.large_config = dict(best)
            row.batches[str(self.s.large_batch)], out = _time(run, self.large, self.s.warmup_large,
                                                              self.s.repeats_large)
            if self.reference is None:
                self.reference = out
            else:
                row.sign_agreement = float(((out >= 0) == (self.reference >= 0)).mean())
                row.max_abs_diff = float(np.abs(out - self.reference).max())
        except Exception as e:  # a runtime that breaks is a row that says why, not a crashed table
            row.status, row.reason = 'failed', _reason(e)
        finally:
            run = None
            gc.collect()
        return row

    def _fastest(self, row: _Row, configs: List[Dict[str, Any]], make: Callable[[Dict[str, Any]], Runner],
                 x: np.ndarray, repeats: int, batch: Optional[int] = None) -> Tuple[Dict[str, Any], Runner]:
        """The fastest of ``configs`` on ``x`` (:data:`PROBE_WARMUP` warm-up calls, then the quickest of ``repeats``)
        and its runner; every probe is recorded in the row (with ``batch`` when it is not batch 1)."""
        best: Dict[str, Any] = {}
        best_ms, run = float('inf'), None
        for config in configs:
            candidate = make(config)
            ms = _time(candidate, x, PROBE_WARMUP, repeats)[0]['min']
            row.probes.append(dict(config, ms_per_image=ms) if batch is None else
                              dict(config, batch=batch, ms_per_image=ms))
            if ms < best_ms:
                best, best_ms, run = config, ms, candidate
            del candidate
        return best, run

    @staticmethod
    def _apply_threads(config: Dict[str, Any]) -> None:
        if config.get('threads') and config.get('torch_threads', True):
            torch.set_num_threads(int(config['threads']))

    def _torch_make(self, build: Callable[[], Runner]) -> Callable[[Dict[str, Any]], Runner]:
        cache: Dict[str, Runner] = {}

        def make(config: Dict[str, Any]) -> Runner:
            torch.set_num_threads(int(config['threads']))
            if 'run' not in cache:
                cache['run'] = build()
            return cache['run']
        return make

    def _ort_make(self, graph: str) -> Callable[[Dict[str, Any]], Runner]:
        state: Dict[str, Any] = {}  # one session per (threads, level): IO binding variants share it

        def make(config: Dict[str, Any]) -> Runner:
            key = (config['threads'], config['opt_level'])
            if state.get('key') != key:
                state.clear()
                state.update(key=key, session=create_session(self.graphs[graph], threads=config['threads'],
                                                             opt_level=config['opt_level']))
            return _ort_runner(state['session'], config['io_binding'])
        return make

    # -- the rows
    def rows(self) -> List[_Row]:
        s, threads = self.s, self.thread_options
        rows = [self.measure(_Row('PyTorch eager', 'cpu', 'fp32'), [{'threads': t} for t in threads],
                             self._torch_make(lambda: _torch_runner(self.model))),
                self.measure(_Row(EAGER_NO_MKLDNN, 'cpu', 'fp32'), [{'threads': t} for t in threads],
                             self._torch_make(lambda: _torch_runner(self.model, mkldnn=False)))]
        support = bf16_support()
        if support == 'none':
            rows += [_Row(label, 'cpu', 'bf16', 'not run', 'no bf16 instructions on this CPU (AVX512-BF16, AMX)')
                     for label in (EAGER_BF16, EAGER_BF16_WEIGHTS)]
        else:
            rows.append(self.measure(_Row(EAGER_BF16, 'cpu', 'bf16'), [{'threads': t} for t in threads],
                                     self._torch_make(lambda: _torch_runner(self.model, bf16=True))))
            rows.append(self.measure(_Row(EAGER_BF16_WEIGHTS, 'cpu', 'bf16'), [{'threads': t} for t in threads],
                                     self._torch_make(lambda: _torch_runner(at_precision(self.model, 'bf16', 'cpu'),
                                                                            bf16=True))))
        if s.compile:
            rows.append(self.measure(_Row('torch.compile (inductor, freezing)', 'cpu', 'fp32'),
                                     [{'threads': t} for t in threads],
                                     self._torch_make(lambda: _compiled_runner(self.model))))
            torch._dynamo.reset()
        else:
            rows.append(_Row('torch.compile (inductor, freezing)', 'cpu', 'fp32', 'not run', 'skipped (--no-compile)'))
        rows += self._onnx_rows()
        rows.append(_Row('ONNX Runtime bf16', 'cpu', 'bf16', 'not run',
                         "ONNX Runtime's x86 CPU provider has no bf16 Conv / MatMul kernels (its bf16 fast math is "
                         'arm64 only)'))
        rows += self._gpu_rows()
        return rows

    def _export_graphs(self) -> None:
        source = ModelSource(self.model, self.name, self.s.img_size, state_sha256(self.model), 'random (seed 0)')
        self.say(f'{self.name}: exporting fp32, quantising int8 (dynamic, static)')
        self.graphs['fp32'] = export_onnx(source, self.workdir / f'{self.name}.onnx')
        self.graphs['int8-dynamic'] = quantize_int8(self.graphs['fp32'], self.workdir / f'{self.name}.int8d.onnx',
                                                    'dynamic')
        calibration = (fashion_mnist_batch(self.model, self.s.img_size, 'train', 0, self.s.calibration_images,
                                           self.s.fmnist_root) if self.inputs_from.startswith('Fashion') else
                       self.large[:self.s.calibration_images])
        self.graphs['int8-static'] = quantize_int8(self.graphs['fp32'], self.workdir / f'{self.name}.int8s.onnx',
                                                   'static', calibration)

    def _onnx_rows(self) -> List[_Row]:
        labels = [('ONNX Runtime fp32', 'fp32'), ('ONNX Runtime int8 dynamic', 'int8-dynamic'),
                  ('ONNX Runtime int8 static (QDQ)', 'int8-static')]
        try:
            self._export_graphs()
        except Exception as e:
            return [_Row(label, 'cpu', prec, 'failed', f'export: {_reason(e)}') for label, prec in labels]
        rows = []
        for label, prec in labels:
            levels = ('basic', 'extended', 'all') if prec == 'fp32' else ('all',)
            bindings = (False, True) if prec == 'fp32' else (False,)
            configs = [dict(threads=t, opt_level=lvl, io_binding=io, torch_threads=False)
                       for t in self.thread_options for lvl in levels for io in bindings]
            rows.append(self.measure(_Row(label, 'cpu', prec), configs, self._ort_make(prec)))
        return rows

    def _gpu_rows(self) -> List[_Row]:
        ort = require('onnxruntime')
        providers = ort.get_available_providers()
        specs = [('PyTorch CUDA', 'fp32'), ('PyTorch CUDA autocast', 'fp16'), ('ONNX Runtime CUDA', 'fp32'),
                 ('ONNX Runtime TensorRT', 'fp32'), ('ONNX Runtime TensorRT', 'fp16')]
        if not torch.cuda.is_available():
            return [_Row(r, 'cuda', p, 'not run', 'no CUDA device') for r, p in specs]
        shape = tuple(self.one.shape[1:])
        makers: List[Callable[[Dict[str, Any]], Runner]] = [
            lambda _c: _torch_runner(self.model, 'cuda'),
            lambda _c: _torch_runner(self.model, 'cuda', fp16=True),
            lambda _c: _ort_runner(create_session(self.graphs['fp32'],
                                                  providers=['CUDAExecutionProvider', 'CPUExecutionProvider'])),
            lambda _c: _ort_runner(tensorrt_session(self.graphs['fp32'], self.workdir / 'trt-fp32', False, shape,
                                                    self.s.large_batch)),
            lambda _c: _ort_runner(tensorrt_session(self.graphs['fp32'], self.workdir / 'trt-fp16', True, shape,
                                                    self.s.large_batch)),
        ]
        missing = {2: 'CUDAExecutionProvider', 3: TRT_PROVIDER, 4: TRT_PROVIDER}
        rows = []
        self.model.to('cuda')
        try:
            for i, ((runtime, prec), make) in enumerate(zip(specs, makers, strict=True)):
                if i in missing and 'fp32' not in self.graphs:
                    rows.append(_Row(runtime, 'cuda', prec, 'not run', 'no ONNX graph (export failed)'))
                elif i in missing and missing[i] not in providers:
                    rows.append(_Row(runtime, 'cuda', prec, 'not run',
                                     f'onnxruntime has no {missing[i]} ({GPU_INSTALL})'))
                else:
                    rows.append(self.measure(_Row(runtime, 'cuda', prec), [{}], make))
        finally:
            self.model.to('cpu')
            torch.cuda.empty_cache()
        return rows


def bench_model(name: str, settings: BenchSettings, progress: Progress = None) -> Dict[str, Any]:
    """Every runtime's row for one model (temporary graphs are deleted afterwards)."""
    say = progress or (lambda _m: None)
    threads_before = torch.get_num_threads()
    try:
        with tempfile.TemporaryDirectory(prefix='deephash-bench-') as tmp:
            bench = _ModelBench(name, settings, Path(tmp), say)
            rows = bench.rows()
            model = bench.model
            weight_bytes = int(sum(p.numel() * p.element_size() for p in model.parameters()))
            result = dict(model=name, bits=list(model.bits), params=int(sum(p.numel() for p in model.parameters())),
                          weight_bytes=weight_bytes, inputs=bench.inputs_from, rows=[asdict(r) for r in rows])
            del bench, model
            gc.collect()
    finally:
        torch.set_num_threads(threads_before)
    return result


def _bench_child(name: str, settings: BenchSettings, messages: Any) -> None:
    """A child process's work: one model's rows, its progress lines and its result sent back as messages."""
    try:
        messages.put(('done', bench_model(name, settings, lambda msg: messages.put(('say', msg)))))
    except BaseException as e:  # noqa: BLE001 - the parent reports it
        messages.put(('error', _reason(e)))


def bench_model_isolated(name: str, settings: BenchSettings, progress: Progress = None) -> Dict[str, Any]:
    """:func:`bench_model` in a fresh process. One model's runs leave the process in a state that slows the
    next model's ONNX Runtime rows: on an Intel Xeon, admth_cnnf_multi's int8 static graph took 16.6 ms an image
    at batch 1 when benched after dath_alexnet_32 in one process, 11.3 ms alone."""
    import multiprocessing
    import queue as queue_module

    say = progress or (lambda _m: None)
    ctx = multiprocessing.get_context('spawn')
    messages = ctx.Queue()
    child = ctx.Process(target=_bench_child, args=(name, settings, messages), daemon=True)
    child.start()
    try:
        while True:
            try:
                kind, payload = messages.get(timeout=5)
            except queue_module.Empty:
                if not child.is_alive():
                    raise RuntimeError(f'the bench process of {name} ended without a result '
                                       f'(exit code {child.exitcode})') from None
                continue
            if kind == 'say':
                say(payload)
            elif kind == 'done':
                return payload
            else:
                raise RuntimeError(f'benching {name} failed: {payload}')
    finally:
        child.join(timeout=30)
        if child.is_alive():
            child.kill()


def check_models(models: List[str], img_size: int) -> None:
    """Refuse unknown names and an input size some model cannot take before any timing (a child process would
    only fail minutes later, and its failure is not one line)."""
    unknown = [m for m in models if not timm.is_model(m)]
    if unknown:
        raise ValueError(f'Unknown model ({", ".join(unknown)}); list them with `python -c "import deephash_zoo; '
                         f'print(deephash_zoo.list_hash_models())"`')
    for name in models:
        check_img_size(name, img_size, min_input_size(name))


def run_bench(models: List[str], settings: BenchSettings, out_dir: Union[str, Path],
              progress: Progress = None) -> Dict[str, Any]:
    """Measure ``models`` and write ``efficiency.md``, ``efficiency.json`` and ``efficiency.png`` to ``out_dir``."""
    from .pipeline import prepare_out_dir

    check_models(models, settings.img_size)
    check_installed('matplotlib')  # efficiency.png: say so before the timing, not after it
    out = prepare_out_dir(out_dir)
    started = time.perf_counter()
    data: Dict[str, Any] = dict(schema_version=SCHEMA_VERSION, command=settings.command(models, out_dir),
                                generated=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
                                machine=machine_info(), settings={k: str(v) if isinstance(v, Path) else v
                                                                  for k, v in asdict(settings).items()},
                                models=[(bench_model_isolated if settings.isolate else bench_model)(
                                    m, settings, progress) for m in models])
    data['wall_seconds'] = round(time.perf_counter() - started, 1)
    data['machine']['load_average_end'] = load_average()
    markdown = render_markdown(data)
    files = []
    for name, write in (('efficiency.json', lambda p: p.write_text(json.dumps(data, indent=2) + '\n')),
                        ('efficiency.md', lambda p: p.write_text(markdown)),
                        ('efficiency.png', lambda p: plot_png(data, p))):
        final = out / name
        tmp = out / f'.{name}.tmp'
        try:
            write(tmp)
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
        files.append(str(final))
    return dict(data=data, markdown=markdown, files=files)


# ------------------------------------------------------------------------------------------------ output
def _cell(b: Optional[Dict[str, Any]]) -> str:
    if not b:
        return ''
    return f'{b["ms_per_image"]:.2f} [{b["min"]:.2f}-{b["max"]:.2f}]'


def _speedup(row: Dict[str, Any], eager: Optional[Dict[str, Any]], batch: str) -> str:
    if not eager or row['status'] != 'ok' or eager['status'] != 'ok' or batch not in row['batches']:
        return ''
    return f'{eager["batches"][batch]["ms_per_image"] / row["batches"][batch]["ms_per_image"]:.2f}x'


def _config(row: Dict[str, Any]) -> str:
    text = _config_text(row['config'])
    large = row.get('large_config')
    if large and large != row['config']:
        text += f'; large batch: {_config_text(large)}'
    return text


def _config_text(c: Dict[str, Any]) -> str:
    parts = [f'{c["threads"]} thr'] if c.get('threads') else []
    if 'opt_level' in c:
        parts.append(f'opt {c["opt_level"]}' + (', IO binding' if c.get('io_binding') else ''))
    return ', '.join(parts)


def _ratio(row: Dict[str, Any], base: Dict[str, Any], batch: str) -> float:
    return base['batches'][batch]['ms_per_image'] / row['batches'][batch]['ms_per_image']


def _bf16_goal(bf16: Dict[str, Any], eager: Dict[str, Any], large: str, support: str) -> str:
    """The bf16 goal (>= 1.7x fp32 eager at the large batch, >= 0.99 sign agreement) where the CPU has AMX, decided
    on the unrounded ratio; elsewhere the goal does not apply and the line says so."""
    if support != 'amx':
        return f'goal only where the CPU has AMX; this CPU: {support}'
    met = _ratio(bf16, eager, large) >= 1.7 and bf16['sign_agreement'] >= 0.99
    return (f'goal >= 1.7x at batch {large} and >= 0.99, where the CPU has AMX, as this one does: '
            f'{"met" if met else "not met"}')


def _goal_lines(model: Dict[str, Any], bf16_cpu: str) -> List[str]:
    rows = {r['runtime']: r for r in model['rows']}
    eager, plain = rows.get('PyTorch eager'), rows.get(EAGER_NO_MKLDNN)
    lines = []
    large = next((b for b in (eager or {}).get('batches', {}) if b != '1'), None)
    # the goals: no ONNX Runtime row slower than eager at any batch; static int8 >= 3x eager at batch 1
    for runtime, goal in (('ONNX Runtime fp32', 1.0), ('ONNX Runtime int8 dynamic', 1.0),
                          ('ONNX Runtime int8 static (QDQ)', 3.0)):
        row = rows.get(runtime)
        for batch in ('1', large) if large else ('1',):
            ratio = _speedup(row, eager, batch) if row else ''
            if not ratio:
                continue
            target = goal if batch == '1' else 1.0
            met = 'met' if _ratio(row, eager, batch) >= target else 'not met'  # unrounded: 0.996x is no 1.00x
            fair = _speedup(row, plain, batch) if plain else ''
            lines.append(f'{runtime} vs eager at batch {batch}: {ratio} (goal >= {target}x: {met})'
                         + (f'; vs eager with oneDNN off: {fair}' if fair else ''))
    for label in (EAGER_BF16, EAGER_BF16_WEIGHTS):
        bf16 = rows.get(label)
        if bf16 and bf16['status'] == 'ok' and large and eager and eager['status'] == 'ok':
            runs = ' (what `deephash-encode --precision bf16` runs)' if label == EAGER_BF16_WEIGHTS else ''
            lines.append(f'{label}{runs} vs fp32 eager at batch 1: {_speedup(bf16, eager, "1")}, at batch {large}: '
                         f'{_speedup(bf16, eager, large)}, sign agreement {bf16["sign_agreement"]:.4f} '
                         f'({_bf16_goal(bf16, eager, large, bf16_cpu)})')
    fp32 = rows.get('ONNX Runtime fp32')
    if fp32 and fp32['status'] == 'ok':
        probes = ', '.join(f'{p["threads"]} thr {p["opt_level"]}{" +IO" if p["io_binding"] else ""} '
                           f'{p["ms_per_image"]:.1f}' for p in fp32['probes'])
        lines.append(f'ONNX Runtime fp32 tuning probes at batch 1 (ms/img, {probes}); chosen: {_config(fp32)}')
        ms = fp32['batches']['1']['ms_per_image']
        lines.append(f'fp32 weights read per image at batch 1: {model["weight_bytes"] / 1e6:.0f} MB; at {ms:.1f} ms '
                     f'that is {model["weight_bytes"] / ms / 1e6:.1f} GB/s of weight traffic alone; the rest is '
                     f'convolution arithmetic')
    return lines


def render_markdown(data: Dict[str, Any]) -> str:
    """The table as committed in ``export/efficiency.md`` (regenerated by the command in its header)."""
    m, s = data['machine'], data['settings']
    large = str(s['large_batch'])
    # the CPU's bf16 instructions as the JSON recorded them (tables from before the field: 'not recorded')
    bf16_cpu = m.get('bf16', 'not recorded')
    out = [
        '# Encoding efficiency',
        '',
        f'Generated by `{data["command"]}` ({data["generated"]}, {data["wall_seconds"]} s); do not edit by hand.',
        '',
        f'**Machine:** {m["cpu"]}, {m["cores"]} cores ({m["usable_cores"]} usable); bf16 instructions: {bf16_cpu}; '
        f'GPU: {m["gpu"]}; '
        f'Python {m["python"]}, torch {m["torch"]}, onnxruntime {m["onnxruntime"]}, onnx {m["onnx"]}, '
        f'timm {m["timm"]}, numpy {m["numpy"]}, deephash-zoo {m["deephash_zoo"]}; '
        f'load average {" ".join(m.get("load_average_start", []))} at start, '
        f'{" ".join(m.get("load_average_end", []))} at end (the machine is shared).',
        '',
        f'**Settings:** {s["img_size"]}x{s["img_size"]} inputs, random weights (seed 0; time does not depend on '
        f'them), model forward only (preprocessing excluded). Batch 1: {s["warmup"]} warm-up + {s["repeats"]} timed '
        f'calls; batch {large}: {s["warmup_large"]} + {s["repeats_large"]}. Cells: ms per image, median '
        f'[min-max]. Threads: ' + (f'{s["threads"]} for every runtime.' if s['threads'] else
                                    'each CPU runtime probed at batch 1 with 1 thread and with all usable cores '
                                    '(ORT fp32 also: optimisation level, IO binding); the faster configuration runs; '
                                    f'probed again at the large batch (a probe: {PROBE_WARMUP} warm-up calls, then '
                                    f'the quickest of {s["probe_repeats"]} timed calls at batch 1, of '
                                    f'{LARGE_BATCH_PROBE_REPEATS} at batch {large}).')
        + (' Each model is measured in a fresh process.' if s.get('isolate') else '')
        + f' Sign agreement / max abs diff: the batch-{large} codes against PyTorch eager\'s.',
        '',
    ]
    for model in data['models']:
        rows = model['rows']
        eager = next((r for r in rows if r['runtime'] == 'PyTorch eager'), None)
        out += [f'## {model["model"]}', '',
                f'{model["params"]:,} parameters ({model["weight_bytes"] / 1e6:.0f} MB fp32), codes '
                f'{model["bits"]}; inputs: {model["inputs"]}.', '',
                f'| runtime | device | precision | config | batch 1 ms/img | img/s | vs eager | batch {large} '
                f'ms/img | img/s | vs eager | sign agreement | max abs diff |',
                '| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |']
        for r in rows:
            if r['status'] != 'ok':
                out.append(f'| {r["runtime"]} | {r["device"]} | {r["precision"]} | {r["status"]}: {r["reason"]} '
                           f'| | | | | | | | |')
                continue
            b1, bl = r['batches'].get('1'), r['batches'].get(large)
            agree = '' if r['sign_agreement'] is None else f'{r["sign_agreement"]:.4f}'
            diff = '' if r['max_abs_diff'] is None else f'{r["max_abs_diff"]:.1e}'
            out.append(f'| {r["runtime"]} | {r["device"]} | {r["precision"]} | {_config(r)} | {_cell(b1)} | '
                       f'{b1["images_per_s"]:.1f} | {_speedup(r, eager, "1")} | {_cell(bl)} | '
                       f'{bl["images_per_s"]:.1f} | {_speedup(r, eager, large)} | {agree} | {diff} |')
        out += [''] + [f'- {line}' for line in _goal_lines(model, bf16_cpu)] + ['']
    out += [
        '## The papers\' framing',
        '',
        'Table 5 of the DATH paper (Jiang et al. 2021) reports the average *encoding time per image* in ms: '
        'the model forward only, preprocessing removed, 16-bit codes on MS-COCO, on an NVIDIA GTX 1080 Ti. '
        'Its values did not survive in our copy of the paper; the text says DATH takes close to twice as long '
        'as the single-stream baselines because of its second AlexNet stream and attention modules. The '
        '"batch 1 ms/img" column above is that quantity, measured here on the CPU (and on a GPU where present).',
        '',
    ]
    return '\n'.join(out)


def log_ticks(lo: float, hi: float) -> List[float]:
    """1-2-5 ticks between ``lo`` and ``hi`` for a log axis: few enough that their labels never overlap
    (matplotlib's default put '3x10^1' and '4x10^1' on top of each other), at least two."""
    ticks = [m * 10.0 ** e for e in range(-3, 6) for m in (1, 2, 5) if lo <= m * 10.0 ** e <= hi]
    while len(ticks) > 6:
        ticks = ticks[::2]
    return ticks or [lo, hi]


def plot_png(data: Dict[str, Any], path: Union[str, Path]) -> Path:
    """Bar chart: ms per image per runtime, batch 1 and the large batch, one panel per model (log scale)."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    large = str(data['settings']['large_batch'])
    models = data['models']
    fig, axes = plt.subplots(1, len(models), figsize=(6.5 * len(models), 4.2), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        rows = [r for r in model['rows'] if r['status'] == 'ok']
        labels = [r['runtime'].replace('ONNX Runtime', 'ORT')
                  + ('' if any(p in r['runtime'] for p in ('fp32', 'fp16', 'int8')) else f' ({r["precision"]})')
                  for r in rows]
        y = np.arange(len(rows))
        shown = [r['batches'][b]['ms_per_image'] for r in rows for b in ('1', large)]
        for offset, batch, colour in ((-0.2, '1', '#4c72b0'), (0.2, large, '#dd8452')):
            values = [r['batches'][batch]['ms_per_image'] for r in rows]
            ax.barh(y + offset, values, height=0.4, color=colour, label=f'batch {batch}')
            for yi, v in zip(y, values, strict=True):
                ax.text(v, yi + offset, f' {v:.1f}', va='center', fontsize=7)
        ax.set_yticks(y, labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_xscale('log')
        lo, hi = min(shown) / 1.3, max(shown) * 1.6  # room on the right for the value labels
        ax.set_xlim(lo, hi)
        ax.xaxis.set_major_locator(FixedLocator(log_ticks(lo, hi)))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f'{v:g}'))
        ax.set_xlabel('ms per image (median, log scale)')
        ax.set_title(f'{model["model"]} ({data["settings"]["img_size"]}x{data["settings"]["img_size"]})')
        ax.legend(fontsize=8, loc='lower right')
    fig.suptitle(f'{data["machine"]["cpu"]}, {data["machine"]["usable_cores"]} cores; GPU: {data["machine"]["gpu"]}',
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(str(path), dpi=110, format='png')
    plt.close(fig)
    return Path(path)
