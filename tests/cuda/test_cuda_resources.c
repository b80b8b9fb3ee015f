/* Every CUDA kernel can be launched on the GPU at all: the registers ptxas gave it fit the
 * blocks it may be launched with.
 *
 * A block needs its warps' registers at once (a thread's count rounded up to 8, times 32
 * per warp) out of the 65536 a block may hold on every GPU since sm_50; a launch that asks
 * for more fails with "too many resources requested for launch", which no emulator or CPU
 * run can show. A kernel declared with __launch_bounds__(N) is compiled to fit N threads
 * (ptxas spills rather than exceed it; the emulator refuses a launch past N). A kernel
 * without it may be launched with up to 1024 threads as far as the compiler knows, so it
 * must stay within 64 registers, or say its block size. Nor may a kernel keep more in local
 * memory than its spills, rounded up to 8 bytes (an array indexed at run time because a loop over it is not
 * unrolled: a load and a store per use, where registers were meant) unless a comment
 * "ptxas: local memory" just above it says why. The build keeps ptxas's report of
 * each .cu file (core/cuda/nvcc_ptxas.py, nvcc --resource-usage, for every target
 * architecture); this test reads those reports and the sources:
 *   - test_parse_control: the parser and the rule on written-out reports (a kernel of 70
 *     registers without bounds is a violation; with bounds, or at 64, it is not; a frame
 *     beyond the spills is one unless its reason is given; a
 *     template's instantiations and a kernel outside a namespace are named right);
 *   - test_built_kernels: every kernel the sources define appears in its file's report for
 *     every architecture there (so a change in ptxas's wording cannot make the rule pass
 *     by parsing nothing), every reported kernel is one the sources define, and none breaks
 *     the rule. It prints each kernel's registers, spills, stack and shared memory.
 * Usage: test_cuda_resources SRC_DIR REPORT.ptxas.txt... */
#include <check.h>
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { NAME_MAX_ = 128, ARCH_MAX_ = 16, MAX_KERNELS = 512, BLOCK_REGS = 65536 };

typedef struct {
    char name[NAME_MAX_]; // the kernel's own name, without namespaces or template arguments
    char targs[64];       // its template arguments, "<8>", or ""
    char arch[ARCH_MAX_]; // "sm_90"
    int regs, smem, stack, spill_stores;
} kernel_use;

/* The words a comment above a kernel says its local memory is meant with. */
#define LOCAL_OK "ptxas: local memory"

typedef struct {
    char name[NAME_MAX_];
    int bounded;  // declared with __launch_bounds__
    int local_ok; // a comment "ptxas: local memory" in the 4 lines above says why it has some
    int line;
} src_kernel;

static int src_argc;
static char **src_argv;

/* A template's arguments as written, when each is an integer or bool literal, a builtin
 * type or a plain class name ("ILi8ELb1EE" is "<8, true>", "I13__nv_bfloat16E" is
 * "<__nv_bfloat16>"); the first characters of its mangled form otherwise, or "" for no
 * template. */
static void template_args(const char *p, char *out, size_t n) {
    static const char *const builtin[][2] = {{"f", "float"}, {"d", "double"}, {"i", "int"},
                                             {"j", "unsigned"}, {"b", "bool"}, {"l", "long"}};
    out[0] = 0;
    if (*p != 'I') return;
    char buf[96] = "<";
    const char *q = p + 1;
    while (*q && *q != 'E' && strlen(buf) < sizeof buf - 40) {
        char item[40] = "";
        char *end;
        if (*q == 'L' && q[1] && strchr("ijlmb", q[1])) { // a literal
            const int neg = q[2] == 'n';
            const long v = strtol(q + 2 + neg, &end, 10);
            if (*end != 'E' || end == q + 2 + neg) break;
            if (q[1] == 'b') snprintf(item, sizeof item, "%s", v ? "true" : "false");
            else snprintf(item, sizeof item, "%ld", neg ? -v : v);
            q = end + 1;
        } else if (isdigit((unsigned char)*q)) { // a class by its name
            const unsigned long len = strtoul(q, &end, 10);
            if (len >= sizeof item || strlen(end) < len) break;
            snprintf(item, sizeof item, "%.*s", (int)len, end);
            q = end + len;
        } else {
            size_t k = 0;
            while (k < sizeof builtin / sizeof builtin[0] && *q != builtin[k][0][0]) k++;
            if (k == sizeof builtin / sizeof builtin[0]) break;
            snprintf(item, sizeof item, "%s", builtin[k][1]);
            q++;
        }
        const size_t at = strlen(buf);
        snprintf(buf + at, sizeof buf - at, "%s%s", at > 1 ? ", " : "", item);
    }
    if (*q == 'E' && q > p + 1) snprintf(out, n, "%s>", buf);
    else snprintf(out, n, "%.24s", p); // not decoded: as mangled
}

