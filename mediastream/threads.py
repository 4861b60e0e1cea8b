"""Blocking work in a gevent ThreadPool's thread, while the hub goes on."""


def caught(function, args, expected):
    """function(*args), for a pool to run: its result, or the `expected` exception it raised,
    returned rather than raised (gevent prints a traceback for an exception in a pool's
    thread, and these are expected: a service that failed, Redis that went away)."""
    try:
        return function(*args)
    except expected as error:
        return error
