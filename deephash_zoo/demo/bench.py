"""The demo's worst uploads within its limits: how long the page takes to answer and how much memory it adds.

``python -m deephash_zoo.demo.bench [--json PATH]`` writes uploads at the limits (20 megapixels; a 20:1 strip;
a 10 MB file of noise) and a few beyond them, then answers each in a fresh process exactly as the page does
(``open_upload`` + ``answer``: encode, search, neighbour thumbnails) with a randomly initialised
``dath_alexnet_32`` at 64x64 and an index of 1,000 Fashion-MNIST test images. Per upload it prints the seconds
to answer (median of ``--repeats``) and the peak resident memory added over the loaded page (Linux VmHWM, reset
before the upload). A benchmark command, not a test: the figures depend on the machine, named in the output.
"""
import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

__all__ = ['main']

_CASES = {  # name -> (width, height, mode, format, noise)
    '20 MP square PNG': (4472, 4472, 'L', 'PNG', False),
    '20 MP 20:1 strip PNG': (20000, 1000, 'RGB', 'PNG', False),
    '20 MP JPEG photo-like': (5470, 3650, 'RGB', 'JPEG', False),
    '10 MB PNG of noise': (1800, 1800, 'RGB', 'PNG', True),
    'refused: 2,000,000 x 10 strip': (2_000_000, 10, '1', 'PNG', False),
    'refused: 225 MP bomb': (15000, 15000, '1', 'PNG', False),
}


def _write_case(folder: Path, name: str) -> Path:
    import numpy as np
    from PIL import Image

    width, height, mode, fmt, noise = _CASES[name]
    path = folder / (name.replace(' ', '_').replace(':', '').replace(',', '') + ('.png' if fmt == 'PNG' else '.jpg'))
    if noise:
        pixels = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
        image = Image.fromarray(pixels)
    elif mode == 'RGB' and fmt == 'JPEG':  # smooth gradients: a photo-sized file under the 10 MB limit
        x = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
        y = np.linspace(0, 255, height, dtype=np.float32)[:, None, None]
        image = Image.fromarray(((x + y) / 2 * np.ones((1, 1, 3), np.float32)).astype(np.uint8))
    else:
        image = Image.new(mode, (width, height), 128 if mode != '1' else 0)
    image.save(path, **({'quality': 90} if fmt == 'JPEG' else {'compress_level': 1}))
    return path


_CHILD = r'''
import json, sys, time
from pathlib import Path
import numpy as np, timm, torch
import deephash_zoo
from deephash_zoo.data import HashDataset, FASHION_MNIST_CLASSES, load_fashion_mnist
from deephash_zoo.demo.app import DemoData, answer
from deephash_zoo.demo.uploads import UploadError, open_upload
from deephash_zoo.retrieval.encoding import model_transform
from deephash_zoo.retrieval.index import HashIndex
from deephash_zoo.retrieval.search import HashSearcher

upload, repeats = Path(sys.argv[1]), int(sys.argv[2])
torch.manual_seed(0)
model = timm.create_model('dath_alexnet_32').eval()
images, labels = load_fashion_mnist('test')
db = HashDataset(labels[:1000], images=images[:1000], class_names=FASHION_MNIST_CLASSES)
transform = model_transform(model, 64)
with torch.no_grad():
    batch = torch.stack([transform(db.load_image(i)) for i in range(len(db))])
    codes = model.encode(batch, packed=True).numpy()
index = HashIndex.build(codes, 32, manifest_extra={'model': 'dath_alexnet_32', 'weights_sha256': 'random'})
data = DemoData(searcher=HashSearcher(model, index, transform), database=db, examples=[])
answer(data, db.load_image(0), 'warm-up')

def rss_kib(field):
    for line in open('/proc/self/status'):
        if line.startswith(field):
            return int(line.split()[1])

seconds, extra, status = [], [], 'answered'
for _ in range(repeats):
    base = rss_kib('VmRSS:')
    open('/proc/self/clear_refs', 'w').write('5')  # VmHWM := VmRSS
    t0 = time.perf_counter()
    try:
        answer(data, open_upload(upload), upload.name)
    except UploadError as e:
        status = 'refused: ' + str(e)
    seconds.append(time.perf_counter() - t0)
    extra.append((rss_kib('VmHWM:') - base) / 1024)
print(json.dumps(dict(seconds=seconds, extra_mb=extra, status=status)))
'''


def _measure(path: Path, repeats: int) -> Dict[str, Any]:
    proc = subprocess.run([sys.executable, '-c', _CHILD, str(path), str(repeats)], capture_output=True, text=True,
                          timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f'{path.name}: the measuring process failed: {proc.stderr.strip().splitlines()[-1:]}')
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: Optional[List[str]] = None) -> int:
    from deephash_zoo.utils import cpu_model, write_atomic

    p = argparse.ArgumentParser(prog='python -m deephash_zoo.demo.bench', description=__doc__.split('\n\n')[0])
    p.add_argument('--repeats', type=int, default=3, help='answers per upload; the median is reported')
    p.add_argument('--json', type=Path, default=Path('runs/benchmarks/demo_uploads.json'))
    args = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in _CASES:
            path = _write_case(Path(tmp), name)
            m = _measure(path, args.repeats)
            rows.append(dict(upload=name, size=list(_CASES[name][:2]), file_bytes=path.stat().st_size,
                             seconds=statistics.median(m['seconds']), extra_mb=max(m['extra_mb']),
                             status=m['status']))
    cpu = cpu_model()
    print(f'demo uploads on {cpu} (dath_alexnet_32 at 64x64, 1,000-item index, median of {args.repeats})')
    print('| upload | pixels | file | seconds to answer | peak memory added | outcome |')
    print('| --- | --- | --- | --- | --- | --- |')
    for r in rows:
        print(f"| {r['upload']} | {r['size'][0]:,} x {r['size'][1]:,} | {r['file_bytes'] / 2**20:.2f} MB | "
              f"{r['seconds']:.2f} | {r['extra_mb']:.0f} MB | {r['status'][:60]} |")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(args.json, (json.dumps(dict(cpu=cpu, repeats=args.repeats, rows=rows,
                                             measured=time.strftime('%Y-%m-%dT%H:%M:%S%z')), indent=2) + '\n').encode())
    print(f'wrote {args.json}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
