/* The generator behind the synth_math dataset plugin: grade-school math word problems in
 * the Orca-Math schema (question, answer), each answer a step-by-step solution whose every
 * step is one integer equation "a op b = c" (op one of + - × ÷) and whose last line is the
 * GSM8K-style "#### <answer>". Problem i depends only on (seed, i).
 *
 * Private to the plugin (and to its test, which checks every answer from the parameters
 * kept here); nothing here is exported from the shared object. */
#ifndef QFT_SYNTH_MATH_GEN_H
#define QFT_SYNTH_MATH_GEN_H

#include <stdint.h>

#define QFT_SYNTH_MATH_TEMPLATES 15
#define QFT_SYNTH_MATH_MAX_PARAMS 6

typedef struct qft_synth_math_problem {
    int template_id;                     /* 0 .. QFT_SYNTH_MATH_TEMPLATES-1 */
    long p[QFT_SYNTH_MATH_MAX_PARAMS];   /* the numbers the question states, in order */
    int n_p;
    long answer;
    char question[640];
    char solution[1024]; /* ends with "#### <answer>" */
} qft_synth_math_problem;

/* Fills *out with problem `index` of the stream `seed`; 0 on success, -1 if the text did
 * not fit (a bug: every template fits with room to spare). */
int qft_synth_math_make(uint64_t seed, long index, qft_synth_math_problem *out);
/* A short name of each template ("shopping_change", ...), for tests and `qft data`. */
const char *qft_synth_math_template_name(int template_id);

#endif
