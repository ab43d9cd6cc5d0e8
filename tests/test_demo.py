"""The demo page: uploads vetted into one clear sentence, the default-index fallback, and the app itself
started by ``deephash-demo`` in a subprocess on a free localhost port, queried through gradio_client
(answers equal ``deephash-index query --json`` on the same image) and rendered by headless Chromium."""
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deephash_zoo.cli._common import run_main
from deephash_zoo.demo.browser import find_chromium
from deephash_zoo.demo.uploads import UploadError, open_upload
from tests.conftest import TINY_IMG, save_tiny, tiny_model
from tests.test_data_fashion_mnist import HAS_FMNIST

needs_chromium = pytest.mark.skipif(
    find_chromium() is None,
    reason="no Chromium on PATH: apt-get install chromium (.ci/setup.sh does when run as root)")

STARTUP_S = 180  # import torch + gradio, load the checkpoint and Fashion-MNIST, warm up, serve
EXAMPLES = 3


# ------------------------------------------------------------------------------------------- uploads
def test_open_upload_accepts_images_and_explains_the_rest(tmp_path):
    ok = tmp_path / 'ok.png'
    Image.new('L', (30, 20), 128).save(ok)
    im = open_upload(ok)
    assert im.mode == 'RGB' and im.size == (30, 20)
    bad = tmp_path / 'notes.png'
    bad.write_bytes(b'this is not a picture')
    with pytest.raises(UploadError, match=r'notes\.png is not an image Pillow can read'):
        open_upload(bad)
    with pytest.raises(UploadError, match=r'ok\.png is 0\.0 MB; uploads are limited to 0 MB'):
        open_upload(ok, max_bytes=10)
    huge = tmp_path / 'huge.png'
    Image.new('1', (6000, 5000)).save(huge)  # 30 megapixels in a few kB
    assert huge.stat().st_size < 100_000
    with pytest.raises(UploadError, match='6,000 x 5,000 pixels; images up to 20 megapixels'):
        open_upload(huge)
    with pytest.raises(UploadError, match='did not arrive'):
        open_upload(tmp_path / 'gone.png')


# ---------------------------------------------------------------------------------------- default index
def test_without_index_or_checkpoint_names_the_command_to_run(tmp_path, capsys):
    from deephash_zoo.cli.demo import main as demo_main

    assert run_main(demo_main, ['--runs', str(tmp_path / 'runs')]) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and 'no Fashion-MNIST checkpoint under' in err and 'deephash-train --model' in err


def test_newest_checkpoint_picks_the_latest_fashion_mnist_run(tmp_path):
    from deephash_zoo.cli.demo import newest_checkpoint

    model = tiny_model()
    old, new = save_tiny(model, tmp_path / 'a'), save_tiny(model, tmp_path / 'b')
    os.utime(old / 'model.safetensors', (1, 1))
    (tmp_path / 'c' / 'checkpoint').mkdir(parents=True)  # a half-written folder is no candidate
    (tmp_path / 'c' / 'checkpoint' / 'config.json').write_text('{')
    assert newest_checkpoint(tmp_path) == new
    os.utime(new / 'model.safetensors', (0, 0))
    assert newest_checkpoint(tmp_path) == old
    assert newest_checkpoint(tmp_path, dataset='mosaic') is None


@pytest.mark.skipif(not HAS_FMNIST, reason='dataset-fashion-mnist not installed (.ci/setup.sh)')
def test_default_index_is_built_once_per_weights(tmp_path, capsys):
    pytest.importorskip('faiss')
    from deephash_zoo.cli.demo import _parser, default_index

    run = tmp_path / 'runs' / 'tiny'
    save_tiny(tiny_model(), run)
    args = _parser().parse_args(['--runs', str(tmp_path / 'runs'), '--db-subset', '40', '--device', 'cpu'])
    index = default_index(args)  # no --checkpoint: the newest under --runs
    assert index == run / 'demo-index' and args.checkpoint == str(run / 'checkpoint')
    manifest = json.loads((index / 'manifest.json').read_text())
    assert manifest['dataset'] == 'fashion-mnist' and manifest['num_items'] == 40
    assert 'building the default index' in capsys.readouterr().out
    assert default_index(args) == index and 'building' not in capsys.readouterr().out  # fresh: reused
    save_tiny(tiny_model(seed=1), run)  # new weights: rebuilt
    assert default_index(args) == index and 'building' in capsys.readouterr().out
    assert json.loads((index / 'manifest.json').read_text())['weights_sha256'] != manifest['weights_sha256']


# ------------------------------------------------------------------------------------------ the server
def _free_port() -> int:
    from deephash_zoo.cli.demo import free_port

    return free_port()


def _wait_ready(url: str, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f'deephash-demo exited with {proc.returncode}:\n{log.read_text()[-3000:]}')
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f'deephash-demo not serving {url} after {timeout:.0f} s:\n{log.read_text()[-3000:]}')


