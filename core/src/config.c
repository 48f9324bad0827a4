/* labmq — lab configuration files, loaded with libcyaml.
 *
 * The YAML goes straight into the raw_* structs below through a libcyaml
 * schema. Driver options are the one dynamic part: their keys depend on the
 * driver, and libcyaml 1.3 has neither unions nor free-form maps. So the
 * `options:` mapping schema is built at load time from the union of the
 * option names of all built-in drivers, one optional string slot each (YAML
 * scalars like 100 or true load fine as strings). An option no driver knows is
 * then a libcyaml error with a position; whether an option belongs to *this*
 * device's driver, and whether its value parses as the option's type, is
 * checked afterwards.
 *
 * libcyaml reports errors through its log callback: a message plus a
 * backtrace of enclosing nodes whose positions are those of the last event
 * read, which may be a line or two before the culprit. When a load fails we
 * therefore re-read the text with libyaml's document loader and follow the
 * backtrace's path to the exact node (and for syntax errors take libyaml's
 * own problem mark), falling back to libcyaml's position. The same document
 * tree gives positions for our own semantic errors. */
#include <cyaml/cyaml.h>
#include <yaml.h>
#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "auth_internal.h"
#include "device_internal.h"
#include "supervise_internal.h"
#include "labmq/config.h"
#include "labmq/log.h"
#include "labmq/status.h"
#include "labmq/value.h"

/* A lab config is a page of text; the cap keeps a wrong path (a disk image,
 * /dev/zero) from eating memory. */
#define CFG_MAX_BYTES (1u << 20)
/* One thread per device: far more than any bench, few enough to be sane. */
#define CFG_MAX_DEVICES 1024u
#define CFG_MAX_BACKTRACE 16
#define CFG_MAX_WORKERS 256u

/* ---- the YAML as libcyaml loads it ---- */

struct raw_device {
    char *name;
    char *driver;
    char *connection; /* NULL when absent */
    char **options;   /* NULL when absent; else one slot per union option name */
    bool restore;
};

/* A supervised worker process (labmq/supervise.h). */
struct raw_worker {
    char *name;
    char *program;
    char **args; /* NULL when absent */
    unsigned args_count;
    char **env; /* "KEY=VALUE"; NULL when absent (then: the daemon's environment) */
    unsigned env_count;
    char *restart; /* always | on-failure | never; NULL when absent */
};

/* security: (docs/security.md) */
struct raw_client {
    char *name;
    char *key;  /* Z85 public key, or the path of a key file */
    char *role; /* observe | control; NULL when absent (observe) */
};

struct raw_security {
    char *key; /* the daemon's key file (key pair); NULL when absent */
    struct raw_client *clients;
    unsigned clients_count;
    bool insecure;
};

struct raw_config {
    char *control;
    char *data;
    char *log_level;
    double *stop_grace; /* seconds; NULL when absent */
    double *time_scale; /* simulated instruments' time scale; NULL when absent */
    double *fault_after; /* seconds; NULL when absent */
    uint64_t *subscriber_memory; /* bytes held per stream subscriber; NULL when absent */
    struct raw_device *devices;
    unsigned devices_count;
    struct raw_worker *workers; /* NULL when absent */
    unsigned workers_count;
    struct raw_security *security; /* NULL when absent */
};

struct lmq_config {
    /* libcyaml needs the same schema again for cyaml_free, and the schema
     * points into itself, so it lives (unmoved) inside the object. */
    cyaml_config_t cy;
    size_t n_opts;                    /* union of the drivers' option names, one slot each */
    cyaml_schema_field_t *opt_fields; /* n_opts + terminator; .key is the option name */
    cyaml_schema_field_t dev_fields[6];
    cyaml_schema_value_t dev_entry;
    cyaml_schema_field_t top_fields[11];
    cyaml_schema_field_t sec_fields[4];
    cyaml_schema_field_t cl_fields[4];
    cyaml_schema_value_t cl_entry;
    cyaml_schema_value_t str_entry;
    cyaml_schema_field_t wk_fields[6];
    cyaml_schema_value_t wk_entry;
    cyaml_schema_value_t top;

    struct raw_config *raw;       /* owned, freed with cyaml_free */
    lmq_config_device_t *devices; /* owned; strings borrowed from raw */
    const char **optv;            /* owned; every device's option list in one block */
    char *dir;                    /* the config file's directory: relative paths start here */
    /* drivers loaded from shared objects, under the name the file gives them */
    struct plugin {
        char *name;
        const lmq_driver_t *drv;
    } * plugins;
    size_t nplugins;
    char **paths; /* option values resolved against dir (owned), NULL-terminated */
    size_t npaths;
    lmq_config_worker_t *workers; /* owned; strings borrowed from raw but programs */
    char **wprograms;             /* programs resolved against dir (owned), one slot per worker */
    size_t nworkers;              /* slots in workers and wprograms */
    const char **wargv;           /* owned; every worker's args and env lists in one block */
    lmq_keypair_t server;         /* security.key: the daemon's key pair; public_key "" when none */
    lmq_config_client_t *clients; /* owned; names borrowed from raw */
    size_t nclients;
};

/* ---- a small growable string for messages ---- */

typedef struct strbuf {
    char *p;
    size_t len, cap;
    bool oom;
} strbuf_t;

static void sb_vprintf(strbuf_t *sb, const char *fmt, va_list ap)
{
    if (sb->oom)
        return;
    va_list ap2;
    va_copy(ap2, ap);
    int n = vsnprintf(NULL, 0, fmt, ap2);
    va_end(ap2);
    if (n < 0) {
        sb->oom = true;
        return;
    }
    if (sb->len + (size_t)n + 1 > sb->cap) {
        size_t cap = sb->cap ? sb->cap : 128;
        while (cap < sb->len + (size_t)n + 1)
            cap *= 2;
        char *p = realloc(sb->p, cap);
        if (!p) {
            sb->oom = true;
            return;
        }
        sb->p = p;
        sb->cap = cap;
    }
    vsnprintf(sb->p + sb->len, (size_t)n + 1, fmt, ap);
    sb->len += (size_t)n;
}

static void sb_printf(strbuf_t *sb, const char *fmt, ...) LMQ_PRINTF(2, 3);
static void sb_printf(strbuf_t *sb, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    sb_vprintf(sb, fmt, ap);
    va_end(ap);
}

/* Hands the text over (caller frees); NULL when an allocation failed. */
static char *sb_take(strbuf_t *sb)
{
    if (sb->oom || !sb->p) {
        free(sb->p);
        sb->p = NULL;
        return NULL;
    }
    char *p = sb->p;
    sb->p = NULL;
    return p;
}

/* ---- the load in progress: origin, captured libcyaml log, document tree ---- */

enum bt_kind { BT_FIELD, BT_ENTRY, BT_MAPPING, BT_OTHER };

typedef struct bt_step {
    enum bt_kind kind;
    char name[128]; /* field name for BT_FIELD */
    long entry;     /* 1-based entry for BT_ENTRY */
    int line, col;  /* 1-based, as libcyaml prints them; 0 = unknown */
} bt_step_t;

typedef struct loader {
    lmq_config_t *cfg;
    const char *origin; /* file path or "<config>" */
    const unsigned char *text;
    size_t len;
    char msg[512]; /* libcyaml's first error message, without "Load: " */
    bool have_msg, in_backtrace;
    bt_step_t bt[CFG_MAX_BACKTRACE]; /* innermost first */
    size_t n_bt;
    yaml_document_t doc;
    int doc_state; /* 0 = not tried, 1 = loaded, -1 = syntax error (see syn_*) */
    char syn_msg[256];
    int syn_line, syn_col;
    bool failed;
    char *err; /* the first error, formatted (NULL if that ran out of memory); owned */
} loader_t;

