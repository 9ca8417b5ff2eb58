"""firmware/config.py under MicroPython: defaults from the board profile, the
checked file on flash (round trip, corruption, interrupted writes), and every
key's range and cross-key rule, each rejection changing nothing and naming
the accepted value nearest the one asked for."""

from __future__ import annotations

import binascii
import json
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from isopress.protocol import wire

from conftest import ROOT, MicroPython

BOARDS = ROOT / "hardware" / "boards"
SIM = BOARDS / "sim.json"
R = {name: code for code, name in wire.RESULTS}
OK, OOR = R["OK"], R["OUT_OF_RANGE"]
KEYS = {k[0]: k for k in wire.CONFIG_KEYS}
K = {k[1]: k[0] for k in wire.CONFIG_KEYS}
BOARD_KEYS = [k[0] for k in wire.CONFIG_KEYS if k[2] == "board"]
CHANNEL_KEYS = [k[0] for k in wire.CONFIG_KEYS if k[2] == "channel"]
# CONFIG_BAD codes (PROTOCOL.md, EVENT table)
MISSING, CRC, UNREADABLE, VALUE = 1, 2, 3, 4
MPA = 1_000_000


@pytest.fixture(scope="module")
def mp() -> Iterator[MicroPython]:
    m = MicroPython(ROOT / "tests" / "mpy" / "config_server.py")
    yield m
    m.close()


def fresh() -> MicroPython:
    """A new interpreter: what a board has after a reset."""
    return MicroPython(ROOT / "tests" / "mpy" / "config_server.py")


def load(mp: MicroPython, d: Path, profile: Path = SIM) -> dict:
    return mp(op="load", dir=str(d) + "/", profile=str(profile))


def dump(mp: MicroPython) -> dict:
    return mp(op="dump")["values"]


def set_(mp: MicroPython, ch: int, key: int, value: int) -> tuple[int, int]:
    got = mp(op="set", ch=ch, key=key, value=value)
    return got["result"], got["value"]


def file_bytes(d: Path) -> bytes:
    return (d / "config.json").read_bytes()


def crc16(data: bytes) -> int:
    return binascii.crc_hqx(data, 0xFFFF)  # CRC-16/IBM-3740


def checked_file(d: Path, body: str) -> None:
    """A file in storage.py's format: CRC-32 line, then the JSON body."""
    crc = "%08x" % (zlib.crc32(body.encode()) & 0xFFFFFFFF)
    (d / "config.json").write_text(crc + "\n" + body)


# ---- defaults ---------------------------------------------------------------


