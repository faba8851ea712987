"""The `eyecare` command line. Each sub-command is a small function; errors a user can fix (a bad
path, a file that is not an image, a directory that is not a checkpoint, no Vulkan device) print one
line and exit 1, never a traceback."""
from __future__ import annotations

import argparse
import sys


def cmd_devices(args) -> int:
    from .core import devices

    for d in devices():
        mem = d["memory_bytes"] / 2**30
        print(f"[{d['index']}] {d['name']}  ({d['type']}, Vulkan {d['api_version']}, {mem:.1f} GiB, "
              f"subgroup {d['subgroup_size']}, max storage binding {d['max_storage_buffer_range'] // 2**20} MiB)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="eyecare", description="EyecareGPT on Vulkan: any GPU, or the CPU via lavapipe.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    p = sub.add_parser("devices", help="list the Vulkan devices (EYECARE_DEVICE picks one by index or name)")
    p.set_defaults(func=cmd_devices)
    for register in _registrars():
        register(sub)
    return parser


def _registrars():
    from .bench.cli import register as bench

    return [bench]


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from ._errors import user_facing_errors

    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("eyecare: interrupted", file=sys.stderr)
        return 130
    except user_facing_errors() as e:
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"eyecare {args.command}: error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
