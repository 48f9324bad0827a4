/* labmq-siminst — the SCPI engine: instrument state, command dispatch,
 * parameter checking, replies, the error queue and the IEEE 488.2 common
 * commands (*IDN?, *RST, *CLS, *OPC?, *ESR?, *STB?, ...).
 *
 * One program message (a line) is split at ';' into message units. A unit
 * whose header has no leading ':' continues the path of the previous one
 * (SCPI's compound-header rule: "SOUR:VOLT 1;CURR 2" sets SOUR:CURR); when
 * that finds nothing the header is tried from the root, as lenient
 * instruments do. After a command error (-1xx) the rest of the line is
 * discarded (IEEE 488.2). The replies of the queries in one line form one
 * response message, separated by ';'. */
#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "siminst.h"

#define MAX_TOKENS 64

struct sim_engine {
    sim_model_t *m;
    double scale;
    int64_t t0;
    size_t nch;     /* channels, at least 1 */
    double *vals;   /* n_vars x nch; for a slewing variable its target */
    double *from, *t_from, *rate; /* slewing: start value, start time (s), units/s */
    char **strs;    /* n_vars x nch, STRING variables */
    double *loaded; /* the slots as loaded, to see what an expression assigned */
    unsigned sel;   /* selected channel, 1-based */
    long *queue;
    size_t qn;
    unsigned esr, ese, sre;
    sim_header_t prev; /* path for relative headers */
    bool have_prev;
    sim_pattern_t syst_err, min_w, max_w, def_w, on_w, off_w;
};

typedef struct pval {
    bool given;
    int word;  /* index into the parameter's words, or -1 */
    int limit; /* 0 none, 1 MIN, 2 MAX, 3 DEF */
    double num;
    char str[256];
} pval_t;

double sim_engine_time(const sim_engine_t *e) { return (double)(sim_mono_ns() - e->t0) / 1e9 * e->scale; }

static const sim_var_t *var_named(const sim_model_t *m, const char *name, size_t n)
{
    for (size_t k = 0; k < m->n_vars; k++)
        if (strlen(m->vars[k].name) == n && !strncmp(m->vars[k].name, name, n))
            return &m->vars[k];
    return NULL;
}

static void coerce_store(sim_engine_t *e, sim_var_t *v, unsigned ch, double x, bool ramp);

/* Doubles that get converted to integers are brought into range first: an
 * out-of-range conversion is undefined behaviour, and values come from
 * clients and model expressions. */
static double to_int(double x)
{
    if (!(x == x))
        return 0;
    return round(fmax(-9e15, fmin(9e15, x)));
}

static unsigned long to_mask(const sim_var_t *v, double x)
{
    return (unsigned long)fmax(0, fmin((double)((1ul << v->n_members) - 1), to_int(x))) & ((1ul << v->n_members) - 1);
}

static size_t vidx(const sim_engine_t *e, const sim_var_t *v, unsigned ch)
{
    size_t i = (size_t)(v - e->m->vars);
    return i * e->nch + (v->per_channel ? ch - 1 : 0);
}

int sim_engine_set(sim_engine_t *e, const char *name, unsigned ch, double value, char *err, size_t errsz)
{
    const sim_var_t *v = var_named(e->m, name, strlen(name));
    if (!v || v->expr || v->type == SIM_STRING || v->type == SIM_SET) {
        snprintf(err, errsz, "\"%s\" is not a settable number variable of %s", name, e->m->path);
        return -1;
    }
    if (ch > e->nch || (ch > 1 && !v->per_channel)) {
        snprintf(err, errsz, "%s has no channel %u", name, ch);
        return -1;
    }
    for (unsigned c = ch ? ch : 1; c <= (ch ? ch : (unsigned)e->nch); c++)
        coerce_store(e, (sim_var_t *)v, c, value, false);
    return 0;
}