/* The kernel's own name out of an Itanium-mangled one: "_Z14add_kernelPf" or
 * "_ZN<ns>...<name>I...E..." (the last length-prefixed component of a nested name), and
 * its template arguments (template_args) into targs. 0 when found. */
static int mangled_base(const char *m, char *name, size_t n, char *targs, size_t tn) {
    if (strncmp(m, "_Z", 2) != 0) return -1;
    const char *p = m + 2;
    const int nested = *p == 'N';
    if (nested) p++;
    const char *last = NULL;
    size_t last_len = 0;
    while (isdigit((unsigned char)*p)) {
        char *end;
        const size_t len = strtoul(p, &end, 10);
        if (strlen(end) < len) return -1;
        last = end, last_len = len;
        p = end + len;
        if (!nested) break;
    }
    if (!last || last_len == 0 || last_len >= n) return -1;
    memcpy(name, last, last_len);
    name[last_len] = 0;
    template_args(last + last_len, targs, tn);
    return 0;
}

/* ptxas's report (the lines nvcc_ptxas.py keeps) into out; the number of entry functions,
 * or -1 when one of them lacks its stack frame's line or its "Used N registers" line. */
static int ptxas_parse(const char *text, kernel_use *out, int max) {
    int n = 0, open = 0; // open: an entry function whose register line is still to come
    int own = 0;         // the properties being read are the open entry function's
    int framed = 0;      // its stack frame's line was read
    char cur[768] = "";
    for (const char *line = text; *line;) {
        const char *eol = strchr(line, '\n');
        const size_t len = eol ? (size_t)(eol - line) : strlen(line);
        char buf[1024];
        snprintf(buf, sizeof buf, "%.*s", (int)(len < sizeof buf - 1 ? len : sizeof buf - 1), line);
        char mangled[768], arch[ARCH_MAX_];
        int a, b;
        const char *used = strstr(buf, "Used ");
        if (sscanf(buf, "ptxas info : Compiling entry function '%767[^']' for '%15[^']'", mangled,
                   arch) == 2) {
            if (open || n == max) return -1;
            kernel_use *k = &out[n];
            memset(k, 0, sizeof *k);
            if (mangled_base(mangled, k->name, sizeof k->name, k->targs, sizeof k->targs))
                return -1;
            snprintf(k->arch, sizeof k->arch, "%s", arch);
            snprintf(cur, sizeof cur, "%s", mangled);
            open = 1, own = 0, framed = 0;
        } else if (sscanf(buf, "ptxas info : Function properties for %767s", mangled) == 1) {
            // a device function's frame may be reported among its caller's lines
            own = open && !strcmp(mangled, cur);
        } else if (own && sscanf(buf, " %d bytes stack frame, %d bytes spill stores", &a, &b) == 2) {
            out[n].stack = a, out[n].spill_stores = b, framed = 1;
        } else if (open && used && sscanf(used, "Used %d registers", &a) == 1) {
            if (!framed) return -1;
            out[n].regs = a;
            const char *s = strstr(used, " bytes smem");
            if (s) {
                while (s > used && isdigit((unsigned char)s[-1])) s--;
                out[n].smem = atoi(s);
            }
            n++, open = 0;
        }
        line += len + (eol ? 1 : 0);
    }
    return open ? -1 : n;
}

