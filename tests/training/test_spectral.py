"""The DFT-matmul spectral convolution against rfft2 and against a dense complex DFT."""

import numpy as np
import pytest
import torch

from training.layers.spectral import DFTMatrices, SpectralConv2d


def _pair(c_in, c_out, m, seed=0):
    torch.manual_seed(seed)
    dft = SpectralConv2d(c_in, c_out, m, "dft")
    with torch.no_grad():  # O(1) weights, not the small init, so errors are not hidden
        dft.weight_real.normal_()
        dft.weight_imag.normal_()
    fft = SpectralConv2d(c_in, c_out, m, "fft")
    fft.load_state_dict(dft.state_dict())
    return dft, fft


@pytest.mark.parametrize(
    ("n", "m", "c_in", "c_out"), [(16, 4, 3, 2), (32, 16, 4, 5), (64, 12, 2, 2)]
)
def test_dft_path_equals_fft_path(n, m, c_in, c_out):
    dft, fft = _pair(c_in, c_out, m)
    x = torch.randn(3, c_in, n, n)
    y_dft, y_fft = dft(x), fft(x)
    scale = y_fft.abs().max().item()
    assert torch.allclose(y_dft, y_fft, atol=1e-5 * scale, rtol=0)


@pytest.mark.parametrize(("n", "m", "c_in", "c_out"), [(16, 4, 3, 2), (64, 12, 2, 5)])
def test_sandwich_order_of_exported_graphs_equals_the_fft_path(n, m, c_in, c_out):
    dft, fft = _pair(c_in, c_out, m, seed=2)
    x = torch.randn(3, c_in, n, n) + 3.0  # a large mean: the sandwich order keeps it apart too
    y_sandwich, y_fft = dft._forward_exported(x), fft(x)
    scale = y_fft.abs().max().item()
    assert torch.allclose(y_sandwich, y_fft, atol=1e-5 * scale, rtol=0)


def test_graph_matrices_are_the_complex_transform_over_y():
    """Independent check of the interleaved left operands against numpy's complex DFT."""
    n, m = 12, 3
    mats = DFTMatrices(n, m, torch.float64)
    z = np.random.default_rng(0).normal(size=(n, m)) + 1j * np.random.default_rng(1).normal(
        size=(n, m)
    )
    rows = [*range(m), *range(n - m, n)]  # ky = 0..m-1, -m..-1
    want = np.fft.fft(z, axis=0)[rows]  # (2m, m) complex, over ky
    interleaved = torch.from_numpy(np.stack([z.real, z.imag], 1).reshape(2 * n, m))
    got = (mats.graph_forward_y @ interleaved).numpy()
    assert np.allclose(got, np.concatenate([want.real, want.imag]), rtol=0, atol=1e-12)
    back = (mats.graph_inverse_y @ torch.from_numpy(got)).numpy().reshape(n, 2, m)
    full = np.zeros((n, m), complex)
    full[rows] = want
    expected = np.fft.ifft(full, axis=0)  # the kept modes' part of z
    assert np.allclose(back[:, 0] + 1j * back[:, 1], expected, rtol=0, atol=1e-12)


def test_gradients_agree():
    dft, fft = _pair(3, 3, 8, seed=1)
    x = torch.randn(2, 3, 32, 32)
    target = torch.randn(2, 3, 32, 32)
    grads = []
    for layer in (dft, fft):
        layer.zero_grad()
        ((layer(x) - target) ** 2).mean().backward()
        grads.append(
            torch.cat([layer.weight_real.grad.flatten(), layer.weight_imag.grad.flatten()])
        )
    assert torch.allclose(grads[0], grads[1], atol=1e-5 * grads[1].abs().max().item(), rtol=0)


def test_against_dense_complex_dft():
    """Independent check: numpy fft2, mix the kept modes, zero the rest, real part of ifft2."""
    n, m, c_in, c_out = 16, 3, 2, 3
    dft, _ = _pair(c_in, c_out, m, seed=2)
    x = torch.randn(1, c_in, n, n, dtype=torch.float32)
    w = (dft.weight_real + 1j * dft.weight_imag).detach().numpy().astype(np.complex128)
    spec = np.fft.fft2(x[0].double().numpy().transpose(1, 2, 0), axes=(0, 1))  # (n, n, c_in)
    out = np.zeros((n, n, c_out), dtype=np.complex128)
    rows = [*range(m), *range(n - m, n)]
    for i, ky in enumerate(rows):
        for kx in range(m):
            mixed = spec[ky, kx] @ w[kx, i]  # weights are indexed (kx, ky, in, out)
            out[ky, kx] += mixed
            if kx > 0:  # the conjugate mode that rfft2's half spectrum stands for
                out[(-ky) % n, (-kx) % n] += np.conj(mixed)
    expected = np.fft.ifft2(out, axes=(0, 1)).real
    got = dft(x)[0].double().detach().numpy().transpose(1, 2, 0)
    assert np.max(np.abs(got - expected)) < 1e-5 * np.max(np.abs(expected))


def test_spectral_runs_in_float32_under_autocast():
    layer = SpectralConv2d(2, 2, 4)
    x = torch.randn(2, 2, 16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x.bfloat16())
    assert y.dtype == torch.float32
    assert torch.allclose(y, layer(x.bfloat16().float()), atol=1e-6)


def test_too_many_modes_for_the_grid():
    with pytest.raises(ValueError, match="modes need a grid"):
        SpectralConv2d(1, 1, 9)(torch.randn(1, 1, 16, 16))


def test_unknown_path():
    with pytest.raises(ValueError, match="spectral path"):
        SpectralConv2d(1, 1, 4, "wavelet")


def test_fused_projection_head_equals_the_plain_one():
    from training.layers.projection import ProjectionHead

    torch.manual_seed(3)
    head = ProjectionHead(4, 32, 1)
    x = torch.randn(2, 4, 96, 96, requires_grad=True)  # 9216 points: tiles and a partial tile
    weight = torch.randn(2, 1, 96, 96)
    results = []
    for fused in (True, False):
        head.fused = fused
        x.grad = None
        head.zero_grad()
        y = head(x)
        (y * weight).sum().backward()
        grads = [x.grad] + [p.grad for p in head.parameters()]
        results.append([y.detach(), *[g.clone() for g in grads]])
    for a, b in zip(*results, strict=True):
        assert torch.allclose(a, b, atol=1e-5 * b.abs().max().item(), rtol=0)
