/* labmq-siminst — the lexical rules of SCPI: keyword patterns with short and
 * long forms, typed headers, parameter tokens and numbers; plus the small
 * growable string the other files share. */
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "siminst.h"

int64_t sim_mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* ---- sim_buf ---- */

void sim_buf_add(sim_buf_t *b, const char *s, size_t n)
{
    if (b->oom)
        return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->oom = true;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = 0;
}

void sim_buf_puts(sim_buf_t *b, const char *s) { sim_buf_add(b, s, strlen(s)); }

void sim_buf_printf(sim_buf_t *b, const char *fmt, ...)
{
    char tmp[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n < sizeof tmp) {
        sim_buf_add(b, tmp, (size_t)n);
        return;
    }
    char *big = malloc((size_t)n + 1);
    if (!big) {
        b->oom = true;
        return;
    }
    va_start(ap, fmt);
    vsnprintf(big, (size_t)n + 1, fmt, ap);
    va_end(ap);
    sim_buf_add(b, big, (size_t)n);
    free(big);
}

void sim_buf_free(sim_buf_t *b)
{
    free(b->p);
    memset(b, 0, sizeof *b);
}

/* ---- patterns ---- */

static char *upper_dup(const char *s, size_t n)
{
    char *d = malloc(n + 1);
    if (!d)
        return NULL;
    for (size_t i = 0; i < n; i++)
        d[i] = (char)toupper((unsigned char)s[i]);
    d[n] = 0;
    return d;
}

void sim_pattern_free(sim_pattern_t *p)
{
    for (size_t i = 0; i < p->n; i++) {
        free(p->nodes[i].shortf);
        free(p->nodes[i].longf);
    }
    free(p->nodes);
    memset(p, 0, sizeof *p);
}

static bool kw_char(char c) { return isalnum((unsigned char)c) || c == '_' || c == '*'; }

/* Length of "[<n>]" or "[1|2|3]" at s, else 0. */
static size_t suffix_list(const char *s)
{
    if (!strncmp(s, "[<n>]", 5))
        return 5;
    size_t i = 1;
    for (;;) {
        size_t d = 0;
        while (isdigit((unsigned char)s[i]))
            i++, d++;
        if (!d)
            return 0;
        if (s[i] == ']')
            return i + 1;
        if (s[i] != '|')
            return 0;
        i++;
    }
}

int sim_pattern_parse(sim_pattern_t *p, const char *text, char *err, size_t errsz)
{
    memset(p, 0, sizeof *p);
    int depth = 0;
    size_t len = strlen(text);
    if (len && text[len - 1] == '?') {
        p->query_only = true;
        len--;
    }
    for (size_t i = 0; i < len;) {
        char c = text[i];
        size_t sl = c == '[' && i > 0 && kw_char(text[i - 1]) ? suffix_list(text + i) : 0;
        if (sl) { /* "OUTPut[1|2|3]" or "SOURce[<n>]", as programming guides write it: '#' */
            p->nodes[p->n - 1].suffix = true;
            i += sl;
        } else if (c == '[') {
            depth++;
            i++;
        } else if (c == ']') {
            if (--depth < 0) {
                snprintf(err, errsz, "unbalanced ']' at column %zu of \"%s\"", i + 1, text);
                goto fail;
            }
            i++;
        } else if (c == ':' || c == ' ') {
            i++;
        } else if (c == '#') {
            if (!p->n) {
                snprintf(err, errsz, "'#' (channel suffix) before any keyword in \"%s\"", text);
                goto fail;
            }
            p->nodes[p->n - 1].suffix = true;
            i++;
        } else if (kw_char(c)) {
            size_t s = i;
            while (i < len && kw_char(text[i]))
                i++;
            size_t ns = 0;
            while (s + ns < i && !islower((unsigned char)text[s + ns]))
                ns++;
            if (ns == 0) {
                snprintf(err, errsz, "keyword \"%.*s\" in \"%s\" has no upper-case short form", (int)(i - s), text + s,
                         text);
                goto fail;
            }
            for (size_t k = s + ns; k < i; k++)
                if (!islower((unsigned char)text[k])) {
                    snprintf(err, errsz,
                             "keyword \"%.*s\" in \"%s\": the short form must be the upper-case start of the keyword",
                             (int)(i - s), text + s, text);
                    goto fail;
                }
            if (p->n == SIM_MAX_NODES) {
                snprintf(err, errsz, "\"%s\" has more than %d keywords", text, SIM_MAX_NODES);
                goto fail;
            }
            sim_node_t *nn = realloc(p->nodes, (p->n + 1) * sizeof *nn);
            if (!nn) {
                snprintf(err, errsz, "out of memory");
                goto fail;
            }
            p->nodes = nn;
            sim_node_t *node = &p->nodes[p->n++];
            node->shortf = upper_dup(text + s, ns);
            node->longf = upper_dup(text + s, i - s);
            node->optional = depth > 0;
            node->suffix = false;
            if (!node->shortf || !node->longf) {
                snprintf(err, errsz, "out of memory");
                goto fail;
            }
        } else {
            snprintf(err, errsz, "unexpected '%c' at column %zu of \"%s\"", c, i + 1, text);
            goto fail;
        }
    }
    if (depth != 0) {
        snprintf(err, errsz, "unbalanced '[' in \"%s\"", text);
        goto fail;
    }
    if (p->n == 0) {
        snprintf(err, errsz, "\"%s\" has no keyword", text);
        goto fail;
    }
    return 0;
fail:
    sim_pattern_free(p);
    return -1;
}

