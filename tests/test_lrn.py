"""CNN-F's local response normalisation: the fast path is torch's function, forward and backward."""
import pytest
import timm
import torch
import torch.nn as nn

import deephash_zoo  # noqa: F401  (registers the models)
from deephash_zoo.models.lrn import LocalResponseNorm


def _pair(size: int, beta: float):
    settings = dict(alpha=1e-2, beta=beta, k=1.5)  # alpha large enough that the window matters
    return LocalResponseNorm(size, **settings), nn.LocalResponseNorm(size, **settings)


@pytest.mark.parametrize('size, beta', [(5, 0.75), (4, 0.75), (3, 0.6), (1, 0.75), (8, 0.75)])
def test_forward_and_backward_equal_torch(size, beta):
    """Odd and even windows (an even one is not symmetric: its backward uses the mirrored window), the
    papers' beta and another one, a window wider than the 6 channels."""
    ours, ref = _pair(size, beta)
    x = (torch.randn(2, 6, 5, 4, dtype=torch.float64) * 3).relu().requires_grad_()
    g = torch.randn(2, 6, 5, 4, dtype=torch.float64)
    y_ours, y_ref = ours(x), ref(x)
    torch.testing.assert_close(y_ours, y_ref, rtol=1e-12, atol=1e-12)
    (dx_ours,) = torch.autograd.grad(y_ours, x, g)
    (dx_ref,) = torch.autograd.grad(y_ref, x, g)
    torch.testing.assert_close(dx_ours, dx_ref, rtol=1e-10, atol=1e-12)
    assert torch.autograd.gradcheck(lambda t: ours(t), (x,))


def test_float32_and_inference_paths_agree_with_torch():
    ours, ref = _pair(5, 0.75)
    x = (torch.randn(4, 64, 7, 7) * 30).relu()
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-5)
    xg = x.clone().requires_grad_()
    xr = x.clone().requires_grad_()
    ours(xg).square().sum().backward()
    ref(xr).square().sum().backward()
    torch.testing.assert_close(xg.grad, xr.grad, rtol=1e-4, atol=1e-4)


def test_reduced_precision_keeps_its_dtype_bfloat16_natively_float16_through_float32():
    """bfloat16 runs the fast path as it is; float16, whose squares overflow past 255, in float32. Both equal
    torch's float32 LRN within their rounding, under autocast as outside."""
    ours, ref = _pair(5, 0.75)
    torch.manual_seed(0)
    x = (torch.randn(2, 8, 3, 3) * 100).relu()  # window sums of squares up to ~1e5: past float16 65,504
    with pytest.raises(NotImplementedError):  # what this module replaces: torch has no CPU bfloat16 kernel
        ref(x.to(torch.bfloat16))
    for dtype, rtol in ((torch.bfloat16, 2e-2), (torch.float16, 2e-3)):
        low = x.to(dtype)
        got = ours(low)
        assert got.dtype == dtype and torch.isfinite(got).all(), dtype
        torch.testing.assert_close(got.float(), ref(low.float()), rtol=rtol, atol=1e-3)
    conv = nn.Conv2d(8, 8, 1)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        h = conv(x)
        got, expected = ours(h), ref(h)
        assert h.dtype == got.dtype == torch.bfloat16 and expected.dtype == torch.float32
        torch.testing.assert_close(got.float(), expected, rtol=2e-2, atol=1e-3)


def _op_types(model: nn.Module, path) -> list:
    onnx = pytest.importorskip('onnx')
    with torch.no_grad():
        torch.onnx.export(model, (torch.randn(1, 3, 64, 64),), str(path), dynamo=True, verbose=False,
                          external_data=False)
    return [node.op_type for node in onnx.load(str(path)).graph.node]


def test_cnnf_graph_export_is_torchs(tmp_path):
    """An exported graph holds torch's LRN (its decomposition), not the training path's slices."""
    pytest.importorskip('onnxscript')
    model = timm.create_model('dmlh_cnnf_16').eval()
    ours = _op_types(model, tmp_path / 'ours.onnx')
    for name, module in list(model.named_modules()):
        if isinstance(module, LocalResponseNorm):
            parent, _, child = name.rpartition('.')
            setattr(model.get_submodule(parent), child, nn.LocalResponseNorm(module.size, module.alpha,
                                                                             module.beta, module.k))
    assert ours == _op_types(model, tmp_path / 'torch.onnx')


def test_meta_tensors_in_bfloat16_keep_their_dtype():
    """timm's suite builds models on the meta device and runs them in bfloat16 (autocast knows no 'meta')."""
    ours, _ = _pair(5, 0.75)
    y = ours(torch.empty(1, 8, 3, 3, device='meta', dtype=torch.bfloat16))
    assert y.device.type == 'meta' and y.dtype == torch.bfloat16
