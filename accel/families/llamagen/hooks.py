"""The hook LlamaGen's generator offers an acceleration: a decoder that replaces the token loop.

`generate_tokens` (sample.py) is the release's loop, one target forward per token. A method's `attach`
(accel.registry.Method) returns a `Decoder` that makes the same [B, N] token grid its own way
(speculative decoding, LANTERN, SJD: accel/methods/speculative.py), from the network's pieces: the
`Transformer` with its per-row `KVCache` (a row is rolled back by moving its length), `CFGModel` and the
sampling functions of sample.py.
"""
from __future__ import annotations

from typing import Any, Protocol

import torch

from accel.families.llamagen.network import TextCondition


class Decoder(Protocol):
    def generate(self, cond: torch.Tensor | TextCondition, generators: list[torch.Generator]
                 ) -> tuple[torch.Tensor, dict[str, Any]]:
        """Class ids [B] (or a TextCondition) -> tokens [B, N] and the method's counters for the call; its
        forwards count their FLOPs with accel.flops.count (the generator opens the scope)."""
        ...