static void capture_log(cyaml_log_t level, void *ctx, const char *fmt, va_list args)
{
    loader_t *L = ctx;
    if (level < CYAML_LOG_ERROR)
        return;
    char line[512];
    vsnprintf(line, sizeof line, fmt, args);
    line[strcspn(line, "\n")] = '\0';
    if (strncmp(line, "Load: Backtrace", 15) == 0) {
        L->in_backtrace = true;
        return;
    }
    if (L->in_backtrace && strncmp(line, "  in ", 5) == 0) {
        if (L->n_bt >= CFG_MAX_BACKTRACE)
            return;
        bt_step_t *s = &L->bt[L->n_bt];
        memset(s, 0, sizeof *s);
        if (sscanf(line, "  in mapping field '%127[^']' (line: %d, column: %d)", s->name, &s->line, &s->col) == 3)
            s->kind = BT_FIELD;
        else if (sscanf(line, "  in sequence entry '%ld' (line: %d, column: %d)", &s->entry, &s->line, &s->col) == 3)
            s->kind = BT_ENTRY;
        else if (sscanf(line, "  in mapping (line: %d, column: %d)", &s->line, &s->col) == 2)
            s->kind = BT_MAPPING;
        else {
            s->kind = BT_OTHER;
            const char *p = strstr(line, "(line: ");
            if (!p || sscanf(p, "(line: %d, column: %d)", &s->line, &s->col) != 2)
                s->line = s->col = 0;
        }
        L->n_bt++;
        return;
    }
    if (!L->have_msg) {
        const char *m = strncmp(line, "Load: ", 6) == 0 ? line + 6 : line;
        snprintf(L->msg, sizeof L->msg, "%s", m);
        L->have_msg = true;
    }
}

/* Loads the document tree once (for positions); on a syntax error records
 * libyaml's own message and mark instead. */
static bool doc_load(loader_t *L)
{
    if (L->doc_state)
        return L->doc_state > 0;
    yaml_parser_t p;
    L->doc_state = -1;
    if (!yaml_parser_initialize(&p))
        return false;
    yaml_parser_set_input_string(&p, L->text, L->len);
    if (yaml_parser_load(&p, &L->doc)) {
        L->doc_state = 1;
    } else {
        const char *problem = p.problem ? p.problem : "invalid YAML";
        if (p.context)
            snprintf(L->syn_msg, sizeof L->syn_msg, "syntax error: %s (%s at line %zu, column %zu)", problem, p.context,
                     p.context_mark.line + 1, p.context_mark.column + 1);
        else
            snprintf(L->syn_msg, sizeof L->syn_msg, "syntax error: %s", problem);
        L->syn_line = (int)p.problem_mark.line + 1;
        L->syn_col = (int)p.problem_mark.column + 1;
    }
    yaml_parser_delete(&p);
    return L->doc_state > 0;
}

static yaml_node_t *doc_root(loader_t *L) { return doc_load(L) ? yaml_document_get_root_node(&L->doc) : NULL; }

static bool scalar_is(const yaml_node_t *n, const char *s)
{
    size_t len = strlen(s);
    return n && n->type == YAML_SCALAR_NODE && n->data.scalar.length == len &&
           memcmp(n->data.scalar.value, s, len) == 0;
}

/* The nth (0-based) occurrence of key in a mapping node: its key node or its
 * value node. */
static yaml_node_t *map_get(loader_t *L, yaml_node_t *map, const char *key, int nth, bool want_key)
{
    if (!map || map->type != YAML_MAPPING_NODE)
        return NULL;
    for (yaml_node_pair_t *pr = map->data.mapping.pairs.start; pr < map->data.mapping.pairs.top; pr++) {
        yaml_node_t *k = yaml_document_get_node(&L->doc, pr->key);
        if (scalar_is(k, key) && nth-- == 0)
            return want_key ? k : yaml_document_get_node(&L->doc, pr->value);
    }
    return NULL;
}

static yaml_node_t *seq_item(loader_t *L, yaml_node_t *seq, size_t i)
{
    if (!seq || seq->type != YAML_SEQUENCE_NODE)
        return NULL;
    if (i >= (size_t)(seq->data.sequence.items.top - seq->data.sequence.items.start))
        return NULL;
    return yaml_document_get_node(&L->doc, seq->data.sequence.items.start[i]);
}

static void node_pos(const yaml_node_t *n, int *line, int *col)
{
    *line = (int)n->start_mark.line + 1;
    *col = (int)n->start_mark.column + 1;
}

/* The node of device i, or of one of its fields, or of one of its options
 * (the key, or the value when opt_value). Returns the position of the deepest
 * node found; false when not even the document root was found. */
static bool device_pos(loader_t *L, size_t i, const char *field, const char *opt, bool opt_value, int *line, int *col)
{
    yaml_node_t *n = doc_root(L), *m;
    if (!n)
        return false;
    node_pos(n, line, col);
    if (!(m = map_get(L, n, "devices", 0, false)))
        return true;
    node_pos(n = m, line, col);
    if (!(m = seq_item(L, n, i)))
        return true;
    node_pos(n = m, line, col);
    if (!field || !(m = map_get(L, n, field, 0, false)))
        return true;
    node_pos(n = m, line, col);
    if (opt && (m = map_get(L, n, opt, 0, !opt_value)))
        node_pos(m, line, col);
    return true;
}

static void fail(loader_t *L, int line, int col, const char *fmt, ...) LMQ_PRINTF(4, 5);
/* Records the first error as "ORIGIN:LINE:COL: message" (line 0 = no
 * position known); later ones would only be consequences of it. */
static void fail(loader_t *L, int line, int col, const char *fmt, ...)
{
    if (L->failed)
        return;
    L->failed = true;
    strbuf_t sb = {0};
    if (line > 0)
        sb_printf(&sb, "%s:%d:%d: ", L->origin, line, col);
    else
        sb_printf(&sb, "%s: ", L->origin);
    va_list ap;
    va_start(ap, fmt);
    sb_vprintf(&sb, fmt, ap);
    va_end(ap);
    L->err = sb_take(&sb);
}

/* ---- drivers and their options ---- */

static void list_drivers(strbuf_t *sb)
{
    const lmq_driver_t *const *list = lmq_driver_list();
    size_t n = 0;
    for (size_t i = 0; list && list[i]; i++)
        sb_printf(sb, "%s%s", n++ ? ", " : "", list[i]->name);
    if (!n)
        sb_printf(sb, "none");
}

static void list_options(strbuf_t *sb, const lmq_driver_t *drv)
{
    size_t n = 0;
    for (const lmq_option_t *o = drv->options; o && o->name; o++)
        sb_printf(sb, "%s%s", n++ ? ", " : "its options: ", o->name);
    if (!n)
        sb_printf(sb, "it takes no options");
}

static void fail_unknown_driver(loader_t *L, int line, int col, const char *dev, const char *driver)
{
    strbuf_t sb = {0};
    list_drivers(&sb);
    fail(L, line, col, "device '%s': unknown driver '%s' (built-in drivers: %s; or the path of a driver .so)", dev,
         driver, sb.oom || !sb.p ? "?" : sb.p);
    free(sb.p);
}

static void fail_foreign_option(loader_t *L, int line, int col, const char *dev, const lmq_driver_t *drv,
                                const char *opt)
{
    strbuf_t sb = {0};
    list_options(&sb, drv);
    fail(L, line, col, "device '%s': option '%s' is not an option of driver %s (%s)", dev, opt, drv->name,
         sb.oom || !sb.p ? "?" : sb.p);
    free(sb.p);
}

static const char *type_wanted(lmq_type_t t)
{
    switch (t) {
    case LMQ_BOOL:
        return "a bool (true or false)";
    case LMQ_INT:
        return "an integer";
    case LMQ_FLOAT:
        return "a number";
    case LMQ_STRING:
        return "UTF-8 text";
    default:
        return "a value of an unsupported type (driver bug)";
    }
}

/* A driver named in the file: one of its plugins, else a built-in one. */
static const lmq_driver_t *find_driver(const lmq_config_t *c, const char *name)
{
    for (size_t i = 0; name && i < c->nplugins; i++)
        if (strcmp(c->plugins[i].name, name) == 0)
            return c->plugins[i].drv;
    return lmq_driver_find(name);
}