int sim_engine_set_spec(sim_engine_t *e, const char *spec, char *err, size_t errsz)
{
    char name[64];
    size_t n = strcspn(spec, "@= ");
    if (n == 0 || n >= sizeof name) {
        snprintf(err, errsz, "\"%s\": expected NAME[@CHANNEL]=VALUE", spec);
        return -1;
    }
    memcpy(name, spec, n);
    name[n] = 0;
    const char *p = spec + n;
    unsigned long ch = 0;
    char *end;
    if (*p == '@') {
        ch = strtoul(p + 1, &end, 10);
        if (end == p + 1 || ch == 0) {
            snprintf(err, errsz, "\"%s\": the channel after '@' is a number from 1", spec);
            return -1;
        }
        p = end;
    }
    if (*p != '=' && *p != ' ') {
        snprintf(err, errsz, "\"%s\": expected NAME[@CHANNEL]=VALUE", spec);
        return -1;
    }
    p++;
    double v = strtod(p, &end);
    while (*end == ' ')
        end++;
    if (end == p || *end || !isfinite(v)) {
        snprintf(err, errsz, "\"%s\": the value is not a number", spec);
        return -1;
    }
    return sim_engine_set(e, name, (unsigned)ch, v, err, errsz);
}

void sim_engine_push_error(sim_engine_t *e, long code)
{
    long a = labs(code);
    if (code < 0 && a >= 100 && a < 200)
        e->esr |= 0x20; /* command error */
    else if (code < 0 && a >= 200 && a < 300)
        e->esr |= 0x10; /* execution error */
    else if (code < 0 && a >= 400 && a < 500)
        e->esr |= 0x04; /* query error */
    else
        e->esr |= 0x08; /* device-dependent */
    if (e->qn < e->m->queue_size)
        e->queue[e->qn++] = code;
    else
        e->queue[e->m->queue_size - 1] = -350; /* SCPI: the newest entry becomes the overflow */
}

/* ---- slots ---- */

/* Where a slewing variable is now: on its way from `from` to the target. */
static double effective(const sim_engine_t *e, size_t i, double now)
{
    double d = e->vals[i] - e->from[i], step = e->rate[i] * (now - e->t_from[i]);
    if (!(e->rate[i] > 0) || !(step < fabs(d)))
        return e->vals[i];
    return e->from[i] + (d > 0 ? step : -step);
}

/* ramp: a slewing variable moves to x from where it is now, at its rate;
 * otherwise it is there at once. */
static void coerce_store(sim_engine_t *e, sim_var_t *v, unsigned ch, double x, bool ramp)
{
    size_t i = vidx(e, v, ch);
    switch (v->type) {
    case SIM_INT:
        x = to_int(x);
        break;
    case SIM_BOOL:
        x = x != 0;
        break;
    case SIM_ENUM:
        x = to_int(x);
        if (!(x >= 0 && x < (double)v->n_members))
            return;
        break;
    case SIM_SET:
    case SIM_STRING:
        return;
    case SIM_FLOAT:
        break;
    }
    if (!isfinite(x))
        return;
    double now = sim_engine_time(e);
    e->from[i] = ramp && v->slew ? effective(e, i, now) : x;
    e->t_from[i] = now;
    e->vals[i] = x;
}

/* Fills the slots with the state as channel ch sees it; computed variables
 * are evaluated in their declaration order. */
static int load(sim_engine_t *e, unsigned ch)
{
    sim_model_t *m = e->m;
    double *s = sim_scope_slots(m->scope);
    s[m->slot_ch] = ch;
    s[m->slot_nch] = (double)e->nch;
    s[m->slot_t] = sim_engine_time(e);
    s[m->slot_sel] = e->sel;
    for (size_t k = 0; k < m->n_vars; k++) {
        sim_var_t *v = &m->vars[k];
        if (v->expr)
            continue;
        size_t i = vidx(e, v, ch);
        if (v->type == SIM_STRING) {
            s[v->slot] = (double)strlen(e->strs[i] ? e->strs[i] : "");
        } else {
            s[v->slot] = v->slew ? effective(e, i, s[m->slot_t]) : e->vals[i];
            if (v->type == SIM_SET)
                for (size_t b = 0; b < v->n_members; b++)
                    s[v->members[b].slot] = ((unsigned long)e->vals[i] >> b) & 1;
        }
    }
    for (size_t k = 0; k < m->n_vars; k++) {
        sim_var_t *v = &m->vars[k];
        if (!v->expr)
            continue;
        double x;
        char why[SIM_ERRMSG];
        if (sim_expr_eval(v->expr, &x, why, sizeof why) != 0) {
            fprintf(stderr, "labmq-siminst: %s: computing %s: %s\n", m->path, v->name, why);
            return -1;
        }
        if (v->type == SIM_INT || v->type == SIM_ENUM)
            x = to_int(x);
        else if (v->type == SIM_BOOL)
            x = x != 0;
        else if (v->type == SIM_SET)
            x = (double)to_mask(v, x);
        s[v->slot] = x;
    }
    memcpy(e->loaded, s, sim_scope_count(m->scope) * sizeof *s);
    return 0;
}

