"""Static KV cache for one document: buffers allocated once, written in place by position.

It also remembers which token ids its entries encode, so a new prompt for the same document re-encodes
only from the first token that changed (`reusable`).
"""

from __future__ import annotations

import itertools

import torch

from .config import ModelArgs

_UIDS = itertools.count()


class KVCache:
    """Per layer, K and V of shape [1, kv_heads, capacity, head_dim]; entries [0, length) are valid.

    All layers keep every position (the sliding layers too): an edit anywhere can then be re-encoded from
    the edit on, which a ring buffer of the last W keys would not allow.
    """

    def __init__(self, args: ModelArgs, capacity: int, *, device: torch.device, dtype: torch.dtype) -> None:
        self.args = args
        self.device, self.dtype = device, dtype
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.tokens = torch.empty(0, dtype=torch.long)  # ids of the valid entries, on the CPU
        self._allocate(capacity)

    @property
    def length(self) -> int:
        return int(self.tokens.numel())

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[2]

    @torch.inference_mode()  # only inference writes a cache; compiled steps guard on the tensors' kind
    def _allocate(self, capacity: int) -> None:
        old_keys, old_values, n = self.keys, self.values, self.length
        self.keys, self.values = [], []
        self.uid = next(_UIDS)  # new buffers, new id: CUDA graphs of the old ones must not be replayed
        for i, layer_type in enumerate(self.args.layer_types):
            shape = (1, self.args.kv_heads(layer_type), capacity, self.args.head_dim(layer_type))
            self.keys.append(torch.zeros(shape, device=self.device, dtype=self.dtype))
            self.values.append(torch.zeros(shape, device=self.device, dtype=self.dtype))
            if n:
                self.keys[i][:, :, :n] = old_keys[i][:, :, :n]
                self.values[i][:, :, :n] = old_values[i][:, :, :n]

    def reserve(self, n: int) -> None:
        """Room for ``n`` positions; grows (doubling, keeping the valid entries) only when needed."""
        if n > self.capacity:
            self._allocate(max(n, 2 * self.capacity))

    def reusable(self, ids: torch.Tensor) -> int:
        """How many leading entries stay valid for prompt ``ids``: the index of the first changed token."""
        n = min(self.length, ids.numel())
        differ = (self.tokens[:n] != ids[:n].cpu()).nonzero()
        return int(differ[0]) if differ.numel() else n

    def truncate(self, n: int) -> None:
        self.tokens = self.tokens[:n]

    def extend(self, ids: torch.Tensor) -> None:
        """Record that the entries after ``length`` now encode ``ids`` (call after the encoder wrote them)."""
        self.tokens = torch.cat([self.tokens, ids.cpu()])
