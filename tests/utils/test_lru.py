"""The bounded memo of per-caption work."""
import pytest

from ernie_vilg2.utils.lru import LruDict


def test_the_least_recently_used_entry_goes_first():
    memo = LruDict(2)
    memo.put("a", 1)
    memo.put("b", 2)
    assert memo.get("a") == 1  # "b" is now the oldest
    memo.put("c", 3)
    assert (memo.get("a"), memo.get("b"), memo.get("c"), len(memo)) == (1, None, 3, 2)
    memo.put("a", 4)
    assert memo.get("a") == 4 and len(memo) == 2


def test_a_memo_holds_at_least_one_entry():
    with pytest.raises(ValueError, match="maxsize must be >= 1, got 0"):
        LruDict(0)
