/* Groups of linears that share an input (q/k/v, gate/up): one GEMM when their weights are
 * adjacent in memory, which the flat parameter table guarantees; one per weight otherwise
 * (e.g. when an adapter hands in separate buffers). */
#include "llama_internal.h"

static int adjacent(const qft_llama_lin_group *g, const float *const *w, int in) {
    for (int i = 1; i < g->n; i++)
        if (w[i] != w[i - 1] + (size_t)g->out[i - 1] * in) return 0;
    return 1;
}

static int total_out(const qft_llama_lin_group *g) {
    int s = 0;
    for (int i = 0; i < g->n; i++) s += g->out[i];
    return s;
}

void qft_llama_lin_fwd(const qft_ops *ops, const qft_llama_lin_group *g, const float *x, int N,
                       int in, float *y, int ldy) {
    if (adjacent(g, g->w, in)) {
        ops->gemm(0, 1, N, total_out(g), in, 1.0f, x, in, g->w[0], in, 0.0f, y, ldy);
        return;
    }
    int col = 0;
    for (int i = 0; i < g->n; i++) {
        ops->gemm(0, 1, N, g->out[i], in, 1.0f, x, in, g->w[i], in, 0.0f, y + col, ldy);
        col += g->out[i];
    }
}

void qft_llama_lin_bwd_x(const qft_ops *ops, const qft_llama_lin_group *g, const float *dy,
                         int ldy, int N, int in, float beta, float *dx) {
    if (adjacent(g, g->w, in)) {
        ops->gemm(0, 0, N, in, total_out(g), 1.0f, dy, ldy, g->w[0], in, beta, dx, in);
        return;
    }
    int col = 0;
    for (int i = 0; i < g->n; i++) {
        ops->gemm(0, 0, N, in, g->out[i], 1.0f, dy + col, ldy, g->w[i], in, i ? 1.0f : beta, dx,
                  in);
        col += g->out[i];
    }
}

void qft_llama_lin_bwd_w(const qft_ops *ops, const qft_llama_lin_group *g, float *const *dw,
                         const float *dy, int ldy, const float *x, int N, int in) {
    if (adjacent(g, (const float *const *)dw, in)) {
        ops->gemm(1, 0, total_out(g), in, N, 1.0f, dy, ldy, x, in, 1.0f, dw[0], in);
        return;
    }
    int col = 0;
    for (int i = 0; i < g->n; i++) {
        ops->gemm(1, 0, g->out[i], in, N, 1.0f, dy + col, ldy, x, in, 1.0f, dw[i], in);
        col += g->out[i];
    }
}
