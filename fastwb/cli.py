"""The ``fastwb`` command line.

    fastwb info      print the build, OpenMP runtime, threads and BLAS
"""

import argparse
import json
import sys


def _cmd_info(args):
    import fastwb

    if args.json:
        json.dump(fastwb._runtime.config(), sys.stdout, indent=2)
        print()
    else:
        fastwb.show_config()
    return 0


def build_parser():
    parser = argparse.ArgumentParser(prog="fastwb", description="fastwb: fast CPU kernels for weights and biases")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    info = sub.add_parser("info", help="print the build, OpenMP runtime, thread count and BLAS")
    info.add_argument("--json", action="store_true", help="print the configuration as JSON")
    info.set_defaults(func=_cmd_info)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
