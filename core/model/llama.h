/* The Llama model on the CPU backend: its configuration (from a Hugging Face config.json),
 * its parameters (one fp32 allocation with a pointer table), and the training entry
 * points (forward, loss, backward). */
#ifndef QFT_LLAMA_H
#define QFT_LLAMA_H

#include "qft_base.h"
#include "qft_sdk.h"

enum { QFT_ROPE_DEFAULT = 0, QFT_ROPE_LLAMA3 = 1 };

typedef struct qft_llama_config {
    int vocab_size;              /* V */
    int hidden_size;             /* C */
    int intermediate_size;       /* I */
    int num_hidden_layers;       /* L */
    int num_attention_heads;     /* H */
    int num_key_value_heads;     /* KV (grouped-query attention when < H) */
    int head_dim;                /* hd, default C / H */
    int max_position_embeddings;
    float rms_norm_eps;
    float rope_theta;
    int rope_type;               /* QFT_ROPE_* */
    float rope_factor, rope_low_freq_factor, rope_high_freq_factor;
    int rope_original_max_position_embeddings;
    int tie_word_embeddings;
    int bos_token_id, eos_token_id, pad_token_id; /* -1 where config.json has none */
    float initializer_range;     /* std of the random init, transformers' default 0.02 */
    char torch_dtype[16];        /* as written in config.json, "" when absent */
} qft_llama_config;

/* Pointers into one flat fp32 buffer (parameters or their gradients). */
typedef struct qft_llama_layer_ptrs {
    float *ln1;   /* (C)           input_layernorm.weight */
    float *wq;    /* (H*hd, C)     self_attn.q_proj.weight */
    float *wk;    /* (KV*hd, C)    self_attn.k_proj.weight */
    float *wv;    /* (KV*hd, C)    self_attn.v_proj.weight */
    float *wo;    /* (C, H*hd)     self_attn.o_proj.weight */
    float *ln2;   /* (C)           post_attention_layernorm.weight */
    float *wgate; /* (I, C)        mlp.gate_proj.weight */
    float *wup;   /* (I, C)        mlp.up_proj.weight */
    float *wdown; /* (C, I)        mlp.down_proj.weight */
} qft_llama_layer_ptrs;

typedef struct qft_llama_ptrs {
    float *embed;                 /* (V, C) model.embed_tokens.weight */
    qft_llama_layer_ptrs *layers; /* [L] */
    float *norm;                  /* (C) model.norm.weight */
    float *lm_head;               /* (V, C) lm_head.weight; == embed when tied */
} qft_llama_ptrs;

/* What a tensor does in a run. Trainable tensors come first in the flat buffer, so the
 * optimizer, clipping and (later) sharding walk params[0, n_trainable) and one gradient
 * buffer of that size; frozen ones follow; quantized ones live in their quantizer's
 * packed state and not in the flat buffer at all. */
enum { QFT_ROLE_TRAIN = 0, QFT_ROLE_FROZEN = 1, QFT_ROLE_QUANTIZED = 2 };

/* One named tensor of the model, with its Hugging Face name. */
typedef struct qft_param_entry {
    char name[96];
    int ndim;
    int64_t shape[2];
    size_t offset; /* in floats, into the flat buffer; unused when quantized */
    size_t numel;
    int role;              /* QFT_ROLE_* */
    struct qft_qweight *qw; /* the packed weight when role is QFT_ROLE_QUANTIZED */
    struct qft_qlayout *ql; /* on another backend: a packed weight's buffers there, or a
                             * frozen dense one kept there as bf16 */
    size_t dev_offset;      /* on another backend: its offset in dev_params (when no ql) */
    /* For qft_llama_unit_bf16's entries: its bf16 values' byte offset in packed (and
     * dev_packed), inside its unit's region. */
    size_t packed_at;
    int layer, field;      /* where its views live: layer -1 = embed/norm/head (0/1/2),
                            * -2 = an adapter tensor (no view), else the field of
                            * qft_llama_layer_ptrs in declaration order */
} qft_param_entry;

