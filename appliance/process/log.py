"""Logging in containerd's shapes: logrus-style text or JSON, levels trace…panic."""
from __future__ import annotations

import datetime
import json
import logging
import sys

TRACE = 5
logging.addLevelName(TRACE, "trace")
LEVELS = {"trace": TRACE, "debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING,
          "warning": logging.WARNING, "error": logging.ERROR, "fatal": logging.CRITICAL,
          "panic": logging.CRITICAL}
_NAMES = {TRACE: "trace", logging.DEBUG: "debug", logging.INFO: "info",
          logging.WARNING: "warning", logging.ERROR: "error", logging.CRITICAL: "fatal"}


def _timestamp(record) -> str:
    return datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%S.%fZ")


class TextFormatter(logging.Formatter):
    def format(self, record):
        msg = record.getMessage()
        if record.exc_info:
            msg += "\n" + self.formatException(record.exc_info)
        line = f'time="{_timestamp(record)}" level={_NAMES.get(record.levelno, "info")} msg={json.dumps(msg)}'
        fields = getattr(record, "fields", None)
        if fields:
            line += "".join(f" {k}={json.dumps(v) if isinstance(v, str) else v}"
                            for k, v in fields.items())
        return line


class JSONFormatter(logging.Formatter):
    def format(self, record):
        entry = {"level": _NAMES.get(record.levelno, "info"), "msg": record.getMessage(),
                 "time": _timestamp(record)}
        entry.update(getattr(record, "fields", None) or {})
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def setup(level: str = "info", fmt: str = "text", stream=None) -> None:
    if level not in LEVELS:
        raise ValueError(f"unknown log level {level!r}: expected one of {', '.join(LEVELS)}")
    if fmt not in ("text", "json", ""):
        raise ValueError(f"unknown log format {fmt!r}: expected text or json")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JSONFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(LEVELS[level])
    logging.getLogger("grpc").setLevel(max(LEVELS[level], logging.WARNING))
