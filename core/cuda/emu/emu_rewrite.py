#!/usr/bin/env python3
"""Turns a core/cuda .cu file into C++ the CUDA emulator compiles (see cuda_emu.h):

  k<<<grid, block[, smem[, stream]]>>>(args)  ->  qft_emu::make_launcher(k, grid, block...)(args)
  extern __shared__ [__align__(n)] T name[];   ->  T *name = (T *)qft_emu::dyn_smem();

and a launch of a kernel this file declares with __launch_bounds__(N, ...) gets
.bounded(N) before its arguments, so that a block of more than N threads is refused as a
GPU refuses it. Everything else is left as it is. A '#line 1' keeps compiler messages on the .cu file's lines.
Usage: emu_rewrite.py IN.cu OUT.cc
"""
import re
import sys

# a kernel name, optionally a template-id without nested angle brackets
LAUNCH = re.compile(r'([A-Za-z_]\w*(?:\s*<[^<>;(){}]*>)?)\s*<<<(.*?)>>>\s*\(', re.S)
# __launch_bounds__(N[, ...]) then the kernel's name (templates: the name before the '(')
BOUNDS = re.compile(r'__launch_bounds__\(\s*([^,()]+(?:\([^()]*\))?[^,()]*)(?:,[^()]*)?\)\s*(\w+)\s*\(')
DYN_SMEM = re.compile(r'extern\s+__shared__\s+(?:__align__\(\s*\d+\s*\)\s+)?([\w:]+)\s+(\w+)\s*\[\s*\]\s*;')


def launch(m, bounds):
    name = m.group(1)
    bound = bounds.get(re.sub(r'\s*<.*', '', name, flags=re.S))
    return 'qft_emu::make_launcher(%s, %s)%s(' % (name, m.group(2), '.bounded(%s)' % bound if bound else '')


def rewrite(src):
    bounds = {m.group(2): m.group(1).strip() for m in BOUNDS.finditer(src)}
    src = DYN_SMEM.sub(r'\1 *\2 = (\1 *)qft_emu::dyn_smem();', src)
    src = LAUNCH.sub(lambda m: launch(m, bounds), src)
    if '<<<' in src:
        sys.exit('emu_rewrite.py: a launch it cannot rewrite is left: ' +
                 src[src.index('<<<') - 60:src.index('<<<') + 40])
    return src


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    with open(sys.argv[1]) as f:
        src = f.read()
    out = '#line 1 "%s"\n' % sys.argv[1] + rewrite(src)
    with open(sys.argv[2], 'w') as f:
        f.write(out)


if __name__ == '__main__':
    main()
