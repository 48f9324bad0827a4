/* labmq-siminst — loading an instrument description (YAML) into a
 * sim_model_t.
 *
 * The file is read with libyaml's document loader rather than libcyaml:
 * every node keeps its line, so each mistake -- a YAML syntax error, an
 * unknown key, a bad keyword pattern, an expression naming an unknown
 * variable -- is reported as "file:line: reason". The format is described in
 * tools/siminst/README.md. */
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>
#include "siminst.h"

#define MODEL_MAX_BYTES (1u << 20)

typedef struct ld {
    const char *path;
    yaml_document_t *doc;
    sim_model_t *m;
    char *err;
    size_t errsz;
    bool failed;
} ld_t;

static bool failf(ld_t *l, const yaml_node_t *n, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static bool failf(ld_t *l, const yaml_node_t *n, const char *fmt, ...)
{
    if (l->failed)
        return false;
    l->failed = true;
    char msg[SIM_ERRMSG];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (n)
        snprintf(l->err, l->errsz, "%s:%lu: %s", l->path, (unsigned long)n->start_mark.line + 1, msg);
    else
        snprintf(l->err, l->errsz, "%s: %s", l->path, msg);
    return false;
}

/* ---- node access ---- */

static yaml_node_t *node(ld_t *l, int id) { return yaml_document_get_node(l->doc, id); }

static const char *scalar(const yaml_node_t *n)
{
    return n && n->type == YAML_SCALAR_NODE ? (const char *)n->data.scalar.value : NULL;
}

/* Checks that map is a mapping whose keys are all in `allowed` (NULL-ended). */
static bool check_map(ld_t *l, const yaml_node_t *map, const char *what, const char *const *allowed)
{
    if (!map || map->type != YAML_MAPPING_NODE)
        return failf(l, map, "%s must be a mapping", what);
    for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top; p++) {
        yaml_node_t *k = node(l, p->key);
        const char *ks = scalar(k);
        bool ok = false;
        for (size_t i = 0; ks && allowed[i]; i++)
            ok |= !strcmp(ks, allowed[i]);
        if (!ok) {
            char list[256] = "";
            for (size_t i = 0; allowed[i]; i++)
                snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s", i ? ", " : "", allowed[i]);
            return failf(l, k, "unknown key \"%s\" in %s (known: %s)", ks ? ks : "?", what, list);
        }
        for (yaml_node_pair_t *q = map->data.mapping.pairs.start; q < p; q++)
            if (!strcmp(scalar(node(l, q->key)) ? scalar(node(l, q->key)) : "", ks))
                return failf(l, k, "key \"%s\" appears twice in %s", ks, what);
    }
    return true;
}

static yaml_node_t *get(ld_t *l, const yaml_node_t *map, const char *key)
{
    for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top; p++) {
        const char *ks = scalar(node(l, p->key));
        if (ks && !strcmp(ks, key))
            return node(l, p->value);
    }
    return NULL;
}

static const char *get_str(ld_t *l, const yaml_node_t *map, const char *key, bool required, const char *what)
{
    yaml_node_t *n = get(l, map, key);
    if (!n) {
        if (required)
            failf(l, map, "%s needs \"%s\"", what, key);
        return NULL;
    }
    const char *s = scalar(n);
    if (!s)
        failf(l, n, "\"%s\" of %s must be a scalar", key, what);
    return s;
}

static bool get_bool(ld_t *l, const yaml_node_t *map, const char *key, bool dflt)
{
    yaml_node_t *n = get(l, map, key);
    if (!n)
        return dflt;
    const char *s = scalar(n);
    if (s && (!strcmp(s, "true") || !strcmp(s, "yes")))
        return true;
    if (s && (!strcmp(s, "false") || !strcmp(s, "no")))
        return false;
    failf(l, n, "\"%s\" must be true or false", key);
    return dflt;
}

static bool parse_long(const char *s, long *out)
{
    if (!s || !*s)
        return false;
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end)
        return false;
    *out = v;
    return true;
}

static char *dup_or_fail(ld_t *l, const yaml_node_t *n, const char *s)
{
    char *d = strdup(s);
    if (!d)
        failf(l, n, "out of memory");
    return d;
}

static bool is_ident(const char *s)
{
    if (!s || !(isalpha((unsigned char)*s) || *s == '_'))
        return false;
    for (; *s; s++)
        if (!(isalnum((unsigned char)*s) || *s == '_'))
            return false;
    return true;
}

/* ---- formats ---- */

/* One printf conversion for a double (f e E g G) or an integer (d i, widened
 * to long long); literal text around it. A format from a file must never
 * reach printf unchecked. */
