"""Scatter chunks: where a batch's first record to each destination goes.

A destination's first record in a batch (a scan sends one packet to each of many
addresses) would cost a chunk row and a random insert into the dst index of its own. It
goes instead to one of :data:`BUCKETS` scatter chunks per batch, chosen by a keyed hash of
the address (its next records in the batch, if any, to a chunk of its own). A scatter
chunk's ``dst`` is the 2-byte bucket id (an address is 4 bytes, so the two never meet in
the index), its ``sid`` is :data:`MIXED`, and each record carries its slice's store id in
the sniffer's ``xid`` field. ``/dst/<ip>`` reads the address's own chunks and its
bucket's, keeping from the latter only the records to that address.

The hash key is random per database (``meta.scatter_key``), so no slice can pick addresses
that share a bucket with one it wants to bury.
"""

from __future__ import annotations

import struct

#: scatter chunks per batch at most (a 12-bit bucket id)
BUCKETS = 4096
#: the ``sid`` of a scatter chunk: its records name their slice themselves
MIXED = 0

M32 = (1 << 32) - 1
#: multiply-shift hashing: the top bits of (address * key) mod 2^32
SHIFT = 32 - (BUCKETS.bit_length() - 1)
SID = struct.Struct("<I")
XID_AT = 8  # byte offset of the xid in a record (slicectl.core.sniffrecord.RECORD)


def bucket_of(dst: bytes, key: int) -> bytes:
    """The scatter chunk id (2 bytes) of address ``dst`` under hash ``key`` (odd, 32 bits).
    The ingest hot path computes the same inline."""
    return (((int.from_bytes(dst, "big") * key) & M32) >> SHIFT).to_bytes(2, "big")
