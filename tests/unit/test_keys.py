"""Key format: generation, shape/checksum, digest and masked display."""

import hashlib
import math
import re

import pytest

from keygate.domain.errors import InvalidArgument
from keygate.domain.keys import BASE62, KeyFormat, Shape, digest

display = KeyFormat().display

FMT = KeyFormat()
KEY = FMT.generate()
KEY_RE = re.compile(r"^fl_[0-9A-Za-z]{43}[0-9A-Za-z]{6}$")


def _swap(key: str, i: int) -> str:
    """`key` with the character at `i` replaced by another base62 character."""
    other = BASE62[(BASE62.index(key[i]) + 1) % 62]
    return key[:i] + other + key[i + 1:]


def test_generate_format_and_entropy():
    keys = {FMT.generate() for _ in range(200)}
    assert len(keys) == 200
    for key in keys:
        assert KEY_RE.match(key), key
        assert FMT.shape(key) is Shape.OURS
    # 43 base62 characters carry at least 256 bits.
    assert 43 * math.log2(62) >= 256


@pytest.mark.parametrize("pos", range(3, 52))
def test_one_character_typo_after_prefix_is_malformed(pos):
    assert FMT.shape(_swap(KEY, pos)) is Shape.MALFORMED


def test_transposition_is_malformed():
    i = next(i for i in range(3, 51) if KEY[i] != KEY[i + 1])
    assert FMT.shape(KEY[:i] + KEY[i + 1] + KEY[i] + KEY[i + 2:]) is Shape.MALFORMED


@pytest.mark.parametrize(
    "key",
    [
        KEY[:-1],  # too short
        KEY + "a",  # too long
        KEY[:10] + "-" + KEY[11:],  # outside base62
        KEY[:10] + "_" + KEY[11:],
        " " + KEY,
        KEY + " ",
        KEY[:10] + "\t" + KEY[11:],
        KEY[:10] + "\x00" + KEY[11:],
        KEY + "\x7f",
        KEY[:10] + "é" + KEY[11:],
        "fl_",
        "",
        "short",  # short junk without our prefix
        "x" * 15,
        "x" * 257,  # over 256, even without our prefix
        "fl_" + "a" * 300,
    ],
)
def test_malformed(key):
    assert FMT.shape(key) is Shape.MALFORMED


@pytest.mark.parametrize(
    "key",
    [
        "x" * 16,
        "x" * 256,
        # An imported Flowise key: base64url of 32 bytes, no prefix, no checksum.
        "Zm9vYmFyYmF6cXV4LXF1dXhfY29ycmVjdC1ob3JzZS1i",
        "sk-live_0123456789abcdef",
    ],
)
def test_foreign(key):
    assert FMT.shape(key) is Shape.FOREIGN


def test_foreign_key_with_trailing_newline_is_malformed():
    assert FMT.shape("x" * 20 + "\n") is Shape.MALFORMED


def test_custom_prefix():
    fmt = KeyFormat("acme2")
    key = fmt.generate()
    assert key.startswith("acme2_") and len(key) == len("acme2_") + 49
    assert fmt.shape(key) is Shape.OURS
    # Another deployment's key is foreign here, and ours is foreign there.
    assert fmt.shape(KEY) is Shape.FOREIGN
    assert FMT.shape(key) is Shape.FOREIGN
    # The checksum covers the prefix: re-prefixing a valid key breaks it.
    assert fmt.shape("acme2_" + KEY[3:]) is Shape.MALFORMED


@pytest.mark.parametrize("prefix", ["", "f", "Fl", "1fl", "fl_", "f-l", "a" * 17, "fl "])
def test_bad_prefix_raises(prefix):
    with pytest.raises(InvalidArgument) as err:
        KeyFormat(prefix)
    assert err.value.field == "key_prefix"


def test_prefix_with_trailing_newline_raises():
    with pytest.raises(InvalidArgument):
        KeyFormat("fl\n")


def test_digest_is_sha256_of_whole_key():
    d = digest(KEY)
    assert isinstance(d, bytes) and len(d) == 32
    assert d == hashlib.sha256(KEY.encode()).digest()
    assert digest(_swap(KEY, 20)) != d


def test_display_masks_our_key():
    shown = display(KEY)
    assert shown == f"fl_{KEY[3:7]}...{KEY[-4:]}"
    assert KEY[7:-4] not in shown
    assert not any(KEY[i:i + 8] in shown for i in range(3, len(KEY) - 8))


def test_display_masks_foreign_key_without_underscore():
    key = "AbCdEfGhIjKlMnOpQrStUvWxYz0123456789-Ab"
    assert display(key) == "AbCd...9-Ab"


def test_display_masks_foreign_key_with_underscore():
    # Flowise keys are base64url, so about half of them contain '_'.
    key = "AbCdEfGhIjKlMnOpQrStUvWxYz0123456789_-Ab"
    assert "EfGhIjKlMnOp" not in display(key)