static char *make_format(const char *user, bool integer, char *why, size_t whysz)
{
    size_t n = strlen(user);
    char *out = malloc(3 * n + 3); /* each '%' may grow by "ll" */
    if (!out) {
        snprintf(why, whysz, "out of memory");
        return NULL;
    }
    size_t o = 0;
    int convs = 0;
    for (size_t i = 0; i < n;) {
        if (user[i] != '%') {
            out[o++] = user[i++];
            continue;
        }
        if (i + 1 < n && user[i + 1] == '%') {
            out[o++] = '%';
            out[o++] = '%';
            i += 2;
            continue;
        }
        out[o++] = user[i++];
        while (i < n && strchr("-+ #0", user[i]))
            out[o++] = user[i++];
        for (int d = 0; i < n && isdigit((unsigned char)user[i]); d++)
            out[o++] = user[i++];
        if (i < n && user[i] == '.') {
            out[o++] = user[i++];
            while (i < n && isdigit((unsigned char)user[i]))
                out[o++] = user[i++];
        }
        char c = i < n ? user[i] : 0;
        if (integer ? !strchr("di", c) || !c : !strchr("feEgG", c) || !c) {
            snprintf(why, whysz, "format \"%s\": expected one %s conversion", user,
                     integer ? "%d" : "%f, %e, %E, %g or %G");
            free(out);
            return NULL;
        }
        if (integer) {
            out[o++] = 'l';
            out[o++] = 'l';
        }
        out[o++] = c;
        i++;
        convs++;
    }
    out[o] = 0;
    if (convs != 1) {
        snprintf(why, whysz, "format \"%s\": expected exactly one conversion", user);
        free(out);
        return NULL;
    }
    return out;
}

/* ---- expressions ---- */

static sim_expr_t *expr_of(ld_t *l, const yaml_node_t *map, const char *key, const char *what)
{
    const char *s = get_str(l, map, key, false, what);
    if (!s)
        return NULL;
    char why[SIM_ERRMSG];
    sim_expr_t *e = sim_expr_new(l->m->scope, s, why, sizeof why);
    if (!e)
        failf(l, get(l, map, key), "%s \"%s\": %s", key, s, why);
    return e;
}

/* ---- errors table ---- */

static const sim_errtext_t std_errors[] = {
    {0, "No error"},
    {-100, "Command error"},
    {-102, "Syntax error"},
    {-103, "Invalid separator"},
    {-104, "Data type error"},
    {-108, "Parameter not allowed"},
    {-109, "Missing parameter"},
    {-113, "Undefined header"},
    {-114, "Header suffix out of range"},
    {-200, "Execution error"},
    {-221, "Settings conflict"},
    {-222, "Data out of range"},
    {-224, "Illegal parameter value"},
    {-230, "Data corrupt or stale"},
    {-350, "Queue overflow"},
    {-363, "Input buffer overrun"},
    {-410, "Query INTERRUPTED"},
    {-420, "Query UNTERMINATED"},
};

const char *sim_model_error_text(const sim_model_t *m, long code)
{
    for (size_t i = 0; m && i < m->n_errors; i++)
        if (m->errors[i].code == code)
            return m->errors[i].text;
    for (size_t i = 0; i < sizeof std_errors / sizeof std_errors[0]; i++)
        if (std_errors[i].code == code)
            return std_errors[i].text;
    return NULL;
}

/* ---- variables ---- */

static const char *const var_keys[] = {"name",   "type",  "per_channel", "default", "min",    "max",
                                       "minmax", "format", "values",     "names",   "quoted", "expr",
                                       "external", "slew", NULL};

static sim_var_t *find_var(sim_model_t *m, const char *name)
{
    for (size_t i = 0; i < m->n_vars; i++)
        if (!strcmp(m->vars[i].name, name))
            return &m->vars[i];
    return NULL;
}

/* First pass: names, types and members, so every name is in the scope
 * before any expression is compiled. */
