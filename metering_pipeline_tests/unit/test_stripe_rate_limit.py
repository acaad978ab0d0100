"""The client-side token bucket on a fake clock: bursts, steady rate, threads sharing a budget."""

from __future__ import annotations

import threading

import pytest

from metering_pipeline.stripe_io.rate_limit import TokenBucket


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.lock = threading.Lock()

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        with self.lock:
            self.now += seconds


def test_a_burst_up_to_the_rate_goes_through_then_calls_are_spaced() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=10, clock=clock, sleep=clock.sleep)
    waits = [bucket.acquire() for _ in range(10)]
    assert waits == [0.0] * 10
    assert bucket.acquire() == pytest.approx(0.1)
    assert bucket.acquire() == pytest.approx(0.1)


@pytest.mark.parametrize(("rate", "calls"), [(25, 250), (2.5, 30), (100, 1000)])
def test_long_run_rate_never_exceeds_the_budget(rate: float, calls: int) -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=rate, clock=clock, sleep=clock.sleep)
    for _ in range(calls):
        bucket.acquire()
    # the first `burst` calls are free; every later one costs 1/rate seconds
    assert clock.now == pytest.approx((calls - bucket.burst) / rate)
    assert bucket.waited_seconds == pytest.approx(clock.now)


def test_idle_time_refills_up_to_the_burst_only() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=5, burst=2, clock=clock, sleep=clock.sleep)
    bucket.acquire()
    bucket.acquire()
    clock.now += 60  # a long pause does not bank 300 tokens
    assert [bucket.acquire() for _ in range(2)] == [0.0, 0.0]
    assert bucket.acquire() == pytest.approx(0.2)


def test_threads_share_one_budget() -> None:
    slept: list[float] = []
    lock = threading.Lock()

    def record(seconds: float) -> None:
        with lock:
            slept.append(seconds)

    bucket = TokenBucket(rate=4, clock=lambda: 0.0, sleep=record)
    threads = [threading.Thread(target=bucket.acquire) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # with the clock frozen, 4 go at once and the other 8 reserve slots 1/4 s apart
    assert sorted(slept) == pytest.approx([0.25 * n for n in range(1, 9)])


def test_rate_must_be_positive() -> None:
    with pytest.raises(ValueError, match="above 0"):
        TokenBucket(rate=0)
