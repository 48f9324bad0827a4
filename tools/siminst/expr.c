/* labmq-siminst — expressions over the instrument's state, evaluated by
 * muparser (Debian's libmuparser, MIT licensed; its C interface).
 *
 * Why muparser and not libmatheval: the models need conditionals, min/max
 * and comparisons ("out ? min(volt/load, curr) : 0"), which libmatheval
 * lacks (and it is GPL). muparser has them, plus assignment ("a = b") and
 * comma-separated expressions, which the command actions use.
 *
 * All expressions of one model share one scope: an array of double slots,
 * one per variable name, bound to every muparser handle by pointer. The
 * engine fills the slots before an evaluation and reads assignments back. */
#include <math.h>
#include <muParserDLL.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "siminst.h"

#define SCOPE_MAX 1024

struct sim_scope {
    char *names[SCOPE_MAX];
    bool constant[SCOPE_MAX];
    double slots[SCOPE_MAX]; /* never moves: muparser keeps pointers into it */
    size_t n;
    uint64_t rng;
    bool have_spare;
    double spare;
};

struct sim_expr {
    muParserHandle_t h;
    sim_scope_t *scope;
};

sim_scope_t *sim_scope_new(uint64_t seed)
{
    sim_scope_t *s = calloc(1, sizeof *s);
    if (s)
        s->rng = seed ? seed : 0x9E3779B97F4A7C15u;
    return s;
}

void sim_scope_destroy(sim_scope_t **sp)
{
    if (!sp || !*sp)
        return;
    for (size_t i = 0; i < (*sp)->n; i++)
        free((*sp)->names[i]);
    free(*sp);
    *sp = NULL;
}

int sim_scope_find(const sim_scope_t *s, const char *name)
{
    for (size_t i = 0; i < s->n; i++)
        if (!strcmp(s->names[i], name))
            return (int)i;
    return -1;
}

int sim_scope_add(sim_scope_t *s, const char *name, bool constant, double value)
{
    if (s->n == SCOPE_MAX || sim_scope_find(s, name) >= 0)
        return -1;
    s->names[s->n] = strdup(name);
    if (!s->names[s->n])
        return -1;
    s->constant[s->n] = constant;
    s->slots[s->n] = value;
    return (int)s->n++;
}

double *sim_scope_slots(sim_scope_t *s) { return s->slots; }
size_t sim_scope_count(const sim_scope_t *s) { return s->n; }

/* splitmix64: small, good enough for measurement noise, seedable for tests. */
double sim_scope_random(sim_scope_t *s)
{
    uint64_t z = (s->rng += 0x9E3779B97F4A7C15u);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9u;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBu;
    z ^= z >> 31;
    return (double)(z >> 11) / 9007199254740992.0;
}

static double fn_gauss(void *user, double sigma)
{
    sim_scope_t *s = user;
    if (s->have_spare) {
        s->have_spare = false;
        return s->spare * sigma;
    }
    double u1, u2;
    do
        u1 = sim_scope_random(s);
    while (u1 <= 0);
    u2 = sim_scope_random(s);
    double r = sqrt(-2 * log(u1));
    s->spare = r * sin(2 * M_PI * u2);
    s->have_spare = true;
    return r * cos(2 * M_PI * u2) * sigma;
}

static double fn_uniform(void *user, double a, double b)
{
    return a + (b - a) * sim_scope_random(user);
}

static double fn_not(double x) { return x == 0; }

static double fn_clamp(double x, double lo, double hi) { return x < lo ? lo : x > hi ? hi : x; }

void sim_expr_destroy(sim_expr_t **e)
{
    if (!e || !*e)
        return;
    if ((*e)->h)
        mupRelease((*e)->h);
    free(*e);
    *e = NULL;
}

static void copy_error(sim_expr_t *e, char *err, size_t errsz)
{
    snprintf(err, errsz, "%s", mupGetErrorMsg(e->h));
    mupErrorReset(e->h);
}

sim_expr_t *sim_expr_new(sim_scope_t *s, const char *text, char *err, size_t errsz)
{
    sim_expr_t *e = calloc(1, sizeof *e);
    if (!e || !(e->h = mupCreate(muBASETYPE_FLOAT))) {
        snprintf(err, errsz, "out of memory");
        free(e);
        return NULL;
    }
    e->scope = s;
    for (size_t i = 0; i < s->n; i++) {
        if (s->constant[i])
            mupDefineConst(e->h, s->names[i], s->slots[i]);
        else
            mupDefineVar(e->h, s->names[i], &s->slots[i]);
    }
    /* Not optimised: muparser must not fold a random draw into a constant. */
    mupDefineFunUserData1(e->h, "gauss", fn_gauss, s, 0);
    mupDefineFunUserData2(e->h, "uniform", fn_uniform, s, 0);
    mupDefineFun3(e->h, "clamp", fn_clamp, 1);
    /* not(x), not "!x": a muparser infix operator binds looser than every
     * binary one ("!a && b" would mean "!(a && b)"). */
    mupDefineFun1(e->h, "not", fn_not, 1);
    if (mupError(e->h)) {
        copy_error(e, err, errsz);
        sim_expr_destroy(&e);
        return NULL;
    }
    mupSetExpr(e->h, text);
    /* Trial run on a copy of the slots: muparser parses lazily, so this is
     * what finds unknown names and syntax errors; assignments are undone. */
    double saved[SCOPE_MAX];
    memcpy(saved, s->slots, s->n * sizeof saved[0]);
    bool have_spare = s->have_spare;
    double spare = s->spare;
    uint64_t rng = s->rng;
    double v;
    int rc = sim_expr_eval(e, &v, err, errsz);
    memcpy(s->slots, saved, s->n * sizeof saved[0]);
    s->have_spare = have_spare;
    s->spare = spare;
    s->rng = rng;
    if (rc != 0)
        sim_expr_destroy(&e);
    return e;
}

int sim_expr_eval(sim_expr_t *e, double *out, char *err, size_t errsz)
{
    int n = 0;
    double *r = mupEvalMulti(e->h, &n);
    if (mupError(e->h)) {
        copy_error(e, err, errsz);
        return -1;
    }
    *out = (r && n > 0) ? r[n - 1] : 0;
    return 0;
}