static bool load_var_decl(ld_t *l, yaml_node_t *n, sim_var_t *v)
{
    if (!check_map(l, n, "a variable", var_keys))
        return false;
    v->line = (int)n->start_mark.line + 1;
    v->slot = -1;
    const char *name = get_str(l, n, "name", true, "a variable");
    const char *type = get_str(l, n, "type", true, "a variable");
    if (l->failed)
        return false;
    if (!is_ident(name))
        return failf(l, get(l, n, "name"), "variable name \"%s\" is not an identifier (letters, digits, _)", name);
    static const char *const types[] = {"float", "int", "bool", "enum", "set", "string"};
    size_t t = 0;
    while (t < 6 && strcmp(type, types[t]))
        t++;
    if (t == 6)
        return failf(l, get(l, n, "type"), "type \"%s\" is not one of float, int, bool, enum, set, string", type);
    v->type = (sim_type_t)t;
    if (!(v->name = dup_or_fail(l, n, name)))
        return false;
    if (find_var(l->m, name) != v)
        return failf(l, n, "variable \"%s\" is declared twice", name);
    v->per_channel = get_bool(l, n, "per_channel", false);
    v->minmax = get_bool(l, n, "minmax", false);
    v->quoted = get_bool(l, n, "quoted", false);
    v->external = get_bool(l, n, "external", false);
    if (v->per_channel && l->m->n_channels == 0)
        return failf(l, n, "variable \"%s\" is per_channel but the model has no channels", name);
    if (v->slot = sim_scope_add(l->m->scope, name, false, 0), v->slot < 0)
        return failf(l, n, "name \"%s\" is already taken (a builtin, or an enum/set member name)", name);

    yaml_node_t *vals = get(l, n, "values");
    if ((v->type == SIM_ENUM || v->type == SIM_SET) != (vals != NULL))
        return failf(l, vals ? vals : n, "\"values\" belongs to enum and set variables, and they need it");
    if (vals) {
        if (vals->type != YAML_SEQUENCE_NODE || vals->data.sequence.items.top == vals->data.sequence.items.start)
            return failf(l, vals, "\"values\" must be a non-empty list");
        size_t cnt = (size_t)(vals->data.sequence.items.top - vals->data.sequence.items.start);
        if (cnt > 32)
            return failf(l, vals, "at most 32 values");
        if (!(v->members = calloc(cnt, sizeof *v->members)))
            return failf(l, vals, "out of memory");
        for (size_t i = 0; i < cnt; i++) {
            yaml_node_t *it = node(l, vals->data.sequence.items.start[i]);
            const char *match = scalar(it), *reply = NULL;
            if (!match) {
                static const char *const mk[] = {"match", "reply", NULL};
                if (!check_map(l, it, "a value", mk))
                    return false;
                match = get_str(l, it, "match", true, "a value");
                reply = get_str(l, it, "reply", false, "a value");
                if (l->failed)
                    return false;
            }
            sim_member_t *mb = &v->members[v->n_members++];
            char why[SIM_ERRMSG];
            if (sim_pattern_parse(&mb->pat, match, why, sizeof why) != 0 || mb->pat.query_only)
                return failf(l, it, "value %s", mb->pat.query_only ? "must not end in '?'" : why);
            if (!(mb->reply = dup_or_fail(l, it, reply ? reply : mb->pat.nodes[0].shortf)))
                return false;
            char cname[128];
            snprintf(cname, sizeof cname, "%s_%s", name, mb->pat.nodes[0].shortf);
            mb->slot = sim_scope_add(l->m->scope, cname, v->type == SIM_ENUM, (double)i);
            if (mb->slot < 0)
                return failf(l, it, "value name \"%s\" is taken (two values with one short form?)", cname);
        }
    }
    return true;
}

static bool load_var_body(ld_t *l, yaml_node_t *n, sim_var_t *v)
{
    const char *what = "a variable";
    if (v->type == SIM_STRING) {
        const char *d = get_str(l, n, "default", false, what);
        if (!(v->str_default = dup_or_fail(l, n, d ? d : "")))
            return false;
        if (get(l, n, "min") || get(l, n, "max") || get(l, n, "expr") || get(l, n, "format"))
            return failf(l, n, "string variable \"%s\" takes no min, max, expr or format", v->name);
    } else {
        v->expr = expr_of(l, n, "expr", what);
        if (v->expr && (get(l, n, "default") || get(l, n, "min") || get(l, n, "max")))
            return failf(l, n, "computed variable \"%s\" (expr) takes no default, min or max", v->name);
        if (!v->expr) {
            v->def = expr_of(l, n, "default", what);
            v->min = expr_of(l, n, "min", what);
            v->max = expr_of(l, n, "max", what);
        }
    }
    if (l->failed)
        return false;
    v->slew = expr_of(l, n, "slew", what);
    if (l->failed)
        return false;
    if (v->slew && (v->type != SIM_FLOAT || v->expr))
        return failf(l, get(l, n, "slew"), "\"slew\" applies to float variables that are not computed");
    if (v->minmax && (!v->min || !v->max || !v->def))
        return failf(l, n, "\"minmax\" needs min, max and default on \"%s\"", v->name);
    if (v->quoted && v->type != SIM_ENUM && v->type != SIM_SET && v->type != SIM_STRING)
        return failf(l, n, "\"quoted\" applies to enum, set and string variables");
    const char *fmt = get_str(l, n, "format", false, what);
    if (fmt && v->type != SIM_FLOAT && v->type != SIM_INT)
        return failf(l, get(l, n, "format"), "\"format\" applies to float and int variables");
    if (v->type == SIM_FLOAT || v->type == SIM_INT) {
        char why[SIM_ERRMSG];
        v->fmt = make_format(fmt ? fmt : v->type == SIM_INT ? "%d" : "%g", v->type == SIM_INT, why, sizeof why);
        if (!v->fmt)
            return failf(l, get(l, n, "format"), "%s", why);
    }
    yaml_node_t *names = get(l, n, "names");
    if (names && v->type != SIM_BOOL)
        return failf(l, names, "\"names\" applies to bool variables");
    if (v->type == SIM_BOOL) {
        const char *nm[2] = {"0", "1"};
        if (names) {
            if (names->type != YAML_SEQUENCE_NODE ||
                names->data.sequence.items.top - names->data.sequence.items.start != 2 ||
                !scalar(node(l, names->data.sequence.items.start[0])) ||
                !scalar(node(l, names->data.sequence.items.start[1])))
                return failf(l, names, "\"names\" must be a list of two replies: [for 0, for 1]");
            nm[0] = scalar(node(l, names->data.sequence.items.start[0]));
            nm[1] = scalar(node(l, names->data.sequence.items.start[1]));
        }
        if (!(v->names[0] = dup_or_fail(l, n, nm[0])) || !(v->names[1] = dup_or_fail(l, n, nm[1])))
            return false;
    }
    return true;
}

