"""A stand-in for ``torchvision``, put on the path only when the real one cannot be imported.

The Linux ``torchvision`` wheels on this project's package index are CUDA builds that fail to
import next to the CPU build of torch the tests use (``operator torchvision::nms does not
exist``). The multi-node PyTorch guide uses one thing from it, ``transforms.ToTensor``, which
``transforms.py`` here implements with torchvision's documented semantics.
"""
