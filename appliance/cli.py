"""Command line: `ctrappliance [flags] [config|publish|oci-hook]`.

`get_parser()` has no side effects (argparse-manpage imports it); everything
heavy is imported inside the command that needs it.
"""
from __future__ import annotations

import argparse
import sys

from . import __version__

LOG_LEVELS = ["trace", "debug", "info", "warn", "error", "fatal", "panic"]


def get_parser() -> argparse.ArgumentParser:
    from .config import DEFAULT_ADDRESS, DEFAULT_CONFIG_PATH, DEFAULT_ROOT, DEFAULT_STATE
    parser = argparse.ArgumentParser(
        prog="ctrappliance",
        description="A containerd-compatible container daemon. Without a subcommand it runs "
                    "the daemon in the foreground, serving containerd's gRPC API on a unix "
                    "socket (any containerd client, such as ctr, works against it).")
    parser.add_argument("-c", "--config", default=None, metavar="PATH",
                        help=f"path to the configuration file (default {DEFAULT_CONFIG_PATH})")
    parser.add_argument("-l", "--log-level", choices=LOG_LEVELS, default=None,
                        help="set the logging level (default info)")
    parser.add_argument("--log-format", choices=["text", "json"], default=None,
                        help="log format (default text)")
    parser.add_argument("-a", "--address", default=None, metavar="PATH",
                        help=f"address of the gRPC unix socket (default {DEFAULT_ADDRESS})")
    parser.add_argument("--root", default=None, metavar="DIR",
                        help=f"root directory for persistent data (default {DEFAULT_ROOT})")
    parser.add_argument("--state", default=None, metavar="DIR",
                        help=f"directory for runtime state (default {DEFAULT_STATE})")
    parser.add_argument("-v", "--version", action="version",
                        version=f"ctrappliance {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    cfg = sub.add_parser("config", help="information on the daemon's configuration")
    cfg_sub = cfg.add_subparsers(dest="config_command", metavar="COMMAND", required=True)
    cfg_sub.add_parser("default", help="print the default configuration, every plugin section "
                                       "included")
    cfg_sub.add_parser("dump", help="print the effective configuration: file, imports and flags")
    about = ("print the configuration file given by --config, a version 1 file, as version "
             "2: plugin sections keyed by their full URI ([plugins.cri] becomes "
             '[plugins."io.containerd.grpc.v1.cri"]); the file itself is left alone unless '
             "--in-place is given")
    migrate = cfg_sub.add_parser("migrate", help=about, description=about)
    where = migrate.add_mutually_exclusive_group()
    where.add_argument("--output", "-o", default="-", metavar="PATH",
                       help="write the result to PATH instead of standard output (-)")
    where.add_argument("--in-place", "-i", action="store_true",
                       help="replace the file given by --config, keeping the old one as "
                            "PATH.bak")

    publish = sub.add_parser("publish", help="read an event (a protobuf Any) on stdin and "
                                             "publish it to a daemon, as shims do")
    publish.add_argument("--address", required=True, help="TTRPC address of the daemon")
    publish.add_argument("--namespace", required=True, help="namespace of the event")
    publish.add_argument("--topic", required=True, help="topic of the event, e.g. /tasks/exit")

    hook = sub.add_parser("oci-hook", help="run an OCI hook command with its arguments "
                                           "templated from the container state on stdin")
    hook.add_argument("hook_args", nargs=argparse.REMAINDER, metavar="-- COMMAND [ARG...]",
                      help="templates: {{id}} {{pid}} {{bundle}} {{rootfs}} "
                           '{{annotation "KEY"}}')
    return parser


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    if args.command == "publish":
        from .commands import publish
        return publish.run(args)
    if args.command == "oci-hook":
        from .commands import ocihook
        return ocihook.run(args.hook_args)
    return _config_or_daemon(args)


def _config_or_daemon(args) -> int:
    from .process.settings import asyncio_without_ssl
    with asyncio_without_ssl():
        from . import builtins, config
        from .process import log
    registrations = builtins.registrations()
    try:
        log.setup(args.log_level or "info", args.log_format or "text")
        path = args.config or config.DEFAULT_CONFIG_PATH
        if args.command == "config" and args.config_command == "default":
            print(config.dumps(config.to_table(config.Config(), registrations)), end="")
            return 0
        if args.command == "config" and args.config_command == "migrate":
            text = config.migrate_text(path, registrations)
            target = path if args.in_place else args.output
            if target == "-":
                print(text, end="")
            else:
                config.write_file(target, text, backup=args.in_place)
                print(f"migrated {path} to version 2: {target}" +
                      (f" (the old file is {path}.bak)" if args.in_place else ""),
                      file=sys.stderr)
            return 0
        cfg = config.load(path, registrations, required=args.config is not None)
        config.apply_flags(cfg, address=args.address, root=args.root, state=args.state,
                           log_level=args.log_level)
        if args.command == "config":  # dump
            print(config.dumps(config.to_table(cfg, registrations)), end="")
            return 0
        log.setup(args.log_level or cfg.debug.level or "info",
                  args.log_format or cfg.debug.format or "text")
    except (config.ConfigError, ValueError) as exc:
        print(f"ctrappliance: {exc}", file=sys.stderr)
        return 1
    from . import daemon
    return daemon.run(cfg, registrations)


if __name__ == "__main__":
    sys.exit(main())