/* A driver given by path rather than by name: "./libmine.so", "/opt/x.so". */
static bool is_plugin_name(const char *name) { return strchr(name, '/') || strstr(name, ".so"); }

/* text relative to the config's directory (absolute text unchanged);
 * caller frees. */
static char *resolve_path(const lmq_config_t *c, const char *text)
{
    size_t len = strlen(c->dir) + strlen(text) + 2;
    char *p = malloc(len);
    if (p)
        snprintf(p, len, "%s%s%s", text[0] == '/' ? "" : c->dir, text[0] == '/' ? "" : "/", text);
    return p;
}

/* ---- the schema ---- */

/* The i-th driver whose options the schema knows: the built-in ones, then
 * the plugins the file loads; NULL past the end. */
static const lmq_driver_t *schema_driver(const lmq_config_t *c, size_t i)
{
    const lmq_driver_t *const *list = lmq_driver_list();
    size_t nbuiltin = 0;
    while (list && list[nbuiltin])
        nbuiltin++;
    if (i < nbuiltin)
        return list[i];
    return i - nbuiltin < c->nplugins ? c->plugins[i - nbuiltin].drv : NULL;
}

static int build_schema(lmq_config_t *c)
{
    size_t max = 0;
    for (size_t i = 0; schema_driver(c, i); i++)
        for (const lmq_option_t *o = schema_driver(c, i)->options; o && o->name; o++)
            max++;
    c->opt_fields = calloc(max + 1, sizeof *c->opt_fields);
    if (!c->opt_fields)
        return LMQ_EMEM;
    for (size_t i = 0; schema_driver(c, i); i++)
        for (const lmq_option_t *o = schema_driver(c, i)->options; o && o->name; o++) {
            size_t k = 0;
            while (k < c->n_opts && strcmp(c->opt_fields[k].key, o->name) != 0)
                k++;
            if (k < c->n_opts)
                continue; /* shared by several drivers: one slot */
            c->opt_fields[k] = (cyaml_schema_field_t){
                .key = o->name,
                .data_offset = (uint32_t)(k * sizeof(char *)),
                .value = {CYAML_VALUE_STRING(CYAML_FLAG_POINTER | CYAML_FLAG_OPTIONAL, char *, 0, CYAML_UNLIMITED)},
            };
            c->n_opts++;
        }
    c->opt_fields[c->n_opts] = (cyaml_schema_field_t)CYAML_FIELD_END;

    c->dev_fields[0] = (cyaml_schema_field_t)CYAML_FIELD_STRING_PTR("name", CYAML_FLAG_POINTER, struct raw_device, name,
                                                                    0, CYAML_UNLIMITED);
    c->dev_fields[1] = (cyaml_schema_field_t)CYAML_FIELD_STRING_PTR("driver", CYAML_FLAG_POINTER, struct raw_device,
                                                                    driver, 0, CYAML_UNLIMITED);
    c->dev_fields[2] = (cyaml_schema_field_t)CYAML_FIELD_STRING_PTR("connection", CYAML_FLAG_OPTIONAL,
                                                                    struct raw_device, connection, 0, CYAML_UNLIMITED);
    /* `options:` with nothing after it is an empty option list, not an error. */
    c->dev_fields[3] = (cyaml_schema_field_t){
        .key = "options",
        .data_offset = offsetof(struct raw_device, options),
        .value = {.type = CYAML_MAPPING,
                  .flags = (enum cyaml_flag)(CYAML_FLAG_POINTER_NULL | CYAML_FLAG_OPTIONAL),
                  .data_size = (uint32_t)((c->n_opts ? c->n_opts : 1) * sizeof(char *)),
                  .mapping = {.fields = c->opt_fields}},
    };
    c->dev_fields[4] =
        (cyaml_schema_field_t)CYAML_FIELD_BOOL("restore", CYAML_FLAG_OPTIONAL, struct raw_device, restore);
    c->dev_fields[5] = (cyaml_schema_field_t)CYAML_FIELD_END;
    c->dev_entry = (cyaml_schema_value_t){CYAML_VALUE_MAPPING(CYAML_FLAG_DEFAULT, struct raw_device, c->dev_fields)};

    c->top_fields[0] = (cyaml_schema_field_t)CYAML_FIELD_STRING_PTR("control", CYAML_FLAG_OPTIONAL, struct raw_config,
                                                                    control, 0, CYAML_UNLIMITED);
    c->top_fields[1] = (cyaml_schema_field_t)CYAML_FIELD_STRING_PTR("data", CYAML_FLAG_OPTIONAL, struct raw_config,
                                                                    data, 0, CYAML_UNLIMITED);
    c->top_fields[2] = (cyaml_schema_field_t)CYAML_FIELD_STRING_PTR("log_level", CYAML_FLAG_OPTIONAL, struct raw_config,
                                                                    log_level, 0, CYAML_UNLIMITED);
    c->top_fields[3] = (cyaml_schema_field_t)CYAML_FIELD_SEQUENCE("devices", CYAML_FLAG_POINTER, struct raw_config,
                                                                  devices, &c->dev_entry, 0, CFG_MAX_DEVICES);
    c->top_fields[4] = (cyaml_schema_field_t)CYAML_FIELD_FLOAT_PTR(
        "stop_grace", CYAML_FLAG_POINTER | CYAML_FLAG_OPTIONAL, struct raw_config, stop_grace);
    c->top_fields[5] = (cyaml_schema_field_t)CYAML_FIELD_FLOAT_PTR(
        "time_scale", CYAML_FLAG_POINTER | CYAML_FLAG_OPTIONAL, struct raw_config, time_scale);
    c->str_entry = (cyaml_schema_value_t){CYAML_VALUE_STRING(CYAML_FLAG_POINTER, char, 0, CYAML_UNLIMITED)};
    c->wk_fields[0] = (cyaml_schema_field_t)CYAML_FIELD_STRING_PTR("name", CYAML_FLAG_POINTER, struct raw_worker, name,
                                                                   0, CYAML_UNLIMITED);
    c->wk_fields[1] = (cyaml_schema_field_t)CYAML_FIELD_STRING_PTR("program", CYAML_FLAG_POINTER, struct raw_worker,
                                                                   program, 0, CYAML_UNLIMITED);
    c->wk_fields[2] = (cyaml_schema_field_t)CYAML_FIELD_SEQUENCE(
        "args", CYAML_FLAG_POINTER_NULL | CYAML_FLAG_OPTIONAL, struct raw_worker, args, &c->str_entry, 0,
        CYAML_UNLIMITED);
    c->wk_fields[3] = (cyaml_schema_field_t)CYAML_FIELD_SEQUENCE(
        "env", CYAML_FLAG_POINTER_NULL | CYAML_FLAG_OPTIONAL, struct raw_worker, env, &c->str_entry, 0,
        CYAML_UNLIMITED);
    c->wk_fields[4] = (cyaml_schema_field_t)CYAML_FIELD_STRING_PTR("restart", CYAML_FLAG_OPTIONAL, struct raw_worker,
                                                                   restart, 0, CYAML_UNLIMITED);
    c->wk_fields[5] = (cyaml_schema_field_t)CYAML_FIELD_END;
    c->wk_entry = (cyaml_schema_value_t){CYAML_VALUE_MAPPING(CYAML_FLAG_DEFAULT, struct raw_worker, c->wk_fields)};
    c->top_fields[6] = (cyaml_schema_field_t)CYAML_FIELD_SEQUENCE(
        "workers", CYAML_FLAG_POINTER | CYAML_FLAG_OPTIONAL, struct raw_config, workers, &c->wk_entry, 0,
        CFG_MAX_WORKERS);
    c->cl_fields[0] = (cyaml_schema_field_t)CYAML_FIELD_STRING_PTR("name", CYAML_FLAG_POINTER, struct raw_client, name,
                                                                   0, CYAML_UNLIMITED);
    c->cl_fields[1] = (cyaml_schema_field_t)CYAML_FIELD_STRING_PTR("key", CYAML_FLAG_POINTER, struct raw_client, key, 0,
                                                                   CYAML_UNLIMITED);
    c->cl_fields[2] = (cyaml_schema_field_t)CYAML_FIELD_STRING_PTR("role", CYAML_FLAG_OPTIONAL, struct raw_client, role,
                                                                   0, CYAML_UNLIMITED);
    c->cl_fields[3] = (cyaml_schema_field_t)CYAML_FIELD_END;
    c->cl_entry = (cyaml_schema_value_t){CYAML_VALUE_MAPPING(CYAML_FLAG_DEFAULT, struct raw_client, c->cl_fields)};
    c->sec_fields[0] = (cyaml_schema_field_t)CYAML_FIELD_STRING_PTR("key", CYAML_FLAG_OPTIONAL, struct raw_security,
                                                                    key, 0, CYAML_UNLIMITED);
    c->sec_fields[1] = (cyaml_schema_field_t)CYAML_FIELD_SEQUENCE(
        "clients", CYAML_FLAG_POINTER | CYAML_FLAG_OPTIONAL, struct raw_security, clients, &c->cl_entry, 0, 4096);
    c->sec_fields[2] =
        (cyaml_schema_field_t)CYAML_FIELD_BOOL("insecure", CYAML_FLAG_OPTIONAL, struct raw_security, insecure);
    c->sec_fields[3] = (cyaml_schema_field_t)CYAML_FIELD_END;
    c->top_fields[7] = (cyaml_schema_field_t)CYAML_FIELD_MAPPING_PTR(
        "security", CYAML_FLAG_POINTER | CYAML_FLAG_OPTIONAL, struct raw_config, security, c->sec_fields);
    c->top_fields[8] = (cyaml_schema_field_t)CYAML_FIELD_FLOAT_PTR(
        "fault_after", CYAML_FLAG_POINTER | CYAML_FLAG_OPTIONAL, struct raw_config, fault_after);
    c->top_fields[9] = (cyaml_schema_field_t)CYAML_FIELD_UINT_PTR(
        "subscriber_memory", CYAML_FLAG_POINTER | CYAML_FLAG_OPTIONAL, struct raw_config, subscriber_memory);
    c->top_fields[10] = (cyaml_schema_field_t)CYAML_FIELD_END;
    c->top = (cyaml_schema_value_t){CYAML_VALUE_MAPPING(CYAML_FLAG_POINTER, struct raw_config, c->top_fields)};
    return 0;
}

