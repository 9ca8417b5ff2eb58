# The holders' physics: gas chambers, a pneumatic press, a bolted stack, and
# the sensors on them, stepped in virtual time.
#
# One file runs unchanged in MicroPython (the unix port, in-process with the
# firmware under the sim HAL) and in CPython 3.11+ (hardware-in-the-loop
# benches), so it imports only `math`, uses plain classes and no f-strings.
# Floats and allocation are fine here: this is the plant, not the firmware's
# tick. PLANT.md documents every parameter (with unit and default), every
# fault and every truth-log column; reference.toml is the default rig in full.
import math

T0C = 273.15
DAY_S = 86400.0
_TWO_PI = 2.0 * math.pi
_MASK = 0xFFFFFFFF
_INF = float("inf")

# Above this pressure ratio an orifice is treated as laminar (flow linear in
# the pressure difference). The textbook formula goes like sqrt(dp) there,
# which an explicit integrator can only follow to equilibrium with ever
# shorter steps; the last 0.1 % of the difference is where the two differ.
_R_LAM = 0.999
# Integration tolerances while gas flows: mass relative, temperature absolute.
_RTOL_M = 1.0e-6
_ATOL_T = 1.0e-4
# First step after a flow path opens: an orifice opening is a step change.
_H_START = 2.0e-4
# An open path to atmosphere this many times faster than the gas's thermal
# time constant pins the pressure at atmosphere (see _quiet_vent).
_QUIET = 200.0
# With valves closed the gas follows the oven exactly, but creep sees the
# breathing and the thermal force, and flowing gas sees the oven, as constant
# or linear over a chunk: 64 chunks per period keep that well below 0.1 %.
_CHUNKS_PER_PERIOD = 64.0
_MAX_CHUNK_S = 60.0

# name: (gas constant J/(kg K), ratio of specific heats)
GASES = {
    "air": (287.05, 1.4),
    "nitrogen": (296.8, 1.4),
    "argon": (208.13, 1.667),
    "helium": (2077.1, 1.667),
}
KINDS = ("isostatic", "uniaxial", "monitor")
SIGNALS = ("ratiometric_0.5_4.5v", "current_4_20ma", "load_cell")

# Parameter tables: (key, type, lo, hi, unit). type "f" number, "i" integer,
# "s" one of the strings in lo. Every key here is documented in PLANT.md.
_PLANT_KEYS = (
    ("seed", "i", 0, 4294967295, ""),
    ("oven_c", "f", -40.0, 300.0, "C"),
    ("oven_swing_k", "f", 0.0, 50.0, "K"),
    ("oven_period_s", "f", 1.0, 1.0e7, "s"),
    ("atm_pa", "f", 50000.0, 110000.0, "Pa"),
)
_GAS_KEYS = (
    ("gas", "s", tuple(sorted(GASES)), None, ""),
    ("initial_mpa", "f", 0.0, 100.0, "MPa"),
    ("supply_mpa", "f", 0.0, 100.0, "MPa"),
    ("supply_temp_c", "f", -40.0, 300.0, "C"),
    ("fill_d_mm", "f", 0.01, 10.0, "mm"),
    ("fill_cd", "f", 0.1, 1.0, ""),
    ("vent_d_mm", "f", 0.01, 10.0, "mm"),
    ("vent_cd", "f", 0.1, 1.0, ""),
    ("tau_s", "f", 0.1, 1.0e5, "s"),
    ("leak_pct_per_day", "f", 0.0, 99.0, "%/day"),
    ("relief_mpa", "f", 0.0, 100.0, "MPa"),
    ("relief_d_mm", "f", 0.01, 20.0, "mm"),
    ("relief_blowdown_pct", "f", 1.0, 50.0, "%"),
)
_STACK_KEYS = (
    ("stiffness_n_per_mm", "f", 1.0, 1.0e7, "N/mm"),
    ("relax_pct", "f", 0.0, 90.0, "%"),
    ("relax_tau_s", "f", 1.0, 1.0e9, "s"),
    ("thermal_n_per_k", "f", -1.0e5, 1.0e5, "N/K"),
    ("stack_tau_s", "f", 0.0, 1.0e6, "s"),
    ("breathing_n", "f", 0.0, 1.0e6, "N"),
    ("breathing_period_s", "f", 1.0, 1.0e9, "s"),
    ("area_mm2", "f", 0.01, 1.0e6, "mm2"),
)
_CHANNEL_KEYS = {
    "isostatic": (("volume_l", "f", 0.001, 1000.0, "L"),) + _GAS_KEYS,
    "uniaxial": (
        ("bore_mm", "f", 1.0, 2000.0, "mm"),
        ("dead_volume_l", "f", 0.001, 100.0, "L"),
        ("retract_mm", "f", 0.0, 100.0, "mm"),
        ("return_spring_n", "f", 0.0, 1.0e6, "N"),
        ("friction_n", "f", 0.0, 1.0e6, "N"),
        ("friction_pct", "f", 0.0, 50.0, "%"),
    )
    + _GAS_KEYS
    + _STACK_KEYS,
    "monitor": (("preload_n", "f", 0.0, 1.0e7, "N"),) + _STACK_KEYS,
}
_SENSOR_COMMON = (
    ("signal", "s", SIGNALS, None, ""),
    ("noise_pct_fs", "f", 0.0, 10.0, "% FS"),
    ("offset_pct_fs", "f", -100.0, 100.0, "% FS"),
    ("quantisation_bits", "i", 0, 32, "bits"),
    ("spike_prob", "f", 0.0, 1.0, ""),
    ("supply_v", "f", 0.1, 100.0, "V"),
    ("supply_drift_v", "f", 0.0, 10.0, "V"),
    ("supply_drift_period_s", "f", 1.0, 1.0e9, "s"),
)
_SENSOR_KEYS = {
    "ratiometric_0.5_4.5v": _SENSOR_COMMON + (("range_mpa", "f", 0.01, 1000.0, "MPa"),),
    "current_4_20ma": _SENSOR_COMMON + (("range_mpa", "f", 0.01, 1000.0, "MPa"),),
    "load_cell": _SENSOR_COMMON
    + (
        ("capacity_n", "f", 1.0, 1.0e8, "N"),
        ("sensitivity_mv_per_v", "f", 0.1, 100.0, "mV/V"),
        ("safe_overload_pct", "f", 100.0, 1000.0, "%"),
        ("amp_range_mv_per_v", "f", 0.1, 1000.0, "mV/V"),
        ("overload_shift_pct", "f", 0.0, 100.0, "%"),
    ),
}
_GAS_KINDS = ("isostatic", "uniaxial")
_CELL_KINDS = ("uniaxial", "monitor")
# fault: (kinds it applies to, value: "flag" | "sign" | (lo, hi, unit), default)
FAULTS = {
    "sensor_unplugged": (KINDS, "flag", True),
    "sensor_stuck": (KINDS, "flag", True),
    "noise_spikes": (KINDS, (0.0, 100.0, "% FS"), None),
    "sensor_offset": (KINDS, (-100.0, 100.0, "% FS"), None),
    "load_cell_saturated": (_CELL_KINDS, "sign", 1),
    "supply_lost": (_GAS_KINDS, (0.0, 100.0, "MPa"), 0.0),
    "leak": (_GAS_KINDS, (0.0, 99.0, "%/day"), None),
    "fast_leak": (_GAS_KINDS, (0.001, 10.0, "mm"), None),
    "fill_stuck_open": (_GAS_KINDS, "flag", True),
    "fill_stuck_closed": (_GAS_KINDS, "flag", True),
    "fill_seat_leak": (_GAS_KINDS, (0.001, 10.0, "mm"), None),
    "vent_stuck_closed": (_GAS_KINDS, "flag", True),
    "vent_stuck_open": (_GAS_KINDS, "flag", True),
    "oven_step": (KINDS, (-100.0, 100.0, "K"), None),
    "oven_swing": (KINDS, (0.0, 50.0, "K"), None),
    # A fitted proportional regulator (`[channel.N.regulator]`) only.
    "regulator_stuck": (_GAS_KINDS, "flag", True),
    "regulator_supply_lost": (_GAS_KINDS, (0.0, 100.0, "MPa"), 0.0),
    "regulator_monitor_open": (_GAS_KINDS, "flag", True),
}
_REGULATOR_FAULTS = ("regulator_stuck", "regulator_supply_lost", "regulator_monitor_open")
# Injecting one of a pair clears the other: a valve cannot be stuck both ways.
_EXCLUSIVE = {
    "fill_stuck_open": "fill_stuck_closed",
    "fill_stuck_closed": "fill_stuck_open",
    "vent_stuck_open": "vent_stuck_closed",
    "vent_stuck_closed": "vent_stuck_open",
}