/* Writes back what an expression assigned. */
static void store(sim_engine_t *e, unsigned ch)
{
    sim_model_t *m = e->m;
    double *s = sim_scope_slots(m->scope);
    for (size_t k = 0; k < m->n_vars; k++) {
        sim_var_t *v = &m->vars[k];
        if (v->expr)
            continue;
        if (v->type == SIM_SET) {
            unsigned long mask = 0;
            bool changed = false;
            for (size_t b = 0; b < v->n_members; b++) {
                changed |= s[v->members[b].slot] != e->loaded[v->members[b].slot];
                mask |= (unsigned long)(s[v->members[b].slot] != 0) << b;
            }
            if (s[v->slot] != e->loaded[v->slot]) /* assigned as a whole number */
                mask = to_mask(v, s[v->slot]);
            else if (!changed)
                continue;
            e->vals[vidx(e, v, ch)] = (double)mask;
        } else if (s[v->slot] != e->loaded[v->slot]) {
            coerce_store(e, v, ch, s[v->slot], true);
        }
    }
}

/* Loads, evaluates, stores. Returns 0 or -1 (reported, -200 queued). */
static int run(sim_engine_t *e, sim_expr_t *x, unsigned ch, double *out)
{
    double dummy;
    char why[SIM_ERRMSG];
    if (load(e, ch) != 0 || sim_expr_eval(x, out ? out : &dummy, why, sizeof why) != 0) {
        fprintf(stderr, "labmq-siminst: %s: expression failed: %s\n", e->m->path, why);
        sim_engine_push_error(e, -200);
        return -1;
    }
    store(e, ch);
    return 0;
}

static void reset(sim_engine_t *e, bool all)
{
    sim_model_t *m = e->m;
    e->sel = 1;
    for (size_t k = 0; k < m->n_vars; k++) {
        sim_var_t *v = &m->vars[k];
        if (v->external && !all)
            continue; /* the world outside the instrument: *RST leaves it */
        for (unsigned ch = 1; ch <= e->nch; ch++) {
            size_t i = vidx(e, v, ch);
            if (v->type == SIM_STRING) {
                free(e->strs[i]);
                e->strs[i] = strdup(v->str_default);
                continue;
            }
            double x = 0;
            if (v->def && load(e, ch) == 0) {
                char why[SIM_ERRMSG];
                if (sim_expr_eval(v->def, &x, why, sizeof why) != 0)
                    x = 0;
            }
            if (v->type == SIM_SET)
                e->vals[i] = (double)to_mask(v, x);
            else
                coerce_store(e, v, ch, x, false);
            if (v->slew && load(e, ch) == 0) {
                char why[SIM_ERRMSG];
                double r = 0;
                e->rate[i] = sim_expr_eval(v->slew, &r, why, sizeof why) == 0 && r > 0 ? r : 0;
            }
        }
    }
}

sim_engine_t *sim_engine_new(sim_model_t *m, double time_scale)
{
    sim_engine_t *e = calloc(1, sizeof *e);
    if (!e)
        return NULL;
    e->m = m;
    e->scale = time_scale;
    e->t0 = sim_mono_ns();
    e->nch = m->n_channels ? m->n_channels : 1;
    size_t nv = m->n_vars ? m->n_vars : 1;
    char why[SIM_ERRMSG];
    e->vals = calloc(nv * e->nch, sizeof *e->vals);
    e->from = calloc(nv * e->nch, sizeof *e->from);
    e->t_from = calloc(nv * e->nch, sizeof *e->t_from);
    e->rate = calloc(nv * e->nch, sizeof *e->rate);
    e->strs = calloc(nv * e->nch, sizeof *e->strs);
    e->loaded = calloc(sim_scope_count(m->scope) + 1, sizeof *e->loaded);
    e->queue = calloc(m->queue_size, sizeof *e->queue);
    if (!e->vals || !e->from || !e->t_from || !e->rate || !e->strs || !e->loaded || !e->queue ||
        sim_pattern_parse(&e->syst_err, "SYSTem:ERRor[:NEXT]?", why, sizeof why) ||
        sim_pattern_parse(&e->min_w, "MINimum", why, sizeof why) ||
        sim_pattern_parse(&e->max_w, "MAXimum", why, sizeof why) ||
        sim_pattern_parse(&e->def_w, "DEFault", why, sizeof why) || sim_pattern_parse(&e->on_w, "ON", why, sizeof why) ||
        sim_pattern_parse(&e->off_w, "OFF", why, sizeof why)) {
        sim_engine_destroy(&e);
        return NULL;
    }
    reset(e, true);
    return e;
}

