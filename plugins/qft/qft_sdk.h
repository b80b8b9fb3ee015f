/*
 * qft plugin SDK — the one header every plugin includes.
 *
 * A plugin is a shared object exporting exactly one symbol, `qft_plugin_entry`, which
 * returns a pointer to a constant `qft_plugin_desc`. The core never looks up any other
 * symbol. Everything a plugin needs from the engine (memory, logging, random numbers,
 * config checking, the active backend's op table) reaches it through the `qft_services`
 * table handed to its `open`/`attach` call, so a plugin never includes a header of core/.
 *
 * Bump QFT_ABI_VERSION whenever a struct below changes layout or meaning; the registry
 * refuses a plugin whose descriptor carries another number and says which.
 */
#ifndef QFT_SDK_H
#define QFT_SDK_H

#include <libconfig.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

#define QFT_ABI_VERSION 9
#define QFT_PLUGIN_ENTRY_SYMBOL "qft_plugin_entry"

/* ---- errors -------------------------------------------------------------------------
 * Library code never exits on bad input: it fills a qft_err and returns non-zero. The
 * message names the file, line, key or tensor at fault; the app prints it. */
typedef struct qft_err {
    int code;        /* 0 = no error */
    char msg[2048];
} qft_err;

static inline int qft_err_setf(qft_err *e, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
static inline int qft_err_setf(qft_err *e, const char *fmt, ...) {
    if (e) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(e->msg, sizeof e->msg, fmt, ap);
        va_end(ap);
        e->code = -1;
    }
    return -1;
}

/* ---- tensors ------------------------------------------------------------------------ */
typedef enum qft_dtype {
    QFT_DT_F32 = 0,
    QFT_DT_F16,
    QFT_DT_BF16,
    QFT_DT_F64,
    QFT_DT_I8,
    QFT_DT_U8,
    QFT_DT_I16,
    QFT_DT_I32,
    QFT_DT_I64,
    QFT_DT_BOOL,
    QFT_DT_COUNT
} qft_dtype;

#define QFT_MAX_DIMS 8

/* A view: shape and dtype over memory someone else owns (an mmapped file, an arena). */
typedef struct qft_tensor {
    qft_dtype dtype;
    int ndim;
    int64_t shape[QFT_MAX_DIMS];
    void *data;
} qft_tensor;

/* ---- random numbers -----------------------------------------------------------------
 * One seed drives every random choice in a run; plugins draw from streams the core hands
 * them (xoshiro256** state) so that a run is reproducible whatever plugins it loads. */
typedef struct qft_rng {
    uint64_t s[4];
} qft_rng;

/* ---- services the core offers to plugins ------------------------------------------- */
enum { QFT_LOG_ERROR = 0, QFT_LOG_WARN = 1, QFT_LOG_INFO = 2, QFT_LOG_DEBUG = 3 };

struct qft_ops;     /* qft_ops.h */
struct qft_qlayout; /* qft_ops.h */

typedef struct qft_services {
    int abi_version; /* the core's QFT_ABI_VERSION */
    /* 64-byte aligned allocation counted in the run's memory report under `what`. */
    void *(*alloc)(size_t bytes, const char *what);
    void (*free)(void *p);
    void (*log)(int level, const char *fmt, ...);
    void (*rng_seed)(qft_rng *r, uint64_t seed);
    uint64_t (*rng_next)(qft_rng *r);
    /* Checks that every key of `section` is either one the core owns in that section or
     * one of `plugin_keys` (NULL-terminated); otherwise fills err with file, line and key. */
    int (*config_check_keys)(const config_setting_t *section, const char *const *plugin_keys,
                             qft_err *err);
    /* The active backend's op table (qft_ops.h), for plugins that compute (adapters use
     * its GEMM, which splits over the backend's threads). NULL when the core offers none:
     * a plugin then falls back to its own code. */
    const struct qft_ops *ops;
} qft_services;

/* ---- the descriptor ----------------------------------------------------------------- */
typedef enum qft_kind {
    QFT_KIND_QUANTIZER = 0,
    QFT_KIND_ADAPTER,
    QFT_KIND_DATASET,
    QFT_KIND_SHARD,
    QFT_KIND_COUNT
} qft_kind;

typedef struct qft_plugin_desc {
    int abi_version;         /* QFT_ABI_VERSION the plugin was built with */
    qft_kind kind;
    const char *name;        /* unique within its kind, e.g. "orca_math" */
    const char *version;     /* the plugin's own version string */
    const char *description; /* one line for `qft plugins` */
    const void *vtable;      /* points to the vtable struct of `kind`, below */
} qft_plugin_desc;

