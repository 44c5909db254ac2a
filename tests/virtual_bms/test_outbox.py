"""The store-and-forward buffer: order, seqs that survive restarts, the overflow policy."""

from __future__ import annotations

from pathlib import Path

import pytest

from virtual_bms.outbox import Outbox


def test_messages_leave_in_order_and_seqs_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    outbox = Outbox(path)
    seqs = [outbox.put_sequenced("telemetry", lambda s: f"t{s}".encode()) for _ in range(5)]
    outbox.put("events", b"e")
    assert seqs == [0, 1, 2, 3, 4]
    head = outbox.peek(3)
    assert [i.payload for i in head] == [b"t0", b"t1", b"t2"]
    outbox.remove(i.id for i in head)
    outbox.close()

    again = Outbox(path)  # the BMS restarted
    assert len(again) == 3 and again.next_seq == 5
    assert [i.payload for i in again.peek(10)] == [b"t3", b"t4", b"e"]
    assert again.put_sequenced("telemetry", lambda s: f"t{s}".encode()) == 5


def test_a_failed_build_allocates_no_seq_and_queues_nothing(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.sqlite")

    def broken(seq: int) -> bytes:
        raise ValueError("no payload")

    with pytest.raises(ValueError, match="no payload"):
        outbox.put_sequenced("telemetry", broken)
    assert len(outbox) == 0 and outbox.next_seq == 0


def test_overflow_drops_the_oldest_telemetry_first(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.sqlite", max_messages=4)
    outbox.put("eis", b"sweep")
    for _ in range(5):
        outbox.put_sequenced("telemetry", lambda s: f"t{s}".encode())
    assert [i.payload for i in outbox.peek(10)] == [b"sweep", b"t2", b"t3", b"t4"]
    assert outbox.dropped == 2
    for k in range(4):
        outbox.put("acks", f"a{k}".encode())  # no telemetry left to drop: oldest go
    assert [i.payload for i in outbox.peek(10)] == [b"a0", b"a1", b"a2", b"a3"]
    assert outbox.dropped == 6 and len(outbox) == 4


def test_commands_are_recognised_when_redelivered(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    outbox = Outbox(path)
    assert outbox.first_time(7) and not outbox.first_time(7)
    outbox.close()
    assert not Outbox(path).first_time(7)


def test_bound_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_messages"):
        Outbox(tmp_path / "o.sqlite", max_messages=0)
