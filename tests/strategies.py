"""Hypothesis strategies built from the wire table: any value every field can hold."""

from __future__ import annotations

from hypothesis import strategies as st

from isopress import codec

_BITS = {"B": 8, "H": 16, "I": 32}


def int_range(code: str) -> tuple[int, int]:
    """Smallest and largest integer a struct code holds."""
    bits = _BITS[code.upper()]
    if code.islower():
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def value(code: str) -> st.SearchStrategy:
    if code.endswith("s"):
        n = int(code[:-1])
        return st.binary(min_size=n, max_size=n)
    return st.integers(*int_range(code))


def fields(msg: codec.Message) -> st.SearchStrategy[dict]:
    head = {f.name: value(f.code) for f in msg.head}
    if msg.item:
        item = st.fixed_dictionaries({f.name: value(f.code) for f in msg.item})
        head["items"] = st.lists(item, max_size=msg.max_items)
    return st.fixed_dictionaries(head)


def message(msg: codec.Message) -> st.SearchStrategy[tuple]:
    return st.tuples(st.just(msg.name), fields(msg), value("H"), value("B"))


any_message = st.sampled_from(sorted(codec.MESSAGES.values(), key=lambda m: m.id)).flatmap(message)


def wire_frames(max_frames: int = 5) -> st.SearchStrategy[list[bytes]]:
    return st.lists(
        any_message.map(lambda m: codec.encode(m[0], m[1], seq=m[2], flags=m[3])),
        min_size=1,
        max_size=max_frames,
    )
