from imflow.core.ids import EPOCH_MS, MAX_ID, MAX_NODE, IdGenerator, id_time_ms

import pytest


def test_ids_grow_and_carry_their_time() -> None:
    clock = iter([EPOCH_MS + 5_000] * 200 + [EPOCH_MS + 5_001] * 3)
    ids = IdGenerator(node=3, clock=lambda: next(clock))
    made = [ids.next_id() for _ in range(203)]
    assert made == sorted(made) and len(set(made)) == 203
    assert id_time_ms(made[0]) == EPOCH_MS + 5_000
    # 64 ids fit in a millisecond; the rest borrow the following milliseconds, still ordered
    assert id_time_ms(made[-1]) > EPOCH_MS + 5_001


def test_ids_survive_a_clock_step_back() -> None:
    times = iter([EPOCH_MS + 10_000, EPOCH_MS + 9_000, EPOCH_MS + 9_500])
    ids = IdGenerator(node=0, clock=lambda: next(times))
    made = [ids.next_id() for _ in range(3)]
    assert made == sorted(made) and len(set(made)) == 3


def test_ids_fit_in_53_bits_until_2093() -> None:
    year_2093 = EPOCH_MS + 69 * 365 * 86_400_000
    assert IdGenerator(node=MAX_NODE, clock=lambda: year_2093).next_id() <= MAX_ID
    # exact as a double: a Redis sorted-set score and a JSON number in a browser
    mid = IdGenerator(node=MAX_NODE, clock=lambda: year_2093).next_id()
    assert int(float(mid)) == mid


def test_distinct_nodes_never_collide() -> None:
    now = EPOCH_MS + 1
    a, b = IdGenerator(1, lambda: now), IdGenerator(2, lambda: now)
    assert {a.next_id() for _ in range(100)}.isdisjoint({b.next_id() for _ in range(100)})


def test_node_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError):
        IdGenerator(node=MAX_NODE + 1)


def test_each_conversation_id_form_has_one_builder_and_one_parser() -> None:
    from imflow.core import groups
    from imflow.core.models import direct_conversation, direct_members, group_conversation, group_id

    assert direct_conversation("bob", "alice") == direct_conversation("alice", "bob") == "p:alice:bob"
    assert direct_members("p:alice:bob") == ("alice", "bob") and direct_members("g:team") is None
    assert group_conversation("team") == "g:team" and group_id(group_conversation("team")) == "team"
    assert group_id("p:alice:bob") is None and group_id("g:") is None
    assert groups.group_id is group_id, "the send path and plugins import it from core.groups"
