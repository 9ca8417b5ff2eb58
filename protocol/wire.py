# isopress wire format: the one table every codec is built from.
#
# Imported unchanged by MicroPython (the firmware, as module `wire`) and by
# CPython (the host, as `isopress.protocol.wire`). Plain tuples, ints and
# strings only -- no floats, typing or f-strings -- so both interpreters read
# it alike and compute the same schema hash. PROTOCOL.md beside this file is
# the prose for every name here.

VERSION = 1  # bumped on any change to HEADER or MESSAGES layouts

# Frame, before COBS stuffing: header, payload, CRC. Little-endian throughout.
HEADER = (
    ("version", "B"),  # protocol VERSION of the sender
    ("msg", "B"),  # message id, MESSAGES below
    ("seq", "H"),  # host: command sequence; device: frame counter
    ("flags", "B"),  # FLAG_* bits
    ("length", "B"),  # payload bytes that follow the header
)
HEADER_SIZE = 6
CRC_SIZE = 2
MAX_PAYLOAD = 240
MAX_FRAME = HEADER_SIZE + MAX_PAYLOAD + CRC_SIZE  # 248 bytes before stuffing
# On the wire a frame is 0x00, COBS(frame), 0x00: COBS adds one code byte per
# 254 data bytes (one here), and the leading delimiter means a frame arrives
# intact whatever garbage came before it.
MAX_WIRE = MAX_FRAME + 3

# CRC-16/IBM-3740 (also called CRC-16/CCITT-FALSE): poly 0x1021, init 0xFFFF,
# no reflection, no final XOR; check value for ASCII "123456789" is 0x29B1.
CRC_POLY = 0x1021
CRC_INIT = 0xFFFF
CRC_CHECK = 0x29B1

FLAG_REPLAY = 0x01  # device frame re-sent from the ring buffer on request
FLAG_RETRY = 0x02  # host command re-sent with the sequence it was first sent with

# Direction of a message.
TO_HOST = 0
TO_DEVICE = 1

# A field is (name, struct code, unit, decimal exponent): the integer on the
# wire times 10**exponent is the value in `unit`. Unit "1" marks counts,
# enumerations and bit sets. Pressure is always MPa with exponent -6 (1 Pa).
_CH = ("channel", "B", "1", 0)  # numbered from 1, as labelled on the rig


def _mpa(name):
    return (name, "i", "MPa", -6)


def _rate(name):
    return (name, "i", "MPa/s", -6)