/* The kernels a .cu source defines: each `__global__` (comments skipped) up to the name
 * before its parameter list, noting a __launch_bounds__ on the way. Their number. */
static int source_kernels(const char *src, src_kernel *out, int max) {
    char *s = strdup(src);
    // comments to spaces (newlines kept, for line numbers)
    for (char *p = s; *p; p++) {
        if (p[0] == '/' && p[1] == '/')
            while (*p && *p != '\n') *p++ = ' ';
        else if (p[0] == '/' && p[1] == '*') {
            char *e = strstr(p + 2, "*/");
            char *stop = e ? e + 2 : p + strlen(p);
            for (; p < stop; p++)
                if (*p != '\n') *p = ' ';
        }
        if (!*p) break;
    }
    int n = 0;
    for (char *g = strstr(s, "__global__"); g && n < max; g = strstr(g + 1, "__global__")) {
        src_kernel *k = &out[n];
        memset(k, 0, sizeof *k);
        k->line = 1;
        for (const char *q = s; q < g; q++) k->line += *q == '\n';
        // the comment above it (from the source itself: the copy lost its comments)
        const size_t off = (size_t)(g - s);
        size_t from = off;
        for (int nl = 0; from > 0 && nl < 5; from--) nl += src[from - 1] == '\n';
        char above[2048];
        snprintf(above, sizeof above, "%.*s", (int)(off - from), src + from);
        k->local_ok = strstr(above, LOCAL_OK) != NULL;
        const char *p = g + strlen("__global__");
        for (;;) {
            const char *paren = strchr(p, '(');
            if (!paren) break;
            const char *e = paren;
            while (e > p && isspace((unsigned char)e[-1])) e--;
            const char *b = e;
            while (b > p && (isalnum((unsigned char)b[-1]) || b[-1] == '_')) b--;
            if ((size_t)(e - b) == strlen("__launch_bounds__") &&
                !strncmp(b, "__launch_bounds__", (size_t)(e - b))) {
                k->bounded = 1;
                int depth = 0; // past the bounds' own parentheses
                for (p = paren; *p; p++) {
                    depth += (*p == '(') - (*p == ')');
                    if (depth == 0) break;
                }
                continue;
            }
            snprintf(k->name, sizeof k->name, "%.*s", (int)(e - b), b);
            break;
        }
        if (k->name[0]) n++;
    }
    free(s);
    return n;
}

/* The source kernel of that name among ks, NULL when none. */
static const src_kernel *kernel_named(const src_kernel *ks, int nk, const char *name) {
    for (int j = 0; j < nk; j++)
        if (!strcmp(ks[j].name, name)) return &ks[j];
    return NULL;
}

/* The most threads a block of a kernel using `regs` registers a thread can have. */
static int max_block_threads(int regs) {
    const int per_warp = (regs + 7) / 8 * 8 * 32;
    const int t = BLOCK_REGS / per_warp * 32;
    return t > 1024 ? 1024 : t;
}

/* The rule's violations among uses against a file's kernels, each described into why
 * (appended); their number. */
static int rule_violations(const char *file, const src_kernel *ks, int nk, const kernel_use *us,
                           int nu, char *why, size_t why_len) {
    int bad = 0;
    for (int i = 0; i < nu; i++) {
        const src_kernel *k = kernel_named(ks, nk, us[i].name);
        if (!k) continue;
        const size_t at = strlen(why);
        if (!k->bounded && us[i].regs > 64) {
            snprintf(why + at, why_len - at,
                     "%s:%d: %s uses %d registers a thread on %s and has no __launch_bounds__: "
                     "a block of more than %d threads would not launch (declare the block size "
                     "it is launched with)\n",
                     file, k->line, k->name, us[i].regs, us[i].arch,
                     max_block_threads(us[i].regs));
            bad++;
        } else if (us[i].stack > (us[i].spill_stores + 7) / 8 * 8 && !k->local_ok) {
            snprintf(why + at, why_len - at,
                     "%s:%d: %s keeps %d bytes in local memory on %s beyond its %d bytes of "
                     "spills (rounded up to 8): an array indexed at run time (unroll the loops over it), or say "
                     "why in a comment '" LOCAL_OK "' just above the kernel\n",
                     file, k->line, k->name, us[i].stack, us[i].arch, us[i].spill_stores);
            bad++;
        }
    }
    return bad;
}