/* ---- turning a libcyaml failure into a message with an exact position ---- */

enum ctx { CTX_UNKNOWN, CTX_TOP, CTX_DEVICE, CTX_OPTIONS, CTX_WORKER };

static const char *event_words(const char *ev)
{
    if (!strcmp(ev, "SCALAR"))
        return "a scalar";
    if (!strcmp(ev, "SEQUENCE_START"))
        return "a list";
    if (!strcmp(ev, "MAPPING_START"))
        return "a mapping";
    if (!strcmp(ev, "ALIAS"))
        return "an alias";
    return "something else";
}

static const char *expect_words(const char *what)
{
    if (!strcmp(what, "STRING"))
        return "a scalar value";
    if (!strcmp(what, "SEQUENCE"))
        return "a list";
    if (!strcmp(what, "MAPPING"))
        return "a mapping (key: value)";
    return "another kind of value";
}

/* "psu1" from the document, for messages about a device libcyaml rejected. */
static void device_label(loader_t *L, yaml_node_t *entry, long index, char *buf, size_t size)
{
    yaml_node_t *n = map_get(L, entry, "name", 0, false);
    if (n && n->type == YAML_SCALAR_NODE)
        snprintf(buf, size, "device '%.*s'", (int)(n->data.scalar.length < 64 ? n->data.scalar.length : 64),
                 (const char *)n->data.scalar.value);
    else
        snprintf(buf, size, "devices[%ld]", index - 1);
}

static void cyaml_failure(loader_t *L, cyaml_err_t e)
{
    if (!doc_load(L) && L->syn_line > 0) {
        fail(L, L->syn_line, L->syn_col, "%s", L->syn_msg);
        return;
    }
    const char *m = L->have_msg ? L->msg : cyaml_strerror(e);
    char key[128] = "", want[32], got[32];
    enum { K_OTHER, K_UNKNOWN, K_DUP, K_MISSING } kind = K_OTHER;
    if (sscanf(m, "Unexpected key: %127[^\n]", key) == 1)
        kind = K_UNKNOWN;
    else if (sscanf(m, "Mapping field already seen: %127[^\n]", key) == 1)
        kind = K_DUP;
    else if (sscanf(m, "Missing required mapping field: %127[^\n]", key) == 1)
        kind = K_MISSING;

    /* For key errors the innermost "mapping field" step is the last field
     * libcyaml saw in that mapping, not where the problem is: the mapping
     * itself is the place. */
    size_t first = (kind != K_OTHER && L->n_bt && L->bt[0].kind == BT_FIELD) ? 1 : 0;
    yaml_node_t *n = doc_root(L), *entry = NULL;
    bool ok = n != NULL;
    strbuf_t path = {0};
    enum ctx ctx = CTX_TOP;
    long dev_index = 0;
    size_t depth = 0;
    for (size_t j = L->n_bt; ok && j-- > first;) {
        const bt_step_t *s = &L->bt[j];
        switch (s->kind) {
        case BT_FIELD:
            n = map_get(L, n, s->name, 0, false);
            sb_printf(&path, "%s%s", path.len ? "." : "", s->name);
            /* "devices" alone is no context we phrase messages for; its
             * entries are (next step). */
            if (depth == 0 && (!strcmp(s->name, "devices") || !strcmp(s->name, "workers")))
                ctx = CTX_UNKNOWN;
            else if (depth == 2 && ctx == CTX_DEVICE && !strcmp(s->name, "options"))
                ctx = CTX_OPTIONS;
            else
                ctx = CTX_UNKNOWN;
            depth++;
            break;
        case BT_ENTRY:
            n = s->entry >= 1 ? seq_item(L, n, (size_t)(s->entry - 1)) : NULL;
            sb_printf(&path, "[%ld]", s->entry - 1);
            if (depth == 1 && path.p && !strncmp(path.p, "devices[", 8)) {
                ctx = CTX_DEVICE;
                entry = n;
                dev_index = s->entry;
            } else if (depth == 1 && path.p && !strncmp(path.p, "workers[", 8)) {
                ctx = CTX_WORKER;
                entry = n;
                dev_index = s->entry;
            } else
                ctx = CTX_UNKNOWN;
            depth++;
            break;
        case BT_MAPPING:
            ok = n->type == YAML_MAPPING_NODE;
            break;
        default:
            ok = false;
        }
        ok = ok && n;
    }
    int line = 0, col = 0;
    if (ok) {
        yaml_node_t *t = n;
        if (kind == K_UNKNOWN || kind == K_DUP)
            t = map_get(L, n, key, kind == K_DUP ? 1 : 0, true);
        node_pos(t ? t : n, &line, &col);
    } else if (L->n_bt) {
        line = L->bt[0].line;
        col = L->bt[0].col;
        ctx = CTX_UNKNOWN;
    }
    char dev[96] = "device";
    if ((ctx == CTX_DEVICE || ctx == CTX_OPTIONS) && entry)
        device_label(L, entry, dev_index, dev, sizeof dev);
    if (ctx == CTX_WORKER && entry) {
        yaml_node_t *nn = map_get(L, entry, "name", 0, false);
        if (nn && nn->type == YAML_SCALAR_NODE)
            snprintf(dev, sizeof dev, "worker '%.*s'", (int)(nn->data.scalar.length < 64 ? nn->data.scalar.length : 64),
                     (const char *)nn->data.scalar.value);
        else
            snprintf(dev, sizeof dev, "workers[%ld]", dev_index - 1);
    }
    const char *where = path.p && !path.oom ? path.p : "";

    if (kind == K_UNKNOWN && ctx == CTX_OPTIONS && entry) {
        /* Not an option of any driver: say what the device's driver takes,
         * or that the driver itself is the problem. */
        yaml_node_t *dn = map_get(L, entry, "driver", 0, false), *nn = map_get(L, entry, "name", 0, false);
        char drvname[128] = "", devname[128] = "?";
        if (dn && dn->type == YAML_SCALAR_NODE)
            snprintf(drvname, sizeof drvname, "%.*s", (int)dn->data.scalar.length, (const char *)dn->data.scalar.value);
        if (nn && nn->type == YAML_SCALAR_NODE)
            snprintf(devname, sizeof devname, "%.*s", (int)nn->data.scalar.length, (const char *)nn->data.scalar.value);
        const lmq_driver_t *drv = drvname[0] ? find_driver(L->cfg, drvname) : NULL;
        if (drv) {
            fail_foreign_option(L, line, col, devname, drv, key);
        } else if (drvname[0]) {
            int dl, dc;
            node_pos(dn, &dl, &dc);
            fail_unknown_driver(L, dl, dc, devname, drvname);
        } else {
            fail(L, line, col, "%s: unknown option '%s'", dev, key);
        }
    } else if (kind == K_UNKNOWN && ctx == CTX_TOP) {
        fail(L, line, col,
             "unknown key '%s' (valid keys: control, data, log_level, stop_grace, fault_after, time_scale, "
             "subscriber_memory, devices, workers, security)",
             key);
    } else if (kind == K_UNKNOWN && ctx == CTX_DEVICE) {
        fail(L, line, col, "%s: unknown key '%s' (valid keys: name, driver, connection, options, restore)", dev, key);
    } else if (kind == K_UNKNOWN && ctx == CTX_WORKER) {
        fail(L, line, col, "%s: unknown key '%s' (valid keys: name, program, args, env, restart)", dev, key);
    } else if (kind == K_UNKNOWN) {
        fail(L, line, col, "%s%sunknown key '%s'", where, *where ? ": " : "", key);
    } else if (kind == K_DUP || kind == K_MISSING) {
        const char *subject = ctx == CTX_DEVICE || ctx == CTX_WORKER ? dev : where;
        fail(L, line, col, "%s%s%s key '%s'", subject, *subject ? ": " : "",
             kind == K_DUP ? "duplicate" : "missing required", key);
    } else if (sscanf(m, "Expecting %31[A-Z_], got event: %31[A-Z_]", want, got) == 2) {
        fail(L, line, col, "%s%sexpected %s, found %s", where, *where ? ": " : "", expect_words(want),
             event_words(got));
    } else {
        fail(L, line, col, "%s%s%s", where, *where ? ": " : "", m);
    }
    free(path.p);
}