# (id, name, direction, head fields, item fields)
# Item fields repeat to fill the payload after the head: several channels or
# profile steps per frame. A message with no item fields has a fixed size.
MESSAGES = (
    (0x01, "IDENTIFY", TO_DEVICE, (("host_version", "B", "1", 0),), ()),
    (
        0x02,
        "HELLO",
        TO_HOST,
        (
            ("fw_major", "B", "1", 0),
            ("fw_minor", "B", "1", 0),
            ("fw_patch", "B", "1", 0),
            ("protocol", "B", "1", 0),
            ("schema_hash", "I", "1", 0),
            ("board_id", "8s", "1", 0),
            ("boot_id", "H", "1", 0),
            ("config_crc", "H", "1", 0),
            ("telemetry_hz", "B", "Hz", 0),
            ("ring_samples", "I", "1", 0),
        ),
        (_CH, ("kind", "B", "1", 0), ("sensor", "B", "1", 0), _mpa("full_scale")),
    ),
    (0x03, "CLOCK_QUERY", TO_DEVICE, (("token", "I", "1", 0),), ()),
    (
        0x04,
        "CLOCK",
        TO_HOST,
        (("token", "I", "1", 0), ("ticks", "I", "s", -3)),
        (),
    ),
    (
        0x10,
        "TELEMETRY",
        TO_HOST,
        (("time", "I", "s", -3), ("sample_seq", "I", "1", 0)),
        (
            _CH,
            _mpa("pressure"),
            ("raw", "i", "1", 0),
            _mpa("setpoint"),
            ("valves", "B", "1", 0),
            ("mode", "B", "1", 0),
            ("alarms", "H", "1", 0),
        ),
    ),
    (
        0x11,
        "EVENT",
        TO_HOST,
        (
            ("time", "I", "s", -3),
            ("event_seq", "I", "1", 0),
            _CH,
            ("kind", "B", "1", 0),
            ("code", "H", "1", 0),
            ("a", "i", "1", 0),
            ("b", "i", "1", 0),
            ("c", "i", "1", 0),
        ),
        (),
    ),
    (
        0x12,
        "ACK",
        TO_HOST,
        (
            ("cmd_seq", "H", "1", 0),
            ("cmd", "B", "1", 0),
            ("result", "B", "1", 0),
            ("value", "i", "1", 0),
        ),
        (),
    ),
    (
        0x13,
        "REPLAY_DONE",
        TO_HOST,
        (
            ("stream", "B", "1", 0),
            ("first_seq", "I", "1", 0),
            ("last_seq", "I", "1", 0),
            ("sent", "H", "1", 0),
        ),
        (),
    ),
    (0x20, "SET_SETPOINT", TO_DEVICE, (_CH, _mpa("pressure"), _rate("rate")), ()),
    (
        0x21,
        "SET_LIMITS",
        TO_DEVICE,
        (
            _CH,
            _mpa("max_working"),
            _mpa("trip"),
            _mpa("trip_reset"),
            _mpa("min_alarm"),
            _rate("ramp_up"),
            _rate("ramp_down"),
        ),
        (),
    ),
    (
        0x22,
        "PROFILE_LOAD",
        TO_DEVICE,
        (_CH,),
        (
            ("step", "B", "1", 0),
            ("wait_for", "B", "1", 0),
            _mpa("target"),
            _rate("rate"),
            ("duration", "I", "s", -3),
        ),
    ),
    (0x23, "PROFILE_START", TO_DEVICE, (_CH, ("from_step", "B", "1", 0)), ()),
    (0x24, "PROFILE_STOP", TO_DEVICE, (_CH,), ()),
    (
        0x25,
        "PROFILE_ADVANCE",
        TO_DEVICE,
        (_CH, ("from_step", "B", "1", 0), ("cycle", "I", "1", 0)),
        (),
    ),
    (0x26, "TARE", TO_DEVICE, (_CH,), ()),
    (
        0x27,
        "CALIBRATE",
        TO_DEVICE,
        (
            _CH,
            ("action", "B", "1", 0),
            ("point", "B", "1", 0),
            ("reference", "i", "MPa|kN", -6),
        ),
        (),
    ),
    (0x28, "ACK_ALARM", TO_DEVICE, (_CH, ("alarms", "H", "1", 0)), ()),
    (0x29, "VENT", TO_DEVICE, (_CH, _mpa("floor")), ()),
    (0x2A, "ISOLATE", TO_DEVICE, (_CH,), ()),
    (0x2B, "GET_CONFIG", TO_DEVICE, (_CH, ("key", "H", "1", 0)), ()),
    (
        0x2C,
        "SET_CONFIG",
        TO_DEVICE,
        (_CH, ("key", "H", "1", 0), ("value", "i", "1", 0)),
        (),
    ),
    (
        0x2D,
        "REPLAY",
        TO_DEVICE,
        (
            ("stream", "B", "1", 0),
            ("from_seq", "I", "1", 0),
            ("count", "H", "1", 0),
        ),
        (),
    ),
)

# IDENTIFY and HELLO keep these ids and layouts in every protocol version, and
# receivers read them whatever the header's version: two sides of different
# versions can still tell each other which version each speaks.
FROZEN = (0x01, 0x02)

# The vocabularies below are numbered values carried in the fields above.
# Adding a name at the end does not change a layout or the schema hash; a
# receiver shows a number it does not know as that number.

# ACK.result: 0 acknowledges; anything else is a NACK naming the reason.
RESULTS = (
    (0, "OK"),
    (1, "UNKNOWN_MESSAGE"),  # message id is not a command this firmware knows
    (2, "BAD_LENGTH"),  # payload size does not fit the message's layout
    (3, "UNKNOWN_CHANNEL"),  # no such channel on this board
    (4, "OUT_OF_RANGE"),  # a value breaks a limit; ACK.value is the limit
    (5, "BAD_STATE"),  # not possible now (e.g. advance while not waiting)
    (6, "LATCHED"),  # a latched alarm holds the channel safe; ACK_ALARM first
    (7, "NOT_SUPPORTED"),  # the channel's kind cannot do this
    (8, "BAD_PROFILE"),  # steps inconsistent or too many
    (9, "UNKNOWN_KEY"),  # config key not known
    (10, "STORAGE"),  # flash write failed; nothing changed
    (11, "BUSY"),  # another operation (calibration, flash write) runs
    (12, "VERSION"),  # header protocol version not supported
)