/* ---- commands ---- */

static const char *const specials[] = {"chan", "chan_n", "sel", "sel_n", NULL};

static bool check_template(ld_t *l, const yaml_node_t *at, const char *t)
{
    for (const char *p = t; *p; p++) {
        if (*p == '}')
            return failf(l, at, "reply \"%s\": '}' without '{'", t);
        if (*p != '{')
            continue;
        const char *e = strchr(p, '}');
        if (!e)
            return failf(l, at, "reply \"%s\": '{' without '}'", t);
        char name[128];
        size_t n = (size_t)(e - p - 1);
        if (n == 0 || n >= sizeof name)
            return failf(l, at, "reply \"%s\": empty or overlong {name}", t);
        memcpy(name, p + 1, n);
        name[n] = 0;
        bool ok = find_var(l->m, name) != NULL;
        for (size_t i = 0; !ok && specials[i]; i++)
            ok = !strcmp(name, specials[i]);
        if (!ok)
            return failf(l, at, "reply \"%s\": {%s} is neither a variable nor one of chan, chan_n, sel, sel_n", t,
                         name);
        if ((!strcmp(name, "chan") || !strcmp(name, "sel")) && l->m->n_channels == 0)
            return failf(l, at, "reply \"%s\": {%s} needs channels", t, name);
        p = e;
    }
    return true;
}

static const char *const param_keys[] = {"var", "channel", "select", "limit", "optional", "mode",
                                         "do",  "absent",  "words",  NULL};

static bool load_param(ld_t *l, yaml_node_t *n, sim_param_t *p)
{
    const char *what = "a parameter";
    if (!check_map(l, n, what, param_keys))
        return false;
    const char *var = get_str(l, n, "var", false, what);
    const char *limit = get_str(l, n, "limit", false, what);
    const char *select = get_str(l, n, "select", false, what);
    bool channel = get_bool(l, n, "channel", false);
    if (l->failed)
        return false;
    if ((var != NULL) + (limit != NULL) + (select != NULL) + channel != 1)
        return failf(l, n, "a parameter is exactly one of var, limit, select or channel");
    if ((channel || select) && l->m->n_channels == 0)
        return failf(l, n, "channel and select parameters need the model's channels");
    p->optional = get_bool(l, n, "optional", false);
    if (var || limit) {
        p->kind = var ? SIM_P_VAR : SIM_P_LIMIT;
        if (!(p->var = find_var(l->m, var ? var : limit)))
            return failf(l, n, "no variable \"%s\"", var ? var : limit);
        if (p->var->expr && var)
            return failf(l, n, "variable \"%s\" is computed (expr): a parameter cannot set it", var);
        if (limit && !p->var->minmax)
            return failf(l, n, "\"limit\" needs a variable with minmax: true (\"%s\" has none)", limit);
    } else if (select) {
        if (!strcmp(select, "name"))
            p->kind = SIM_P_SELECT;
        else if (!strcmp(select, "number"))
            p->kind = SIM_P_SELECT_NUMBER;
        else
            return failf(l, get(l, n, "select"), "\"select\" is name or number, not \"%s\"", select);
    } else {
        p->kind = SIM_P_CHANNEL;
    }
    const char *mode = get_str(l, n, "mode", false, what);
    if (mode) {
        if (!p->var || p->var->type != SIM_SET)
            return failf(l, n, "\"mode\" applies to parameters of set variables");
        if (!strcmp(mode, "assign"))
            p->setmode = SIM_SET_ASSIGN;
        else if (!strcmp(mode, "add"))
            p->setmode = SIM_SET_ADD;
        else if (!strcmp(mode, "remove"))
            p->setmode = SIM_SET_REMOVE;
        else
            return failf(l, get(l, n, "mode"), "\"mode\" is assign, add or remove, not \"%s\"", mode);
    }
    p->action = expr_of(l, n, "do", what);
    p->absent = expr_of(l, n, "absent", what);
    if (l->failed)
        return false;
    if (p->absent && !p->optional)
        return failf(l, n, "\"absent\" needs optional: true");
    yaml_node_t *words = get(l, n, "words");
    if (words) {
        if (words->type != YAML_SEQUENCE_NODE)
            return failf(l, words, "\"words\" must be a list of {word, do}");
        size_t cnt = (size_t)(words->data.sequence.items.top - words->data.sequence.items.start);
        if (!(p->words = calloc(cnt ? cnt : 1, sizeof *p->words)))
            return failf(l, words, "out of memory");
        for (size_t i = 0; i < cnt; i++) {
            yaml_node_t *w = node(l, words->data.sequence.items.start[i]);
            static const char *const wk[] = {"word", "do", NULL};
            if (!check_map(l, w, "a word", wk))
                return false;
            const char *word = get_str(l, w, "word", true, "a word");
            if (l->failed)
                return false;
            sim_word_t *sw = &p->words[p->n_words++];
            char why[SIM_ERRMSG];
            if (sim_pattern_parse(&sw->pat, word, why, sizeof why) != 0)
                return failf(l, w, "word: %s", why);
            if (!(sw->action = expr_of(l, w, "do", "a word")))
                return l->failed ? false : failf(l, w, "a word needs \"do\"");
        }
    }
    return true;
}

