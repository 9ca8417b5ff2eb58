# The device's millisecond clock and 32-bit wire counters, kept as small ints.
#
# The boards' ticks wrap at 2**30 ms (12.4 days) because small ints are 31-bit
# there, but the wire's `time`, `ticks`, `sample_seq` and `event_seq` are u32
# and must run on smoothly past 2**30. A u32 held as one int would be boxed (an
# allocation) above 2**30, so it is held as two: `hi`, bits 30-31 (0..3), and
# `lo`, bits 0-29. pack_u32 writes the low 30 bits with pack_into and ORs the
# top two into the most significant byte, so no big int ever exists.
#
#     clk = Clock(hal.ticks_ms, hal.ticks_diff)
#     clk.update(now)            # every tick: counts the 2**30 wraps
#     clk.pack(buf, off, now)    # `now` as the u32 wire time
#     seq = U32(); seq.add(1); seq.pack(buf, off)
import struct

MASK30 = 0x3FFFFFFF  # also the largest small int on a 32-bit board


def pack_u32(buf, off, hi, lo):
    struct.pack_into("<I", buf, off, lo)
    buf[off + 3] |= hi << 6


class U32:
    # A wrapping 32-bit counter. Steps are at most MASK30; every intermediate
    # value stays a small int.
    def __init__(self, value=0):
        self.hi = 0
        self.lo = 0
        self.set_int(value)

    def set_int(self, value):
        # Cold path (a command's field, a test): value may be a big int.
        self.hi = (value >> 30) & 3
        self.lo = value & MASK30

    def value(self):
        # Cold path: the counter as one int, which may be big.
        return (self.hi << 30) | self.lo

    def set(self, other):
        self.hi = other.hi
        self.lo = other.lo

    def add(self, n):
        room = MASK30 - self.lo
        if n > room:
            self.lo = n - room - 1
            self.hi = (self.hi + 1) & 3
        else:
            self.lo += n

    def sub(self, n):
        if n > self.lo:
            self.lo = MASK30 - (n - self.lo) + 1
            self.hi = (self.hi - 1) & 3
        else:
            self.lo -= n

    def since(self, other):
        # (self - other) mod 2**32 when that is below 2**30, else -1: how far
        # `other` lies behind, for distances a ring buffer can hold.
        dl = self.lo - other.lo
        dh = (self.hi - other.hi) & 3
        if dl < 0:
            dl = dl + MASK30 + 1  # left to right: never above MASK30
            dh = (dh - 1) & 3
        if dh:
            return -1
        return dl

    def pack(self, buf, off):
        pack_u32(buf, off, self.hi, self.lo)


class Clock:
    # Extends the wrapping ticks to the u32 wire time. update() must see the
    # clock at least every 2**29 ms (6.2 days); the control tick does far more.
    # The ticks functions are injected so a test can start just below a wrap.
    def __init__(self, ticks_ms, ticks_diff):
        self.ticks_ms = ticks_ms
        self.ticks_diff = ticks_diff
        self.wraps = 0  # bits 30-31 of the wire time
        self.last = ticks_ms()  # latest ticks seen, as the ticks source gives them

    def update(self, now):
        # Idempotent, and a `now` older than the latest is ignored, so every
        # caller that holds a `now` may call it.
        last = self.last
        if self.ticks_diff(now, last) > 0:
            # Raw comparison on purpose: time moved forward, so a smaller low
            # part means the 30-bit counter passed zero. Masked so a ticks
            # source of a longer period (the unix port's) still counts right.
            if now & MASK30 < last & MASK30:
                self.wraps = (self.wraps + 1) & 3
            self.last = now

    def now(self):
        t = self.ticks_ms()
        self.update(t)
        return t

    def hi_of(self, now):
        # Bits 30-31 of `now`'s wire time; `now` may lie a little before the
        # latest ticks seen, even on the far side of a wrap.
        self.update(now)
        hi = self.wraps
        last = self.last
        if now & MASK30 > last & MASK30 and self.ticks_diff(now, last) < 0:
            hi = (hi - 1) & 3
        return hi

    def pack(self, buf, off, now):
        pack_u32(buf, off, self.hi_of(now), now & MASK30)

    def wire_time(self, now):
        # Cold path (status, tests): the u32 wire time as one int.
        return (self.hi_of(now) << 30) | (now & MASK30)
