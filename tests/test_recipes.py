"""hiera.train.recipes: the paper's presets, parameter groups, optimizer and learning-rate schedule."""

import dataclasses
import math

import pytest
import torch

from hiera.mae import MaskedAutoencoderHiera
from hiera.model import Hiera
from hiera.train import recipes
from hiera.train.recipes import (
    FinetuneRecipe,
    PretrainRecipe,
    WarmupCosineLR,
    adamw,
    build_optimizer,
    build_scheduler,
    finetune_recipe,
    lr_schedule,
    model_size,
    param_groups,
    pretrain_recipe,
)

SIZES = ("tiny", "small", "base", "base_plus", "large", "huge")

# The Hiera paper's (arXiv 2306.00989, appendix) values, written out independently of the module.
PRETRAIN_DROP_PATH = dict(tiny=0.0, small=0.0, base=0.2, base_plus=0.2, large=0.2, huge=0.3)
FT = dict(  # size: (layer_decay, base_lr per 1024, epochs, drop_path)
    tiny=(0.65, 2e-3, 300, 0.1), small=(0.65, 2e-3, 200, 0.1), base=(0.7, 2e-3, 100, 0.1),
    base_plus=(0.7, 1e-3, 100, 0.1), large=(0.85, 1e-3, 50, 0.1), huge=(0.85, 1e-3, 50, 0.3),
)


def small_hiera(**kwargs):
    # 5 blocks over 4 stages, 64px input: a few thousand parameters, built in milliseconds.
    return Hiera(input_size=(64, 64), embed_dim=16, num_heads=1, stages=(1, 1, 2, 1), num_classes=10, **kwargs)


# ------------------------------------------------------------------ presets
@pytest.mark.parametrize("size", SIZES)
def test_pretrain_preset(size):
    r = pretrain_recipe(size)
    assert isinstance(r, PretrainRecipe) and r.size == size
    assert r.betas == (0.9, 0.95)
    assert r.base_lr == 8e-4 and r.lr_reference_batch == 4096 and r.batch_size == 4096
    assert r.weight_decay == 0.05 and r.layer_decay is None
    assert r.epochs == 1600 and r.warmup_epochs == 40 and r.min_lr == 0.0
    assert r.mask_ratio == 0.6 and r.norm_pix_loss
    assert r.crop_scale == (0.2, 1.0) and r.interpolation == "bicubic" and r.hflip == 0.5
    assert r.drop_path_rate == PRETRAIN_DROP_PATH[size]


@pytest.mark.parametrize("size", SIZES)
def test_finetune_preset(size):
    r = finetune_recipe(size)
    layer_decay, base_lr, epochs, drop_path = FT[size]
    assert isinstance(r, FinetuneRecipe) and r.size == size
    assert (r.layer_decay, r.base_lr, r.epochs, r.drop_path_rate) == (layer_decay, base_lr, epochs, drop_path)
    assert r.betas == (0.9, 0.999) and r.weight_decay == 0.05
    assert r.lr_reference_batch == 1024 and r.batch_size == 1024 and r.warmup_epochs == 5
    assert r.rand_augment == "rand-m9-mstd0.5-inc1" and r.reprob == 0.25
    assert (r.mixup, r.cutmix, r.label_smoothing) == (0.8, 1.0, 0.1)
    assert r.ema is False


@pytest.mark.parametrize(
    "name, size",
    [("hiera_base_224", "base"), ("mae_hiera_base_224", "base"), ("hiera_base_plus_224", "base_plus"),
     ("mae_hiera_base_plus_224", "base_plus"), ("hiera_tiny_224", "tiny"), ("huge", "huge"),
     ("hiera_small_abswin_256", "small"), ("hiera_large_224.mae_in1k", "large")],
)
def test_model_size_from_names(name, size):
    assert model_size(name) == size
    assert pretrain_recipe(name).size == size and finetune_recipe(name).size == size


def test_model_size_errors():
    with pytest.raises(ValueError, match="video"):
        pretrain_recipe("hiera_base_16x224")
    with pytest.raises(ValueError, match="size"):
        finetune_recipe("resnet50")
    with pytest.raises(ValueError, match="zoo"):
        model_size(small_hiera())
    model = small_hiera()
    model.zoo_name = "hiera_small_224"  # what hiera.create_model sets
    assert model_size(model) == "small"


