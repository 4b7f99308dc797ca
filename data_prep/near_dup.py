"""Near-duplicate prompts: word-shingle Jaccard similarity, found through MinHash banding (LSH).

Exact duplicates (same text up to case and whitespace) are `filters.Filters`' `duplicate_prompt`. A
generator asked many times for questions on one topic also returns the same question reworded a little
("What are the benefits of composting?" / "What are the main benefits of composting at home?"); those
are near duplicates. A prompt is one when the Jaccard similarity of its set of word 3-grams (words as
`filters.words` splits them) with an earlier kept prompt reaches `threshold`.

Comparing every pair costs n^2; instead each prompt gets a 64-value MinHash signature, cut into 16 bands
of 4, and only prompts that share a whole band are compared exactly. Two prompts with Jaccard J share a
band with probability 1 - (1 - J^4)^16 (0.99 at J = 0.7, 0.03 at J = 0.2). Hashes are crc32 with fixed
seeds, so the result is the same in every run and process.
"""

from __future__ import annotations

import zlib

import numpy as np

from data_prep.filters import words

NEAR_DUPLICATE = "near_duplicate"


class NearDuplicates:
    def __init__(self, threshold: float = 0.7, shingle: int = 3, num_perm: int = 64, bands: int = 16, seed: int = 1):
        if not 0 < threshold <= 1:
            raise ValueError(f"near-duplicate threshold must be in (0, 1], got {threshold}")
        if num_perm % bands:
            raise ValueError(f"num_perm={num_perm} must be a multiple of bands={bands}")
        self.threshold, self.shingle, self.rows = threshold, shingle, num_perm // bands
        rng = np.random.RandomState(seed)
        self.a = (rng.randint(1, 2**31, size=num_perm).astype(np.uint64) << np.uint64(32)) | np.uint64(1)
        self.b = rng.randint(0, 2**31, size=num_perm).astype(np.uint64) << np.uint64(16)
        self.buckets: list[dict[bytes, int]] = [{} for _ in range(bands)]
        self.kept: list[tuple[frozenset, str]] = []

    def shingles(self, text: str) -> frozenset:
        ws = words(text)
        n = min(self.shingle, len(ws)) or 1
        return frozenset(" ".join(ws[i:i + n]) for i in range(max(len(ws) - n + 1, 1)))

    def _signature(self, sh: frozenset) -> np.ndarray:
        h = np.fromiter((zlib.crc32(s.encode()) for s in sh), dtype=np.uint64, count=len(sh))
        with np.errstate(over="ignore"):  # multiplication mod 2^64 is the point
            return ((self.a[:, None] * h[None, :] + self.b[:, None]) >> np.uint64(32)).min(axis=1)

    def check(self, text: str, name: str = "") -> str | None:
        """None (and remember `text`) when it is new; else which kept prompt it nearly repeats."""
        sh = self.shingles(text)
        sig = self._signature(sh)
        keys = [sig[i * self.rows:(i + 1) * self.rows].tobytes() for i in range(len(self.buckets))]
        seen = set()
        for band, key in zip(self.buckets, keys):
            j = band.get(key)
            if j is None or j in seen:
                continue
            seen.add(j)
            other, other_name = self.kept[j]
            sim = len(sh & other) / len(sh | other)
            if sim >= self.threshold:
                return f"word 3-gram Jaccard {sim:.2f} >= {self.threshold:g} with {other_name or 'an earlier prompt'}"
        idx = len(self.kept)
        self.kept.append((sh, name))
        for band, key in zip(self.buckets, keys):
            band.setdefault(key, idx)
        return None
