"""Nuitka's entry point: the same `main` as the `ctrappliance` console script."""
import signal
import sys

from appliance.cli import main

if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        # The onefile bootstrap forwards SIGTERM as SIGINT; before the daemon has
        # installed its handlers this is how it arrives. Exit as a signal would.
        sys.exit(128 + signal.SIGINT)
