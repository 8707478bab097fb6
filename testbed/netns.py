"""Run a little code inside another process's network namespace without leaving our own.

setns() affects only the calling thread, so a short-lived thread enters the namespace, runs the code
(typically: create a socket, which stays bound to that namespace) and hands the result back.
"""

from __future__ import annotations

import ctypes
import os
import socket
import threading
from collections.abc import Callable
from typing import Any

CLONE_NEWNET = 0x40000000


def in_netns(pid: int | None, fn: Callable[[], Any]) -> Any:
    """``fn()`` run inside the network namespace of process ``pid`` (None: ours); its exception is re-raised."""
    result: dict[str, Any] = {}

    def work() -> None:
        try:
            if pid is not None:
                libc = ctypes.CDLL(None, use_errno=True)
                with open(f"/proc/{pid}/ns/net", "rb") as f:
                    if libc.setns(f.fileno(), CLONE_NEWNET) != 0:
                        err = ctypes.get_errno()
                        raise OSError(err, f"setns into {pid}'s network namespace: {os.strerror(err)}")
            result["value"] = fn()
        except BaseException as e:  # handed to the caller
            result["err"] = e

    t = threading.Thread(target=work, name=f"netns-{pid}", daemon=True)
    t.start()
    t.join()
    if "err" in result:
        raise result["err"]
    return result.get("value")


def socket_in_netns(pid: int, make: Callable[[], socket.socket]) -> socket.socket:
    sock = in_netns(pid, make)
    assert isinstance(sock, socket.socket)
    return sock