typedef const qft_plugin_desc *(*qft_plugin_entry_fn)(void);

/* ---- dataset plugins ----------------------------------------------------------------
 * A dataset opens a local file (or, for the project's own generator, makes rows from a
 * seed) and yields examples as prompt and response text; the template is the plugin's.
 * Tokenization, truncation, label masking and batching are the core's. */
typedef struct qft_dataset_vtable {
    /* Keys of the `data` section this plugin accepts besides the core's own (NULL-ended). */
    const char *const *config_keys;
    /* `section` is the run's `data` group. On success *state is the plugin's handle. */
    int (*open)(const qft_services *svc, const config_setting_t *section, void **state,
                qft_err *err);
    /* Number of examples in the file, in file order. */
    long (*count)(const void *state);
    /* Example `index` (0 <= index < count); the strings stay valid until close. */
    int (*get)(const void *state, long index, const char **prompt, const char **response,
               qft_err *err);
    void (*close)(void *state);
    /* Optional (NULL: none): rows of the file left out as bad under data.skip_bad_rows, for
     * the core's report. */
    long (*skipped)(const void *state);
} qft_dataset_vtable;

/* ---- tensor files seen by plugins ----------------------------------------------------
 * Quantizers save and load their packed state with the peer library's key names. The
 * core owns the safetensors reader and writer; plugins reach them through these calls. */
typedef struct qft_tensor_sink {
    void *ctx;
    /* Adds a tensor to the file being written; data must stay valid until the core writes
     * the file (the end of the save call that handed out this sink). */
    int (*add)(void *ctx, const char *name, const qft_tensor *t, qft_err *err);
} qft_tensor_sink;

typedef struct qft_tensor_source {
    void *ctx;
    /* Finds a tensor by name; returns 0 and fills *t (data read-only, valid until the load
     * call returns), or -1 with err naming the file and the tensor. */
    int (*get)(void *ctx, const char *name, qft_tensor *t, qft_err *err);
    /* Like get, but a missing tensor returns 1 with no error. */
    int (*find)(void *ctx, const char *name, qft_tensor *t, qft_err *err);
    const char *file; /* for messages */
} qft_tensor_source;

/* ---- quantizer plugins ---------------------------------------------------------------
 * A quantizer turns one frozen dense weight W (out, in), row-major fp32, into its own
 * packed state, and gives rows of it back as fp32 tiles; the core builds the products a
 * frozen linear needs (Y = X W^T, dX = dY W) from those tiles without ever holding the
 * whole dense weight. */
typedef struct qft_qweight qft_qweight; /* a plugin's packed weight, opaque to the core */

/* Memory the core hands a quantizer for its weight's buffers (see `place` below). */
typedef struct qft_placer {
    void *ctx;
    /* `bytes` of memory aligned to 64 bytes, or NULL (with err naming the need) when the
     * core's region for this weight is exhausted. Valid until the model is freed. */
    void *(*alloc)(void *ctx, size_t bytes, qft_err *err);
} qft_placer;

