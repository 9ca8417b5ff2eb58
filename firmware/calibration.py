# Signal -> engineering value for one channel's sensor: the nominal transfer
# function from the board profile, a tare, a one-point offset, a two-point span
# or a piecewise-linear table through up to 8 reference points.
#
#     cal = Calibration(sensor_kind, sensor_cfg, stored=None)
#     cal.value(signal) -> Pa (pressure sensors) or mN (load cells); in the tick
#     cal.tare(signal) -> result            # the present signal reads 0
#     cal.capture(point, signal, reference) -> result
#     cal.clear()                           # back to the nominal function
#     cal.store() -> (result, value)        # fit the captured points
#     cal.to_dict() -> dict                 # what config.py keeps
#     cal.per_area(area_x100) -> Calibration   # a load cell as stack pressure, Pa
#
# Signals: ratiometric transducers and the MCU ADC in ppm of the supply
# (0.5 V of 5 V = 100000), 4-20 mA in uA, load cells in nV/V (signed).
#
# value() is integers only and allocates nothing. The function is a list of
# knots (signal, value) joined by straight segments and continued past both
# ends. A segment's slope is the fixed-point number M / 2**28, which resolves
# 2**-28 Pa per signal unit: over the longest signal step the error this
# leaves stays below 0.07, so a value is within 1 of the exact line. M is too
# wide to multiply by a signal directly in 31-bit small ints, so value()
# splits the signal step and the fraction of M into 14-bit limbs (see the
# bounds beside the arithmetic). Beyond the knots the signal step is clamped so
# that the result stays within +-(2**30 - 2): a signal far outside the range
# saturates instead of allocating a big int.
from array import array

import wire

_SENSOR = wire.codes(wire.SENSORS)
RATIOMETRIC = _SENSOR["RATIOMETRIC_0_5_4_5V"]
CURRENT = _SENSOR["CURRENT_4_20MA"]
LOAD_CELL = _SENSOR["LOAD_CELL"]
MCU_ADC = _SENSOR["MCU_ADC"]

_RESULT = wire.codes(wire.RESULTS)
OK = _RESULT["OK"]
OUT_OF_RANGE = _RESULT["OUT_OF_RANGE"]
BAD_STATE = _RESULT["BAD_STATE"]

MAX_POINTS = 8
# |signal|: a HX711 at gain 64 spans +-7.8e6 nV/V, a ppm signal 0..1e6. A
# signal step is then below 2**25, which keeps every limb product below 2**30.
SIGNAL_MAX = (1 << 24) - 1
_STEP_MAX = (1 << 25) - 1
# |reference| and every knot's value: 1000 MPa in Pa, 1000 kN in mN.
VALUE_MAX = 1000000000
# A tare may move the zero by at most this share of full scale (percent). A
# transducer's zero error is a few percent at most; a larger tare means the
# holder is under pressure or load, and zeroing it would make the regulator
# fill on top of a pressure it cannot see.
TARE_PERCENT = 5

_FRAC = 28
_LOW = (1 << 14) - 1
_HALF = 1 << (_FRAC - 1)
_LIMIT = (1 << 30) - 2  # largest |value()|


def sensor_kind(sensor_cfg):
    # wire.SENSORS code for a profile's "sensor" object (0 = none known).
    t = sensor_cfg.get("type")
    if t == "hx711":
        return LOAD_CELL
    if t == "mcu_adc":
        return MCU_ADC
    signal = sensor_cfg.get("signal")
    if signal == "ratiometric_0.5_4.5v":
        return RATIOMETRIC
    if signal == "current_4_20ma":
        return CURRENT
    return 0


def scaled(x, scale, what):
    # A profile number (a float, single precision on the boards) as an int in
    # smaller units: rounded once here, so nothing downstream sees a float.
    try:
        return int(round(x * scale))
    except (TypeError, ValueError):
        raise ValueError("profile: " + what + " is not a number") from None


