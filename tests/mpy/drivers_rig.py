# A fake board for the driver and sensor tests, under MicroPython: a virtual
# clock with wrapping ticks (as the HAL's), and the simulated buses of
# firmware/sim/simbus.py wired as a board profile says. The rig is the `hal`
# that sensor.build() takes.
from sim import simbus

_PERIOD = 1 << 30
_MASK = _PERIOD - 1
_HALF = _PERIOD >> 1


class Clock:
    # Virtual milliseconds `t` (never wrapping: the models' time) and the
    # HAL's wrapping ticks, which cross 2**30 `wrap_in` ms after the start.
    # With `auto`, every ticks_ms() call advances time by that much, so a
    # driver's blocking wait runs out its time-out.
    def __init__(self, wrap_in=250, auto=0):
        self.t = 0
        self.auto = auto
        self._offset = _PERIOD - wrap_in

    def now_ms(self):
        return self.t

    def ticks_ms(self):
        self.t += self.auto
        return (self.t + self._offset) & _MASK

    def ticks_diff(self, a, b):
        return ((a - b + _HALF) & _MASK) - _HALF

    def ticks_add(self, t, d):
        return (t + d) & _MASK


class Rig(Clock):
    # hal for sensor.build: I2C(bus_cfg), Pin(n), ADC(pin), ticks_*.
    PORT = "test"

    def __init__(self, profile, wrap_in=250, ads_noise=1.0, hx_noise=20):
        Clock.__init__(self, wrap_in)
        self.buses = {}
        self.ads = {}  # adc name -> ADS1115Model
        self.volts = {}  # adc name -> [V at AIN0..3]
        self.hx = {}  # channel -> HX711Model
        self.mv = {}  # channel -> [mV/V, or None for a missing chip]
        self.pins = {}
        self.mcu = {}  # pin -> SimADC
        self.mcu_volts = {}  # pin -> [V]
        self.hal_calls = 0  # I2C, Pin and ADC objects handed out
        now = self.now_ms
        # Built from whatever the profile says, even a broken one: the tests
        # of build()'s errors need a rig around a bad profile.
        for b in profile.get("i2c", []):
            self.buses[b.get("id")] = simbus.SimI2C(now, b.get("freq_hz", 100000))
        for a in profile.get("adcs", []):
            vs = [0.0, 0.0, 0.0, 0.0]
            self.volts[a.get("name")] = vs
            kind = a.get("type") if a.get("type") in ("ads1115", "ads1015") else "ads1115"
            m = simbus.ADS1115Model(now, self._volts_of(vs), kind, noise_lsb=ads_noise)
            self.ads[a.get("name")] = m
            if a.get("bus") in self.buses and isinstance(a.get("address"), int):
                self.buses[a["bus"]].attach(a["address"] & 0x7F, m)
        for c in profile.get("channels", []):
            s = c.get("sensor", {})
            if s.get("type") == "hx711":
                box = [0.0]
                self.mv[c.get("channel")] = box
                rate = s.get("rate_hz") if s.get("rate_hz") in (10, 80) else 10
                m = simbus.HX711Model(
                    now, self._mv_of(box), rate, noise_counts=hx_noise, seed=c.get("channel", 1)
                )
                self.hx[c.get("channel")] = m
                self.pins[s.get("dout")] = m.dout
                self.pins[s.get("sck")] = m.sck
            elif s.get("type") == "mcu_adc":
                box = [0.0]
                self.mcu_volts[s.get("pin")] = box
                self.mcu[s.get("pin")] = simbus.SimADC(now, self._mv_of(box), s.get("vref_v", 3.3))

    def _volts_of(self, vs):
        def volts(i):
            return vs[i]

        return volts

    def _mv_of(self, box):
        def value():
            return box[0]

        return value

    def I2C(self, bus_cfg):
        self.hal_calls += 1
        return self.buses[bus_cfg["id"]]

    def Pin(self, n):
        self.hal_calls += 1
        return self.pins[n]

    def ADC(self, pin):
        self.hal_calls += 1
        return self.mcu[pin]

    def sync(self):
        # Due conversions happen here, outside any measured poll().
        for m in self.ads.values():
            m.sync()
        for m in self.hx.values():
            m.sync()
        for m in self.mcu.values():
            m.sync()
