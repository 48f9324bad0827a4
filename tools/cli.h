/* labmq CLI — shared context and helpers (internal to tools/).
 *
 * Everything a command needs travels in one cli_t built by main(): no global
 * mutable state, so commands are plain functions of (context, arguments). */
#ifndef LABMQ_TOOLS_CLI_H
#define LABMQ_TOOLS_CLI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <jansson.h>
#include "labmq/labmq.h"

/* Exit codes, documented in --help. */
enum { CLI_OK = 0, CLI_FAILED = 1, CLI_USAGE = 2 };

#define CLI_EP_MAX 512

typedef struct cli {
    char control[CLI_EP_MAX]; /* control endpoint, resolved before any command runs */
    char data[CLI_EP_MAX];    /* data endpoint from --data; "" = ask the daemon */
    int timeout_ms;
    bool json;
    bool tty;          /* stdout is a terminal: live refresh in watch */
    long count;        /* watch --count; 0 = unlimited */
    double duration_s; /* watch/record --duration; 0 = unlimited */
    const char *output; /* record -o FILE (borrowed from argv) */
    bool overwrite;     /* record --overwrite */
    int lease_ms;       /* lock --lease; 0 = the default */
    int sigfd;         /* watch, record: signalfd for SIGINT/SIGTERM, -1 when unused */
    bool curve;        /* --key/--server-key (or LABMQ_KEY/LABMQ_SERVER_KEY): talk CURVE */
    lmq_client_keys_t keys; /* the daemon's public key and this client's key pair */
    const char *key_path;   /* the key pair's file (borrowed from argv or the environment) */
    void *zctx;        /* the process's one ZeroMQ context */
    FILE *out;
    FILE *err;
} cli_t;

/* ---- errors (labmq.c) ----
 * Each returns the exit code to hand back from the command, so a command can
 * `return cli_fail_proxy(c, p, rc);`. */
int cli_fail_proxy(cli_t *c, const lmq_proxy_t *p, int status);
int cli_failf(cli_t *c, int status, const char *fmt, ...) LMQ_PRINTF(3, 4);
int cli_usage(cli_t *c, const char *fmt, ...) LMQ_PRINTF(2, 3);

/* ---- daemon access (commands.c) ---- */
/* A proxy for `device` (NULL: daemon-wide) with the CLI's timeout. NULL only on
 * allocation failure, already reported. */
lmq_proxy_t *cli_proxy(cli_t *c, const char *device);
/* The CLI's keys for *_new_keys: NULL without --key. */
const lmq_client_keys_t *cli_keys(const cli_t *c);
/* Fetches and parses `describe` for the proxy's device. Returns the exit code;
 * on CLI_OK *desc is set (caller json_decref's). */
int cli_describe(cli_t *c, lmq_proxy_t *p, json_t **desc);
/* The entry called `name` in the describe section "methods", "properties" or
 * "streams"; NULL when absent. Borrowed from desc. */
json_t *cli_desc_find(json_t *desc, const char *section, const char *name);
/* Reports that device `dev` has no `kind` ("method") called `name`, listing
 * the names its describe `section` ("methods") does have, so a typo is fixed
 * at once. Returns CLI_FAILED. */
int cli_fail_notfound(cli_t *c, json_t *desc, const char *dev, const char *section, const char *kind,
                      const char *name);
/* Fills c->data unless --data gave it: the daemon's own idea (ping over p),
 * made reachable from here. Returns the exit code. */
int cli_resolve_data(cli_t *c, lmq_proxy_t *p);

/* ---- formatting (fmt.c) ---- */
/* "[1000]" / "[480, 640]". */
void cli_fmt_shape(char *buf, size_t size, unsigned ndim, const size_t *shape);
/* Element i of a little-endian array as double. */
double cli_elem_double(const void *data, lmq_dtype_t dt, size_t i);
/* Element i as text: integers exactly, floats in `%.*g` with `prec` digits
 * (0 = shortest text that reads back to the same double). */
void cli_fmt_elem(char *buf, size_t size, const void *data, lmq_dtype_t dt, size_t i, int prec);
/* min/max/mean over n elements; NaNs are ignored by min and max. */
void cli_array_stats(const void *data, lmq_dtype_t dt, size_t n, double *min, double *max, double *mean);
/* min, max and mean with one shared number of decimals, so a live line does
 * not jitter: "min -1.000 max 1.000 mean 0.002". */
void cli_fmt_minmaxmean(char *buf, size_t size, double min, double max, double mean);
/* Shortest "%.*g" text that reads back as d ("3.3", not "3.2999999999999998"). */
void cli_fmt_double(char *buf, size_t size, double d);
/* Human text of a value with its unit: "3.3 V", "true", "<f8 [1000]  [0.1, ...]  min ...". */
void cli_print_value(FILE *out, const lmq_value_t *v, const char *unit);
/* A value as one JSON document; arrays as {"dtype","shape","data":[flat, C order]}. */
void cli_print_value_json(FILE *out, const lmq_value_t *v);
/* Display width of UTF-8 text (code points; enough for "µs"). */
size_t cli_text_width(const char *s);

/* ---- aligned tables (table.c) ----
 * Rows are copied in; allocation failures are sticky and reported once by
 * cli_table_print, so building a table needs no error checks per cell. */
typedef struct cli_table cli_table_t;
cli_table_t *cli_table_new(size_t ncols);
void cli_table_destroy(cli_table_t **t);
/* Adds a row of exactly ncols strings (NULL prints as ""). */
void cli_table_row(cli_table_t *t, ...);
void cli_table_align_right(cli_table_t *t, size_t col);
/* Prints with two spaces between columns, each line prefixed by indent.
 * Returns 0, or LMQ_EMEM when some row could not be stored (nothing printed). */
int cli_table_print(const cli_table_t *t, FILE *out, const char *indent);

/* ---- commands ---- */
int cli_cmd_ping(cli_t *c, int argc, char **argv);
int cli_cmd_ls(cli_t *c, int argc, char **argv);
int cli_cmd_describe(cli_t *c, int argc, char **argv);
int cli_cmd_call(cli_t *c, int argc, char **argv);
int cli_cmd_get(cli_t *c, int argc, char **argv);
int cli_cmd_set(cli_t *c, int argc, char **argv);
int cli_cmd_stats(cli_t *c, int argc, char **argv);
int cli_cmd_scan(cli_t *c, int argc, char **argv);
int cli_cmd_workers(cli_t *c, int argc, char **argv);
int cli_cmd_lock(cli_t *c, int argc, char **argv);
int cli_cmd_watch(cli_t *c, int argc, char **argv);  /* watch.c */
int cli_cmd_record(cli_t *c, int argc, char **argv); /* record.c */
int cli_cmd_keygen(cli_t *c, int argc, char **argv); /* keygen.c */

#endif