def _nominal(kind, cfg):
    # ((signal, value), (signal, value)), unit, full scale
    try:
        if kind == LOAD_CELL:
            cap = scaled(cfg["capacity_n"], 1000, "capacity_n")  # mN
            sens = scaled(cfg["sensitivity_mv_per_v"], 1000000, "sensitivity_mv_per_v")
            if not (0 < cap <= VALUE_MAX and 0 < sens <= SIGNAL_MAX):
                raise ValueError("load cell capacity or sensitivity out of range")
            return ((0, 0), (sens, cap)), "mN", cap
        # A transducer on the MCU's ADC reports in its signal's unit:
        # sensor.py gives uA for a 4-20 mA loop, ppm for a ratiometric one.
        loop = kind == MCU_ADC and cfg.get("signal") == "current_4_20ma"
        if kind == RATIOMETRIC or (kind == MCU_ADC and not loop):
            x0, x1 = 100000, 900000  # 0.5 V and 4.5 V of 5 V, ppm
        elif kind == CURRENT or loop:
            x0, x1 = 4000, 20000  # uA
        else:
            raise ValueError("no transfer function for sensor kind %d" % kind)
        fs = scaled(cfg["range_mpa"], 1000000, "range_mpa")  # Pa
    except KeyError as e:
        raise ValueError("sensor needs " + str(e)) from None
    if not 0 < fs <= VALUE_MAX:
        raise ValueError("sensor range_mpa out of range")
    return ((x0, 0), (x1, fs)), "Pa", fs


def _exact(knots, s):
    # The knot line at s, rounded to nearest; cold path, so big ints are fine.
    i = 0
    while i < len(knots) - 2 and s >= knots[i + 1][0]:
        i += 1
    x0, y0 = knots[i]
    x1, y1 = knots[i + 1]
    num = 2 * (s - x0) * (y1 - y0) + (x1 - x0)
    return y0 + num // (2 * (x1 - x0))


def _fit(nominal, points):
    # (OK, knots through the points), or (OUT_OF_RANGE, point number) when
    # they do not make a function. points: (point, signal, reference) sorted
    # by signal.
    if not points:
        return OK, nominal
    if len(points) == 1:
        shift = points[0][2] - _exact(nominal, points[0][1])
        knots = ((nominal[0][0], nominal[0][1] + shift), (nominal[1][0], nominal[1][1] + shift))
        for k in knots:
            if not -VALUE_MAX <= k[1] <= VALUE_MAX:
                return OUT_OF_RANGE, points[0][0]
        return OK, knots
    up = points[1][2] > points[0][2]
    i = 1
    while i < len(points):
        ds = points[i][1] - points[i - 1][1]
        dr = points[i][2] - points[i - 1][2]
        # Strictly monotonic in one direction: a table that turns back has
        # two pressures for one signal.
        if ds == 0 or dr == 0 or (dr > 0) != up:
            return OUT_OF_RANGE, points[i][0]
        if (abs(dr) << _FRAC) // ds > (_LIMIT << _FRAC):
            return OUT_OF_RANGE, points[i][0]  # too steep for a slope word
        i += 1
    return OK, tuple((p[1], p[2]) for p in points)