void sim_engine_destroy(sim_engine_t **ep)
{
    if (!ep || !*ep)
        return;
    sim_engine_t *e = *ep;
    if (e->strs)
        for (size_t i = 0; i < (e->m->n_vars ? e->m->n_vars : 1) * e->nch; i++)
            free(e->strs[i]);
    free(e->strs);
    free(e->vals);
    free(e->from);
    free(e->t_from);
    free(e->rate);
    free(e->loaded);
    free(e->queue);
    sim_pattern_free(&e->syst_err);
    sim_pattern_free(&e->min_w);
    sim_pattern_free(&e->max_w);
    sim_pattern_free(&e->def_w);
    sim_pattern_free(&e->on_w);
    sim_pattern_free(&e->off_w);
    free(e);
    *ep = NULL;
}

/* ---- replies ---- */

static void put_int(sim_engine_t *e, sim_buf_t *out, long v)
{
    sim_buf_printf(out, e->m->plus_sign ? "%+ld" : "%ld", v);
}

/* Formats variable v of channel ch; the slots must be loaded for ch. */
static void put_var(sim_engine_t *e, sim_buf_t *out, const sim_var_t *v, unsigned ch, double x)
{
    switch (v->type) {
    case SIM_FLOAT:
        sim_buf_printf(out, v->fmt, x);
        break;
    case SIM_INT:
        sim_buf_printf(out, v->fmt, (long long)to_int(x));
        break;
    case SIM_BOOL:
        sim_buf_puts(out, v->names[x != 0]);
        break;
    case SIM_ENUM:
        if (x >= 0 && x < (double)v->n_members)
            sim_buf_printf(out, v->quoted ? "\"%s\"" : "%s", v->members[(size_t)x].reply);
        break;
    case SIM_SET: {
        unsigned long mask = to_mask(v, x);
        bool first = true;
        for (size_t b = 0; b < v->n_members; b++)
            if ((mask >> b) & 1) {
                sim_buf_printf(out, v->quoted ? "%s\"%s\"" : "%s%s", first ? "" : ",", v->members[b].reply);
                first = false;
            }
        if (first && v->quoted)
            sim_buf_puts(out, "\"\""); /* an empty string, not nothing */
        break;
    }
    case SIM_STRING: {
        const char *s = e->strs[vidx(e, v, ch)];
        sim_buf_printf(out, v->quoted ? "\"%s\"" : "%s", s ? s : "");
        break;
    }
    }
}


static void render(sim_engine_t *e, sim_buf_t *out, const char *t, unsigned ch)
{
    const double *s = sim_scope_slots(e->m->scope);
    while (*t) {
        const char *b = strchr(t, '{');
        if (!b) {
            sim_buf_puts(out, t);
            return;
        }
        sim_buf_add(out, t, (size_t)(b - t));
        const char *end = strchr(b, '}'); /* checked at load */
        size_t n = (size_t)(end - b - 1);
        const sim_var_t *v = var_named(e->m, b + 1, n);
        if (v) /* a setting shows what was set, even while it slews there */
            put_var(e, out, v, ch, v->expr || v->type == SIM_STRING ? s[v->slot] : e->vals[vidx(e, v, ch)]);
        else if (n == 4 && !strncmp(b + 1, "chan", 4))
            sim_buf_puts(out, e->m->channels[ch - 1]);
        else if (n == 6 && !strncmp(b + 1, "chan_n", 6))
            sim_buf_printf(out, "%u", ch);
        else if (n == 3 && !strncmp(b + 1, "sel", 3))
            sim_buf_puts(out, e->m->channels[e->sel - 1]);
        else if (n == 5 && !strncmp(b + 1, "sel_n", 5))
            sim_buf_printf(out, "%u", e->sel);
        t = end + 1;
    }
}

/* ---- parameters ---- */

static int limit_of(sim_engine_t *e, const sim_var_t *v, unsigned ch, int which, double *x)
{
    sim_expr_t *x_expr = which == 1 ? v->min : which == 2 ? v->max : v->def;
    char why[SIM_ERRMSG];
    if (load(e, ch) != 0 || sim_expr_eval(x_expr, x, why, sizeof why) != 0)
        return -200;
    return 0;
}