/* ---- checks libcyaml cannot make ---- */

/* Only the shape: ZeroMQ itself judges the rest when the daemon binds. */
static bool endpoint_ok(const char *ep)
{
    const char *sep = strstr(ep, "://");
    if (!sep || sep == ep || !sep[3])
        return false;
    for (const char *p = ep; p < sep; p++)
        if (!(*p >= 'a' && *p <= 'z'))
            return false;
    return true;
}

static void top_pos(loader_t *L, const char *key, int *line, int *col)
{
    yaml_node_t *n = map_get(L, doc_root(L), key, 0, false);
    if (n)
        node_pos(n, line, col);
}

static void validate(loader_t *L)
{
    const struct raw_config *r = L->cfg->raw;
    int line = 0, col = 0;
    if (r->stop_grace && !(*r->stop_grace >= 0 && *r->stop_grace <= 3600)) {
        top_pos(L, "stop_grace", &line, &col);
        fail(L, line, col, "stop_grace %g s is outside 0..3600 s", *r->stop_grace);
        return;
    }
    if (r->fault_after && !(*r->fault_after >= 0 && *r->fault_after <= 3600)) {
        top_pos(L, "fault_after", &line, &col);
        fail(L, line, col, "fault_after %g s is outside 0..3600 s (0: never)", *r->fault_after);
        return;
    }
    if (r->time_scale && !(*r->time_scale >= 1e-3 && *r->time_scale <= 1e6)) {
        top_pos(L, "time_scale", &line, &col);
        fail(L, line, col, "time_scale %g is outside 0.001..1000000", *r->time_scale);
        return;
    }
    if (r->subscriber_memory && !(*r->subscriber_memory >= 1024 && *r->subscriber_memory <= (1ULL << 40))) {
        top_pos(L, "subscriber_memory", &line, &col);
        fail(L, line, col, "subscriber_memory %llu bytes is outside 1024..1099511627776 (1 KiB..1 TiB)",
             (unsigned long long)*r->subscriber_memory);
        return;
    }
    if (r->log_level && lmq_log_level_parse(r->log_level) < 0) {
        top_pos(L, "log_level", &line, &col);
        fail(L, line, col, "log_level '%s' is not one of error, warn, info, debug, trace", r->log_level);
        return;
    }
    const char *eps[2] = {r->control, r->data}, *keys[2] = {"control", "data"};
    for (int k = 0; k < 2; k++)
        if (eps[k] && !endpoint_ok(eps[k])) {
            top_pos(L, keys[k], &line, &col);
            fail(L, line, col,
                 "%s endpoint '%s' is not a ZeroMQ endpoint (like ipc:///path/to/socket, tcp://host:port or "
                 "inproc://name)",
                 keys[k], eps[k]);
            return;
        }
    /* The daemon's own rules (lmq_daemon_add), so a file that passes here is
     * not refused later; here the messages get positions. */
    for (size_t i = 0; i < r->devices_count; i++) {
        const lmq_config_device_t *d = &L->cfg->devices[i];
        line = col = 0;
        if (!lmq__device_name_ok(d->name)) {
            device_pos(L, i, "name", NULL, false, &line, &col);
            fail(L, line, col, "device name '%s' is invalid (use " LMQ__DEVICE_NAME_RULE ")", d->name);
            return;
        }
        for (size_t j = 0; j < i; j++)
            if (strcmp(L->cfg->devices[j].name, d->name) == 0) {
                int fl = 0, fc = 0;
                device_pos(L, j, "name", NULL, false, &fl, &fc);
                device_pos(L, i, "name", NULL, false, &line, &col);
                fail(L, line, col, "device '%s': duplicate name (first used on line %d)", d->name, fl);
                return;
            }
        const lmq_driver_t *drv = d->drv;
        if (!drv) {
            device_pos(L, i, "driver", NULL, false, &line, &col);
            fail_unknown_driver(L, line, col, d->name, d->driver);
            return;
        }
        lmq__option_fault_t f;
        switch (lmq__options_parse(drv, d->options, NULL, &f)) {
        case 0:
            break;
        case LMQ__OPT_UNKNOWN:
            device_pos(L, i, "options", f.name, false, &line, &col);
            fail_foreign_option(L, line, col, d->name, drv, f.name);
            return;
        case LMQ__OPT_MISSING:
            device_pos(L, i, NULL, NULL, false, &line, &col);
            fail(L, line, col, "device '%s': driver %s requires option '%s' (%s)", d->name, drv->name, f.name,
                 f.opt->doc ? f.opt->doc : type_wanted(f.opt->type));
            return;
        default: /* a bad value (libcyaml gives every option one) */
            device_pos(L, i, "options", f.name, true, &line, &col);
            fail(L, line, col, "device '%s': option '%s' must be %s, not '%s'", d->name, f.name,
                 type_wanted(f.opt->type), f.text ? f.text : "");
            return;
        }
    }
}

/* What a driver checks itself when a device is made (configure(): the scpi
 * driver's connection and description file), so that a file that loads is
 * not refused by lmq_daemon_add later; here the message gets a position.
 * After resolve_path_options: option paths are final. */
static void probe_devices(loader_t *L)
{
    for (size_t i = 0; i < L->cfg->raw->devices_count && !L->failed; i++) {
        const lmq_config_device_t *d = &L->cfg->devices[i];
        if (!d->drv->configure)
            continue;
        char why[600];
        lmq_dev_t *probe = lmq__dev_new(d->name, d->drv, d->connection, d->options, why, sizeof why);
        if (!probe) {
            int line = 0, col = 0;
            device_pos(L, i, NULL, NULL, false, &line, &col);
            fail(L, line, col, "%s", why);
        }
        lmq__dev_destroy(&probe);
    }
}