/* The seven linears of a block, in the order the entry table lists them. */
enum { QFT_LIN_Q = 0, QFT_LIN_K, QFT_LIN_V, QFT_LIN_O, QFT_LIN_GATE, QFT_LIN_UP, QFT_LIN_DOWN,
       QFT_LIN_COUNT };

/* How to build a model: the role of each tensor and the quantizer for frozen linears.
 * A NULL build (or role) means every tensor trains, dense. */
struct qft_llama_model;

typedef struct qft_llama_build {
    /* Role of tensor `name`; is_linear says it is one of a block's seven projections
     * (quantizers only ever take those: embeddings, norms and the head stay dense). */
    int (*role)(void *ctx, const char *name, int is_linear);
    void *ctx;
    const qft_quantizer_vtable *qvt; /* for QFT_ROLE_QUANTIZED */
    const void *qstate;              /* the quantizer's configured options */
    /* An adapter plugin: its tensors are added to the table as trainable entries named
     * as PEFT saves them ("base_model.model.<module>.<suffix>"), before the other
     * trainable tensors; qft_llama_attach_adapters then attaches it once weights are in. */
    const qft_adapter_vtable *avt;
    const void *astate;
    /* Block expansion (Llama-Pro): the model has n_layers blocks; block i copies block
     * layer_src[i] of a checkpoint with n_src_layers blocks, and layer_new[i] marks an
     * inserted block (trains; o_proj and down_proj start at zero). NULL: no expansion. */
    const int *layer_src, *layer_new;
    int n_layers, n_src_layers;
    /* > 0: the unit layout of full sharding (see qft_llama_unit): each unit's trainable
     * and frozen floats start on a page and are padded to a multiple of unit_pad, the
     * buffers are releasable address space (qft_vm_*). 0: one packed flat buffer. */
    int unit_pad;
    /* With unit_pad: bytes (a multiple of the page) every unit range starts on and is
     * rounded to, so that a backend's vm_commit can map each unit at the same offsets
     * there (its vm_granularity); 0: the page. */
    size_t unit_align;
    /* With unit_pad, for a model that goes to another backend with frozen_bf16: the frozen
     * dense weights that backend keeps as bf16 (qft_llama_unit_bf16) are cut and gathered as
     * bf16, in their units' packed regions; their fp32 load slots lie past every unit and
     * are released once the bf16 copies are placed (qft_llama_place_unit). */
    int units_bf16;
    /* The model's embed_on_host, set at build: units_bf16 cuts the embedding as bf16 only
     * where it does not stay whole on the host. */
    int embed_on_host;
    /* Optional, for a loader (qft_hf_model_load_build, or a random init unit by unit):
     * called once each unit is complete (its weights loaded or drawn, block expansion
     * applied), in ascending order, so that full sharding can attach that unit's adapters
     * and cut it before the next one loads: no rank then holds the whole model. */
    int (*on_unit)(void *ctx, struct qft_llama_model *m, int u, qft_err *err);
    void *unit_ctx;
} qft_llama_build;

/* Full sharding (FSDP FULL_SHARD) cuts the model into units that are gathered whole just
 * before they run and released right after: unit 0 is the embedding, unit l + 1 block l
 * with its adapters, unit L + 1 the final norm and the head. Each unit owns one page-
 * aligned range of the trainable floats (in params and grads alike), one of the frozen
 * floats, and one region of the packed weights of its quantized linears, once placed. */
typedef struct qft_llama_unit {
    size_t t_off, t_len; /* trainable floats [t_off, t_off + t_len), t_len % unit_pad == 0 */
    size_t f_off, f_len; /* frozen floats, likewise */
    uint8_t *q;          /* (q_len) placed packed weights, NULL before placement */
    size_t q_len, q_cap; /* q_len a multiple of 64 * unit_pad bytes; q_cap reserved */
} qft_llama_unit;

/* What the model tells the unit hook, in the order the passes use the units. */
enum {
    QFT_UNIT_GATHER = 0,  /* the unit's parameters are needed whole now */
    QFT_UNIT_RELEASE,     /* ... and not any more, until the next GATHER */
    QFT_UNIT_GRADS_DONE,  /* this backward added its last gradient into the unit */
    QFT_UNIT_GRADS_BEGIN, /* this backward is about to add the unit's first gradient */
};

