"""The daemon's process and its surroundings, below everything else: event loop, listeners
(sockets, the debug and metrics endpoints), sd_notify, settings applied to the process at boot
(OOM score, cgroup, no OpenSSL until needed), memory release, fd limits, the background trash
drain, logging, metrics declarations, failpoints, and the path other processes run us by.

Nothing here imports from the daemon, plugins or core; they import from here.
"""
