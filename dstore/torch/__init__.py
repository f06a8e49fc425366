"""PyTorch datasets that read a dstore dataset in place (docs/training.md, "PyTorch").

- :class:`FileDataset`: map-style, one item per file matching a pattern.
- :class:`SampleStream`: iterable, shuffled from ``(seed, epoch)``, split across
  distributed ranks and DataLoader workers so that every sample is seen once
  per epoch, resumable mid-epoch from :meth:`SampleStream.state_dict`.

Needs torch (``pip install 'dstore[torch]'``); ``import dstore`` never imports it.
"""

from __future__ import annotations

try:
    import torch as _torch  # noqa: F401 - the optional dependency this module is about
except ImportError as e:  # pragma: no cover - exercised where torch is missing
    raise ImportError("dstore.torch needs PyTorch, an optional dependency: pip install 'dstore[torch]'") from e

from dstore.torch.datasets import FileDataset, SampleStream, StreamLoader

__all__ = ["FileDataset", "SampleStream", "StreamLoader"]
