/* Full sharding of a model's units over a group of ranks (FSDP FULL_SHARD / HYBRID_SHARD;
 * see `param_group` in qft_sdk.h and qft_llama_unit in llama.h). Each rank keeps its piece
 * of every unit — trainable floats, frozen floats and packed quantized bytes — in compact
 * shard buffers; the model's own buffers keep their full layout as address space whose
 * pages exist only while a unit is gathered (qft_vm_*), so every pointer into them (tensor
 * views, adapters' and quantizers' cached pointers) stays valid. */
#ifndef QFT_RUN_FSDP_H
#define QFT_RUN_FSDP_H

#include "llama.h"
#include "qft_transport.h"

typedef struct qft_run_fsdp {
    qft_llama_model *m;
    const qft_transport *group;    /* a unit is cut over these ranks */
    const qft_transport *replicas; /* ranks holding the same piece (hybrid), or NULL */
    int G, r;                      /* group size and this rank's place in it */
    size_t *pt, *pf, *pq;          /* [n_units] each piece's offset in the shard buffers */
    float *shard_t;                /* (n_t) trainable pieces: the optimizer's parameters */
    float *shard_g;                /* (n_t) their gradients, summed over the job */
    float *shard_f;                /* (n_f) frozen pieces */
    uint8_t *shard_q;              /* (n_q) packed pieces, on the host in a reservation */
    size_t shard_q_cap;            /* ... of this many bytes (a bound set at begin) */
    size_t n_t, n_f, n_q;
    int *gathered;                 /* [n_units] 1 while the unit is whole here */
    int *grads_held;               /* [n_units] 1 while the backend holds its gradients */
    int sync;                      /* reduce gradients at GRADS_DONE (a step's last micro) */
    size_t peak;                   /* the model buffers' resident bytes, max over events */
    /* After qft_run_fsdp_to_backend: the backend whose memory holds the shard buffers and
     * the units (the model's dev_params, dev_grads, dev_packed), and the bytes committed
     * there now. NULL: everything in host memory. */
    const struct qft_ops *ops;
    size_t committed;
    /* With ops: the shard buffers stayed in host memory (shard.cpu_offload), where the
     * optimizer works on them. A gather uploads this rank's pieces into scratch and
     * all-gathers them into the unit's commits over the group (the backend's transport);
     * a unit's gradients are reduce-scattered into scratch and their piece comes down to
     * shard_g. Host-device traffic is the rank's pieces only, as in FSDP's CPU offload. */
    int offload;
    void *scratch; /* the backend's memory for the largest unit's pieces, with offload */
    /* Unit 0, a frozen and untied embedding that the passes on another backend read in
     * host memory (qft_llama_embed_stays_on_host), stays whole there: not cut, never
     * gathered, no traffic (the batch's rows go up with forward instead). */
    int embed_whole;
    /* The load (qft_run_fsdp_begin, cut, finish): units cut so far, the bytes of their
     * pieces, and the peak of the model buffers' resident bytes plus those pieces, beside
     * load_whole, the units' ranges summed (what holding the whole model takes), and
     * load_largest, the largest unit's. */
    int n_cut;
    size_t load_cut, load_peak, load_whole, load_largest;
    size_t load_rss; /* the process's peak resident set when the cut finished */
} qft_run_fsdp;

/* Cuts m (built with the unit layout) over group as it loads (qft_llama_build.on_unit), so
 * that a rank holds its shard and one unit, never the whole model. begin: once m has its
 * layout, before anything is placed. cut: each unit in ascending order, once its weights
 * are in and its adapters attached; places the unit's packed weights, copies this rank's
 * pieces out and releases the unit's ranges. finish: once every unit is cut; hooks the
 * model so that its passes gather and release units. embed_whole: see the field (the
 * model goes to another backend, which keeps the embedding on the host). No communication:
 * every rank loads the same model and cuts its own pieces. */
int qft_run_fsdp_begin(qft_run_fsdp *f, qft_llama_model *m, const qft_transport *group,
                       const qft_transport *replicas, int embed_whole, qft_err *err);
int qft_run_fsdp_cut(qft_run_fsdp *f, int u, qft_err *err);
int qft_run_fsdp_finish(qft_run_fsdp *f, qft_err *err);
/* Whether unit u stays whole in host memory (embed_whole's unit 0). */
static inline int qft_run_fsdp_whole(const qft_run_fsdp *f, int u) {
    return u == 0 && f->embed_whole;
}
/* Moves the shard buffers to backend ops, where qft_llama_to_backend put the model (with
 * the unit layout: reservations at the host's offsets); from then on the units are
 * gathered, and their gradients reduced, in that memory, over a group that moves it (a
 * transport over the backend's memory: nccl, staged). With offload the shard buffers stay
 * in host memory (see the field). After init and qft_llama_to_backend. */
int qft_run_fsdp_to_backend(qft_run_fsdp *f, const struct qft_ops *ops, int offload,
                            qft_err *err);
/* Every unit whole in the host's buffers (before a save); on a backend, gathered there a
 * unit at a time and downloaded. Collective. */
int qft_run_fsdp_gather_all(qft_run_fsdp *f, qft_err *err);
/* The resident-bytes peak the schedule implies for one step of grad_accum micro-batches,
 * from the units' sizes (page-rounded), beside which `peak` is measured. */
size_t qft_run_fsdp_expected_peak(const qft_run_fsdp *f, int grad_accum);
/* Bytes of this rank's shard buffers (parameters, gradients, frozen, packed). */
size_t qft_run_fsdp_shard_bytes(const qft_run_fsdp *f);
void qft_run_fsdp_free(qft_run_fsdp *f);

#endif