static int build_devices(lmq_config_t *c)
{
    const struct raw_config *r = c->raw;
    size_t slots = 0;
    for (size_t i = 0; i < r->devices_count; i++) {
        slots++;
        for (size_t k = 0; r->devices[i].options && k < c->n_opts; k++)
            slots += r->devices[i].options[k] ? 2 : 0;
    }
    c->devices = calloc(r->devices_count ? r->devices_count : 1, sizeof *c->devices);
    c->optv = calloc(slots ? slots : 1, sizeof *c->optv);
    if (!c->devices || !c->optv)
        return LMQ_EMEM;
    const char **o = c->optv;
    for (size_t i = 0; i < r->devices_count; i++) {
        const struct raw_device *d = &r->devices[i];
        c->devices[i] = (lmq_config_device_t){
            .name = d->name,
            .driver = d->driver,
            .connection = d->connection ? d->connection : "",
            .options = o,
            .drv = find_driver(c, d->driver),
            .restore = d->restore,
        };
        for (size_t k = 0; d->options && k < c->n_opts; k++)
            if (d->options[k]) {
                *o++ = c->opt_fields[k].key;
                *o++ = d->options[k];
            }
        *o++ = NULL;
    }
    return 0;
}

/* ---- workers ---- */

/* The position of worker i, of one of its fields, or of entry k of a list
 * field (k < 0: the field itself). */
static void worker_pos(loader_t *L, size_t i, const char *field, long k, int *line, int *col)
{
    yaml_node_t *n = doc_root(L), *m;
    if (!n)
        return;
    node_pos(n, line, col);
    if (!(m = map_get(L, n, "workers", 0, false)))
        return;
    node_pos(n = m, line, col);
    if (!(m = seq_item(L, n, i)))
        return;
    node_pos(n = m, line, col);
    if (!field || !(m = map_get(L, n, field, 0, false)))
        return;
    node_pos(n = m, line, col);
    if (k >= 0 && (m = seq_item(L, n, (size_t)k)))
        node_pos(m, line, col);
}

/* Checks the workers with the daemon's and the supervisor's rules (so a
 * file that loads is not refused when applied, and the messages get
 * positions) and builds the public view of them. */
static void load_workers(loader_t *L)
{
    lmq_config_t *c = L->cfg;
    const struct raw_config *r = c->raw;
    if (!r->workers_count)
        return;
    size_t slots = 0;
    for (size_t i = 0; i < r->workers_count; i++)
        slots += r->workers[i].args_count + 1 + r->workers[i].env_count + 1;
    c->workers = calloc(r->workers_count, sizeof *c->workers);
    c->wargv = calloc(slots, sizeof *c->wargv);
    c->wprograms = calloc(r->workers_count, sizeof *c->wprograms);
    if (!c->workers || !c->wargv || !c->wprograms) {
        fail(L, 0, 0, "out of memory");
        return;
    }
    c->nworkers = r->workers_count;
    const char **o = c->wargv;
    for (size_t i = 0; i < r->workers_count; i++) {
        const struct raw_worker *w = &r->workers[i];
        int line = 0, col = 0;
        if (!lmq__worker_name_ok(w->name)) {
            worker_pos(L, i, "name", -1, &line, &col);
            fail(L, line, col, "worker name '%s' is invalid (use " LMQ__WORKER_NAME_RULE ")", w->name);
            return;
        }
        for (size_t j = 0; j < i; j++)
            if (strcmp(r->workers[j].name, w->name) == 0) {
                int fl = 0, fc = 0;
                worker_pos(L, j, "name", -1, &fl, &fc);
                worker_pos(L, i, "name", -1, &line, &col);
                fail(L, line, col, "worker '%s': duplicate name (first used on line %d)", w->name, fl);
                return;
            }
        int restart = w->restart ? lmq_restart_parse(w->restart) : LMQ_RESTART_ON_FAILURE;
        if (restart < 0) {
            worker_pos(L, i, "restart", -1, &line, &col);
            fail(L, line, col, "worker '%s': restart '%s' is not one of always, on-failure, never", w->name,
                 w->restart);
            return;
        }
        lmq_config_worker_t *cw = &c->workers[i];
        cw->name = w->name;
        cw->restart = (lmq_restart_t)restart;
        /* A program with a '/' is a path, relative to the file; a bare name
         * is looked up in PATH when the worker starts. */
        if (!w->program[0]) {
            worker_pos(L, i, "program", -1, &line, &col);
            fail(L, line, col, "worker '%s': empty program", w->name);
            return;
        }
        if (strchr(w->program, '/')) {
            bool as_is = w->program[0] == '/' || strcmp(c->dir, ".") == 0;
            if (!(c->wprograms[i] = as_is ? strdup(w->program) : resolve_path(c, w->program))) {
                fail(L, 0, 0, "out of memory");
                return;
            }
            if (access(c->wprograms[i], X_OK) != 0) {
                int e = errno;
                worker_pos(L, i, "program", -1, &line, &col);
                fail(L, line, col, "worker '%s': program %s%s%s%s: %s", w->name, w->program, as_is ? "" : " (",
                     as_is ? "" : c->wprograms[i], as_is ? "" : ")", e == EACCES ? "not executable" : strerror(e));
                return;
            }
            cw->program = c->wprograms[i];
        } else {
            cw->program = w->program;
        }
        cw->args = o;
        for (unsigned k = 0; k < w->args_count; k++)
            *o++ = w->args[k];
        *o++ = NULL;
        /* libcyaml gives `env: []` as NULL too: an empty environment is
         * still one the file gives. */
        yaml_node_t *entry = seq_item(L, map_get(L, doc_root(L), "workers", 0, false), i);
        cw->env = w->env || map_get(L, entry, "env", 0, false) ? o : NULL;
        for (unsigned k = 0; k < w->env_count; k++) {
            const char *eq = strchr(w->env[k], '=');
            if (!eq || eq == w->env[k]) {
                worker_pos(L, i, "env", (long)k, &line, &col);
                fail(L, line, col, "worker '%s': env entry '%s' is not KEY=VALUE", w->name, w->env[k]);
                return;
            }
            *o++ = w->env[k];
        }
        *o++ = NULL;
    }
}

/* Position of security.FIELD, or of clients[i].FIELD (i >= 0). */
static void security_pos(loader_t *L, const char *field, long i, const char *cfield, int *line, int *col)
{
    yaml_node_t *n = doc_root(L), *m;
    if (!n)
        return;
    node_pos(n, line, col);
    if (!(m = map_get(L, n, "security", 0, false)))
        return;
    node_pos(n = m, line, col);
    if (!(m = map_get(L, n, field, 0, false)))
        return;
    node_pos(n = m, line, col);
    if (i >= 0 && (m = seq_item(L, n, (size_t)i))) {
        node_pos(n = m, line, col);
        if (cfield && (m = map_get(L, n, cfield, 0, false)))
            node_pos(m, line, col);
    }
}

/* Reads the daemon's key pair and the clients' public keys now, so a wrong
 * path, a bad key or a key file open to others is an error with a
 * position, not a failure at start. */
