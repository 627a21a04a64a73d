"""``POST /admin/reload`` on one ingress replica, seen by all of them.

The request reaches one replica; the others must forget their resolved references too
(a cluster runs an ingress on every node that serves). The replica that takes it
writes a new generation under the application's key in Ray's GCS key-value store (the
store every node of the cluster reads); every replica reads that key at most once per
``check_s`` before it resolves a reference and forgets what it resolved when the
generation moved. Without Ray (an ingress built in a test) the signal is local.
"""

from __future__ import annotations

import time
import uuid

KEY_PREFIX = "pdeserve:reload:"


def _kv():
    import ray

    if not ray.is_initialized():
        return None
    from ray.experimental import internal_kv

    return internal_kv if internal_kv._internal_kv_initialized() else None


class ReloadSignal:
    def __init__(self, app: str, check_s: float = 1.0):
        self.key = (KEY_PREFIX + app).encode()
        self.check_s = check_s
        self._seen = self._read()
        self._checked = time.monotonic()

    def _read(self) -> bytes | None:
        kv = _kv()
        return None if kv is None else kv._internal_kv_get(self.key)

    def bump(self) -> None:
        """A new generation: every replica forgets its references at its next check."""
        generation = uuid.uuid4().hex.encode()
        kv = _kv()
        if kv is not None:
            kv._internal_kv_put(self.key, generation, overwrite=True)
        self._seen, self._checked = generation, time.monotonic()

    def moved(self) -> bool:
        """True once after another replica bumped the generation (checked at most once
        per ``check_s``)."""
        now = time.monotonic()
        if now - self._checked < self.check_s:
            return False
        self._checked = now
        current = self._read()
        if current == self._seen:
            return False
        self._seen = current
        return True