typedef struct qft_quantizer_vtable {
    /* Keys of the `quant` section this plugin accepts besides `plugin` (NULL-ended). */
    const char *const *config_keys;
    /* Reads and validates the `quant` section; *state holds the options. */
    int (*configure)(const qft_services *svc, const config_setting_t *section, void **state,
                     qft_err *err);
    /* Quantizes w (out, in). `name` is the tensor's Hugging Face name, for messages. */
    int (*quantize)(const void *state, const char *name, const float *w, int64_t out,
                    int64_t in, qft_qweight **qw, qft_err *err);
    /* Writes rows [row0, row0 + n_rows) of the dequantized weight into dst (n_rows, in).
     * Thread-safe for disjoint tiles of one weight. */
    int (*dequantize_rows)(const qft_qweight *qw, int64_t row0, int64_t n_rows, float *dst,
                           qft_err *err);
    /* Bytes this packed weight occupies (packed codes and all statistics). */
    size_t (*bytes)(const qft_qweight *qw);
    /* Saves under `prefix` (e.g. "model.layers.0.self_attn.q_proj") with the peer
     * library's key names ("<prefix>.weight", "<prefix>.weight.absmax", ...). */
    int (*save)(const qft_qweight *qw, const char *prefix, const qft_tensor_sink *sink,
                qft_err *err);
    /* Loads a weight saved by save() or by the peer library; checks the statistics
     * against the expected shape (out, in). Returns 1 with no error when the tensors of
     * `prefix` are not quantized by this plugin (a dense checkpoint). */
    int (*load)(const void *state, const char *prefix, int64_t out, int64_t in,
                const qft_tensor_source *src, qft_qweight **qw, qft_err *err);
    void (*free_weight)(qft_qweight *qw);
    void (*close)(void *state);
    /* Optional (NULL when the format has none): the `quantization_config` object that
     * transformers expects in config.json beside weights written by save(), as JSON text
     * in buf. */
    int (*hf_quantization_config)(const void *state, char *buf, size_t size, qft_err *err);
    /* Optional (NULL: the weight cannot be fully sharded): moves every data buffer of qw
     * (packed codes and all statistics; not the small fixed header) into memory the core
     * hands out through `pl`, copying the bytes, and frees the plugin's own copies. From
     * then on dequantize_rows reads the placed memory, and free_weight must not free it
     * (the core owns it). Full sharding (FSDP FULL_SHARD) uses this to cut a block's packed
     * weights into per-rank pieces and to gather them back in their packed form, in place,
     * right before the block runs: the placed bytes are the weight's whole state. The
     * core may call place once per weight, after quantize or load, never while another
     * call uses the weight. The plugin may call pl->alloc up to 8 times, for at most
     * bytes(qw) bytes in all (each call's start is 64-byte aligned). */
    int (*place)(qft_qweight *qw, const struct qft_placer *pl, qft_err *err);
    /* Optional (NULL: the weight computes on the cpu backend only): describes qw as one of
     * the formats backends decode (qft_ops.h, qft_qlayout), with buf[] pointing at the
     * plugin's own buffers, which must stay as they are while the model lives. The core
     * copies them to the backend and multiplies through its `dequantize`; the values must
     * be dequantize_rows' bit for bit. Returns 1 with no error when this weight's
     * configuration has no such format. */
    int (*layout)(const qft_qweight *qw, struct qft_qlayout *out, qft_err *err);
} qft_quantizer_vtable;

/* ---- adapter plugins (per-linear: LoRA, DoRA) ------------------------------------------
 * An adapter sits on frozen linears of the model. The core owns the frozen base (dense or
 * packed by a quantizer) and offers it through qft_linear_base; the adapter declares its
 * trainable tensors (the core allocates them in its one flat trainable buffer, so the
 * optimizer, clipping and sharding see them like any parameter), initialises them, and
 * hooks the linear's forward and backward.
 *
 * Order of calls for one linear in a training step:
 *   forward:  the core computes y = x W^T into y, then calls forward(x, y), which adds the
 *             adapter's term (LoRA) or rewrites y (DoRA) in place;
 *   backward: the core zeroes dx, calls backward(x, dy, dx) — which accumulates the
 *             adapter's parameter gradients, adds its own input gradient into dx, and may
 *             rewrite dy in place into the gradient of the base product (DoRA scales it) —
 *             then adds dy W into dx.
 * With activation recomputation the core repeats forward (same x, same step) before
 * backward; an adapter's randomness (dropout) must therefore depend only on the step and
 * the position (counter-based), never on a stream that advances per call. */
typedef struct qft_linear_base {
    const char *name;   /* Hugging Face module name: "model.layers.3.self_attn.q_proj" */
    const char *module; /* its last part: "q_proj", "k_proj", ..., "down_proj" */
    int layer;
    int64_t out, in;
    void *ctx;          /* the core's; pass it back to the calls below */
    /* y (N, ldy) columns [0, out) = beta * y + x (N, in) W^T */
    int (*forward)(void *ctx, const float *x, int64_t N, float *y, int64_t ldy, float beta,
                   qft_err *err);
    /* dx (N, in) = beta * dx + dy (N, ldy)[:, 0:out] W */
    int (*backward_input)(void *ctx, const float *dy, int64_t ldy, int64_t N, float *dx,
                          float beta, qft_err *err);
    /* Rows [row0, row0 + n) of W as dense fp32 (n, in): dequantized when packed. */
    int (*weight_rows)(void *ctx, int64_t row0, int64_t n, float *dst, qft_err *err);
    /* The backend whose memory every pointer of this linear lives in: x, y, dy, dx, the
     * declared tensors, the callbacks' buffers. The adapter computes only through it and
     * allocates its activations and scratch with its alloc; it reads those pointers from
     * host code only when ops->host_memory says it may. When the engine moves the model to
     * another backend it detaches every adapter and attaches it again (init = 0) with that
     * backend's base; an adapter may refuse `init` or merge_rows on a backend without host
     * memory (the engine initialises and merges on the cpu backend). */
    const struct qft_ops *ops;
    /* Optional (ABI 6; NULL where the core does not offer it): norm (out) = ||W_j + scale
     * B_j A|| per row j, from W as the base stores it, packed or dense, with neither W nor
     * W + s B A written out (the op table's lowrank_row_norms says the arithmetic). A (r,
     * in), B (out, r) and norm are memory of `ops`. */
    int (*lowrank_row_norms)(void *ctx, const float *A, const float *B, int64_t r, float scale,
                             float *norm, qft_err *err);
} qft_linear_base;