static char *read_file(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    const long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = n >= 0 ? malloc((size_t)n + 1) : NULL;
    if (b && fread(b, 1, (size_t)n, f) != (size_t)n) {
        free(b);
        b = NULL;
    }
    if (b) b[n] = 0;
    fclose(f);
    return b;
}

static const char control_src[] =
    "// __global__ void commented_out(int *p)\n"
    "static __global__ void plain(float *x) {}\n"
    "/* __global__ void also_out(int) */\n"
    "template <int N> __global__ void __launch_bounds__(N * (32 / 2)) tiled(int a) {}\n"
    "// ptxas: local memory, for the test's own reason\n"
    "static __global__ void small(float *x) {}\n";
static const char control_report[] =
    "ptxas info    : 0 bytes gmem\n"
    "ptxas info    : Compiling entry function '_Z5plainPf' for 'sm_90'\n"
    "ptxas info    : Function properties for _Z5plainPf\n"
    "    16 bytes stack frame, 4 bytes spill stores, 4 bytes spill loads\n"
    "ptxas info    : Used 70 registers, used 1 barriers, 2048 bytes smem, 400 bytes cmem[0]\n"
    "ptxas info    : Compiling entry function "
    "'_ZN53_GLOBAL__N__3b67aab1_20_cuda_attention_tc_cu_ca33ad3b5tiledILi8EEEvi' for 'sm_90'\n"
    "ptxas info    : Function properties for "
    "_ZN53_GLOBAL__N__3b67aab1_20_cuda_attention_tc_cu_ca33ad3b5tiledILi8EEEvi\n"
    "    24 bytes stack frame, 20 bytes spill stores, 20 bytes spill loads\n"
    "ptxas info    : Function properties for __internal_helper\n"
    "    96 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n"
    "ptxas info    : Used 255 registers, used 1 barriers\n"
    "ptxas info    : Compiling entry function '_Z5smallPf' for 'sm_80'\n"
    "ptxas info    : Function properties for _Z5smallPf\n"
    "    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n"
    "ptxas info    : Used 64 registers\n"
    "ptxas info    : Function properties for __internal_trig_reduction_slowpathd\n"
    "    40 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n";

