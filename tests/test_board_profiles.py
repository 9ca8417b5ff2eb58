"""Board profiles (hardware/boards/*.json) against what each board can really do.

The firmware reads a profile at boot and trusts it, so a wrong pin here is a
valve that opens while the board resets, a sensor that is never read, or a
board that will not boot. `check(profile)` returns a list of problems, each
starting with a rule code in brackets; the negative tests below break a good
profile once per rule and assert that the checker names that rule, so no rule
can pass silently.

Pin capability tables are transcribed from the datasheets (RP2040 and
Raspberry Pi Pico datasheets; ESP32 datasheet and errata, ESP32-WROOM-32
datasheet, ESP32-DevKitC user guide). CPython and json only.

    python tests/test_board_profiles.py tables   # print the WIRING.md pin tables
"""

import copy
import inspect
import json
import math
import pathlib
import re
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
BOARDS = ROOT / "hardware" / "boards"
WIRING = ROOT / "hardware" / "WIRING.md"
PROFILES = ("pico", "esp32_devkitc", "sim")

PORT_ARCH = {"rp2": "armv6m", "esp32": "xtensawin", "sim": None}
KINDS = ("isostatic", "uniaxial", "monitor")
SIGNALS = ("ratiometric_0.5_4.5v", "current_4_20ma")
ADS1115_FSR_V = (6.144, 4.096, 2.048, 1.024, 0.512, 0.256)
ADS1115_SPS = (8, 16, 32, 64, 128, 250, 475, 860)
ADS1115_ADDRESSES = range(0x48, 0x4C)  # ADDR pin to GND, VDD, SDA, SCL
# A transmitter that saturates high reaches ~21-24 mA (the NAMUR NE43 failure
# band starts at 21 mA); that must still read as "over range", not clip.
LOOP_MAX_A = 0.024
# A 5 V sensor supply may be 5 % high, and a failed ratiometric transducer can
# put its whole supply on the signal line.
SUPPLY_TOLERANCE = 1.05
TOP_LEVEL_KEYS = (
    "schema", "board", "mcu", "port", "arch", "usb", "i2c", "adcs", "channels",
    "valve_active_high", "fault_out_pin", "fault_out_active_level", "trigger_in_pin",
    "trigger_in_active_level", "trigger_in_pull", "status_led_pin",
    "status_led_active_level", "analog_out",
)  # fmt: skip


# ---------------------------------------------------------------------------
# Pin capability tables
# ---------------------------------------------------------------------------
def _pin(**kw):
    """One pin's facts. reset: state from reset until the firmware claims the
    pin ('pull_down', 'pull_up', 'float'). quiet: nothing drives or toggles it
    while the chip boots. strap: level it must have at reset for a normal boot
    and for flashing. only: roles allowed despite `reserved`. adc: the ADC
    input it is, or None."""
    p = dict(
        label="", out=True, pull_up=True, pwm=True, reset="float", quiet=True,
        strap=None, reserved="", only=(), i2c=None, pwm_slice=None, dip_erratum=False,
        adc=None,
    )  # fmt: skip
    p.update(kw)
    return p


