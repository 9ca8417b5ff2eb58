"""`isopress bench firmware`'s heap figures: measured in fresh MicroPython
processes with the modules as `isopress flash` puts them on a board."""

from __future__ import annotations

from isopress.bench import firmware


def test_heap_after_boot_is_counted_for_files_and_romfs() -> None:
    f = firmware._heap()
    assert f["heap_after_boot_bytes"] == f["heap_modules_bytes"] + f["heap_device_bytes"]
    # The device's own state (4 channels, the replay ring among it) does not
    # depend on where the bytecode lives; the modules' share does.
    rom_device = f["heap_after_boot_romfs_bytes"] - f["heap_modules_romfs_bytes"]
    assert abs(rom_device - f["heap_device_bytes"]) <= 1024
    assert f["heap_device_bytes"] > 24576  # the default replay ring alone
    assert f["heap_modules_romfs_bytes"] < f["heap_modules_bytes"] * 0.8
    assert 0 < f["romfs_image_bytes"] < f["heap_modules_bytes"]