static bool load_params(ld_t *l, yaml_node_t *seq, sim_param_t **out, size_t *count)
{
    if (seq->type != YAML_SEQUENCE_NODE)
        return failf(l, seq, "parameters must be a list");
    size_t cnt = (size_t)(seq->data.sequence.items.top - seq->data.sequence.items.start);
    if (cnt > 16)
        return failf(l, seq, "at most 16 parameters");
    if (!(*out = calloc(cnt ? cnt : 1, sizeof **out)))
        return failf(l, seq, "out of memory");
    for (size_t i = 0; i < cnt; i++) {
        (*count)++;
        if (!load_param(l, node(l, seq->data.sequence.items.start[i]), &(*out)[i]))
            return false;
    }
    for (size_t i = 0; i < cnt; i++) {
        sim_param_t *p = &(*out)[i];
        if (p->var && p->var->type == SIM_SET && i + 1 != cnt)
            return failf(l, seq, "a set parameter takes the rest of the list: it must come last");
    }
    return true;
}

static const char *const cmd_keys[] = {"header",  "var",   "params", "query_params", "check", "check_error",
                                       "do",      "delay_ms", "reply", "items",      "repeat", "store",
                                       NULL};

static bool add_item(ld_t *l, sim_command_t *c, const yaml_node_t *at, sim_expr_t *cond, const char *tmpl)
{
    sim_item_t *it = realloc(c->items, (c->n_items + 1) * sizeof *it);
    if (!it) {
        sim_expr_destroy(&cond);
        return failf(l, at, "out of memory");
    }
    c->items = it;
    c->items[c->n_items].cond = cond;
    c->items[c->n_items].tmpl = strdup(tmpl);
    c->n_items++;
    if (!c->items[c->n_items - 1].tmpl)
        return failf(l, at, "out of memory");
    return check_template(l, at, tmpl);
}

