"""SAM2's checkpoint layout (hiera.formats.sam2_layout), and HieraDet against SAM2's own code.

The first half runs on synthetic state dicts, always.  The second half runs SAM2's trunk
(``sam2.modeling.backbones.hieradet.Hiera`` of PyPI's ``sam2==1.1.0``) in a side venv built by
tests/reference/sam2_env.py (under <reference dir>/sam2, i.e. .cache/reference/sam2), through
tests/reference/sam2_reference.py.  Those tests are SKIPPED, with the reason, when that env
cannot be built (e.g. no package index and no wheelhouse); set HIERA_REQUIRE_SAM2=1 to make that
a failure instead.

What HieraDet must provide for them: ``HieraDet(**kwargs)`` with SAM2's trunk keyword arguments
(those of :data:`SAM2_TRUNK_KWARGS`, as in SAM2's configs; the others at SAM2's defaults:
q_pool=3, q_stride=(2, 2), dim_mul=2.0, head_mul=2.0), a state dict with exactly SAM2's trunk
key names and shapes (and no other entries), ``model.forward_intermediates(x)`` for ``x``
[B, 3, H, W] returning what SAM2's trunk returns: a list of the four stage maps
[B, C_i, H/4/2^i, W/4/2^i] (NCHW), highest resolution first, and ``model(x)`` the last of them.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest
import torch
from closeness import assert_close
from conftest import _load_module_from, reference_dir

from hiera.formats import sam2_layout
from hiera.formats.sam2_layout import SAM2_TRUNK_PREFIX, is_sam2_checkpoint, ours_to_sam2, sam2_to_ours
from hiera.hieradet import HieraDet
from hiera.weights import CheckpointError

_REFERENCE_SRC = Path(__file__).resolve().parent / "reference"
sam2_env = _load_module_from("_hiera_reference_sam2_env", _REFERENCE_SRC / "sam2_env.py")
# Imports only torch at module level; its randomize_/tensor_digest give both models the same weights.
sam2_reference = _load_module_from("_hiera_reference_sam2_reference", _REFERENCE_SRC / "sam2_reference.py")

# The trunk arguments of SAM2's and SAM2.1's configs (sam2/configs/sam2*/sam2*_hiera_{t,s,b+,l}.yaml,
# the same in both families); checked against the installed configs by the tests below.
SAM2_TRUNK_KWARGS = {
    "T": {"embed_dim": 96, "num_heads": 1, "stages": [1, 2, 7, 2], "global_att_blocks": [5, 7, 9],
          "window_pos_embed_bkg_spatial_size": [7, 7]},
    "S": {"embed_dim": 96, "num_heads": 1, "stages": [1, 2, 11, 2], "global_att_blocks": [7, 10, 13],
          "window_pos_embed_bkg_spatial_size": [7, 7]},
    "B+": {"embed_dim": 112, "num_heads": 2},
    "L": {"embed_dim": 144, "num_heads": 2, "stages": [2, 6, 36, 4], "global_att_blocks": [23, 33, 43],
          "window_pos_embed_bkg_spatial_size": [7, 7], "window_spec": [8, 4, 16, 8]},
}
INPUT_SIZES = [[128, 128], [224, 160]]  # [H, W]; 224x160 pads the windows of stages 3 and 4
BATCH = 2
SEED = 3


# ============================================================ synthetic state dicts (always run)


def _toy_trunk(blocks: int = 3, dim: int = 4) -> dict:
    """A small state dict with every kind of key of SAM2's trunk (shapes are irrelevant here)."""
    sd = {
        "patch_embed.proj.weight": torch.randn(dim, 3, 7, 7),
        "patch_embed.proj.bias": torch.randn(dim),
        "pos_embed": torch.randn(1, dim, 7, 7),
        "pos_embed_window": torch.randn(1, dim, 8, 8),
    }
    for i in range(blocks):
        for name in ("norm1", "norm2", "attn.qkv", "attn.proj", "mlp.layers.0", "mlp.layers.1"):
            sd[f"blocks.{i}.{name}.weight"] = torch.randn(dim, dim)
            sd[f"blocks.{i}.{name}.bias"] = torch.randn(dim)
    sd["blocks.1.proj.weight"] = torch.randn(2 * dim, dim)
    sd["blocks.1.proj.bias"] = torch.randn(2 * dim)
    return sd