static int which_limit(sim_engine_t *e, const char *w)
{
    return sim_word_match(&e->min_w, w) ? 1 : sim_word_match(&e->max_w, w) ? 2 : sim_word_match(&e->def_w, w) ? 3 : 0;
}

static int member_of(const sim_var_t *v, const char *w)
{
    for (size_t k = 0; k < v->n_members; k++)
        if (sim_word_match(&v->members[k].pat, w))
            return (int)k;
    return -1;
}

static int channel_of(const sim_engine_t *e, const sim_tok_t *t)
{
    if (t->kind != SIM_TOK_WORD)
        return 0;
    for (size_t k = 0; k < e->m->n_channels; k++)
        if (!strcasecmp(t->text, e->m->channels[k]))
            return (int)k + 1;
    return 0;
}

/* Parses the value of a VAR parameter (set variables consume the rest). */
static int parse_var(sim_engine_t *e, const sim_param_t *p, const sim_tok_t *tok, size_t nt, size_t *ti, unsigned ch,
                     pval_t *pv)
{
    const sim_var_t *v = p->var;
    const sim_tok_t *t = &tok[*ti];
    pv->given = true;
    pv->word = -1;
    if (t->kind == SIM_TOK_WORD) {
        for (size_t k = 0; k < p->n_words; k++)
            if (sim_word_match(&p->words[k].pat, t->text)) {
                pv->word = (int)k;
                (*ti)++;
                return 0;
            }
        if (v->minmax && (pv->limit = which_limit(e, t->text)) != 0) {
            (*ti)++;
            return limit_of(e, v, ch, pv->limit, &pv->num);
        }
    }
    if (v->type == SIM_SET) {
        unsigned long mask = 0;
        for (; *ti < nt; (*ti)++) {
            t = &tok[*ti];
            if (t->kind == SIM_TOK_BAD)
                return -102;
            if ((t->kind == SIM_TOK_STRING) != v->quoted)
                return -104;
            int k = member_of(v, t->text);
            if (k < 0)
                return -224;
            mask |= 1ul << k;
        }
        pv->num = (double)mask;
        return 0;
    }
    (*ti)++;
    switch (t->kind) {
    case SIM_TOK_BAD:
        return -102;
    case SIM_TOK_STRING:
        if (v->type == SIM_STRING) {
            snprintf(pv->str, sizeof pv->str, "%s", t->text);
            return 0;
        }
        if (v->type == SIM_ENUM && v->quoted) {
            int k = member_of(v, t->text);
            if (k < 0)
                return -224;
            pv->num = k;
            return 0;
        }
        return -104;
    case SIM_TOK_WORD:
        if (v->type == SIM_BOOL && (sim_word_match(&e->on_w, t->text) || sim_word_match(&e->off_w, t->text))) {
            pv->num = sim_word_match(&e->on_w, t->text);
            return 0;
        }
        if (v->type == SIM_ENUM && !v->quoted) {
            int k = member_of(v, t->text);
            if (k < 0)
                return -224;
            pv->num = k;
            return 0;
        }
        return v->quoted || v->type == SIM_STRING ? -104 : -224;
    case SIM_TOK_NUMBER:
        if (v->type == SIM_BOOL) {
            pv->num = round(t->num) != 0;
            return 0;
        }
        if (v->type != SIM_FLOAT && v->type != SIM_INT)
            return v->quoted || v->type == SIM_STRING ? -104 : -224;
        pv->num = v->type == SIM_INT ? round(t->num) : t->num;
        double lo, hi;
        if (v->min && (limit_of(e, v, ch, 1, &lo) || pv->num < lo))
            return -222;
        if (v->max && (limit_of(e, v, ch, 2, &hi) || pv->num > hi))
            return -222;
        return 0;
    }
    return -102;
}

static int tokenize(const char *s, size_t len, sim_tok_t *tok, size_t *nt)
{
    *nt = 0;
    size_t i = 0;
    while (i < len && isspace((unsigned char)s[i]))
        i++;
    if (i == len)
        return 0;
    for (;;) {
        size_t st = i;
        char q = 0;
        while (i < len && (q || s[i] != ',')) {
            if (q && s[i] == q)
                q = 0;
            else if (!q && (s[i] == '"' || s[i] == '\''))
                q = s[i];
            i++;
        }
        size_t a = st, b = i;
        while (a < b && isspace((unsigned char)s[a]))
            a++;
        while (b > a && isspace((unsigned char)s[b - 1]))
            b--;
        if (*nt == MAX_TOKENS)
            return -108;
        sim_tok_classify(&tok[*nt], s + a, b - a);
        if (tok[*nt].kind == SIM_TOK_BAD)
            return -102;
        (*nt)++;
        if (i == len)
            return 0;
        i++; /* past ',' */
    }
}

