"""Training: MAE pretraining, fine-tuning and evaluation of Hiera models on images or videos.

* :mod:`~hiera.train.commands`: :func:`pretrain`, :func:`finetune` and :func:`evaluate`, the library
  side of ``hiera pretrain`` / ``finetune`` / ``evaluate`` (re-exported here);
* :mod:`~hiera.train.modality`: what differs between images and videos (recipe, data, transforms,
  evaluation protocol), chosen once per run;
* :mod:`~hiera.train.recipes`: the paper's recipes, optimizer (layer decay) and learning-rate schedule;
* :mod:`~hiera.train.engine`: the training loop (``Trainer``), its tasks, checkpoints and run folder;
* :mod:`~hiera.train.plots`: training curves and comparison charts;
* :mod:`~hiera.train.probe`: held-out MAE loss, linear probes, fitting a head;
* :mod:`~hiera.train.quickstart`: ``hiera quickstart``, MAE versus no pretraining on synthetic data.
"""

from .commands import evaluate, finetune, pretrain

__all__ = ["evaluate", "finetune", "pretrain"]