def _toy_sam2_checkpoint(trunk: dict) -> dict:
    """What a SAM2 checkpoint file holds: {"model": the whole SAM2Base state dict}."""
    model = {SAM2_TRUNK_PREFIX + k: v for k, v in trunk.items()}
    model.update({
        "image_encoder.neck.convs.0.conv.weight": torch.randn(8, 4, 1, 1),
        "image_encoder.neck.convs.0.conv.bias": torch.randn(8),
        "sam_mask_decoder.iou_token.weight": torch.randn(1, 8),
        "sam_prompt_encoder.pe_layer.positional_encoding_gaussian_matrix": torch.randn(2, 4),
        "memory_attention.layers.0.self_attn.q_proj.weight": torch.randn(8, 8),
        "memory_encoder.out_proj.weight": torch.randn(8, 8, 1, 1),
        "maskmem_tpos_enc": torch.randn(7, 1, 1, 8),
        "no_mem_embed": torch.randn(1, 1, 8),
        "obj_ptr_proj.layers.0.weight": torch.randn(8, 8),
    })
    return {"model": model}


def test_sam2_to_ours_takes_the_trunk_of_a_checkpoint():
    trunk = _toy_trunk()
    ckpt = _toy_sam2_checkpoint(trunk)
    for given in (ckpt, ckpt["model"]):  # the whole file's dict, or its "model" entry
        ours = sam2_to_ours(given)
        assert list(ours) == list(trunk)
        assert all(ours[k] is trunk[k] for k in trunk)  # renamed only: the tensors are shared


def test_sam2_to_ours_of_a_ddp_state_dict():
    ckpt = _toy_sam2_checkpoint(_toy_trunk())
    ddp = {"module." + k: v for k, v in ckpt["model"].items()}
    assert sam2_to_ours({"model": ddp}).keys() == sam2_to_ours(ckpt).keys()


@pytest.mark.parametrize("state, hint", [
    ({"model": {"image_encoder.neck.convs.0.conv.weight": torch.zeros(1)}}, "no trunk"),
    (_toy_trunk(), "already in HieraDet's layout"),
    ({"model": {"sam_mask_decoder.iou_token.weight": torch.zeros(1)}}, "sam_mask_decoder"),
])
def test_sam2_to_ours_refuses_a_state_dict_without_trunk(state, hint):
    with pytest.raises(CheckpointError, match=r"not a SAM2 checkpoint: no 'image_encoder\.trunk\.\*' keys") as info:
        sam2_to_ours(state)
    assert hint in str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("state", [None, [1, 2], "image_encoder.trunk.pos_embed", {}])
def test_sam2_to_ours_refuses_what_is_not_a_state_dict(state):
    with pytest.raises(CheckpointError):
        sam2_to_ours(state)


def test_ours_to_sam2_roundtrip():
    trunk = _toy_trunk()
    sam2 = ours_to_sam2(trunk)
    assert list(sam2) == [SAM2_TRUNK_PREFIX + k for k in trunk]
    assert all(sam2[SAM2_TRUNK_PREFIX + k] is v for k, v in trunk.items())
    assert is_sam2_checkpoint(sam2) and is_sam2_checkpoint({"model": sam2})
    back = sam2_to_ours({"model": sam2})
    assert list(back) == list(trunk) and all(back[k] is trunk[k] for k in trunk)


def test_ours_to_sam2_refuses_a_head_unless_dropped():
    trunk = _toy_trunk()
    with_head = dict(trunk, **{"norm.weight": torch.ones(4), "norm.bias": torch.zeros(4),
                               "head.projection.weight": torch.randn(10, 4), "head.projection.bias": torch.zeros(10)})
    with pytest.raises(CheckpointError, match="no classification head") as info:
        ours_to_sam2(with_head)
    assert "head.projection.weight" in str(info.value) and "drop_head=True" in str(info.value)
    dropped = ours_to_sam2(with_head, drop_head=True)
    assert list(dropped) == [SAM2_TRUNK_PREFIX + k for k in trunk]