@pytest.fixture(scope='module')
def server(tiny_index, module_tmp):
    """``deephash-demo --index`` on a free localhost port; stopped (SIGTERM, then SIGKILL) after the module."""
    pytest.importorskip('gradio')
    port = _free_port()
    log = module_tmp.mktemp('demo') / 'server.log'
    env = {k: v for k, v in os.environ.items() if not k.startswith('GRADIO_SERVER_')}
    env.update(GRADIO_ANALYTICS_ENABLED='False', HF_HUB_OFFLINE='1')
    cmd = [sys.executable, '-m', 'deephash_zoo.cli.demo', '--index', str(tiny_index), '--port', str(port),
           '--examples', str(EXAMPLES), '--device', 'cpu']
    with open(log, 'wb') as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f'http://127.0.0.1:{port}/'
    try:
        started = time.monotonic()
        _wait_ready(url, proc, log, STARTUP_S)
        print(f'demo serving after {time.monotonic() - started:.1f} s')
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


def _client(url: str):
    from gradio_client import Client

    return Client(url, verbose=False, download_files=False, analytics_enabled=False, httpx_kwargs={'timeout': 60})


def _cli_query(index: Path, image: Path, k: int, capsys) -> dict:
    from deephash_zoo.cli.index import main as index_main

    capsys.readouterr()
    assert run_main(index_main, ['query', '--index', str(index), '--image', str(image), '-k', str(k), '--json']) == 0
    return json.loads(capsys.readouterr().out)['results'][0]


def test_binds_to_localhost_unless_told(monkeypatch):
    from deephash_zoo.cli.demo import bind_address

    monkeypatch.delenv('GRADIO_SERVER_NAME', raising=False)
    monkeypatch.delenv('GRADIO_SERVER_PORT', raising=False)
    assert bind_address(None, None) == ('127.0.0.1', 7860)
    assert bind_address('0.0.0.0', 8000) == ('0.0.0.0', 8000)
    monkeypatch.setenv('GRADIO_SERVER_NAME', '0.0.0.0')  # what a Space sets
    monkeypatch.setenv('GRADIO_SERVER_PORT', '7861')
    assert bind_address(None, None) == ('0.0.0.0', 7861)


def test_client_answers_equal_index_query(server, tiny_run, tiny_index, tmp_path, capsys):
    from gradio_client import handle_file

    from deephash_zoo.data import build_retrieval_data
    from deephash_zoo.retrieval.encoding import model_transform
    from deephash_zoo.retrieval.search import bit_string

    image = tmp_path / 'q.png'
    build_retrieval_data('fashion-mnist', seed=0)['query'].load_image(5).save(image)
    started = time.perf_counter()
    query, code, gallery, timing, details, status = _client(server).predict(handle_file(str(image)),
                                                                             api_name='/search')
    elapsed = time.perf_counter() - started
    expected = _cli_query(tiny_index, image, 10, capsys)
    assert details['ids'] == expected['ids'] and details['distances'] == expected['distances']
    assert len(gallery) == 10 and gallery[0]['caption'].startswith(f"d={expected['distances'][0]} · ")
    assert status == 'Query: q.png' and 'encode' in timing and 'search' in timing
    model = tiny_run[1]
    x = model_transform(model, TINY_IMG)(Image.open(image).convert('RGB'))[None]
    assert code == bit_string(model.encode(x, bits=16, packed=True).numpy()[0], 16)  # e.g. '01101001 11010010'
    print(f'client round trip {elapsed * 1000:.0f} ms; page: {timing}')


@pytest.mark.parametrize('name, payload, needle', [
    ('notes.png', b'plain text, not pixels', 'notes.png is not an image Pillow can read'),
    ('huge.png', None, '6,000 x 5,000 pixels'),
])
def test_client_bad_upload_gets_a_sentence(server, tmp_path, name, payload, needle):
    from gradio_client import handle_file

    path = tmp_path / name
    if payload is None:
        Image.new('1', (6000, 5000)).save(path)
    else:
        path.write_bytes(payload)
    query, code, gallery, timing, details, status = _client(server).predict(handle_file(str(path)),
                                                                             api_name='/search')
    assert status.startswith('**Not searched:**') and needle in status and 'Traceback' not in status
    assert gallery == [] and code == '' and details == {}


