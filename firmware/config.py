# The device configuration: every GET_CONFIG / SET_CONFIG key of
# wire.CONFIG_KEYS with its default, range and cross-key rules, each channel's
# calibration, and the checked file on flash that keeps them.
#
#     cfg, status = config.load(fs_dir, profile)   # status: CONFIG_BAD code
#     cfg.get(channel, key) -> (result, value)
#     cfg.set(channel, key, value) -> (result, value)
#     cfg.set_limits(channel, max_working, trip, trip_reset, min_alarm,
#                    ramp_up, ramp_down) -> (result, value)
#     cfg.save() -> bool;  cfg.crc (HELLO.config_crc, 0 with no valid file)
#     cfg.value(channel, name) -> int
#     cfg.calibration(channel) -> dict or None
#     cfg.set_calibration(channel, dict or None) -> result
#
# Values are ints in wire units. Channel 0 holds the board keys. Cold path
# only (boot and commands): it allocates, and the tick reads copies that the
# channel, regulator and supervisor take when the configuration changes.
#
# Only what the host set is kept; every other key is worked out from the board
# profile whenever it is read, so the limits derived from the trip level
# follow a trip level the host set, and a key the host never touched follows
# the profile. A rejected set changes nothing and answers OUT_OF_RANGE with
# the accepted value nearest to the one asked for, so a host can tell what
# would have worked.
#
# The file is lists all the way down, sorted, never a dict: MicroPython does
# not keep a dict's order through json, and the same settings must always
# write the same bytes, or config_crc would change when nothing did.
import calibration
import storage
import wire
from crc16 import crc16

FILE = "config.json"
_TAG = "isopress-config"
_SCHEMA = 1

_RESULT = wire.codes(wire.RESULTS)
OK = _RESULT["OK"]
UNKNOWN_CHANNEL = _RESULT["UNKNOWN_CHANNEL"]
OUT_OF_RANGE = _RESULT["OUT_OF_RANGE"]
NOT_SUPPORTED = _RESULT["NOT_SUPPORTED"]
UNKNOWN_KEY = _RESULT["UNKNOWN_KEY"]

# CONFIG_BAD event codes (PROTOCOL.md); 1-3 are storage's statuses.
MISSING = storage.MISSING
CRC = storage.CRC
UNREADABLE = storage.UNREADABLE
VALUE = 4  # the file is sound but a value breaks a rule of this profile

KEYS = {}  # key -> wire.CONFIG_KEYS entry
NAMES = {}  # name -> key
for _k in wire.CONFIG_KEYS:
    KEYS[_k[0]] = _k
    NAMES[_k[1]] = _k[0]

TICK_HZ = NAMES["tick_hz"]
TELEMETRY_HZ = NAMES["telemetry_hz"]
MAX_WORKING = NAMES["max_working"]
TRIP = NAMES["trip"]
TRIP_RESET = NAMES["trip_reset"]
MIN_ALARM = NAMES["min_alarm"]
RAMP_UP = NAMES["ramp_up"]
RAMP_DOWN = NAMES["ramp_down"]
TOLERANCE = NAMES["tolerance"]
DEADBAND = NAMES["deadband"]
FILL_MIN_RISE = NAMES["fill_min_rise"]
RISE_ALARM = NAMES["rise_alarm"]
AREA = NAMES["area"]
ANALOG_FS = NAMES["analog_fs"]
ANALOG_FS_V = NAMES["analog_fs_v"]
CONTROL = NAMES["control"]
LIMITS = (MAX_WORKING, TRIP, TRIP_RESET, MIN_ALARM, RAMP_UP, RAMP_DOWN)  # SET_LIMITS order

# Keys that act on valves, which a monitor channel has not got.
_VALVE_KEYS = (DEADBAND, NAMES["min_pulse"], NAMES["min_off"], NAMES["fill_timeout"],
               FILL_MIN_RISE, CONTROL, NAMES["thermal_tau"])  # fmt: skip
_MPA = 1000000
_PA_MAX = 1000000000  # 1000 MPa: a stack pressure above it does not fit


_scaled = calibration.scaled


def _key_ids(scope):
    return tuple(k[0] for k in wire.CONFIG_KEYS if k[2] == scope)


