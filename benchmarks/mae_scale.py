"""Does MAE pretraining help, and from how much pretraining on? The quickstart's comparison at scale.

On the synthetic shapes (:mod:`hiera.data.synthetic`): MAE-pretrain a Hiera on an unlabelled pool, and
at several points of the pretraining measure

* the held-out MAE loss against the predict-the-mean baseline (:func:`hiera.train.probe.heldout_mae_loss`),
* a linear probe of the frozen encoder (:func:`hiera.train.probe.linear_probe`),
* fine-tuning with few labels (``--few`` per class) and with all labels,

each next to the same encoder at its random initialisation (the probe) and the same classifier
trained from scratch (fine-tuning). Everything lives in memory, so the GPU is never waiting on
files; the quickstart runs the same comparison through the real commands on 2 CPU cores.

    python benchmarks/mae_scale.py --device cuda --out benchmarks/results/mae_scale   # ~5 min on an H200
    python benchmarks/mae_scale.py --device cpu --steps 0,20 --pool 800 --ft-steps 20 --out /tmp/ms  # a smoke run
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hiera.data.images import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from hiera.data.synthetic import CLASSES, generate  # noqa: E402
from hiera.mae import MaskedAutoencoderHiera  # noqa: E402
from hiera.model import POS_EMBED_INITS, Hiera  # noqa: E402
from hiera.train.probe import encoder_features, heldout_mae_loss, linear_probe, per_class_subset  # noqa: E402
from hiera.train.recipes import lr_schedule, param_groups  # noqa: E402

MODELS = {
    # The quickstart's model: 64x64 images, 3 stages, 16 mask units of 16x16 pixels.
    "small": dict(input_size=(64, 64), embed_dim=48, num_heads=2, stages=(1, 2, 3), q_pool=2, mask_unit_size=(4, 4),
                  mask_unit_attn=(True, False, False)),
    # Twice the width and depth, 96x96 images (36 mask units).
    "medium": dict(input_size=(96, 96), embed_dim=96, num_heads=2, stages=(1, 2, 6, 2), q_pool=2,
                   mask_unit_size=(8, 8), mask_unit_attn=(True, True, False, False)),
}
DECODER = {"small": dict(decoder_embed_dim=96, decoder_depth=2, decoder_num_heads=4),
           "medium": dict(decoder_embed_dim=192, decoder_depth=4, decoder_num_heads=6)}


def images(split: str, per_class: int, size: int, seed: int):
    x, y = generate(split, per_class, size=size, seed=seed)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255 - mean) / std, torch.as_tensor(y)


def augment(x: torch.Tensor, gen: torch.Generator, pad: int) -> torch.Tensor:
    """Horizontal flip and a random shift (pad by reflection, crop back): cheap on any device."""
    flip = (torch.rand(len(x), generator=gen) < 0.5).to(x.device).view(-1, 1, 1, 1)
    x = torch.where(flip, x.flip(-1), x)
    if pad:
        dy, dx = torch.randint(0, 2 * pad + 1, (2,), generator=gen).tolist()
        x = F.pad(x, (pad,) * 4, mode="reflect")[..., dy:dy + x.shape[-2], dx:dx + x.shape[-1]]
    return x


def pretrain(net, pool, steps, batch, lr, ratio, device, checkpoints, on_checkpoint, bf16):
    opt = torch.optim.AdamW(param_groups(net, 0.05), lr=lr, betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(1)
    warmup = max(1, steps // 20)
    if 0 in checkpoints:
        on_checkpoint(0)
    for step in range(1, steps + 1):
        for g in opt.param_groups:
            g["lr"] = lr_schedule(step - 1, steps, warmup, lr)
        idx = torch.randint(0, len(pool), (batch,), generator=gen)
        x = augment(pool[idx].to(device, non_blocking=True), gen, pad=0)
        with torch.autocast(device.type, torch.bfloat16, enabled=bf16):
            loss = net(x, mask_ratio=ratio)[0]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step in checkpoints:
            on_checkpoint(step, float(loss.detach()))


def finetune(config, state, x, y, xv, yv, steps, batch, lr, device, bf16, layer_decay=0.75):
    """Top-1 (%) on ``xv`` after fine-tuning a classifier from ``state`` (None: from scratch)."""
    torch.manual_seed(0)
    net = Hiera(**config, num_classes=len(CLASSES)).to(device)
    if state is not None:
        report = net.load_state_dict(state, strict=False)
        assert not [k for k in report.missing_keys if not k.startswith(("head.", "norm."))], report
    opt = torch.optim.AdamW(param_groups(net, 0.05, layer_decay=layer_decay if state is not None else None),
                            lr=lr, betas=(0.9, 0.999))
    gen = torch.Generator().manual_seed(0)
    warmup = max(1, steps // 10)
    net.train()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr_schedule(step, steps, warmup, lr) * g.get("lr_scale", 1.0)
        idx = torch.randint(0, len(x), (min(batch, len(x)),), generator=gen)
        xb = augment(x[idx].to(device), gen, pad=x.shape[-1] // 16)
        with torch.autocast(device.type, torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(net(xb, return_logits=True), y[idx].to(device), label_smoothing=0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    net.eval()
    correct = 0
    with torch.no_grad(), torch.autocast(device.type, torch.bfloat16, enabled=bf16):
        for i in range(0, len(xv), 500):
            correct += int((net(xv[i:i + 500].to(device), return_logits=True).argmax(1).cpu() == yv[i:i + 500]).sum())
    return 100.0 * correct / len(xv)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 3)[-1])
    p.add_argument("--device", default="cuda")
    p.add_argument("--model", choices=sorted(MODELS), default="small")
    p.add_argument("--pool", type=int, default=40000, help="unlabelled pretraining images")
    p.add_argument("--labelled", type=int, default=200, help="labelled training images per class")
    p.add_argument("--few", type=int, default=10, help="labels per class of the few-label fine-tuning")
    p.add_argument("--steps", default="0,1000,3000,10000", help="pretraining steps at which to measure")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--lr", type=float, default=1.5e-3)
    p.add_argument("--mask-ratio", type=float, default=0.6)
    p.add_argument("--pos-embed-init", choices=POS_EMBED_INITS, default="trunc_normal",
                   help="how the position embeddings start (Hiera's pos_embed_init)")
    p.add_argument("--ft-steps", type=int, default=300, help="fine-tuning steps (0: no fine-tuning, probes only)")
    p.add_argument("--ft-lr", type=float, default=1e-3)
    p.add_argument("--out", default="benchmarks/results/mae_scale")
    args = p.parse_args(argv)

    device = torch.device(args.device)
    bf16 = device.type == "cuda"
    checkpoints = sorted({int(s) for s in args.steps.split(",")})
    config = dict(MODELS[args.model], pos_embed_init=args.pos_embed_init)
    size = config["input_size"][0]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    pool, _ = images("train", math.ceil(args.pool / len(CLASSES)), size, seed=1)  # seed 1: not the labelled images
    x, y = images("train", args.labelled, size, seed=0)
    xv, yv = images("val", 50, size, seed=0)
    few = per_class_subset(y, args.few)
    print(f"MAE at scale: {args.model} Hiera {size}px on {device} ({torch.cuda.get_device_name(device) if bf16 else 'cpu'}), "
          f"pool {len(pool)}, {len(x)} labelled ({args.few}/class for few-label), {len(xv)} held out; "
          f"measuring at pretraining steps {checkpoints} (batch {args.batch}); data {time.time() - t0:.0f} s", flush=True)
    if bf16:
        pool = pool.pin_memory()

    torch.manual_seed(0)
    net = MaskedAutoencoderHiera(**config, **DECODER[args.model]).to(device)
    chance = 100.0 / len(CLASSES)
    rows = []
    tune = args.ft_steps > 0

    def fine_tuned(state, per_class_only):
        if not tune:
            return None
        if per_class_only:
            return finetune(config, state, x[few], y[few], xv, yv, args.ft_steps, 64, args.ft_lr, device, bf16)
        return finetune(config, state, x, y, xv, yv, args.ft_steps * 2, 128, args.ft_lr, device, bf16)

    scratch = {"few": fine_tuned(None, True), "full": fine_tuned(None, False)}
    if tune:
        print(f"scratch: {args.few}/class {scratch['few']:.1f}%, all labels {scratch['full']:.1f}% "
              f"(chance {chance:.1f}%)", flush=True)

    def measure(step, train_loss=None):
        t = time.time()
        state = {k: v.detach().clone() for k, v in net.state_dict().items()}
        held = heldout_mae_loss(net, xv, args.mask_ratio)
        ftr, fva = encoder_features(net, x), encoder_features(net, xv)
        row = {"step": step, "seconds": round(time.time() - t0, 1), "train_loss": train_loss, "heldout": held,
               "probe": linear_probe(ftr, y, fva, yv), "probe_few": linear_probe(ftr[few], y[few], fva, yv),
               "ft_few": fine_tuned(state, True), "ft_full": fine_tuned(state, False)}
        rows.append(row)
        tuned = (f"; fine-tuned {args.few}/class {row['ft_few']:.1f}% (scratch {scratch['few']:.1f}), all "
                 f"{row['ft_full']:.1f}% (scratch {scratch['full']:.1f})" if tune else "")
        print(f"step {step:6d}: held-out MAE loss {held['loss']:.3f} (predict-the-mean {held['baseline']:.3f}); "
              f"probe {row['probe']:.1f}% ({args.few}/class {row['probe_few']:.1f}%){tuned}; "
              f"{time.time() - t:.0f} s to measure", flush=True)
        net.train()
        (out / "mae_scale.json").write_text(json.dumps(
            {"args": vars(args), "device": str(device), "chance": chance, "scratch": scratch, "rows": rows}, indent=2))

    pretrain(net, pool, max(checkpoints), args.batch, args.lr, args.mask_ratio, device, set(checkpoints), measure, bf16)
    random_probe = rows[0]["probe"] if rows and rows[0]["step"] == 0 else None
    print(f"done in {time.time() - t0:.0f} s; random-encoder probe {random_probe}; results in {out / 'mae_scale.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
