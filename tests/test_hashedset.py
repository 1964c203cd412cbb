import pytest

from pipeline.hashedset import MIN_SLOTS, HashedSet


class Hashed:
    """A member whose hash we choose, to force collisions."""

    def __init__(self, value: int):
        self.value = value

    def __hash__(self) -> int:
        return self.value


def test_add_says_whether_the_member_is_new():
    ids = HashedSet()
    assert ids.add("a") and ids.add("b")
    assert not ids.add("a")
    assert "a" in ids and "b" in ids and "c" not in ids
    assert len(ids) == 2


def test_the_table_doubles_before_it_is_half_full():
    ids = HashedSet()
    for i in range(MIN_SLOTS // 2 - 1):
        ids.add(f"id{i}")
    assert len(ids._slots) == MIN_SLOTS
    ids.add("one more")
    assert len(ids._slots) == 2 * MIN_SLOTS  # load factor 0.5 reached: doubled
    assert len(ids) == MIN_SLOTS // 2
    assert all(f"id{i}" in ids for i in range(MIN_SLOTS // 2 - 1)) and "one more" in ids  # all still found after the move


def test_expected_sizes_the_table_up_front():
    assert len(HashedSet(expected=10)._slots) == MIN_SLOTS
    assert len(HashedSet(expected=1000)._slots) == 2048
    assert len(HashedSet(expected=1_000_000)._slots) == 2**21  # 16 MB for a million ids


@pytest.mark.parametrize("wrap", [False, True])
def test_members_that_want_the_same_slot_all_get_one(wrap):
    ids = HashedSet()
    home = MIN_SLOTS - 2 if wrap else 5  # near the end, the probe wraps round to slot 0
    members = [Hashed(home + k * MIN_SLOTS) for k in range(1, 6)]  # one home slot, different hashes
    assert all(ids.add(m) for m in members)
    assert all(m in ids for m in members)
    assert Hashed(home + 9 * MIN_SLOTS) not in ids  # a miss walks the whole run and stops at the first empty slot
    assert not ids.add(Hashed(home + 3 * MIN_SLOTS))


def test_members_with_the_same_hash_count_as_one():
    # The documented risk: 1 chance in 2^64 for two given ids; a false "already seen".
    ids = HashedSet()
    assert ids.add(Hashed(12345))
    assert not ids.add(Hashed(12345))
    assert ids.add(Hashed(0)) and not ids.add(Hashed(1))  # 0 marks an empty slot, so a hash of 0 is stored as 1


def test_many_ids_no_false_answers():
    ids, count = HashedSet(), 200_000
    ids.update(f"r{i:07d}" for i in range(0, 2 * count, 2))
    assert len(ids) == count
    assert all(f"r{i:07d}" in ids for i in range(0, 2 * count, 2))
    assert not any(f"r{i:07d}" in ids for i in range(1, 2 * count, 2))


def test_tuples_are_members_too():
    pairs = HashedSet()
    pairs.add(("r1", "fingerprint A"))
    assert ("r1", "fingerprint A") in pairs and ("r1", "fingerprint B") not in pairs
