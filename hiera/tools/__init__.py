"""What the ``hiera`` commands do, as library functions (the command line only parses arguments).

* :mod:`~hiera.tools.predict`: classify images and videos (``hiera predict``);
* :mod:`~hiera.tools.features`: multi-scale feature maps written to files (``hiera features``);
* :mod:`~hiera.tools.mae_viz`: pictures of MAE reconstructions (``hiera mae-viz``);
* :mod:`~hiera.tools.export`: ONNX export checked against PyTorch (``hiera export``);
* :mod:`~hiera.tools.convert`: checkpoints between layouts (``hiera convert``).
"""
