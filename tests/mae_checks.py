"""Shared by the MAE tests: synthetic shapes as normalised tensors, and a short pretraining loop."""

import torch

from hiera.data.images import IMAGENET_MEAN, IMAGENET_STD
from hiera.data.synthetic import generate
from hiera.train.recipes import lr_schedule


def synthetic_tensors(split: str, per_class: int, seed: int, size: int = 64):
    """``(images [N, 3, size, size] normalised with ImageNet's statistics, labels [N])``."""
    x, y = generate(split, per_class, size=size, seed=seed)
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255 - mean) / std, torch.as_tensor(y)


def pretrain_briefly(net, pool: torch.Tensor, steps: int, batch: int = 64, lr: float = 1e-3, flip: bool = False):
    """``steps`` AdamW steps of MAE pretraining (mask ratio 0.6, warmup then cosine) on random
    batches of ``pool`` (flipped at random with ``flip``), seeded; returns ``net``."""
    opt = torch.optim.AdamW(net.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.05)
    gen = torch.Generator().manual_seed(0)
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr_schedule(step, steps, steps // 10, lr)
        x = pool[torch.randint(0, len(pool), (batch,), generator=gen)]
        if flip:
            x = torch.where((torch.rand(batch, generator=gen) < 0.5).view(-1, 1, 1, 1), x.flip(-1), x)
        loss = net(x, mask_ratio=0.6)[0]
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net