/* ---- one message unit ---- */

static int common(sim_engine_t *e, const char *name, bool query, size_t nt, const sim_tok_t *tok, sim_buf_t *out,
                  bool *replied)
{
    sim_model_t *m = e->m;
    bool arg = nt == 1 && tok[0].kind == SIM_TOK_NUMBER;
    *replied = query;
    if (query && nt)
        return -108;
    if (!strcmp(name, "*IDN") && query) {
        sim_buf_puts(out, m->identity);
    } else if (!strcmp(name, "*OPC") && query) {
        sim_buf_puts(out, "1");
    } else if (!strcmp(name, "*ESR") && query) {
        put_int(e, out, e->esr);
        e->esr = 0;
    } else if (!strcmp(name, "*ESE") && query) {
        put_int(e, out, e->ese);
    } else if (!strcmp(name, "*SRE") && query) {
        put_int(e, out, e->sre);
    } else if (!strcmp(name, "*STB") && query) {
        unsigned stb = (e->qn ? 0x04 : 0) | ((e->esr & e->ese) ? 0x20 : 0);
        if (stb & e->sre)
            stb |= 0x40;
        put_int(e, out, stb);
    } else if (!strcmp(name, "*TST") && query) {
        put_int(e, out, 0);
    } else if (query) {
        *replied = false;
        return -113;
    } else if (!strcmp(name, "*RST") || !strcmp(name, "*CLS") || !strcmp(name, "*OPC") || !strcmp(name, "*WAI")) {
        if (nt)
            return -108;
        if (!strcmp(name, "*RST"))
            reset(e, false);
        else if (!strcmp(name, "*CLS"))
            e->qn = 0, e->esr = 0;
        else if (!strcmp(name, "*OPC"))
            e->esr |= 0x01;
    } else if (!strcmp(name, "*ESE") || !strcmp(name, "*SRE")) {
        if (nt == 0)
            return -109;
        if (!arg)
            return nt > 1 ? -108 : -104;
        if (!(tok[0].num >= 0 && tok[0].num <= 255))
            return -222;
        *(!strcmp(name, "*ESE") ? &e->ese : &e->sre) = (unsigned)round(tok[0].num);
    } else {
        return -113;
    }
    return 0;
}

static const sim_command_t *find(sim_engine_t *e, const sim_header_t *h, long *suffix, bool *matched)
{
    for (size_t k = 0; k < e->m->n_cmds; k++) {
        const sim_command_t *c = &e->m->cmds[k];
        if (!sim_pattern_match(&c->pat, h, suffix))
            continue;
        *matched = true;
        if (h->query ? c->queryable : c->settable)
            return c;
    }
    return NULL;
}

