/* Templates of the synth_math generator; see synth_math_gen.h. Numbers are drawn so that
 * every intermediate result is a positive integer: divisions are built from their
 * quotient, and subtractions from a smaller amount. */
#include "synth_math_gen.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

typedef struct gen {
    uint64_t state; /* splitmix64: one stream per problem, so problem i needs no other */
} gen;

static uint64_t next_u64(gen *g) {
    uint64_t z = (g->state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* Uniform in [lo, hi]; the modulo bias over 2^64 is far below anything a test could see. */
static long rint_in(gen *g, long lo, long hi) {
    if (hi <= lo) return lo;
    return lo + (long)(next_u64(g) % (uint64_t)(hi - lo + 1));
}

static const char *pick(gen *g, const char *const *list, int n) { return list[rint_in(g, 0, n - 1)]; }

static const char *const k_names[] = {"Mia", "Noah", "Ava", "Liam", "Zoe", "Omar", "Lena",
                                      "Ravi", "Sofia", "Kenji", "Amara", "Diego", "Priya", "Tom"};
#define N_NAMES ((int)(sizeof k_names / sizeof k_names[0]))

typedef struct text {
    char *buf;
    size_t cap, len;
    int overflow;
} text;

static void put(text *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(text *t, const char *fmt, ...) {
    if (t->overflow) return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(t->buf + t->len, t->cap - t->len, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= t->cap - t->len)
        t->overflow = 1;
    else
        t->len += (size_t)n;
}

typedef struct ctx {
    gen g;
    text q, s;
    qft_synth_math_problem *pr;
} ctx;

static void params(ctx *c, int n, ...) {
    va_list ap;
    va_start(ap, n);
    for (int i = 0; i < n; i++) c->pr->p[i] = va_arg(ap, long);
    va_end(ap);
    c->pr->n_p = n;
}

static void finish(ctx *c, long answer) {
    c->pr->answer = answer;
    put(&c->s, "#### %ld", answer);
}

/* Two different names. */
static void two_names(ctx *c, const char **a, const char **b) {
    long i = rint_in(&c->g, 0, N_NAMES - 1);
    long j = rint_in(&c->g, 0, N_NAMES - 2);
    if (j >= i) j++;
    *a = k_names[i];
    *b = k_names[j];
}

static void t_shopping_change(ctx *c) {
    static const char *const items[] = {"apples", "notebooks", "toy cars", "mugs", "comic books",
                                        "packs of stickers", "tennis balls"};
    const char *name = pick(&c->g, k_names, N_NAMES), *item = pick(&c->g, items, 7);
    long a = rint_in(&c->g, 2, 9), price = rint_in(&c->g, 2, 12), cost = a * price;
    long bill = cost < 20 ? 20 : cost < 50 ? 50 : cost < 100 ? 100 : 200;
    long ans = bill - cost;
    params(c, 3, a, price, bill);
    put(&c->q, "%s buys %ld %s that cost $%ld each and pays with a $%ld bill. How much change, in "
               "dollars, does %s get back?", name, a, item, price, bill, name);
    put(&c->s, "The %s cost %ld × %ld = %ld dollars.\nThe change is %ld - %ld = %ld dollars.\n", item,
        a, price, cost, bill, cost, ans);
    finish(c, ans);
}

static void t_two_leg_trip(ctx *c) {
    static const char *const vehicles[] = {"car", "bus", "truck", "van"};
    const char *v_name = pick(&c->g, vehicles, 4);
    long v = rint_in(&c->g, 30, 70), h = rint_in(&c->g, 2, 6);
    long w = rint_in(&c->g, 20, 60), k = rint_in(&c->g, 1, 5);
    long d1 = v * h, d2 = w * k, ans = d1 + d2;
    params(c, 4, v, h, w, k);
    put(&c->q, "A %s drives at %ld miles per hour for %ld hours, then at %ld miles per hour for %ld "
               "hours. How many miles does it travel in all?", v_name, v, h, w, k);
    put(&c->s, "First part: %ld × %ld = %ld miles.\nSecond part: %ld × %ld = %ld miles.\nIn all: "
               "%ld + %ld = %ld miles.\n", v, h, d1, w, k, d2, d1, d2, ans);
    finish(c, ans);
}

static void t_equal_sharing(ctx *c) {
    static const char *const items[] = {"stickers", "marbles", "cards", "crayons", "shells", "beads"};
    const char *name = pick(&c->g, k_names, N_NAMES), *item = pick(&c->g, items, 6);
    long k = rint_in(&c->g, 2, 8), q = rint_in(&c->g, 4, 15), g = rint_in(&c->g, 1, q - 1);
    long n = k * q, ans = q - g;
    params(c, 3, n, k, g);
    put(&c->q, "%s has %ld %s and shares them equally among %ld friends. Each friend then gives %ld "
               "of them away. How many %s does each friend have now?", name, n, item, k, g, item);
    put(&c->s, "Each friend gets %ld ÷ %ld = %ld %s.\nAfter giving some away, each has %ld - %ld = "
               "%ld %s.\n", n, k, q, item, q, g, ans, item);
    finish(c, ans);
}

static void t_ages_sum_future(ctx *c) {
    const char *a_name, *b_name;
    two_names(c, &a_name, &b_name);
    long a = rint_in(&c->g, 5, 15), d = rint_in(&c->g, 2, 9), y = rint_in(&c->g, 2, 10);
    long b = a + d, s = a + b, t = y * 2, ans = s + t;
    params(c, 3, a, d, y);
    put(&c->q, "%s is %ld years old, and %s, %s's cousin, is %ld years older. What will the sum of "
               "their ages be in %ld years?", a_name, a, b_name, a_name, d, y);
    put(&c->s, "%s is %ld + %ld = %ld years old.\nTogether they are %ld + %ld = %ld years old now.\n"
               "Each of them gets older by the same amount, which adds %ld × 2 = %ld years.\n"
               "The sum will be %ld + %ld = %ld years.\n", b_name, a, d, b, a, b, s, y, t, s, t, ans);
    finish(c, ans);
}

static void t_ages_times(ctx *c) {
    static const char *const rel[] = {"mother", "father", "aunt", "uncle", "grandmother"};
    const char *name = pick(&c->g, k_names, N_NAMES), *who = pick(&c->g, rel, 5);
    long m = rint_in(&c->g, 2, 5), b = rint_in(&c->g, 6, 14), y = rint_in(&c->g, 1, 15);
    long a = m * b, ans = a + y;
    params(c, 3, m, b, y);
    put(&c->q, "%s's %s is %ld times as old as %s, who is %ld years old. How old will the %s be in "
               "%ld years?", name, who, m, name, b, who, y);
    put(&c->s, "The %s is %ld × %ld = %ld years old now.\nLater the %s will be %ld + %ld = %ld years "
               "old.\n", who, m, b, a, who, a, y, ans);
    finish(c, ans);
}

static void t_bakery(ctx *c) {
    static const char *const goods[] = {"loaves of bread", "muffins", "bagels", "pies", "rolls"};
    const char *good = pick(&c->g, goods, 5);
    long r = rint_in(&c->g, 12, 60), h = rint_in(&c->g, 4, 10), d = rint_in(&c->g, 2, 7);
    long x = r * h, ans = x * d;
    params(c, 3, r, h, d);
    put(&c->q, "A bakery makes %ld %s per hour and works %ld hours each day. How many %s does it "
               "make in %ld days?", r, good, h, good, d);
    put(&c->s, "Each day it makes %ld × %ld = %ld %s.\nOver all the days: %ld × %ld = %ld %s.\n", r,
        h, x, good, x, d, ans, good);
    finish(c, ans);
}

static void t_coupon(ctx *c) {
    const char *name = pick(&c->g, k_names, N_NAMES);
    long a = rint_in(&c->g, 2, 6), p = rint_in(&c->g, 3, 9), b = rint_in(&c->g, 2, 8);
    long q = rint_in(&c->g, 1, 4);
    long c1 = a * p, c2 = b * q, sum = c1 + c2;
    long off = rint_in(&c->g, 1, sum - 1 < 10 ? sum - 1 : 10), ans = sum - off;
    params(c, 5, a, p, b, q, off);
    put(&c->q, "%s buys %ld notebooks at $%ld each and %ld pens at $%ld each, then uses a coupon for "
               "$%ld off. How many dollars does %s pay?", name, a, p, b, q, off, name);
    put(&c->s, "The notebooks cost %ld × %ld = %ld dollars.\nThe pens cost %ld × %ld = %ld dollars.\n"
               "Before the coupon: %ld + %ld = %ld dollars.\nWith the coupon: %ld - %ld = %ld "
               "dollars.\n", a, p, c1, b, q, c2, c1, c2, sum, sum, off, ans);
    finish(c, ans);
}

static void t_savings(ctx *c) {
    static const char *const buys[] = {"a bicycle", "a guitar", "a tablet", "a tent", "skates"};
    const char *name = pick(&c->g, k_names, N_NAMES), *buy = pick(&c->g, buys, 5);
    long s = rint_in(&c->g, 5, 25), w = rint_in(&c->g, 4, 20), saved = s * w;
    long x = rint_in(&c->g, saved / 4, saved * 3 / 4), ans = saved - x;
    params(c, 3, s, w, x);
    put(&c->q, "%s saves $%ld every week. After %ld weeks, %s spends $%ld on %s. How many dollars "
               "are left?", name, s, w, name, x, buy);
    put(&c->s, "%s saved %ld × %ld = %ld dollars.\nWhat is left is %ld - %ld = %ld dollars.\n", name,
        s, w, saved, saved, x, ans);
    finish(c, ans);
}

static void t_boxes(ctx *c) {
    static const char *const goods[] = {"cookies", "cupcakes", "donuts", "candles", "soaps"};
    const char *good = pick(&c->g, goods, 5);
    long k = rint_in(&c->g, 4, 12), b = rint_in(&c->g, 3, 15), n = k * b, p = rint_in(&c->g, 2, 9);
    long ans = b * p;
    params(c, 3, n, k, p);
    put(&c->q, "A shop packs %ld %s into boxes of %ld and sells each box for $%ld. How many dollars "
               "does the shop make if it sells every box?", n, good, k, p);
    put(&c->s, "There are %ld ÷ %ld = %ld boxes.\nThey bring in %ld × %ld = %ld dollars.\n", n, k, b,
        b, p, ans);
    finish(c, ans);
}

static void t_fence(ctx *c) {
    long l = rint_in(&c->g, 5, 30), w = rint_in(&c->g, 3, 20), cost = rint_in(&c->g, 2, 9);
    long s = l + w, per = s * 2, ans = per * cost;
    params(c, 3, l, w, cost);
    put(&c->q, "A rectangular garden is %ld meters long and %ld meters wide. Fencing costs $%ld per "
               "meter. How many dollars does it cost to fence the whole garden?", l, w, cost);
    put(&c->s, "Half the perimeter is %ld + %ld = %ld meters.\nThe perimeter is %ld × 2 = %ld meters.\n"
               "The fence costs %ld × %ld = %ld dollars.\n", l, w, s, s, per, per, cost, ans);
    finish(c, ans);
}

static void t_reading(ctx *c) {
    const char *name = pick(&c->g, k_names, N_NAMES);
    long r = rint_in(&c->g, 8, 30), d = rint_in(&c->g, 2, 9), x = r * d;
    long n = x + rint_in(&c->g, 10, 200), ans = n - x;
    params(c, 3, n, r, d);
    put(&c->q, "A book has %ld pages. %s reads %ld pages a day for %ld days. How many pages are left "
               "to read?", n, name, r, d);
    put(&c->s, "%s has read %ld × %ld = %ld pages.\nPages left: %ld - %ld = %ld.\n", name, r, d, x, n,
        x, ans);
    finish(c, ans);
}

static void t_thirds(ctx *c) {
    const char *name = pick(&c->g, k_names, N_NAMES);
    long t = rint_in(&c->g, 4, 30), n = 3 * t, u = n - t;
    long lost = rint_in(&c->g, 1, u - 1 < 15 ? u - 1 : 15), ans = u - lost;
    params(c, 2, n, lost);
    put(&c->q, "%s had %ld marbles, gave a third of them to a friend, and then lost %ld more. How "
               "many marbles does %s have now?", name, n, lost, name);
    put(&c->s, "A third of the marbles is %ld ÷ 3 = %ld.\nAfter giving them away: %ld - %ld = %ld.\n"
               "After losing some: %ld - %ld = %ld.\n", n, t, n, t, u, u, lost, ans);
    finish(c, ans);
}

static void t_temperature(ctx *c) {
    long t = rint_in(&c->g, 40, 75), a = rint_in(&c->g, 3, 20), b = rint_in(&c->g, 5, 30);
    long up = t + a, ans = up - b;
    params(c, 3, t, a, b);
    put(&c->q, "The temperature at dawn was %ld degrees. By noon it had risen %ld degrees, and by "
               "midnight it had fallen %ld degrees from the noon reading. What was the temperature "
               "at midnight?", t, a, b);
    put(&c->s, "At noon it was %ld + %ld = %ld degrees.\nAt midnight it was %ld - %ld = %ld degrees.\n",
        t, a, up, up, b, ans);
    finish(c, ans);
}

static void t_split_difference(ctx *c) {
    const char *a_name, *b_name;
    two_names(c, &a_name, &b_name);
    long m = rint_in(&c->g, 10, 80), d = rint_in(&c->g, 2, 30), x = 2 * m + d, y = x - d;
    params(c, 2, x, d);
    put(&c->q, "%s and %s earned $%ld together. %s earned $%ld more than %s. How many dollars did "
               "%s earn?", a_name, b_name, x, a_name, d, b_name, b_name);
    put(&c->s, "Without the difference they earned %ld - %ld = %ld dollars.\nSplit evenly, %s earned "
               "%ld ÷ 2 = %ld dollars.\n", x, d, y, b_name, y, m);
    finish(c, m);
}

static void t_average(ctx *c) {
    const char *name = pick(&c->g, k_names, N_NAMES);
    long a = rint_in(&c->g, 60, 100), b = rint_in(&c->g, 60, 100), k = rint_in(&c->g, 60, 98);
    /* Move the third score up to the next total divisible by 3. */
    while ((a + b + k) % 3 != 0) k++;
    long s1 = a + b, s = s1 + k, ans = s / 3;
    params(c, 3, a, b, k);
    put(&c->q, "%s scored %ld, %ld and %ld on three tests. What is %s's average score?", name, a, b,
        k, name);
    put(&c->s, "The first two scores add up to %ld + %ld = %ld.\nAll three add up to %ld + %ld = %ld.\n"
               "The average is %ld ÷ 3 = %ld.\n", a, b, s1, s1, k, s, s, ans);
    finish(c, ans);
}

typedef struct tmpl {
    const char *name;
    void (*make)(ctx *c);
} tmpl;

static const tmpl k_templates[QFT_SYNTH_MATH_TEMPLATES] = {
    {"shopping_change", t_shopping_change}, {"two_leg_trip", t_two_leg_trip},
    {"equal_sharing", t_equal_sharing},     {"ages_sum_future", t_ages_sum_future},
    {"ages_times", t_ages_times},           {"bakery_rate", t_bakery},
    {"coupon", t_coupon},                   {"savings", t_savings},
    {"boxes", t_boxes},                     {"fence", t_fence},
    {"reading", t_reading},                 {"thirds", t_thirds},
    {"temperature", t_temperature},         {"split_difference", t_split_difference},
    {"average", t_average},
};

const char *qft_synth_math_template_name(int template_id) {
    if (template_id < 0 || template_id >= QFT_SYNTH_MATH_TEMPLATES) return "?";
    return k_templates[template_id].name;
}

int qft_synth_math_make(uint64_t seed, long index, qft_synth_math_problem *out) {
    memset(out, 0, sizeof *out);
    ctx c = {.pr = out};
    /* Mix seed and index through one splitmix step each, so neighbouring seeds or indices
     * give unrelated streams. */
    gen mix = {seed};
    uint64_t a = next_u64(&mix);
    mix.state = a ^ ((uint64_t)index * 0xd1342543de82ef95ULL);
    c.g.state = next_u64(&mix);
    c.q = (text){out->question, sizeof out->question, 0, 0};
    c.s = (text){out->solution, sizeof out->solution, 0, 0};
    out->template_id = (int)rint_in(&c.g, 0, QFT_SYNTH_MATH_TEMPLATES - 1);
    k_templates[out->template_id].make(&c);
    return c.q.overflow || c.s.overflow ? -1 : 0;
}