static void load_security(loader_t *L)
{
    lmq_config_t *c = L->cfg;
    const struct raw_security *sec = c->raw->security;
    if (!sec)
        return;
    int line = 0, col = 0;
    char why[700];
    if (sec->key && sec->insecure) {
        security_pos(L, "insecure", -1, NULL, &line, &col);
        fail(L, line, col, "security: insecure: true contradicts key: (with a key the daemon is secured; drop one)");
        return;
    }
    if (!sec->key && sec->clients_count) {
        security_pos(L, "clients", -1, NULL, &line, &col);
        fail(L, line, col, "security: clients need the daemon's own key pair (key: FILE, made by labmq keygen)");
        return;
    }
    if (sec->key) {
        char *path = sec->key[0] == '/' ? strdup(sec->key) : resolve_path(c, sec->key);
        int rc = path ? lmq_keypair_load(&c->server, path, true, why, sizeof why) : LMQ_EMEM;
        free(path);
        if (rc != 0) {
            security_pos(L, "key", -1, NULL, &line, &col);
            fail(L, line, col, "security: key: %s", rc == LMQ_EMEM ? "out of memory" : why);
            return;
        }
    }
    if (!sec->clients_count)
        return;
    if (!(c->clients = calloc(sec->clients_count, sizeof *c->clients))) {
        fail(L, 0, 0, "out of memory");
        return;
    }
    for (unsigned i = 0; i < sec->clients_count; i++) {
        const struct raw_client *rc = &sec->clients[i];
        lmq_config_client_t *cc = &c->clients[i];
        if (!lmq__client_name_ok(rc->name)) {
            security_pos(L, "clients", (long)i, "name", &line, &col);
            fail(L, line, col, "security: client name '%s' is invalid (use " LMQ__CLIENT_NAME_RULE ")", rc->name);
            return;
        }
        for (unsigned j = 0; j < i; j++)
            if (strcmp(sec->clients[j].name, rc->name) == 0) {
                security_pos(L, "clients", (long)i, "name", &line, &col);
                fail(L, line, col, "security: client '%s' is listed twice", rc->name);
                return;
            }
        int role = rc->role ? lmq_role_parse(rc->role) : LMQ_ROLE_OBSERVE;
        if (role < 0) {
            security_pos(L, "clients", (long)i, "role", &line, &col);
            fail(L, line, col, "security: client '%s': role '%s' is not observe or control", rc->name, rc->role);
            return;
        }
        char *path = lmq_key_z85_ok(rc->key) || rc->key[0] == '/' ? strdup(rc->key) : resolve_path(c, rc->key);
        int st = path ? lmq_key_public(cc->public_key, path, why, sizeof why) : LMQ_EMEM;
        free(path);
        if (st != 0) {
            security_pos(L, "clients", (long)i, "key", &line, &col);
            fail(L, line, col, "security: client '%s': %s", rc->name, st == LMQ_EMEM ? "out of memory" : why);
            return;
        }
        for (unsigned j = 0; j < i; j++)
            if (strcmp(c->clients[j].public_key, cc->public_key) == 0) {
                security_pos(L, "clients", (long)i, "key", &line, &col);
                fail(L, line, col, "security: clients '%s' and '%s' have the same key", c->clients[j].name, rc->name);
                return;
            }
        if (strcmp(cc->public_key, c->server.public_key) == 0) {
            security_pos(L, "clients", (long)i, "key", &line, &col);
            fail(L, line, col, "security: client '%s' has the daemon's own key; give each client its own key pair",
                 rc->name);
            return;
        }
        cc->name = rc->name;
        cc->role = (lmq_role_t)role;
        c->nclients++;
    }
}

/* ---- public API ---- */

static void set_err(char **err, const char *fmt, ...) LMQ_PRINTF(2, 3);
static void set_err(char **err, const char *fmt, ...)
{
    if (!err)
        return;
    strbuf_t sb = {0};
    va_list ap;
    va_start(ap, fmt);
    sb_vprintf(&sb, fmt, ap);
    va_end(ap);
    *err = sb_take(&sb);
}

/* Loads the drivers the file names by path, before the schema is built: it
 * must know their options. Works on libyaml's tree; a file that does not
 * parse is reported by the libcyaml load that follows. */
static void load_plugins(loader_t *L)
{
    lmq_config_t *c = L->cfg;
    yaml_node_t *devs = map_get(L, doc_root(L), "devices", 0, false);
    for (size_t i = 0; !L->failed; i++) {
        yaml_node_t *entry = seq_item(L, devs, i), *dn = map_get(L, entry, "driver", 0, false);
        if (!entry)
            break;
        if (!dn || dn->type != YAML_SCALAR_NODE)
            continue;
        char name[512];
        snprintf(name, sizeof name, "%.*s", (int)dn->data.scalar.length, (const char *)dn->data.scalar.value);
        if (!is_plugin_name(name) || find_driver(c, name) != lmq_driver_find(name))
            continue;
        char *path = resolve_path(c, name), why[600];
        struct plugin *np = realloc(c->plugins, (c->nplugins + 1) * sizeof *np);
        if (np)
            c->plugins = np;
        const lmq_driver_t *drv = path && np ? lmq_driver_load(path, why, sizeof why) : NULL;
        free(path);
        int line, col;
        node_pos(dn, &line, &col);
        if (!path || !np) {
            fail(L, line, col, "out of memory");
        } else if (!drv) {
            fail(L, line, col, "%s", why);
        } else if (!(c->plugins[c->nplugins].name = strdup(name))) {
            fail(L, line, col, "out of memory");
        } else {
            c->plugins[c->nplugins++].drv = drv;
        }
    }
}

/* Option values that name files (lmq_option_t.path) are relative to the
 * config file, not to wherever labmqd was started. */
static void resolve_path_options(loader_t *L)
{
    lmq_config_t *c = L->cfg;
    for (size_t i = 0; i < c->raw->devices_count && !L->failed; i++) {
        lmq_config_device_t *d = &c->devices[i];
        for (const char **o = (const char **)d->options; o && o[0]; o += 2) {
            const lmq_option_t *opt = d->drv->options;
            while (opt && opt->name && strcmp(opt->name, o[0]) != 0)
                opt++;
            if (!opt || !opt->name || !opt->path || !o[1][0] || o[1][0] == '/')
                continue;
            char **np = realloc(c->paths, (c->npaths + 2) * sizeof *np);
            char *full = np ? resolve_path(c, o[1]) : NULL;
            if (np)
                c->paths = np;
            if (!full) {
                fail(L, 0, 0, "out of memory");
                return;
            }
            c->paths[c->npaths++] = full;
            c->paths[c->npaths] = NULL;
            o[1] = full;
        }
    }
}

static lmq_config_t *parse_text(const char *text, size_t len, const char *origin, const char *dir, char **err)
{
    lmq_config_t *c = calloc(1, sizeof *c);
    if (c)
        c->dir = strdup(dir);
    if (!c || !c->dir) {
        lmq_config_destroy(&c);
        set_err(err, "%s: out of memory", origin);
        return NULL;
    }
    loader_t L = {.cfg = c, .origin = origin, .text = (const unsigned char *)text, .len = len};
    load_plugins(&L);
    if (!L.failed && build_schema(c) != 0)
        fail(&L, 0, 0, "out of memory");
    if (L.failed) {
        if (L.doc_state > 0)
            yaml_document_delete(&L.doc);
        if (err)
            *err = L.err;
        else
            free(L.err);
        lmq_config_destroy(&c);
        return NULL;
    }
    c->cy = (cyaml_config_t){
        .log_fn = capture_log,
        .log_ctx = &L,
        .mem_fn = cyaml_mem,
        .log_level = CYAML_LOG_ERROR,
        /* Aliases can expand exponentially ("billion laughs"); a lab config
         * does not need them. */
        .flags = CYAML_CFG_NO_ALIAS,
    };
    struct raw_config *raw = NULL;
    cyaml_err_t e = cyaml_load_data((const uint8_t *)text, len, &c->cy, &c->top, (cyaml_data_t **)&raw, NULL);
    c->cy.log_fn = NULL; /* L dies with this frame; cyaml_free must not log into it */
    c->cy.log_ctx = NULL;
    if (e == CYAML_ERR_OOM) {
        fail(&L, 0, 0, "out of memory");
    } else if (e != CYAML_OK) {
        cyaml_failure(&L, e);
    } else if (!raw) {
        fail(&L, 0, 0, "the configuration is empty (it needs at least a 'devices:' list)");
    } else {
        c->raw = raw;
        if (build_devices(c) != 0)
            fail(&L, 0, 0, "out of memory");
        else
            validate(&L);
        if (!L.failed)
            resolve_path_options(&L);
        if (!L.failed)
            probe_devices(&L);
        if (!L.failed)
            load_workers(&L);
        if (!L.failed)
            load_security(&L);
    }
    if (L.doc_state > 0)
        yaml_document_delete(&L.doc);
    if (L.failed) {
        if (err)
            *err = L.err;
        else
            free(L.err);
        lmq_config_destroy(&c);
        return NULL;
    }
    return c;
}