def test_client_refuses_a_non_image_file_type(server, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    path = tmp_path / 'notes.txt'
    path.write_text('hello')
    with pytest.raises(AppError, match='Invalid file type'):
        _client(server).predict(handle_file(str(path)), api_name='/search')


# ----------------------------------------------------------------------------------------- the browser
@needs_chromium
def test_page_renders_results_in_headless_chromium(server, tmp_path):
    from deephash_zoo.demo.browser import dump_dom, screenshot

    started = time.perf_counter()
    # the ?example=1 answer comes from the page's load event, a server round trip: wait (bounded) until it is in
    answered = ("document.body.innerText.includes('example 1 (')"
                " && document.querySelectorAll('#neighbours img').length >= 10")
    dom = dump_dom(server + '?example=1', until=answered, timeout=60)
    assert 'id="neighbours"' in dom and 'id="code"' in dom
    gallery = dom[dom.index('id="neighbours"'):]
    assert gallery.count('<img') >= 10 and 'd=' in gallery  # thumbnails with their distance captions
    assert 'example 1 (' in dom and 'encode' in dom  # the ?example=1 answer, with its timing
    png = screenshot(server, tmp_path / 'page.png', size=(1280, 900),
                     until="document.querySelectorAll('#neighbours img').length >= 10", timeout=60)
    elapsed = time.perf_counter() - started
    pixels = np.asarray(Image.open(png).convert('L'), dtype=np.float32)
    assert pixels.shape == (900, 1280)
    assert pixels.std() > 20, 'the screenshot is blank'
    right = pixels[250:650, 400:]  # the neighbour gallery's area: dark Fashion-MNIST thumbnails on white
    assert (right < 40).mean() > 0.1, 'no result thumbnails where the gallery should be'
    print(f'chromium: DOM + screenshot in {elapsed:.1f} s')


@needs_chromium
def test_browser_waits_for_what_the_page_must_show(tmp_path):
    """A capture waits for a late answer (here 1.5 s of script time) rather than a fixed budget, and says
    what never appeared when the deadline passes."""
    from deephash_zoo.demo.browser import dump_dom

    page = tmp_path / 'late.html'
    page.write_text("<html><body><p id='a'>waiting</p><script>setTimeout(() => "
                    "{document.getElementById('a').textContent = 'late answer'}, 1500)</script></body></html>")
    started = time.perf_counter()
    dom = dump_dom(page.as_uri(), until="document.body.innerText.includes('late answer')", timeout=30)
    assert 'late answer' in dom and time.perf_counter() - started >= 1.5
    profiles = set(Path(tempfile.gettempdir()).glob('deephash-chromium-*'))
    # 6 s: at 3 the deadline once passed before the page answered, on a loaded 2-core machine
    with pytest.raises(TimeoutError, match=r"did not show .*'the impossible'.* within 6 s"):
        dump_dom(page.as_uri(), until="document.body.innerText.includes('the impossible')", timeout=6)
    assert set(Path(tempfile.gettempdir()).glob('deephash-chromium-*')) <= profiles, 'a browser profile was left'


@needs_chromium
def test_a_page_that_stops_answering_is_named_at_the_deadline(tmp_path):
    """A page whose script never yields leaves chromium's evaluate unanswered: the error still names what the
    capture waited for, and nothing is left behind."""
    from deephash_zoo.demo.browser import dump_dom

    page = tmp_path / 'busy.html'
    page.write_text("<html><body><p>busy</p><script>setTimeout(() => { while (true) {} }, 300)</script></body></html>")
    profiles = set(Path(tempfile.gettempdir()).glob('deephash-chromium-*'))
    with pytest.raises(TimeoutError, match=r"did not show .*'never'.* within 6 s \(chromium was still answering\)"):
        dump_dom(page.as_uri(), until="document.body.innerText.includes('never')", timeout=6)
    assert set(Path(tempfile.gettempdir()).glob('deephash-chromium-*')) <= profiles, 'a browser profile was left'


def test_without_a_checkpoint_the_suggestion_is_the_readme_two_stages(tmp_path, capsys):
    """The paper recipe from random weights collapses the codes: the demo names pretraining, then --recipe scratch
    from that trunk (the README's commands), never the bare paper recipe."""
    from deephash_zoo.cli.demo import PRETRAIN_FIRST, TRAIN_FIRST
    from deephash_zoo.cli.demo import main as demo_main

    assert run_main(demo_main, ['--runs', str(tmp_path / 'runs')]) == 2
    err = capsys.readouterr().err
    assert 'deephash-pretrain --trunk alexnet' in err and '--out runs/pre-alexnet' in err, err
    assert '--recipe scratch --init runs/pre-alexnet/trunk.safetensors' in err and '--lr 1e-5' not in err, err
    readme = ' '.join((Path(__file__).resolve().parents[1] / 'README.md').read_text().replace('\\\n', ' ').split())
    assert PRETRAIN_FIRST in readme and TRAIN_FIRST in readme  # the README's own commands, word for word


def test_a_folder_index_is_refused_by_the_demo_in_its_own_words(tiny_run, tmp_path, capsys):
    """An index of a folder (``build --images``) has no protocol for the page's examples: the demo says what it
    serves and what to run instead, not the --grid message of deephash-index."""
    pytest.importorskip('faiss')
    from deephash_zoo.cli.demo import main as demo_main
    from deephash_zoo.cli.index import main as index_main

    photos = tmp_path / 'photos'
    photos.mkdir()
    Image.new('RGB', (40, 40), (200, 10, 10)).save(photos / 'a.png')
    index = tmp_path / 'photo-index'
    assert run_main(index_main, ['build', '--checkpoint', str(tiny_run[0]), '--images', str(photos), '--out',
                                 str(index), '--no-progress']) == 0
    capsys.readouterr()
    assert run_main(demo_main, ['--index', str(index)]) == 2
    err = capsys.readouterr().err
    assert err.startswith('error: deephash-demo serves benchmark indexes') and err.count('\n') == 1, err
    assert f'deephash-index query --index {index} --image FILE' in err and '--grid draws' not in err, err
