"""``transforms.ToTensor`` with torchvision's semantics, for the ports (see ``__init__``)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


class ToTensor:
    """A PIL image or ``(H, W[, C])`` uint8 array -> a float ``(C, H, W)`` tensor in [0, 1]."""

    def __call__(self, pic: Any) -> torch.Tensor:
        array = np.array(pic, copy=True)
        if array.ndim == 2:
            array = array[:, :, None]
        tensor = torch.from_numpy(array).permute(2, 0, 1).contiguous()
        return tensor.float().div(255) if tensor.dtype == torch.uint8 else tensor.float()
