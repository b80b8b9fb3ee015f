#!/usr/bin/env python3
"""Turns a core/cuda .cu file into C++ the CUDA emulator compiles (see cuda_emu.h):

  k<<<grid, block[, smem[, stream]]>>>(args)  ->  qft_emu::make_launcher(k, grid, block...)(args)
  extern __shared__ [__align__(n)] T name[];   ->  T *name = (T *)qft_emu::dyn_smem();

Everything else is left as it is. A '#line 1' keeps compiler messages on the .cu file's lines.
Usage: emu_rewrite.py IN.cu OUT.cc
"""
import re
import sys

# a kernel name, optionally a template-id without nested angle brackets
LAUNCH = re.compile(r'([A-Za-z_]\w*(?:\s*<[^<>;(){}]*>)?)\s*<<<(.*?)>>>\s*\(', re.S)
DYN_SMEM = re.compile(r'extern\s+__shared__\s+(?:__align__\(\s*\d+\s*\)\s+)?([\w:]+)\s+(\w+)\s*\[\s*\]\s*;')


def rewrite(src):
    src, n_dyn = DYN_SMEM.subn(r'\1 *\2 = (\1 *)qft_emu::dyn_smem();', src)
    src, n_launch = LAUNCH.subn(lambda m: 'qft_emu::make_launcher(%s, %s)(' % (m.group(1), m.group(2)), src)
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