static int exec_command(sim_engine_t *e, const sim_command_t *c, long suffix, bool query, size_t nt,
                        const sim_tok_t *tok, sim_buf_t *out, bool *replied, double *delay)
{
    sim_model_t *m = e->m;
    unsigned ch = e->sel;
    if (suffix > 0) {
        if (m->n_channels == 0 ? suffix != 1 : (size_t)suffix > m->n_channels)
            return -114;
        ch = (unsigned)suffix;
    }
    const sim_param_t *ps = query ? c->qparams : c->params;
    size_t np = query ? c->n_qparams : c->n_params;
    pval_t pv[MAX_TOKENS];
    unsigned new_sel = 0;
    size_t ti = 0;
    for (size_t i = 0; i < np; i++) {
        const sim_param_t *p = &ps[i];
        memset(&pv[i], 0, sizeof pv[i]);
        pv[i].word = -1;
        if (ti >= nt) {
            if (!p->optional)
                return -109;
            continue;
        }
        switch (p->kind) {
        case SIM_P_CHANNEL:
        case SIM_P_SELECT: {
            int k = channel_of(e, &tok[ti]);
            if (!k) {
                if (p->optional && p->kind == SIM_P_CHANNEL)
                    continue; /* "OUTP ON" as well as "OUTP CH2,ON" */
                return tok[ti].kind == SIM_TOK_WORD ? -224 : -104;
            }
            ti++;
            pv[i].given = true;
            if (p->kind == SIM_P_CHANNEL)
                ch = (unsigned)k;
            else
                new_sel = (unsigned)k;
            break;
        }
        case SIM_P_SELECT_NUMBER:
            if (tok[ti].kind != SIM_TOK_NUMBER)
                return tok[ti].kind == SIM_TOK_WORD ? -224 : -104;
            if (round(tok[ti].num) < 1 || round(tok[ti].num) > (double)m->n_channels)
                return -222;
            new_sel = (unsigned)round(tok[ti].num);
            pv[i].given = true;
            ti++;
            break;
        case SIM_P_LIMIT:
            if (tok[ti].kind != SIM_TOK_WORD || !(pv[i].limit = which_limit(e, tok[ti].text)))
                return tok[ti].kind == SIM_TOK_WORD ? -224 : -104;
            pv[i].given = true;
            ti++;
            if (limit_of(e, p->var, ch, pv[i].limit, &pv[i].num))
                return -200;
            break;
        case SIM_P_VAR: {
            int rc = parse_var(e, p, tok, nt, &ti, ch, &pv[i]);
            if (rc)
                return rc;
            break;
        }
        }
    }
    if (ti < nt)
        return -108;

    if (c->check) {
        double ok;
        if (run(e, c->check, ch, &ok))
            return 0;
        if (ok == 0) {
            sim_engine_push_error(e, c->check_error);
            return 0;
        }
    }

    /* All parameters are valid: apply them in order. */
    const sim_var_t *limit_var = NULL;
    double limit_val = 0;
    if (new_sel)
        e->sel = new_sel;
    for (size_t i = 0; i < np; i++) {
        const sim_param_t *p = &ps[i];
        if (!pv[i].given) {
            if (p->absent && run(e, p->absent, ch, NULL))
                return 0;
            continue;
        }
        if (p->kind == SIM_P_LIMIT) {
            limit_var = p->var;
            limit_val = pv[i].num;
            continue;
        }
        if (p->kind != SIM_P_VAR)
            continue;
        if (pv[i].word >= 0) {
            if (run(e, p->words[pv[i].word].action, ch, NULL))
                return 0;
            continue;
        }
        size_t vi = vidx(e, p->var, ch);
        if (p->var->type == SIM_STRING) {
            char *s = strdup(pv[i].str);
            if (!s)
                return -200;
            free(e->strs[vi]);
            e->strs[vi] = s;
        } else if (p->var->type == SIM_SET) {
            unsigned long cur = (unsigned long)e->vals[vi], mask = (unsigned long)pv[i].num;
            e->vals[vi] = (double)(p->setmode == SIM_SET_ADD      ? cur | mask
                                   : p->setmode == SIM_SET_REMOVE ? cur & ~mask
                                                                  : mask);
        } else {
            coerce_store(e, p->var, ch, pv[i].num, true);
        }
        if (p->action && run(e, p->action, ch, NULL))
            return 0;
    }
    if (c->action && run(e, c->action, ch, NULL))
        return 0;

    if (query || c->store) {
        sim_buf_t text = {0};
        if (limit_var) {
            put_var(e, &text, limit_var, ch, limit_val);
        } else {
            double reps = 1;
            if (c->repeat && run(e, c->repeat, ch, &reps))
                return 0;
            long n = !(reps >= 1) ? 1 : reps > 100000 ? 100000 : (long)round(reps);
            for (long r = 0; r < n; r++) {
                if (load(e, ch) != 0) { /* fresh per repetition: new noise */
                    sim_buf_free(&text);
                    sim_engine_push_error(e, -200);
                    return 0;
                }
                bool first = true;
                for (size_t k = 0; k < c->n_items; k++) {
                    double on = 1;
                    char why[SIM_ERRMSG];
                    if (c->items[k].cond && sim_expr_eval(c->items[k].cond, &on, why, sizeof why))
                        on = 0;
                    if (on == 0)
                        continue;
                    if (!first || r > 0)
                        sim_buf_puts(&text, ",");
                    first = false;
                    render(e, &text, c->items[k].tmpl, ch);
                }
            }
        }
        if (text.oom) {
            sim_buf_free(&text);
            return -200;
        }
        if (c->store) { /* keeps a copy (READ? and INIT fill what FETCh? returns) */
            size_t si = vidx(e, c->store, ch);
            char *copy = strdup(text.p ? text.p : "");
            if (copy) {
                free(e->strs[si]);
                e->strs[si] = copy;
            }
        }
        if (query) {
            sim_buf_add(out, text.p ? text.p : "", text.len);
            *replied = true;
        }
        sim_buf_free(&text);
    }
    if (c->delay) {
        double d = 0;
        if (run(e, c->delay, ch, &d) == 0 && d > 0)
            *delay += d;
    }
    return 0;
}