# A proportional electro-pneumatic regulator feeding a gas holder through its
# own isolation valve: optional, `[channel.N.regulator]`.
_REGULATOR_KEYS = (
    ("range_mpa", "f", 0.01, 1000.0, "MPa"),
    ("command_full_v", "f", 0.1, 100.0, "V"),
    ("monitor_full_v", "f", 0.1, 100.0, "V"),
    ("tau_s", "f", 0.001, 100.0, "s"),
    ("d_mm", "f", 0.01, 10.0, "mm"),
    ("cd", "f", 0.1, 1.0, ""),
    ("offset_pct_fs", "f", -10.0, 10.0, "% FS"),
    ("span_pct", "f", -10.0, 10.0, "%"),
    ("monitor_noise_pct_fs", "f", 0.0, 10.0, "% FS"),
)
_REGULATOR_REF = {
    "range_mpa": 10.0,
    "command_full_v": 10.0,
    "monitor_full_v": 10.0,
    "tau_s": 0.3,
    "d_mm": 1.0,
    "cd": 0.8,
    "offset_pct_fs": 0.3,
    "span_pct": 0.5,
    "monitor_noise_pct_fs": 0.05,
}

_ISO_REF = {
    "kind": "isostatic",
    "volume_l": 0.5,
    "gas": "air",
    "initial_mpa": 0.0,
    "supply_mpa": 12.0,
    "supply_temp_c": 30.0,
    "fill_d_mm": 0.5,
    "fill_cd": 0.8,
    "vent_d_mm": 0.5,
    "vent_cd": 0.8,
    "tau_s": 10.0,
    "leak_pct_per_day": 2.0,
    "relief_mpa": 9.0,
    "relief_d_mm": 2.0,
    "relief_blowdown_pct": 10.0,
}
_RATIO_REF = {
    "signal": "ratiometric_0.5_4.5v",
    "range_mpa": 10.0,
    "noise_pct_fs": 0.05,
    "offset_pct_fs": 0.0,
    "quantisation_bits": 0,
    "spike_prob": 0.01,
    "supply_v": 5.0,
    "supply_drift_v": 0.0,
    "supply_drift_period_s": 86400.0,
}
_CURRENT_REF = {
    "signal": "current_4_20ma",
    "range_mpa": 10.0,
    "noise_pct_fs": 0.05,
    "offset_pct_fs": 0.0,
    "quantisation_bits": 0,
    "spike_prob": 0.01,
    "supply_v": 24.0,
    "supply_drift_v": 0.0,
    "supply_drift_period_s": 86400.0,
}
_CELL_REF = {
    "signal": "load_cell",
    "capacity_n": 20000.0,
    "sensitivity_mv_per_v": 2.0,
    "safe_overload_pct": 150.0,
    "amp_range_mv_per_v": 3.90625,
    "overload_shift_pct": 2.0,
    "noise_pct_fs": 0.001,
    "offset_pct_fs": 0.0,
    "quantisation_bits": 0,
    "spike_prob": 0.01,
    "supply_v": 4.3,
    "supply_drift_v": 0.0,
    "supply_drift_period_s": 86400.0,
}
_STACK_REF = {
    "relax_tau_s": 86400.0,
    "thermal_n_per_k": 20.0,
    "stack_tau_s": 1800.0,
    "breathing_n": 100.0,
    "breathing_period_s": 36000.0,
    "area_mm2": 78.54,
}
_UNI_REF = {
    "kind": "uniaxial",
    "bore_mm": 160.0,
    "dead_volume_l": 0.1,
    "retract_mm": 0.5,
    "return_spring_n": 100.0,
    "friction_n": 20.0,
    "friction_pct": 2.0,
    "gas": "air",
    "initial_mpa": 0.0,
    "supply_mpa": 0.8,
    "supply_temp_c": 30.0,
    "fill_d_mm": 0.5,
    "fill_cd": 0.8,
    "vent_d_mm": 0.5,
    "vent_cd": 0.8,
    "tau_s": 5.0,
    "leak_pct_per_day": 2.0,
    "relief_mpa": 0.9,
    "relief_d_mm": 2.0,
    "relief_blowdown_pct": 10.0,
    "stiffness_n_per_mm": 50000.0,
    "relax_pct": 3.0,
}
_MON_REF = {
    "kind": "monitor",
    "preload_n": 5000.0,
    "stiffness_n_per_mm": 5000.0,
    "relax_pct": 5.0,
}
_SENSOR_REF = {
    "ratiometric_0.5_4.5v": _RATIO_REF,
    "current_4_20ma": _CURRENT_REF,
    "load_cell": _CELL_REF,
}
_KIND_SIGNAL = {
    "isostatic": "ratiometric_0.5_4.5v",
    "uniaxial": "load_cell",
    "monitor": "load_cell",
}


def _merged(*dicts):
    out = {}
    for d in dicts:
        for k in d:
            out[k] = d[k]
    return out


_KIND_REF = {
    "isostatic": _ISO_REF,
    "uniaxial": _merged(_UNI_REF, _STACK_REF),
    "monitor": _merged(_MON_REF, _STACK_REF),
}


def default_params():
    """The reference rig as the dict that reference.toml parses to (a fresh copy)."""
    ch2 = _merged(_ISO_REF, {"volume_l": 0.3})
    ch2["sensor"] = _merged(_CURRENT_REF)
    ch1 = _merged(_ISO_REF)
    ch1["sensor"] = _merged(_RATIO_REF)
    ch3 = _merged(_KIND_REF["uniaxial"])
    ch3["sensor"] = _merged(_CELL_REF)
    ch4 = _merged(_KIND_REF["monitor"])
    ch4["sensor"] = _merged(_CELL_REF)
    return {
        "plant": {
            "seed": 1,
            "oven_c": 30.0,
            "oven_swing_k": 1.0,
            "oven_period_s": 3600.0,
            "atm_pa": 101325.0,
        },
        "channel": {"1": ch1, "2": ch2, "3": ch3, "4": ch4},
    }


# ---------------------------------------------------------------- validation


def _fmt_range(lo, hi, unit):
    s = "%s..%s" % (lo, hi)
    if unit:
        s += " " + unit
    return s


def _is_number(v):
    return type(v) is not bool and isinstance(v, (int, float))


def _check_value(where, v, typ, lo, hi, unit):
    if typ == "s":
        if not isinstance(v, str) or v not in lo:
            raise ValueError("%s = %r: expected one of %s" % (where, v, ", ".join(lo)))
        return v
    if typ == "i":
        if type(v) is bool or not isinstance(v, int) or v < lo or v > hi:
            raise ValueError(
                "%s = %r: expected an integer in %s" % (where, v, _fmt_range(lo, hi, unit))
            )
        return v
    if typ == "b":
        if type(v) is not bool:
            raise ValueError("%s = %r: expected true or false" % (where, v))
        return v
    if not _is_number(v) or not math.isfinite(v) or v < lo or v > hi:
        raise ValueError("%s = %r: expected a number in %s" % (where, v, _fmt_range(lo, hi, unit)))
    return float(v)


def _check_section(where, given, keys, defaults, extra=()):
    if not isinstance(given, dict):
        raise ValueError("%s: expected a table of keys, got %r" % (where, given))
    names = [k[0] for k in keys]
    for k in given:
        if k not in names and k not in extra:
            allowed = sorted(names + list(extra))
            raise ValueError("%s: unknown key %r (allowed: %s)" % (where, k, ", ".join(allowed)))
    out = {}
    for name, typ, lo, hi, unit in keys:
        if name in given:
            out[name] = _check_value(where + "." + name, given[name], typ, lo, hi, unit)
        else:
            out[name] = defaults[name]
    return out


