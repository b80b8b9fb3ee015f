/* The unit layout of full sharding (see qft_llama_unit in llama.h): offsets assigned unit by
 * unit so that each unit's tensors form one aligned, padded range per role (the page, or
 * a backend's commit granularity, so that its copy can map units at the same offsets), and the
 * packed weights of quantized linears moved into per-unit regions the core owns. The
 * padding makes every unit cut into equal pieces for any group of up to unit_pad ranks
 * that divides it, so gathers and reduce-scatters move whole blocks with no scratch. */
#include "cpu_ops.h"
#include "llama_internal.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int qft_llama_unit_of(const qft_llama_model *m, const qft_param_entry *e) {
    const int L = m->cfg.num_hidden_layers;
    if (e->layer >= 0) return e->layer + 1;
    if (e->layer == -2) return e->field / QFT_ADAPTER_MAX_PARAMS / QFT_LIN_COUNT + 1;
    return e->field == 0 ? 0 : L + 1; /* embed; final norm and head */
}

static size_t round_up(size_t x, size_t to) { return (x + to - 1) / to * to; }

int qft_llama_unit_bf16(const qft_llama_model *m, const qft_param_entry *e) {
    return m->units_bf16 && qft_llama_bf16_candidate(m, e) &&
           !(e->layer == -1 && e->field == 0 && m->embed_on_host);
}

int qft_llama_units_layout(qft_llama_model *m, int pad, size_t align, int bf16, qft_err *err) {
    const int U = m->cfg.num_hidden_layers + 2;
    const size_t page = qft_vm_page();
    /* a backend's granularity below the host's page (8 KiB on a 16 KiB-page machine)
     * divides it: the page then serves both */
    if (align == 0 || (align < page && page % align == 0)) align = page;
    if (align % page != 0)
        return qft_err_setf(err, "unit alignment %zu is not a multiple of the %zu-byte page",
                            align, page);
    m->units = calloc((size_t)U, sizeof *m->units);
    if (!m->units) return qft_err_setf(err, "out of memory allocating the unit table");
    m->n_units = U, m->unit_pad = pad, m->unit_align = align, m->units_bf16 = bf16;
    const size_t align_f = align / sizeof(float);
    size_t off = 0;
    for (int pass = QFT_ROLE_TRAIN; pass <= QFT_ROLE_FROZEN; pass++) {
        for (int u = 0; u < U; u++) {
            off = round_up(off, align_f);
            const size_t start = off;
            for (int i = 0; i < m->n_entries; i++) {
                qft_param_entry *e = &m->entries[i];
                if (e->role != pass || qft_llama_unit_of(m, e) != u || qft_llama_unit_bf16(m, e))
                    continue;
                e->offset = off;
                off += e->numel;
            }
            off = start + round_up(off - start, (size_t)pad);
            if (pass == QFT_ROLE_TRAIN)
                m->units[u].t_off = start, m->units[u].t_len = off - start;
            else
                m->units[u].f_off = start, m->units[u].f_len = off - start;
        }
        /* whole alignment units at the end too: releasing or committing the last unit's
         * range covers them, and must stay inside the buffer */
        off = round_up(off, align_f);
        if (pass == QFT_ROLE_TRAIN) m->n_trainable = off;
    }
    /* the bf16 weights' fp32 load slots, in no unit: released once they are placed */
    m->bf16_off = off;
    for (int i = 0; i < m->n_entries; i++)
        if (qft_llama_unit_bf16(m, &m->entries[i]))
            m->entries[i].offset = off, off += m->entries[i].numel;
    off = round_up(off, align_f);
    m->bf16_len = off - m->bf16_off;
    m->n_params = off;
    return 0;
}

/* Bump allocation from one unit's packed region. */
typedef struct unit_placer {
    qft_llama_unit *u;
    const char *name; /* the weight being placed, for messages */
} unit_placer;

static void *unit_alloc(void *ctx, size_t bytes, qft_err *err) {
    unit_placer *p = ctx;
    const size_t at = round_up(p->u->q_len, 64);
    if (at + bytes > p->u->q_cap) {
        qft_err_setf(err, "%s: the quantizer asked for %zu more bytes than its weights' "
                          "reported size leaves in the unit's packed region (%zu of %zu used)",
                     p->name, bytes, at, p->u->q_cap);
        return NULL;
    }
    p->u->q_len = at + bytes;
    return p->u->q + at;
}

/* Unit u's packed room: its weights' own byte counts (4 bytes a weight for one not yet
 * quantized, the bound the reservation takes before a streamed load), the 64-byte
 * alignment of up to eight buffers each, and the round-up to whole pieces. */