static bool load_command(ld_t *l, yaml_node_t *n, sim_command_t *c)
{
    const char *what = "a command";
    if (!check_map(l, n, what, cmd_keys))
        return false;
    c->line = (int)n->start_mark.line + 1;
    const char *header = get_str(l, n, "header", true, what);
    const char *var = get_str(l, n, "var", false, what);
    if (l->failed)
        return false;
    if (!(c->header = dup_or_fail(l, n, header)))
        return false;
    char why[SIM_ERRMSG];
    if (sim_pattern_parse(&c->pat, header, why, sizeof why) != 0)
        return failf(l, get(l, n, "header"), "header: %s", why);
    if (c->pat.nodes[0].longf[0] == '*' && c->pat.n != 1)
        return failf(l, n, "header \"%s\": a common (*) command is one keyword", header);
    sim_var_t *v = NULL;
    if (var && !(v = find_var(l->m, var)))
        return failf(l, get(l, n, "var"), "no variable \"%s\"", var);
    yaml_node_t *params = get(l, n, "params"), *qparams = get(l, n, "query_params");
    if (params && !load_params(l, params, &c->params, &c->n_params))
        return false;
    if (qparams && !load_params(l, qparams, &c->qparams, &c->n_qparams))
        return false;
    if (c->pat.query_only) {
        if (qparams)
            return failf(l, qparams, "a query-only header takes \"params\", not \"query_params\"");
        c->qparams = c->params;
        c->n_qparams = c->n_params;
        c->params = NULL;
        c->n_params = 0;
    }
    c->check = expr_of(l, n, "check", what);
    c->action = expr_of(l, n, "do", what);
    c->delay = expr_of(l, n, "delay_ms", what);
    c->repeat = expr_of(l, n, "repeat", what);
    if (l->failed)
        return false;
    const char *ce = get_str(l, n, "check_error", false, what);
    if (ce) {
        if (!parse_long(ce, &c->check_error) || c->check_error == 0 || !sim_model_error_text(l->m, c->check_error))
            return failf(l, get(l, n, "check_error"),
                         "check_error \"%s\" is not a nonzero code with a text (standard or in errors:)", ce);
    } else if (c->check) {
        c->check_error = -221; /* Settings conflict */
    }
    const char *store = get_str(l, n, "store", false, what);
    if (store) {
        if (!(c->store = find_var(l->m, store)) || c->store->type != SIM_STRING)
            return failf(l, get(l, n, "store"), "\"store\" names a string variable; \"%s\" is not one", store);
    }
    const char *reply = get_str(l, n, "reply", false, what);
    yaml_node_t *items = get(l, n, "items");
    if (l->failed)
        return false;
    if (reply && items)
        return failf(l, n, "a command has \"reply\" or \"items\", not both");
    if (reply && !add_item(l, c, get(l, n, "reply"), NULL, reply))
        return false;
    if (items) {
        if (items->type != YAML_SEQUENCE_NODE)
            return failf(l, items, "\"items\" must be a list of {if, text}");
        for (yaml_node_item_t *i = items->data.sequence.items.start; i < items->data.sequence.items.top; i++) {
            yaml_node_t *it = node(l, *i);
            static const char *const ik[] = {"if", "text", NULL};
            if (!check_map(l, it, "an item", ik))
                return false;
            const char *text = get_str(l, it, "text", true, "an item");
            sim_expr_t *cond = expr_of(l, it, "if", "an item");
            if (l->failed || !add_item(l, c, it, cond, text))
                return false;
        }
    }
    /* The shorthand `var:` makes "HEADER value" set it and "HEADER?" show it
     * (with MIN|MAX when the variable allows them). */
    if (v) {
        if (!c->pat.query_only && !v->expr && !params) {
            if (!(c->params = calloc(1, sizeof *c->params)))
                return failf(l, n, "out of memory");
            c->params[0].kind = SIM_P_VAR;
            c->params[0].var = v;
            c->n_params = 1;
        }
        if (!c->n_items) {
            char t[160];
            snprintf(t, sizeof t, "{%s}", v->name);
            if (!add_item(l, c, n, NULL, t))
                return false;
        }
        if (v->minmax && !qparams && !c->n_qparams) {
            if (!(c->qparams = calloc(1, sizeof *c->qparams)))
                return failf(l, n, "out of memory");
            c->qparams[0].kind = SIM_P_LIMIT;
            c->qparams[0].var = v;
            c->qparams[0].optional = true;
            c->n_qparams = 1;
        }
    }
    /* A command (no '?') with store keeps its items instead of answering:
     * INIT fills the reading memory, it is no query. */
    c->queryable = c->n_items > 0 && (c->pat.query_only || !c->store);
    c->settable = !c->pat.query_only && (c->n_params || c->action || c->store || !c->queryable);
    if (c->pat.query_only && !c->queryable)
        return failf(l, n, "query \"%s\" needs \"reply\", \"items\" or \"var\"", header);
    if (c->store && !c->n_items)
        return failf(l, n, "\"store\" keeps the reply: the command needs \"reply\" or \"items\"");
    return true;
}

/* ---- the whole model ---- */

static const char *const top_keys[] = {"identity", "terminator", "channels", "plus_sign", "error_queue",
                                       "errors",   "variables",  "commands", NULL};