/* A trainable tensor an adapter declares for one linear. The core fills data and grad
 * (fp32, row-major, zeroed) before attach. */
#define QFT_ADAPTER_MAX_PARAMS 4
typedef struct qft_adapter_param {
    char suffix[64];  /* after the module name, PEFT's spelling: "lora_A.weight" */
    int ndim;
    int64_t shape[2];
    float *data;      /* (shape) */
    float *grad;      /* (shape), accumulated by backward */
} qft_adapter_param;

typedef struct qft_adapter_step {
    uint64_t seed;    /* the run's seed */
    long step;        /* optimizer step (0-based) and micro-batch within it, for dropout */
    int micro;
    int training;     /* 0 in evaluation: dropout off */
    /* 1 when no backward follows this forward (evaluation, or the first pass of activation
     * recomputation, which forward repeats before backward): the adapter then keeps no
     * activations. 0 (the default) keeps them from forward until the backward that
     * consumes them, which frees them, so they are live no longer than the core's own. */
    int no_grad;
    /* Appended in ABI 5. 0 = unknown: the adapter must not reuse across forwards anything
     * it computed from its trainable parameters. Non-zero: a promise that the trainable
     * parameters (A, B, magnitudes, ...) are the same in every forward carrying the same
     * value, so what depends only on them and the frozen base (DoRA's weight norm) may be
     * computed once per value. The core gives it a new value whenever they may have
     * changed (an optimizer update, a load, a resume). */
    uint64_t params_version;
} qft_adapter_step;

typedef struct qft_adapter_linear qft_adapter_linear; /* a plugin's per-linear state */

typedef struct qft_adapter_vtable {
    /* Keys of the `adapter` section this plugin accepts besides `plugin` (NULL-ended). */
    const char *const *config_keys;
    int (*configure)(const qft_services *svc, const config_setting_t *section, void **state,
                     qft_err *err);
    /* 1 when `lin` gets an adapter (target_modules), else 0. */
    int (*targets)(const void *state, const qft_linear_base *lin);
    /* The trainable tensors for `lin`: fills params[0..*n) (at most QFT_ADAPTER_MAX_PARAMS). */
    int (*declare)(const void *state, const qft_linear_base *lin, qft_adapter_param *params,
                   int *n, qft_err *err);
    /* Creates the per-linear state once the core has allocated the declared tensors and
     * loaded the base weights; `init` says whether to initialise the tensors (PEFT's
     * initialisation, from rng) or leave them (they were loaded from a saved adapter). */
    int (*attach)(const void *state, const qft_linear_base *lin, qft_adapter_param *params,
                  int n, int init, qft_rng *rng, qft_adapter_linear **al, qft_err *err);
    /* The hooks described above. x (N, in); y and dy (N, ldy), columns [0, out). */
    int (*forward)(qft_adapter_linear *al, const qft_adapter_step *st, const float *x,
                   int64_t N, float *y, int64_t ldy, qft_err *err);
    int (*backward)(qft_adapter_linear *al, const qft_adapter_step *st, const float *x,
                    float *dy, int64_t ldy, int64_t N, float *dx, qft_err *err);
    /* The merged weight rows [row0, row0 + n): W' = what the adapted linear computes as a
     * plain linear (LoRA: W + s B A; DoRA: m / ||W + s B A|| (W + s B A)); dst (n, in). */
    int (*merge_rows)(qft_adapter_linear *al, int64_t row0, int64_t n, float *dst, qft_err *err);
    /* PEFT's adapter_config.json fields this plugin owns, as JSON object members text
     * (e.g. "\"r\": 8, \"lora_alpha\": 16, ..."), for the exported adapter. */
    int (*peft_config)(const void *state, char *buf, size_t size, qft_err *err);
    void (*detach)(qft_adapter_linear *al);
    void (*close)(void *state);
    /* Optional, for block-expansion adapters (Llama-Pro), NULL for per-linear ones: the
     * expanded model's layers from a checkpoint's n_layers. For each layer i < *n_out
     * (at most max): src[i] is the checkpoint layer it copies and is_new[i] marks an
     * inserted block, which the engine initialises as a copy of src[i] with o_proj and
     * down_proj zeroed (the identity on the residual stream) and trains, while the others
     * stay frozen. Such an adapter targets no linear. */
    int (*expand)(const void *state, int n_layers, int *src, int *is_new, int max, int *n_out,
                  qft_err *err);
} qft_adapter_vtable;

