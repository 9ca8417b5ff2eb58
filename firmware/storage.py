# Checked files on flash: JSON behind a CRC-32 line, written to a temporary
# file and renamed over the old one, so a reset in the middle of a write or a
# corrupted sector is detected at boot instead of trusted.
#
#     storage.write(path, obj) -> True, or False if the flash refused
#     obj, status = storage.read(path)     # status: OK, MISSING, CRC, UNREADABLE
#
# Cold path only (boot, commands): it allocates.
import json
import os
from binascii import crc32

# Same numbers as the CONFIG_BAD event's code in PROTOCOL.md.
OK = 0
MISSING = 1
CRC = 2
UNREADABLE = 3


def _crc(body):
    return "%08x" % (crc32(body.encode()) & 0xFFFFFFFF)


def write(path, obj):
    body = json.dumps(obj)
    tmp = path + ".tmp"
    try:
        with open(tmp, "w") as f:
            f.write(_crc(body))
            f.write("\n")
            f.write(body)
        try:
            os.rename(tmp, path)
        except OSError:
            # FAT cannot rename over an existing file; read() recovers the
            # temporary file if a reset lands between these two calls.
            os.remove(path)
            os.rename(tmp, path)
    except OSError:
        return False
    return True


def _load(path):
    with open(path) as f:
        text = f.read()
    nl = text.find("\n")
    if nl != 8:
        return None, UNREADABLE
    body = text[9:]
    if _crc(body) != text[:8]:
        return None, CRC
    try:
        return json.loads(body), OK
    except ValueError:
        return None, UNREADABLE


def read(path):
    try:
        return _load(path)
    except OSError:
        pass
    # Only the temporary file exists when a write on FAT was cut between
    # remove and rename; it was complete (the rename comes after the close).
    try:
        obj, status = _load(path + ".tmp")
    except OSError:
        return None, MISSING
    if status == OK:
        try:
            os.rename(path + ".tmp", path)
        except OSError:
            pass
    return obj, status


def remove(path):
    for p in (path, path + ".tmp"):
        try:
            os.remove(p)
        except OSError:
            pass
