"""Networks: shapes for any size, conditioning paths, config round-trips and validation, determinism, batch independence."""
from __future__ import annotations

import json

import pytest
import torch

from difflab.models.embeddings import FourierEmbedding, sinusoidal_embedding
from difflab.models.mlp import MLP, MLPConfig, mlp_toy
from difflab.models.networks import build_network, network_kind, network_spec, time_scale_for
from difflab.models.unet import UNet, UNetConfig, unet_digits, unet_for_image, unet_mnist
from difflab.utils.config import ConfigError

TINY = dict(channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(1,), num_heads=2, groups=4,
            dropout=0.0)


def tiny(**changes) -> UNetConfig:
    return UNetConfig(**{**TINY, **changes})


def randomize_(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give zero-initialised output layers non-zero weights so every path affects the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return net.eval()


@pytest.mark.parametrize("shape,channels,levels", [
    ((8, 8), 1, (1, 2)), ((28, 28), 1, (1, 2, 2)), ((16, 12), 3, (1, 2)), ((7, 9), 2, (1, 2, 2)),
    ((5, 5), 1, (1, 1, 2)), ((1, 1), 1, (1, 2)), ((13, 28), 4, (1,)),
])
def test_unet_output_shape_equals_input_shape(shape, channels, levels):
    cfg = tiny(in_channels=channels, out_channels=channels, channel_mult=levels, attention_levels=(len(levels) - 1,))
    net = randomize_(UNet(cfg))
    x = torch.randn(2, channels, *shape)
    out = net(x, torch.tensor([3.0, 500.0]))
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_unet_out_channels_can_differ():
    net = UNet(tiny(in_channels=3, out_channels=6))  # e.g. eps and a learned variance (Nichol & Dhariwal)
    assert net(torch.randn(2, 3, 8, 8), torch.zeros(2)).shape == (2, 6, 8, 8)


def test_zero_initialised_output():
    net = UNet(tiny())
    assert torch.count_nonzero(net(torch.randn(2, 1, 8, 8), torch.ones(2))) == 0
    assert torch.count_nonzero(MLP(MLPConfig(hidden=16, depth=2))(torch.randn(3, 2), torch.ones(3))) == 0


@pytest.mark.parametrize("injection", ["add", "adagn"])
@pytest.mark.parametrize("embedding", ["sinusoidal", "fourier"])
def test_time_paths_and_gradients(injection, embedding):
    torch.manual_seed(0)
    net = randomize_(UNet(tiny(time_injection=injection, time_embedding=embedding)))
    x = torch.randn(2, 1, 8, 8)
    a, b = net(x, torch.full((2,), 10.0)), net(x, torch.full((2,), 900.0))
    assert not torch.allclose(a, b, atol=1e-4)
    net.train()
    net(x, torch.tensor([1.0, 2.0])).square().mean().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, missing
    assert all(p.grad.abs().sum() > 0 for n, p in net.named_parameters() if "freqs" not in n)


def test_time_embedding_distinguishes_nearby_times():
    t = torch.tensor([500.0, 501.0])  # one DDPM step apart
    for emb in (sinusoidal_embedding(t, 32), FourierEmbedding(32)(t)):
        assert (emb[0] - emb[1]).norm() > 0.05 * emb[0].norm()
    net = randomize_(UNet(tiny()))
    x = torch.randn(1, 1, 8, 8).expand(2, 1, 8, 8)
    out = net(x, t)
    assert (out[0] - out[1]).abs().max() > 1e-4


def test_time_scale_maps_schedule_ranges():
    class S:  # anything with t_max
        t_max = 999.0
    assert time_scale_for(S()) == pytest.approx(1000.0 / 999.0)
    S.t_max = 1.0
    # a continuous-time net at t sees the same input as a discrete-time net at 1000 t
    cont = UNet(tiny(time_scale=time_scale_for(S())))
    disc = UNet(tiny())
    disc.load_state_dict(cont.state_dict())
    randomize_(cont), randomize_(disc)
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(cont(x, torch.tensor([0.25, 0.7])), disc(x, torch.tensor([250.0, 700.0])))


def test_class_labels_change_output_and_null_label():
    net = randomize_(UNet(tiny(num_classes=10)))
    x, t = torch.randn(3, 1, 8, 8), torch.full((3,), 50.0)
    y = torch.tensor([1, 2, 10])  # 10 = null label
    out = net(x, t, {"y": y})
    assert not torch.allclose(out[0], net(x, t, {"y": torch.tensor([3, 2, 10])})[0])
    null = net(x, t, {"y": torch.full((3,), 10)})
    torch.testing.assert_close(net(x, t), null)  # no label == null label
    torch.testing.assert_close(out[2], null[2])
    with pytest.raises(ValueError, match="0..10"):
        net(x, t, {"y": torch.tensor([0, 1, 11])})
    net.train()
    net(x, t, {"y": y}).sum().backward()
    assert net.label_embed.table.weight.grad[[1, 2, 10]].abs().sum(1).gt(0).all()
    assert net.label_embed.table.weight.grad[5].abs().sum() == 0


def test_image_conditioning():
    net = randomize_(UNet(tiny(cond_channels=2)))
    x, t = torch.randn(2, 1, 9, 11), torch.full((2,), 5.0)
    img = torch.randn(2, 2, 9, 11, requires_grad=True)
    out = net(x, t, {"image": img})
    assert out.shape == x.shape
    assert not torch.allclose(out, net(x, t, {"image": img + 1}))
    torch.testing.assert_close(net(x, t), net(x, t, {"image": torch.zeros(2, 2, 9, 11)}))
    out.sum().backward()
    assert img.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="image"):
        net(x, t, {"image": torch.randn(2, 3, 9, 11)})


