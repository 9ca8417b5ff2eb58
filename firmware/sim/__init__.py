# Simulator-only modules: the sim HAL port, the plant model and simulated buses.
# Not flashed to a board. CPython imports the plant as isopress.sim.plant.
