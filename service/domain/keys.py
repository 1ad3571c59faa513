"""The API key itself: generation, shape and checksum, digest, masked display.

Format: `<prefix>_<secret><checksum>`. The secret is 256 random bits written as 43
base62 characters; the checksum is CRC32 of everything before it, as 6 base62
characters (the scheme GitHub tokens use), so a mistyped key is refused without a
lookup and secret scanners can recognise ours. Only the SHA-256 digest is stored.
"""

from __future__ import annotations

import enum
import hashlib
import re
import secrets
import zlib
from dataclasses import dataclass

from .errors import InvalidArgument

try:  # CPython's own SHA-256 (3.11: _sha256, 3.12+: _sha2): a fifth cheaper than OpenSSL's for a key-sized
    # input, as it sets up no EVP context per call; `digest` runs on every Check. The same function.
    from _sha256 import sha256 as _sha256  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - Python 3.12+ or a build without it
    try:
        from _sha2 import sha256 as _sha256  # type: ignore[import-not-found]
    except ImportError:
        _sha256 = hashlib.sha256

BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
SECRET_BYTES = 32
SECRET_LEN = 43  # 62**43 > 2**256, so every 32-byte secret fits
CHECKSUM_LEN = 6  # 62**6 > 2**32
FOREIGN_MIN_LEN = 16
MAX_KEY_LEN = 256
DEFAULT_PREFIX = "fl"

_PREFIX_RE = re.compile(r"^[a-z][a-z0-9]{1,15}\Z")
_FOREIGN_RE = re.compile(r"^[\x21-\x7e]+\Z")  # printable ASCII, no spaces
_POWERS = [62**i for i in range(SECRET_LEN)]
_OURS_RE = re.compile(rf"^[0-9A-Za-z]{{{SECRET_LEN + CHECKSUM_LEN}}}\Z")


class Shape(enum.Enum):
    """What a presented key looks like before any lookup."""

    OURS = "ours"  # our prefix, length, alphabet and checksum all right
    FOREIGN = "foreign"  # not ours (e.g. an imported Flowise key): looked up by digest only
    MALFORMED = "malformed"


def _base62(value: int, width: int) -> str:
    """`value` as exactly `width` base62 digits, most significant first."""
    return "".join([BASE62[value // power % 62] for power in _POWERS[width - 1 :: -1]])


def _checksum(body: str) -> str:
    return _base62(zlib.crc32(body.encode()), CHECKSUM_LEN)


def digest(key: str) -> bytes:
    """SHA-256 of the whole key: the only form in which a key is ever stored."""
    return _sha256(key.encode()).digest()


def fingerprint(key_digest: bytes) -> bytes:
    """16 bytes derived from a digest for the in-memory filter of known keys.

    Change notifications carry this, never the digest itself; it cannot be turned back
    into the digest, let alone the key.
    """
    return hashlib.blake2b(key_digest, digest_size=16, person=b"keygate-filter").digest()


@dataclass(frozen=True, slots=True)
class KeyFormat:
    """Generates and recognises keys with one configured prefix."""

    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        if not _PREFIX_RE.match(self.prefix):
            raise InvalidArgument("key_prefix", "must be 2-16 lowercase letters or digits, starting with a letter")

    def generate(self) -> str:
        secret = _base62(int.from_bytes(secrets.token_bytes(SECRET_BYTES)), SECRET_LEN)
        body = f"{self.prefix}_{secret}"
        return body + _checksum(body)

    def display(self, key: str) -> str:
        """A masked form safe to show and store: our prefix (if any) plus four leading and four trailing
        characters of the rest. A foreign key's own separators are not trusted to mark a prefix."""
        head = f"{self.prefix}_"
        known = head if key.startswith(head) else ""
        rest = key[len(known):]
        return f"{known}{rest[:4]}...{rest[-4:]}"

    def shape(self, key: str) -> Shape:
        """Classify a presented key without touching storage. Constant work for every input size we accept."""
        if len(key) > MAX_KEY_LEN or not _FOREIGN_RE.match(key):
            return Shape.MALFORMED
        head = f"{self.prefix}_"
        if not key.startswith(head):
            return Shape.FOREIGN if len(key) >= FOREIGN_MIN_LEN else Shape.MALFORMED
        rest = key[len(head):]
        if not _OURS_RE.match(rest):
            return Shape.MALFORMED
        body, check = key[: -CHECKSUM_LEN], key[-CHECKSUM_LEN:]
        return Shape.OURS if _checksum(body) == check else Shape.MALFORMED  # a checksum is not a secret
