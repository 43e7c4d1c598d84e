"""Whether a baseline JPEG's scan holds every block its frame declares, read from the record alone.

A decoder that runs out of coded data before the last block does not fail: libjpeg warns ("premature
end of data segment") and decodes the blocks it lacks as zeros, a flat grey, and returns the image.
So a record whose header was made to declare 256x256 over the scan of a 128x128 image decodes to
256x256, three quarters of it grey. The scan says how many blocks it codes: walking its Huffman codes
block by block (no coefficient is computed, no pixel made) counts them, whatever decoder then runs.

Only what encoders of baseline JPEG write is walked (JPEG's sequential Huffman mode, SOF0 or SOF1, all
components in one scan, restart markers allowed); anything else is refused with its reason. Python
walks about a block a few microseconds, so a record is walked only when its decoded image gives cause
(data/compact.py `cut_short`).
"""

import functools
import struct

BLOCK = 8
SEQUENTIAL = (0xC0, 0xC1)
"""SOF markers of baseline and extended sequential Huffman JPEG."""
OTHER_FRAMES = set(range(0xC2, 0xD0)) - {0xC4, 0xC8, 0xCC}
RESTARTS = range(0xD0, 0xD8)
PEEK = 16
"""Bits looked at for one Huffman code: JPEG's longest."""


def coded_blocks(record: bytes) -> tuple[int, int]:
    """(blocks the frame declares, blocks the scan codes whole); ValueError for a record not walked here."""
    tables, frame, restart, at = {}, None, 0, 2
    if not record.startswith(b"\xff\xd8"):
        raise ValueError("not a JPEG (no start-of-image marker)")
    while True:
        marker, length = _segment(record, at)
        body = record[at + 4 : at + 2 + length]
        if marker == 0xC4:
            tables.update(_huffman_tables(body))
        elif marker in SEQUENTIAL:
            frame = _frame(body)
        elif marker in OTHER_FRAMES:
            raise ValueError(f"not a baseline JPEG (frame marker 0x{marker:02X}: progressive, lossless or arithmetic)")
        elif marker == 0xDD:
            (restart,) = struct.unpack_from(">H", body)
        elif marker == 0xDA:
            if frame is None:
                raise ValueError("a scan before its frame header")
            return _walk_scan(record, at + 2 + length, body, frame, tables, restart)
        elif marker == 0xD9:
            raise ValueError("ends before its scan")
        at += 2 + length


def _segment(record: bytes, at: int) -> tuple[int, int]:
    if at + 4 > len(record) or record[at] != 0xFF:
        raise ValueError("ends, or holds something that is not a segment, before its scan")
    return record[at + 1], struct.unpack_from(">H", record, at + 2)[0]


def _frame(body: bytes) -> dict:
    """Its size and, by component id, each component's sampling factors."""
    height, width, count = struct.unpack_from(">xHHB", body)
    components = {}
    for k in range(count):
        ident, sampling = body[6 + 3 * k], body[7 + 3 * k]
        components[ident] = (sampling >> 4, sampling & 15)
    if not (width and height and components and all(h and v for h, v in components.values())):
        raise ValueError("a frame header of no pixels or no sampling")
    return {"width": width, "height": height, "components": components}


def _huffman_tables(body: bytes) -> dict:
    """(class, id) -> the table's lookup, from a DHT segment (which may define several)."""
    tables, at = {}, 0
    while at < len(body):
        kind = body[at]
        counts = body[at + 1 : at + 17]
        symbols = body[at + 17 : at + 17 + sum(counts)]
        if len(counts) < 16 or len(symbols) < sum(counts):
            raise ValueError("a Huffman table cut short")
        tables[kind >> 4, kind & 15] = _lookup(bytes(counts), bytes(symbols))
        at += 17 + sum(counts)
    return tables


