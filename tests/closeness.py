"""The project's one standard for "same outputs": agreement to 1e-5 relative to the reference's scale."""

import torch

RTOL = 1e-5


def assert_close(got, ref, what: str = "output", rtol: float = RTOL) -> None:
    """Agreement to ``rtol`` relative to the reference's scale (elementwise, with a floor at
    ``rtol * max|ref|`` so values near zero are not held to a relative bound they cannot meet:
    two correct float32 implementations that sum in another order differ by that much)."""
    assert got.shape == ref.shape, f"{what}: shape {tuple(got.shape)} vs reference {tuple(ref.shape)}"
    if ref.dtype == torch.bool:
        assert torch.equal(got, ref), what
        return
    scale = ref.abs().max().item() if ref.numel() else 0.0
    torch.testing.assert_close(got, ref, rtol=rtol, atol=rtol * max(scale, 1e-12), msg=lambda m: f"{what}: {m}")
