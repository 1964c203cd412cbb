"""A set that keeps a 64-bit hash of each member instead of the member: 16 to 32 bytes a member, not ~100.

The manifest reader remembers every id it has seen, and a resumed run every id
the output holds: millions of strings as a Python set would cost hundreds of MB.

Two members with the same hash look like one. The hash is Python's `hash()`
(SipHash with a random key for each process), so for n members the chance that
any two collide is about n²/2⁶⁵: 3e-8 for a million ids. A collision makes a
distinct id look like a duplicate, or already done; that risk is accepted. The
hashes change from one process to the next, so they are never stored.
"""

from __future__ import annotations

from array import array
from typing import Hashable, Iterable

MIN_SLOTS = 1024


class HashedSet:
    """Open addressing with linear probing over an array of hashes; 0 marks an empty slot.

    The table doubles when it is half full: at that load a probe reads 1.5 slots
    on average, 2.5 for a member that is not in.
    """

    __slots__ = ("_slots", "_mask", "_room")

    def __init__(self, expected: int = 0):
        """`expected`: how many members to make room for now, so that the table does not grow while they come."""
        size = MIN_SLOTS
        while size < 2 * expected:
            size *= 2
        self._slots = array("q", [0]) * size
        self._mask = size - 1
        self._room = size // 2  # members that fit before the table doubles

    def __len__(self) -> int:
        return len(self._slots) // 2 - self._room

    # __contains__ and add each write the probe loop out: a shared helper costs 0.2 us a call
    # (0.70 -> 0.92 us per add, timed), and the manifest reader calls add once per row.
    def __contains__(self, member: Hashable) -> bool:
        wanted = hash(member) or 1  # 0 marks an empty slot
        slots, mask = self._slots, self._mask
        i = wanted & mask
        while found := slots[i]:
            if found == wanted:
                return True
            i = (i + 1) & mask
        return False

    def add(self, member: Hashable) -> bool:
        """Add a member; False when it was in already."""
        wanted = hash(member) or 1
        slots, mask = self._slots, self._mask
        i = wanted & mask
        while found := slots[i]:
            if found == wanted:
                return False
            i = (i + 1) & mask
        slots[i] = wanted
        self._room -= 1
        if not self._room:
            self._grow()
        return True

    def update(self, members: Iterable[Hashable]) -> None:
        # add's probe written out once more: resume loads millions of members through here, and the call
        # per member was half the time (1,000,000 keys: 0.89 -> 0.60 s, timed).
        slots, mask, room = self._slots, self._mask, self._room
        for member in members:
            wanted = hash(member) or 1
            i = wanted & mask
            while found := slots[i]:
                if found == wanted:
                    break
                i = (i + 1) & mask
            else:
                slots[i] = wanted
                room -= 1
                if not room:
                    self._room = room
                    self._grow()
                    slots, mask, room = self._slots, self._mask, self._room
        self._room = room

    def _grow(self) -> None:
        old = self._slots
        size = 2 * len(old)
        self._slots = slots = array("q", [0]) * size
        self._mask = mask = size - 1
        self._room += size // 2 - len(old) // 2
        for wanted in old:
            if wanted:
                i = wanted & mask
                while slots[i]:
                    i = (i + 1) & mask
                slots[i] = wanted