static size_t unit_room(const qft_llama_model *m, int u) {
    const size_t piece = 64 * (size_t)m->unit_pad, page = m->unit_align;
    size_t need = 0;
    for (int i = 0; i < m->n_entries; i++) {
        const qft_param_entry *e = &m->entries[i];
        if (qft_llama_unit_of(m, e) != u) continue;
        if (e->role == QFT_ROLE_QUANTIZED)
            need += (e->qw ? m->qvt->bytes(e->qw) : e->numel * sizeof(float)) + 8 * 64;
        if (qft_llama_unit_bf16(m, e)) need += e->numel * sizeof(uint16_t) + 64;
    }
    return need ? round_up(need + piece, page) : 0;
}

int qft_llama_packed_begin(qft_llama_model *m, qft_err *err) {
    if (!m->units || m->packed) return 0;
    if (!m->n_quantized && !m->bf16_len) return 0;
    if (m->n_quantized && !m->qvt->place)
        return qft_err_setf(err, "the quantizer cannot place its weights in memory the core "
                                 "owns (no `place` entry), so its packed weights cannot be "
                                 "sharded; use a strategy that keeps parameters whole "
                                 "(shard_grad_op, no_shard)");
    size_t total = 0;
    for (int u = 0; u < m->n_units; u++) total += unit_room(m, u);
    /* address space only: pages appear as units are placed */
    m->packed = qft_vm_reserve(total, err);
    if (!m->packed) return -1;
    m->packed_cap = total, m->packed_used = 0;
    return 0;
}

int qft_llama_place_unit(qft_llama_model *m, int u, qft_err *err) {
    if (!m->packed) return 0; /* nothing packed in the model */
    qft_llama_unit *un = &m->units[u];
    const size_t room = unit_room(m, u); /* exact now that its weights are quantized */
    if (room > m->packed_cap - m->packed_used)
        return qft_err_setf(err, "unit %d: its packed weights need %zu bytes but %zu of the "
                                 "%zu reserved are left (the quantizer stores more than 4 "
                                 "bytes a weight)",
                            u, room, m->packed_cap - m->packed_used, m->packed_cap);
    un->q_cap = room, un->q_len = 0;
    un->q = room ? m->packed + m->packed_used : NULL;
    m->packed_used += room;
    float *lo = NULL, *hi = NULL; /* the unit's bf16 load slots, contiguous */
    for (int i = 0; i < m->n_entries; i++) { /* the packed weights first, then bf16's */
        qft_param_entry *e = &m->entries[i];
        if (qft_llama_unit_of(m, e) != u || e->role != QFT_ROLE_QUANTIZED || !e->qw) continue;
        unit_placer up = {un, e->name};
        const qft_placer pl = {&up, unit_alloc};
        if (m->qvt->place(e->qw, &pl, err)) return -1;
    }
    for (int i = 0; i < m->n_entries; i++) {
        qft_param_entry *e = &m->entries[i];
        if (qft_llama_unit_of(m, e) != u || !qft_llama_unit_bf16(m, e)) continue;
        unit_placer up = {un, e->name};
        uint16_t *h = unit_alloc(&up, e->numel * sizeof *h, err);
        if (!h) return -1;
        float *slot = m->params + e->offset;
        qft_cpu_f32_to_bf16(h, slot, e->numel);
        e->packed_at = (size_t)((uint8_t *)h - m->packed);
        if (!lo || slot < lo) lo = slot;
        if (!hi || slot + e->numel > hi) hi = slot + e->numel;
    }
    /* the bf16 copies are what the passes read and what is gathered: the fp32 slots go,
     * the pages wholly inside them now (a page shared with the next unit's slots waits
     * for qft_llama_packed_end, as those may be loaded already) */
    if (lo) {
        const size_t ps = qft_vm_page();
        const uintptr_t a = ((uintptr_t)lo + ps - 1) / ps * ps, b = (uintptr_t)hi / ps * ps;
        if (a < b) qft_vm_release((void *)a, b - a);
    }
    un->q_len = round_up(un->q_len, 64 * (size_t)m->unit_pad);
    return 0;
}

void qft_llama_packed_end(qft_llama_model *m) {
    if (!m->packed) return;
    if (m->bf16_len) qft_vm_release(m->params + m->bf16_off, m->bf16_len * sizeof(float));
    /* the room past the last unit was a bound (weights not yet quantized): give it back,
     * so that a backend's mirror reserves what the units use */
    if (m->packed_used && m->packed_used < m->packed_cap) {
        qft_vm_free(m->packed + m->packed_used, m->packed_cap - m->packed_used);
        m->packed_cap = m->packed_used;
    }
}

void qft_llama_unit_widen_bf16(qft_llama_model *m, int u) {
    for (int i = 0; i < m->n_entries; i++) {
        const qft_param_entry *e = &m->entries[i];
        if (!qft_llama_unit_bf16(m, e) || qft_llama_unit_of(m, e) != u) continue;
        qft_cpu_bf16_to_f32(m->params + e->offset, (const uint16_t *)(m->packed + e->packed_at),
                            e->numel);
    }
}

int qft_llama_unit_event(qft_llama_model *m, int event, int u, qft_err *err) {
    return m->unit_hook ? m->unit_hook(m->unit_ctx, event, u, err) : 0;
}