def check_fault(kind, fault, value, where="fault"):
    """Validated value of `fault` on a holder of `kind` (value None = its default).

    Raises ValueError naming the fault and the allowed values."""
    if fault not in FAULTS:
        raise ValueError(
            "%s: unknown fault %r (known: %s)" % (where, fault, ", ".join(sorted(FAULTS)))
        )
    kinds, spec, default = FAULTS[fault]
    if kind not in kinds:
        raise ValueError(
            "%s: fault %r does not apply to a %s holder (only %s)"
            % (where, fault, kind, ", ".join(kinds))
        )
    if value is None:
        value = default
        if value is None:
            raise ValueError("%s: fault %r needs a value in %s" % (where, fault, _fmt_range(*spec)))
    if spec == "flag":
        if value is not True and not (_is_number(value) and value == 1):
            raise ValueError("%s: fault %r takes true (or 1), got %r" % (where, fault, value))
        return True
    if spec == "sign":
        if value is True:
            return 1
        if _is_number(value) and (value == 1 or value == -1):
            return int(value)
        raise ValueError(
            "%s: fault %r takes 1 (positive clamp) or -1 (negative), got %r" % (where, fault, value)
        )
    lo, hi, unit = spec
    return _check_value(where + "." + fault, value, "f", lo, hi, unit)


def _channel_number(key):
    n = None
    if type(key) is not bool and isinstance(key, int):
        n = key
    elif isinstance(key, str) and key.isdigit():
        n = int(key)
    if n is None or n < 1 or n > 64:
        raise ValueError("channel.%s: channel numbers are integers 1..64" % (key,))
    return n


def _check_channel(n, given, oven_c):
    where = "channel.%d" % n
    if not isinstance(given, dict):
        raise ValueError("%s: expected a table of keys, got %r" % (where, given))
    kind = given.get("kind")
    if kind not in KINDS:
        raise ValueError("%s.kind = %r: expected one of %s" % (where, kind, ", ".join(KINDS)))
    defaults = _merged(_KIND_REF[kind])
    if kind != "monitor":
        # Without a stated supply temperature the gas arrives at oven temperature.
        defaults["supply_temp_c"] = oven_c
    keys = (("kind", "s", KINDS, None, ""),) + _CHANNEL_KEYS[kind]
    extra = ("sensor", "fault", "regulator") if kind in _GAS_KINDS else ("sensor", "fault")
    cfg = _check_section(where, given, keys, defaults, extra)
    if "regulator" in given:
        cfg["regulator"] = _check_section(
            where + ".regulator", given["regulator"], _REGULATOR_KEYS, _REGULATOR_REF
        )
    sensor = given.get("sensor", {})
    if not isinstance(sensor, dict):
        raise ValueError("%s.sensor: expected a table of keys, got %r" % (where, sensor))
    signal = sensor.get("signal", _KIND_SIGNAL[kind])
    ok = ("load_cell",) if kind != "isostatic" else ("ratiometric_0.5_4.5v", "current_4_20ma")
    if signal not in ok:
        raise ValueError(
            "%s.sensor.signal = %r: a %s holder takes %s" % (where, signal, kind, " or ".join(ok))
        )
    cfg["sensor"] = _check_section(
        where + ".sensor", sensor, _SENSOR_KEYS[signal], _SENSOR_REF[signal]
    )
    faults = given.get("fault", [])
    if not isinstance(faults, list):
        raise ValueError("%s.fault: expected an array of tables ([[%s.fault]])" % (where, where))
    cfg["fault"] = []
    i = 0
    for f in faults:
        fw = "%s.fault[%d]" % (where, i)
        i += 1
        if not isinstance(f, dict):
            raise ValueError("%s: expected a table, got %r" % (fw, f))
        for k in ("at_s", "kind"):
            if k not in f:
                raise ValueError("%s: missing key %r" % (fw, k))
        fd = _check_fault_entry(fw, f)
        if fd["clear"]:
            if "value" in f or fd["duration_s"] is not None:
                raise ValueError("%s: clear = true takes no value or duration_s" % fw)
            _check_fault_name(kind, fd["kind"], fw)
        else:
            fd["value"] = check_fault(kind, fd["kind"], fd["value"], fw)
        _check_regulator_fitted("regulator" in cfg, fd["kind"], fw)
        cfg["fault"].append(fd)
    return cfg


def _check_fault_name(kind, fault, where):
    if fault not in FAULTS:
        raise ValueError(
            "%s: unknown fault %r (known: %s)" % (where, fault, ", ".join(sorted(FAULTS)))
        )
    if kind not in FAULTS[fault][0]:
        raise ValueError(
            "%s: fault %r does not apply to a %s holder (only %s)"
            % (where, fault, kind, ", ".join(FAULTS[fault][0]))
        )


def _check_regulator_fitted(fitted, fault, where):
    if fault in _REGULATOR_FAULTS and not fitted:
        raise ValueError(
            "%s: fault %r needs a proportional regulator ([channel.N.regulator])" % (where, fault)
        )


def _check_fault_entry(where, f):
    names = ("at_s", "kind", "value", "duration_s", "clear")
    for k in f:
        if k not in names:
            raise ValueError("%s: unknown key %r (allowed: %s)" % (where, k, ", ".join(names)))
    out = {
        "at_s": _check_value(where + ".at_s", f["at_s"], "f", 0.0, 1.0e12, "s"),
        "kind": f["kind"],
        "value": f.get("value"),
        "duration_s": None,
        "clear": False,
    }
    if not isinstance(out["kind"], str):
        raise ValueError("%s.kind = %r: expected a fault name" % (where, out["kind"]))
    if "duration_s" in f:
        out["duration_s"] = _check_value(
            where + ".duration_s", f["duration_s"], "f", 1.0e-6, 1.0e12, "s"
        )
    if "clear" in f:
        out["clear"] = _check_value(where + ".clear", f["clear"], "b", None, None, "")
    return out


def check_params(params):
    """Complete, validated parameters: defaults filled in, numbers as floats.

    None gives the reference rig. A dict without `channel` keeps the reference
    rig's channels; with `channel`, exactly the channels it lists."""
    ref = default_params()
    if params is None:
        params = ref
    if not isinstance(params, dict):
        raise ValueError("plant parameters: expected a table (dict), got %r" % (params,))
    for k in params:
        if k not in ("plant", "channel"):
            raise ValueError("unknown top-level key %r (allowed: channel, plant)" % (k,))
    plant = _check_section("plant", params.get("plant", {}), _PLANT_KEYS, ref["plant"])
    chans = params.get("channel", ref["channel"])
    if not isinstance(chans, dict) or not chans:
        raise ValueError("channel: expected tables [channel.1], [channel.2], ...")
    out = {}
    for key in chans:
        n = _channel_number(key)
        if n in out:
            raise ValueError("channel.%d: given twice" % n)
        out[n] = _check_channel(n, chans[key], plant["oven_c"])
    return {"plant": plant, "channel": out}


# ---------------------------------------------------------------- noise


class Rng:
    """xorshift32 and Box-Muller: the same numbers in MicroPython and CPython."""

    def __init__(self, seed):
        # fmix32 (MurmurHash3's finaliser) spreads nearby seeds apart, so
        # channel n and n+1 of one seed do not share a stream.
        x = seed & _MASK
        x ^= x >> 16
        x = (x * 0x85EBCA6B) & _MASK
        x ^= x >> 13
        x = (x * 0xC2B2AE35) & _MASK
        x ^= x >> 16
        self.state = x or 0x6D2B79F5
        self._spare = None

    def next32(self):
        x = self.state
        x ^= (x << 13) & _MASK
        x ^= x >> 17
        x ^= (x << 5) & _MASK
        self.state = x
        return x

    def uniform(self):
        """In [0, 1)."""
        return self.next32() / 4294967296.0

    def gauss(self):
        """Standard normal."""
        z = self._spare
        if z is not None:
            self._spare = None
            return z
        u1 = (self.next32() + 1) / 4294967296.0  # (0, 1]: log(u1) is finite
        u2 = self.next32() / 4294967296.0
        r = math.sqrt(-2.0 * math.log(u1))
        a = _TWO_PI * u2
        self._spare = r * math.sin(a)
        return r * math.cos(a)


