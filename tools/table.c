/* labmq CLI — aligned text tables. */
#include <stdarg.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include "cli.h"

#define TABLE_MAX_COLS 16

struct cli_table {
    size_t ncols;
    size_t nrows, cap;
    char **cells; /* nrows * ncols, each owned */
    bool right[TABLE_MAX_COLS];
    bool oom; /* sticky: a row was lost, so printing would mislead */
};

cli_table_t *cli_table_new(size_t ncols)
{
    if (ncols == 0 || ncols > TABLE_MAX_COLS)
        return NULL;
    cli_table_t *t = calloc(1, sizeof *t);
    if (t)
        t->ncols = ncols;
    return t;
}

void cli_table_destroy(cli_table_t **tp)
{
    if (!tp || !*tp)
        return;
    cli_table_t *t = *tp;
    for (size_t i = 0; i < t->nrows * t->ncols; i++)
        free(t->cells[i]);
    free(t->cells);
    free(t);
    *tp = NULL;
}

void cli_table_align_right(cli_table_t *t, size_t col)
{
    if (t && col < t->ncols)
        t->right[col] = true;
}

void cli_table_row(cli_table_t *t, ...)
{
    if (!t || t->oom)
        return;
    if (t->nrows == t->cap) {
        size_t ncap = t->cap ? t->cap * 2 : 8;
        char **n = realloc(t->cells, ncap * t->ncols * sizeof *n);
        if (!n) {
            t->oom = true;
            return;
        }
        t->cells = n;
        t->cap = ncap;
    }
    char **row = t->cells + t->nrows * t->ncols;
    va_list ap;
    va_start(ap, t);
    for (size_t i = 0; i < t->ncols; i++) {
        const char *s = va_arg(ap, const char *);
        row[i] = strdup(s ? s : "");
        if (!row[i])
            t->oom = true;
    }
    va_end(ap);
    if (t->oom) {
        for (size_t i = 0; i < t->ncols; i++)
            free(row[i]);
        return;
    }
    t->nrows++;
}

static void pad(FILE *out, size_t n)
{
    while (n--)
        fputc(' ', out);
}

int cli_table_print(const cli_table_t *t, FILE *out, const char *indent)
{
    if (!t)
        return LMQ_EARG;
    if (t->oom)
        return LMQ_EMEM;
    size_t width[TABLE_MAX_COLS] = {0};
    for (size_t r = 0; r < t->nrows; r++)
        for (size_t c = 0; c < t->ncols; c++) {
            size_t w = cli_text_width(t->cells[r * t->ncols + c]);
            if (w > width[c])
                width[c] = w;
        }
    for (size_t r = 0; r < t->nrows; r++) {
        fputs(indent ? indent : "", out);
        /* The last non-empty cell ends the line: trailing blanks only annoy
         * people who paste tables into lab notebooks or diff them. */
        size_t last = 0;
        for (size_t c = 0; c < t->ncols; c++)
            if (t->cells[r * t->ncols + c][0])
                last = c;
        for (size_t c = 0; c <= last; c++) {
            const char *s = t->cells[r * t->ncols + c];
            size_t w = cli_text_width(s);
            if (c > 0)
                fputs("  ", out);
            if (t->right[c])
                pad(out, width[c] - w);
            fputs(s, out);
            if (!t->right[c] && c < last)
                pad(out, width[c] - w);
        }
        fputc('\n', out);
    }
    return 0;
}