def test_lr_scales_linearly_with_batch():
    r = pretrain_recipe("base")
    assert r.lr() == pytest.approx(8e-4)
    assert r.lr(256) == pytest.approx(8e-4 * 256 / 4096)
    assert r.lr(8192) == pytest.approx(1.6e-3)
    f = finetune_recipe("large")
    assert f.lr(64) == pytest.approx(1e-3 * 64 / 1024)
    assert r.scaled(batch_size=512).lr() == pytest.approx(8e-4 * 512 / 4096)
    with pytest.raises(ValueError):
        r.lr(-1)


def test_scaled_keeps_ratios():
    r = pretrain_recipe("tiny").scaled(epochs=20, batch_size=64)
    assert r.epochs == 20 and r.batch_size == 64
    assert r.warmup_epochs == pytest.approx(20 * 40 / 1600)  # 2.5% of the run, as in the paper
    assert r.mask_ratio == 0.6 and r.betas == (0.9, 0.95)  # the rest is untouched
    assert pretrain_recipe("tiny").scaled().warmup_epochs == 40

    f = finetune_recipe("base")
    assert f.scaled(epochs=100).warmup_epochs == 5
    assert f.scaled(epochs=50).warmup_epochs == 5  # 10% exactly
    assert f.scaled(epochs=10).warmup_epochs == pytest.approx(1.0)  # capped at 10% of a short run
    assert f.scaled(epochs=10, batch_size=32).lr() == pytest.approx(2e-3 * 32 / 1024)
    with pytest.raises(ValueError):
        f.scaled(epochs=0)


def test_schedule_steps():
    r = pretrain_recipe("tiny").scaled(epochs=20)
    assert r.schedule_steps(10) == (200, 5)  # 0.5 warmup epochs x 10 steps
    assert pretrain_recipe("tiny").scaled(epochs=1).schedule_steps(3) == (3, 1)  # never rounds to 0
    assert dataclasses.replace(r, warmup_epochs=0).schedule_steps(10) == (200, 0)


def test_recipe_to_dict_and_mixup_args():
    d = finetune_recipe("base").to_dict()
    assert d["layer_decay"] == 0.7 and d["size"] == "base"
    args = finetune_recipe("base").mixup_args(num_classes=8)
    assert args["mixup_alpha"] == 0.8 and args["cutmix_alpha"] == 1.0 and args["label_smoothing"] == 0.1
    from timm.data import Mixup

    Mixup(**args)  # accepted by timm


# ------------------------------------------------------------------ parameter groups
def _group_of(groups, model):
    ids = {id(p): g for g in groups for p in g["params"]}
    return {name: ids[id(p)] for name, p in model.named_parameters()}


@pytest.mark.parametrize("layer_decay", [None, 0.65])
def test_no_weight_decay_on_biases_norms_pos_embed(layer_decay):
    model = small_hiera()
    groups = param_groups(model, 0.05, layer_decay=layer_decay)
    by_name = _group_of(groups, model)
    assert len(by_name) == len(list(model.parameters()))  # every parameter exactly once
    for name, param in model.named_parameters():
        wd = by_name[name]["weight_decay"]
        if name.endswith(".bias") or "norm" in name or name == "pos_embed":
            assert wd == 0.0, name
        else:
            assert param.ndim > 1 and wd == 0.05, name
    assert by_name["blocks.0.attn.qkv.weight"]["weight_decay"] == 0.05
    assert by_name["head.projection.weight"]["weight_decay"] == 0.05


def test_no_weight_decay_mae_embeddings_and_tokens():
    model = MaskedAutoencoderHiera(
        input_size=(64, 64), embed_dim=16, num_heads=1, stages=(1, 1, 2, 1), q_pool=2,
        decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2,
    )
    by_name = _group_of(param_groups(model, 0.05), model)
    for name in ("pos_embed", "decoder_pos_embed", "mask_token", "encoder_norm.weight", "decoder_embed.bias"):
        assert by_name[name]["weight_decay"] == 0.0, name
    for name in ("decoder_embed.weight", "decoder_pred.weight", "multi_scale_fusion_heads.0.weight"):
        assert by_name[name]["weight_decay"] == 0.05, name