def test_context_cross_attention_and_mask():
    net = randomize_(UNet(tiny(context_dim=6)))
    x, t = torch.randn(2, 1, 8, 8), torch.full((2,), 5.0)
    ctx = torch.randn(2, 4, 6, requires_grad=True)
    out = net(x, t, {"context": ctx})
    assert not torch.allclose(out, net(x, t, {"context": ctx + 1}))
    out.sum().backward()
    assert ctx.grad.abs().sum() > 0
    # masked tokens are ignored
    mask = torch.tensor([[True, True, False, False], [True, False, False, False]])
    a = net(x, t, {"context": ctx, "context_mask": mask})
    ctx2 = ctx.detach().clone()
    ctx2[:, 2:] = torch.randn(2, 2, 6)
    ctx2[1, 1] = 0.0
    torch.testing.assert_close(a, net(x, t, {"context": ctx2, "context_mask": mask}))
    # an all-masked element gets no cross-attention at all (finite, equal to no context)
    empty = torch.zeros(2, 4, dtype=torch.bool)
    torch.testing.assert_close(net(x, t, {"context": ctx, "context_mask": empty}), net(x, t))


def test_unused_conditioning_keys_are_rejected():
    net = UNet(tiny())
    with pytest.raises(ValueError, match="y"):
        net(torch.randn(1, 1, 8, 8), torch.zeros(1), {"y": torch.tensor([1])})
    with pytest.raises(ValueError, match="in_channels|shape"):
        net(torch.randn(1, 2, 8, 8), torch.zeros(1))


def test_config_round_trip_gives_identical_outputs():
    cfg = tiny(num_classes=3, cond_channels=1, context_dim=4, time_embedding="fourier", time_injection="add",
               time_scale=2.5)
    d = json.loads(json.dumps(cfg.to_dict()))
    assert UNetConfig.from_dict(d) == cfg
    a = randomize_(UNet(cfg))
    b = build_network("unet", d).eval()
    b.load_state_dict(a.state_dict())
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([1.0, 2.0])
    cond = {"y": torch.tensor([0, 3]), "image": torch.randn(2, 1, 8, 8), "context": torch.randn(2, 3, 4)}
    assert torch.equal(a(x, t, cond), b(x, t, cond))
    spec = network_spec(a)
    assert spec["kind"] == "unet" and network_kind(build_network(**spec)) == "unet"
    m = MLP(MLPConfig(hidden=16, depth=2, num_classes=4))
    spec = json.loads(json.dumps(network_spec(m)))
    m2 = build_network(spec["kind"], spec["config"])
    m2.load_state_dict(m.state_dict())
    randomize_(m), randomize_(m2)
    xm = torch.randn(5, 2)
    assert torch.equal(m(xm, torch.ones(5), {"y": torch.arange(5) % 5}), m2(xm, torch.ones(5), {"y": torch.arange(5) % 5}))


@pytest.mark.parametrize("cls,field,value", [
    (UNetConfig, "channels", 0), (UNetConfig, "dropout", 1.5), (UNetConfig, "channel_mult", []),
    (UNetConfig, "attention_levels", [5]), (UNetConfig, "groups", 7), (UNetConfig, "num_heads", 3),
    (UNetConfig, "time_scale", -1.0), (UNetConfig, "num_classes", -2), (UNetConfig, "time_injection", "film"),
    (UNetConfig, "time_embedding", "learned"), (UNetConfig, "in_channels", "one"), (UNetConfig, "num_res_blocks", 0),
    (MLPConfig, "hidden", 0), (MLPConfig, "depth", -1), (MLPConfig, "time_scale", 0.0), (MLPConfig, "dropout", -0.1),
    (MLPConfig, "num_classes", -1),
])
def test_bad_config_values_name_the_field(cls, field, value):
    with pytest.raises(ConfigError, match=field):
        cls.from_dict({field: value})


