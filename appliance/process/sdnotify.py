"""sd_notify without libsystemd: one datagram to $NOTIFY_SOCKET."""
import os
import socket


def notify(state: str) -> bool:
    """Send `state` (e.g. "READY=1"); False when not run under a notify-aware manager."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.sendto(state.encode(), address)
        except OSError:
            return False
    return True