struct qft_llama_acts; /* activation storage, private to the model code */

/* One micro-batch, right-padded. labels use transformers' convention: labels[b][t] is the
 * token at t (not t+1); the loss shifts internally, and -100 marks positions to ignore. */
typedef struct qft_batch {
    int B, T;
    int32_t *ids;    /* (B, T) */
    int32_t *labels; /* (B, T), -100 = ignored */
    uint8_t *mask;   /* (B, T), 1 = real token, 0 = padding; NULL = all real */
} qft_batch;

typedef struct qft_llama_model {
    qft_llama_config cfg;
    size_t n_params;          /* floats in params: trainable, then frozen (tied head once) */
    size_t n_trainable;       /* params[0, n_trainable) train */
    size_t n_quantized;       /* weights held packed by the quantizer (not in params) */
    float *params;            /* (n_params) */
    float *grads;             /* (n_trainable) or NULL when not training */
    qft_param_entry *entries; /* [n_entries], in Hugging Face order */
    int n_entries;
    int (*lin_entry)[QFT_LIN_COUNT]; /* [L][7] entry index of each block linear */
    qft_llama_ptrs p, g;      /* views of params and grads; NULL where packed or frozen */
    const qft_quantizer_vtable *qvt; /* not owned */
    const void *qstate;              /* not owned */
    const qft_adapter_vtable *avt;   /* not owned; NULL without adapters */
    const void *astate;              /* not owned */
    struct qft_llama_adapted *(*adapted)[QFT_LIN_COUNT]; /* [L][7], NULL where not adapted */
    int n_adapted;                   /* adapted linears */
    qft_adapter_step astep;          /* set by the trainer before each forward */
    int *layer_src, *layer_new;      /* [L] block expansion (see qft_llama_build), or NULL */
    int recompute;            /* keep only block inputs; recompute the rest in backward */
    /* Rows (tokens) of logits held at once: the head and the loss run over the batch in
     * chunks of this many rows, so no (N, V) buffer exists; backward computes each chunk's
     * logits again (one more head GEMM). 0 = the whole batch at once, which also keeps the
     * logits for qft_llama_logits. */
    int logit_rows;
    /* Keep the residual stream between blocks (each block's input, (L+1, N, C)) as bf16,
     * half the bytes of the largest activation buffer under recomputation; each block then
     * reads its input rounded to bf16, in forward and in backward alike, as in a bf16 model.
     * Gradients pass the rounding unchanged. */
    int residual_bf16;
    /* Keep a frozen, untied embedding in host memory only when the passes move to another
     * backend (qft_llama_to_backend): forward gathers the batch's rows on the host and
     * uploads them, (N, C) floats a step, instead of holding the (vocab, C) table there
     * (1 GiB in bf16 at Llama-3-8B's shapes, read at N rows a step). Set before
     * qft_llama_to_backend, which clears it where it does not apply (the embedding trains,
     * or is tied to the head, whose GEMM needs the whole table there). */
    int embed_on_host;
    /* with embed_on_host: round the gathered rows to bf16, as the backend's bf16 copy
     * would have held them (qft_llama_to_backend's frozen_bf16) */
    int embed_host_bf16;
    struct qft_llama_acts *acts;
    /* the unit layout (qft_llama_build.unit_pad), NULL units without it */
    int unit_pad, n_units;
    size_t unit_align;        /* bytes each unit's ranges start on and round to */
    int units_bf16;           /* qft_llama_build.units_bf16 */
    size_t bf16_off, bf16_len; /* the fp32 load slots of those weights, in floats */
    qft_llama_unit *units;    /* [n_units] */
    uint8_t *packed;          /* the units' packed regions, one reservation of packed_cap */
    size_t packed_cap;
    size_t packed_used;       /* the bytes of it units were placed in so far */
    /* The backend the passes run on; NULL is the CPU backend working on params and grads
     * directly. Another backend (qft_llama_to_backend) holds its own copies, dev_params
     * (n_params) and dev_grads (n_trainable), which the views p and g point into; params
     * and grads stay in host memory for loading, saving and the optimizer (FSDP's CPU
     * offload of parameters, gradients and optimizer state). */
    const struct qft_ops *ops;
    float *dev_params, *dev_grads;
    size_t n_dev_params;      /* floats of dev_params: trainable prefix + frozen fp32 ones */
    /* With the unit layout, dev_params, dev_grads and dev_packed are the backend's
     * reservations (vm_reserve) mirroring params, grads and packed at the same offsets,
     * with memory behind a unit's ranges only while full sharding has committed them
     * (run_fsdp.c); nothing is uploaded at qft_llama_to_backend. */
    uint8_t *dev_packed;
    /* Packed weights on another backend are dequantized a tile of rows at a time into
     * this scratch (qtile_floats floats of backend memory) and multiplied from there. */
    float *qtile;
    size_t qtile_floats;
    /* Called around every use of a unit when set (full sharding); returns 0 or -1 with err. */
    int (*unit_hook)(void *ctx, int event, int unit, qft_err *err);
    void *unit_ctx;
} qft_llama_model;