def test_layer_decay_scales_match_timm_convention():
    """Measured convention (timm's param_groups_layer_decay with Hiera.group_matcher): the stem is
    layer 0, block i is layer i + 1, the final norm shares the last block's layer L, the head is
    layer L + 1, and lr_scale = decay ** (L + 1 - layer_id)."""
    decay = 0.65
    model = small_hiera()
    num_blocks = len(model.blocks)  # L = 5
    by_name = _group_of(param_groups(model, 0.05, layer_decay=decay), model)
    scale = {name: g["lr_scale"] for name, g in by_name.items()}
    expected_stem = decay ** (num_blocks + 1)
    for name in ("pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias"):
        assert scale[name] == pytest.approx(expected_stem), name
    for i in range(num_blocks):
        for name in (f"blocks.{i}.attn.qkv.weight", f"blocks.{i}.norm1.bias", f"blocks.{i}.mlp.fc2.weight"):
            assert scale[name] == pytest.approx(decay ** (num_blocks - i)), name
    assert scale["norm.weight"] == pytest.approx(decay)  # grouped with the last block
    assert scale["head.projection.weight"] == 1.0 and scale["head.projection.bias"] == 1.0
    # the exact numbers for this 5-block model
    assert scale["pos_embed"] == pytest.approx(0.65 ** 6)
    assert scale["blocks.0.attn.qkv.weight"] == pytest.approx(0.65 ** 5)
    assert scale["blocks.4.attn.qkv.weight"] == pytest.approx(0.65)


def test_build_optimizer_honours_lr_scale():
    model = small_hiera()
    recipe = finetune_recipe("tiny")
    opt = build_optimizer(model, recipe, batch_size=64)
    assert isinstance(opt, torch.optim.AdamW)
    peak = 2e-3 * 64 / 1024
    for group in opt.param_groups:
        assert group["betas"] == (0.9, 0.999)
        assert group["lr"] == pytest.approx(peak * group["lr_scale"])
    assert min(g["lr_scale"] for g in opt.param_groups) == pytest.approx(0.65 ** 6)

    opt = build_optimizer(model, pretrain_recipe("tiny").scaled(batch_size=128))
    assert all(g["lr_scale"] == 1.0 and g["betas"] == (0.9, 0.95) for g in opt.param_groups)
    assert all(g["lr"] == pytest.approx(8e-4 * 128 / 4096) for g in opt.param_groups)
    assert {g["weight_decay"] for g in opt.param_groups} == {0.0, 0.05}


def test_adamw_is_fused_and_steps_like_the_unfused_optimizer():
    """The fused kernel on CPU float parameters; the same trajectory as torch's default AdamW, and
    state dicts that load into either."""
    torch.manual_seed(0)
    model = small_hiera()
    twin = small_hiera()
    twin.load_state_dict(model.state_dict())
    model_start = {k: v.clone() for k, v in model.state_dict().items()}
    groups = param_groups(model, 0.05)
    fused = adamw(groups, lr=1e-3, betas=(0.9, 0.95), weight_decay=0.05)
    assert fused.defaults["fused"] is True
    plain = torch.optim.AdamW(param_groups(twin, 0.05), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.05)
    assert not plain.defaults["fused"]
    # The same gradients into both (Adam divides by the gradient's running scale, so a model's own
    # gradients, which differ in the last bit once the weights do, would make the two drift apart).
    for _ in range(3):
        for a, b in zip(model.parameters(), twin.parameters()):
            a.grad = torch.randn_like(a)
            b.grad = a.grad.clone()
        fused.step()
        plain.step()
    for (name, a), b in zip(model.named_parameters(), twin.parameters()):
        assert not torch.equal(a, model_start[name]), name
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=name)
    moved = a.detach().clone()
    # a fused optimizer resumes from the unfused one's state (and the step goes on identically)
    resumed = adamw(param_groups(model, 0.05), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.05)
    resumed.load_state_dict(plain.state_dict())
    assert int(resumed.state_dict()["state"][0]["step"]) == 3
    assert torch.equal(a.detach(), moved)
    # parameters the fused kernel cannot take (no float dtype) fall back to the default
    assert not adamw([torch.nn.Parameter(torch.zeros(2, dtype=torch.complex64))], lr=1e-3).defaults["fused"]


# ------------------------------------------------------------------ schedule
def closed_form(step, total, warmup, base, min_lr):
    if step < warmup:
        return base * step / warmup
    return min_lr + (base - min_lr) * 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))


