"""The trainer: loss falls, SIGKILL + --resume equals an uninterrupted run, DDP replicas agree."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from deephash_zoo.training import TrainConfig, train
from deephash_zoo.training.state import load_train_state, save_train_state
from tests.test_data_fashion_mnist import HAS_FMNIST

needs_fmnist = pytest.mark.skipif(not HAS_FMNIST, reason='dataset-fashion-mnist not installed (.ci/setup.sh)')
ROOT = Path(__file__).resolve().parents[1]
# tiny runs: 64x64 inputs, DATH-N 16 bits, 96 training items, batches of 16 -> 6 steps an epoch; SGD, so fc6
# trains as its tap sums (tapfold) and resuming must restore the fold too
TINY = ['--model', 'dath_n_16', '--data', 'fashion-mnist', '--img-size', '64', '--subset', '96',
        '--batch-size', '16', '--optimizer', 'sgd', '--lr', '1e-4', '--log-every', '1']


def _env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=str(ROOT))


def _train_cmd(out: Path, *extra: str) -> list:
    return [sys.executable, '-m', 'deephash_zoo.cli.train', *TINY, '--out', str(out), *extra]


def _records(run: Path) -> list:
    path = run / 'train_log.jsonl'
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _weights(run: Path) -> dict:
    return load_file(str(run / 'checkpoint' / 'model.safetensors'))


@needs_fmnist
@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_matches_uninterrupted_run(tmp_path):
    reference = tmp_path / 'reference'
    subprocess.run(_train_cmd(reference, '--epochs', '2'), env=_env(), check=True, capture_output=True)
    epochs = [r for r in _records(reference) if r['event'] == 'epoch']
    assert len(epochs) == 2 and epochs[1]['loss'] < epochs[0]['loss'], epochs  # and the loss falls
    ref = _weights(reference)
    for folder in ('last', 'checkpoint'):  # about 0.5 GB of train state and weights not read again
        shutil.rmtree(reference / folder)

    killed = tmp_path / 'killed'
    proc = subprocess.Popen(_train_cmd(killed, '--epochs', '2'), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    try:
        while time.time() < deadline:  # wait until the second epoch has taken a step, then kill -9
            if any(r['event'] == 'step' and r['epoch'] == 1 for r in _records(killed)):
                break
            assert proc.poll() is None, 'training ended before it could be killed'
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    state = json.loads((killed / 'last' / 'state.json').read_text())
    assert state['epoch'] == 1  # only the first epoch was complete
    assert not any(p.name.startswith('.') for p in killed.iterdir()), 'a temporary folder was left behind'

    subprocess.run(_train_cmd(killed, '--epochs', '2', '--resume'), env=_env(), check=True, capture_output=True)
    resumed = _weights(killed)
    assert ref.keys() == resumed.keys()
    for k in ref:
        assert torch.equal(ref[k], resumed[k]), k  # bit for bit
    ref_loss = [r['loss'] for r in _records(reference) if r['event'] == 'step' and r['epoch'] == 1]
    res_loss = [r['loss'] for r in _records(killed) if r['event'] == 'step' and r['epoch'] == 1][-len(ref_loss):]
    assert ref_loss == res_loss


@needs_fmnist
@pytest.mark.slow
def test_ddp_two_cpu_processes_hold_identical_weights(tmp_path):
    run = tmp_path / 'ddp'
    torchrun = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2']
    proc = subprocess.run([*torchrun, '-m', 'deephash_zoo.cli.train', *TINY, '--batch-size', '8',
                           '--max-steps', '3', '--out', str(run)], env=_env(), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    end = [r for r in _records(run) if r['event'] == 'end']
    assert len(end) == 1 and len(end[0]['replica_sha256']) == 2
    assert end[0]['replicas_identical'] and len(set(end[0]['replica_sha256'])) == 1
    start = next(r for r in _records(run) if r['event'] == 'start')
    assert start['config']['world_size'] == 2


@needs_fmnist
def test_admth_multi_on_mosaic_learns_and_writes_a_checkpoint(tmp_path):
    # the scratch recipe's averaged losses and lr (the paper recipe's summed form takes 1e-7 steps), short warm-up
    summary = train(TrainConfig(model='admth_cnnf_16', recipe='scratch', data='mosaic', out=str(tmp_path / 'run'),
                                img_size=64, subset=64, batch_size=16, epochs=2, warmup_steps=2, log_every=1))
    records = _records(tmp_path / 'run')
    epochs = [r for r in records if r['event'] == 'epoch']
    assert epochs[1]['loss'] < epochs[0]['loss'], epochs
    assert {'pairwise', 'consistency'} <= set(epochs[0])
    config = json.loads((tmp_path / 'run' / 'checkpoint' / 'config.json').read_text())
    assert config['architecture'] == 'admth_cnnf_16' and config['dataset'] == 'mosaic'
    assert config['training']['optimizer'] == 'sgd' and summary['replicas_identical']
    assert config['training']['label_weight'] == 0 and 'label' not in epochs[0]  # the paper's objective
    assert config['training']['machine']['cpu'] and config['training']['machine']['torch'] == torch.__version__


@needs_fmnist
def test_progress_false_draws_no_bar(tmp_path, capsys):
    """deephash-zoo build --no-progress: a long background run's log holds messages, not bar redraws."""
    train(TrainConfig(model='dath_n_16', recipe='scratch', out=str(tmp_path / 'run'), img_size=64, subset=32,
                      batch_size=16, epochs=1, progress=False))
    out, err = capsys.readouterr()
    assert 'epoch 1/1:' in out + err and 'it/s' not in out + err and 's/it' not in out + err


