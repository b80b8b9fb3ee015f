/* `--set section.key=value`: the basis of sweeps. The value is parsed as libconfig
 * would parse it in a file (so 2e-5, 16, true, "x", [0.9, 0.95] keep their types); a bare
 * word that is not a libconfig value (a path, say) is taken as a string. */
#include "config.h"

#include <stdlib.h>
#include <string.h>

static int copy_value(config_setting_t *dst, const config_setting_t *src) {
    switch (config_setting_type(src)) {
    case CONFIG_TYPE_INT: return config_setting_set_int(dst, config_setting_get_int(src));
    case CONFIG_TYPE_INT64: return config_setting_set_int64(dst, config_setting_get_int64(src));
    case CONFIG_TYPE_FLOAT: return config_setting_set_float(dst, config_setting_get_float(src));
    case CONFIG_TYPE_BOOL: return config_setting_set_bool(dst, config_setting_get_bool(src));
    case CONFIG_TYPE_STRING: return config_setting_set_string(dst, config_setting_get_string(src));
    case CONFIG_TYPE_ARRAY:
    case CONFIG_TYPE_LIST:
    case CONFIG_TYPE_GROUP: {
        int n = config_setting_length(src);
        for (int i = 0; i < n; i++) {
            const config_setting_t *e = config_setting_get_elem(src, (unsigned)i);
            config_setting_t *d = config_setting_add(dst, config_setting_name(e),
                                                     config_setting_type(e));
            if (!d || copy_value(d, e) != CONFIG_TRUE) return CONFIG_FALSE;
        }
        return CONFIG_TRUE;
    }
    default: return CONFIG_FALSE;
    }
}

int qft_config_apply_set(config_t *cfg, const char *assignment, qft_err *err) {
    const char *eq = strchr(assignment, '=');
    if (!eq || eq == assignment)
        return qft_err_setf(err, "--set %s: expected section.key=value", assignment);
    char path[256];
    size_t plen = (size_t)(eq - assignment);
    if (plen >= sizeof path) return qft_err_setf(err, "--set %s: key too long", assignment);
    memcpy(path, assignment, plen);
    path[plen] = 0;
    const char *value = eq + 1;

    /* Parse the value in a scratch config: "v = <value>;" */
    config_t scratch;
    config_init(&scratch);
    size_t vlen = strlen(value);
    char *text = malloc(vlen + 16);
    if (!text) return qft_err_setf(err, "out of memory");
    snprintf(text, vlen + 16, "v = %s;", value);
    config_setting_t *parsed = NULL;
    if (config_read_string(&scratch, text) == CONFIG_TRUE)
        parsed = config_lookup(&scratch, "v");
    if (!parsed) { /* not a libconfig value: take it as a string */
        config_destroy(&scratch);
        config_init(&scratch);
        parsed = config_setting_add(config_root_setting(&scratch), "v", CONFIG_TYPE_STRING);
        config_setting_set_string(parsed, value);
    }
    free(text);

    /* Walk or create the groups of the path, then replace the leaf. */
    config_setting_t *grp = config_root_setting(cfg);
    char *save = NULL;
    char *tok = strtok_r(path, ".", &save);
    int rc = 0;
    while (tok) {
        char *next = strtok_r(NULL, ".", &save);
        config_setting_t *child = config_setting_get_member(grp, tok);
        if (next) {
            if (!child) child = config_setting_add(grp, tok, CONFIG_TYPE_GROUP);
            if (!child || config_setting_type(child) != CONFIG_TYPE_GROUP) {
                rc = qft_err_setf(err, "--set %s: '%s' is not a group", assignment, tok);
                break;
            }
            grp = child;
        } else {
            if (child) config_setting_remove(grp, tok);
            config_setting_t *leaf = config_setting_add(grp, tok, config_setting_type(parsed));
            if (!leaf || copy_value(leaf, parsed) != CONFIG_TRUE)
                rc = qft_err_setf(err, "--set %s: cannot set this value", assignment);
        }
        tok = next;
    }
    config_destroy(&scratch);
    return rc;
}
