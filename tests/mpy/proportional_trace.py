# One fixed scenario for the plant's proportional regulator, run by CPython
# (tests/test_proportional.py imports this file) and by MicroPython (through
# proportional_server.py), so the test can compare the two traces value by
# value: the same seed must give the same plant in both interpreters.

TICK = 0.02


def run(plant_mod, seconds=20.0):
    p = plant_mod.Plant({"plant": {"seed": 77}, "channel": {"1": {"kind": "isostatic",
                         "regulator": {}}}})  # fmt: skip
    h = p.holder(1)
    r = h.regulator
    n = int(seconds / TICK + 0.5)
    monitor = [None] * n
    rows = [None] * (n // 10)
    # (tick, what): the command, the isolation valve and every regulator fault
    lost = "regulator_supply_lost"
    events = {
        0: ("cmd", 5.0), 50: ("valve", True), 400: ("cmd", 2.0),
        600: ("fault", "regulator_monitor_open", True),
        650: ("fault", "regulator_monitor_open", None), 700: ("fault", "regulator_stuck", True),
        720: ("cmd", 3.0), 760: ("fault", "regulator_stuck", None), 800: ("fault", lost, 1.0),
        820: ("cmd", 4.0), 900: ("valve", False), 950: ("fault", lost, None),
    }  # fmt: skip
    i = 0
    while i < n:
        e = events.get(i)
        if e is not None:
            if e[0] == "cmd":
                r.command_v = e[1]
            elif e[0] == "valve":
                r.valve = e[1]
            else:
                p.inject(1, e[1], e[2])
        p.advance_to((i + 1) * TICK)
        monitor[i] = r.monitor_v()
        if i % 10 == 9:
            rows[i // 10] = p.truth_row()
        i += 1
    return {"monitor": monitor, "rows": rows, "header": p.truth_header()}
