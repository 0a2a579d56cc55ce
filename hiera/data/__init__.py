"""Inputs: reading media, the transforms the checkpoints expect, class names and datasets.

* :mod:`~hiera.data.media`: decoding images (Pillow) and videos (PyAV), finding inputs in folders;
* :mod:`~hiera.data.transforms`: evaluation transforms as the checkpoints were evaluated
  (normalisation and crop from the zoo entry), video clip sampling;
* :mod:`~hiera.data.labels`: ImageNet-1k / Kinetics-400 class names, class names saved with weights;
* :mod:`~hiera.data.images`: image datasets, seeded per-sample randomness, the resumable step
  sampler, MAE masks and the training transforms;
* :mod:`~hiera.data.video`: clip datasets, training clip transforms, multi-view evaluation;
* :mod:`~hiera.data.synthetic`: labelled synthetic shapes for tests and the quickstart.
"""
