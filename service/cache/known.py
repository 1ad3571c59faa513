"""A Bloom filter of every stored secret: unknown keys are refused without a database query.

Sized at 10 bits and 7 hash positions per key (about 1% false positives, 1.2 MB per
million keys). No false negatives, so it may only answer "not a key" while it is complete:
loaded after the change listener is up, and fed every new secret's fingerprint since.
"""

from __future__ import annotations

BITS_PER_KEY = 10
HASHES = 7
MIN_CAPACITY = 65_536


class KnownDigests:
    def __init__(self, capacity: int) -> None:
        self.capacity = max(capacity, MIN_CAPACITY)
        self._bits = self.capacity * BITS_PER_KEY
        self._array = bytearray((self._bits + 7) // 8)
        self.count = 0

    def _positions(self, fingerprint: bytes) -> list[int]:
        h1 = int.from_bytes(fingerprint[:8])
        h2 = int.from_bytes(fingerprint[8:16]) | 1
        bits = self._bits
        return [(h1 + i * h2) % bits for i in range(HASHES)]

    def add(self, fingerprint: bytes) -> None:
        array = self._array
        for p in self._positions(fingerprint):
            array[p >> 3] |= 1 << (p & 7)
        self.count += 1

    def __contains__(self, fingerprint: bytes) -> bool:
        array = self._array
        return all(array[p >> 3] & (1 << (p & 7)) for p in self._positions(fingerprint))

    @property
    def overfull(self) -> bool:
        """Past capacity the false-positive rate climbs: time to rebuild larger."""
        return self.count > self.capacity