# ---------------------------------------------------------------- gas


class _Gas:
    """Constants of the orifice equations for one gas."""

    def __init__(self, name):
        r, g = GASES[name]
        self.R = r
        self.g = g
        self.inv_g = 1.0 / g
        # choked: mdot = Cd A p_up kc / sqrt(T_up)
        self.kc = math.sqrt(g / r) * (2.0 / (g + 1.0)) ** ((g + 1.0) / (2.0 * (g - 1.0)))
        self.rcrit = (2.0 / (g + 1.0)) ** (g / (g - 1.0))
        # subsonic: mdot = Cd A p_up sqrt(ks / T_up (r^(2/g) - r^((g+1)/g)))
        self.ks = 2.0 * g / ((g - 1.0) * r)
        a = _R_LAM**self.inv_g
        self.klam = math.sqrt(self.ks * (a * a - _R_LAM * a)) / (1.0 - _R_LAM)

    def orifice(self, ca, pu, tu, pd):
        """Mass flow (kg/s) through Cd*A = ca (m2) from pu (Pa abs, tu K) to pd < pu."""
        r = pd / pu
        if r <= self.rcrit:
            return ca * pu * self.kc / math.sqrt(tu)
        if r < _R_LAM:
            a = r**self.inv_g
            return ca * pu * math.sqrt(self.ks / tu * (a * a - r * a))
        return ca * pu * self.klam * (1.0 - r) / math.sqrt(tu)


def _ca(d_mm, cd):
    return cd * math.pi * (d_mm * 1.0e-3) ** 2 / 4.0


def _follow(x, e, base, k, wt, s0, c0, s1, c1):
    """x after one step of a first-order lag (e = exp(-h/tau)) behind the
    oven, base + a sin(w t), exactly: the steady response to a sinusoid is
    base + k (sin - wt cos), k = a / (1 + wt^2), wt = w tau; sN, cN are
    sin and cos of w t at the step's ends."""
    return base + k * (s1 - wt * c1) + (x - base - k * (s0 - wt * c0)) * e


# ---------------------------------------------------------------- sensors


class Sensor:
    """A transducer's output for a true value: noise, offset, quantisation,
    saturation and the sensor faults. Values in, signal units out."""

    def __init__(self, cfg, fs, rng):
        self.signal = cfg["signal"]
        self._mode = SIGNALS.index(self.signal)
        self.fs = fs  # full scale in SI units: Pa or N
        self._rng = rng
        self._noise = cfg["noise_pct_fs"] / 100.0
        self._offset = cfg["offset_pct_fs"] / 100.0
        bits = cfg["quantisation_bits"]
        self._q = float(1 << bits) if bits else 0.0
        self._spike_prob = cfg["spike_prob"]
        self._v0 = cfg["supply_v"]
        self._dv = cfg["supply_drift_v"]
        self._dw = _TWO_PI / cfg["supply_drift_period_s"]
        if self._mode == 2:
            self._sens = cfg["sensitivity_mv_per_v"]
            self._amp = cfg["amp_range_mv_per_v"]
            self._safe = cfg["safe_overload_pct"] / 100.0 * fs
            self._shift = cfg["overload_shift_pct"] / 100.0
        self.zero_shift = 0.0  # mV/V, lasting, after an overload
        self.last = None
        self.unplugged = False
        self.stuck = None
        self.spike = 0.0
        self.fault_offset = 0.0
        self.saturated = 0

    def supply_v(self, t):
        if self._dv:
            return self._v0 + self._dv * math.sin(self._dw * t)
        return self._v0

    def overload(self, peak):
        """A load beyond safe overload shifts the zero for good."""
        if self._mode == 2 and peak > self._safe:
            self.zero_shift = self._sens * (peak - self._safe) / self.fs * self._shift

    def convert(self, x, t):
        """Output for x = measured value as a fraction of full scale."""
        q = self._q
        if q:
            x = math.floor(x * q + 0.5) / q
        m = self._mode
        if m == 0:
            r = 0.1 + 0.8 * x
            # the transducer's output stage rails just inside its supply
            r = 0.02 if r < 0.02 else 0.98 if r > 0.98 else r
            return r * self.supply_v(t)
        if m == 1:
            ma = 4.0 + 16.0 * x
            # NAMUR NE 43 saturation: 3.8 mA below range, 20.5 mA above
            return 3.8 if ma < 3.8 else 20.5 if ma > 20.5 else ma
        mvv = self._sens * x + self.zero_shift
        a = self._amp
        return -a if mvv < -a else a if mvv > a else mvv

    def read(self, value, t):
        if self.unplugged:
            out = None if self._mode == 2 else 0.0
        elif self.stuck is not None:
            out = self.stuck
        elif self.saturated:
            out = self.saturated * self._amp
        else:
            x = value / self.fs + self._offset + self.fault_offset
            if self._noise:
                x += self._noise * self._rng.gauss()
            if self.spike:
                u = self._rng.uniform()
                p = self._spike_prob
                if u < p:
                    x += self.spike if u < 0.5 * p else -self.spike
            out = self.convert(x, t)
        self.last = out
        return out

    def freeze(self, value, t):
        """sensor_stuck: hold the present output, without noise from now on."""
        out = self.last
        if out is None:
            out = self.convert(value / self.fs + self._offset + self.fault_offset, t)
        self.stuck = out


# ---------------------------------------------------------------- holders


class Holder:
    """One channel of the rig. The sim HAL sets `fill` and `vent` (commanded
    valve states) and reads `signal()`; the rest is the truth."""

    kind = ""
    regulator = None  # a Regulator on a gas holder that has one

    def __init__(self, plant, ch, cfg, rng, fs):
        self.ch = ch
        self.fill = False
        self.vent = False
        self._plant = plant
        self.cfg = cfg
        self.sensor = Sensor(cfg["sensor"], fs, rng)
        self._faults = {}
        self._ostep = 0.0
        self._oamp = plant._swing
        self._t = 0.0
        self._to = plant._oven_k  # oven temperature at _t, K

    # -- faults
    @property
    def faults(self):
        """Active faults: name -> value (a copy)."""
        return _merged(self._faults)

    def _set_fault(self, name, value):
        if value is None:
            if name in self._faults:
                del self._faults[name]
        else:
            other = _EXCLUSIVE.get(name)
            if other in self._faults:
                del self._faults[other]
            self._faults[name] = value
        self._apply_faults(name, value)

    def _apply_faults(self, name, value):
        f = self._faults
        s = self.sensor
        self._ostep = f.get("oven_step", 0.0)
        self._oamp = f.get("oven_swing", self._plant._swing)
        self._oven_changed()
        self._to = self._plant._oven_at(self._t, self._ostep, self._oamp)
        s.unplugged = "sensor_unplugged" in f
        s.spike = f.get("noise_spikes", 0.0) / 100.0
        s.fault_offset = f.get("sensor_offset", 0.0) / 100.0
        s.saturated = f.get("load_cell_saturated", 0)
        if name == "sensor_stuck":
            if value is None:
                s.stuck = None
            else:
                s.freeze(self._measurand(), self._t)

    # -- what the HAL reads
    def signal(self):
        """The sensor's output now: V (ratiometric), mA (4-20 mA), mV/V (load
        cell; None when the HX711 is gone)."""
        return self.sensor.read(self._measurand(), self._t)

    @property
    def supply_v(self):
        return self.sensor.supply_v(self._t)

    def _oven_changed(self):
        pass

    @property
    def oven_temp(self):
        """K, this holder's oven (with oven faults)."""
        return self._to