@pytest.mark.parametrize("extra", ["blocks.0.attn.rel_pos_h", "pos_embed_abs", "encoder_norm.weight",
                                   "blocks.0.ls1.gamma", "blocks.x.norm1.weight"])
def test_ours_to_sam2_refuses_keys_sam2_does_not_have(extra):
    with pytest.raises(CheckpointError, match="does not have") as info:
        ours_to_sam2(dict(_toy_trunk(), **{extra: torch.zeros(1)}))
    assert extra in str(info.value)


def test_ours_to_sam2_refuses_sam2_names_and_non_dicts():
    with pytest.raises(CheckpointError, match="already in SAM2's layout"):
        ours_to_sam2(ours_to_sam2(_toy_trunk()))
    with pytest.raises(CheckpointError):
        ours_to_sam2([("pos_embed", torch.zeros(1))])
    with pytest.raises(CheckpointError, match="nothing to convert"):
        ours_to_sam2({"head.projection.weight": torch.zeros(1)}, drop_head=True)


def test_is_sam2_checkpoint():
    trunk = _toy_trunk()
    ckpt = _toy_sam2_checkpoint(trunk)
    assert is_sam2_checkpoint(ckpt) and is_sam2_checkpoint(ckpt["model"])
    assert is_sam2_checkpoint({"model": ckpt["model"], "epoch": 3})  # a training checkpoint
    official_like = {"pos_embed": torch.zeros(1), "blocks.0.attn.qkv.weight": torch.zeros(1),
                     "head.projection.weight": torch.zeros(1)}
    for not_sam2 in (trunk, official_like, {}, {"model": {}}, None, "x", [1], {"model": 3},
                     {"model": {"image_encoder.neck.convs.0.conv.weight": torch.zeros(1)}}):
        assert not is_sam2_checkpoint(not_sam2), not_sam2


