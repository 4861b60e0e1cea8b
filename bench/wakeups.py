"""What a batched read's wake-up costs, and what shared ticks would save: CPU per wake-up
of N greenlets that each wake every INTERVAL at their own phase, as the server's one-way
streams do (a gevent.sleep, so a libev timer, per wake-up), against the same greenlets
woken by a few shared ticks (one periodic timer per phase, each waking its phase's
greenlets), the design docs/performance.md weighs. Only the wake-ups: no sockets, no
parsing.

    .venv/bin/python bench/wakeups.py [--greenlets 400] [--seconds 10] [--phases 10 40]

It prints figures; it is no test.
"""

import argparse
import os
import platform
import random
import re
import time
from pathlib import Path

import gevent
from gevent.hub import Waiter

INTERVAL = 0.1  # READ_INTERVAL's default


def own_timers(count, seconds):
    """Each greenlet sleeps INTERVAL after its own random start: one timer a wake-up."""
    wakeups = [0]

    def reader(phase):
        gevent.sleep(phase)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            gevent.sleep(INTERVAL)
            wakeups[0] += 1

    return [gevent.spawn(reader, random.uniform(0, INTERVAL)) for _ in range(count)], wakeups


def shared_ticks(count, seconds, phases):
    """The same greenlets, each in one of `phases` phases, woken by its phase's periodic
    timer (every INTERVAL, the phases' timers spread over it) through a gevent Waiter."""
    wakeups = [0]
    loop = gevent.get_hub().loop
    timers, waiting = [], [[] for _ in range(phases)]

    def tick(phase):
        ready, phase[:] = phase[:], []
        for waiter in ready:
            waiter.switch(None)

    for n, phase in enumerate(waiting):
        timer = loop.timer(INTERVAL * (n + 1) / phases, INTERVAL)
        timer.start(tick, phase)
        timers.append(timer)

    def reader(phase):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            waiter = Waiter()
            phase.append(waiter)
            waiter.get()
            wakeups[0] += 1

    greenlets = [gevent.spawn(reader, waiting[n % phases]) for n in range(count)]
    return greenlets, wakeups, timers


def measure(name, start):
    cpu = time.process_time()
    greenlets, wakeups, *timers = start()
    gevent.joinall(greenlets)
    for timer in timers[0] if timers else []:
        timer.close()
    spent = time.process_time() - cpu
    print(f"  {name:<28} {1e6 * spent / wakeups[0]:5.2f} us a wake-up ({wakeups[0]:,} wake-ups)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--greenlets", type=int, default=400)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--phases", type=int, nargs="+", default=[10, 40])
    parser.add_argument("--rounds", type=int, default=3)
    arguments = parser.parse_args()
    os.sched_setaffinity(0, {0})
    cpu = re.search(r"model name\s*:\s*(.*)", Path("/proc/cpuinfo").read_text())
    print(
        f"{arguments.greenlets} greenlets waking every {INTERVAL:g} s for "
        f"{arguments.seconds:g} s, in turn, {arguments.rounds} rounds; {cpu[1] if cpu else '?'}, "
        f"Python {platform.python_version()}, gevent {gevent.__version__}, "
        f"{time.strftime('%Y-%m-%d')}"
    )
    count, seconds = arguments.greenlets, arguments.seconds
    for _ in range(arguments.rounds):
        measure("a timer each (gevent.sleep)", lambda: own_timers(count, seconds))
        for phases in arguments.phases:
            measure(f"{phases} shared ticks", lambda p=phases: shared_ticks(count, seconds, p))


if __name__ == "__main__":
    main()