/* Allocates parameters for `cfg` (zeroed) and fills entries and p; every tensor trains. */
int qft_llama_alloc(qft_llama_model *m, const qft_llama_config *cfg, qft_err *err);
/* The same with roles and a quantizer from `build` (NULL = all train). Quantized entries
 * get their weight later, from qft_llama_set_dense or a quantized checkpoint. */
int qft_llama_alloc_build(qft_llama_model *m, const qft_llama_config *cfg,
                          const qft_llama_build *build, qft_err *err);
/* Stores a dense fp32 tensor (numel floats) as entry `e`: copied into the flat buffer, or
 * quantized by the model's quantizer when the entry's role is QFT_ROLE_QUANTIZED. */
int qft_llama_set_dense(qft_llama_model *m, qft_param_entry *e, const float *w, qft_err *err);
/* Writes entry e's weight as dense fp32 into dst (numel floats), dequantizing if packed. */
int qft_llama_get_dense(const qft_llama_model *m, const qft_param_entry *e, float *dst,
                        qft_err *err);
/* Like qft_llama_get_dense, with an attached adapter merged in: the plain weight that
 * computes what the adapted linear computes (W + s B A for LoRA; DoRA's rescaled rows). */
int qft_llama_get_merged(const qft_llama_model *m, const qft_param_entry *e, float *dst,
                         qft_err *err);
/* transformers' init: normal(0, initializer_range) for linears and embeddings, ones for
 * norms; quantized linears are drawn dense and quantized one at a time. Inserted blocks
 * of block expansion are left to qft_llama_expand_unit. */
int qft_llama_init_random(qft_llama_model *m, uint64_t seed, qft_err *err);
/* The same draws for unit u's tensors only (see qft_llama_unit_of; the values do not
 * depend on the order units are drawn in). Inserted blocks of block expansion are not
 * drawn: they copy their source block (qft_llama_expand_unit with copy). */
int qft_llama_init_random_unit(qft_llama_model *m, uint64_t seed, int u, qft_err *err);
/* Block expansion, a unit at a time in ascending order, each once its weights are in:
 * an inserted block gets its o_proj and down_proj zeroed; with copy set (a random model,
 * whose inserted blocks were not drawn) an original block's unit first gives every tensor
 * to the inserted blocks copying it (dequantized where it is packed), which follow it. */
int qft_llama_expand_unit(qft_llama_model *m, int u, int copy, qft_err *err);
/* Attaches the build's adapter to every linear it declared tensors for: init = 1 draws
 * PEFT's initialisation from seed; init = 0 keeps tensors loaded from a saved adapter.
 * Call after the base weights are in (DoRA reads them) and after qft_llama_alloc_grads. */
