/* Checks shared by the synth_math tests: every "a op b = c" in a solution is right, each
 * solution line but the last holds exactly one such step, and the last line is
 * "#### <c of the last step>". Written apart from the generator, on the text alone. */
#ifndef QFT_TEST_SYNTH_MATH_CHECK_H
#define QFT_TEST_SYNTH_MATH_CHECK_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int smc_int(const char **s, long *v) {
    const char *p = *s;
    if (*p < '0' || *p > '9') return 0;
    long x = 0;
    while (*p >= '0' && *p <= '9') x = x * 10 + (*p++ - '0');
    *v = x;
    *s = p;
    return 1;
}

static void smc_spaces(const char **s) {
    while (**s == ' ') (*s)++;
}

/* Operator at *s: '+', '-', '*' for ×, '/' for ÷ (UTF-8 C3 97 and C3 B7); 0 if none. */
static char smc_op(const char **s) {
    const unsigned char *p = (const unsigned char *)*s;
    if (p[0] == '+' || p[0] == '-') {
        *s += 1;
        return (char)p[0];
    }
    if (p[0] == 0xC3 && p[1] == 0x97) {
        *s += 2;
        return '*';
    }
    if (p[0] == 0xC3 && p[1] == 0xB7) {
        *s += 2;
        return '/';
    }
    return 0;
}

/* Checks one solution; returns 0 when all is well, else writes why into why. */
static int smc_check_solution(const char *sol, long *final_answer, char *why, size_t why_n) {
    int lines = 1;
    for (const char *p = sol; *p; p++) lines += *p == '\n';
    const char *last = strrchr(sol, '\n');
    if (!last || strncmp(last + 1, "#### ", 5) != 0) {
        snprintf(why, why_n, "last line is not \"#### N\"");
        return -1;
    }
    const char *q = last + 6;
    long fin;
    if (!smc_int(&q, &fin) || *q != 0) {
        snprintf(why, why_n, "last line is not \"#### N\"");
        return -1;
    }
    int steps = 0, line = 0, steps_on_line = 0;
    long last_c = -1;
    for (const char *p = sol; p < last + 1; p++) {
        if (*p == '\n') {
            if (steps_on_line != 1) {
                snprintf(why, why_n, "line %d has %d steps", line + 1, steps_on_line);
                return -1;
            }
            line++;
            steps_on_line = 0;
            continue;
        }
        if (*p < '0' || *p > '9' || (p > sol && p[-1] >= '0' && p[-1] <= '9')) continue;
        const char *s = p;
        long a, b, c;
        if (!smc_int(&s, &a)) continue;
        smc_spaces(&s);
        char op = smc_op(&s);
        if (!op) continue;
        smc_spaces(&s);
        if (!smc_int(&s, &b)) continue;
        smc_spaces(&s);
        if (*s != '=') continue;
        s++;
        smc_spaces(&s);
        if (!smc_int(&s, &c)) continue;
        long want = op == '+' ? a + b : op == '-' ? a - b : op == '*' ? a * b : (b ? a / b : -1);
        if (op == '/' && (b == 0 || a % b != 0)) {
            snprintf(why, why_n, "%ld / %ld is not an integer", a, b);
            return -1;
        }
        if (c != want) {
            snprintf(why, why_n, "%ld %c %ld = %ld is wrong (%ld)", a, op, b, c, want);
            return -1;
        }
        steps++;
        steps_on_line++;
        last_c = c;
        p = s - 1;
    }
    if (steps < 1 || line != lines - 1) {
        snprintf(why, why_n, "%d steps over %d lines", steps, lines);
        return -1;
    }
    if (last_c != fin) {
        snprintf(why, why_n, "#### %ld but the last step gives %ld", fin, last_c);
        return -1;
    }
    *final_answer = fin;
    return 0;
}

#endif