lmq_config_t *lmq_config_parse(const char *yaml, size_t len, char **err)
{
    if (err)
        *err = NULL;
    if (!yaml) {
        set_err(err, "no configuration text");
        return NULL;
    }
    if (len > CFG_MAX_BYTES) {
        set_err(err, "<config>: larger than %u bytes", CFG_MAX_BYTES);
        return NULL;
    }
    return parse_text(yaml, len, "<config>", ".", err);
}

lmq_config_t *lmq_config_load(const char *path, char **err)
{
    if (err)
        *err = NULL;
    if (!path) {
        set_err(err, "no configuration file given");
        return NULL;
    }
    FILE *f = fopen(path, "rbe");
    if (!f) {
        set_err(err, "cannot open %s: %s", path, strerror(errno));
        return NULL;
    }
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);
    bool too_big = false;
    while (buf) {
        if (len == cap) {
            if (cap > CFG_MAX_BYTES) {
                too_big = true;
                break;
            }
            char *nb = realloc(buf, cap * 2);
            if (!nb) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = nb;
            cap *= 2;
        }
        size_t n = fread(buf + len, 1, cap - len, f);
        len += n;
        if (n == 0)
            break;
    }
    int read_errno = ferror(f) ? errno : 0;
    fclose(f);
    lmq_config_t *c = NULL;
    if (!buf)
        set_err(err, "%s: out of memory", path);
    else if (too_big || len > CFG_MAX_BYTES)
        set_err(err, "%s: larger than %u bytes; is this a labmq configuration?", path, CFG_MAX_BYTES);
    else if (read_errno)
        set_err(err, "cannot read %s: %s", path, strerror(read_errno));
    else {
        /* The directory as given (not resolved): the daemon may chdir, but
         * a relative config path then fails earlier anyway. */
        char *dir = strdup(path);
        char *slash = dir ? strrchr(dir, '/') : NULL;
        if (slash)
            *(slash == dir ? slash + 1 : slash) = '\0';
        c = dir ? parse_text(buf, len, path, slash ? dir : ".", err) : NULL;
        if (!dir)
            set_err(err, "%s: out of memory", path);
        free(dir);
    }
    free(buf);
    return c;
}

void lmq_config_destroy(lmq_config_t **cfg)
{
    if (!cfg || !*cfg)
        return;
    lmq_config_t *c = *cfg;
    if (c->raw)
        cyaml_free(&c->cy, &c->top, c->raw, 0);
    free(c->devices);
    free(c->optv);
    free(c->opt_fields);
    for (size_t i = 0; i < c->nplugins; i++)
        free(c->plugins[i].name); /* the drivers stay loaded: daemons may use them */
    free(c->plugins);
    for (size_t i = 0; i < c->npaths; i++)
        free(c->paths[i]);
    free(c->paths);
    for (size_t i = 0; c->wprograms && i < c->nworkers; i++)
        free(c->wprograms[i]);
    free(c->wprograms);
    free(c->workers);
    free(c->wargv);
    free(c->clients);
    explicit_bzero(&c->server, sizeof c->server);
    free(c->dir);
    free(c);
    *cfg = NULL;
}

const char *lmq_config_control(const lmq_config_t *cfg) { return cfg && cfg->raw ? cfg->raw->control : NULL; }

const char *lmq_config_data(const lmq_config_t *cfg) { return cfg && cfg->raw ? cfg->raw->data : NULL; }

const char *lmq_config_log_level(const lmq_config_t *cfg) { return cfg && cfg->raw ? cfg->raw->log_level : NULL; }

size_t lmq_config_device_count(const lmq_config_t *cfg) { return cfg && cfg->raw ? cfg->raw->devices_count : 0; }

const lmq_config_device_t *lmq_config_device(const lmq_config_t *cfg, size_t i)
{
    return i < lmq_config_device_count(cfg) ? &cfg->devices[i] : NULL;
}

size_t lmq_config_worker_count(const lmq_config_t *cfg)
{
    return cfg ? cfg->nworkers : 0;
}

const lmq_config_worker_t *lmq_config_worker(const lmq_config_t *cfg, size_t i)
{
    return i < lmq_config_worker_count(cfg) ? &cfg->workers[i] : NULL;
}

const char *lmq_config_server_public_key(const lmq_config_t *cfg)
{
    return cfg && cfg->server.public_key[0] ? cfg->server.public_key : NULL;
}

bool lmq_config_insecure(const lmq_config_t *cfg) { return cfg && cfg->raw && cfg->raw->security && cfg->raw->security->insecure; }

size_t lmq_config_client_count(const lmq_config_t *cfg) { return cfg ? cfg->nclients : 0; }

const lmq_config_client_t *lmq_config_client(const lmq_config_t *cfg, size_t i)
{
    return i < lmq_config_client_count(cfg) ? &cfg->clients[i] : NULL;
}

int lmq_config_apply(const lmq_config_t *cfg, lmq_daemon_t *d, char **err)
{
    if (err)
        *err = NULL;
    if (!cfg || !d) {
        set_err(err, "lmq_config_apply: no configuration or daemon");
        return LMQ_EARG;
    }
    if (cfg->raw->stop_grace)
        lmq_daemon_set_stop_grace(d, (int)(*cfg->raw->stop_grace * 1000));
    if (cfg->raw->fault_after)
        lmq_daemon_set_fault_after(d, (int)(*cfg->raw->fault_after * 1000));
    if (cfg->raw->time_scale && lmq_daemon_set_time_scale(d, *cfg->raw->time_scale) != 0) {
        set_err(err, "time_scale %g cannot be set (outside 0.001..1000000, or the daemon has started)",
                *cfg->raw->time_scale);
        return LMQ_EARG;
    }
    if (cfg->raw->subscriber_memory && lmq_daemon_set_subscriber_memory(d, (size_t)*cfg->raw->subscriber_memory) != 0) {
        set_err(err, "subscriber_memory %llu cannot be set (outside 1 KiB..1 TiB, or the daemon has started)",
                (unsigned long long)*cfg->raw->subscriber_memory);
        return LMQ_EARG;
    }
    for (size_t i = 0; i < lmq_config_device_count(cfg); i++) {
        /* The driver was found when the file was loaded. */
        const lmq_config_device_t *dev = &cfg->devices[i];
        int rc = lmq_daemon_add(d, dev->name, dev->drv, dev->connection, dev->options);
        if (rc == 0 && dev->restore)
            rc = lmq_daemon_set_restore(d, dev->name, true);
        if (rc != 0) {
            const char *why = lmq_daemon_last_error(d);
            if (why && strncmp(why, "device '", 8) == 0)
                set_err(err, "%s", why); /* already names the device */
            else
                set_err(err, "device '%s': %s", dev->name, why && *why ? why : lmq_strerror(rc));
            return rc;
        }
    }
    for (size_t i = 0; i < lmq_config_worker_count(cfg); i++) {
        const lmq_config_worker_t *w = &cfg->workers[i];
        int rc = lmq_daemon_add_worker(d, w->name, w->program, w->args, w->env, w->restart);
        if (rc != 0) {
            set_err(err, "%s", lmq_daemon_last_error(d));
            return rc;
        }
    }
    int rc = cfg->server.secret_key[0] ? lmq_daemon_set_curve(d, cfg->server.secret_key) : 0;
    for (size_t i = 0; rc == 0 && i < cfg->nclients; i++)
        rc = lmq_daemon_allow(d, cfg->clients[i].name, cfg->clients[i].public_key, cfg->clients[i].role);
    if (rc != 0) {
        set_err(err, "security: %s", lmq_daemon_last_error(d));
        return rc;
    }
    lmq_daemon_set_insecure(d, lmq_config_insecure(cfg));
    return 0;
}