START_TEST(test_parse_control) {
    src_kernel ks[8];
    ck_assert_int_eq(source_kernels(control_src, ks, 8), 3);
    ck_assert_str_eq(ks[0].name, "plain");
    ck_assert_int_eq(ks[0].bounded, 0);
    ck_assert_int_eq(ks[0].line, 2);
    ck_assert_str_eq(ks[1].name, "tiled");
    ck_assert_int_eq(ks[1].bounded, 1);
    ck_assert_str_eq(ks[2].name, "small");
    ck_assert_int_eq(ks[0].local_ok + ks[1].local_ok, 0);
    ck_assert_int_eq(ks[2].local_ok, 1);

    kernel_use us[8];
    ck_assert_int_eq(ptxas_parse(control_report, us, 8), 3);
    ck_assert_str_eq(us[0].name, "plain");
    ck_assert_str_eq(us[0].arch, "sm_90");
    ck_assert_int_eq(us[0].regs, 70);
    ck_assert_int_eq(us[0].smem, 2048);
    ck_assert_int_eq(us[0].stack, 16);
    ck_assert_int_eq(us[0].spill_stores, 4);
    ck_assert_str_eq(us[0].targs, "");
    ck_assert_str_eq(us[1].name, "tiled");
    ck_assert_str_eq(us[1].targs, "<8>");
    ck_assert_int_eq(us[1].regs, 255);
    ck_assert_int_eq(us[1].stack, 24); // not the helper's frame, reported among its lines
    ck_assert_str_eq(us[2].name, "small");
    ck_assert_str_eq(us[2].arch, "sm_80");
    ck_assert_int_eq(us[2].regs, 64);
    ck_assert_int_eq(us[2].stack, 0); // nor the frame reported after its last line

    char nm[NAME_MAX_], ta[64];
    ck_assert_int_eq(mangled_base("_ZN12_GLOBAL__N_113onchip_kernelILb1ELb0EEEv8packed_w", nm,
                                  sizeof nm, ta, sizeof ta),
                     0);
    ck_assert_str_eq(nm, "onchip_kernel");
    ck_assert_str_eq(ta, "<true, false>");
    ck_assert_int_eq(mangled_base("_Z18hqq_dequant_kernelIfEvPf", nm, sizeof nm, ta, sizeof ta), 0);
    ck_assert_str_eq(nm, "hqq_dequant_kernel");
    ck_assert_str_eq(ta, "<float>");
    ck_assert_int_eq(mangled_base("_Z1kI13__nv_bfloat16EvPS0_", nm, sizeof nm, ta, sizeof ta), 0);
    ck_assert_str_eq(ta, "<__nv_bfloat16>");
    ck_assert_int_eq(mangled_base("_Z1kIPfEvv", nm, sizeof nm, ta, sizeof ta), 0);
    ck_assert_str_eq(ta, "IPfEvv"); // a pointer type: left mangled
    ck_assert_int_eq(mangled_base("_Z3fooILin2EEvv", nm, sizeof nm, ta, sizeof ta), 0);
    ck_assert_str_eq(ta, "<-2>");
    ck_assert_int_ne(mangled_base("foo", nm, sizeof nm, ta, sizeof ta), 0);

    // 70 registers unbounded: one violation, at plain's line, with its largest block
    char why[2048] = "";
    ck_assert_int_eq(rule_violations("x.cu", ks, 3, us, 3, why, sizeof why), 1);
    ck_assert_ptr_nonnull(strstr(why, "x.cu:2: plain uses 70 registers"));
    ck_assert_ptr_nonnull(strstr(why, "more than 896 threads"));
    // bounded, its 16-byte frame beyond 4 bytes of spills (8, rounded) is one (an array in
    // local memory); tiled's 24 bytes for 20 of spills are not
    ks[0].bounded = 1;
    why[0] = 0;
    ck_assert_int_eq(rule_violations("x.cu", ks, 3, us, 3, why, sizeof why), 1);
    ck_assert_ptr_nonnull(strstr(why, "plain keeps 16 bytes in local memory on sm_90 beyond its 4"));
    // with its reason given, none
    ks[0].local_ok = 1;
    why[0] = 0;
    ck_assert_int_eq(rule_violations("x.cu", ks, 3, us, 3, why, sizeof why), 0);
    ck_assert_int_eq(max_block_threads(64), 1024);
    ck_assert_int_eq(max_block_threads(65), 896);
    ck_assert_int_eq(max_block_threads(128), 512);
    ck_assert_int_eq(max_block_threads(255), 256);

    // a register line or a frame line missing: the report is refused rather than read short
    ck_assert_int_eq(ptxas_parse("ptxas info    : Compiling entry function '_Z1fv' for 'sm_90'\n"
                                 "ptxas info    : Function properties for _Z1fv\n"
                                 "    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n",
                                 us, 8),
                     -1);
    ck_assert_int_eq(ptxas_parse("ptxas info    : Compiling entry function '_Z1fv' for 'sm_90'\n"
                                 "ptxas info    : Used 8 registers\n",
                                 us, 8),
                     -1);
}
END_TEST