def test_layout_module_is_key_manipulation_only():
    """sam2_layout must not depend on hiera/hieradet.py (nor on sam2): only hiera.weights and stdlib."""
    tree = ast.parse(Path(sam2_layout.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            imported.add("." * node.level + (node.module or ""))
    assert imported <= {"__future__", "re", "typing", "..weights"}, imported
    assert sam2_layout.__doc__ and "image_encoder.trunk." in sam2_layout.__doc__


# ============================================================ against SAM2's own code (side venv)


@pytest.fixture(scope="session")
def sam2_python() -> Path:
    """Python of the side venv where `import sam2` works (built on first use, skipped if impossible)."""
    root = reference_dir() / "sam2"
    try:
        return sam2_env.ensure_sam2_env(root)
    except sam2_env.OfficialEnvError as exc:  # Sam2EnvError is one
        error = exc
    message = f"the sam2 reference env ({root}) could not be built: {str(error).splitlines()[0]}"
    if os.environ.get("HIERA_REQUIRE_SAM2"):
        pytest.fail(f"{message}\n{error}", pytrace=False)
    pytest.skip(message)


def _stage_outputs(model, x) -> list:
    """Our counterpart of SAM2's ``trunk(x)``: the four stage maps, NCHW, stride 4 first."""
    out = model.forward_intermediates(x)
    assert isinstance(out, (list, tuple)), f"forward_intermediates returned {type(out).__name__}, expected a list"
    return list(out)


def _digests(state: dict) -> dict:
    return {k: sam2_reference.tensor_digest(v) for k, v in state.items()}


def _check_same_keys(ours: dict, ref_shapes: dict, what: str) -> None:
    missing = sorted(set(ref_shapes) - set(ours))
    extra = sorted(set(ours) - set(ref_shapes))
    assert not missing and not extra, f"{what}: keys missing vs SAM2 {missing[:10]}, not in SAM2 {extra[:10]}"
    wrong = {k: (list(v.shape), ref_shapes[k]) for k, v in ours.items() if list(v.shape) != ref_shapes[k]}
    assert not wrong, f"{what}: shapes (ours, SAM2) differ: {dict(list(wrong.items())[:10])}"


@pytest.mark.parametrize("config", list(SAM2_TRUNK_KWARGS))
def test_hieradet_matches_sam2(config, sam2_python, tmp_path):
    """Same weights -> same stage outputs as SAM2's trunk (two input sizes), and our state dict,
    written with ours_to_sam2, loads into SAM2's trunk with strict=True and gives the same outputs."""
    ours_file = tmp_path / "ours_sam2_layout.pt"
    cases = [{"mode": "random", "config": config, "return_state_dict": False}]
    try:
        model = HieraDet(**SAM2_TRUNK_KWARGS[config])
        sam2_reference.randomize_(model, SEED)  # the rule SAM2's side uses: same names -> same weights
        model.eval()  # after changing the weights (a model may repack them on a mode change)
        torch.save({"model": ours_to_sam2(model.state_dict())}, ours_file)
        # Same seed and first size: the same input as the first one of the random case.
        cases.append({"mode": "load", "config": config, "state_dict": str(ours_file), "return_state_dict": False,
                      "input_sizes": INPUT_SIZES[:1]})
        result = sam2_env.run_sam2_reference(
            sam2_python, {"seed": SEED, "input_sizes": INPUT_SIZES, "batch": BATCH, "cases": cases},
            tmp_path / "sam2_out.pt")
    finally:
        ours_file.unlink(missing_ok=True)  # L's weights are 0.86 GB
    ref = result["cases"][0]

    # SAM2's installed config has exactly these trunk arguments, and our layout covers its keys.
    assert ref["kwargs"] == SAM2_TRUNK_KWARGS[config]
    converted = ours_to_sam2(dict.fromkeys(ref["shapes"], torch.zeros(())))
    assert sam2_to_ours({"model": converted}).keys() == ref["shapes"].keys()
    ours_state = model.state_dict()
    _check_same_keys(ours_state, ref["shapes"], f"HieraDet({config})")
    assert _digests(ours_state) == ref["digests"], "the seeded weights differ from SAM2's (parameter order?)"
    loaded = result["cases"][1]
    assert loaded["digests"] == ref["digests"], "SAM2's trunk did not end up with our weights"

    with torch.no_grad():
        for n, (size, x, ref_outs) in enumerate(zip(INPUT_SIZES, ref["inputs"], ref["outputs"])):
            got = _stage_outputs(model, x)
            assert len(got) == len(ref_outs) == 4, f"{config} {size}: {len(got)} stage maps, SAM2 has {len(ref_outs)}"
            for i, (g, r) in enumerate(zip(got, ref_outs)):
                assert_close(g, r, f"{config} {size} stage {i + 1} vs SAM2")
            if n == 0:
                assert torch.equal(loaded["inputs"][0], x)
                for i, (g, r) in enumerate(zip(got, loaded["outputs"][0])):
                    assert_close(g, r, f"{config} {size} stage {i + 1} vs SAM2's trunk loaded from ours_to_sam2")
                assert_close(model(x), ref_outs[-1], f"{config} {size} forward (last stage) vs SAM2")


def test_sam2_checkpoint_roundtrip_through_build_sam2(sam2_python, tmp_path):
    """With SAM2's own model and loader (T): ours_to_sam2 -> a full SAM2 checkpoint that
    sam2.build_sam.build_sam2 loads (strict) -> sam2_to_ours gives back exactly the trunk."""
    ref = sam2_env.run_sam2_reference(
        sam2_python, {"mode": "random", "config": "T", "seed": SEED, "input_sizes": INPUT_SIZES[:1], "batch": 1},
        tmp_path / "random.pt")["cases"][0]
    (tmp_path / "random.pt").unlink()  # T's weights: 110 MB
    trunk = ref["state_dict"]  # SAM2's trunk names, which are ours
    trunk_file, ckpt_file = tmp_path / "trunk.pt", tmp_path / "sam2_full_checkpoint.pt"
    try:
        torch.save({"model": ours_to_sam2(trunk)}, trunk_file)
        built = sam2_env.run_sam2_reference(
            sam2_python, {"mode": "build_sam2", "config": "T", "seed": SEED, "input_sizes": INPUT_SIZES[:1],
                          "batch": 1, "state_dict": str(trunk_file), "checkpoint": str(ckpt_file),
                          "return_state_dict": False},
            tmp_path / "built.pt")["cases"][0]
        ckpt = torch.load(ckpt_file, map_location="cpu", weights_only=True)
    finally:
        trunk_file.unlink(missing_ok=True)
        ckpt_file.unlink(missing_ok=True)

    assert built["digests"] == ref["digests"]
    for r, b in zip(ref["outputs"][0], built["outputs"][0]):
        assert torch.equal(r, b)
    # A real SAM2 checkpoint: {"model": ...} with the neck, mask decoder and memory modules too.
    assert list(ckpt) == ["model"] and is_sam2_checkpoint(ckpt)
    prefixes = {k.split(".", 1)[0] for k in ckpt["model"]}
    assert {"image_encoder", "sam_mask_decoder", "sam_prompt_encoder", "memory_attention", "memory_encoder"} <= prefixes
    assert any(k.startswith("image_encoder.neck.") for k in ckpt["model"])
    back = sam2_to_ours(ckpt)
    assert back.keys() == trunk.keys()
    assert all(torch.equal(back[k], trunk[k]) for k in trunk)
    assert sam2_to_ours(ckpt["model"]).keys() == trunk.keys()


def test_mae_pretrained_trunk_loads_into_sam2_through_build_sam2(sam2_python, tmp_path):
    """The handover SAM 2 users ask for: a HieraDet MAE (T's trunk) after a few pretraining steps ->
    ``hiera convert --to sam2`` -> SAM 2's own build_sam2 loads it (strict), and SAM 2's trunk
    computes what our MAE's encoder computes with every unit visible (at 224 every window tiles)."""
    from hiera.mae import MaskedAutoencoderHieraDet
    from hiera.token_order import undo_windowing
    from hiera.tools.convert import convert_checkpoint

    torch.manual_seed(SEED)
    mae = MaskedAutoencoderHieraDet(**SAM2_TRUNK_KWARGS["T"], input_size=(224, 224), decoder_embed_dim=64,
                                    decoder_depth=1, decoder_num_heads=2)
    opt = torch.optim.AdamW(mae.parameters(), lr=1e-3)
    for _ in range(2):  # weights that pretraining moved, not an initialiser's
        loss = mae(torch.randn(2, 3, 224, 224), mask_ratio=0.6)[0]
        opt.zero_grad()
        loss.backward()
        opt.step()
    mae.eval()
    mae_file, sam2_file, ckpt_file = tmp_path / "mae.pt", tmp_path / "trunk_sam2.pt", tmp_path / "sam2_full.pt"
    try:
        torch.save({"model": mae.state_dict(), "config": mae.config, "class": type(mae).__name__}, mae_file)
        convert_checkpoint(mae_file, sam2_file, "sam2")
        built = sam2_env.run_sam2_reference(
            sam2_python, {"mode": "build_sam2", "config": "T", "seed": SEED, "input_sizes": [[224, 224]], "batch": 2,
                          "state_dict": str(sam2_file), "checkpoint": str(ckpt_file), "return_state_dict": False},
            tmp_path / "built.pt")["cases"][0]
    finally:
        for f in (mae_file, sam2_file, ckpt_file):
            f.unlink(missing_ok=True)

    trunk = {k: v for k, v in mae.state_dict().items() if k in built["digests"]}
    assert _digests(trunk) == built["digests"], "SAM 2's trunk did not end up with the MAE's trunk weights"
    x = built["inputs"][0]
    with torch.no_grad():
        _, maps = mae.forward_tokens(x, None, return_intermediates=True)
    for i, (m, r) in enumerate(zip(maps, built["outputs"][0])):
        ours = undo_windowing(m, r.shape[2:], m.shape[2:4]).permute(0, 3, 1, 2)
        assert_close(ours, r, f"T stage {i + 1}: our MAE encoder vs SAM 2's trunk loaded from its checkpoint")
