"""``@worker``: register a class as a worker and give it its class methods."""

from __future__ import annotations

from typing import Any

from django_relay import enqueue, results
from django_relay.registry import make_options, register

#: What ``@worker`` adds to the class, each taking the class as first argument.
_CLASS_METHODS = {
    "new": enqueue.new,
    "enqueue": enqueue.enqueue,
    "aenqueue": enqueue.aenqueue,
    "relay": results.relay_new,
    "relay_sync": results.relay_new_sync,
}


def worker[T: type](
    cls: T | None = None,
    *,
    queue: str = "default",
    max_attempts: int = 20,
    priority: int = 0,
    timeout: float | None = None,
    unique: Any = None,
) -> Any:
    """Register a class with a ``process(self, job)`` method as a worker.

    Usable bare (``@worker``) or with options (``@worker(queue="mail")``). The class
    gains ``new``, ``enqueue``, ``aenqueue``, ``relay`` and ``relay_sync``.

    Args:
        queue: Queue its jobs go to unless ``new(queue=...)`` says otherwise.
        max_attempts: Attempts before a failing job is discarded.
        priority: 0 (runs first) to 9.
        timeout: Seconds an attempt may run before it fails; None for no limit.
        unique: ``True``, a dict or a :class:`~django_relay.registry.Unique`: enqueueing
            a duplicate returns the existing job with ``job.conflict`` set.

    Raises:
        ValueError: an option is out of range.
        TypeError: the class has no ``process`` method.
    """
    options = make_options(
        queue=queue, max_attempts=max_attempts, priority=priority, timeout=timeout, unique=unique
    )

    def decorate(klass: T) -> T:
        if not callable(getattr(klass, "process", None)):
            raise TypeError(f"{klass.__qualname__} needs a process(self, job) method")
        for name, method in _CLASS_METHODS.items():
            setattr(klass, name, classmethod(method))  # type: ignore[arg-type]
        register(klass, options)
        return klass

    return decorate if cls is None else decorate(cls)