class Regulator:
    """A proportional electro-pneumatic regulator (relieving) and the
    normally-closed isolation valve between its outlet and the gas.

    The sim HAL sets `command_v` (volts at its command input) and `valve`
    (the isolation valve commanded open). The pilot aims the outlet at
    target(), the command through the unit's own offset and span errors,
    with a first-order lag `tau_s`. The outlet feeds the gas through an
    orifice (`d_mm`, `cd`): while it is above the gas it fills from the
    supply, which a check valve keeps from flowing back; while the gas is
    above it, the regulator relieves the gas to atmosphere. So the outlet is
    the pilot's pressure, except that it cannot rise above the supply (nor,
    without flow, fall below what it holds). The monitor is the unit's own
    outlet sensor, errors and all: in steady state it agrees with the
    command even where the outlet is off, which only the holder's
    transducer can tell."""

    def __init__(self, cfg, rng):
        self.range = cfg["range_mpa"] * 1.0e6
        self._cfull = cfg["command_full_v"]
        self._mfull = cfg["monitor_full_v"]
        self.tau = cfg["tau_s"]
        self.ca = _ca(cfg["d_mm"], cfg["cd"])
        self._off = cfg["offset_pct_fs"] / 100.0 * self.range
        self._span = 1.0 + cfg["span_pct"] / 100.0
        self._noise = cfg["monitor_noise_pct_fs"] / 100.0
        self._rng = rng
        self.command_v = 0.0
        self.valve = False
        self.pilot = 0.0  # Pa gauge: where the pilot holds the outlet now
        self.out = 0.0  # Pa gauge at the outlet
        self.stuck = False
        self.monitor_open = False
        self.last_monitor = None
        self._p0 = 0.0  # the pilot over the present chunk: start, target, start time
        self._tg = 0.0
        self._t0 = 0.0
        self._moving = False
        self._eh = -1.0
        self._e = 0.0

    def target(self):
        """Outlet (Pa gauge) the unit aims at for the present command."""
        x = self.command_v / self._cfull
        x = 0.0 if x < 0.0 else 1.0 if x > 1.0 else x  # the input saturates
        t = x * self.range * self._span + self._off
        return t if t > 0.0 else 0.0  # it relieves to atmosphere, no lower

    def _begin(self, t0, t1):
        # The lag, exactly: at the chunk's end here, inside it in pilot_at()
        # (a chunk can be a minute long when nothing else happens). True if
        # the pilot starts to move or changes course: a step change for the
        # integrator, like a valve opening.
        p0 = self.pilot
        self._p0 = p0
        self._t0 = t0
        was = self._tg if self._moving else None
        self._tg = p0
        self._moving = False
        if self.stuck:
            return False
        tg = self.target()
        if abs(tg - p0) <= 1.0e-9 * self.range:
            self.pilot = tg
            self._tg = tg
            return False
        h = t1 - t0
        if h != self._eh:
            self._eh = h
            self._e = math.exp(-h / self.tau)
        self._tg = tg
        self._moving = True
        self.pilot = tg + (p0 - tg) * self._e
        return tg != was

    def pilot_at(self, t):
        """The pilot (Pa gauge) at time t inside the present chunk."""
        if self._moving:
            tg = self._tg
            return tg + (self._p0 - tg) * math.exp((self._t0 - t) / self.tau)
        return self._tg

    def _end(self, gas_gauge, supply_gauge):
        p = self.pilot
        hold = gas_gauge if self.valve else self.out
        s = supply_gauge if supply_gauge > hold else hold
        out = p if p < s else s
        self.out = out if out > 0.0 else 0.0

    def monitor_v(self):
        """The monitor output now, V (one new sample: draws noise)."""
        if self.monitor_open:
            v = 0.0  # the wire is open: the divider pulls the ADC pin down
        else:
            x = (self.out - self._off) / self._span / self.range
            if self._noise:
                x += self._noise * self._rng.gauss()
            v = x * self._mfull
            top = 1.05 * self._mfull  # the output stage's rail
            v = 0.0 if v < 0.0 else top if v > top else v
        self.last_monitor = v
        return v