def test_train_state_round_trip_without_pickle(tmp_path):
    from deephash_zoo.losses import ADMTHLoss

    model = torch.nn.Linear(4, 3)
    loss = ADMTHLoss(bits=(2, 4))
    opt = torch.optim.SGD([*model.parameters(), *loss.parameters()], lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, 2, 0.5)
    model(torch.randn(2, 4)).sum().backward()
    loss.consistency.maps[0].weight.sum().backward()
    opt.step()
    sched.step()
    torch.manual_seed(123)
    save_train_state(tmp_path / 'last', model, loss, opt, sched, epoch=3, step=7, extra={'note': 'x'})
    expected_next = torch.rand(3)

    model2, loss2 = torch.nn.Linear(4, 3), ADMTHLoss(bits=(2, 4))
    opt2 = torch.optim.SGD([*model2.parameters(), *loss2.parameters()], lr=0.1, momentum=0.9)
    sched2 = torch.optim.lr_scheduler.StepLR(opt2, 2, 0.5)
    meta = load_train_state(tmp_path / 'last', model2, loss2, opt2, sched2)
    assert meta['epoch'] == 3 and meta['step'] == 7 and meta['extra'] == {'note': 'x'}
    assert torch.equal(torch.rand(3), expected_next)  # RNG restored
    for a, b in zip(model.parameters(), model2.parameters(), strict=True):
        assert torch.equal(a, b)
    buffers = [o.state_dict()['state'][0]['momentum_buffer'] for o in (opt, opt2)]
    assert torch.equal(*buffers)
    assert sched2.state_dict() == sched.state_dict()
    assert sorted(p.name for p in (tmp_path / 'last').iterdir()) == ['state.json', 'state.safetensors']


def test_bad_training_requests(tmp_path):
    with pytest.raises(ValueError, match='no training recipe'):
        train(TrainConfig(model='resnet18', out=str(tmp_path / 'x')))
    with pytest.raises(FileNotFoundError, match='no training state to resume'):
        load_train_state(tmp_path / 'nothing', torch.nn.Linear(1, 1), torch.nn.Module(),
                         torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=1), None)


@needs_fmnist
def test_resume_after_max_steps_trains_only_the_rest_of_the_epoch(tmp_path):
    out = tmp_path / 'run'
    base = ['--model', 'dath_n_16', '--data', 'fashion-mnist', '--img-size', '64', '--subset', '64',
            '--batch-size', '16', '--lr', '3e-5', '--log-every', '1', '--device', 'cpu', '--out', str(out)]
    from deephash_zoo.cli.train import main as train_main

    assert train_main([*base, '--max-steps', '3']) == 0  # 4 steps an epoch: stops mid-epoch
    assert json.loads((out / 'last' / 'state.json').read_text())['epoch'] == 0
    assert train_main([*base, '--resume']) == 0
    steps = [r['step'] for r in _records(out) if r['event'] == 'step']
    assert steps == [1, 2, 3, 4], steps  # not 3 + a whole epoch again
    state = json.loads((out / 'last' / 'state.json').read_text())
    assert (state['epoch'], state['step'], state['extra']['complete']) == (1, 4, True)
    assert train_main([*base, '--resume']) == 0  # finished: nothing to train, and no error
    assert [r['step'] for r in _records(out) if r['event'] == 'step'] == steps


@pytest.mark.skipif(not HAS_FMNIST, reason='Fashion-MNIST not installed')
@pytest.mark.slow
def test_multitask_benchmark_times_the_attention_free_arms_from_steady_steps(tmp_path, capsys):
    from deephash_zoo.training.benchmark import main, multitask_models

    assert multitask_models('dmlh') == ['dmlh_cnnf_multi', 'dmlh_cnnf_16', 'dmlh_cnnf_32', 'dmlh_cnnf_48',
                                        'dmlh_cnnf_64']
    out = tmp_path / 'mt.json'
    assert main(['multitask', '--img-size', '64', '--batch-size', '4', '--steps', '2', '--out', str(out)]) == 0
    result = json.loads(out.read_text())
    assert result['family'] == 'dmlh' and list(result['median_step_seconds']) == multitask_models('dmlh')
    singles = sum(result['median_step_seconds'][m] for m in multitask_models('dmlh')[1:])
    assert result['four_singles_step_seconds'] == pytest.approx(singles)
    assert result['ratio'] == pytest.approx(result['multi_step_seconds'] / singles)
    assert f"ratio multi / four singles: {result['ratio']:.3f}" in capsys.readouterr().out
    with pytest.raises(ValueError, match='--steps must be >= 2'):
        main(['multitask', '--steps', '1', '--out', str(out)])