class Calibration:
    def __init__(self, sensor_kind, sensor_cfg, stored=None):
        self.kind = sensor_kind
        self.sensor_cfg = sensor_cfg
        self._nominal, self.unit, self.full_scale = _nominal(sensor_kind, sensor_cfg)
        self.tare_limit = self.full_scale * TARE_PERCENT // 100
        n = MAX_POINTS
        self._x = array("i", [0] * n)
        self._y = array("i", [0] * n)  # knot values with the tare added
        self._q = array("i", [0] * n)  # slope, integer part
        self._f = array("i", [0] * n)  # slope, fraction x 2**28
        self._neg = array("B", [0] * n)  # 1: value falls as the signal rises
        self._up = array("i", [0] * n)  # largest signal step above the knot
        self._down = array("i", [0] * n)  # largest signal step below it
        self._n = 0
        self._pending = [None] * n  # captured (signal, reference) by point
        self._points = ()  # the stored fit: (point, signal, reference)
        self._knots = self._nominal
        self._tare = 0
        if stored is not None:
            self._load(stored)
        self._commit(self._knots, self._tare)

    def _load(self, d):
        try:
            unit = d["unit"]
            sensor = d["sensor"]
            tare = d["tare"]
            raw = d["points"]
            points = []
            for p in raw:
                point, s, r = p
                points.append((point, s, r))
        except (KeyError, TypeError, ValueError):
            raise ValueError("stored calibration is malformed") from None
        if unit != self.unit or sensor != self.kind:
            raise ValueError("stored calibration is for another sensor")
        if not (_int(tare) and abs(tare) <= self.tare_limit) or len(points) > MAX_POINTS:
            raise ValueError("stored calibration out of range")
        seen = [False] * MAX_POINTS
        for point, s, r in points:
            ok = _int(point) and _int(s) and _int(r) and 0 <= point < MAX_POINTS
            if not (ok and not seen[point] and abs(s) <= SIGNAL_MAX and abs(r) <= VALUE_MAX):
                raise ValueError("stored calibration point out of range")
            seen[point] = True
        points.sort(key=_by_signal)
        result, knots = _fit(self._nominal, points)
        if result != OK:
            raise ValueError("stored calibration points are not monotonic")
        self._knots = knots
        self._points = tuple(points)
        self._tare = tare
        for point, s, r in points:
            self._pending[point] = (s, r)

    def _commit(self, knots, tare, slopes=None):
        # Precompute each segment's slope words and clamps (cold path).
        # slopes: exact (numerator, denominator) per segment instead of the
        # knots' differences.
        n = len(knots)
        i = 0
        while i < n:
            x, y = knots[i]
            y += tare
            self._x[i] = x
            self._y[i] = y
            if slopes is not None and i < n - 1:
                dy, dx = slopes[i]
            elif i < n - 1:
                dx = knots[i + 1][0] - x
                dy = knots[i + 1][1] - knots[i][1]
            else:
                # the last knot is never a segment start (value() stops at
                # n - 2); keep the arrays tidy.
                dx, dy = 1, 0
            neg = 1 if dy < 0 else 0
            m = ((abs(dy) << _FRAC) + dx // 2) // dx
            if m >> _FRAC > _LIMIT:
                raise ValueError("slope too steep for a small int")
            self._q[i] = m >> _FRAC
            self._f[i] = m & ((1 << _FRAC) - 1)
            self._neg[i] = neg
            # Room for the value to move up and down before it passes the
            # limit; a step up the signal moves it up unless the slope falls.
            rise, fall = _LIMIT - y, _LIMIT + y
            self._up[i] = _steps(fall if neg else rise, m)
            self._down[i] = _steps(rise if neg else fall, m)
            i += 1
        self._n = n
        self._knots = knots
        self._tare = tare

    def value(self, signal):
        # Pa or mN for a signal; integers only, no allocation.
        x = self._x
        i = 0
        last = self._n - 2
        while i < last and signal >= x[i + 1]:
            i += 1
        dx = signal - x[i]
        neg = self._neg[i]
        if dx < 0:
            dx = -dx
            neg ^= 1
            if dx > self._down[i]:
                dx = self._down[i]
        elif dx > self._up[i]:
            dx = self._up[i]
        # dx < 2**25: dh < 2**11, dl < 2**14; f < 2**28: fh, fl < 2**14.
        f = self._f[i]
        fh = f >> 14
        fl = f & _LOW
        dh = dx >> 14
        dl = dx & _LOW
        lo = dl * fl + _HALF  # < 2**28 + 2**27
        mid = dh * fl + dl * fh + (lo >> 14)  # < 2**25 + 2**28 + 2**15
        # round(dx * M / 2**28); the clamps keep it within _LIMIT - |y|
        p = dx * self._q[i] + dh * fh + (mid >> 14)
        if neg:
            return self._y[i] - p
        return self._y[i] + p

    def tare(self, signal):
        if not -SIGNAL_MAX <= signal <= SIGNAL_MAX:
            return OUT_OF_RANGE
        tare = self._tare - self.value(signal)
        if abs(tare) > self.tare_limit:
            return OUT_OF_RANGE
        self._commit(self._knots, tare)
        return OK

    def capture(self, point, signal, reference):
        if not 0 <= point < MAX_POINTS:
            return OUT_OF_RANGE
        if abs(signal) > SIGNAL_MAX or abs(reference) > VALUE_MAX:
            return OUT_OF_RANGE
        self._pending[point] = (signal, reference)
        return OK

    def captured(self):
        # Number of points waiting for store().
        return MAX_POINTS - self._pending.count(None)

    def clear(self):
        # Forget the points and the tare: the nominal function again.
        self._pending = [None] * MAX_POINTS
        self._points = ()
        self._commit(self._nominal, 0)

    def store(self):
        # Fit the captured points: 1 shifts the nominal line, 2 make a line
        # through both, 3 or more a piecewise-linear table through all. The
        # tare is reset: the references define the zero. Returns (OK, largest
        # |value - reference| at the points), (BAD_STATE, 0) with no points,
        # or (OUT_OF_RANGE, point number) when the points do not make a
        # monotonic function.
        points = []
        i = 0
        while i < MAX_POINTS:
            p = self._pending[i]
            if p is not None:
                points.append((i, p[0], p[1]))
            i += 1
        if not points:
            return BAD_STATE, 0
        points.sort(key=_by_signal)
        result, knots = _fit(self._nominal, points)
        if result != OK:
            return result, knots
        self._commit(knots, 0)
        self._points = tuple(points)
        worst = 0
        for _, s, r in points:
            e = abs(self.value(s) - r)
            if e > worst:
                worst = e
        return OK, worst

    def to_dict(self):
        return {
            "unit": self.unit,
            "sensor": self.kind,
            "points": [[p, s, r] for p, s, r in self._points],
            "tare": self._tare,
        }

    def per_area(self, area_x100):
        # This load cell's function read as stack pressure over an electrode
        # area in 0.01 mm2: N/mm2 = MPa, so Pa = mN x 100000 / area. A new
        # Calibration (unit "Pa") whose knots are these divided by the area,
        # so the tick still does one value(); rebuild it when the area or the
        # calibration changes. Where a small area takes the line past 1000 MPa
        # the knot moves along its segment to the last signal inside, and
        # value() continues the line from there until it saturates.
        if self.unit != "mN" or type(area_x100) is not int or area_x100 < 1:
            raise ValueError("per_area needs a load cell and an area > 0")
        force = self._knots
        tare = self._tare
        knots = []
        for x, y in force:
            y = (y + tare) * 100000
            knots.append((x, (2 * y + area_x100) // (2 * area_x100)))
        knots = _inside(knots)
        if knots is None:
            raise ValueError("the whole range is above 1000 MPa at this area")
        # Each segment keeps the exact slope of the force segment under it:
        # rounding only the knots leaves every value within 1.1 Pa of the
        # exact quotient, even far past the last knot.
        slopes = []
        i = 1
        while i < len(knots):
            mid = (knots[i - 1][0] + knots[i][0]) // 2
            j = 0
            while j < len(force) - 2 and mid >= force[j + 1][0]:
                j += 1
            dx = force[j + 1][0] - force[j][0]
            slopes.append(((force[j + 1][1] - force[j][1]) * 100000, dx * area_x100))
            i += 1
        out = Calibration(self.kind, self.sensor_cfg)
        out.unit = "Pa"
        out.full_scale = min(self.full_scale * 100000 // area_x100, VALUE_MAX)
        out.tare_limit = 0  # a view: tare and calibrate the force
        out._commit(knots, 0, slopes)
        return out


def _by_signal(p):
    # Ties (a point captured twice at one signal) go by point number, so the
    # one reported is the same on every port (MicroPython's sort is unstable).
    return p[1] * MAX_POINTS + p[0]


def _int(v):
    return type(v) is int


def _inside(knots):
    # The part of a monotonic knot line within +-VALUE_MAX, cut at integer
    # signals so that every knot kept is still on the line; None if no part.
    n = len(knots)
    out = []
    i = 0
    while i < n:
        x, y = knots[i]
        if -VALUE_MAX <= y <= VALUE_MAX:
            out.append((x, y))
        else:
            for j in (i - 1, i + 1):
                if 0 <= j < n and -VALUE_MAX <= knots[j][1] <= VALUE_MAX:
                    _cut(out, knots[j], knots[i])
        i += 1
    if not out:
        # No knot inside, but a segment may cross the whole band: cut it
        # both ways from the integer signal nearest its zero.
        i = 1
        while i < n:
            a, b = knots[i - 1], knots[i]
            if (a[1] < 0) != (b[1] < 0):
                x = a[0] + (2 * -a[1] * (b[0] - a[0]) + (b[1] - a[1])) // (2 * (b[1] - a[1]))
                zero = (x, _exact((a, b), x))
                if -VALUE_MAX <= zero[1] <= VALUE_MAX:
                    out.append(zero)
                    _cut(out, zero, a)
                    _cut(out, zero, b)
                break
            i += 1
    out.sort(key=_first)
    if len(out) < 2:
        return None
    return out


def _cut(out, inside, outside):
    # Append the point nearest `outside` on the line from `inside` (within
    # the band) towards `outside` (beyond it) whose signal is an integer and
    # whose value is still within the band.
    xi, yi = inside
    xo, yo = outside
    t = VALUE_MAX if yo > 0 else -VALUE_MAX
    step = abs((t - yi) * (xo - xi)) // abs(yo - yi)
    x = xi + step if xo > xi else xi - step
    if x != xi and all(p[0] != x for p in out):
        out.append((x, _exact(((xi, yi), (xo, yo)) if xi < xo else ((xo, yo), (xi, yi)), x)))


def _first(p):
    return p[0]


def _steps(room, m):
    # Largest signal step that moves the value by at most `room` at slope m.
    if room <= 0:
        return 0
    if m == 0:
        return _STEP_MAX
    s = (room << _FRAC) // m
    return s if s < _STEP_MAX else _STEP_MAX


def validate(sensor_kind, sensor_cfg, stored):
    # True if `stored` is a calibration this sensor can use.
    try:
        Calibration(sensor_kind, sensor_cfg, stored)
    except ValueError:
        return False
    return True
