"""torch.hub entry points: ``torch.hub.load("<this repo>", "hiera_base_224", pretrained=True)``.

Every zoo constructor is exposed, the video MAE models included.
"""

dependencies = ["torch", "huggingface_hub", "safetensors"]

from hiera.zoo import CONSTRUCTORS as _CONSTRUCTORS  # noqa: E402

globals().update(_CONSTRUCTORS)
