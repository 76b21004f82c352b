"""The PromptEncoder's cache of prompt embeddings: least recently used first out, bounded by entries and by
bytes. Embeddings grow with the prompt (Qwen3-4B: 10 KiB a token in float32, 5 MiB for a 512-token prompt),
so a count alone would let long prompts fill the encoder's memory. Entries are anything with ``nbytes`` (tensors);
no torch is imported here."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Hashable


class EmbeddingCache:
    def __init__(self, max_entries: int, max_bytes: int):
        self.max_entries, self.max_bytes = max_entries, max_bytes
        self._entries: OrderedDict[Hashable, Any] = OrderedDict()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Hashable) -> Any:
        embeds = self._entries.get(key)
        if embeds is not None:
            self._entries.move_to_end(key)
        return embeds

    def put(self, key: Hashable, embeds) -> None:
        """Keep ``embeds`` unless it alone is over the byte bound; evict the oldest until both bounds hold."""
        if key in self._entries or embeds.nbytes > self.max_bytes:
            return
        self._entries[key] = embeds
        self.bytes += embeds.nbytes
        while len(self._entries) > self.max_entries or self.bytes > self.max_bytes:
            self.bytes -= self._entries.popitem(last=False)[1].nbytes
