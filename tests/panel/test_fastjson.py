"""panel.fastjson: orjson where it reads a document as the json module does, else json."""

import json
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from panel import fastjson

LONG_NUMBER = re.compile(rb"\d{19}")

# Bytes rich in digit runs near 19 long, broken by what surrounds numbers in JSON (and
# by bytes that are digits elsewhere: Unicode digits are not ASCII ones).
pieces = st.one_of(
    st.text("0123456789", min_size=15, max_size=22).map(str.encode),
    st.sampled_from([b" ", b",", b".", b"-", b"e", b'"', b"\x00", b"\xd9\xa3", b"\xff", b"0"]),
    st.binary(max_size=4),
)


@given(st.lists(pieces, max_size=12).map(b"".join))
def test_it_finds_a_run_of_19_digits_as_the_regex_finds_it(raw):
    assert fastjson.has_long_number(raw) is (LONG_NUMBER.search(raw) is not None)


@pytest.mark.parametrize(
    ("raw", "found"),
    [
        (b"1234567890123456789", True),
        (b"123456789012345678", False),
        (b'{"id": "x-1234567890123456789"}', True),  # in a string: json reads it, as before
        (b"123456789.0123456789", False),
        ("١٢٣٤٥٦٧٨٩٠١٢٣٤٥٦٧٨٩", False),  # Arabic-Indic digits are not JSON's
        ("12345678901234567890", True),
        (bytearray(b"[12345678901234567890]"), True),
    ],
)
def test_it_finds_long_numbers_in_bytes_and_text(raw, found):
    assert fastjson.has_long_number(raw) is found


numbers = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63), -(2**63) - 1, 10**18, 10**19]),
    st.floats(allow_nan=False, allow_infinity=False),
)
documents = st.recursive(
    st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=8)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=4), inner, max_size=4)
    ),
    max_leaves=12,
)


@given(documents)
def test_it_reads_every_document_as_the_json_module_does(value):
    raw = json.dumps(value).encode()
    parsed = fastjson.loads(raw)
    assert parsed == json.loads(raw)
    assert json.dumps(parsed) == json.dumps(json.loads(raw))  # ints stay ints, exactly


def test_an_integer_past_64_bits_is_read_exactly():
    assert fastjson.loads(b'{"n": 18446744073709551617}') == {"n": 18446744073709551617}
    assert type(fastjson.loads(b"[-9223372036854775809]")[0]) is int