class _Board:
    # The board keys (channel 0).
    scope = "board"

    def __init__(self, profile):
        self.keys = _key_ids("board")
        out = profile.get("analog_out")
        self.volts_mv = 0
        if out:
            self.volts_mv = _scaled(out["pwm_v_high"] * out["amp_gain"], 1000, "analog_out")

    def supports(self, key):
        return True

    def values(self, ov):
        e = {}
        for k in self.keys:
            e[k] = ov.get(k, KEYS[k][7])
        return e

    def bounds(self, key, e):
        lo, hi = KEYS[key][5], KEYS[key][6]
        if key == TELEMETRY_HZ and e[TICK_HZ] < hi:
            hi = e[TICK_HZ]
        return lo, hi


class _Channel:
    # One channel's keys and what the profile says about it, in integers.
    scope = "channel"

    def __init__(self, c, volts_mv):
        try:
            self.number = c["channel"]
            self.kind = c["kind"]
            self.sensor = c["sensor"]
            limits = c["limits"]
            if self.kind == "isostatic":
                self.load_cell = False
                self.range = _scaled(self.sensor["range_mpa"], _MPA, "range_mpa")
                self.trip_max = _scaled(limits["trip_mpa"], _MPA, "trip_mpa")
            elif self.kind == "uniaxial" or self.kind == "monitor":
                self.load_cell = True
                self.capacity = _scaled(self.sensor["capacity_n"], 1000, "capacity_n")  # mN
                self.trip_force = _scaled(limits["trip_n"], 1000, "trip_n")  # mN
            else:
                raise ValueError("profile: channel kind " + str(self.kind))
            self.valves = self.kind != "monitor"
            self.analog = "analog_out_pin" in c and bool(volts_mv)
            # control = 1 needs a proportional regulator to drive (the block
            # in the profile; isostatic only), not the cycler's analog output.
            self.proportional = self.kind == "isostatic" and isinstance(
                c.get("proportional"), dict
            )
            if self.analog:
                scale = c["analog_out_scale"]
                self.analog_fs = _scaled(scale["full_scale_mpa"], _MPA, "full_scale_mpa")
                self.analog_v = _scaled(scale["full_scale_v"], 1000, "full_scale_v")
        except (KeyError, TypeError) as e:
            raise ValueError("profile: channel needs " + str(e)) from None
        self.sensor_kind = calibration.sensor_kind(self.sensor)
        self.volts_mv = volts_mv
        self.keys = tuple(k for k in _key_ids("channel") if self.supports(k))

    def supports(self, key):
        if key == AREA:
            return self.load_cell
        if key == ANALOG_FS or key == ANALOG_FS_V:
            return self.analog
        if key in _VALVE_KEYS:
            return self.valves
        return True

    def scale(self, e):
        # (full scale, trip ceiling) in Pa. A load cell's are forces over the
        # electrode area: N / mm2 = MPa, and area is in 0.01 mm2.
        if not self.load_cell:
            return self.range, self.trip_max
        area = e[AREA]
        return (
            min(self.capacity * 100000 // area, _PA_MAX),
            min(self.trip_force * 100000 // area, _PA_MAX),
        )

    def values(self, ov):
        e = {}
        g = ov.get
        if self.load_cell:
            e[AREA] = g(AREA, KEYS[AREA][7])
        fs, ceiling = self.scale(e)
        trip = g(TRIP, ceiling)
        working = g(MAX_WORKING, trip * 7 // 8)
        derived = {
            TRIP: trip,
            MAX_WORKING: working,
            TRIP_RESET: (working + trip) // 2,
            RAMP_UP: 5 * _MPA if self.load_cell else _MPA,
            RAMP_DOWN: 2 * _MPA if self.load_cell else _MPA // 2,
            TOLERANCE: fs * 25 // 10000,
            DEADBAND: fs * 3 // 10000,  # 0.03 % FS: tuned on the reference rig
            FILL_MIN_RISE: fs * 5 // 1000,
            RISE_ALARM: fs * 5 // 1000,
        }
        if self.analog:
            derived[ANALOG_FS] = self.analog_fs
            derived[ANALOG_FS_V] = self.analog_v
        for k in self.keys:
            if k in ov:
                e[k] = ov[k]
            elif KEYS[k][7] is not None:
                e[k] = KEYS[k][7]
            else:
                e[k] = derived[k]
        return e

    def bounds(self, key, e):
        lo, hi = KEYS[key][5], KEYS[key][6]
        if hi is None:
            fs, ceiling = self.scale(e)
            if key == ANALOG_FS_V:
                hi = self.volts_mv
            elif key in (MAX_WORKING, TRIP, TRIP_RESET, MIN_ALARM):
                hi = ceiling
            else:
                hi = fs
        if key == CONTROL and not self.proportional:
            hi = 0  # valves only: 1 is out of range, and the answer says 0
        if key == MAX_WORKING or key == TRIP_RESET:
            hi = min(hi, e[TRIP] - 1)
        elif key == MIN_ALARM:
            hi = min(hi, e[MAX_WORKING] - 1)
        return lo, hi


def _broken(unit, ov):
    # The first key whose value breaks a rule, or 0.
    e = unit.values(ov)
    for k in unit.keys:
        lo, hi = unit.bounds(k, e)
        if not lo <= e[k] <= hi:
            return k
    return 0


def _pairs(d):
    return sorted([k, d[k]] for k in d)


class Config:
    def __init__(self, fs_dir, profile):
        # A profile that is not one is a build error, not a file problem:
        # it raises ValueError.
        self.path = fs_dir + FILE
        try:
            board = _Board(profile)
            units = {0: board}
            for c in profile["channels"]:
                ch = _Channel(c, board.volts_mv)
                if not 0 < ch.number < 256 or ch.number in units:
                    raise ValueError("profile: channel numbers must be unique, 1..255")
                units[ch.number] = ch
        except (KeyError, TypeError) as e:
            raise ValueError("profile: needs " + str(e)) from None
        self._units = units
        self.channels = tuple(sorted(n for n in units if n))
        self.status = MISSING
        self.crc = 0
        self._defaults()

    def _defaults(self):
        self._set = dict((n, {}) for n in self._units)  # what the host set
        self._cal = {}
        self.crc = 0

    def _unit(self, channel, key):
        # (result, unit) for a channel and key.
        unit = self._units.get(channel)
        if unit is None:
            return UNKNOWN_CHANNEL, None
        entry = KEYS.get(key)
        if entry is None or entry[2] != unit.scope:
            return UNKNOWN_KEY, None
        if not unit.supports(key):
            return NOT_SUPPORTED, None
        return OK, unit

    def get(self, channel, key):
        r, unit = self._unit(channel, key)
        if r != OK:
            return r, 0
        return OK, unit.values(self._set[channel])[key]

    def value(self, channel, name):
        r, value = self.get(channel, NAMES.get(name, -1))
        if r != OK:
            raise ValueError("config: no " + str(name) + " on channel " + str(channel))
        return value

    def values(self, channel):
        # {key: value} of every key the channel has.
        return self._units[channel].values(self._set[channel])

    def set(self, channel, key, value):
        r, unit = self._unit(channel, key)
        if r != OK:
            return r, 0
        if type(value) is not int:
            return OUT_OF_RANGE, 0
        now = self._set[channel]
        new = dict(now)
        new[key] = value
        lo, hi = unit.bounds(key, unit.values(new))
        if lo <= value <= hi and not _broken(unit, new):
            self._set[channel] = new
            return OK, value
        # Rejected: answer with the accepted value nearest the one asked for.
        # The present value is accepted, and every rule bounds one key from
        # one side (derived keys move monotonically with what they follow),
        # so the accepted values form an interval and bisection finds its
        # edge when the key's own range does not.
        bad = lo if value < lo else hi if value > hi else value
        if bad != value:
            new[key] = bad
            if not _broken(unit, new):
                return OUT_OF_RANGE, bad
        good = unit.values(now)[key]
        while bad - good > 1 or good - bad > 1:
            mid = good + (bad - good) // 2
            new[key] = mid
            if _broken(unit, new):
                bad = mid
            else:
                good = mid
        return OUT_OF_RANGE, good

    def set_limits(self, channel, max_working, trip, trip_reset, min_alarm, ramp_up, ramp_down):
        # The six SET_LIMITS values at once: either all are taken or none.
        unit = self._units.get(channel)
        if unit is None or not channel:
            return UNKNOWN_CHANNEL, 0
        new = dict(self._set[channel])
        given = (max_working, trip, trip_reset, min_alarm, ramp_up, ramp_down)
        i = 0
        while i < 6:
            if type(given[i]) is not int:
                return OUT_OF_RANGE, 0
            new[LIMITS[i]] = given[i]
            i += 1
        e = unit.values(new)
        # The trip level first: the others are bounded by it.
        for k in (TRIP, MAX_WORKING, TRIP_RESET, MIN_ALARM, RAMP_UP, RAMP_DOWN):
            lo, hi = unit.bounds(k, e)
            if e[k] < lo:
                return OUT_OF_RANGE, lo
            if e[k] > hi:
                return OUT_OF_RANGE, hi
        if _broken(unit, new):
            return OUT_OF_RANGE, 0
        self._set[channel] = new
        return OK, 0

    def calibration(self, channel):
        return self._cal.get(channel)

    def set_calibration(self, channel, stored):
        ch = self._units.get(channel)
        if ch is None or not channel:
            return UNKNOWN_CHANNEL
        if stored is None:
            self._cal.pop(channel, None)
            return OK
        if not calibration.validate(ch.sensor_kind, ch.sensor, stored):
            return OUT_OF_RANGE
        self._cal[channel] = stored
        return OK

    def content(self):
        # What save() writes: plain lists, sorted.
        out = [[_TAG, _SCHEMA], ["board", _pairs(self._set[0])]]
        for n in self.channels:
            cal = self._cal.get(n)
            if self._set[n] or cal is not None:
                cal = None if cal is None else _pairs(cal)
                out.append(["channel", n, _pairs(self._set[n]), cal])
        return out

    def save(self):
        # Atomic (storage: temporary file, then rename). False if the flash
        # refused; the old file and cfg.crc are then unchanged.
        if not storage.write(self.path, self.content()):
            return False
        crc = _file_crc(self.path)
        if crc is None:
            return False
        self.crc = crc
        self.status = OK
        return True

    def _read(self):
        obj, status = storage.read(self.path)
        if status != storage.OK:
            return status
        try:
            head = obj[0]
            if head[0] != _TAG or head[1] != _SCHEMA:
                return UNREADABLE
            got = dict((n, {}) for n in self._units)
            cal = {}
            for section in obj[1:]:
                if section[0] == "board":
                    n, pairs, stored = 0, section[1], None
                elif section[0] == "channel":
                    n, pairs, stored = section[1], section[2], section[3]
                    if stored is not None:
                        stored = dict((p[0], p[1]) for p in stored)
                else:
                    return UNREADABLE
                if n not in got:
                    return VALUE  # a channel this profile does not have
                for k, v in pairs:
                    if self._unit(n, k)[0] != OK or type(v) is not int:
                        return VALUE
                    got[n][k] = v
                if stored is not None:
                    cal[n] = stored
        except (TypeError, ValueError, KeyError, IndexError):
            return UNREADABLE
        for n in got:
            if _broken(self._units[n], got[n]):
                return VALUE
        for n in cal:
            ch = self._units[n]
            if not n or not calibration.validate(ch.sensor_kind, ch.sensor, cal[n]):
                return VALUE
        crc = _file_crc(self.path)
        if crc is None:
            return UNREADABLE
        self._set = got
        self._cal = cal
        self.crc = crc
        return OK


def _file_crc(path):
    # CRC-16/IBM-3740 of the file's bytes, as HELLO.config_crc says. The
    # temporary file counts when storage found only that one and could not
    # rename it.
    for p in (path, path + ".tmp"):
        try:
            with open(p, "rb") as f:
                data = f.read()
        except OSError:
            continue
        return crc16(data, 0, len(data))
    return None


def load(fs_dir, profile):
    # (Config, CONFIG_BAD code). A problem with the file never raises: the
    # Config then holds the profile's defaults, crc 0, and the device boots
    # isolated and reports CONFIG_BAD.
    cfg = Config(fs_dir, profile)
    try:
        status = cfg._read()
    except Exception:  # a damaged file must not stop the boot
        status = UNREADABLE
    if status != OK:
        cfg._defaults()
    cfg.status = status
    return cfg, status
