# The replay buffer: the latest records of one stream (telemetry ticks or
# events), fixed size each, in one bytearray allocated at boot. Each record has
# the next u32 sequence number of its stream; when full, a new record overwrites
# the oldest. Records are found by age (0 = newest), which a sequence number
# turns into with age().
#
#     r = Ring(record_size, capacity)
#     r.next.pack(buf, off)     # the sequence number the next record gets
#     r.put(view)               # view: a memoryview of exactly record_size bytes
#     age = r.age(seq)          # -1 if seq is not held
#     n = r.copy_out(age, dst, dst_off)
from clock import U32


class Ring:
    def __init__(self, record_size, capacity):
        if record_size < 1 or capacity < 1:
            raise ValueError("ring needs a record size and a capacity of at least 1")
        self.size = record_size
        self.capacity = capacity
        self.buf = bytearray(record_size * capacity)
        self.head = 0  # slot the next record goes into
        self.held = 0
        self.next = U32()  # sequence number of the next record; 0 at boot

    def put(self, view):
        # Slice assignment from a memoryview made once copies without
        # allocating; a slice of the ring on the right would allocate.
        off = self.head * self.size
        self.buf[off : off + self.size] = view
        self.head += 1
        if self.head == self.capacity:
            self.head = 0
        if self.held < self.capacity:
            self.held += 1
        self.next.add(1)

    def age(self, seq):
        # How many records are newer than `seq` (a U32), or -1 if it is not
        # held: overwritten, not yet written, or never in this ring.
        a = self.next.since(seq) - 1
        if a < 0 or a >= self.held:
            return -1
        return a

    def seq_at(self, age, out):
        # Sets `out` (a U32) to the sequence number of the record `age` back.
        out.set(self.next)
        out.sub(age + 1)

    def first(self, out):
        # Oldest sequence number held; with nothing held, the next one, so
        # that first..last is empty and everything before it is gone.
        out.set(self.next)
        out.sub(self.held)

    def last(self, out):
        out.set(self.next)
        out.sub(1)

    def offset(self, age):
        slot = self.head - 1 - age
        if slot < 0:
            slot += self.capacity
        return slot * self.size

    def copy_out(self, age, dst, dst_off):
        # Copies the record `age` back into dst at dst_off; returns its size.
        # A byte loop, because a slice of the ring would allocate: replay is
        # paced, so this cost is spread out and never on the live path.
        src = self.buf
        i = self.offset(age)
        end = i + self.size
        while i < end:
            dst[dst_off] = src[i]
            i += 1
            dst_off += 1
        return self.size