/* Executes one message unit; returns 0 or the SCPI error (not yet queued). */
static int exec_unit(sim_engine_t *e, const char *u, size_t len, sim_buf_t *out, bool *replied, double *delay)
{
    *replied = false;
    size_t hl = 0;
    while (hl < len && !isspace((unsigned char)u[hl]))
        hl++;
    sim_header_t h;
    if (sim_header_split(&h, u, hl) != 0)
        return -102;
    sim_tok_t *tok = malloc(MAX_TOKENS * sizeof *tok);
    if (!tok)
        return -200;
    size_t nt;
    int rc = tokenize(u + hl, len - hl, tok, &nt);
    if (rc)
        goto done;
    if (hl && u[0] != ':' && u[0] != '*' && e->have_prev && e->prev.n > 1) {
        /* compound header: continue the previous path */
        sim_header_t rel = e->prev;
        rel.n--;
        rel.query = h.query;
        if (rel.n + h.n <= SIM_MAX_NODES) {
            for (size_t i = 0; i < h.n; i++) {
                memcpy(rel.name[rel.n], h.name[i], sizeof rel.name[0]);
                rel.suffix[rel.n++] = h.suffix[i];
            }
            long suffix;
            bool matched = false;
            if (find(e, &rel, &suffix, &matched))
                h = rel;
        }
    }
    long suffix = 0;
    bool matched = false;
    const sim_command_t *c = find(e, &h, &suffix, &matched);
    if (c) {
        rc = exec_command(e, c, suffix, h.query, nt, tok, out, replied, delay);
    } else if (h.name[0][0] == '*') {
        rc = common(e, h.name[0], h.query, nt, tok, out, replied);
    } else if (h.query && sim_pattern_match(&e->syst_err, &h, &suffix)) {
        if (nt) {
            rc = -108;
            goto done;
        }
        long code = 0;
        if (e->qn) {
            code = e->queue[0];
            memmove(e->queue, e->queue + 1, (e->qn - 1) * sizeof *e->queue);
            e->qn--;
        }
        const char *text = sim_model_error_text(e->m, code);
        sim_buf_printf(out, e->m->plus_sign ? "%+ld,\"%s\"" : "%ld,\"%s\"", code, text ? text : "Unknown error");
        *replied = true;
    } else {
        rc = -113;
    }
    if (h.name[0][0] != '*') {
        e->prev = h;
        e->have_prev = true;
    }
done:
    free(tok);
    return rc;
}

void sim_engine_line(sim_engine_t *e, const char *line, size_t len, sim_buf_t *reply, bool *has_reply,
                     double *delay_ms)
{
    *has_reply = false;
    *delay_ms = 0;
    e->have_prev = false; /* a new program message starts at the root */
    size_t i = 0;
    while (i < len) {
        size_t st = i;
        char q = 0;
        while (i < len && (q || line[i] != ';')) {
            if (q && line[i] == q)
                q = 0;
            else if (!q && (line[i] == '"' || line[i] == '\''))
                q = line[i];
            i++;
        }
        size_t a = st, b = i;
        i++; /* past ';' */
        while (a < b && isspace((unsigned char)line[a]))
            a++;
        while (b > a && isspace((unsigned char)line[b - 1]))
            b--;
        if (a == b)
            continue;
        sim_buf_t part = {0};
        bool replied = false;
        int rc = exec_unit(e, line + a, b - a, &part, &replied, delay_ms);
        if (rc == 0 && replied && !part.oom) {
            if (*has_reply)
                sim_buf_puts(reply, ";");
            sim_buf_add(reply, part.p ? part.p : "", part.len);
            *has_reply = true;
        }
        sim_buf_free(&part);
        if (rc) {
            sim_engine_push_error(e, rc);
            if (rc <= -100 && rc > -200)
                break; /* command error: the rest of the message is not parsed */
        }
    }
}
