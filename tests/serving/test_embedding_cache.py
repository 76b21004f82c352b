"""EmbeddingCache: least recently used out first, within a count and a byte bound."""

import torch

from zimage_serve.serving.embedding_cache import EmbeddingCache


def embeds(tokens: int) -> torch.Tensor:
    return torch.zeros(tokens, 2560)  # float32: 10 KiB a token


def test_the_least_recently_used_goes_first_when_the_count_is_reached():
    cache = EmbeddingCache(max_entries=2, max_bytes=2**30)
    cache.put("a", embeds(1))
    cache.put("b", embeds(1))
    assert cache.get("a") is not None  # "b" is now the least recently used
    cache.put("c", embeds(1))
    assert (cache.get("a") is not None, cache.get("b"), cache.get("c") is not None) == (True, None, True)
    assert len(cache) == 2 and cache.bytes == 2 * 10240


def test_long_prompts_are_bounded_by_bytes_not_only_by_count():
    cache = EmbeddingCache(max_entries=4096, max_bytes=12 * 2**20)  # 12 MiB: two 512-token prompts
    for i in range(5):
        cache.put(i, embeds(512))
    assert len(cache) == 2 and cache.bytes == 2 * 512 * 10240 <= cache.max_bytes
    assert cache.get(3) is not None and cache.get(0) is None


def test_an_entry_over_the_whole_bound_is_not_kept_and_evicts_nothing():
    cache = EmbeddingCache(max_entries=8, max_bytes=1 * 2**20)
    cache.put("short", embeds(10))
    cache.put("long", embeds(512))
    assert cache.get("long") is None and cache.get("short") is not None and cache.bytes == 10 * 10240


def test_a_zero_size_cache_keeps_nothing():
    cache = EmbeddingCache(max_entries=0, max_bytes=2**30)
    cache.put("a", embeds(1))
    assert len(cache) == 0 and cache.bytes == 0
