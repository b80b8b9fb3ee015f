#!/usr/bin/env python3
"""Runs an nvcc command given --resource-usage and keeps ptxas's report of each kernel
(registers, shared memory, stack, spills, per target architecture) in a file beside the
object, while every other line nvcc prints (warnings, errors) still goes to stderr.

tests/cuda/test_cuda_resources reads these files: a kernel's registers decide whether a
block of its size can be launched at all on the GPU, which nothing else here can check
without one.

Usage: nvcc_ptxas.py REPORT.txt -- NVCC ARGS...
"""
import subprocess
import sys


def ptxas_line(line):
    # "ptxas info    : ..." and the indented "N bytes stack frame, ..." line under a
    # function's properties
    return line.startswith('ptxas info') or line.strip().endswith('bytes spill loads')


def main():
    if len(sys.argv) < 4 or sys.argv[2] != '--':
        sys.exit(__doc__)
    run = subprocess.run(sys.argv[3:], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True)
    keep = []
    for line in run.stdout.splitlines(keepends=True):
        if ptxas_line(line):
            keep.append(line)
        else:
            sys.stderr.write(line)
    if run.returncode == 0:
        with open(sys.argv[1], 'w') as f:
            f.writelines(keep)
    return run.returncode


if __name__ == '__main__':
    sys.exit(main())