static bool load_top(ld_t *l, yaml_node_t *root)
{
    sim_model_t *m = l->m;
    if (!root)
        return failf(l, NULL, "the file is empty");
    if (!check_map(l, root, "the instrument description", top_keys))
        return false;
    const char *idn = get_str(l, root, "identity", true, "the instrument description");
    const char *term = get_str(l, root, "terminator", false, "the instrument description");
    if (l->failed)
        return false;
    if (!(m->identity = dup_or_fail(l, root, idn)) || !(m->terminator = dup_or_fail(l, root, term ? term : "\n")))
        return false;
    if (!*m->terminator)
        return failf(l, get(l, root, "terminator"), "the terminator must not be empty");
    m->plus_sign = get_bool(l, root, "plus_sign", false);
    m->queue_size = 16;
    const char *qs = get_str(l, root, "error_queue", false, "the instrument description");
    long q;
    if (qs && (!parse_long(qs, &q) || q < 2 || q > 1000))
        return failf(l, get(l, root, "error_queue"), "error_queue must be an integer from 2 to 1000");
    if (qs)
        m->queue_size = (size_t)q;

    yaml_node_t *chans = get(l, root, "channels");
    if (chans) {
        if (chans->type != YAML_SEQUENCE_NODE)
            return failf(l, chans, "\"channels\" must be a list of channel names");
        size_t cnt = (size_t)(chans->data.sequence.items.top - chans->data.sequence.items.start);
        if (cnt == 0 || cnt > 64)
            return failf(l, chans, "\"channels\" lists 1 to 64 names");
        if (!(m->channels = calloc(cnt, sizeof *m->channels)))
            return failf(l, chans, "out of memory");
        for (size_t i = 0; i < cnt; i++) {
            yaml_node_t *c = node(l, chans->data.sequence.items.start[i]);
            const char *s = scalar(c);
            if (!s || !is_ident(s))
                return failf(l, c, "a channel name is a word (letters, digits, _)");
            if (!(m->channels[i] = dup_or_fail(l, c, s)))
                return false;
            for (char *p = m->channels[i]; *p; p++)
                *p = (char)toupper((unsigned char)*p);
            m->n_channels++;
        }
    }

    yaml_node_t *errs = get(l, root, "errors");
    if (errs) {
        if (errs->type != YAML_SEQUENCE_NODE)
            return failf(l, errs, "\"errors\" must be a list of {code, text}");
        size_t cnt = (size_t)(errs->data.sequence.items.top - errs->data.sequence.items.start);
        if (!(m->errors = calloc(cnt ? cnt : 1, sizeof *m->errors)))
            return failf(l, errs, "out of memory");
        for (size_t i = 0; i < cnt; i++) {
            yaml_node_t *e = node(l, errs->data.sequence.items.start[i]);
            static const char *const ek[] = {"code", "text", NULL};
            if (!check_map(l, e, "an error", ek))
                return false;
            const char *cs = get_str(l, e, "code", true, "an error");
            const char *text = get_str(l, e, "text", true, "an error");
            if (l->failed)
                return false;
            long code;
            if (!parse_long(cs, &code))
                return failf(l, e, "error code \"%s\" is not an integer", cs);
            if (strchr(text, '"'))
                return failf(l, e, "error text must not contain '\"' (the reply quotes it)");
            m->errors[i].code = code;
            if (!(m->errors[i].text = dup_or_fail(l, e, text)))
                return false;
            m->n_errors++;
        }
    }

    if ((m->slot_ch = sim_scope_add(m->scope, "ch", false, 1)) < 0 ||
        (m->slot_nch = sim_scope_add(m->scope, "nch", false, 1)) < 0 ||
        (m->slot_t = sim_scope_add(m->scope, "t", false, 0)) < 0 ||
        (m->slot_sel = sim_scope_add(m->scope, "sel", false, 1)) < 0)
        return failf(l, root, "out of memory");

    yaml_node_t *vars = get(l, root, "variables");
    if (vars) {
        if (vars->type != YAML_SEQUENCE_NODE)
            return failf(l, vars, "\"variables\" must be a list");
        size_t cnt = (size_t)(vars->data.sequence.items.top - vars->data.sequence.items.start);
        if (!(m->vars = calloc(cnt ? cnt : 1, sizeof *m->vars)))
            return failf(l, vars, "out of memory");
        for (size_t i = 0; i < cnt; i++) {
            m->n_vars++;
            if (!load_var_decl(l, node(l, vars->data.sequence.items.start[i]), &m->vars[i]))
                return false;
        }
        for (size_t i = 0; i < cnt; i++)
            if (!load_var_body(l, node(l, vars->data.sequence.items.start[i]), &m->vars[i]))
                return false;
    }

    yaml_node_t *cmds = get(l, root, "commands");
    if (!cmds)
        return failf(l, root, "the instrument description needs \"commands\"");
    if (cmds->type != YAML_SEQUENCE_NODE)
        return failf(l, cmds, "\"commands\" must be a list");
    size_t cnt = (size_t)(cmds->data.sequence.items.top - cmds->data.sequence.items.start);
    if (!(m->cmds = calloc(cnt ? cnt : 1, sizeof *m->cmds)))
        return failf(l, cmds, "out of memory");
    for (size_t i = 0; i < cnt; i++) {
        m->n_cmds++;
        if (!load_command(l, node(l, cmds->data.sequence.items.start[i]), &m->cmds[i]))
            return false;
    }
    return true;
}

