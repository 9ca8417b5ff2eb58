"""PROTOCOL.md and the wire table: the document says what the codecs do."""

from __future__ import annotations

import subprocess

from isopress import codec
from isopress.protocol import wire

import protocol_tables
from conftest import micropython_env, tool


def test_generated_tables_are_current():
    text = protocol_tables.DOC.read_text()
    assert protocol_tables.current_block(text) == protocol_tables.generated(), (
        "PROTOCOL.md's tables differ from wire.py: run `make vectors` and review the diff"
    )


def test_schema_hash_is_the_same_under_micropython():
    run = subprocess.run(
        [tool("micropython"), "-c", "import wire; print(wire.schema_hash())"],
        capture_output=True,
        text=True,
        env=micropython_env(),
        check=True,
    )
    assert int(run.stdout) == wire.schema_hash()


def test_table_is_consistent():
    ids = [m[0] for m in wire.MESSAGES]
    names = [m[1] for m in wire.MESSAGES]
    assert len(set(ids)) == len(ids) and len(set(names)) == len(names)
    assert all(0 < i < 256 for i in ids)
    assert wire.fields_size([(n, c, "1", 0) for n, c in wire.HEADER]) == wire.HEADER_SIZE
    for m in codec.MESSAGES.values():
        assert m.head_size <= wire.MAX_PAYLOAD, m.name
        if m.item:
            assert m.max_items >= 1, m.name
        for f in (*m.head, *m.item):
            assert f.code in ("B", "b", "H", "h", "I", "i") or f.code.endswith("s"), f
        names = [f.name for f in (*m.head, *m.item)]
        assert len(set(names)) == len(names) and "items" not in names, m.name
    for table in (wire.RESULTS, wire.EVENTS, wire.ALARMS, wire.MODES, wire.FRAME_ERRORS):
        codes = [c for c, _ in table]
        assert len(set(codes)) == len(codes)
    assert all(c < 16 for c, _ in wire.ALARMS)  # alarms is a u16 bit set
    assert wire.MAX_WIRE == wire.MAX_FRAME + 1 + 2  # one COBS code byte, two delimiters


def test_host_commands_and_device_messages_are_separate():
    to_device = {m.name for m in codec.MESSAGES.values() if m.to_device}
    assert {"IDENTIFY", "CLOCK_QUERY", "SET_SETPOINT", "REPLAY"} <= to_device
    assert not {"HELLO", "TELEMETRY", "EVENT", "ACK", "REPLAY_DONE"} & to_device


def test_schema_text_example_in_the_doc_is_right():
    text = protocol_tables.DOC.read_text()
    quoted = text.split("It begins\n  `", 1)[1].split("...`", 1)[0]
    assert wire.schema_text().startswith(quoted)