class _GasHolder(Holder):
    """An ideal-gas volume with fill, vent, leaks and a relief valve, and heat
    exchange with its wall (the oven) with time constant tau."""

    def __init__(self, plant, ch, cfg, rng, fs, volume):
        Holder.__init__(self, plant, ch, cfg, rng, fs)
        self._gas = _Gas(cfg["gas"])
        self._pa = plant.atm_pa
        self._V = volume
        self._tau = cfg["tau_s"]
        self._ts = cfg["supply_temp_c"] + T0C
        self._supply = cfg["supply_mpa"] * 1.0e6
        self._ps = self._supply + self._pa
        self._ca_fill = _ca(cfg["fill_d_mm"], cfg["fill_cd"])
        self._ca_vent = _ca(cfg["vent_d_mm"], cfg["vent_cd"])
        self._leak_cfg = self._leak_rate(cfg["leak_pct_per_day"])
        self._leak_k = self._leak_cfg
        self._ca_seat = 0.0
        self._ca_fast = 0.0
        self._relief = cfg["relief_mpa"] * 1.0e6
        self._ca_relief = _ca(cfg["relief_d_mm"], cfg["vent_cd"])
        self._reseat = self._relief * (1.0 - cfg["relief_blowdown_pct"] / 100.0)
        self.relief_open = False
        self._fill_stuck = 0  # 1 open, -1 closed
        self._vent_stuck = 0
        t = plant._oven_k
        self._T = t
        self._m = (cfg["initial_mpa"] * 1.0e6 + self._pa) * volume / (self._gas.R * t)
        self.gas_used = 0.0
        self._h = _H_START
        self._ca_in = 0.0
        self._ca_out = 0.0
        self._eh = -1.0  # step length the cached exponentials belong to
        self._k_leak = -1.0
        self._wt = plant._w * self._tau
        self._oven_changed()
        self._mech = False  # a piston to settle after every step
        self._ps_reg = self._ps  # the regulator's supply, Pa abs
        self._ca_reg = 0.0
        if "regulator" in cfg:
            self.regulator = Regulator(cfg["regulator"], Rng(rng.state ^ 0x52454755))

    def _oven_changed(self):
        self._ka = self._oamp / (1.0 + self._wt * self._wt)

    @staticmethod
    def _leak_rate(pct):
        # exponential, so that exactly pct % of the gauge pressure is gone
        # after one day at constant temperature
        return -math.log(1.0 - pct / 100.0) / DAY_S if pct else 0.0

    def _apply_faults(self, name, value):
        Holder._apply_faults(self, name, value)
        f = self._faults
        self._ps = (f["supply_lost"] * 1.0e6 if "supply_lost" in f else self._supply) + self._pa
        self._leak_k = self._leak_rate(f["leak"]) if "leak" in f else self._leak_cfg
        self._ca_fast = _ca(f["fast_leak"], self.cfg["vent_cd"]) if "fast_leak" in f else 0.0
        self._ca_seat = (
            _ca(f["fill_seat_leak"], self.cfg["fill_cd"]) if "fill_seat_leak" in f else 0.0
        )
        self._fill_stuck = 1 if "fill_stuck_open" in f else -1 if "fill_stuck_closed" in f else 0
        self._vent_stuck = 1 if "vent_stuck_open" in f else -1 if "vent_stuck_closed" in f else 0
        reg = self.regulator
        if reg is not None:
            ps = self._ps
            if "regulator_supply_lost" in f:
                own = f["regulator_supply_lost"] * 1.0e6 + self._pa
                if own < ps:
                    ps = own
            self._ps_reg = ps
            reg.stuck = "regulator_stuck" in f
            reg.monitor_open = "regulator_monitor_open" in f
            self._h = _H_START  # a supply that changes is a step for the integrator

    # -- the truth
    @property
    def gas_pressure(self):
        """Pa gauge in the chamber or cylinder."""
        return self._m * self._gas.R * self._T / self._V - self._pa

    @property
    def gas_temp(self):
        return self._T

    @property
    def fill_open(self):
        """Whether gas can pass the fill valve (commanded, or stuck open)."""
        s = self._fill_stuck
        return s > 0 or (s == 0 and self.fill)

    @property
    def vent_open(self):
        s = self._vent_stuck
        return s > 0 or (s == 0 and self.vent)

    # -- dynamics
    def _rates(self, t, m, T):
        """dm/dt (kg/s), dT/dt (K/s), supply mass flow (kg/s)."""
        gas = self._gas
        V = self._V
        P = m * gas.R * T / V
        Tw = self._tw0 + self._tws * (t - self._tc0)
        qin = 0.0
        hin = 0.0
        qout = 0.0
        used = 0.0
        ps = self._ps
        # a check valve before the fill valve: gas only ever flows in
        if self._ca_in > 0.0 and ps > P:
            used = gas.orifice(self._ca_in, ps, self._ts, P)
            qin = used
            hin = used * self._ts
        ca = self._ca_out
        if ca > 0.0:
            pa = self._pa
            if P > pa:
                qout = gas.orifice(ca, P, T, pa)
            elif P < pa:
                q = gas.orifice(ca, pa, Tw, P)
                qin += q
                hin += q * Tw
        ca = self._ca_reg
        if ca > 0.0:
            # The regulator's outlet: its pilot, but no higher than the supply
            # it draws from (through its check valve), nor, without flow,
            # lower than the gas it feeds.
            pl = self.regulator.pilot_at(t) + self._pa
            src = self._ps_reg
            if src < P:
                src = P
            if pl < src:
                src = pl
            if src > P:
                q = gas.orifice(ca, src, self._ts, P)
                used += q
                qin += q
                hin += q * self._ts
            elif P > pl:
                qout += gas.orifice(ca, P, T, pl)  # it relieves to atmosphere
        k = self._leak_k
        if k:
            q = k * (P - self._pa) * V / (gas.R * T)
            if q > 0.0:
                qout += q
            else:
                qin -= q
                hin -= q * Tw
        g = gas.g
        dT = (g * hin - qin * T - (g - 1.0) * T * qout) / m + (Tw - T) / self._tau
        return qin - qout, dT, used

    def _set_paths(self):
        """Open flow areas now; False if nothing can flow. (Runs every chunk,
        so no property calls.)"""
        s = self._fill_stuck
        ca_in = self._ca_seat
        if s > 0 or (s == 0 and self.fill):
            ca_in += self._ca_fill
        s = self._vent_stuck
        ca_out = self._ca_fast
        if s > 0 or (s == 0 and self.vent):
            ca_out += self._ca_vent
        if self.relief_open:
            ca_out += self._ca_relief
        reg = self.regulator
        ca_reg = reg.ca if reg is not None and reg.valve else 0.0
        if ca_in != self._ca_in or ca_out != self._ca_out or ca_reg != self._ca_reg:
            self._ca_in = ca_in
            self._ca_out = ca_out
            self._ca_reg = ca_reg
            self._h = _H_START
        return ca_in > 0.0 or ca_out > 0.0 or ca_reg > 0.0

    def _check_relief(self):
        """Pop open at the set pressure, reseat below it by the blowdown."""
        if not self._relief:
            return False
        pg = self._m * self._gas.R * self._T / self._V - self._pa
        if not self.relief_open and pg >= self._relief:
            self.relief_open = True
            return True
        if self.relief_open and pg <= self._reseat:
            self.relief_open = False
            return True
        return False

    def _after_step(self):
        """Hook after every accepted step; True if the state jumped."""
        return self._check_relief()

    def _exps(self, h):
        self._eh = h
        self._e_tau = math.exp(-h / self._tau)
        self._e_leak = math.exp(-h * self._leak_k)
        self._k_leak = self._leak_k

    def _quiet_vent(self):
        """Rate constant (1/s) of the paths to atmosphere when they hold the
        gas there, else 0. Near equilibrium an orifice is laminar, a leak
        with k = Cd A klam R sqrt(T) / V; when k tau is large the equations
        are stiff (steps of a fraction of 1/k) but their limit is simple."""
        if self._ca_out == 0.0 or self._ca_reg > 0.0 or (self._ca_in > 0.0 and self._ps > self._pa):
            return 0.0
        gas = self._gas
        T = self._T
        pa = self._pa
        if abs(self._m * gas.R * T / self._V - pa) > (1.0 - _R_LAM) * pa:
            return 0.0
        k = self._ca_out * gas.klam * gas.R * math.sqrt(T) / self._V
        return k if k * self._tau >= _QUIET else 0.0

    def _gas_chunk(self, t0, t1, s0, c0, s1, c1):
        reg = self.regulator
        if reg is None:
            self._gas_flow(t0, t1, s0, c0, s1, c1)
            return
        if reg._begin(t0, t1):
            self._h = _H_START
        self._gas_flow(t0, t1, s0, c0, s1, c1)
        reg._end(self.gas_pressure, self._ps_reg - self._pa)

    def _gas_flow(self, t0, t1, s0, c0, s1, c1):
        h = t1 - t0
        base = self._plant._oven_k + self._ostep
        if self._set_paths():
            k = self._quiet_vent()
            if k:
                self._at_atmosphere(h, k, base, s0, c0, s1, c1)
                return
            # while gas flows the steps are short: the oven is linear in each
            a = self._oamp
            self._tw0 = base + a * s0
            self._tws = a * (s1 - s0) / h
            self._tc0 = t0
            self._integrate(t0, t1)
            return
        # Valves closed: exact relaxation, a handful of float operations.
        if h != self._eh or self._k_leak != self._leak_k:
            self._exps(h)
        T = self._T
        if self._leak_k:
            gas = self._gas
            m = self._m
            ma = self._pa * self._V / (gas.R * T)
            self._m = ma + (m - ma) * self._e_leak
            # What stays behind expands into what left, cooling at a steady
            # (g - 1) T k P_gauge / P_abs; against the wall that is a target
            # shifted by rate * tau, which keeps the result exact whatever
            # the step length.
            base -= (gas.g - 1.0) * T * self._leak_k * (m - ma) / m * self._tau
        # _follow, inlined: this is the line every closed tick runs
        k = self._ka
        wt = self._wt
        self._T = base + k * (s1 - wt * c1) + (T - base - k * (s0 - wt * c0)) * self._e_tau
        if self._mech or self._relief:
            self._after_step()

    def _at_atmosphere(self, h, k, base, s0, c0, s1, c1):
        """An open vent holds the gas at atmosphere: at constant pressure the
        wall's heat goes into c_p, so the gas follows the wall with time
        constant gamma tau, and the mass follows P_atm V / (R T) within 1/k."""
        gas = self._gas
        tp = gas.g * self._tau
        wt = self._plant._w * tp
        T0 = self._T
        T1 = _follow(T0, math.exp(-h / tp), base, self._oamp / (1.0 + wt * wt), wt, s0, c0, s1, c1)
        c = self._pa * self._V / gas.R
        self._m = c / T1 + (self._m - c / T0) * math.exp(-k * h)
        self._T = T1
        if self._mech or self._relief:
            self._after_step()

    def _integrate(self, t0, t1):
        """Bogacki-Shampine 3(2), error-controlled, first-same-as-last."""
        rates = self._rates
        t = t0
        m = self._m
        T = self._T
        used = self.gas_used
        h = self._h
        k1m, k1t, k1u = rates(t, m, T)
        while t < t1:
            last = h >= t1 - t
            if last:
                h = t1 - t
            a = 0.5 * h
            k2m, k2t, k2u = rates(t + a, m + a * k1m, T + a * k1t)
            a = 0.75 * h
            k3m, k3t, k3u = rates(t + a, m + a * k2m, T + a * k2t)
            m1 = m + h * (2.0 * k1m + 3.0 * k2m + 4.0 * k3m) / 9.0
            T1 = T + h * (2.0 * k1t + 3.0 * k2t + 4.0 * k3t) / 9.0
            if m1 <= 0.0 or T1 <= 0.0:
                h *= 0.2
                continue
            k4m, k4t, k4u = rates(t + h, m1, T1)
            em = h * (-5.0 * k1m / 72.0 + k2m / 12.0 + k3m / 9.0 - k4m / 8.0)
            et = h * (-5.0 * k1t / 72.0 + k2t / 12.0 + k3t / 9.0 - k4t / 8.0)
            err = abs(em) / (_RTOL_M * m1)
            e2 = abs(et) / _ATOL_T
            if e2 > err:
                err = e2
            if err < 1.0e-6:
                hn = 5.0 * h
            else:
                f = 0.9 / err ** (1.0 / 3.0)
                hn = h * (5.0 if f > 5.0 else 0.2 if f < 0.2 else f)
            if err <= 1.0 or h < 1.0e-9:
                used += h * (2.0 * k1u + 3.0 * k2u + 4.0 * k3u) / 9.0
                t = t1 if last else t + h
                m = m1
                T = T1
                k1m = k4m
                k1t = k4t
                k1u = k4u
                self._m = m
                self._T = T
                self._h = hn
                if self._after_step():
                    # the piston moved or the relief valve changed: the state
                    # jumped, so the last stage is no longer the next first
                    self._set_paths()  # resets self._h if a path opened or closed
                    m = self._m
                    T = self._T
                    hn = self._h
                    k1m, k1t, k1u = rates(t, m, T)
            h = hn
        self.gas_used = used