@functools.lru_cache(maxsize=64)
def _lookup(counts: bytes, symbols: bytes) -> list[tuple[int, int]]:
    """For every PEEK-bit prefix, (length, symbol) of the code it begins with ((0, 0): none). An encoder writes
    the same tables into every record, so each is built once."""
    table, code, index = [(0, 0)] * (1 << PEEK), 0, 0
    for length in range(1, PEEK + 1):
        for _ in range(counts[length - 1]):
            span = 1 << (PEEK - length)
            table[code * span : (code + 1) * span] = [(length, symbols[index])] * span
            code, index = code + 1, index + 1
        code <<= 1
    return table


def _walk_scan(record: bytes, start: int, header: bytes, frame: dict, tables: dict, restart: int) -> tuple[int, int]:
    count = header[0]
    selectors = [(header[1 + 2 * k], header[2 + 2 * k]) for k in range(count)]
    if count != len(frame["components"]) or any(ident not in frame["components"] for ident, _ in selectors):
        raise ValueError("its components come in several scans (not walked here)")
    width, height, sampling = frame["width"], frame["height"], frame["components"]
    h_max, v_max = max(h for h, _ in sampling.values()), max(v for _, v in sampling.values())
    if count == 1:  # one component, not interleaved: one block an MCU, over that component's own size
        h, v = sampling[selectors[0][0]]
        mcus = _ceil(_ceil(width * h, h_max), BLOCK) * _ceil(_ceil(height * v, v_max), BLOCK)
        order = [(selectors[0][1], 1)]
    else:
        mcus = _ceil(width, BLOCK * h_max) * _ceil(height, BLOCK * v_max)
        order = [(tables_of, sampling[ident][0] * sampling[ident][1]) for ident, tables_of in selectors]
    per_mcu = sum(n for _, n in order)
    try:
        plan = [(tables[0, t >> 4], tables[1, t & 15], n) for t, n in order]
    except KeyError:
        raise ValueError("a scan whose Huffman table is not defined") from None
    whole = 0
    for k, interval in enumerate(_intervals(record, start)):
        todo = min(restart or mcus, mcus - k * (restart or mcus))
        if todo <= 0:
            break
        done = _walk_interval(interval, plan, todo)
        whole += done
        if done < todo:
            break
    return mcus * per_mcu, min(whole, mcus) * per_mcu


def _intervals(record: bytes, start: int):
    """The scan's coded bytes, unstuffed, cut at its restart markers; it ends at any other marker."""
    at = begin = start
    while True:
        at = record.find(b"\xff", at)
        if at < 0 or at + 1 >= len(record):
            yield record[begin:].replace(b"\xff\x00", b"\xff")
            return
        following = record[at + 1]
        if following == 0x00 or following == 0xFF:
            at += 1 if following == 0xFF else 2
            continue
        yield record[begin:at].replace(b"\xff\x00", b"\xff")
        if following not in RESTARTS:
            return
        at = begin = at + 2


def _walk_interval(data: bytes, plan: list, mcus: int) -> int:
    """How many of `mcus` MCUs the bits of `data` code whole."""
    bits, padded, position = 8 * len(data), data + bytes(4), 0
    for done in range(mcus):
        for dc, ac, blocks in plan:
            for _ in range(blocks):
                length, size = dc[_peek(padded, position)]  # the DC difference's size, then its bits
                if not length:
                    return done
                position += length + size
                k = 1
                while k < 64:  # (zeros before it, size) of each AC coefficient, then its bits
                    length, symbol = ac[_peek(padded, position)]
                    if not length:
                        return done
                    position += length + (symbol & 15)
                    if symbol & 15:
                        k += (symbol >> 4) + 1
                    elif symbol == 0xF0:  # sixteen zeros
                        k += 16
                    else:  # end of block
                        break
                if position > bits:
                    return done
    return mcus


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def _peek(data: bytes, position: int) -> int:
    at, shift = position >> 3, position & 7
    return (int.from_bytes(data[at : at + 3], "big") >> (8 - shift)) & 0xFFFF
