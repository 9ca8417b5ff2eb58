# Consistent Overhead Byte Stuffing: removes every 0x00 from a frame so 0x00 can
# delimit frames on the serial stream and a receiver resynchronises at the next
# one. Both functions work on caller-owned buffers and allocate nothing.


def encode(src, n, dst, start):
    # Writes COBS(src[:n]) and a 0x00 delimiter into dst from index start;
    # returns the index after the delimiter. Needs n + n // 254 + 2 bytes.
    code_at = start
    o = start + 1
    code = 1
    i = 0
    while i < n:
        b = src[i]
        i += 1
        if b:
            dst[o] = b
            o += 1
            code += 1
            if code < 0xFF:
                continue
        dst[code_at] = code
        code_at = o
        o += 1
        code = 1
    dst[code_at] = code
    dst[o] = 0
    return o + 1


def decode(buf, n):
    # Decodes buf[:n] (no delimiter) in place; returns the decoded length, or -1
    # when a code byte is 0 or points past the end (a torn or garbled frame).
    i = 0
    o = 0
    while i < n:
        code = buf[i]
        if code == 0:
            return -1
        end = i + code
        if end > n:
            return -1
        i += 1
        while i < end:
            buf[o] = buf[i]
            o += 1
            i += 1
        if code != 0xFF and i < n:
            buf[o] = 0
            o += 1
    return o