@pytest.mark.parametrize('flags, message', [
    (['--grad-clip', '-1'], '--grad-clip -1.0: must be a finite number >= 0'),  # a negative scale: steps uphill
    (['--warmup-steps', '-5'], '--warmup-steps -5: must be >= 0'),
    (['--log-every', '0'], '--log-every 0: must be at least 1'),
    (['--img-size', '62'], '--img-size 62: must be at least 63'),
    (['--lr', 'nan'], '--lr nan: must be a finite number >= 0'),
    (['--lr', '-0.1'], '--lr -0.1: must be a finite number >= 0'),
    (['--lr', '1e39'], '--lr 1e[+]39: must be a finite number >= 0'),  # no float32 holds it: torch's overflow error
    (['--drop-rate', '1'], r'--drop-rate 1.0: must be in \[0, 1\)'),
    (['--loss-arg', 'margin=-1'], 'margin must be a finite number >= 0'),
])
def test_settings_outside_their_meaning_are_refused_before_the_folder_is_touched(tmp_path, flags, message):
    from deephash_zoo.cli.train import main as train_main

    out = tmp_path / 'run'
    with pytest.raises(ValueError, match=message):
        train_main(['--model', 'dath_n_16', '--recipe', 'scratch', '--out', str(out), '--max-steps', '1', *flags])
    assert not out.exists()


@needs_fmnist
def test_a_word_loss_arg_reaches_the_loss_and_the_record(tmp_path):
    """--loss-arg multi_label_form=paper (DATH's Eq. 7 for multi-hot labels): every value was parsed as a number,
    so the paper's form could not be chosen from the command line."""
    from deephash_zoo.cli.train import main as train_main
    from deephash_zoo.hub.checkpoint import read_checkpoint_config

    out = tmp_path / 'run'
    assert train_main([*TINY, '--device', 'cpu', '--out', str(out), '--max-steps', '1',
                       '--loss-arg', 'multi_label_form=paper']) == 0
    training = read_checkpoint_config(out / 'checkpoint')['training']
    assert training['loss_args'] == {'multi_label_form': 'paper'}
    # and every hyper-parameter the loss ran with, its defaults included (they were unsaid)
    assert training['loss'] == {'beta': 1.0, 'gamma': 0.01, 'margin': 5.0, 'multi_label_form': 'paper'}


def test_pretraining_refuses_images_below_the_trunks_minimum(tmp_path):
    from deephash_zoo.cli.pretrain import main as pretrain_main

    with pytest.raises(ValueError, match='--img-size 40: must be at least 63'):
        pretrain_main(['--trunk', 'cnnf', '--img-size', '40', '--out', str(tmp_path / 'run'), '--max-steps', '1'])
    assert not (tmp_path / 'run').exists()


@needs_fmnist
def test_resume_refuses_other_settings_and_names_them(tmp_path):
    from deephash_zoo.cli.train import main as train_main

    out = tmp_path / 'run'
    base = [*TINY, '--device', 'cpu', '--out', str(out)]
    assert train_main([*base, '--max-steps', '1']) == 0
    log = (out / 'train_log.jsonl').read_text()
    with pytest.raises(ValueError, match=r"img_size 80 \(the run: 64\); seed 3 \(the run: 0\)"):
        train_main([*base[:base.index('--img-size')], '--img-size', '80', *base[base.index('--img-size') + 2:],
                    '--seed', '3', '--resume'])
    assert (out / 'train_log.jsonl').read_text() == log  # refused before the folder was touched
    assert train_main([*base, '--max-steps', '2', '--log-every', '5', '--resume']) == 0  # length and logging may change
    state = json.loads((out / 'last' / 'state.json').read_text())
    assert state['step'] == 2 and state['extra']['settings']['img_size'] == 64


def test_a_run_that_saved_no_state_is_not_offered_resume(tmp_path):
    from deephash_zoo.training.trainer import check_run_folder

    (tmp_path / 'train_log.jsonl').write_text('')  # stopped (Ctrl-C) before its first save
    with pytest.raises(ValueError, match='saved no training state to continue') as refused:
        check_run_folder(tmp_path, resume=False, overwrite=False)
    assert '--resume continues it' not in str(refused.value)
    (tmp_path / 'last').mkdir()
    with pytest.raises(ValueError, match='--resume continues it'):
        check_run_folder(tmp_path, resume=False, overwrite=False)


def test_a_state_of_another_model_names_what_does_not_fit(tmp_path):
    small, large = torch.nn.Linear(2, 2), torch.nn.Linear(3, 3)
    save_train_state(tmp_path / 'last', small, torch.nn.Module(), torch.optim.SGD(small.parameters(), lr=1), None,
                     epoch=1, step=1)
    with pytest.raises(ValueError, match=r'Linear: size mismatch for weight') as refused:
        load_train_state(tmp_path / 'last', large, torch.nn.Module(), torch.optim.SGD(large.parameters(), lr=1), None)
    assert '\n' not in str(refused.value)