@pytest.mark.parametrize("min_lr", [0.0, 1e-5])
def test_lr_schedule_values(min_lr):
    total, warmup, base = 1000, 100, 1e-3
    assert lr_schedule(0, total, warmup, base, min_lr) == 0.0
    assert lr_schedule(50, total, warmup, base, min_lr) == pytest.approx(base / 2)
    assert lr_schedule(warmup, total, warmup, base, min_lr) == pytest.approx(base)  # end of warmup: peak
    middle = warmup + (total - warmup) // 2
    assert lr_schedule(middle, total, warmup, base, min_lr) == pytest.approx((base + min_lr) / 2)
    assert lr_schedule(total, total, warmup, base, min_lr) == pytest.approx(min_lr)
    assert lr_schedule(total + 10, total, warmup, base, min_lr) == pytest.approx(min_lr)  # stays at the floor
    for step in (1, 99, 100, 101, 333, 777, 999):
        assert lr_schedule(step, total, warmup, base, min_lr) == pytest.approx(
            closed_form(step, total, warmup, base, min_lr), rel=1e-12, abs=1e-15
        )
    # no warmup: starts at the peak
    assert lr_schedule(0, total, 0, base) == pytest.approx(base)
    with pytest.raises(ValueError):
        lr_schedule(0, 10, 11, base)


def test_scheduler_sets_scaled_lrs_and_round_trips():
    model = small_hiera()
    recipe = finetune_recipe("tiny").scaled(epochs=10, batch_size=32)
    opt = build_optimizer(model, recipe)
    sched = build_scheduler(opt, recipe, steps_per_epoch=7)
    total, warmup = recipe.schedule_steps(7)
    assert (sched.total_steps, sched.warmup_steps) == (total, warmup) == (70, 7)
    peak = recipe.lr()
    assert all(g["lr"] == 0.0 for g in opt.param_groups)  # step 0 of the warmup
    for _ in range(20):
        opt.step()
        sched.step()
    assert sched.last_step == 20
    for group in opt.param_groups:
        assert group["lr"] == pytest.approx(closed_form(20, total, warmup, peak, 0.0) * group["lr_scale"])

    state = sched.state_dict()
    lrs = [g["lr"] for g in opt.param_groups]
    # A fresh optimizer and scheduler (as after a restart) restored from the state dicts.
    opt2 = build_optimizer(small_hiera(), recipe)
    sched2 = build_scheduler(opt2, recipe, steps_per_epoch=7)
    assert sched2.last_step == 0
    sched2.load_state_dict(state)
    assert [g["lr"] for g in opt2.param_groups] == lrs  # exactly
    assert sched2.state_dict() == state
    for _ in range(5):
        sched.step()
        sched2.step()
    assert [g["lr"] for g in opt2.param_groups] == [g["lr"] for g in opt.param_groups]
    assert sched.lr == sched2.lr == pytest.approx(closed_form(25, total, warmup, peak, 0.0))

    # torch's optimizer state dict carries lr_scale along, so the usual resume order works too.
    opt3 = build_optimizer(small_hiera(), recipe)
    opt3.load_state_dict(opt.state_dict())
    sched3 = WarmupCosineLR(opt3, 1, 0, base_lr=1.0)  # wrong settings, replaced by the state dict
    sched3.load_state_dict(sched.state_dict())
    assert [g["lr"] for g in opt3.param_groups] == [g["lr"] for g in opt.param_groups]


# ------------------------------------------------------------------ the paper's tables, as data
# Every value the Hiera paper's recipe tables give (arXiv 2306.00989, appendix; as quoted in the
# project's reference notes, hiera-paper-numbers.md), written out here independently of
# hiera/train/recipes.py, so that a preset drifting from the paper fails. A field maps to one value for
# every size the table covers, or to {size: value}. Values a table leaves open (two options) are in
# TABLE_OPTIONS; values the tables do not give at all are in NOT_IN_TABLES.
_B_TO_H = ("base", "base_plus", "large", "huge")  # the video tables cover B, B+, L, H only

