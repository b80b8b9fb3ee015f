/* Llama-Pro block expansion (Wu et al. 2024), with the insertion rule of fsdp_qlora's
 * scripts/block_expansion.py: for L layers and expansion_rate r,
 *   new = L + int(L * r);  split = int(L / (new - L));
 * original layer i moves to i + i // split, and after each i with (i + 1) % split == 0 a
 * copy of layer i is inserted (o_proj and down_proj zeroed by the engine, so the block is
 * the identity at the start). The rule inserts floor(L / split) blocks, which can be more
 * than int(L * r) (the seed's script does the same and leaves config.json at L; qft writes
 * the true count). `interval` sets split directly instead of a rate.
 *
 * Config keys (adapter section): expansion_rate (default 0.1, the seed's), interval. */
#include <qft_sdk.h>

#include <stdlib.h>

typedef struct {
    double rate;
    int interval; /* 0: from the rate */
} pro_state;

static const char *const k_keys[] = {"expansion_rate", "interval", NULL};

static int bad(const config_setting_t *s, const char *what, qft_err *err) {
    return qft_err_setf(err, "%s:%d: adapter.%s: %s",
                        config_setting_source_file(s) ? config_setting_source_file(s) : "--set",
                        config_setting_source_line(s), config_setting_name(s), what);
}

static int pro_configure(const qft_services *svc, const config_setting_t *section, void **state,
                         qft_err *err) {
    if (svc->config_check_keys(section, k_keys, err)) return -1;
    pro_state *s = calloc(1, sizeof *s);
    if (!s) return qft_err_setf(err, "llama_pro: out of memory");
    s->rate = 0.1;
    const config_setting_t *r = section ? config_setting_get_member(section, "expansion_rate") : NULL;
    const config_setting_t *iv = section ? config_setting_get_member(section, "interval") : NULL;
    int rc = 0;
    if (r) {
        int t = config_setting_type(r);
        if (t != CONFIG_TYPE_FLOAT && t != CONFIG_TYPE_INT)
            rc = bad(r, "expected a number", err);
        else if ((s->rate = t == CONFIG_TYPE_FLOAT ? config_setting_get_float(r)
                                                   : config_setting_get_int(r)) <= 0 ||
                 s->rate > 1)
            rc = bad(r, "must be in (0, 1]", err);
    }
    if (!rc && iv) {
        if (config_setting_type(iv) != CONFIG_TYPE_INT || config_setting_get_int(iv) < 1)
            rc = bad(iv, "expected a positive integer", err);
        else
            s->interval = config_setting_get_int(iv);
    }
    if (rc) {
        free(s);
        return -1;
    }
    *state = s;
    return 0;
}

static int pro_expand(const void *state, int L, int *src, int *is_new, int max, int *n_out,
                      qft_err *err) {
    const pro_state *s = state;
    int split = s->interval;
    if (!split) {
        const int added = (int)(L * s->rate); /* int(): truncation, as the seed */
        if (added < 1)
            return qft_err_setf(err, "llama_pro: expansion_rate %g of %d layers adds no layer "
                                     "(int(%d * %g) = 0); raise it or set interval",
                                s->rate, L, L, s->rate);
        split = L / added;
    }
    if (split > L)
        return qft_err_setf(err, "llama_pro: interval %d is larger than the %d layers", split, L);
    int n = 0;
    for (int i = 0; i < L; i++) {
        if (n + 2 > max) return qft_err_setf(err, "llama_pro: too many layers (max %d)", max);
        src[n] = i, is_new[n] = 0, n++;
        if ((i + 1) % split == 0) src[n] = i, is_new[n] = 1, n++;
    }
    *n_out = n;
    return 0;
}

static int pro_targets(const void *state, const qft_linear_base *lin) {
    (void)state, (void)lin;
    return 0; /* whole blocks train; no linear gets a per-linear adapter */
}

static int pro_peft_config(const void *state, char *buf, size_t size, qft_err *err) {
    (void)state, (void)err;
    if (size) buf[0] = 0;
    return 0;
}

static void pro_close(void *state) { free(state); }

static const qft_adapter_vtable k_vtable = {
    .config_keys = k_keys,
    .configure = pro_configure,
    .targets = pro_targets,
    .peft_config = pro_peft_config,
    .close = pro_close,
    .expand = pro_expand,
};

static const qft_plugin_desc k_desc = {
    .abi_version = QFT_ABI_VERSION,
    .kind = QFT_KIND_ADAPTER,
    .name = "llama_pro",
    .version = "1.0.0",
    .description = "Llama-Pro block expansion: inserted identity blocks train, the rest frozen",
    .vtable = &k_vtable,
};

__attribute__((visibility("default"))) const qft_plugin_desc *qft_plugin_entry(void) {
    return &k_desc;
}