static char *read_text(const char *path, size_t *len, char *err, size_t errsz)
{
    FILE *f = fopen(path, "rbe");
    if (!f) {
        snprintf(err, errsz, "%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    char *buf = malloc(MODEL_MAX_BYTES + 1);
    size_t n = buf ? fread(buf, 1, MODEL_MAX_BYTES + 1, f) : 0;
    bool bad = ferror(f);
    fclose(f);
    if (!buf || bad || n > MODEL_MAX_BYTES) {
        snprintf(err, errsz, "%s: %s", path,
                 !buf ? "out of memory" : bad ? "read error" : "larger than 1 MiB: not an instrument description");
        free(buf);
        return NULL;
    }
    buf[n] = 0;
    *len = n;
    return buf;
}

sim_model_t *sim_model_load(const char *path, uint64_t seed, char *err, size_t errsz)
{
    size_t len;
    char *text = read_text(path, &len, err, errsz);
    if (!text)
        return NULL;
    sim_model_t *m = calloc(1, sizeof *m);
    if (!m || !(m->scope = sim_scope_new(seed)) || !(m->path = strdup(path))) {
        snprintf(err, errsz, "%s: out of memory", path);
        free(text);
        sim_model_destroy(&m);
        return NULL;
    }
    yaml_parser_t parser;
    yaml_document_t doc;
    yaml_parser_initialize(&parser);
    yaml_parser_set_input_string(&parser, (const unsigned char *)text, len);
    if (!yaml_parser_load(&parser, &doc)) {
        char ctx[160] = "";
        if (parser.context) /* where the broken construct began, e.g. an unclosed quote */
            snprintf(ctx, sizeof ctx, " (%s at line %lu)", parser.context, (unsigned long)parser.context_mark.line + 1);
        snprintf(err, errsz, "%s:%lu:%lu: YAML syntax: %s%s", path, (unsigned long)parser.problem_mark.line + 1,
                 (unsigned long)parser.problem_mark.column + 1, parser.problem ? parser.problem : "error", ctx);
        yaml_parser_delete(&parser);
        free(text);
        sim_model_destroy(&m);
        return NULL;
    }
    ld_t l = {.path = path, .doc = &doc, .m = m, .err = err, .errsz = errsz};
    bool ok = load_top(&l, yaml_document_get_root_node(&doc));
    yaml_document_delete(&doc);
    yaml_parser_delete(&parser);
    free(text);
    if (!ok) {
        if (!l.failed)
            snprintf(err, errsz, "%s: invalid description", path);
        sim_model_destroy(&m);
        return NULL;
    }
    return m;
}

static void free_params(sim_param_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        sim_expr_destroy(&p[i].action);
        sim_expr_destroy(&p[i].absent);
        for (size_t k = 0; k < p[i].n_words; k++) {
            sim_pattern_free(&p[i].words[k].pat);
            sim_expr_destroy(&p[i].words[k].action);
        }
        free(p[i].words);
    }
    free(p);
}

void sim_model_destroy(sim_model_t **mp)
{
    if (!mp || !*mp)
        return;
    sim_model_t *m = *mp;
    for (size_t i = 0; i < m->n_cmds; i++) {
        sim_command_t *c = &m->cmds[i];
        free(c->header);
        sim_pattern_free(&c->pat);
        free_params(c->params, c->n_params);
        free_params(c->qparams, c->n_qparams);
        sim_expr_destroy(&c->check);
        sim_expr_destroy(&c->action);
        sim_expr_destroy(&c->delay);
        sim_expr_destroy(&c->repeat);
        for (size_t k = 0; k < c->n_items; k++) {
            sim_expr_destroy(&c->items[k].cond);
            free(c->items[k].tmpl);
        }
        free(c->items);
    }
    free(m->cmds);
    for (size_t i = 0; i < m->n_vars; i++) {
        sim_var_t *v = &m->vars[i];
        free(v->name);
        free(v->fmt);
        free(v->names[0]);
        free(v->names[1]);
        free(v->str_default);
        for (size_t k = 0; k < v->n_members; k++) {
            sim_pattern_free(&v->members[k].pat);
            free(v->members[k].reply);
        }
        free(v->members);
        sim_expr_destroy(&v->def);
        sim_expr_destroy(&v->min);
        sim_expr_destroy(&v->max);
        sim_expr_destroy(&v->expr);
        sim_expr_destroy(&v->slew);
    }
    free(m->vars);
    for (size_t i = 0; i < m->n_errors; i++)
        free(m->errors[i].text);
    free(m->errors);
    for (size_t i = 0; i < m->n_channels; i++)
        free(m->channels[i]);
    free(m->channels);
    sim_scope_destroy(&m->scope);
    free(m->identity);
    free(m->terminator);
    free(m->path);
    free(m);
    *mp = NULL;
}