# REPLAY.stream and REPLAY_DONE.stream
STREAMS = ((0, "TELEMETRY"), (1, "EVENT"))

# HELLO item kind
CHANNEL_KINDS = ((0, "NONE"), (1, "ISOSTATIC"), (2, "UNIAXIAL"), (3, "MONITOR"))

# HELLO item sensor
SENSORS = (
    (0, "NONE"),
    (1, "RATIOMETRIC_0_5_4_5V"),
    (2, "CURRENT_4_20MA"),
    (3, "LOAD_CELL"),
    (4, "MCU_ADC"),
)

# TELEMETRY item mode
MODES = (
    (0, "IDLE"),  # no setpoint: valves closed
    (1, "HOLD"),  # regulating at a steady setpoint
    (2, "RAMP"),  # tracking a moving setpoint
    (3, "ISOLATED"),  # every valve closed, pressure held
    (4, "TRIPPED"),  # over-pressure: fill closed, venting to the reset level
    (5, "VENT"),  # venting on command to a floor
    (6, "MONITOR"),  # sensor only
)

# TELEMETRY item valves: bit numbers
VALVES = ((0, "FILL"), (1, "VENT"))

# TELEMETRY item alarms: bit numbers
ALARMS = (
    (0, "OVERPRESSURE"),
    (1, "SENSOR_FAULT"),
    (2, "FILL_TIMEOUT"),
    (3, "RISE_FILL_CLOSED"),
    (4, "LEAK"),
    (5, "BELOW_MIN"),
    (6, "EXCURSION"),
    (7, "CONFIG"),
    (8, "HOST_SILENT"),
    (9, "WATCHDOG_RESET"),
    (10, "REGULATOR"),  # proportional regulator's monitor disagrees with its command
    (15, "LATCHED"),
)

# EVENT kind; PROTOCOL.md gives the meaning of code, a, b and c for each.
EVENTS = (
    (1, "BOOT"),
    (2, "ALARM_RAISED"),
    (3, "ALARM_CLEARED"),
    (4, "TRIP"),
    (5, "EXCURSION"),
    (6, "CONFIG_CHANGED"),
    (7, "CONFIG_BAD"),
    (8, "HOST_SILENT"),
    (9, "HOST_BACK"),
    (10, "SETPOINT"),
    (11, "PROFILE_STEP"),
    (12, "PROFILE_DONE"),
    (13, "LEAK_RATE"),
    (14, "ACTUATIONS"),
    (15, "CALIBRATION"),
)

# PROFILE_LOAD item step
STEPS = ((0, "SET"), (1, "RAMP"), (2, "HOLD"), (3, "WAIT"))

# PROFILE_LOAD item wait_for
WAITS = ((0, "NONE"), (1, "HOST"), (2, "TRIGGER"))

# CALIBRATE action
CALIBRATIONS = ((0, "CAPTURE"), (1, "CLEAR"), (2, "STORE"))

# Why a receiver dropped a frame; the firmware counts these, the host raises
# FrameError with the name. Nothing between two delimiters is not a frame and
# not an error: back-to-back frames read that way.
FRAME_ERRORS = (
    (1, "TOO_LONG"),  # more than MAX_WIRE - 2 bytes between delimiters
    (2, "STUFFING"),  # a COBS code byte points past the end of the frame
    (3, "SHORT"),  # fewer bytes than a header and a CRC
    (4, "CRC"),  # CRC does not match
    (5, "VERSION"),  # protocol version this receiver cannot read
    (6, "LENGTH"),  # header length disagrees with the bytes received
    (7, "UNKNOWN_MESSAGE"),  # message id not in MESSAGES
    (8, "LAYOUT"),  # payload size does not fit the message's layout
)