PAPER_TABLES = {
    "Tab. 14a (MAE pretraining, images)": (pretrain_recipe, SIZES, dict(
        betas=(0.9, 0.95), weight_decay=0.05, base_lr=8e-4, batch_size=4096, lr_reference_batch=4096,
        warmup_epochs=40, epochs=1600, crop_scale=(0.2, 1.0), mask_ratio=0.6,
        drop_path_rate=dict(tiny=0.0, small=0.0, base=0.2, base_plus=0.2, large=0.2, huge=0.3),
    )),
    "Tab. 14b (fine-tuning, images)": (finetune_recipe, SIZES, dict(
        base_lr=dict(tiny=2e-3, small=2e-3, base=2e-3, base_plus=1e-3, large=1e-3, huge=1e-3),
        batch_size=1024, lr_reference_batch=1024, warmup_epochs=5,
        epochs=dict(tiny=300, small=200, base=100, base_plus=100, large=50, huge=50),
        rand_augment="rand-m9-mstd0.5-inc1",  # RandAugment (9, 0.5)
        mixup=0.8, cutmix=1.0, label_smoothing=0.1,
        drop_path_rate=dict(tiny=0.1, small=0.1, base=0.1, base_plus=0.1, huge=0.3),  # L: TABLE_OPTIONS
        layer_decay=dict(tiny=0.65, small=0.65, base=0.7, base_plus=0.7, large=0.85, huge=0.85),
    )),
    "Tab. 11a (MAE pretraining, video)": (recipes.video_pretrain_recipe, _B_TO_H, dict(
        base_lr=dict(base=8e-4, base_plus=8e-4, large=8e-4, huge=3.2e-4),  # H: "3.2e-4 at 3200 epochs"
        batch_size=512, lr_reference_batch=512, warmup_epochs=120, epochs=3200,
        repeat_aug=4,  # repeated sampling x4
        crop_scale=(0.5, 1.0), mask_ratio=0.9,
        drop_path_rate=dict(base=0.1, base_plus=0.2, large=0.2, huge=0.4),
    )),
    "Tab. 11b (fine-tuning, video)": (recipes.video_finetune_recipe, _B_TO_H, dict(
        base_lr=dict(base=8e-4, base_plus=8e-4, large=8e-4, huge=4e-4),
        batch_size=256, lr_reference_batch=256, warmup_epochs=10,
        epochs=dict(base=150, base_plus=150, large=100, huge=100),
        rand_augment="rand-m7-mstd0.5-inc1",  # RandAugment (7, 0.5)
        mixup=0.8, cutmix=1.0, label_smoothing=0.1, clip_grad=5.0,
        head_dropout=dict(base=0.3, base_plus=0.3, large=0.5, huge=0.5),
        drop_path_rate=dict(base=0.2, base_plus=0.2, large=0.2, huge=0.3),
    )),
}

# Where a table gives options without saying which applies to the preset: the options, and the
# one the module picked (documented next to the value in hiera/train/recipes.py).
TABLE_OPTIONS = [  # (recipe function, sizes, field, the table's options, the value used)
    (finetune_recipe, ("large",), "drop_path_rate", (0.1, 0.2), 0.1),  # Tab. 14b "0.1 or 0.2 (L)"
    (recipes.video_finetune_recipe, ("base", "base_plus"), "layer_decay", (0.85, 0.8), 0.8),  # Tab. 11b
    (recipes.video_finetune_recipe, ("large", "huge"), "layer_decay", (0.925, 0.9, 0.875), 0.875),  # Tab. 11b
]

# Values the tables do not give, with the module's documented choice (so that they, too, change
# only on purpose). Hiera-T/S have no video models in the paper: their video values are borrowed.
NOT_IN_TABLES = {
    pretrain_recipe: (SIZES, dict(min_lr=0.0, layer_decay=None, norm_pix_loss=True, hflip=0.5,
                                  interpolation="bicubic", input_size=224)),
    finetune_recipe: (SIZES, dict(min_lr=0.0, betas=(0.9, 0.999), weight_decay=0.05, reprob=0.25, remode="pixel",
                                  mixup_prob=1.0, mixup_switch_prob=0.5, ema=False, crop_scale=(0.08, 1.0))),
    recipes.video_pretrain_recipe: (SIZES, dict(min_lr=0.0, betas=(0.9, 0.95), weight_decay=0.05, hflip=0.5,
                                                crop_ratio=(0.75, 1.3333), frame_stride=4, num_frames=16)),
    recipes.video_finetune_recipe: (SIZES, dict(min_lr=1e-6, betas=(0.9, 0.999), weight_decay=0.05, reprob=0.25,
                                                repeat_aug=1, crop_scale=(0.08, 1.0), frame_stride=4, num_frames=16)),
}
BORROWED_FOR_TINY_SMALL = {  # T, S video values: not in the paper's tables (see recipes.py)
    recipes.video_pretrain_recipe: dict(drop_path_rate=0.0, base_lr=8e-4),  # Tab. 14a's T/S drop path; B's lr
    recipes.video_finetune_recipe: dict(  # the B/B+ column of Tab. 11b
        base_lr=8e-4, epochs=150, layer_decay=0.8, drop_path_rate=0.2, head_dropout=0.3),
}