def test_unknown_keys_and_kinds():
    with pytest.raises(ConfigError, match="width"):
        build_network("unet", {"width": 3})
    with pytest.raises(ConfigError, match="transformer"):
        build_network("transformer", {})  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        network_kind(torch.nn.Linear(2, 2))


def test_determinism_with_a_seed():
    def make():
        torch.manual_seed(123)
        net = UNet(tiny(time_embedding="fourier", dropout=0.2))
        x = torch.randn(2, 1, 8, 8)
        torch.manual_seed(7)
        return net.train()(x, torch.tensor([1.0, 40.0])).sum(), net.state_dict()
    (a, sa), (b, sb) = make(), make()
    assert torch.equal(a, b) and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_batch_elements_are_independent():
    net = randomize_(UNet(tiny(num_classes=4, context_dim=3)))
    x, t = torch.randn(4, 1, 12, 10), torch.tensor([1.0, 10.0, 100.0, 999.0])
    cond = {"y": torch.tensor([0, 1, 4, 2]), "context": torch.randn(4, 2, 3),
            "context_mask": torch.tensor([[1, 0], [1, 1], [0, 0], [0, 1]]).bool()}
    batched = net(x, t, cond)
    single = torch.cat([net(x[i:i + 1], t[i:i + 1], {k: v[i:i + 1] for k, v in cond.items()}) for i in range(4)])
    torch.testing.assert_close(batched, single, rtol=1e-4, atol=1e-5)
    perm = torch.tensor([2, 0, 3, 1])
    torch.testing.assert_close(net(x[perm], t[perm], {k: v[perm] for k, v in cond.items()}), batched[perm],
                               rtol=1e-4, atol=1e-5)


def test_mlp_shapes_labels_and_gradients():
    net = randomize_(MLP(MLPConfig(dim=3, hidden=32, depth=2, num_classes=5, time_embedding="fourier")))
    x = torch.randn(6, 3)
    out = net(x, torch.linspace(0, 999, 6), {"y": torch.tensor([0, 1, 2, 3, 4, 5])})
    assert out.shape == x.shape
    torch.testing.assert_close(net(x, 3.0), net(x, 3.0, {"y": torch.full((6,), 5)}))
    assert not torch.allclose(net(x, 3.0, {"y": torch.zeros(6, dtype=torch.long)}), net(x, 3.0))
    assert not torch.allclose(net(x, 3.0), net(x, 4.0))
    net.train()
    net(x, torch.ones(6)).sum().backward()
    assert all(p.grad is not None for n, p in net.named_parameters() if "freqs" not in n)
    with pytest.raises(ValueError, match="context"):
        net(x, 1.0, {"context": torch.zeros(6, 1, 1)})


def test_presets_fit_their_images():
    for cfg, shape in ((unet_digits(), (1, 8, 8)), (unet_mnist(), (1, 28, 28)), (unet_for_image(32, 3), (3, 32, 32))):
        net = UNet(cfg)
        assert net(torch.randn(1, *shape), torch.zeros(1)).shape == (1, *shape)
    assert MLP(mlp_toy())(torch.randn(4, 2), torch.zeros(4)).shape == (4, 2)


def test_float64_networks_run():
    net = UNet(tiny(time_embedding="fourier", num_classes=2)).double()
    assert net(torch.randn(2, 1, 8, 8, dtype=torch.float64), torch.tensor([1.0, 2.0])).dtype == torch.float64
    mlp = MLP(MLPConfig(hidden=8, depth=1)).double()
    assert mlp(torch.randn(3, 2, dtype=torch.float64), 0.5).dtype == torch.float64


def test_dropout_rate_and_scale():
    from difflab.models.embeddings import Dropout
    d = Dropout(0.25)
    x = torch.ones(200_000)
    torch.manual_seed(0)
    y = d(x)
    assert abs((y == 0).float().mean().item() - 0.25) < 0.01
    assert abs(y.mean().item() - 1.0) < 0.01 and torch.allclose(y[y != 0], torch.full_like(y[y != 0], 4 / 3))
    assert torch.equal(d.eval()(x), x)