class Isostatic(_GasHolder):
    """A sealed chamber of gas around a pouch cell; its pressure is the cell's."""

    kind = "isostatic"

    def __init__(self, plant, ch, cfg, rng):
        fs = cfg["sensor"]["range_mpa"] * 1.0e6
        _GasHolder.__init__(self, plant, ch, cfg, rng, fs, cfg["volume_l"] * 1.0e-3)

    @property
    def pressure(self):
        """True gauge pressure, Pa."""
        return self.gas_pressure

    @property
    def force(self):
        return 0.0

    def _measurand(self):
        return self.gas_pressure

    def _chunk(self, t0, t1, s0, c0, s1, c1):
        self._gas_chunk(t0, t1, s0, c0, s1, c1)
        self._t = t1
        self._to = self._plant._oven_k + self._ostep + self._oamp * s1


class _Stack:
    """The cell stack between plates: stiffness, creep (a standard linear
    solid: in a rigid frame the force relaxes by relax_pct with time constant
    relax_tau_s), thermal expansion and breathing, all as a displacement
    `d` (m) added to what the frame imposes."""

    def __init__(self, cfg, oven_k, w):
        self.ks = cfg["stiffness_n_per_mm"] * 1000.0
        r = cfg["relax_pct"] / 100.0
        self.r = r
        self.alpha = r / (1.0 - r)
        self.tau_r = cfg["relax_tau_s"]
        self.tau_c = self.tau_r * (1.0 + self.alpha)
        self.kth = cfg["thermal_n_per_k"]
        self.tau_t = cfg["stack_tau_s"]
        self.wt = w * self.tau_t
        self.fb = cfg["breathing_n"]
        self.wb = _TWO_PI / cfg["breathing_period_s"]
        self.area = cfg["area_mm2"] * 1.0e-6
        self.temp = oven_k
        self.t_ref = oven_k
        self.creep = 0.0
        self.src = 0.0  # thermal + breathing, m
        self.d = 0.0
        self._eh = -1.0

    def advance(self, t1, h, base, a, s0, c0, s1, c1, frame, force):
        """Over one step to t1 in an oven at base + a sin(w t). frame:
        compression (m) a locked (bolted) frame imposes, or None when a
        piston sets the force; creep then follows the present force."""
        if h != self._eh:
            self._eh = h
            self._e_t = math.exp(-h / self.tau_t) if self.tau_t else 0.0
            self._e_r = math.exp(-h / self.tau_r)
            self._e_c = math.exp(-h / self.tau_c)
        if self.tau_t:
            wt = self.wt
            k = a / (1.0 + wt * wt)
            self.temp = _follow(self.temp, self._e_t, base, k, wt, s0, c0, s1, c1)
        else:
            self.temp = base + a * s1
        fb = self.fb * math.sin(self.wb * t1) if self.fb else 0.0
        self.src = (self.kth * (self.temp - self.t_ref) + fb) / self.ks
        if frame is None:
            target = self.alpha * force / self.ks
            self.creep = target + (self.creep - target) * self._e_c
        else:
            # locked frame: the creep's own feedback is solved exactly
            target = self.r * (frame + self.src)
            self.creep = target + (self.creep - target) * self._e_r
        self.d = self.src - self.creep


class Uniaxial(_GasHolder):
    """A single-acting pneumatic cylinder pressing the stack: the load cell
    reads the stack force. Seal friction makes the piston stick until the gas
    force differs from the stack force by more than the friction; the gas in
    the cylinder is a soft spring as the piston moves."""

    kind = "uniaxial"

    def __init__(self, plant, ch, cfg, rng):
        fs = cfg["sensor"]["capacity_n"]
        self._A = math.pi * (cfg["bore_mm"] * 1.0e-3) ** 2 / 4.0
        self._vd = cfg["dead_volume_l"] * 1.0e-3
        self._ymin = -cfg["retract_mm"] * 1.0e-3
        self._y = self._ymin
        _GasHolder.__init__(self, plant, ch, cfg, rng, fs, self._vd)
        self._mech = True
        self._fret = cfg["return_spring_n"]
        self._fn = cfg["friction_n"]
        self._fr = cfg["friction_pct"] / 100.0
        self.stack = _Stack(cfg, plant._oven_k, plant._w)
        self._F = 0.0
        self._peak = 0.0
        self._settle()

    @property
    def force(self):
        """True force on the stack (and the load cell), N."""
        return self._F

    @property
    def pressure(self):
        """True stack pressure, Pa: force / electrode area."""
        return self._F / self.stack.area

    @property
    def piston_mm(self):
        """Piston travel from first contact with the stack, mm (negative: gap)."""
        return self._y * 1000.0

    def _measurand(self):
        return self._F

    def _after_step(self):
        moved = self._settle()
        return self._check_relief() or moved

    def _settle(self):
        """Move the piston to where gas, friction and stack balance; True if it moved."""
        gas = self._gas
        A = self._A
        ks = self.stack.ks
        d = self.stack.d
        y = self._y
        V = self._V
        P = self._m * gas.R * self._T / V
        pa = self._pa
        fret = self._fret
        fn = self._fn
        fr = self._fr
        pg = P - pa
        G = pg * A - fret
        fs = ks * (y + d)
        if fs < 0.0:
            fs = 0.0
        ff = fn + fr * (pg * A if pg > 0.0 else 0.0)
        if G - fs > ff:
            sgn = -1.0
        elif fs - G > ff and y > self._ymin:
            sgn = 1.0
        else:
            self._set_force(fs)
            return False
        g = gas.g
        vd = self._vd - A * self._ymin

        def hfun(yy):
            vv = vd + A * yy
            pp = P * (V / vv) ** g
            pgg = (pp - pa) * A
            fss = ks * (yy + d)
            dfs = ks
            if fss < 0.0:
                fss = 0.0
                dfs = 0.0
            dp = -g * pp * A / vv * A
            if pgg > 0.0:
                val = pgg - fret - fss + sgn * (fn + fr * pgg)
                der = dp * (1.0 + sgn * fr) - dfs
            else:
                val = pgg - fret - fss + sgn * fn
                der = dp - dfs
            return val, der

        if sgn < 0.0:
            lo = y
            yc = y if y > -d else -d
            hc = hfun(yc)[0]
            hi = yc + (hc if hc > 0.0 else 0.0) / ks + 1.0e-12
        else:
            hi = y
            lo = self._ymin
            if hfun(lo)[0] < 0.0:
                self._move(lo, P, V)
                return True
        # safeguarded Newton on a monotone (decreasing) function
        x = 0.5 * (lo + hi)
        i = 0
        while i < 60:
            i += 1
            v, dv = hfun(x)
            if v > 0.0:
                lo = x
            else:
                hi = x
            xn = x - v / dv if dv < 0.0 else lo - 1.0
            if xn <= lo or xn >= hi:
                xn = 0.5 * (lo + hi)
            if abs(xn - x) < 1.0e-13:
                x = xn
                break
            x = xn
        self._move(x, P, V)
        return True

    def _move(self, y, P, V):
        V1 = self._vd + self._A * (y - self._ymin)
        # the piston moves slowly next to the gas's sound speed: adiabatic
        self._T *= (V / V1) ** (self._gas.g - 1.0)
        self._V = V1
        self._y = y
        f = self.stack.ks * (y + self.stack.d)
        self._set_force(f if f > 0.0 else 0.0)

    def _set_force(self, f):
        self._F = f
        if f > self._peak:
            self._peak = f
            self.sensor.overload(f)

    def _chunk(self, t0, t1, s0, c0, s1, c1):
        base = self._plant._oven_k + self._ostep
        a = self._oamp
        # the stack's slow drifts move once per chunk; the gas steps settle
        # the piston against them
        self.stack.advance(t1, t1 - t0, base, a, s0, c0, s1, c1, None, self._F)
        self._gas_chunk(t0, t1, s0, c0, s1, c1)
        self._t = t1
        self._to = base + a * s1