/* ---- shard plugins ------------------------------------------------------------------
 * A sharding strategy decides, for the flat fp32 buffer of trainable parameters (and its
 * gradient buffer of the same length, n floats), which slice each rank's optimizer owns,
 * and moves gradients and parameters between ranks around the optimizer step over the
 * run's transport (qft_transport.h; `struct qft_transport` here so that this header stays
 * the bottom of the graph). One optimizer step of a run is:
 *
 *   every rank: forward and backward of its micro-batches, gradients accumulated in
 *               grads (n), each micro-batch's loss already scaled by 1 / (global count of
 *               micro-batches), so the sum over ranks is the global mean's gradient
 *   reduce_grads: grads[offset, offset + len) becomes the sum over ranks, in rank order
 *   core: clipping from the slices' sums of squares (all-reduced in f64), then the
 *               optimizer over params/grads [offset, offset + len) with state for len floats
 *   gather_params: every rank's params (n) receives every owner's updated slice
 *
 * Every entry except configure and close is collective: all ranks call it in the same
 * order with the same n. A plugin that owns the whole buffer on every rank (no_shard)
 * returns offset 0, len n. With world size 1 every strategy degenerates to the identity.
 *
 * Full sharding (FSDP FULL_SHARD, HYBRID_SHARD) cuts the parameters themselves: a plugin
 * with `param_group` names the ranks a parameter is cut over, and the core then keeps
 * only this rank's piece of every unit of the model (the embedding, each block with its
 * adapters, the head; trainable, frozen and packed quantized bytes alike), gathers a unit
 * over the group right before it runs and frees it after, in forward and again in
 * backward; reduce-scatters a unit's gradients over the group when its backward is done
 * (on the last micro-batch of a step: earlier ones accumulate unsynchronised) and sums
 * this rank's piece over the replicas; runs the optimizer over the pieces it keeps.
 * plan, reduce_grads and gather_params are then not called. */
struct qft_transport; /* qft_transport.h */

typedef struct qft_shard_vtable {
    /* Keys of the `shard` section this plugin accepts besides the core's (`plugin`,
     * `cpu_offload`), NULL-ended; NULL when none. */
    const char *const *config_keys;
    /* Reads the plugin's options from the `shard` section (may be NULL) into *state. */
    int (*configure)(const qft_services *svc, const config_setting_t *section, void **state,
                     qft_err *err);
    /* The slice of the flat trainable buffer of n floats whose optimizer state this rank
     * keeps and updates: [*offset, *offset + *len). The slices of all ranks cover [0, n)
     * without overlap (no_shard: every rank the whole buffer). Called once, before any
     * other collective entry; may remember n. */
    int (*plan)(void *state, const struct qft_transport *t, size_t n, size_t *offset,
                size_t *len, qft_err *err);
    /* grads (n): on return this rank's slice holds the element-wise sum over ranks of their
     * grads (summed in rank order on the CPU transports); outside the slice the contents
     * are unspecified (no_shard: the whole buffer is summed). No averaging: the core scales
     * each micro-batch's loss so that the sum is the mean. */
    int (*reduce_grads)(void *state, const struct qft_transport *t, float *grads, size_t n,
                        qft_err *err);
    /* params (n): every rank's slice was updated by its optimizer; on return every rank
     * holds the whole updated buffer (no_shard: nothing to do). */
    int (*gather_params)(void *state, const struct qft_transport *t, float *params, size_t n,
                         qft_err *err);
    void (*close)(void *state);
    /* Optional (NULL: parameters stay whole on every rank). Called once, collectively,
     * after configure. *group: the ranks every unit is cut over (t itself for full_shard,
     * this rank's machine for hybrid_shard); *replicas: the ranks holding the same piece
     * as this one, whose pieces are summed after the group's reduce-scatter (NULL when the
     * group is the whole world). Both stay the plugin's: it closes them in close. */
    int (*param_group)(void *state, const struct qft_transport *t,
                       const struct qft_transport **group,
                       const struct qft_transport **replicas, qft_err *err);
} qft_shard_vtable;

#ifdef __cplusplus
}
#endif
#endif /* QFT_SDK_H */