int qft_llama_attach_adapters(qft_llama_model *m, int init, uint64_t seed, qft_err *err);
/* The same for unit u's linears only (block u - 1's), with the same values; the others
 * stay as they are, and a later qft_llama_attach_adapters leaves it attached. */
int qft_llama_attach_unit_adapters(qft_llama_model *m, int u, int init, uint64_t seed,
                                   qft_err *err);
/* Bytes the model's weights occupy: the flat buffer plus every packed weight. */
size_t qft_llama_weight_bytes(const qft_llama_model *m);
/* Allocates grads (n_trainable, zeroed) and the g views of trainable tensors. */
int qft_llama_alloc_grads(qft_llama_model *m, qft_err *err);
void qft_llama_zero_grads(qft_llama_model *m);

/* ---- another backend's memory (core/model/llama_backend.c) ----------------------------
 * Moves the passes onto `ops` (whose memory host code must not touch): allocates and
 * uploads dev_params, allocates dev_grads, points the views there; copies every packed
 * weight's buffers there (its quantizer must describe them: the `layout` entry, in a
 * format ops decodes), and attaches the adapters again on that backend. With frozen_bf16
 * the frozen dense linears and an untied frozen head and embedding are kept there as bf16
 * (half the bytes; exact for weights that were bf16 to begin with, as Hugging Face
 * checkpoints are): the linears and the head multiply through the tile path, the
 * embedding's rows are widened as they are looked up. With m->embed_on_host a frozen, untied
 * embedding stays in host memory only (see the field). After weights are in, gradients
 * allocated and adapters attached.
 * With the unit layout (full sharding cut the model already, qft_run_fsdp_cut) it uploads
 * nothing: dev_params, dev_grads and dev_packed are reservations of ops (its vm_* entries,
 * with a granularity unit_align is a multiple of) at the host's offsets, the packed
 * layouts point into dev_packed, and the units' memory comes and goes with the unit hook
 * (a frozen, untied embedding kept on the host with embed_on_host is unit 0, which full
 * sharding then leaves whole there: qft_llama_embed_stays_on_host); frozen_bf16 must
 * match the build's units_bf16, whose bf16 layouts point at the weights' placed bytes in
 * dev_packed. */
int qft_llama_to_backend(qft_llama_model *m, const struct qft_ops *ops, int frozen_bf16,
                         qft_err *err);
/* Whether qft_llama_to_backend will leave the embedding in host memory: embed_on_host
 * asks, and the embedding is frozen and untied. */
int qft_llama_embed_stays_on_host(const qft_llama_model *m);
/* Whether forward gathers the batch's embedding rows from the host's table: embed_on_host
 * means something only once the model is on another backend. */
static inline int qft_llama_embed_gathered(const qft_llama_model *m) {
    return m->embed_on_host && m->dev_params;
}
/* Attaches the adapters again on the host's copies (the cpu backend), as merging needs,
 * after qft_llama_params_to_host; the passes stay on the backend's copies. */
int qft_llama_adapters_to_host(qft_llama_model *m, qft_err *err);
/* grads[0, n_trainable) on the host from the backend's gradients (no-op without one). */
void qft_llama_grads_to_host(qft_llama_model *m);
/* The backend's copy of params[offset, offset + len) from the host's (no-op without one). */
void qft_llama_params_to_backend(qft_llama_model *m, size_t offset, size_t len);
/* The host's params[offset, offset + len) from the backend's copy (no-op without one): the
 * master copy refreshed when the optimizer updated the backend's (before a save). */
void qft_llama_params_to_host(qft_llama_model *m, size_t offset, size_t len);

/* ---- the unit layout (core/model/llama_units.c) ---------------------------------------- */
/* The unit an entry belongs to. */
int qft_llama_unit_of(const qft_llama_model *m, const qft_param_entry *e);
/* The packed regions of the units, filled a unit at a time as the model loads (full
 * sharding cuts each unit right after). begin reserves address space for every unit's
 * region (4 bytes a weight for weights not yet quantized: a bound); place_unit moves unit
 * u's quantized weights into the next region through the quantizer's `place` and, with
 * units_bf16, writes its bf16 weights there (rounded from their fp32 slots, whose pages it
 * then releases); q_len becomes a multiple of 64 * unit_pad. Units in ascending order,
 * each once its weights are in and its adapters attached (DoRA's magnitudes read the fp32
 * slots). end releases the slots' last pages and the reservation's unused tail
 * (packed_cap becomes the bytes the units took). Needs the unit layout and, for quantized
 * weights, a quantizer with `place`. */