def test_no_file_gives_profile_defaults_and_missing(mp, tmp_path):
    assert load(mp, tmp_path) == {"status": MISSING, "crc": 0, "cfg_status": MISSING}
    v = dump(mp)
    assert v["0"] == {str(k[0]): k[7] for k in wire.CONFIG_KEYS if k[2] == "board"}
    iso = v["1"]
    assert iso[str(K["trip"])] == 8 * MPA  # limits.trip_mpa
    assert iso[str(K["max_working"])] == 7 * MPA  # 0.875 x trip
    assert iso[str(K["trip_reset"])] == 7_500_000  # midway
    assert iso[str(K["ramp_up"])] == MPA and iso[str(K["ramp_down"])] == MPA // 2
    assert iso[str(K["tolerance"])] == 25_000  # 0.25 % of 10 MPa
    assert iso[str(K["deadband"])] == 3_000  # 0.03 %
    assert iso[str(K["fill_min_rise"])] == iso[str(K["rise_alarm"])] == 50_000  # 0.5 %
    assert iso[str(K["leak_alarm"])] == 10
    assert iso[str(K["analog_fs"])] == 10 * MPA and iso[str(K["analog_fs_v"])] == 3000
    assert str(K["area"]) not in iso
    uni = v["3"]
    # 18 kN trip over a 10 mm pellet (78.54 mm2), 20 kN capacity as full scale
    assert uni[str(K["area"])] == 7854
    assert uni[str(K["trip"])] == 18_000 * 10**8 // 7854 == 229_182_582
    assert uni[str(K["tolerance"])] == (20_000 * 10**8 // 7854) * 25 // 10_000
    assert uni[str(K["ramp_up"])] == 5 * MPA and uni[str(K["ramp_down"])] == 2 * MPA
    assert uni[str(K["analog_fs"])] == 150 * MPA
    monitor = v["4"]
    assert str(K["deadband"]) not in monitor and str(K["control"]) not in monitor


@pytest.mark.parametrize("board", sorted(p.name for p in BOARDS.glob("*.json")))
def test_every_profile_defaults_pass_their_own_rules(tmp_path, board):
    mp = fresh()
    try:
        assert load(mp, tmp_path, BOARDS / board)["status"] == MISSING
        before = dump(mp)
        assert mp(op="save")["ok"] is True
        again = fresh()
        try:
            got = load(again, tmp_path, BOARDS / board)
            assert got["status"] == 0 and got["crc"] == crc16(file_bytes(tmp_path))
            assert dump(again) == before
        finally:
            again.close()
    finally:
        mp.close()


def test_value_by_name(mp, tmp_path):
    load(mp, tmp_path)
    assert mp(op="value", ch=1, name="trip") == {"value": 8 * MPA}
    assert mp(op="value", ch=0, name="tick_hz") == {"value": 20}
    assert "error" in mp(op="value", ch=1, name="no_such_key")
    assert "error" in mp(op="value", ch=1, name="area")  # isostatic: no area
    assert "error" in mp(op="value", ch=9, name="trip")


# ---- the file -----------------------------------------------------------------


def configure(mp: MicroPython) -> None:
    assert set_(mp, 0, K["tick_hz"], 20) == (OK, 20)
    assert set_(mp, 1, K["trip"], 6 * MPA) == (OK, 6 * MPA)
    assert set_(mp, 3, K["area"], 50_000) == (OK, 50_000)  # a 500 mm2 pouch
    assert set_(mp, 4, K["leak_alarm"], 250) == (OK, 250)
    stored = {"unit": "Pa", "sensor": 2, "points": [[0, 4010, 0], [1, 19990, 10 * MPA]], "tare": 0}
    assert mp(op="set_calibration", ch=2, stored=stored)["result"] == OK


def test_round_trip_in_a_fresh_process(mp, tmp_path):
    load(mp, tmp_path)
    configure(mp)
    before = dump(mp)
    saved = mp(op="save")
    assert saved["ok"] is True
    data = file_bytes(tmp_path)
    assert saved["crc"] == crc16(data) != 0
    other = fresh()
    try:
        assert load(other, tmp_path) == {"status": 0, "crc": saved["crc"], "cfg_status": 0}
        assert dump(other) == before
        assert other(op="calibration", ch=2)["stored"]["points"][1] == [1, 19990, 10 * MPA]
        # derived keys followed what was set: max_working from the new trip
        assert before["1"][str(K["max_working"])] == 6 * MPA * 7 // 8
        assert before["3"][str(K["trip"])] == 36 * MPA  # 18 kN over 500 mm2
        # saving unchanged settings again writes the same bytes and CRC
        assert other(op="save") == {"ok": True, "crc": saved["crc"]}
        assert file_bytes(tmp_path) == data
    finally:
        other.close()


def test_failed_save_keeps_the_old_file_and_crc(mp, tmp_path):
    load(mp, tmp_path)
    saved = mp(op="save")
    data = file_bytes(tmp_path)
    configure(mp)
    (tmp_path / "config.json.tmp").mkdir()  # the flash refuses the temporary file
    assert mp(op="save") == {"ok": False, "crc": saved["crc"]}
    assert file_bytes(tmp_path) == data
    assert load(mp, tmp_path)["crc"] == saved["crc"] == crc16(data)


def saved_config(tmp_path: Path) -> tuple[bytes, dict]:
    mp = fresh()
    try:
        load(mp, tmp_path)
        configure(mp)
        assert mp(op="save")["ok"] is True
        return file_bytes(tmp_path), dump(mp)
    finally:
        mp.close()


def defaults(mp: MicroPython, tmp_path: Path) -> dict:
    empty = tmp_path / "empty"
    empty.mkdir(exist_ok=True)
    load(mp, empty)
    return dump(mp)


def flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x20]) + data[at + 1 :]


