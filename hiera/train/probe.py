"""What MAE pretraining taught an encoder, measured the way the MAE literature does.

* :func:`heldout_mae_loss`: the MAE loss on images the model never trained on, next to the loss
  of predicting every masked patch as its own mean (the normalised-pixel target's variance, about
  1): a model that learned nothing about images cannot go below that baseline.
* :func:`encoder_features` + :func:`linear_probe`: a frozen encoder's pooled features and the
  top-1 accuracy of a logistic regression on them. Run on the MAE-pretrained encoder and on the
  same encoder at its random initialisation; pretraining that taught the encoder something beats
  the random one.

Both work on tensors already in memory (a few thousand small images), on any device.

    feats_tr = encoder_features(model, x_train)            # [N, C]
    feats_va = encoder_features(model, x_val)
    acc = linear_probe(feats_tr, y_train, feats_va, y_val)  # top-1 in %
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

__all__ = ["encoder_features", "shared_component", "fit_linear", "linear_probe", "fit_head", "heldout_mae_loss",
           "per_class_subset"]


@torch.no_grad()
def encoder_features(model, images: torch.Tensor, batch_size: int = 256, stages: str = "all") -> torch.Tensor:
    """Mean-pooled trunk features of a :class:`hiera.Hiera` or MAE (its encoder), frozen.

    Args:
        model: a Hiera or MaskedAutoencoderHiera; used in eval mode, left as it was.
        images: normalised inputs ``[N, C, *S]`` at the model's input size.
        stages: ``"all"``: every stage's tokens averaged and concatenated (``[N, sum of widths]``),
            the usual probe of a hierarchical encoder; ``"last"``: the last stage only
            (``[N, C_last]``, what the classifier head sees before its norm).
    Returns:
        ``[N, C]`` float32 on the images' device.
    """
    if stages not in ("all", "last"):
        raise ValueError(f"stages must be 'all' or 'last', got {stages!r}")
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        out = []
        for i in range(0, len(images), batch_size):
            x = images[i:i + batch_size].to(device)
            mask = torch.ones(len(x), model.num_mask_units, dtype=torch.bool, device=device)
            _, inter = model.forward_tokens(x, mask, return_intermediates=True)
            pooled = [t.flatten(1, -2).float().mean(1) for t in inter]  # each [B, C_stage]
            out.append(torch.cat(pooled, -1) if stages == "all" else pooled[-1])
        return torch.cat(out)
    finally:
        model.train(was_training)


def shared_component(model, images: torch.Tensor) -> float:
    """How much of the pooled last-stage features (what a classifier head reads) is one vector
    shared by every image: ``|mean_i f_i| / mean_i |f_i|`` over ``images``, from 0 (no common
    part) to 1 (every image gives the same features).

    A head reads these features through a LayerNorm, which normalises each sample over its
    channels but cannot remove a component that all samples share; when it dominates, a fresh
    head starts from nearly identical inputs for every image (a linear probe, which standardises
    each feature over the samples, sees past it).
    """
    features = encoder_features(model, images, stages="last")
    return float(features.mean(0).norm() / features.norm(dim=1).mean().clamp_min(1e-12))


def fit_linear(features: torch.Tensor, labels: torch.Tensor, num_classes: Optional[int] = None,
               weight_decay: float = 1e-3, max_iter: int = 300) -> Tuple[torch.Tensor, torch.Tensor]:
    """A multinomial logistic regression on ``features`` ``[N, C]``: ``(weight [K, C], bias [K])``
    with ``logits = features @ weight.T + bias``, in float64 on the CPU.

    The fit standardises the features with their own mean and std (MAE features and random ones
    differ in scale by an order of magnitude, and a few directions can dominate; standardising
    makes one ``weight_decay`` fit all) and folds that back into the returned weights. It is
    full-batch L-BFGS, deterministic for given features: a few thousand samples of a few hundred
    dimensions need no SGD schedule (and no extra dependency).
    """
    if features.ndim != 2 or len(features) != len(labels) or len(features) == 0:
        raise ValueError(f"features must be [N, C] with one label per row, got {tuple(features.shape)} and "
                         f"{len(labels)} labels")
    if not torch.isfinite(features).all():
        raise ValueError("features hold NaN or infinity: the encoder is broken, a probe would mean nothing")
    x = features.detach().double().cpu()
    y = torch.as_tensor(labels).long().cpu()
    classes = int(y.max()) + 1 if num_classes is None else int(num_classes)
    mean, std = x.mean(0), x.std(0, unbiased=False) + 1e-6
    x = (x - mean) / std
    weight = torch.zeros(x.shape[1], classes, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([weight, bias], max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x @ weight + bias, y) + weight_decay * weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    w = (weight.detach() / std[:, None]).T  # [K, C]: the standardisation folded in
    b = bias.detach() - w @ mean
    return w, b


def linear_probe(train_features: torch.Tensor, train_labels: torch.Tensor, val_features: torch.Tensor,
                 val_labels: torch.Tensor, weight_decay: float = 1e-3, max_iter: int = 300) -> float:
    """Top-1 accuracy (%) on ``val`` of a logistic regression fit on ``train`` (:func:`fit_linear`)."""
    if train_features.ndim != 2 or val_features.ndim != 2 or train_features.shape[1] != val_features.shape[1]:
        raise ValueError(f"features must be [N, C] with the same C, got {tuple(train_features.shape)} and "
                         f"{tuple(val_features.shape)}")
    if len(val_features) != len(val_labels) or len(val_labels) == 0:
        raise ValueError("the probe needs at least one validation sample and one label per feature row")
    if not torch.isfinite(val_features).all():
        raise ValueError("features hold NaN or infinity: the encoder is broken, a probe would mean nothing")
    classes = int(max(torch.as_tensor(train_labels).max(), torch.as_tensor(val_labels).max())) + 1
    w, b = fit_linear(train_features, train_labels, classes, weight_decay, max_iter)
    logits = val_features.detach().double().cpu() @ w.T + b
    return float((logits.argmax(1) == torch.as_tensor(val_labels).long().cpu()).double().mean() * 100)


@torch.no_grad()
def fit_head(model, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 256) -> float:
    """Set a classifier's head by a linear probe on what the head sees (the pooled, normalised
    trunk features of ``images``): the first half of "linear probe, then fine-tune" (LP-FT).

    A fresh head starts near zero; on a pretrained trunk whose pooled features are dominated by
    a few directions, fine-tuning then spends its short schedule finding the head and distorts
    the features meanwhile. Fitting the head first leaves fine-tuning to adapt the trunk.
    Returns the probe's top-1 (%) on ``images`` themselves. The model's mode is restored.
    """
    head = getattr(getattr(model, "head", None), "projection", None)
    if not isinstance(head, torch.nn.Linear) or head.out_features == 0:
        raise ValueError("fit_head needs a Hiera or HieraDet classifier with a linear head of at least one class "
                         "(model.head.projection)")
    was_training = model.training
    model.eval()
    try:
        device = head.weight.device
        feats = []
        for i in range(0, len(images), batch_size):
            # What the head sees: the pooled, normalised last-stage features (Hiera and HieraDet alike).
            tokens = model.forward_features(images[i:i + batch_size].to(device))
            feats.append(model.forward_head(tokens, pre_logits=True).float().cpu())
        feats = torch.cat(feats)
        w, b = fit_linear(feats, labels, head.out_features)
        head.weight.copy_(w.to(head.weight))
        head.bias.copy_(b.to(head.bias))
        return float(((feats.double() @ w.T + b).argmax(1) == torch.as_tensor(labels).long()).double().mean() * 100)
    finally:
        model.train(was_training)


@torch.no_grad()
def heldout_mae_loss(model, images: torch.Tensor, mask_ratio: float = 0.6, seed: int = 0,
                     batch_size: int = 256) -> dict:
    """The MAE loss on ``images`` with seeded masks, and the predict-the-mean baseline.

    Returns ``{"loss": model's MSE on the masked tokens, "baseline": MSE of predicting each masked
    token's own mean (0 in the normalised target), "ratio": loss / baseline}``; both averaged over
    the same masked tokens. The global RNG is left as it was.
    """
    was_training = model.training
    model.eval()
    total = base = count = 0.0
    device = next(model.parameters()).device
    gen = torch.Generator(device="cpu").manual_seed(seed)
    keep = model.check_mask_ratio(mask_ratio)
    try:
        for i in range(0, len(images), batch_size):
            x = images[i:i + batch_size].to(device)
            noise = torch.rand(len(x), model.num_mask_units, generator=gen)
            mask = torch.zeros_like(noise, dtype=torch.bool)
            mask.scatter_(1, noise.argsort(1)[:, :keep], True)
            loss, _, label, _ = model(x, mask=mask.to(device))
            n = label.numel()
            total += float(loss) * n
            base += float(label.float().pow(2).sum())
            count += n
    finally:
        model.train(was_training)
    return {"loss": total / count, "baseline": base / count, "ratio": total / base}


def per_class_subset(labels: torch.Tensor, per_class: int, seed: int = 0) -> torch.Tensor:
    """Indices of ``per_class`` random samples of every class in ``labels`` (sorted); a class with
    fewer samples is an error (a few-label comparison must have the same count in every class)."""
    labels = torch.as_tensor(labels).long()
    gen = torch.Generator().manual_seed(seed)
    picks = []
    for c in torch.unique(labels).tolist():
        where = torch.nonzero(labels == c)[:, 0]
        if len(where) < per_class:
            raise ValueError(f"class {c} has {len(where)} samples, fewer than {per_class}")
        picks.append(where[torch.randperm(len(where), generator=gen)[:per_class]])
    return torch.cat(picks).sort().values
