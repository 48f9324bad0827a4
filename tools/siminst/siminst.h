/* labmq-siminst — the instrument model, its expressions and the SCPI engine
 * (internal to tools/siminst/).
 *
 * model.c loads a YAML description into a sim_model_t; engine.c executes SCPI
 * lines against it; expr.c wraps muparser; scpi.c holds the lexical rules of
 * SCPI (keyword patterns, program-data tokens, numbers); serve.c moves bytes
 * over a pseudo-terminal or TCP and injects faults. Nothing here is global:
 * the engine owns the state, main() owns the engine. */
#ifndef LABMQ_SIMINST_H
#define LABMQ_SIMINST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Exit codes, documented in --help and README.md. */
enum { SIM_EXIT_OK = 0, SIM_EXIT_RUNTIME = 1, SIM_EXIT_USAGE = 2 };

#define SIM_ERRMSG 512

/* ---- a growable string ---- */

typedef struct sim_buf {
    char *p;
    size_t len, cap;
    bool oom;
} sim_buf_t;

void sim_buf_add(sim_buf_t *b, const char *s, size_t n);
void sim_buf_puts(sim_buf_t *b, const char *s);
void sim_buf_printf(sim_buf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void sim_buf_free(sim_buf_t *b);

/* ---- SCPI keyword patterns (scpi.c) ----
 * "[:SOURce#]:VOLTage[:LEVel]" : nodes with a short form (the upper-case
 * part), a long form, optional flag and '#' = takes a numeric suffix (the
 * channel). A trailing '?' makes the pattern query-only. */

typedef struct sim_node {
    char *shortf, *longf; /* upper case */
    bool optional, suffix;
} sim_node_t;

typedef struct sim_pattern {
    sim_node_t *nodes;
    size_t n;
    bool query_only;
} sim_pattern_t;

/* Returns 0, or -1 with a reason in err. */
int sim_pattern_parse(sim_pattern_t *p, const char *text, char *err, size_t errsz);
void sim_pattern_free(sim_pattern_t *p);

/* A typed header split into nodes (without the leading colon and '?'). */
#define SIM_MAX_NODES 16
typedef struct sim_header {
    char name[SIM_MAX_NODES][32]; /* upper case, suffix removed */
    long suffix[SIM_MAX_NODES];   /* -1 when none */
    size_t n;
    bool query;
} sim_header_t;

/* Splits text (a header as typed, e.g. ":sour2:volt?") into h. Returns 0, or
 * -1 when it is not a well-formed header (SCPI -102). */
int sim_header_split(sim_header_t *h, const char *text, size_t len);
/* Matches h against p; *suffix gets the numeric suffix of a '#' node (0 when
 * none was typed). */
bool sim_pattern_match(const sim_pattern_t *p, const sim_header_t *h, long *suffix);
/* A single keyword ("MAXimum") against a typed word, case-insensitive. */
bool sim_word_match(const sim_pattern_t *p, const char *word);

/* Program data: one parameter as typed. */
typedef enum { SIM_TOK_WORD, SIM_TOK_NUMBER, SIM_TOK_STRING, SIM_TOK_BAD } sim_tok_kind_t;
typedef struct sim_tok {
    sim_tok_kind_t kind;
    char text[256]; /* word or unquoted string */
    double num;
} sim_tok_t;

/* Classifies one trimmed parameter. */
void sim_tok_classify(sim_tok_t *t, const char *s, size_t len);

/* ---- expressions (expr.c) ---- */

/* The variables expressions see: named double slots. The engine loads the
 * slots before an evaluation and reads assignments back afterwards. */
typedef struct sim_scope sim_scope_t;
typedef struct sim_expr sim_expr_t;

sim_scope_t *sim_scope_new(uint64_t seed);
void sim_scope_destroy(sim_scope_t **s);
/* Adds a slot (the name must be new); returns its index or -1 when full/duplicate. */
int sim_scope_add(sim_scope_t *s, const char *name, bool constant, double value);
int sim_scope_find(const sim_scope_t *s, const char *name);
double *sim_scope_slots(sim_scope_t *s);
size_t sim_scope_count(const sim_scope_t *s);
/* Uniform double in [0,1) from the scope's generator. */
double sim_scope_random(sim_scope_t *s);

/* Compiles text and evaluates it once on a copy of the slots (so a mistake
 * shows at load time, not on the first command). NULL with err on failure. */
sim_expr_t *sim_expr_new(sim_scope_t *s, const char *text, char *err, size_t errsz);
void sim_expr_destroy(sim_expr_t **e);
/* Evaluates (assignments write the slots). Returns 0, or -1 with err. */
int sim_expr_eval(sim_expr_t *e, double *out, char *err, size_t errsz);

/* ---- the model (model.c) ---- */

typedef enum { SIM_FLOAT, SIM_INT, SIM_BOOL, SIM_ENUM, SIM_SET, SIM_STRING } sim_type_t;

typedef struct sim_member {
    sim_pattern_t pat; /* how a parameter names it */
    char *reply;       /* how a query shows it */
    int slot;          /* SET: 0/1 slot "<var>_<SHORT>" */
} sim_member_t;

typedef struct sim_var {
    char *name;
    sim_type_t type;
    bool per_channel, minmax, quoted, external; /* external: not reset by *RST */
    char *fmt; /* printf format for one double (float) or long long (int) */
    char *names[2]; /* BOOL replies for 0 and 1 */
    sim_member_t *members;
    size_t n_members;
    sim_expr_t *def, *min, *max, *expr; /* expr: computed, read-only */
    sim_expr_t *slew;                    /* FLOAT: units per simulated second; NULL = steps at once */
    char *str_default;                   /* STRING */
    int slot;
    int line;
} sim_var_t;

typedef enum { SIM_P_VAR, SIM_P_CHANNEL, SIM_P_SELECT, SIM_P_SELECT_NUMBER, SIM_P_LIMIT } sim_param_kind_t;
typedef enum { SIM_SET_ASSIGN, SIM_SET_ADD, SIM_SET_REMOVE } sim_setmode_t;

typedef struct sim_word {
    sim_pattern_t pat;
    sim_expr_t *action;
} sim_word_t;

typedef struct sim_param {
    sim_param_kind_t kind;
    sim_var_t *var; /* VAR, LIMIT */
    bool optional;
    sim_setmode_t setmode;
    sim_expr_t *action, *absent;
    sim_word_t *words;
    size_t n_words;
} sim_param_t;

typedef struct sim_item {
    sim_expr_t *cond; /* NULL = always */
    char *tmpl;
} sim_item_t;

typedef struct sim_command {
    char *header;
    sim_pattern_t pat;
    sim_param_t *params, *qparams;
    size_t n_params, n_qparams;
    bool settable, queryable;
    sim_expr_t *check, *action, *delay, *repeat;
    long check_error;
    sim_item_t *items; /* a reply is its items joined by ',' */
    size_t n_items;
    sim_var_t *store; /* STRING var that keeps the reply instead of sending it */
    int line;
} sim_command_t;

typedef struct sim_errtext {
    long code;
    char *text;
} sim_errtext_t;

typedef struct sim_model {
    char *path;
    char *identity;
    char *terminator;
    char **channels;
    size_t n_channels; /* 0 = a single-channel instrument; channel 1 internally */
    bool plus_sign;    /* "+0" style integers in status and error replies */
    size_t queue_size;
    sim_errtext_t *errors;
    size_t n_errors;
    sim_var_t *vars;
    size_t n_vars;
    sim_command_t *cmds;
    size_t n_cmds;
    sim_scope_t *scope;
    int slot_ch, slot_nch, slot_t, slot_sel;
} sim_model_t;

/* Loads path; NULL with "path:line: reason" in err. seed feeds gauss(). */
sim_model_t *sim_model_load(const char *path, uint64_t seed, char *err, size_t errsz);
void sim_model_destroy(sim_model_t **m);
const char *sim_model_error_text(const sim_model_t *m, long code);

/* ---- the engine (engine.c) ---- */

typedef struct sim_engine sim_engine_t;

/* Borrows m (which must outlive the engine). time_scale > 0. */
sim_engine_t *sim_engine_new(sim_model_t *m, double time_scale);
void sim_engine_destroy(sim_engine_t **e);
/* Executes one program message (a line without its terminator). Appends
 * the response message (without terminator) to reply and sets *has_reply
 * when there is one; *delay_ms gets the simulated time the line takes. */
void sim_engine_line(sim_engine_t *e, const char *line, size_t len, sim_buf_t *reply, bool *has_reply,
                     double *delay_ms);
/* Sets a (non-computed, numeric) variable, on channel ch or on all (ch 0).
 * Returns 0, or -1 with the reason in err. */
int sim_engine_set(sim_engine_t *e, const char *name, unsigned ch, double value, char *err, size_t errsz);
/* Parses "NAME[@CH]=VALUE" (or with a space for '=') and sets it. */
int sim_engine_set_spec(sim_engine_t *e, const char *spec, char *err, size_t errsz);
/* Queues an error as if a command had caused it (input overrun, ...). */
void sim_engine_push_error(sim_engine_t *e, long code);
/* Simulated seconds since start. */
double sim_engine_time(const sim_engine_t *e);

int64_t sim_mono_ns(void);

/* ---- serving (serve.c) ---- */

typedef struct sim_opts {
    const char *model;
    const char *link; /* pty: symlink kept pointing at the current pty */
    long tcp_port;    /* -1: serve on a pty */
    double scale;
    uint64_t seed;
    bool log, fault_commands;
    const char **faults; /* --fault SPECs, applied at start */
    size_t n_faults;
} sim_opts_t;

/* Checks a fault SPEC ("drop 2", "split 4 50", ...); 0 or -1 with err. */
int sim_fault_check(const char *spec, char *err, size_t errsz);
/* Serves until SIGINT/SIGTERM; returns the exit code. */
int sim_serve(sim_engine_t *e, const sim_model_t *m, const sim_opts_t *o);

#endif
