"""Where a train step's oneDNN time goes, from an ONEDNN_VERBOSE=1 log.

    ONEDNN_VERBOSE=1 ferpipe-bench --profile 3 > onednn.log
    python scripts/onednn_profile.py onednn.log [--batch 128]

Prints (1) the time by primitive kind, propagation and implementation over every call (the
implementation names the ISA: `avx10_1_512_amx` runs on the AMX tiles), and (2) the training
convolutions (minibatch `--batch`, i.e. the train step, not validation) by layer shape and pass,
with the TFLOP/s each reaches: 2 x mb x ic x oc x kh x kw x oh x ow FLOPs over its milliseconds.
"""

from __future__ import annotations

import argparse
import collections
import re

SHAPE = re.compile(r"mb(\d+)_ic(\d+)oc(\d+)_ih(\d+)oh(\d+)kh(\d+)sh(\d+)dh\d+ph\d+_iw(\d+)ow(\d+)kw(\d+)")


def exec_lines(path: str):
    """(kind, propagation, implementation, shape, ms) of each oneDNN primitive execution."""
    for line in open(path, errors="replace"):
        if not line.startswith("onednn_verbose") or ",exec," not in line:
            continue
        fields = line.rstrip().split(",")
        i = fields.index("exec")
        try:
            ms = float(fields[-1])
        except ValueError:
            continue
        yield fields[i + 2], fields[i + 4], fields[i + 3], fields[-2], ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("log")
    parser.add_argument("--batch", type=int, default=128, help="the train step's minibatch")
    args = parser.parse_args()
    by_impl: collections.Counter = collections.Counter()
    convs = collections.defaultdict(lambda: [0.0, 0, 0.0])
    for kind, prop, impl, shape, ms in exec_lines(args.log):
        by_impl[(kind, prop, impl)] += ms
        match = SHAPE.match(shape)
        if kind != "convolution" or not match:
            continue
        mb, ic, oc, ih, oh, kh, sh, iw, ow, kw = map(int, match.groups())
        if mb != args.batch:
            continue
        row = convs[(f"ic{ic} oc{oc} {ih}x{iw}->{oh}x{ow} k{kh} s{sh}", prop)]
        row[0] += ms
        row[1] += 1
        row[2] += 2 * mb * ic * oc * kh * kw * oh * ow
    total = sum(by_impl.values())
    print(f"oneDNN execution time, every call: {total:.0f} ms\n")
    print("| primitive | propagation | implementation | ms | share |\n|---|---|---|---|---|")
    for (kind, prop, impl), ms in by_impl.most_common(12):
        print(f"| {kind} | {prop} | {impl} | {ms:.0f} | {ms / total:.1%} |")
    conv_total = sum(row[0] for row in convs.values())
    print(f"\ntraining convolutions (minibatch {args.batch}): {conv_total:.0f} ms\n")
    print("| layer (channels, feature map, kernel, stride) | pass | calls | ms | share | TFLOP/s |")
    print("|---|---|---|---|---|---|")
    for (shape, prop), (ms, calls, flops) in sorted(convs.items(), key=lambda kv: -kv[1][0])[:16]:
        print(f"| {shape} | {prop} | {calls} | {ms:.0f} | {ms / conv_total:.1%} | "
              f"{flops / ms / 1e9:.2f} |")


if __name__ == "__main__":
    main()