def code_size(code):
    # struct sizes without importing struct, so this module stays plain data.
    if code[-1] == "s":
        return int(code[:-1])
    return {"B": 1, "b": 1, "H": 2, "h": 2, "I": 4, "i": 4}[code]


def codes(table):
    # name -> code for one of the (code, name) vocabularies above, so a module
    # names the codes it uses and a renamed entry fails at import.
    return dict((name, code) for code, name in table)


def fields_size(fields):
    n = 0
    for f in fields:
        n += code_size(f[1])
    return n


def schema_text():
    # Canonical text of every layout; its CRC-32 is the schema hash in HELLO.
    parts = ["v", str(VERSION)]
    for f in HEADER:
        parts.append(f[0] + ":" + f[1])
    for m in MESSAGES:
        parts.append("m%d:%s:%d" % (m[0], m[1], m[2]))
        for group in (m[3], m[4]):
            parts.append("|")
            for f in group:
                parts.append("%s:%s:%s:%d" % f)
    return ";".join(parts)


def crc32(data):
    # CRC-32/ISO-HDLC, bitwise: run once at boot, so small beats fast here.
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0xEDB88320 & -(crc & 1))
    return crc ^ 0xFFFFFFFF


def schema_hash():
    return crc32(schema_text().encode())


# GET_CONFIG / SET_CONFIG keys: (key, name, scope, unit, exponent, min, max,
# default). The value travels as SET_CONFIG.value / ACK.value, an i32 in unit
# x 10**exponent like any field. Board keys go with channel 0, channel keys
# with the channel's number. A min, max or default of None is worked out from
# the board profile (PROTOCOL.md, section 5, GET_CONFIG); the firmware's
# config.py holds those rules and the cross-key ones. Like the vocabularies
# above, keys may be appended without changing the schema hash.
CONFIG_KEYS = (
    (1, "tick_hz", "board", "Hz", 0, 1, 100, 20),
    (2, "telemetry_hz", "board", "Hz", 0, 1, 100, 10),  # <= tick_hz
    (3, "host_silence", "board", "s", -3, 1000, 3600000, 10000),
    (4, "bad_samples", "board", "1", 0, 1, 50, 3),
    (5, "ring_bytes", "board", "B", 0, 1024, 262144, 24576),
    (6, "watchdog", "board", "s", -3, 500, 8000, 2000),
    # The six SET_LIMITS values, in its order.
    (16, "max_working", "channel", "MPa", -6, 1, None, None),
    (17, "trip", "channel", "MPa", -6, 1, None, None),
    (18, "trip_reset", "channel", "MPa", -6, 0, None, None),
    (19, "min_alarm", "channel", "MPa", -6, 0, None, 0),  # 0 = off
    (20, "ramp_up", "channel", "MPa/s", -6, 1, 1000000000, None),
    (21, "ramp_down", "channel", "MPa/s", -6, 1, 1000000000, None),
    (22, "trip_persist", "channel", "s", -3, 0, 5000, 200),
    (23, "tolerance", "channel", "MPa", -6, 1, None, None),
    (24, "deadband", "channel", "MPa", -6, 0, None, None),
    (25, "min_pulse", "channel", "s", -3, 1, 1000, 5),
    (26, "min_off", "channel", "s", -3, 0, 60000, 2000),
    (27, "fill_timeout", "channel", "s", -3, 500, 600000, 10000),
    (28, "fill_min_rise", "channel", "MPa", -6, 1, None, None),
    (29, "leak_alarm", "channel", "MPa/s", -6, 1, 1000000, 10),
    (30, "rise_alarm", "channel", "MPa", -6, 1, None, None),
    (31, "area", "channel", "mm2", -2, 100, 10000000, 7854),
    (32, "analog_fs", "channel", "MPa", -6, 1, 1000000000, None),
    (33, "analog_fs_v", "channel", "V", -3, 1, None, None),
    (34, "control", "channel", "1", 0, 0, 1, 0),  # 0 on/off valves, 1 proportional
    (35, "thermal_tau", "channel", "s", -3, 100, 600000, 10000),  # gas-to-wall time constant
    (36, "leak_window", "channel", "s", -3, 60000, 86400000, 3600000),  # leak-rate window
)
