# CRC-16/IBM-3740 (CCITT-FALSE), table-driven: the frame check of the wire format.
# A 16-bit CRC keeps every intermediate value a small int on 32-bit boards, so
# checking a frame never allocates; CRC-32 would box values above 2**30.
from array import array

import wire


def _make_table():
    t = array("H", bytes(512))
    for i in range(256):
        c = i << 8
        for _ in range(8):
            c = ((c << 1) ^ wire.CRC_POLY) if c & 0x8000 else c << 1
        t[i] = c & 0xFFFF
    return t


_TABLE = _make_table()


def crc16(buf, start, end, crc=wire.CRC_INIT):
    # Indexes rather than slices: a slice would copy the frame.
    t = _TABLE
    i = start
    while i < end:
        crc = ((crc << 8) & 0xFFFF) ^ t[((crc >> 8) ^ buf[i]) & 0xFF]
        i += 1
    return crc
