# Runs under MicroPython: answers codec requests from pytest, one JSON line in,
# one JSON line out, so the firmware codec is tested in the real interpreter
# without paying an interpreter start per hypothesis example.
from binascii import hexlify, unhexlify

import frame
import jsonline
import wire

ERRORS = dict(wire.FRAME_ERRORS)


def hx(b):
    return hexlify(b).decode()


def fields_of(buf):
    msg, seq, flags, plen = frame.header(buf)
    layout = frame.LAYOUTS[msg]
    out = [0] * layout.max_values
    n_items = frame.unpack(buf, out)
    head = {}
    k = 0
    for name in layout.head_names:
        v = out[k]
        head[name] = hx(v) if isinstance(v, bytes) else v
        k += 1
    if layout.item_names:
        items = []
        i = 0
        while i < n_items:
            item = {}
            for name in layout.item_names:
                item[name] = out[k]
                k += 1
            items.append(item)
            i += 1
        head["items"] = items
    return {"message": layout.name, "seq": seq, "flags": flags, "fields": head}


def stream(data):
    d = frame.Deframer()
    frames = []
    for b in data:
        n = d.feed(b)
        if n > 0:
            f = fields_of(d.buf)
            f["raw_hex"] = hx(bytes(d.buf[:n]))
            frames.append(f)
    errors = {}
    for code, name in wire.FRAME_ERRORS:
        if d.errors[code]:
            errors[name] = d.errors[code]
    return {"frames": frames, "errors": errors}


def encode(req):
    layout = frame.BY_NAME[req["message"]]
    fields = req["fields"]
    values = []
    for name, code in zip(layout.head_names, layout.head_codes):
        v = fields[name]
        values.append(unhexlify(v) if code[-1] == "s" else v)
    items = fields.get("items", [])
    for item in items:
        for name in layout.item_names:
            values.append(item[name])
    fr = frame.Framer()
    n = fr.put(layout, values, len(items), req.get("flags", 0), req.get("seq", 0))
    return {"hex": hx(bytes(fr.wire[:n]))}


def receive_alloc(data, rounds):
    # Heap bytes the receiver allocates taking in `rounds` copies of data a
    # byte at a time, as the firmware's UART reader does.
    import gc

    d = frame.Deframer()
    n = len(data)
    got = 0
    gc.collect()
    gc.disable()
    before = gc.mem_alloc()
    r = 0
    while r < rounds:
        i = 0
        while i < n:
            if d.feed(data[i]) > 0:
                got += 1
            i += 1
        r += 1
    used = gc.mem_alloc() - before
    gc.enable()
    return {"bytes": used, "frames": got}


def crc(req):
    from crc16 import crc16

    data = unhexlify(req["hex"])
    return {"crc": crc16(data, 0, len(data))}


jsonline.serve(
    {
        "decode": lambda req: stream(unhexlify(req["hex"])),
        "encode": encode,
        "receive_alloc": lambda req: receive_alloc(unhexlify(req["hex"]), req["rounds"]),
        "crc": crc,
    }
)
