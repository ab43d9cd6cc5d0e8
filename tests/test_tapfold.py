"""fc6 trained as its tap sums (TapFold) takes the steps training every tap takes."""
import json
import subprocess
import sys

import pytest
import timm
import torch
import torch.nn as nn

import deephash_zoo  # noqa: F401  (registers the models)
from deephash_zoo.models.head import FcMlp
from deephash_zoo.training.tapfold import TapFold, fold_size


def _net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 1), FcMlp(8, 12, drop_rate=0.0), nn.Flatten(), nn.Linear(12, 4)).double()


def _train(net: nn.Module, fold, steps: int, nesterov: bool) -> list:
    params = list(net.parameters())
    if fold:
        params = fold.param_groups(params, 0.05, 0.02)
    opt = torch.optim.SGD(params, lr=0.05, weight_decay=0.02, momentum=0.9, nesterov=nesterov)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1.0 - i / (2 * steps))  # a moving lr
    gen = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(steps):
        x = torch.randn(6, 3, 2, 2, generator=gen, dtype=torch.float64)
        loss = net(x).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if fold:
            fold.after_step(opt)
        sched.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize('nesterov', [False, True])
def test_folded_sgd_takes_the_steps_of_every_tap(nesterov):
    """A 2x2 map repeated to the 6x6 window (9 taps a block): the losses of 30 steps and the fc6 weights
    written back equal those of training all 36 taps, weight decay on the taps' deviations included."""
    reference, folded = _net(0), _net(0)
    fold = TapFold.attach(folded, img_size=2)
    assert fold is not None and len(fold.mlps) == 1
    assert not folded[1].fc6.weight.requires_grad  # the 36 taps get no gradient while folded
    ref_losses = _train(reference, None, 30, nesterov)
    fold_losses = _train(folded, fold, 30, nesterov)
    assert fold_losses == pytest.approx(ref_losses, rel=1e-9, abs=1e-12)
    with fold.spread():
        state = folded.state_dict()
        assert state.keys() == reference.state_dict().keys()  # the registered layout, nothing of the fold
        for k, v in reference.state_dict().items():
            assert torch.allclose(state[k], v, rtol=1e-9, atol=1e-12), k
    scale = float(folded[1].fc6_spread[0])
    assert 0.5 < scale < 0.99  # the taps' deviations from their block mean decayed, and the write-back followed
    assert {'1.fc6_taps', '1.fc6_spread'} <= folded.state_dict().keys()  # the fold is back after spread()


def test_fold_applies_only_to_a_repeated_map():
    mlp = FcMlp(8, 12)
    assert fold_size(mlp, 1, 1) == (6, 6) and fold_size(mlp, 2, 3) == (3, 2)
    assert fold_size(mlp, 6, 6) is None and fold_size(mlp, 4, 4) is None and fold_size(mlp, 7, 7) is None
    net = nn.Sequential(nn.Conv2d(3, 8, 1), FcMlp(8, 12, drop_rate=0.0))
    assert TapFold.attach(net, img_size=6) is None  # fc6's own window: nothing to fold
    assert TapFold.attach(net, img_size=4) is None  # 4 does not divide 6



@pytest.mark.parametrize('name', ['dath_n_16', 'admth_cnnf_16'])
def test_the_paper_trunks_fold_below_159_pixels(name):
    """The sizes the README and docstrings give: conv5 maps of 1x1, 2x2, 3x3 from 63-94, 95-126, 127-158 px;
    at 159 the map is 4x4, which does not divide fc6's 6x6 window."""
    for size, folds in ((63, True), (94, True), (95, True), (126, True), (127, True), (158, True), (159, False)):
        with torch.device('meta'):  # shapes only: a fresh model a size, without 100 M weights to fill
            model = timm.create_model(name)
            assert (TapFold.attach(model, img_size=size) is not None) == folds, size

def test_a_folded_fc6_refuses_another_map_size():
    net = _net(0)
    TapFold.attach(net, img_size=2)
    with pytest.raises(ValueError, match='folded for a 2x2 map'):
        net(torch.zeros(1, 3, 3, 3, dtype=torch.float64))


def test_step_benchmark_times_every_form_and_writes_its_table(tmp_path, capsys):
    from deephash_zoo.training.benchmark import STEP_FORMS, main

    out = tmp_path / 'steps.json'
    assert main(['steps', '--models', 'cnnf', '--batch-size', '4', '--steps', '1', '--repeats', '2',
                 '--out', str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result['median_step_seconds']['cnnf']) == set(STEP_FORMS)
    assert all(len(v) == 2 and min(v) > 0 for v in result['step_seconds']['cnnf'].values())
    assert result['speedup']['cnnf'] == pytest.approx(
        result['median_step_seconds']['cnnf'][STEP_FORMS[0]] / result['median_step_seconds']['cnnf'][STEP_FORMS[-1]])
    table = capsys.readouterr().out
    assert 'tap sums, fused SGD' in table and result['machine']['cpu'] and result['generated']
    assert result['command'] == ('python -m deephash_zoo.training.benchmark steps --models cnnf --batch-size 4 '
                                 f'--steps 1 --repeats 2 --out {out}')
    # the suite's processes keep freed memory (conftest), as the training commands do, and the table says so
    assert result['malloc'] == 'freed blocks kept, as the training commands'
    assert 'malloc: freed blocks kept, as the training commands' in table
    cpu = result['cpu_seconds']
    assert cpu['user'] > 0 and cpu['system'] >= 0 and f"system {cpu['system']:.1f} s" in table
    with pytest.raises(ValueError, match="--malloc glibc: this process started with malloc settings"):
        main(['steps', '--models', 'cnnf', '--malloc', 'glibc', '--out', str(tmp_path / 'glibc.json')])
    assert not (tmp_path / 'glibc.json').exists()
    cmd = [sys.executable, '-m', 'deephash_zoo.training.benchmark', 'steps', '--malloc', 'glibc', '--out',
           str(tmp_path / 'glibc.json')]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.startswith('error: --malloc glibc: this process started with')
    assert 'Traceback' not in done.stderr and not (tmp_path / 'glibc.json').exists()