def _table_cases():
    for table, (make, sizes, fields) in PAPER_TABLES.items():
        for field, value in fields.items():
            for size in sizes:
                if isinstance(value, dict):
                    if size in value:
                        yield pytest.param(make, size, field, value[size], id=f"{table[:8]}-{size}-{field}")
                else:
                    yield pytest.param(make, size, field, value, id=f"{table[:8]}-{size}-{field}")


@pytest.mark.parametrize("make, size, field, expected", list(_table_cases()))
def test_presets_equal_the_paper_tables(make, size, field, expected):
    value = getattr(make(size), field)
    assert value == (pytest.approx(expected) if isinstance(expected, float) else expected), (size, field)


def test_every_per_size_table_value_is_covered():
    """Each per-size dict in PAPER_TABLES lists every size its table covers, except the values
    with options (TABLE_OPTIONS), so that no size is silently left out of the check above."""
    with_options = {(make, size, field) for make, sizes, field, _, _ in TABLE_OPTIONS for size in sizes}
    for table, (make, sizes, fields) in PAPER_TABLES.items():
        for field, value in fields.items():
            if isinstance(value, dict):
                missing = [s for s in sizes if s not in value and (make, s, field) not in with_options]
                assert not missing, (table, field, missing)


@pytest.mark.parametrize("make, sizes, field, options, used", TABLE_OPTIONS)
def test_values_where_the_table_gives_options(make, sizes, field, options, used):
    assert used in options
    for size in sizes:
        assert getattr(make(size), field) == used, (size, field)


@pytest.mark.parametrize("make", list(NOT_IN_TABLES), ids=lambda f: f.__name__)
def test_values_not_in_the_tables_are_the_documented_choices(make):
    sizes, fields = NOT_IN_TABLES[make]
    for size in sizes:
        recipe = make(size)
        for field, expected in fields.items():
            assert getattr(recipe, field) == expected, (size, field)
    for size in ("tiny", "small"):
        for field, expected in BORROWED_FOR_TINY_SMALL.get(make, {}).items():
            assert getattr(make(size), field) == pytest.approx(expected), (size, field)


@pytest.mark.parametrize(
    "make, size, batch, lr",
    [(pretrain_recipe, "base", 4096, 8e-4),
     (finetune_recipe, "tiny", 1024, 2e-3), (finetune_recipe, "huge", 1024, 1e-3),
     (recipes.video_pretrain_recipe, "base", 512, 8e-4), (recipes.video_pretrain_recipe, "huge", 512, 3.2e-4),
     (recipes.video_finetune_recipe, "large", 256, 8e-4), (recipes.video_finetune_recipe, "huge", 256, 4e-4)],
)
def test_lr_at_each_tables_batch_is_the_tables_lr(make, size, batch, lr):
    """The linear scaling rule is anchored at each table's own batch: at that batch the lr is the
    table's lr, and it halves with the batch."""
    recipe = make(size)
    assert recipe.lr(batch) == pytest.approx(lr) and recipe.lr() == pytest.approx(lr)
    assert recipe.lr(batch // 2) == pytest.approx(lr / 2)
    assert recipe.scaled(epochs=10, batch_size=batch // 4).lr() == pytest.approx(lr / 4)


def test_video_finetune_warmup_when_scaled():
    f = recipes.video_finetune_recipe("base")
    assert f.scaled(epochs=150).warmup_epochs == 10 and f.scaled(epochs=100).warmup_epochs == 10  # 10% exactly
    assert f.scaled(epochs=20).warmup_epochs == pytest.approx(2.0)  # capped at 10% of a short run
    assert f.scaled(epochs=20).schedule_steps(5) == (100, 10)
    v = recipes.video_pretrain_recipe("large").scaled(epochs=320)
    assert v.warmup_epochs == pytest.approx(12)  # 120 / 3200 of the run, as the image pretraining


@pytest.mark.parametrize(
    "cls", [PretrainRecipe, FinetuneRecipe, recipes.VideoPretrainRecipe, recipes.VideoFinetuneRecipe],
    ids=lambda c: c.__name__,
)
def test_every_preset_field_cites_its_table_or_says_it_is_not_in_them(cls):
    import inspect
    import re

    lines = [line for line in inspect.getsource(cls).splitlines() if re.match(r"    \w+: [^=]+= ", line)]
    assert lines
    for line in lines:
        comment = line.partition("  # ")[2]
        assert "[Hiera Tab. " in comment or "not in " in comment, line