int qft_llama_packed_begin(qft_llama_model *m, qft_err *err);
int qft_llama_place_unit(qft_llama_model *m, int u, qft_err *err);
void qft_llama_packed_end(qft_llama_model *m);
/* Whether entry e is one of units_bf16's weights: a frozen dense block linear, an untied
 * frozen head, and an untied frozen embedding unless embed_on_host keeps it whole on the
 * host (in fp32, its rows rounded as they are read). */
int qft_llama_unit_bf16(const qft_llama_model *m, const qft_param_entry *e);
/* The fp32 slots of unit u's bf16 weights, widened from its packed region (gathered on the
 * host), for a saver that reads every tensor there. */
void qft_llama_unit_widen_bf16(qft_llama_model *m, int u);
/* Tells the hook (if any) about unit u. */
int qft_llama_unit_event(qft_llama_model *m, int event, int u, qft_err *err);
void qft_llama_free(qft_llama_model *m);
const qft_param_entry *qft_llama_find_entry(const qft_llama_model *m, const char *name);
/* Fills a config with transformers' LlamaConfig defaults for the fields it leaves open. */
void qft_llama_config_defaults(qft_llama_config *cfg);

/* ---- training entry points (core/model/llama_forward.c, llama_backward.c) ------------ */
/* Forward over a batch; *loss = mean cross-entropy over the shifted labels != -100 (0 when
 * there are none). Keeps what backward needs (or only the block inputs with recompute). */
int qft_llama_forward(qft_llama_model *m, const qft_batch *b, float *loss, qft_err *err);
/* Backward of loss_scale * (the last forward's loss), accumulated (+=) into m->grads. b must
 * be the batch of that forward (same shape, ids and mask unchanged); each forward allows one
 * backward, which recomputes block activations if that forward ran with m->recompute. */
int qft_llama_backward(qft_llama_model *m, const qft_batch *b, float loss_scale, qft_err *err);
/* Logits of the last forward, (B, T, V) fp32 in the backend's memory; NULL once backward
 * has run, because backward turns the logits buffer into the logits' gradient in place
 * (no second (B, T, V) buffer), and NULL when the forward ran the head in chunks
 * (m->logit_rows below B*T). */
const float *qft_llama_logits(const qft_llama_model *m);

/* ---- activation storage (core/model/llama_acts.c) ------------------------------------
 * Forward sizes it on demand for its batch and keeps the largest shape seen; reserve ahead
 * to fail early or to measure. With m->recompute only the block inputs (L+1, B, T, C) are
 * kept across layers, plus one layer's worth rebuilt during backward. qft_llama_free
 * releases it. */
int qft_llama_acts_reserve(qft_llama_model *m, int B, int T, qft_err *err);
/* Rows per head chunk for train.loss_chunk_tokens = 0 ("automatic") at this vocabulary: a
 * multiple of 128 (a GEMM tile's height on the GPU, so the last tile is not mostly empty),
 * as many as keep the chunk's fp32 logits within budget_bytes, at least 128. The trainer
 * gives 64 MiB on a device backend, where memory is the scarce thing, and 1 GiB on the
 * host, where recomputing the head (up to a sixth of a small model's step at a 128k
 * vocabulary) costs more than the memory. */
int qft_llama_logit_rows_auto(int vocab_size, size_t budget_bytes);
void qft_llama_acts_free(qft_llama_model *m);
size_t qft_llama_acts_bytes(const qft_llama_model *m); /* 0 when none */
/* Rows the logits buffer holds: the largest batch's tokens, or fewer with logit_rows. */
int qft_llama_acts_logit_rows(const qft_llama_model *m); /* 0 when none */

#endif
