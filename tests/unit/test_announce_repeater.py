"""announce.Repeater: every announcement's repeats from one thread, in order; a failed send ends only its
own repeats; close drops what is pending."""

import threading
import time

from driver.announce import Repeater


def wait_for(condition, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    return condition()


def test_repeats_come_in_order_from_one_thread_and_a_failure_ends_only_its_own() -> None:
    sent: list[tuple[str, int]] = []
    threads: set[str] = set()
    calls = {"bad": 0}

    def sender(name: str):
        def send() -> None:
            threads.add(threading.current_thread().name)
            sent.append((name, len([s for s in sent if s[0] == name])))

        return send

    def bad() -> None:
        calls["bad"] += 1
        raise OSError("the bridge went")

    repeater = Repeater()
    repeater.send_later(sender("a"), "pobr1", (0.02, 0.06))
    repeater.send_later(bad, "pobr2", (0.01, 0.03, 0.05))
    repeater.send_later(sender("b"), "pobr3", (0.04,))
    assert wait_for(lambda: len(sent) == 3)
    time.sleep(0.1)
    assert sent == [("a", 0), ("b", 0), ("a", 1)]
    assert calls["bad"] == 1  # its later repeats were dropped
    assert threads == {"announce-again"}
    repeater.close()


def test_close_drops_what_is_pending() -> None:
    sent: list[int] = []
    repeater = Repeater()
    repeater.send_later(lambda: sent.append(1), "pobr1", (0.2,))
    repeater.close()
    repeater.send_later(lambda: sent.append(2), "pobr1", (0.0,))  # after close: ignored
    time.sleep(0.3)
    assert sent == []


def test_a_new_announcement_of_an_ip_drops_the_pending_repeats_of_its_old_one() -> None:
    """A container replaced within seconds by one with the same IP and another MAC: the old MAC's late
    repeats must not undo the new announcement in its neighbours' caches."""
    sent: list[str] = []
    repeater = Repeater()
    repeater.send_later(lambda: sent.append("old MAC"), "pobr1", (0.1, 0.3), key=("pobr1", "10.0.0.5"))
    repeater.send_later(lambda: sent.append("other IP"), "pobr1", (0.2,), key=("pobr1", "10.0.0.6"))
    repeater.send_later(lambda: sent.append("other bridge"), "pobr2", (0.2,), key=("pobr2", "10.0.0.5"))
    repeater.send_later(lambda: sent.append("new MAC"), "pobr1", (0.25,), key=("pobr1", "10.0.0.5"))
    assert wait_for(lambda: len(sent) == 3)
    time.sleep(0.3)
    assert sorted(sent) == ["new MAC", "other IP", "other bridge"]
    repeater.close()
