"""atlas.two_cores: a list mapped on two cores gives what the plain map gives, whatever
the child does, and leaves no process behind."""
from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from atlas import two_cores

pytestmark = pytest.mark.skipif(not two_cores._can_fork(), reason="needs Linux with two usable CPUs")

ITEMS = list(range(2 * two_cores.MIN_ITEMS))


def with_pid(item: int) -> tuple[int, int]:
    time.sleep(0.001)            # work enough for the child to start before the parent is done
    return item * item, os.getpid()


@pytest.fixture
def forked(monkeypatch) -> list[int]:
    """The pids map_items forks. Only these are checked: other tests in the same run may
    have children of their own alive, so waitpid(-1) says nothing about map_items."""
    pids: list[int] = []
    real_fork = os.fork

    def recording_fork() -> int:
        pid = real_fork()
        if pid:
            pids.append(pid)
        return pid

    monkeypatch.setattr(os, "fork", recording_fork)
    return pids


def reaped(pids: list[int]) -> bool:
    """Every child was forked and waited for: none is left running or as a zombie."""
    for pid in pids:
        try:
            os.waitpid(pid, os.WNOHANG)    # would reap a zombie (or see it running) if left
        except ChildProcessError:
            continue
        return False
    return bool(pids)


def test_the_result_is_the_plain_map_and_both_processes_did_part_of_it(forked):
    ran_before = []
    results = two_cores.map_items(with_pid, ITEMS, before=lambda: ran_before.append(os.getpid()))
    assert [value for value, _ in results] == [item * item for item in ITEMS]
    pids = {pid for _, pid in results}
    assert os.getpid() in pids and len(pids) == 2         # the child did the far end
    assert results[-1][1] != os.getpid()
    assert ran_before == [os.getpid()]
    assert reaped(forked)


def test_each_result_is_handed_over_here_once_as_it_comes_in(forked):
    parent = os.getpid()
    handed: list[tuple[int, tuple[int, int], int]] = []
    before_done = []
    results = two_cores.map_items(with_pid, ITEMS, before=lambda: before_done.append(len(handed)),
                                  then=lambda index, result: handed.append((index, result, os.getpid())))
    assert before_done == [0]                            # nothing handed over before `before`
    assert sorted(index for index, _, _ in handed) == list(range(len(ITEMS)))
    assert all(results[index] == result and pid == parent for index, result, pid in handed)
    assert {pid for _, (_, pid), _ in handed} == {parent, next(pid for _, pid in results if pid != parent)}
    assert reaped(forked)


def test_results_handed_over_are_those_of_the_plain_map_when_the_child_dies(forked):
    parent = os.getpid()

    def dies_after_a_few_batches(item: int) -> int:
        if os.getpid() != parent and item < len(ITEMS) - 2 * two_cores.BATCH - 5:
            os.kill(os.getpid(), signal.SIGKILL)
        if os.getpid() == parent:
            time.sleep(0.001)
        return item * 3

    handed: dict[int, int] = {}
    results = two_cores.map_items(dies_after_a_few_batches, ITEMS,
                                  then=lambda index, result: handed.setdefault(index, result))
    assert results == [item * 3 for item in ITEMS]
    assert handed == dict(enumerate(results))
    assert reaped(forked)


def test_few_items_are_mapped_here(forked):
    results = two_cores.map_items(with_pid, ITEMS[:two_cores.MIN_ITEMS - 1])
    assert {pid for _, pid in results} == {os.getpid()}
    assert forked == []


def test_with_another_thread_running_nothing_is_forked(forked):
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    thread.start()
    try:
        results = two_cores.map_items(with_pid, ITEMS)
    finally:
        stop.set()
        thread.join()
    assert {pid for _, pid in results} == {os.getpid()}
    assert forked == []


def test_a_child_that_dies_midway_changes_nothing(forked):
    parent = os.getpid()

    def dies_in_the_child(item: int) -> int:
        if os.getpid() != parent and item < len(ITEMS) - 10:
            os.kill(os.getpid(), signal.SIGKILL)
        if os.getpid() == parent:
            time.sleep(0.001)                              # let the child get going first
        return item + 1

    assert two_cores.map_items(dies_in_the_child, ITEMS) == [item + 1 for item in ITEMS]
    assert reaped(forked)


def test_a_child_that_raises_changes_nothing(forked):
    parent = os.getpid()

    def raises_in_the_child(item: int) -> int:
        if os.getpid() != parent:
            raise ValueError("no")
        return -item

    assert two_cores.map_items(raises_in_the_child, ITEMS) == [-item for item in ITEMS]
    assert reaped(forked)


def test_an_error_here_goes_up_and_takes_the_child_with_it(forked):
    parent = os.getpid()

    def fails_here(item: int) -> int:
        if os.getpid() == parent and item == 3:
            raise KeyboardInterrupt
        if os.getpid() != parent:
            time.sleep(0.01)                               # still busy when the parent fails
        return item

    with pytest.raises(KeyboardInterrupt):
        two_cores.map_items(fails_here, ITEMS)
    assert reaped(forked)


def test_results_that_do_not_pickle_are_made_here(forked):
    parent = os.getpid()

    def lambda_in_the_child(item: int):
        return (lambda: item) if os.getpid() != parent else item

    results = two_cores.map_items(lambda_in_the_child, ITEMS)
    assert results == ITEMS                              # the child's payload failed: all done here
    assert reaped(forked)