int sim_header_split(sim_header_t *h, const char *text, size_t len)
{
    memset(h, 0, sizeof *h);
    if (len && text[len - 1] == '?') {
        h->query = true;
        len--;
    }
    size_t i = 0;
    if (len && text[0] == ':')
        i = 1;
    if (i < len && text[i] == '*') { /* common command: one node, "*" included */
        if (i != 0)
            return -1;
    }
    while (i < len) {
        size_t s = i;
        while (i < len && text[i] != ':')
            i++;
        size_t n = i - s;
        if (n == 0 || n >= sizeof h->name[0] || h->n == SIM_MAX_NODES)
            return -1;
        size_t digits = 0;
        while (digits < n && isdigit((unsigned char)text[s + n - 1 - digits]))
            digits++;
        size_t kw = n - digits;
        if (kw == 0)
            return -1;
        for (size_t k = 0; k < kw; k++) {
            char c = text[s + k];
            if (!(isalpha((unsigned char)c) || c == '_' || (c == '*' && k == 0 && s == 0)))
                return -1;
            h->name[h->n][k] = (char)toupper((unsigned char)c);
        }
        h->name[h->n][kw] = 0;
        h->suffix[h->n] = -1;
        if (digits) {
            if (digits > 6)
                return -1;
            h->suffix[h->n] = strtol(text + s + kw, NULL, 10);
        }
        h->n++;
        if (i < len) { /* at ':' */
            i++;
            if (i == len)
                return -1;
        }
    }
    return h->n ? 0 : -1;
}

static bool node_match(const sim_node_t *nd, const char *name, long suffix)
{
    if (strcmp(name, nd->shortf) != 0 && strcmp(name, nd->longf) != 0)
        return false;
    /* SCPI allows suffix 1 on any node that takes none ("SENSe1:"). */
    return suffix < 0 || nd->suffix || suffix == 1;
}

static bool match_from(const sim_pattern_t *p, size_t pi, const sim_header_t *h, size_t ti, long *suffix)
{
    if (ti == h->n) {
        for (size_t k = pi; k < p->n; k++)
            if (!p->nodes[k].optional)
                return false;
        return true;
    }
    if (pi == p->n)
        return false;
    const sim_node_t *nd = &p->nodes[pi];
    if (node_match(nd, h->name[ti], h->suffix[ti]) && match_from(p, pi + 1, h, ti + 1, suffix)) {
        if (nd->suffix && h->suffix[ti] >= 0)
            *suffix = h->suffix[ti];
        return true;
    }
    return nd->optional && match_from(p, pi + 1, h, ti, suffix);
}

bool sim_pattern_match(const sim_pattern_t *p, const sim_header_t *h, long *suffix)
{
    *suffix = 0;
    return match_from(p, 0, h, 0, suffix);
}

bool sim_word_match(const sim_pattern_t *p, const char *word)
{
    if (p->n == 1) { /* whole word: "CH1" is a name, not CH with suffix 1 */
        char up[64];
        size_t n = strlen(word);
        if (n >= sizeof up)
            return false;
        for (size_t i = 0; i <= n; i++)
            up[i] = (char)toupper((unsigned char)word[i]);
        return !strcmp(up, p->nodes[0].shortf) || !strcmp(up, p->nodes[0].longf);
    }
    sim_header_t h;
    if (sim_header_split(&h, word, strlen(word)) != 0 || h.query)
        return false;
    long suffix;
    return sim_pattern_match(p, &h, &suffix);
}

/* ---- parameter tokens ---- */

/* NR1/NR2/NR3: [+-] digits [. digits] [E [+-] digits], at least one digit
 * in the mantissa. strtod alone would also take "inf", "nan" and hex. */
static bool scpi_number(const char *s, size_t len, double *out)
{
    size_t i = 0, digits = 0;
    if (i < len && (s[i] == '+' || s[i] == '-'))
        i++;
    while (i < len && isdigit((unsigned char)s[i]))
        i++, digits++;
    if (i < len && s[i] == '.') {
        i++;
        while (i < len && isdigit((unsigned char)s[i]))
            i++, digits++;
    }
    if (!digits)
        return false;
    if (i < len && (s[i] == 'e' || s[i] == 'E')) {
        i++;
        if (i < len && (s[i] == '+' || s[i] == '-'))
            i++;
        size_t ed = 0;
        while (i < len && isdigit((unsigned char)s[i]))
            i++, ed++;
        if (!ed)
            return false;
    }
    if (i != len)
        return false;
    char tmp[128];
    if (len >= sizeof tmp)
        return false;
    memcpy(tmp, s, len);
    tmp[len] = 0;
    errno = 0;
    *out = strtod(tmp, NULL);
    return isfinite(*out);
}

void sim_tok_classify(sim_tok_t *t, const char *s, size_t len)
{
    memset(t, 0, sizeof *t);
    t->kind = SIM_TOK_BAD;
    if (len == 0)
        return;
    if (s[0] == '"' || s[0] == '\'') {
        char q = s[0];
        size_t o = 0;
        size_t i = 1;
        for (; i < len; i++) {
            if (s[i] == q) {
                if (i + 1 < len && s[i + 1] == q) { /* doubled quote */
                    i++;
                } else {
                    break;
                }
            }
            if (o + 1 >= sizeof t->text)
                return;
            t->text[o++] = s[i];
        }
        if (i != len - 1)
            return; /* unterminated or text after the closing quote */
        t->text[o] = 0;
        t->kind = SIM_TOK_STRING;
        return;
    }
    if (len >= sizeof t->text)
        return;
    memcpy(t->text, s, len);
    t->text[len] = 0;
    if (isalpha((unsigned char)s[0])) {
        for (size_t i = 0; i < len; i++)
            if (!(isalnum((unsigned char)s[i]) || s[i] == '_' || s[i] == ':'))
                return;
        t->kind = SIM_TOK_WORD;
        return;
    }
    if (scpi_number(s, len, &t->num))
        t->kind = SIM_TOK_NUMBER;
}