START_TEST(test_built_kernels) {
    ck_assert_msg(src_argc >= 2, "usage: test_cuda_resources SRC_DIR REPORT.ptxas.txt...");
    const char *dir = src_argv[0];
    int total = 0, failures = 0;
    char why[16384] = "";
    printf("| file | kernel | arch | registers | spill stores (bytes) | stack frame (bytes) | static "
           "shared (bytes) | bounded |\n|---|---|---|---|---|---|---|---|\n");
    for (int f = 1; f < src_argc; f++) {
        const char *report = src_argv[f];
        const char *base = strrchr(report, '/');
        base = base ? base + 1 : report;
        const char *suffix = strstr(base, ".ptxas.txt");
        ck_assert_msg(suffix != NULL, "%s: not a .ptxas.txt report", report);
        char src_path[4096];
        snprintf(src_path, sizeof src_path, "%s/%.*s.cu", dir, (int)(suffix - base), base);
        char *src = read_file(src_path), *text = read_file(report);
        ck_assert_msg(src != NULL, "%s: cannot read", src_path);
        ck_assert_msg(text != NULL, "%s: cannot read", report);
        static src_kernel ks[MAX_KERNELS];
        static kernel_use us[MAX_KERNELS];
        const int nk = source_kernels(src, ks, MAX_KERNELS);
        const int nu = ptxas_parse(text, us, MAX_KERNELS);
        ck_assert_msg(nu >= 0, "%s: an entry function without its frame or register line", report);
        // the architectures the report covers: each source kernel in each
        char arches[8][ARCH_MAX_];
        int na = 0;
        for (int i = 0; i < nu; i++) {
            int seen = 0;
            for (int a = 0; a < na; a++) seen |= !strcmp(arches[a], us[i].arch);
            if (!seen && na < 8) snprintf(arches[na++], ARCH_MAX_, "%s", us[i].arch);
        }
        ck_assert_msg(nk == 0 || na > 0, "%s: %d kernels in the source, none in ptxas's report",
                      report, nk);
        for (int j = 0; j < nk; j++)
            for (int a = 0; a < na; a++) {
                int found = 0;
                for (int i = 0; i < nu; i++)
                    found |= !strcmp(us[i].name, ks[j].name) && !strcmp(us[i].arch, arches[a]);
                ck_assert_msg(found, "%s:%d: kernel %s is not in ptxas's report for %s (%s)",
                              src_path, ks[j].line, ks[j].name, arches[a], report);
            }
        for (int i = 0; i < nu; i++) {
            const src_kernel *k = kernel_named(ks, nk, us[i].name);
            ck_assert_msg(k != NULL, "%s: reported kernel %s is not one %s defines", report,
                          us[i].name, src_path);
            printf("| %.*s | %s%s | %s | %d | %d | %d | %d | %s |\n", (int)(suffix - base), base,
                   us[i].name, us[i].targs, us[i].arch, us[i].regs, us[i].spill_stores, us[i].stack,
                   us[i].smem, k->bounded ? "yes" : "no");
        }
        total += nu;
        failures += rule_violations(src_path, ks, nk, us, nu, why, sizeof why);
        free(src);
        free(text);
    }
    printf("%d kernel instantiations in %d reports\n", total, src_argc - 1);
    ck_assert_msg(total > 0, "no kernel in any report");
    ck_assert_msg(failures == 0, "%d kernels may not launch:\n%s", failures, why);
}
END_TEST

int main(int argc, char **argv) {
    src_argc = argc - 1, src_argv = argv + 1;
    Suite *s = suite_create("cuda_resources");
    TCase *tc = tcase_create("resources");
    tcase_add_test(tc, test_parse_control);
    tcase_add_test(tc, test_built_kernels);
    suite_add_tcase(s, tc);
    SRunner *r = srunner_create(s);
    srunner_set_fork_status(r, CK_NOFORK);
    srunner_run_all(r, CK_NORMAL);
    const int failed = srunner_ntests_failed(r);
    srunner_free(r);
    return failed ? 1 : 0;
}
