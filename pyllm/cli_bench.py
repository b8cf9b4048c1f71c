"""``pyllm bench [kernels|train|sample|all] [--quick] [--threads N] [--json FILE]
[--compare OLD.json [--new NEW.json]]``: the benchmarks of :mod:`pyllm.bench` from the installed
package (no source checkout needed)."""
import argparse
import os
import sys

PARTS = ("kernels", "train", "sample")


def _part(text):
    """argparse type of a part name: kernels, train, sample or all."""
    name = text.strip().lower()
    if name not in PARTS + ("all",):
        raise argparse.ArgumentTypeError("invalid choice: %r (choose from kernels, train, sample, "
                                         "all)" % text)
    return name


def add_parser(sub, thread_count):
    """Register ``bench`` on the sub-command set ``sub``; ``thread_count`` is the CLI's --threads
    type (an int from 1)."""
    b = sub.add_parser(
        "bench", help="benchmark the kernels, training and sampling: C vs NumPy (and PyTorch "
        "when importable), with the machine it ran on",
        description="Benchmark this installation: the kernel table (C vs NumPy, each C kernel "
        "on 1 thread and on N), training tokens/s (C vs NumPy, and PyTorch when importable) and "
        "sampling tokens/s; medians (min-max) of alternating rounds. A full run takes about 2-3 "
        "minutes on two cores, --quick under 30 s. The JSON schema is in pyllm/bench.py.")
    b.add_argument("parts", nargs="*", type=_part, metavar="PART",
                   help="kernels, train, sample or all (default: all)")
    b.add_argument("--quick", action="store_true",
                   help="small shapes and few rounds (CI; under 30 s)")
    b.add_argument("--threads", type=thread_count, default=None, metavar="N",
                   help="C threads (default: all this process may use); the kernel table also "
                   "times every C kernel on 1 thread, for the 1-to-N speed-up")
    b.add_argument("--json", default=None, metavar="FILE",
                   help="write the figures and the machine block to FILE")
    b.add_argument("--compare", default=None, metavar="OLD.json",
                   help="print the new/old ratio of every row also in this earlier --json file")
    b.add_argument("--new", default=None, metavar="NEW.json",
                   help="with --compare: compare this saved run instead of running the "
                   "benchmarks")
    b.set_defaults(backend=None)  # the CLI's shared backend setup: benchmarks use both backends


def _error(msg):
    print("error: %s" % msg, file=sys.stderr)
    return 2


def _check_output_path(path):
    """Why ``path`` cannot be written (checked before minutes of measuring), or None."""
    if os.path.isdir(path):
        return "--json %s is a directory" % path
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        return "--json %s: the directory %s does not exist" % (path, parent)
    if not os.access(parent, os.W_OK):
        return "--json %s: the directory %s is not writable" % (path, parent)
    return None


def cmd_bench(args):
    from . import bench
    parts = []
    for p in args.parts or ["all"]:
        for q in (PARTS if p == "all" else (p,)):
            if q not in parts:
                parts.append(q)
    parts.sort(key=PARTS.index)
    if args.new is not None:
        if args.compare is None:
            return _error("--new goes with --compare (it names the newer of two saved runs)")
        if args.json is not None or args.parts or args.quick or args.threads is not None:
            return _error("--compare with --new compares two saved runs and measures nothing: "
                          "leave out the parts, --quick, --threads and --json")
    old = new = None
    try:  # read the files first: an unreadable one is an error now, not after minutes
        if args.compare is not None:
            old = bench.load_result(args.compare)
        if args.new is not None:
            new = bench.load_result(args.new)
    except ValueError as exc:
        return _error("--%s: %s" % ("compare" if old is None else "new", exc))
    if args.json is not None:
        why = _check_output_path(args.json)
        if why:
            return _error(why)
    if new is None:
        argv = ["bench"] + list(args.parts) + ["--quick"] * args.quick
        argv += ["--threads", str(args.threads)] if args.threads is not None else []
        new = bench.run_parts(parts, quick=args.quick, threads=args.threads, argv=argv)
        if args.json is not None:
            bench.write_result(new, args.json)
            print("\nwrote %s (%d rows)" % (args.json, len(new["rows"])))
    if old is not None:
        print()
        bench.compare(new, old, old_name=args.compare)
    return 0
