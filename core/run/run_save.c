/* Saving a run's result as a Hugging Face model folder: weights and config.json (each
 * written atomically by core/io), plus the tokenizer files it was trained with, so the
 * folder loads in transformers as it is. */
#include "hf_model.h"
#include "peft_adapter.h"
#include "run.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int copy_file_atomic(const char *src, const char *dst, qft_err *err) {
    char *buf;
    size_t len;
    if (qft_file_read_all(src, &buf, &len, err)) return -1;
    int rc = qft_atomic_write(dst, buf, len, err);
    free(buf);
    return rc;
}

int qft_run_copy_tokenizer(const char *src_dir, const char *dst_dir, qft_err *err) {
    static const char *const files[] = {"tokenizer.json", "tokenizer_config.json",
                                        "special_tokens_map.json", "generation_config.json"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        char src[8192], dst[8192];
        snprintf(src, sizeof src, "%s/%s", src_dir, files[i]);
        snprintf(dst, sizeof dst, "%s/%s", dst_dir, files[i]);
        if (access(src, R_OK) == 0 && copy_file_atomic(src, dst, err)) return -1;
    }
    return 0;
}

int qft_run_save_model(const qft_run_config *rc, const qft_llama_model *m, qft_err *err) {
    char dir[8192];
    snprintf(dir, sizeof dir, "%s/model", rc->output.dir);
    qft_dtype dt = strcmp(rc->output.save_dtype, "bf16") == 0 ? QFT_DT_BF16 : QFT_DT_F32;
    if (qft_hf_model_save(dir, m, dt, err)) return -1;
    if (rc->tokenizer.path && !rc->tokenizer.byte &&
        qft_run_copy_tokenizer(rc->tokenizer.path, dir, err))
        return -1;
    qft_log(QFT_LOG_INFO, "saved %s (%s)", dir, rc->output.save_dtype);
    return 0;
}

int qft_run_save_adapter(const qft_run_config *rc, const qft_llama_model *m, qft_err *err) {
    if (!m->avt)
        return qft_err_setf(err, "%s: output.save = \"adapter\" but train_type \"%s\" has no "
                                 "adapter (save = \"model\" saves the whole model)",
                            rc->file, rc->train_type);
    char dir[8192];
    snprintf(dir, sizeof dir, "%s/adapter", rc->output.dir);
    if (qft_peft_save(dir, m, rc->model.path ? rc->model.path : "", err)) return -1;
    qft_log(QFT_LOG_INFO, "saved %s (PEFT adapter)", dir);
    return 0;
}
