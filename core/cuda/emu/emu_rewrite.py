#!/usr/bin/env python3
"""Turns a core/cuda .cu file into C++ the CUDA emulator compiles (see cuda_emu.h):

  k<<<grid, block[, smem[, stream]]>>>(args)  ->  qft_emu::make_launcher(k, grid, block...)(args)
  extern __shared__ [__align__(n)] T name[];   ->  T *name = (T *)qft_emu::dyn_smem();
  __shared__ [__align__(n)] T a[N][M], b;       ->  T (&a)[N][M] = *(T (*)[N][M])qft_emu::static_smem(
                                                       QFT_EMU_SITE, sizeof(T[N][M]), align); (b alike)

(static shared memory from the running block's own arena, one place per declaration, rather
than a function-static that every block would share: the race check runs blocks of a launch
unordered, and a static array would make neighbouring blocks look as if they raced on it),

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
# a static declaration: optional alignment, the element type, then declarators up to the ';'
STATIC_SMEM = re.compile(r'(?<![\w])__shared__\s+(?:__align__\(\s*(\d+)\s*\)\s+)?([\w:]+)\s+([^;{}]+);')
DECLARATOR = re.compile(r'\s*(\w+)\s*((?:\[[^\[\]]+\]\s*)*)$')


def split_top(decls):
    """The declarators of a declaration list, split at commas outside brackets."""
    out, depth, cur = [], 0, ''
    for ch in decls:
        depth += ch == '['
        depth -= ch == ']'
        if ch == ',' and depth == 0:
            out.append(cur)
            cur = ''
        else:
            cur += ch
    return out + [cur]


def static_smem(m):
    align, elem = m.group(1), m.group(2)
    out = []
    for d in split_top(m.group(3)):
        dm = DECLARATOR.match(d)
        if not dm:
            sys.exit('emu_rewrite.py: a __shared__ declarator it cannot rewrite: ' + d.strip())
        name, dims = dm.group(1), re.sub(r'\s+', '', dm.group(2))
        al = align or 'alignof(%s)' % elem
        if dims:
            out.append('%s (&%s)%s = *(%s (*)%s)qft_emu::static_smem(QFT_EMU_SITE, sizeof(%s%s), %s);'
                       % (elem, name, dims, elem, dims, elem, dims, al))
        else:
            out.append('%s &%s = *(%s *)qft_emu::static_smem(QFT_EMU_SITE, sizeof(%s), %s);'
                       % (elem, name, elem, elem, al))
    return ' '.join(out)


def launch(m, bounds):
    name = m.group(1)
    bound = bounds.get(re.sub(r'\s*<.*', '', name, flags=re.S))
    return 'qft_emu::make_launcher(%s, %s)%s(' % (name, m.group(2), '.bounded(%s)' % bound if bound else '')


def rewrite(src):
    bounds = {m.group(2): m.group(1).strip() for m in BOUNDS.finditer(src)}
    src = DYN_SMEM.sub(r'\1 *\2 = (\1 *)qft_emu::dyn_smem();', src)
    src = STATIC_SMEM.sub(static_smem, src)
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
