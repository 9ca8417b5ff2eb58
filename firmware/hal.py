# The hardware for this platform: the names in the table "HAL interface" in
# README.md, from port_rp2, port_esp32, or port_sim (firmware/sim, found on
# MICROPYPATH; never flashed) on anything else.
import sys

if sys.platform == "rp2":
    from port_rp2 import *  # noqa: F403
elif sys.platform == "esp32":
    from port_esp32 import *  # noqa: F403
else:
    from port_sim import *  # noqa: F403