def _rp2040_pico():
    # Pico header: GP0-GP22 and GP26-GP28, with their 40-pin header positions.
    # Every RP2040 pad resets with input enabled, output disabled and its
    # pull-down on; no GPIO is a boot strap (BOOTSEL sits on the QSPI CS pin).
    phys = {
        0: 1, 1: 2, 2: 4, 3: 5, 4: 6, 5: 7, 6: 9, 7: 10, 8: 11, 9: 12, 10: 14,
        11: 15, 12: 16, 13: 17, 14: 19, 15: 20, 16: 21, 17: 22, 18: 24, 19: 25,
        20: 26, 21: 27, 22: 29, 26: 31, 27: 32, 28: 34,
    }  # fmt: skip
    pins = {}
    for n in range(30):
        # I2C function select: pin pair n//2 alternates I2C0/I2C1, even = SDA.
        i2c = {(n // 2) % 2: "sda" if n % 2 == 0 else "scl"}
        # PWM: slice (n//2) % 8, output A on even pins, B on odd. Two pins on
        # the same slice and output carry one and the same waveform.
        pwm_slice = ((n // 2) % 8, "A" if n % 2 == 0 else "B")
        label = f"GP{n} (pin {phys[n]})" if n in phys else f"GP{n}"
        adc = f"ADC{n - 26}" if n >= 26 else None  # GP26-GP29 are ADC0-ADC3
        pins[n] = _pin(label=label, reset="pull_down", i2c=i2c, pwm_slice=pwm_slice, adc=adc)
    internal = {
        23: "drives the Pico's SMPS power-save pin",
        24: "senses VBUS on the Pico board",
        25: "drives the Pico's on-board LED",
        29: "measures VSYS/3 on the Pico board",
    }
    for n, why in internal.items():
        pins[n].update(reserved=f"not on the Pico header: GP{n} {why}", label=f"GP{n} (on-board)")
    pins[25]["only"] = ("status_led",)  # the on-board LED is the status LED
    return pins


def _esp32_wroom_devkitc():
    # ESP32 GPIO 0-39 minus 20, 24 and 28-31 (not on the chip); 37 and 38 are
    # not brought out by the WROOM-32 module. Reset pulls from the datasheet's
    # IO_MUX table.
    absent = (20, 24, 28, 29, 30, 31, 37, 38)
    pins = {n: _pin(label=f"IO{n}") for n in range(40) if n not in absent}
    pins[36]["label"], pins[39]["label"] = "SVP (IO36)", "SVN (IO39)"
    for n in (6, 7, 8, 9, 10, 11):
        pins[n]["reserved"] = f"IO{n} is wired to the module's SPI flash"
    for n in (1, 3):
        pins[n]["reserved"] = f"IO{n} is UART0 to the USB bridge (REPL and host link)"
    for n in (34, 35, 36, 39):  # input-only: no output driver, no pulls
        pins[n].update(out=False, pull_up=False, pwm=False)
    for n in (36, 39):
        # Erratum: IO36/IO39 see ~80 ns low pulses when the SAR ADCs, the Hall
        # sensor or Wi-Fi power up. Only a debounced input may live there.
        pins[n]["dip_erratum"] = True
    # SAR ADC1 (IO32-IO39) and ADC2, which the Wi-Fi driver takes over.
    for n in (32, 33, 34, 35, 36, 39):
        pins[n]["adc"] = "ADC1"
    for n in (0, 2, 4, 12, 13, 14, 15, 25, 26, 27):
        pins[n]["adc"] = "ADC2"
    for n in (0, 5, 15):
        pins[n]["reset"] = "pull_up"
    for n in (2, 4, 12):
        pins[n]["reset"] = "pull_down"
    # Strapping pins: 0 high = boot from flash; 2 low or floating for serial
    # download; 5 high (SDIO timing); 12 low = 3.3 V flash supply (high selects
    # 1.8 V and a WROOM-32 does not boot); 15 high (boot log on).
    for n, level in ((0, "high"), (2, "low"), (5, "high"), (12, "low"), (15, "high")):
        pins[n]["strap"] = level
    # Driven or toggled while the chip boots: UART0 boot log, and the JTAG and
    # SDIO lines the ROM touches.
    for n in (0, 1, 3, 5, 14, 15):
        pins[n]["quiet"] = False
    return pins


def _sim():
    # No silicon: pins are numbers the sim HAL routes to the plant model.
    # Only the board-independent rules apply.
    return {n: _pin(label=str(n), adc="sim") for n in range(64)}


PIN_TABLES = {"pico": _rp2040_pico(), "esp32_devkitc": _esp32_wroom_devkitc(), "sim": _sim()}

# What each use of a pin needs. load: what the external circuit does to the pin
# while the MCU resets ('pull_down': gate pull-down, LED or RC filter to ground;
# 'pull_up': I2C or optocoupler pull-up, or a chip driving the pin high).
ROLES = {
    "valve": dict(out=True, load="pull_down", fail_safe=True),
    "fault_out": dict(out=True, load="pull_down", fail_safe=True),
    "analog_out": dict(out=True, load="pull_down", pwm=True, quiet=True, no_strap=True),
    "hx711_sck": dict(out=True, load="none"),
    "hx711_dout": dict(load="pull_up"),  # the HX711 holds DOUT high while busy
    "i2c_sda": dict(out=True, load="pull_up"),  # open drain still needs a driver
    "i2c_scl": dict(out=True, load="pull_up"),
    "trigger_in": dict(load="pull_up", no_strap=True, debounced=True),
    "status_led": dict(out=True, load="pull_down"),
    # A proportional regulator: its command like the cycler's analog output,
    # its monitor on an ADC (an analog reading, so the IO36/IO39 dips do not
    # matter), its isolation valve like any valve.
    "reg_command": dict(out=True, load="pull_down", pwm=True, quiet=True, no_strap=True),
    "reg_monitor": dict(load="none", adc=True, no_strap=True, debounced=True),
}


# ---------------------------------------------------------------------------
# The checker
# ---------------------------------------------------------------------------
def load(name):
    with open(BOARDS / f"{name}.json") as f:
        return json.load(f)


def _num(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _int(x):
    return isinstance(x, int) and not isinstance(x, bool)


def _positive(obj, key):
    return _num(obj.get(key)) and obj[key] > 0


def pin_uses(profile):
    """[(pin, role, where)] for every pin the profile claims."""
    uses = []

    def add(pin, role, where):
        if pin is not None:
            uses.append((pin, role, where))

    for bus in profile.get("i2c") or ():
        add(bus.get("sda"), "i2c_sda", f"i2c{bus.get('id')} sda")
        add(bus.get("scl"), "i2c_scl", f"i2c{bus.get('id')} scl")
    add(profile.get("fault_out_pin"), "fault_out", "fault_out_pin")
    add(profile.get("trigger_in_pin"), "trigger_in", "trigger_in_pin")
    add(profile.get("status_led_pin"), "status_led", "status_led_pin")
    for ch in profile.get("channels") or ():
        tag = f"ch{ch.get('channel')}"
        add(ch.get("fill_pin"), "valve", f"{tag} fill_pin")
        add(ch.get("vent_pin"), "valve", f"{tag} vent_pin")
        add(ch.get("analog_out_pin"), "analog_out", f"{tag} analog_out_pin")
        reg = ch.get("proportional")
        if isinstance(reg, dict):
            add(reg.get("command_pin"), "reg_command", f"{tag} proportional command_pin")
            add(reg.get("monitor_pin"), "reg_monitor", f"{tag} proportional monitor_pin")
            add(reg.get("isolate_pin"), "valve", f"{tag} proportional isolate_pin")
        s = ch.get("sensor") or {}
        if s.get("type") == "hx711":
            add(s.get("dout"), "hx711_dout", f"{tag} hx711 dout")
            add(s.get("sck"), "hx711_sck", f"{tag} hx711 sck")
    return uses


def _check_top(p, problems):
    for key in TOP_LEVEL_KEYS:
        if key not in p:
            problems.append(f"[schema] missing top-level key {key!r}")
    if p.get("schema") != 1:
        problems.append(f"[schema] schema must be 1, got {p.get('schema')!r}")
    port, usb = p.get("port"), p.get("usb")
    if port not in PORT_ARCH:
        problems.append(f"[port] unknown port {port!r} (rp2, esp32, sim)")
    elif p.get("arch") != PORT_ARCH[port]:
        problems.append(
            f"[port] port {port} needs mpy-cross arch {PORT_ARCH[port]!r}, got {p.get('arch')!r}"
        )
    if port == "sim":
        if usb is not None:
            problems.append("[port] the sim port has no USB ids: usb must be null")
    elif not (
        isinstance(usb, dict)
        and all(isinstance(usb.get(k), int) and 0 < usb[k] <= 0xFFFF for k in ("vid", "pid"))
    ):
        problems.append(f"[port] usb needs integer vid and pid in 1..0xFFFF, got {usb!r}")
    # The fail-safe rests on polarity: low-side MOSFET plus gate pull-down
    # means a resetting or unpowered board leaves every valve closed and, with
    # the fault output active low, tells the cycler something is wrong.
    if p.get("valve_active_high") is not True:
        problems.append(
            "[polarity] valve_active_high must be true (low-side N-MOSFET with gate "
            "pull-down: reset = valve closed)"
        )
    if p.get("fault_out_active_level") != 0:
        problems.append(
            "[polarity] fault_out_active_level must be 0 so that reset, power loss and "
            "a broken wire all read as a fault"
        )
    for key in ("trigger_in_active_level", "status_led_active_level"):
        if p.get(key) not in (0, 1):
            problems.append(f"[polarity] {key} must be 0 or 1")
    if p.get("trigger_in_pull") not in ("internal", "external"):
        problems.append("[schema] trigger_in_pull must be 'internal' or 'external'")
    ao = p.get("analog_out") or {}
    for key in ("pwm_freq_hz", "pwm_v_high", "amp_gain"):
        if not _positive(ao, key):
            problems.append(f"[analog-scale] analog_out.{key} must be a positive number")


def _check_pin(p, pin, role, where, table, problems):
    info, need = table[pin], ROLES[role]
    name = f"{where} {info['label']}"
    if info["reserved"] and role not in info["only"]:
        problems.append(f"[pin-reserved] {name}: {info['reserved']}")
        return
    if need.get("out") and not info["out"]:
        problems.append(f"[pin-output] {name}: input-only pin, no output driver")
    if need.get("pwm") and not info["pwm"]:
        problems.append(f"[pin-pwm] {name}: no PWM on this pin")
    if need.get("adc") and not info["adc"]:
        problems.append(f"[pin-adc] {name}: not an ADC input")
    elif need.get("adc") and info["adc"] == "ADC2":
        problems.append(
            f"[pin-adc] {name}: on ADC2, which the Wi-Fi driver takes over; use ADC1 (IO32-IO39)"
        )
    if role == "trigger_in" and p.get("trigger_in_pull") == "internal" and not info["pull_up"]:
        problems.append(
            f"[pin-pull] {name}: no internal pull-up; set trigger_in_pull 'external' "
            "and fit the resistor"
        )
    if need.get("fail_safe"):
        why = (
            ("pulled up at reset" if info["reset"] == "pull_up" else "")
            or ("toggles during boot" if not info["quiet"] else "")
            or ("strapping pin" if info["strap"] else "")
        )
        if why:
            problems.append(
                f"[valve-reset] {name}: {why}; a valve or the fault output here would "
                "move while the board resets"
            )
    elif need.get("quiet") and not info["quiet"]:
        problems.append(
            f"[valve-reset] {name}: toggles during boot; the cycler would log a false pressure"
        )
    strap, load_ = info["strap"], need["load"]
    if strap and (
        need.get("no_strap")
        or (strap == "low" and load_ == "pull_up")
        or (strap == "high" and load_ == "pull_down")
    ):
        problems.append(
            f"[strap] {name}: strapping pin must be {strap} at reset; {role} here would "
            "change how the board boots"
        )
    if info["dip_erratum"] and not need.get("debounced"):
        problems.append(
            f"[pin-erratum] {name}: spurious low pulses (ESP32 IO36/IO39 erratum); "
            "only a debounced input may use it"
        )


def _check_pins(p, problems):
    table = PIN_TABLES.get(p.get("board"))
    if table is None:
        problems.append(f"[schema] no pin table for board {p.get('board')!r}")
        return
    seen = {}
    for pin, role, where in pin_uses(p):
        if not _int(pin) or pin not in table:
            problems.append(f"[pin-exists] {where}: pin {pin!r} does not exist on {p['board']}")
            continue
        if pin in seen:
            problems.append(
                f"[pin-duplicate] {where} {table[pin]['label']}: already used by {seen[pin]}"
            )
        seen[pin] = where
        _check_pin(p, pin, role, where, table, problems)
    # RP2040: two PWM outputs on the same slice output are one signal.
    owner = {}
    for pin, role, where in pin_uses(p):
        info = table.get(pin) if _int(pin) else None
        if role in ("analog_out", "reg_command") and info and info["pwm_slice"] is not None:
            first = owner.setdefault(info["pwm_slice"], where)
            if first != where:
                number, output = info["pwm_slice"]
                problems.append(
                    f"[pwm-slice] {where} {info['label']}: "
                    f"PWM slice {number}{output} is already {first}'s output"
                )


def _check_i2c(p, problems):
    table = PIN_TABLES.get(p.get("board"), {})
    ids = set()
    for bus in p.get("i2c") or ():
        bid = bus.get("id")
        if bid in ids:
            problems.append(f"[i2c] bus id {bid!r} defined twice")
        ids.add(bid)
        if bid not in (0, 1):
            problems.append(f"[i2c] bus id {bid!r}: the MCU has I2C0 and I2C1")
        if not (_positive(bus, "freq_hz") and bus["freq_hz"] <= 400_000):
            problems.append(
                f"[i2c] bus {bid!r} freq_hz {bus.get('freq_hz')!r}: the ADS1115's fast mode "
                "tops out at 400000 Hz"
            )
        for line in ("sda", "scl"):
            info = table.get(bus.get(line))
            if info and info["i2c"] is not None and info["i2c"].get(bid) != line:
                can = ", ".join(f"I2C{b} {f.upper()}" for b, f in info["i2c"].items())
                problems.append(f"[i2c] bus {bid!r} {line} on {info['label']}: that pin is {can}")
    names, addrs = set(), set()
    for adc in p.get("adcs") or ():
        name, key = adc.get("name"), (adc.get("bus"), adc.get("address"))
        if name in names:
            problems.append(f"[adc] ADC name {name!r} used twice")
        names.add(name)
        if adc.get("type") != "ads1115":
            problems.append(f"[adc] {name}: type {adc.get('type')!r}, only ads1115 is supported")
        if adc.get("bus") not in ids:
            problems.append(f"[adc] {name}: bus {adc.get('bus')!r} is not in i2c")
        if adc.get("address") not in ADS1115_ADDRESSES:
            problems.append(f"[adc] {name}: address {adc.get('address')!r} outside 0x48-0x4B")
        if key in addrs:
            problems.append(f"[adc] {name}: bus {key[0]!r} address {key[1]!r} already taken")
        addrs.add(key)
        if not (_num(adc.get("vdd_v")) and 2.0 <= adc["vdd_v"] <= 5.5):
            problems.append(f"[adc] {name}: vdd_v {adc.get('vdd_v')!r} outside 2.0-5.5 V")


def _check_ads_sensor(s, tag, adcs, used, problems):
    adc = adcs.get(s.get("adc"))
    if adc is None:
        problems.append(f"[adc-input] {tag}: ADC {s.get('adc')!r} is not in adcs")
        return
    inputs = [("input", s.get("input"))]
    if s.get("signal") == "ratiometric_0.5_4.5v":
        inputs.append(("supply_input", s.get("supply_input")))
    for field, inp in inputs:
        if inp not in (0, 1, 2, 3):
            problems.append(f"[adc-input] {tag}: {field} {inp!r}, ADS1115 inputs are 0-3")
            continue
        prev = used.get((adc["name"], inp))
        # Ratiometric channels may share one supply reference; a signal input
        # is shared with nothing.
        if prev and (field == "input" or prev[1] == "input"):
            problems.append(
                f"[adc-input] {tag}: {field} {adc['name']} AIN{inp} already used by {prev[0]}"
            )
        used.setdefault((adc["name"], inp), (tag, field))
    fsr = s.get("pga_fsr_v")
    if fsr not in ADS1115_FSR_V:
        problems.append(f"[adc-range] {tag}: pga_fsr_v {fsr!r} is not one of {ADS1115_FSR_V}")
        return
    if s.get("data_rate_sps") not in ADS1115_SPS:
        problems.append(f"[adc-range] {tag}: data_rate_sps {s.get('data_rate_sps')!r} invalid")
    if not _positive(s, "range_mpa"):
        problems.append(f"[adc-range] {tag}: range_mpa must be positive")
    sig = s.get("signal")
    if sig == "ratiometric_0.5_4.5v":
        missing = [k for k in ("supply_v", "divider_ratio", "supply_divider_ratio")
                   if not _positive(s, k)]  # fmt: skip
        if missing:
            problems.append(f"[adc-range] {tag}: {missing} must be positive numbers")
            return
        ratio = max(s["divider_ratio"], s["supply_divider_ratio"])
        worst = s["supply_v"] * SUPPLY_TOLERANCE * ratio
        full = 0.9 * s["supply_v"] * s["divider_ratio"]
    elif sig == "current_4_20ma":
        if not _positive(s, "shunt_ohm"):
            problems.append(f"[adc-range] {tag}: shunt_ohm must be a positive number")
            return
        worst = LOOP_MAX_A * s["shunt_ohm"]
        full = 0.020 * s["shunt_ohm"]
    else:
        problems.append(f"[adc-range] {tag}: signal {sig!r}, expected one of {SIGNALS}")
        return
    # Worst case must stay measurable: inside the PGA range and not above the
    # ADS1115's supply (inputs clamp at VDD + 0.3 V; readings above VDD are void).
    ceiling = min(fsr, adc["vdd_v"])
    if worst > ceiling:
        problems.append(
            f"[adc-range] {tag}: worst-case input {worst:.2f} V exceeds {ceiling:.3f} V "
            f"(PGA range {fsr} V, ADS1115 VDD {adc['vdd_v']} V)"
        )
    if full < 0.25 * fsr:
        problems.append(
            f"[adc-range] {tag}: full-scale signal {full:.2f} V uses under a quarter of the "
            f"{fsr} V PGA range; pick a smaller range"
        )


def _check_hx711(s, tag, problems):
    if s.get("gain") not in (128, 64):
        problems.append(f"[hx711] {tag}: gain {s.get('gain')!r}, channel A offers 128 or 64")
        return
    if s.get("rate_hz") not in (10, 80):
        problems.append(f"[hx711] {tag}: rate_hz {s.get('rate_hz')!r}, RATE selects 10 or 80")
    for key in ("capacity_n", "sensitivity_mv_per_v", "safe_overload_pct"):
        if not _positive(s, key):
            problems.append(f"[hx711] {tag}: {key} must be a positive number")
            return
    # Ratiometric, so the excitation cancels: the input range is +-0.5/gain V
    # per V of excitation. The cell must still be readable at its safe
    # overload, or an overload would look like a plausible full-scale value.
    span, limit = s["sensitivity_mv_per_v"] * s["safe_overload_pct"] / 100, 500 / s["gain"]
    if span > limit:
        problems.append(
            f"[hx711] {tag}: {span:.2f} mV/V at safe overload exceeds the HX711's "
            f"{limit:.2f} mV/V input range at gain {s['gain']}"
        )


def _check_limits(ch, tag, problems):
    kind, lim, s = ch.get("kind"), ch.get("limits") or {}, ch.get("sensor") or {}
    if kind == "isostatic":
        if not all(_positive(lim, k) for k in ("trip_mpa", "relief_mpa", "rated_mpa")):
            problems.append(f"[limits] {tag}: limits needs trip_mpa, relief_mpa, rated_mpa")
            return
        trip, relief, rated = lim["trip_mpa"], lim["relief_mpa"], lim["rated_mpa"]
        # The firmware trips before the relief valve lifts, and the relief
        # lifts before the vessel's rating.
        if not trip < relief < rated:
            problems.append(
                f"[limits] {tag}: need trip_mpa < relief_mpa < rated_mpa, got "
                f"{trip} / {relief} / {rated}"
            )
        if _num(s.get("range_mpa")) and s["range_mpa"] < relief:
            problems.append(
                f"[limits] {tag}: transducer range {s['range_mpa']} MPa is below the relief "
                f"setting {relief} MPa; an over-pressure would read as full scale"
            )
        return
    cap = s.get("capacity_n")
    if not (_positive(lim, "trip_n") and _num(cap) and lim["trip_n"] < cap):
        problems.append(
            f"[limits] {tag}: need 0 < limits.trip_n < sensor capacity_n, got "
            f"{lim.get('trip_n')!r} / {cap!r}"
        )
    if kind != "uniaxial":
        return
    a = ch.get("actuator")
    if a is None:
        problems.append(
            f"[limits] {tag}: an actuated uniaxial channel needs an actuator block "
            "(use kind 'monitor' for bolts and springs)"
        )
        return
    if not all(_positive(a, k) for k in ("bore_mm", "supply_mpa", "relief_mpa", "rated_mpa")):
        problems.append(
            f"[limits] {tag}: actuator needs bore_mm, supply_mpa, relief_mpa, rated_mpa"
        )
        return
    if not a["supply_mpa"] < a["relief_mpa"] <= a["rated_mpa"]:
        problems.append(f"[limits] {tag}: actuator needs supply_mpa < relief_mpa <= rated_mpa")
    # The hardest the actuator can push (at its relief pressure) must not
    # break the load cell.
    f_max = a["relief_mpa"] * math.pi / 4 * a["bore_mm"] ** 2
    if _num(cap) and _positive(s, "safe_overload_pct"):
        safe = cap * s["safe_overload_pct"] / 100
        if f_max > safe:
            problems.append(
                f"[limits] {tag}: actuator force at relief {f_max:.0f} N exceeds the load "
                f"cell's safe overload {safe:.0f} N"
            )


def _check_analog_out(ch, tag, ao, problems):
    if ch.get("analog_out_pin") is None:
        return
    sc = ch.get("analog_out_scale") or {}
    if not (_positive(sc, "full_scale_mpa") and _positive(sc, "full_scale_v")):
        problems.append(
            f"[analog-scale] {tag}: analog_out_scale needs positive full_scale_mpa and full_scale_v"
        )
    elif _positive(ao, "pwm_v_high") and _positive(ao, "amp_gain"):
        reach = ao["pwm_v_high"] * ao["amp_gain"]
        if sc["full_scale_v"] > reach:
            problems.append(
                f"[analog-scale] {tag}: full_scale_v {sc['full_scale_v']} V is beyond the "
                f"{reach:.2f} V the PWM and buffer can reach"
            )


PROPORTIONAL_NUMBERS = (
    "range_mpa", "command_full_v", "amp_gain", "monitor_full_v", "monitor_divider_ratio",
    "adc_vref_v", "response_ms", "accuracy_pct_fs", "monitor_tolerance_pct_fs",
    "monitor_persist_ms",
)  # fmt: skip
MONITOR_OVERRANGE = 1.05  # a monitor output swings this far past full scale
TRIM_MAX_PCT_FS = 2.0  # firmware/proportional.py: the trim's reach


def _check_proportional(ch, tag, ao, problems):
    reg = ch.get("proportional")
    if reg is None:
        return
    if not isinstance(reg, dict):
        problems.append(f"[proportional] {tag}: proportional must be an object")
        return
    if ch.get("kind") != "isostatic":
        problems.append(
            f"[proportional] {tag}: a proportional regulator drives an isostatic channel only"
        )
    missing = [k for k in PROPORTIONAL_NUMBERS if not _positive(reg, k)]
    missing += [k for k in ("command_pin", "monitor_pin", "isolate_pin") if not _int(reg.get(k))]
    if missing:
        problems.append(f"[proportional] {tag}: needs positive {missing}")
        return
    if _positive(ao, "pwm_v_high") and ao["pwm_v_high"] * reg["amp_gain"] < reg["command_full_v"]:
        problems.append(
            f"[proportional] {tag}: command_full_v {reg['command_full_v']} V is beyond the "
            f"{ao['pwm_v_high'] * reg['amp_gain']:.2f} V that pwm_v_high x amp_gain reach"
        )
    at_pin = reg["monitor_full_v"] * reg["monitor_divider_ratio"]
    if at_pin * MONITOR_OVERRANGE > reg["adc_vref_v"]:
        problems.append(
            f"[proportional] {tag}: the monitor at {MONITOR_OVERRANGE:.0%} of full scale puts "
            f"{at_pin * MONITOR_OVERRANGE:.2f} V on the ADC pin, above adc_vref_v "
            f"{reg['adc_vref_v']} V; lower monitor_divider_ratio"
        )
    elif at_pin < 0.5 * reg["adc_vref_v"]:
        problems.append(
            f"[proportional] {tag}: the monitor's full scale uses under half the ADC's range; "
            "raise monitor_divider_ratio"
        )
    if reg["adc_vref_v"] > 3.6:
        problems.append(f"[proportional] {tag}: adc_vref_v above the MCU's 3.3 V supply")
    lim = ch.get("limits") or {}
    if _positive(lim, "trip_mpa") and reg["range_mpa"] < lim["trip_mpa"]:
        problems.append(
            f"[proportional] {tag}: range_mpa {reg['range_mpa']} cannot reach the trip "
            f"{lim['trip_mpa']} MPa, so neither every setpoint nor the trip's reset level"
        )
    if _positive(lim, "rated_mpa") and reg["range_mpa"] > lim["rated_mpa"]:
        problems.append(
            f"[proportional] {tag}: range_mpa {reg['range_mpa']} is above the chamber's rating "
            f"{lim['rated_mpa']} MPa: a regulator failed to full scale would go there"
        )
    if reg["accuracy_pct_fs"] > TRIM_MAX_PCT_FS:
        problems.append(
            f"[proportional] {tag}: accuracy_pct_fs {reg['accuracy_pct_fs']} is beyond the "
            f"firmware's trim ({TRIM_MAX_PCT_FS} % FS)"
        )
    if reg["monitor_tolerance_pct_fs"] <= reg["accuracy_pct_fs"]:
        problems.append(
            f"[proportional] {tag}: monitor_tolerance_pct_fs must exceed accuracy_pct_fs, or a "
            "regulator within its own specification raises the alarm"
        )
    if reg["monitor_persist_ms"] < 2 * reg["response_ms"]:
        problems.append(
            f"[proportional] {tag}: monitor_persist_ms below twice response_ms alarms on "
            "a step the regulator is still following"
        )


def _check_channels(p, problems):
    chans = p.get("channels") or []
    numbers = [c.get("channel") for c in chans]
    if sorted(n for n in numbers if _int(n)) != list(range(1, len(chans) + 1)):
        problems.append(
            f"[channel-number] channels must be numbered 1..{len(chans)} once each, got {numbers!r}"
        )
    adcs = {a.get("name"): a for a in p.get("adcs") or ()}
    used = {}
    for ch in chans:
        tag, kind, s = f"ch{ch.get('channel')}", ch.get("kind"), ch.get("sensor") or {}
        if kind not in KINDS:
            problems.append(f"[channel-kind] {tag}: kind {kind!r}, expected one of {KINDS}")
            continue
        valves = [k for k in ("fill_pin", "vent_pin") if ch.get(k) is not None]
        if kind == "monitor" and (valves or "actuator" in ch):
            problems.append(
                f"[monitor-valves] {tag}: a monitor channel has no valves or actuator, "
                f"found {valves or ['actuator']}"
            )
        if kind != "monitor" and len(valves) != 2:
            problems.append(f"[valves-missing] {tag}: {kind} channel needs fill_pin and vent_pin")
        want = "ads1115" if kind == "isostatic" else "hx711"
        if s.get("type") != want:
            problems.append(
                f"[channel-kind] {tag}: {kind} channel needs sensor type {want}, "
                f"got {s.get('type')!r}"
            )
        elif want == "ads1115":
            _check_ads_sensor(s, tag, adcs, used, problems)
        else:
            _check_hx711(s, tag, problems)
        _check_limits(ch, tag, problems)
        _check_analog_out(ch, tag, p.get("analog_out") or {}, problems)
        _check_proportional(ch, tag, p.get("analog_out") or {}, problems)


def check(profile):
    """Every problem with `profile`, as '[rule] where: why' strings."""
    problems = []
    _check_top(profile, problems)
    _check_pins(profile, problems)
    _check_i2c(profile, problems)
    _check_channels(profile, problems)
    return problems


# ---------------------------------------------------------------------------
# WIRING.md pin tables, generated from the profiles
# ---------------------------------------------------------------------------
def _role_text(profile, role, where):
    if role == "analog_out":
        return f"out, PWM {profile['analog_out']['pwm_freq_hz']} Hz into 2-pole RC filter"
    if role == "reg_command":
        return (
            f"out, PWM {profile['analog_out']['pwm_freq_hz']} Hz into RC filter and amplifier: "
            "0-10 V regulator command"
        )
    if role == "reg_monitor":
        return "in, ADC: regulator monitor 0-10 V through a divider"
    if role in ("i2c_sda", "i2c_scl"):
        return f"I2C{where[3]} {role[4:].upper()}, pull-up to 3.3 V"
    if role == "trigger_in":
        text = "in, low = trigger (PC817 collector, 10 kΩ to 3.3 V)"
        if profile["trigger_in_pull"] == "internal":
            text += ", internal pull-up on too"
        return text
    return {
        "valve": "out, high = valve open (MOSFET gate)",
        "fault_out": "out, low = FAULT (relay de-energised)",
        "hx711_sck": "out, HX711 PD_SCK",
        "hx711_dout": "in, HX711 DOUT",
        "status_led": "out, high = LED on",
    }[role]


def pin_table(profile):
    """Markdown table of every pin the profile uses, by pin number."""
    table = PIN_TABLES[profile["board"]]
    rows = [
        "| GPIO | Board label | Signal | Direction / level |",
        "| ---: | --- | --- | --- |",
    ]
    for pin, role, where in sorted(pin_uses(profile)):
        label, text = table[pin]["label"], _role_text(profile, role, where)
        rows.append(f"| {pin} | {label} | {where} | {text} |")
    return "\n".join(rows)


def wiring_table(board):
    text = WIRING.read_text(encoding="utf-8")
    m = re.search(f"<!-- pins:{board} begin -->\n(.*?)\n<!-- pins:{board} end -->", text, re.S)
    return m.group(1).strip() if m else None


# ---------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", PROFILES)
def test_profile_passes_every_rule(name):
    profile = load(name)
    assert profile["board"] == name
    assert check(profile) == []


@pytest.mark.parametrize("name", PROFILES)
def test_profile_has_the_reference_layout(name):
    channels = load(name)["channels"]
    assert [c["kind"] for c in channels] == ["isostatic", "isostatic", "uniaxial", "monitor"]
    assert [c["sensor"]["signal"] for c in channels[:2]] == list(SIGNALS)


def test_sim_mirrors_pico():
    pico, sim = load("pico"), load("sim")
    for key in ("board", "description", "mcu", "port", "arch", "usb"):
        pico.pop(key)
        sim.pop(key)
    assert sim == pico, "sim.json must keep the Pico's channel layout and pins"


@pytest.mark.parametrize("board", ["pico", "esp32_devkitc"])
def test_wiring_md_pin_table_matches_profile(board):
    expected, found = pin_table(load(board)), wiring_table(board)
    assert found is not None, f"WIRING.md lacks the <!-- pins:{board} begin/end --> block"
    assert found == expected, (
        f"WIRING.md pin table for {board} is stale; regenerate with "
        f"`python tests/test_board_profiles.py tables`:\n{expected}"
    )


def _set(path, value):
    """Mutation: profile[path...] = value; None deletes the key."""

    def mutate(p):
        obj = p
        for k in path[:-1]:
            obj = obj[k]
        if value is None:
            obj.pop(path[-1], None)
        else:
            obj[path[-1]] = value

    return mutate


def _second_adc_same_address(p):
    p["adcs"].append(dict(p["adcs"][0], name="adc1"))


REG = ["channels", 0, "proportional"]


def _reg(key, value):
    return _set([*REG, key], value)


def _regulator_on_esp32(monitor_pin):
    # The DevKitC has no free pins for one: borrow two cycler outputs' pins.
    def mutate(p):
        block = copy.deepcopy(load("pico")["channels"][0]["proportional"])
        for key, ch in (("command_pin", 3), ("isolate_pin", 1)):
            block[key] = p["channels"][ch].pop("analog_out_pin")
            del p["channels"][ch]["analog_out_scale"]
        block["monitor_pin"] = monitor_pin
        p["channels"][0]["proportional"] = block

    return mutate


def _move_regulator_to_channel_3(p):
    p["channels"][2]["proportional"] = p["channels"][0].pop("proportional")


# (profile, mutation, rule the checker must report)
BROKEN = [
    ("pico", _set(["channels", 0, "fill_pin"], 30), "pin-exists"),
    ("esp32_devkitc", _set(["channels", 0, "fill_pin"], 20), "pin-exists"),
    ("esp32_devkitc", _set(["channels", 0, "fill_pin"], 37), "pin-exists"),
    ("pico", _set(["channels", 0, "fill_pin"], 24), "pin-reserved"),
    ("pico", _set(["channels", 0, "fill_pin"], 25), "pin-reserved"),
    ("esp32_devkitc", _set(["channels", 0, "vent_pin"], 9), "pin-reserved"),
    ("esp32_devkitc", _set(["status_led_pin"], 1), "pin-reserved"),
    ("esp32_devkitc", _set(["channels", 0, "fill_pin"], 34), "pin-output"),
    ("esp32_devkitc", _set(["i2c", 0, "sda"], 36), "pin-output"),
    ("esp32_devkitc", _set(["trigger_in_pull"], "internal"), "pin-pull"),
    ("esp32_devkitc", _set(["channels", 0, "analog_out_pin"], 35), "pin-pwm"),
    ("esp32_devkitc", _set(["channels", 0, "fill_pin"], 14), "valve-reset"),
    ("esp32_devkitc", _set(["channels", 0, "fill_pin"], 5), "valve-reset"),
    ("esp32_devkitc", _set(["channels", 0, "vent_pin"], 12), "valve-reset"),
    ("esp32_devkitc", _set(["fault_out_pin"], 15), "valve-reset"),
    ("esp32_devkitc", _set(["channels", 1, "analog_out_pin"], 14), "valve-reset"),
    ("esp32_devkitc", _set(["i2c", 0, "scl"], 12), "strap"),
    ("esp32_devkitc", _set(["trigger_in_pin"], 5), "strap"),
    ("esp32_devkitc", _set(["channels", 2, "sensor", "dout"], 2), "strap"),
    ("esp32_devkitc", _set(["status_led_pin"], 0), "strap"),
    ("esp32_devkitc", _set(["channels", 3, "sensor", "dout"], 36), "pin-erratum"),
    ("pico", _set(["channels", 1, "vent_pin"], 6), "pin-duplicate"),
    ("esp32_devkitc", _set(["status_led_pin"], 21), "pin-duplicate"),
    ("pico", _set(["channels", 1, "analog_out_pin"], 0), "pwm-slice"),  # GP0 = GP16's 0A
    ("pico", _set(["i2c", 0, "sda"], 5), "i2c"),
    ("pico", _set(["i2c", 0, "id"], 1), "i2c"),
    ("pico", _set(["i2c", 0, "freq_hz"], 1_000_000), "i2c"),
    ("pico", _set(["adcs", 0, "address"], 0x4C), "adc"),
    ("pico", _set(["adcs", 0, "bus"], 1), "adc"),
    ("pico", _set(["adcs", 0, "type"], "ads1015"), "adc"),
    ("pico", _set(["adcs", 0, "vdd_v"], 1.8), "adc"),
    ("pico", _second_adc_same_address, "adc"),
    ("pico", _set(["channels", 1, "sensor", "input"], 0), "adc-input"),
    ("pico", _set(["channels", 1, "sensor", "input"], 3), "adc-input"),
    ("pico", _set(["channels", 0, "sensor", "input"], 4), "adc-input"),
    ("pico", _set(["channels", 0, "sensor", "adc"], "adc9"), "adc-input"),
    ("pico", _set(["channels", 1, "sensor", "shunt_ohm"], 150.0), "adc-range"),
    ("pico", _set(["channels", 1, "sensor", "shunt_ohm"], 20.0), "adc-range"),
    ("pico", _set(["channels", 1, "sensor", "pga_fsr_v"], 2.048), "adc-range"),
    ("pico", _set(["channels", 0, "sensor", "divider_ratio"], 1.0), "adc-range"),
    ("pico", _set(["channels", 0, "sensor", "pga_fsr_v"], 3.3), "adc-range"),
    ("pico", _set(["channels", 0, "sensor", "data_rate_sps"], 100), "adc-range"),
    ("pico", _set(["channels", 1, "sensor", "signal"], "voltage_0_10v"), "adc-range"),
    ("pico", _set(["channels", 2, "sensor", "gain"], 32), "hx711"),
    ("pico", _set(["channels", 2, "sensor", "rate_hz"], 20), "hx711"),
    ("pico", _set(["channels", 3, "sensor", "sensitivity_mv_per_v"], 3.0), "hx711"),
    ("pico", _set(["channels", 0, "analog_out_scale", "full_scale_v"], 5.0), "analog-scale"),
    ("pico", _set(["channels", 0, "analog_out_scale"], None), "analog-scale"),
    ("pico", _set(["analog_out", "pwm_freq_hz"], 0), "analog-scale"),
    ("pico", _set(["channels", 0, "limits", "trip_mpa"], 9.5), "limits"),
    ("pico", _set(["channels", 0, "limits", "relief_mpa"], 10.5), "limits"),
    ("pico", _set(["channels", 1, "sensor", "range_mpa"], 6.0), "limits"),
    ("pico", _set(["channels", 2, "actuator", "bore_mm"], 220.0), "limits"),
    ("pico", _set(["channels", 2, "actuator", "relief_mpa"], 0.7), "limits"),
    ("pico", _set(["channels", 2, "actuator"], None), "limits"),
    ("pico", _set(["channels", 3, "limits", "trip_n"], 25000.0), "limits"),
    ("pico", _set(["channels", 3, "fill_pin"], 26), "monitor-valves"),
    ("pico", _set(["channels", 0, "vent_pin"], None), "valves-missing"),
    ("pico", _set(["channels", 1, "channel"], 1), "channel-number"),
    ("pico", _set(["channels", 3, "channel"], 5), "channel-number"),
    ("pico", _set(["channels", 0, "kind"], "hydraulic"), "channel-kind"),
    ("pico", _set(["channels", 0, "sensor", "type"], "hx711"), "channel-kind"),
    ("pico", _set(["valve_active_high"], False), "polarity"),
    ("pico", _set(["fault_out_active_level"], 1), "polarity"),
    ("pico", _set(["trigger_in_active_level"], "low"), "polarity"),
    ("pico", _set(["arch"], "xtensawin"), "port"),
    ("pico", _set(["usb"], {"vid": 11914}), "port"),
    ("sim", _set(["usb"], {"vid": 1, "pid": 2}), "port"),
    ("pico", _set(["status_led_pin"], None), "schema"),
    ("pico", _set(["board"], "pico_w"), "schema"),
    ("pico", _reg("monitor_pin", 19), "pin-adc"),
    ("esp32_devkitc", _regulator_on_esp32(26), "pin-adc"),  # ADC2
    ("pico", _reg("command_pin", 16), "pin-duplicate"),  # ch1's cycler output
    ("pico", _reg("isolate_pin", 23), "pin-reserved"),
    ("pico", _set(["channels", 1, "analog_out_pin"], 1), "pwm-slice"),  # GP1 = GP17's 0B
    ("pico", _set(REG, "GP17"), "proportional"),
    ("pico", _move_regulator_to_channel_3, "proportional"),
    ("pico", _reg("range_mpa", None), "proportional"),
    ("pico", _reg("amp_gain", 2.0), "proportional"),  # 6.6 V cannot make 10 V
    ("pico", _reg("monitor_divider_ratio", 0.33), "proportional"),  # 3.47 V at the pin
    ("pico", _reg("monitor_divider_ratio", 0.1), "proportional"),  # 1 V of 3.3 V
    ("pico", _reg("adc_vref_v", 5.0), "proportional"),
    ("pico", _reg("range_mpa", 7.0), "proportional"),  # below the 8 MPa trip
    ("pico", _reg("range_mpa", 12.0), "proportional"),  # above the 10 MPa rating
    ("pico", _reg("accuracy_pct_fs", 2.5), "proportional"),
    ("pico", _reg("monitor_tolerance_pct_fs", 0.5), "proportional"),
    ("pico", _reg("monitor_persist_ms", 500), "proportional"),  # 2 x 300 ms
]


@pytest.mark.parametrize(
    ("name", "mutate", "rule"), BROKEN, ids=[f"{b[0]}-{b[2]}-{i}" for i, b in enumerate(BROKEN)]
)
def test_checker_names_each_broken_rule(name, mutate, rule):
    profile = copy.deepcopy(load(name))
    mutate(profile)
    problems = check(profile)
    assert any(p.startswith(f"[{rule}]") for p in problems), problems


def test_regulator_monitor_may_use_an_erratum_pin():
    # IO36/IO39's dips hit digital reads; an ADC reading is not disturbed.
    profile = copy.deepcopy(load("esp32_devkitc"))
    _regulator_on_esp32(36)(profile)
    assert check(profile) == []


def test_every_rule_has_a_negative_test():
    rules = set(re.findall(r'"\[([a-z0-9-]+)\]', inspect.getsource(sys.modules[__name__])))
    assert len(rules) > 20
    untested = rules - {b[2] for b in BROKEN}
    assert not untested, f"rules without a negative test: {sorted(untested)}"


if __name__ == "__main__":
    if sys.argv[1:] == ["tables"]:
        for b in ("pico", "esp32_devkitc"):
            print(f"<!-- pins:{b} begin -->\n{pin_table(load(b))}\n<!-- pins:{b} end -->\n")
    else:
        for b in PROFILES:
            print(b, check(load(b)) or "ok")
