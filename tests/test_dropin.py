"""Code written for the official package, run unchanged: heads replaced by any module, the
``hiera.benchmarking`` module, and timm's ``num_classes=0`` convention for pooled features."""

import inspect

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import hiera


@pytest.fixture(scope="module")
def x():
    torch.manual_seed(0)
    return torch.randn(2, 3, 64, 64)


def small(**kw):
    torch.manual_seed(0)
    return hiera.Hiera(input_size=(64, 64), embed_dim=16, num_heads=1, stages=(1, 1, 2, 1), num_classes=7, **kw)


@pytest.mark.parametrize("make_head, out", [
    (lambda c: nn.Identity(), lambda c: c),
    (lambda c: nn.Linear(c, 10), lambda c: 10),
    (lambda c: nn.Sequential(nn.Linear(c, 32), nn.GELU(), nn.Linear(32, 5)), lambda c: 5),
])
def test_any_module_can_be_the_head(x, make_head, out):
    """As upstream, the model calls ``self.head(features)``: the replacement gets the pooled,
    normalised features and its output is returned as it is, in train and eval mode."""
    model = small()
    features = model.forward_head(model.forward_features(x), pre_logits=True)
    model.head = make_head(model.num_features)
    expected = model.head(features)
    for mode in (True, False):
        model.train(mode)
        with torch.no_grad():
            got = model(x)
            assert got.shape == (2, out(model.num_features))
            torch.testing.assert_close(got, expected.detach(), rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(model(x, return_logits=True), got)
            torch.testing.assert_close(model.forward_head(model.forward_features(x)), got)
    model.train()
    F.mse_loss(model(x), torch.zeros(2, out(model.num_features))).backward()  # trains through it
    assert model.patch_embed.proj.weight.grad is not None
    model.reset_classifier(3)  # and back to a fresh head of ours
    assert model.eval()(x).shape == (2, 3) and torch.allclose(model(x).sum(1), torch.ones(2))


def test_mae_model_with_a_replaced_head_still_pretrains(x):
    mae = hiera.MaskedAutoencoderHiera(input_size=(64, 64), embed_dim=8, stages=(1, 1, 1, 1), q_pool=2,
                                       decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=1)
    mae.head = nn.Identity()
    loss = mae(x, mask_ratio=0.5)[0]
    loss.backward()
    assert torch.isfinite(loss)


def test_num_classes_zero_gives_the_pooled_features(x):
    """timm's convention (the official model returned an empty [B, 0]); the state dict keeps the
    official layout, with an empty projection."""
    model = small()
    model.head = hiera.Head(model.num_features, 0)
    plain = small(head_init_scale=1.0)
    features = small().forward_head(small().forward_features(x), pre_logits=True)
    zero = hiera.Hiera(input_size=(64, 64), embed_dim=16, num_heads=1, stages=(1, 1, 2, 1), num_classes=0)
    zero.load_state_dict({k: v for k, v in small().state_dict().items() if not k.startswith("head.")}, strict=False)
    assert zero.state_dict()["head.projection.weight"].shape == (0, zero.num_features)
    for mode in (True, False):
        zero.train(mode)
        with torch.no_grad():
            torch.testing.assert_close(zero(x), features.detach())
    with torch.inference_mode():  # the CPU inference fast path took an empty weight before
        assert zero.eval()(x).shape == (2, zero.num_features)
        assert zero(x, return_logits=True).shape == (2, zero.num_features)
    plain.reset_classifier(0)
    assert plain.eval()(x).shape == (2, plain.num_features)


def test_benchmarking_module_as_upstream():
    from hiera.benchmarking import benchmark

    params = inspect.signature(benchmark).parameters
    assert list(params) == ["model", "device", "input_size", "batch_size", "runs", "throw_out", "use_fp16", "verbose"]
    assert [params[k].default for k in list(params)[1:]] == [0, (3, 224, 224), 64, 40, 0.25, False, False]
    model = hiera.Hiera(input_size=(64, 64), embed_dim=8, num_heads=1, stages=(1, 1, 1, 1), num_classes=3)
    model.train()
    calls = []
    model.register_forward_hook(lambda *a: calls.append(1))
    speed = benchmark(model, device="cpu", input_size=(3, 64, 64), batch_size=2, runs=4, throw_out=0.5)
    assert isinstance(speed, float) and speed > 0
    assert len(calls) == 4 and not model.training  # every run is a forward; the model is put in eval mode
    assert benchmark(model, device=torch.device("cpu"), input_size=(3, 64, 64), batch_size=1, runs=2,
                     use_fp16=True) > 0
    for kwargs, message in (({"runs": 0}, "runs must be a positive integer"),
                            ({"throw_out": 1.0}, r"throw_out must be in \[0, 1\)"),
                            ({"batch_size": 0}, "batch_size must be a positive integer"),
                            ({"input_size": (3, 0, 64)}, "input_size must be positive integers")):
        with pytest.raises(ValueError, match=message):
            benchmark(model, device="cpu", **kwargs)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available here; pass device='cpu'"):
            benchmark(model)


def test_explicit_pretrained_false_wins_over_a_checkpoint_in_the_name(monkeypatch):
    """As in timm: ``create_model("name.checkpoint", pretrained=False)`` builds without reading any
    weights (it downloaded them before); a misspelt checkpoint is still an error."""
    from hiera import zoo

    def no_reading(*args, **kwargs):
        raise AssertionError("weights were read although pretrained=False")

    monkeypatch.setattr(zoo, "read_weights", no_reading)
    model = hiera.create_model("hiera_tiny_224.mae_in1k", pretrained=False)
    assert isinstance(model, hiera.Hiera) and not hasattr(model, "load_report")
    with pytest.raises(hiera.CheckpointError, match="unknown checkpoint 'nope'.*mae_in1k"):
        hiera.create_model("hiera_tiny_224.nope", pretrained=False)
    with pytest.raises(AssertionError, match="weights were read"):  # the name alone still loads them
        hiera.create_model("hiera_tiny_224.mae_in1k")
