"""The DFT-matmul spectral convolution against rfft2 and against a dense complex DFT."""

import numpy as np
import pytest
import torch

from training.layers.spectral import SpectralConv2d


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
    x = torch.randn(3, n, n, c_in)
    y_dft, y_fft = dft(x), fft(x)
    scale = y_fft.abs().max().item()
    assert torch.allclose(y_dft, y_fft, atol=1e-5 * scale, rtol=0)


def test_gradients_agree():
    dft, fft = _pair(3, 3, 8, seed=1)
    x = torch.randn(2, 32, 32, 3)
    target = torch.randn(2, 32, 32, 3)
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
    x = torch.randn(1, n, n, c_in, dtype=torch.float32)
    w = (dft.weight_real + 1j * dft.weight_imag).detach().numpy().astype(np.complex128)
    spec = np.fft.fft2(x[0].double().numpy(), axes=(0, 1))  # (n, n, c_in)
    out = np.zeros((n, n, c_out), dtype=np.complex128)
    rows = [*range(m), *range(n - m, n)]
    for i, ky in enumerate(rows):
        for kx in range(m):
            mixed = spec[ky, kx] @ w[i, kx]
            out[ky, kx] += mixed
            if kx > 0:  # the conjugate mode that rfft2's half spectrum stands for
                out[(-ky) % n, (-kx) % n] += np.conj(mixed)
    expected = np.fft.ifft2(out, axes=(0, 1)).real
    got = dft(x)[0].double().detach().numpy()
    assert np.max(np.abs(got - expected)) < 1e-5 * np.max(np.abs(expected))


def test_spectral_runs_in_float32_under_autocast():
    layer = SpectralConv2d(2, 2, 4)
    x = torch.randn(2, 16, 16, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x.bfloat16())
    assert y.dtype == torch.float32
    assert torch.allclose(y, layer(x.bfloat16().float()), atol=1e-6)


def test_too_many_modes_for_the_grid():
    with pytest.raises(ValueError, match="modes need a grid"):
        SpectralConv2d(1, 1, 9)(torch.randn(1, 16, 16, 1))


def test_unknown_path():
    with pytest.raises(ValueError, match="spectral path"):
        SpectralConv2d(1, 1, 4, "wavelet")