class Monitor(Holder):
    """A bolted stack: the preload set by hand relaxes, the cell breathes, the
    bolts and the stack expand differently with temperature. No valves."""

    kind = "monitor"

    def __init__(self, plant, ch, cfg, rng):
        Holder.__init__(self, plant, ch, cfg, rng, cfg["sensor"]["capacity_n"])
        self.stack = _Stack(cfg, plant._oven_k, plant._w)
        self._frame = cfg["preload_n"] / self.stack.ks
        self._F = cfg["preload_n"]
        self._peak = 0.0
        self._update_force()

    @property
    def force(self):
        return self._F

    @property
    def pressure(self):
        return self._F / self.stack.area

    @property
    def gas_pressure(self):
        return 0.0

    @property
    def gas_temp(self):
        return self.stack.temp

    gas_used = 0.0
    fill_open = False
    vent_open = False

    def _measurand(self):
        return self._F

    def _update_force(self):
        f = self.stack.ks * (self._frame + self.stack.d)
        self._F = f if f > 0.0 else 0.0
        if self._F > self._peak:
            self._peak = self._F
            self.sensor.overload(self._F)

    def _chunk(self, t0, t1, s0, c0, s1, c1):
        base = self._plant._oven_k + self._ostep
        a = self._oamp
        self.stack.advance(t1, t1 - t0, base, a, s0, c0, s1, c1, self._frame, self._F)
        self._update_force()
        self._t = t1
        self._to = base + a * s1


_CLASSES = {"isostatic": Isostatic, "uniaxial": Uniaxial, "monitor": Monitor}

# After a channel's _TRUTH_COLUMNS, for a holder with a regulator only.
_REGULATOR_COLUMNS = (
    "reg_command_v",
    "reg_target_pa",
    "reg_out_pa",
    "reg_valve",
    "reg_monitor_v",
)

_TRUTH_COLUMNS = (
    "pressure_pa",
    "gas_pa",
    "gas_temp_k",
    "force_n",
    "signal",
    "fill",
    "vent",
    "fill_cmd",
    "vent_cmd",
    "oven_temp_k",
    "supply_v",
    "gas_used_kg",
    "faults",
)


class Plant:
    """Every holder of the rig, stepped together in virtual time."""

    def __init__(self, params=None):
        cfg = check_params(params)
        p = cfg["plant"]
        self.params = cfg
        self.t = 0.0
        self.seed = p["seed"]
        self.atm_pa = p["atm_pa"]
        self._oven_k = p["oven_c"] + T0C
        self._swing = p["oven_swing_k"]
        self._w = _TWO_PI / p["oven_period_s"]
        self._s = 0.0  # sin and cos of the oven's phase at self.t
        self._c = 1.0
        chunk = p["oven_period_s"] / _CHUNKS_PER_PERIOD
        if chunk > _MAX_CHUNK_S:
            chunk = _MAX_CHUNK_S
        self._holders = {}
        events = []
        for ch in sorted(cfg["channel"]):
            c = cfg["channel"][ch]
            rng = Rng((self.seed * 0x9E3779B1 + ch) & _MASK)
            self._holders[ch] = _CLASSES[c["kind"]](self, ch, c, rng)
            if "breathing_period_s" in c:
                b = c["breathing_period_s"] / _CHUNKS_PER_PERIOD
                if b < chunk:
                    chunk = b
            for f in c["fault"]:
                value = None if f["clear"] else f["value"]
                events.append((f["at_s"], ch, f["kind"], value))
                if f["duration_s"] is not None:
                    events.append((f["at_s"] + f["duration_s"], ch, f["kind"], None))
        self.channels = sorted(self._holders)
        self._list = [self._holders[ch] for ch in self.channels]
        self._max_chunk = chunk
        # stable: entries at the same time apply in the order written
        order = list(range(len(events)))
        order.sort(key=lambda i: (events[i][0], i))
        self._events = [events[i] for i in order]
        self._ev = 0
        self._fire_events()

    def _oven_at(self, t, step, amp):
        return self._oven_k + step + amp * math.sin(self._w * t)

    def holder(self, ch):
        h = self._holders.get(ch) if type(ch) is not bool and isinstance(ch, int) else None
        if h is None:
            raise ValueError("unknown channel %r: this plant has channels %s" % (ch, self.channels))
        return h

    def inject(self, ch, fault, value=None):
        """Inject `fault` on channel `ch` now; value None clears it."""
        h = self.holder(ch)
        where = "channel %d" % ch
        if value is None or value is False:
            _check_fault_name(h.kind, fault, where)
            _check_regulator_fitted(h.regulator is not None, fault, where)
            h._set_fault(fault, None)
            return
        value = check_fault(h.kind, fault, value, where)
        _check_regulator_fitted(h.regulator is not None, fault, where)
        h._set_fault(fault, value)

    def clear(self, ch, fault):
        self.inject(ch, fault, None)

    def _fire_events(self):
        ev = self._events
        while self._ev < len(ev) and ev[self._ev][0] <= self.t:
            t, ch, fault, value = ev[self._ev]
            self._ev += 1
            self._holders[ch]._set_fault(fault, value)

    def advance(self, dt):
        """Advance every holder dt seconds with the present valve states."""
        tp = type(dt)
        if (tp is not float and tp is not int) or not 0.0 <= dt < _INF:
            raise ValueError("advance: dt = %r: expected a finite number of seconds >= 0" % (dt,))
        self._run_to(self.t + dt)

    def advance_to(self, t_s):
        """Advance to absolute time t_s (s), without summing rounding errors
        of many small steps: a virtual ms clock can pass ms / 1000.0."""
        tp = type(t_s)
        if (tp is not float and tp is not int) or not self.t <= t_s < _INF:
            raise ValueError(
                "advance_to: t_s = %r: expected a finite time >= p.t = %r s" % (t_s, self.t)
            )
        self._run_to(float(t_s))

    def _run_to(self, t_end):
        t = self.t
        holders = self._list
        ev = self._events
        while t < t_end:
            t1 = t + self._max_chunk
            if t1 > t_end:
                t1 = t_end
            if self._ev < len(ev) and ev[self._ev][0] < t1:
                t1 = ev[self._ev][0]
            s0 = self._s
            c0 = self._c
            wt = self._w * t1
            s1 = math.sin(wt)
            c1 = math.cos(wt)
            for h in holders:
                h._chunk(t, t1, s0, c0, s1, c1)
            self._s = s1
            self._c = c1
            self.t = t = t1
            if self._ev < len(ev):
                self._fire_events()

    def truth_header(self):
        """Column names of truth_row(), PLANT.md says what each holds."""
        out = ["t_s"]
        for ch in self.channels:
            for c in _TRUTH_COLUMNS:
                out.append("ch%d_%s" % (ch, c))
            if self._holders[ch].regulator is not None:
                for c in _REGULATOR_COLUMNS:
                    out.append("ch%d_%s" % (ch, c))
        return out

    def truth_row(self):
        """What really happened at p.t (does not draw noise)."""
        out = [self.t]
        for ch in self.channels:
            h = self._holders[ch]
            names = sorted(h._faults)
            fl = []
            for n in names:
                v = h._faults[n]
                fl.append(n if v is True else "%s=%r" % (n, v))
            out.append(h.pressure)
            out.append(h.gas_pressure)
            out.append(h.gas_temp)
            out.append(h.force)
            out.append(h.sensor.last)
            out.append(1 if h.fill_open else 0)
            out.append(1 if h.vent_open else 0)
            out.append(1 if h.fill else 0)
            out.append(1 if h.vent else 0)
            out.append(h.oven_temp)
            out.append(h.supply_v)
            out.append(h.gas_used)
            out.append("|".join(fl))
            reg = h.regulator
            if reg is not None:
                out.append(reg.command_v)
                out.append(reg.target())
                out.append(reg.out)
                out.append(1 if reg.valve else 0)
                out.append(reg.last_monitor)
        return out
