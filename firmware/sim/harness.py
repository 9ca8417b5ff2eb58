# A simulated board in one MicroPython process: the unchanged firmware
# (device.py on the sim HAL) against the plant model, in virtual time. The
# simulator (`isopress sim`), the firmware tests and the benchmarks drive it.
#
#     sim = Sim(profile, plant_params, fs="/tmp/board/", link=None, speed=0)
#     sim.run(60.0)                     # 60 simulated seconds of control ticks
#     sim.plant.inject(1, "supply_lost")
#     sim.dev.by_number[1].pressure
#
# A simulated watchdog reset reboots the device the way a board reboots:
# valves closed, config and state read back from the "flash" directory, the
# plant (the holder) carries on.
import gc

import plant as plant_mod
import port_sim

WDT_RESET = 3  # machine.WDT_RESET on the boards


def provision(fs, profile):
    # What `isopress flash` does for a new board: write the default config,
    # so the board boots ready instead of isolated with CONFIG_BAD.
    import config

    cfg, status = config.load(fs, profile)
    if status == config.MISSING:
        cfg.save()


class Sim:
    def __init__(
        self, profile, plant_params=None, fs="", link=None, speed=0, plant=None, fresh=True
    ):
        if fresh:
            provision(fs, profile)
        self.profile = profile
        self.plant = plant if plant is not None else plant_mod.Plant(plant_params)
        self.link = link if link is not None else port_sim.MemoryLink()
        self.fs = fs
        self.speed = speed
        self.resets = 0
        self._ticks = 0
        port_sim.setup(profile, self.plant, fs, self.link, speed)
        self._boot(0)

    def _boot(self, cause):
        import device

        self.dev = None
        gc.collect()
        self.dev = device.Device(self.profile, self.fs, self.link)
        self._next = port_sim.ticks_ms()

    def reboot(self, cause=WDT_RESET):
        # A reset: every output back to its reset state, the device built anew.
        self.resets += 1
        port_sim.setup(
            self.profile, self.plant, self.fs, self.link, self.speed, cause, keep_time=True
        )
        self._boot(cause)

    def now_s(self):
        return port_sim.now_ms() / 1000.0

    def run(self, seconds, each=None):
        # Run control ticks for `seconds` of virtual time; each(sim) after
        # every tick if given (recording; it costs time).
        end = port_sim.now_ms() + int(seconds * 1000)
        while port_sim.now_ms() < end:
            self.step(each)

    def step(self, each=None):
        dev = self.dev
        self._ticks += 1
        if not self._ticks & 255:
            # The plant allocates (floats); collecting often keeps the heap
            # small. Left to itself the unix port's collector was seen to
            # fail a 16 KB allocation with most of an 8 MB heap free.
            gc.collect()
        try:
            dev.tick(port_sim.ticks_ms())
            if each is not None:
                each(self)
            self._next = port_sim.ticks_add(self._next, dev.tick_ms)
            port_sim.idle_until(self._next)
        except port_sim.WatchdogReset:
            self.reboot(WDT_RESET)