def corruptions(data: bytes) -> list[tuple[str, bytes | None, int]]:
    body = data.index(b"\n") + 1
    return [
        ("byte flipped in the body", flip(data, body + 10), CRC),
        ("byte flipped in the last character", flip(data, len(data) - 1), CRC),
        ("byte flipped in the CRC line", flip(data, 3), CRC),
        ("truncated", data[: len(data) * 2 // 3], CRC),
        ("truncated to the CRC line", data[:5], UNREADABLE),
        ("empty", b"", UNREADABLE),
        ("garbage", bytes(range(256)) * 3, UNREADABLE),
        ("newline lost", data.replace(b"\n", b" ", 1), UNREADABLE),
        ("missing", None, MISSING),
    ]


@pytest.mark.parametrize("case", range(9))
def test_corrupted_file_gives_defaults_and_the_right_status(mp, tmp_path, case):
    data, _ = saved_config(tmp_path)
    name, bad, status = corruptions(data)[case]
    want = defaults(mp, tmp_path)
    if bad is None:
        (tmp_path / "config.json").unlink()
    else:
        (tmp_path / "config.json").write_bytes(bad)
    got = load(mp, tmp_path)
    assert got == {"status": status, "crc": 0, "cfg_status": status}, name
    assert dump(mp) == want, name
    assert mp(op="calibration", ch=2)["stored"] is None


SOUND_BUT_WRONG = [
    ("not our format", '{"tick_hz": 50}', UNREADABLE),
    ("another schema", '[["isopress-config", 2], ["board", []]]', UNREADABLE),
    ("unknown section", '[["isopress-config", 1], ["boards", []]]', UNREADABLE),
    ("pairs are not pairs", '[["isopress-config", 1], ["board", [[1]]]]', UNREADABLE),
    ("not JSON", "tick_hz = 50", UNREADABLE),
    ("value out of range", '[["isopress-config", 1], ["board", [[1, 500]]]]', VALUE),
    ("cross-key rule", '[["isopress-config", 1], ["board", [[1, 5], [2, 10]]]]', VALUE),
    ("unknown key", '[["isopress-config", 1], ["board", [[99, 5]]]]', VALUE),
    ("channel key on the board", '[["isopress-config", 1], ["board", [[17, 5]]]]', VALUE),
    ("unknown channel", '[["isopress-config", 1], ["channel", 9, [[17, 5]], null]]', VALUE),
    ("area on isostatic", '[["isopress-config", 1], ["channel", 1, [[31, 500]], null]]', VALUE),
    ("trip above the profile", '[["isopress-config", 1], ["channel", 1, [[17, 8000001]], null]]',
     VALUE),
    ("not an integer", '[["isopress-config", 1], ["channel", 1, [[17, 5.5]], null]]', VALUE),
    ("bad calibration", '[["isopress-config", 1], ["channel", 1, [], '
     '[["points", [[0, 1, 5], [1, 2, 0], [2, 3, 7]]], ["sensor", 1], ["tare", 0], '
     '["unit", "Pa"]]]]', VALUE),
]  # fmt: skip


@pytest.mark.parametrize("name, body, status", SOUND_BUT_WRONG, ids=[c[0] for c in SOUND_BUT_WRONG])
def test_sound_file_with_wrong_content_gives_defaults(mp, tmp_path, name, body, status):
    want = defaults(mp, tmp_path)
    checked_file(tmp_path, body)
    assert load(mp, tmp_path) == {"status": status, "crc": 0, "cfg_status": status}
    assert dump(mp) == want


def test_sound_file_written_by_hand_is_read(mp, tmp_path):
    body = (
        '[["isopress-config", 1], ["board", [[2, 15]]], '
        '["channel", 1, [[17, 5000000], [22, 0]], [["points", []], ["sensor", 1], '
        '["tare", -1000], ["unit", "Pa"]]]]'
    )
    checked_file(tmp_path, body)
    got = load(mp, tmp_path)
    assert got["status"] == 0 and got["crc"] == crc16(file_bytes(tmp_path))
    v = dump(mp)
    assert v["0"][str(K["telemetry_hz"])] == 15
    assert v["1"][str(K["trip"])] == 5 * MPA and v["1"][str(K["trip_persist"])] == 0
    assert mp(op="calibration", ch=1)["stored"]["tare"] == -1000


def test_interrupted_write_recovers_from_the_temporary_file(mp, tmp_path):
    data, values = saved_config(tmp_path)
    # FAT cannot rename over a file: storage removes the old one first, and a
    # reset between remove and rename leaves only the complete .tmp
    (tmp_path / "config.json").rename(tmp_path / "config.json.tmp")
    got = load(mp, tmp_path)
    assert got == {"status": 0, "crc": crc16(data), "cfg_status": 0}
    assert dump(mp) == values
    assert file_bytes(tmp_path) == data
    assert not (tmp_path / "config.json.tmp").exists()


def test_half_written_temporary_file_is_ignored(mp, tmp_path):
    data, values = saved_config(tmp_path)
    (tmp_path / "config.json.tmp").write_bytes(data[:20])  # reset mid-write
    assert load(mp, tmp_path)["status"] == 0
    assert dump(mp) == values


# ---- what set() rejects -----------------------------------------------------


def test_unknown_channel_key_and_scope(mp, tmp_path):
    load(mp, tmp_path)
    before = dump(mp)
    assert set_(mp, 9, K["trip"], 1) == (R["UNKNOWN_CHANNEL"], 0)
    assert set_(mp, 9, 999, 1) == (R["UNKNOWN_CHANNEL"], 0)
    assert set_(mp, 1, 999, 1) == (R["UNKNOWN_KEY"], 0)
    assert set_(mp, 1, K["tick_hz"], 50) == (R["UNKNOWN_KEY"], 0)  # board key on a channel
    assert set_(mp, 0, K["trip"], 1) == (R["UNKNOWN_KEY"], 0)  # channel key on the board
    assert set_(mp, 1, K["area"], 7854) == (R["NOT_SUPPORTED"], 0)  # isostatic
    assert set_(mp, 4, K["deadband"], 100) == (R["NOT_SUPPORTED"], 0)  # monitor: no valves
    assert set_(mp, 4, K["control"], 0) == (R["NOT_SUPPORTED"], 0)
    assert mp(op="get", ch=9, key=K["trip"]) == {"result": R["UNKNOWN_CHANNEL"], "value": 0}
    assert mp(op="get", ch=1, key=999) == {"result": R["UNKNOWN_KEY"], "value": 0}
    assert mp(op="get", ch=1, key=K["area"]) == {"result": R["NOT_SUPPORTED"], "value": 0}
    assert dump(mp) == before


def test_no_analog_output_means_no_analog_keys(mp, tmp_path):
    profile = json.loads(SIM.read_text())
    del profile["channels"][0]["analog_out_pin"]
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(profile))
    load(mp, tmp_path, path)
    assert set_(mp, 1, K["analog_fs"], MPA) == (R["NOT_SUPPORTED"], 0)
    assert set_(mp, 1, K["control"], 1) == (OK, 1)  # channel 1 has a regulator block
    assert set_(mp, 2, K["control"], 1) == (OOR, 0)
    assert set_(mp, 2, K["control"], 0) == (OK, 0)


VALVE_KEYS = (
    "deadband", "min_pulse", "min_off", "fill_timeout", "fill_min_rise", "control", "thermal_tau",
)  # fmt: skip


def key_cases() -> list[tuple[int, int]]:
    """(channel, key) for every key on a channel that has it (sim profile)."""
    out = [(0, k) for k in BOARD_KEYS]
    for ch, kind in ((1, "isostatic"), (3, "uniaxial"), (4, "monitor")):
        for k in CHANNEL_KEYS:
            if k == K["area"] and kind == "isostatic":
                continue
            if kind == "monitor" and KEYS[k][1] in VALVE_KEYS:
                continue
            out.append((ch, k))
    return out


KEY_CASES = key_cases()


@pytest.mark.parametrize("ch, key", KEY_CASES, ids=[f"ch{c}-{KEYS[k][1]}" for c, k in KEY_CASES])
def test_every_key_range_is_enforced(mp, tmp_path, ch, key):
    load(mp, tmp_path)
    before = dump(mp)
    lo, hi = KEYS[key][5], KEYS[key][6]
    for asked in (lo - 1, -(2**31), (hi or 2**30) + 1, 2**31 - 1):
        result, limit = set_(mp, ch, key, asked)
        assert result == OOR, asked
        assert lo <= limit and (hi is None or limit <= hi) and limit < 2**30
        assert dump(mp) == before
        # the limit named is accepted; one step further towards `asked` is not
        step = 1 if asked > limit else -1
        assert set_(mp, ch, key, limit + step)[0] == OOR
        assert set_(mp, ch, key, limit) == (OK, limit)
        assert mp(op="get", ch=ch, key=key) == {"result": OK, "value": limit}
        load(mp, tmp_path)
    # the table's own bound, but for keys other rules hold up: 7/8 of a trip
    # of 1 would leave max_working at 0, and telemetry_hz is 10
    lowest = {"trip": 2, "tick_hz": 10}.get(KEYS[key][1], lo)
    assert set_(mp, ch, key, lo - 1) == (OOR, lowest)


@pytest.mark.parametrize(
    "ch, name, limit",
    [
        (1, "trip", 8 * MPA),  # the profile's trip_mpa
        (1, "max_working", 8 * MPA - 1),  # below trip
        (1, "trip_reset", 8 * MPA - 1),
        (1, "min_alarm", 7 * MPA - 1),  # below max_working
        (1, "tolerance", 10 * MPA),  # full scale
        (1, "deadband", 10 * MPA),
        (1, "analog_fs_v", 3300),  # PWM high level x buffer gain
        (3, "trip", 229_182_582),  # trip_n / area
        (3, "rise_alarm", 254_647_313),  # capacity_n / area
        (0, "telemetry_hz", 20),  # tick_hz
    ],
)
def test_profile_ranges_name_their_limit(mp, tmp_path, ch, name, limit):
    load(mp, tmp_path)
    before = dump(mp)
    assert set_(mp, ch, K[name], limit + 1) == (OOR, limit)
    assert dump(mp) == before
    assert set_(mp, ch, K[name], limit) == (OK, limit)


def test_cross_key_rules_name_the_nearest_accepted_value(mp, tmp_path):
    load(mp, tmp_path)
    assert set_(mp, 1, K["max_working"], 5 * MPA) == (OK, 5 * MPA)
    assert set_(mp, 1, K["min_alarm"], 2 * MPA) == (OK, 2 * MPA)
    before = dump(mp)
    # trip may not fall to max_working, whoever set it
    assert set_(mp, 1, K["trip"], 5 * MPA) == (OOR, 5 * MPA + 1)
    # max_working may not fall to min_alarm
    assert set_(mp, 1, K["max_working"], 1_500_000) == (OOR, 2 * MPA + 1)
    assert set_(mp, 1, K["min_alarm"], 5 * MPA) == (OOR, 5 * MPA - 1)
    assert set_(mp, 0, K["tick_hz"], 5) == (OOR, 10)  # telemetry_hz is 10
    assert dump(mp) == before
    # a derived trip_reset follows trip down, so lowering trip is fine
    assert set_(mp, 1, K["trip"], 5_000_002) == (OK, 5_000_002)
    assert mp(op="get", ch=1, key=K["trip_reset"])["value"] == 5_000_001


def test_area_bounded_by_a_trip_that_was_set(mp, tmp_path):
    load(mp, tmp_path)
    trip = 100 * MPA
    assert set_(mp, 3, K["trip"], trip) == (OK, trip)
    before = dump(mp)
    # 18 kN / area must stay >= 100 MPa: area <= 180 mm2
    assert set_(mp, 3, K["area"], 50_000) == (OOR, 18_000)
    assert dump(mp) == before
    assert set_(mp, 3, K["area"], 18_000) == (OK, 18_000)
    assert set_(mp, 3, K["area"], 18_001)[0] == OOR


def test_set_limits_all_or_nothing(mp, tmp_path):
    load(mp, tmp_path)
    before = dump(mp)

    def limits(*v: int) -> tuple[int, int]:
        got = mp(op="set_limits", ch=1, values=list(v))
        return got["result"], got["value"]

    assert limits(4 * MPA, 9 * MPA, 5 * MPA, 0, MPA, MPA) == (OOR, 8 * MPA)  # over profile
    assert limits(5 * MPA, 5 * MPA, 4 * MPA, 0, MPA, MPA) == (OOR, 5 * MPA - 1)
    assert limits(4 * MPA, 5 * MPA, 5 * MPA, 0, MPA, MPA) == (OOR, 5 * MPA - 1)
    assert limits(4 * MPA, 5 * MPA, 4_500_000, 4 * MPA, MPA, MPA) == (OOR, 4 * MPA - 1)
    assert limits(4 * MPA, 5 * MPA, 4_500_000, 0, 0, MPA) == (OOR, 1)
    assert limits(4 * MPA, 5 * MPA, 4_500_000, 0, MPA, -1) == (OOR, 1)
    assert dump(mp) == before
    assert mp(op="set_limits", ch=9, values=[1, 2, 1, 0, 1, 1])["result"] == R["UNKNOWN_CHANNEL"]
    assert mp(op="set_limits", ch=0, values=[1, 2, 1, 0, 1, 1])["result"] == R["UNKNOWN_CHANNEL"]
    assert limits(4 * MPA, 5 * MPA, 4_500_000, 1 * MPA, 200_000, 100_000) == (OK, 0)
    got = dump(mp)["1"]
    assert [got[str(k)] for k in range(16, 22)] == [
        4 * MPA, 5 * MPA, 4_500_000, MPA, 200_000, 100_000
    ]  # fmt: skip
    # a monitor channel has limits too (alarms and the fault line)
    assert mp(op="set_limits", ch=4, values=[50 * MPA, 60 * MPA, 55 * MPA, 0, 1, 1])["result"] == OK


def test_set_calibration_is_checked(mp, tmp_path):
    load(mp, tmp_path)
    good = {"unit": "mN", "sensor": 3, "points": [], "tare": 5000}
    assert mp(op="set_calibration", ch=3, stored=good)["result"] == OK
    assert mp(op="calibration", ch=3)["stored"] == good
    wrong_unit = {"unit": "Pa", "sensor": 3, "points": [], "tare": 0}
    assert mp(op="set_calibration", ch=3, stored=wrong_unit)["result"] == OOR
    assert mp(op="set_calibration", ch=9, stored=good)["result"] == R["UNKNOWN_CHANNEL"]
    assert mp(op="calibration", ch=3)["stored"] == good
    assert mp(op="set_calibration", ch=3, stored=None)["result"] == OK
    assert mp(op="calibration", ch=3)["stored"] is None


# ---- any sequence of sets keeps the configuration consistent ----------------


def check_invariants(v: dict) -> None:
    board = {int(k): x for k, x in v["0"].items()}
    for k, x in board.items():
        assert KEYS[k][5] <= x <= KEYS[k][6]
    assert board[K["telemetry_hz"]] <= board[K["tick_hz"]]
    for ch in ("1", "2", "3", "4"):
        c = {int(k): x for k, x in v[ch].items()}
        for k, x in c.items():
            lo, hi = KEYS[k][5], KEYS[k][6]
            assert lo <= x and (hi is None or x <= hi) and x < 2**30, (ch, k, x)
        assert c[K["max_working"]] < c[K["trip"]]
        assert c[K["trip_reset"]] < c[K["trip"]]
        assert c[K["min_alarm"]] < c[K["max_working"]]
        ceiling = 8 * MPA if ch in ("1", "2") else min(18_000 * 10**8 // c[K["area"]], 10**9)
        assert c[K["trip"]] <= ceiling


def interesting_value(key: int) -> st.SearchStrategy[int]:
    lo, hi = KEYS[key][5], KEYS[key][6] or 300 * MPA
    return st.one_of(
        st.integers(lo - 2, lo + 2),
        st.integers(hi - 2, hi + 2),
        st.integers(lo, hi),
        st.integers(-(2**31), 2**31 - 1),
    )


steps = st.lists(
    st.sampled_from(KEY_CASES).flatmap(
        lambda ck: st.tuples(st.just(ck[0]), st.just(ck[1]), interesting_value(ck[1]))
    ),
    min_size=1,
    max_size=12,
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(steps)
def test_any_sequence_of_sets_keeps_every_rule(mp, tmp_path, seq):
    load(mp, tmp_path / "none")
    before = dump(mp)
    check_invariants(before)
    for ch, key, value in seq:
        result, limit = set_(mp, ch, key, value)
        after = dump(mp)
        if result == OK:
            assert limit == value and after[str(ch)][str(key)] == value
            check_invariants(after)
        else:
            assert result == OOR
            assert after == before, "a rejected set changed something"
            # the limit is accepted, and one step further towards the value is not
            step = 1 if value > limit else -1
            assert set_(mp, ch, key, limit + step)[0] == OOR
            assert dump(mp) == before
            assert set_(mp, ch, key, limit) == (OK, limit)
            after = dump(mp)
            check_invariants(after)
        before = after
