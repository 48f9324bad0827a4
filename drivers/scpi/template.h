/* labmq — the scpi driver's instrument descriptions, command templates and
 * reply parsing (internal). No I/O here, so all of it can be unit-tested and
 * fuzzed; drivers/scpi/scpi.c moves the bytes.
 *
 * A description is a YAML file (examples/instruments/ shows three; the
 * README there is the user's manual). Templates are command text with
 * placeholders:
 *
 *   {name}        the argument (or, in a property's set:, {value}) in its
 *                 default form: float %.12g, int %lld, bool its spellings
 *                 (1/0 unless the entry declares others), enum its
 *                 instrument spelling, string as given (no control characters,
 *                 no ';' that would start a second command)
 *   {name:SPEC}   printf-like for numbers: [+][0][width][.precision] and one of
 *                 f e E g G (float or int), d (int); `q` for a string sent as a
 *                 SCPI quoted string ("..." with inner quotes doubled)
 *   {{ and }}     literal braces
 *
 * Numbers in replies follow IEEE 488.2 NR1/NR2/NR3 (+1, -1.5, 1.234E-03).
 * +9.91E+37 (and anything of magnitude >= 9.9E+37) is SCPI's "no data" /
 * overflow marker: scalars report it through *nodata, float arrays hold NaN. */
#ifndef LABMQ_SCPI_TEMPLATE_H
#define LABMQ_SCPI_TEMPLATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "labmq/value.h"

/* Replies longer than this are refused (LMQ_EPROTO); a block is bounded by
 * LMQ__SCPI_MAX_BLOCK. */
#define LMQ__SCPI_MAX_LINE 65536
#define LMQ__SCPI_MAX_BLOCK (64u * 1024u * 1024u)
#define LMQ__SCPI_MAX_CMD 4096

typedef enum lmq__scpi_vtype {
    LMQ__SCPI_FLOAT,
    LMQ__SCPI_INT,
    LMQ__SCPI_BOOL,
    LMQ__SCPI_ENUM,
    LMQ__SCPI_STRING
} lmq__scpi_vtype_t;

/* One value of an enum: the labmq name ("dc") and how the instrument spells it
 * ("VOLTage:DC"). A reply matches the long form or its short form (the
 * characters that are not lower-case letters: "VOLT:DC"), case-insensitively. */
typedef struct lmq__scpi_choice {
    char *name, *spelling, *shortf;
} lmq__scpi_choice_t;

/* A typed value: a method argument, a property's value, a method's result. */
typedef struct lmq__scpi_field {
    char *name, *unit, *doc;
    lmq__scpi_vtype_t type;
    bool limited;
    double min, max;
    char *on, *off; /* BOOL: what is sent for true/false */
    lmq__scpi_choice_t *choices;
    size_t n_choices;
} lmq__scpi_field_t;

/* A compiled template: literal runs and placeholders. */
typedef struct lmq__scpi_seg {
    char *lit;    /* literal text, or NULL for a placeholder */
    size_t field; /* placeholder: index into the fields */
    char fmt[24]; /* placeholder: printf format ("%.3f", "%lld"), "q", or "" (default form) */
} lmq__scpi_seg_t;

typedef struct lmq__scpi_tmpl {
    char *text; /* as written; NULL when absent */
    lmq__scpi_seg_t *segs;
    size_t n;
} lmq__scpi_tmpl_t;

typedef enum lmq__scpi_rkind {
    LMQ__SCPI_R_NONE,  /* a command: nothing is read */
    LMQ__SCPI_R_VALUE, /* one line, one value (field `value`), optionally element k of a comma list */
    LMQ__SCPI_R_LIST,  /* one line of comma-separated numbers into an array */
    LMQ__SCPI_R_BLOCK  /* an IEEE 488.2 block #<n><len><bytes> (or #0...) into an array */
} lmq__scpi_rkind_t;

typedef struct lmq__scpi_reply {
    lmq__scpi_rkind_t kind;
    lmq__scpi_field_t value; /* VALUE: its type, bool spellings, enum choices */
    int element;             /* VALUE: -1 = the whole line, else element k (0-based) of a comma list */
    lmq_dtype_t dtype;       /* LIST, BLOCK: the array's (little-endian) element type */
    bool big_endian;         /* BLOCK: the bytes on the wire are big-endian */
} lmq__scpi_reply_t;

/* A property (args = its one field, named "value"; query = get:, command = set:)
 * or a method (args; command; query unused). */
typedef struct lmq__scpi_cmd {
    char *name, *doc;
    int line; /* in the description, 1-based */
    lmq__scpi_field_t *args;
    size_t n_args;
    lmq__scpi_tmpl_t query, command;
    lmq__scpi_reply_t reply;
    int timeout_ms;   /* 0 = the device's */
    bool error_check; /* query the error queue after this command (writes only) */
    bool transient;   /* property: never written back after a reconnect (restore: false) */
} lmq__scpi_cmd_t;

typedef struct lmq__scpi_desc {
    char *path;
    char *instrument;             /* free text, for messages */
    char *write_term, *read_term; /* "\n" by default */
    char *idn;                    /* substring the *IDN? reply must contain; NULL = no check */
    char **init;                  /* commands sent at open */
    size_t n_init;
    char **safe_state;            /* commands that make the instrument safe (a lock expired) */
    size_t n_safe_state;
    char *clear_command; /* sent after a timeout, once the input is drained; NULL = none */
    char *error_query;   /* "SYST:ERR?"; NULL = no error checks */
    char **no_error;     /* reply prefixes meaning "no error" ("0", "+0") */
    size_t n_no_error;
    int timeout_ms;     /* 0 = not given */
    int clear_quiet_ms; /* how long the line must stay quiet when resynchronising */
    lmq__scpi_cmd_t *props, *methods;
    size_t n_props, n_methods;
} lmq__scpi_desc_t;

/* Loads and validates a description. NULL on failure with the reason in err:
 * "path:line: property 'voltage': ...". */
lmq__scpi_desc_t *lmq__scpi_desc_load(const char *path, char *err, size_t errlen);
/* Same from text; `origin` names it in messages. */
lmq__scpi_desc_t *lmq__scpi_desc_parse(const char *text, size_t len, const char *origin, char *err, size_t errlen);
void lmq__scpi_desc_free(lmq__scpi_desc_t **d);

/* Formats template t with values vals[0..n) for fields[0..n) (already
 * type-checked and range-checked by the daemon; an LMQ_INT value is accepted
 * for a float field). Writes a NUL-terminated command into out. 0, or LMQ_EARG
 * (a value the instrument cannot be sent: an unknown enum name, a string with
 * a control character, a command longer than size) with the reason in err. */
int lmq__scpi_format(const lmq__scpi_tmpl_t *t, const lmq__scpi_field_t *fields, const lmq_value_t *vals, size_t n,
                     char *out, size_t size, char *err, size_t errlen);

/* Parses one reply line (without terminator) for a VALUE or LIST reply into
 * *out. *nodata is set when a scalar is the overflow marker (out is then
 * left LMQ_NONE). 0, or LMQ_EPROTO with the reason in err (the bytes are
 * not named here: the caller knows the command and escapes them). */
int lmq__scpi_parse(const lmq__scpi_reply_t *r, const char *text, size_t len, lmq_value_t *out, bool *nodata, char *err,
                    size_t errlen);

/* Looks at the start of a block. 0 with *head (bytes of "#<n><len>") and
 * *data_len set when the header is complete; *indefinite for "#0" (then
 * *head is 2 and *data_len 0: the data runs to the end of the message). 1
 * when more bytes are needed. LMQ_EPROTO when it is not a block header or the
 * length exceeds LMQ__SCPI_MAX_BLOCK. */
int lmq__scpi_block_head(const void *buf, size_t len, size_t *head, size_t *data_len, bool *indefinite, char *err,
                         size_t errlen);
/* Converts block data (the bytes after the header) into an array of r->dtype,
 * swapping from the wire's byte order. LMQ_EPROTO when n is not a whole
 * number of elements. */
int lmq__scpi_block_decode(const lmq__scpi_reply_t *r, const void *data, size_t n, lmq_value_t *out, char *err,
                           size_t errlen);
/* A whole block reply in one buffer (without the terminator). */
int lmq__scpi_parse_block(const lmq__scpi_reply_t *r, const void *buf, size_t len, lmq_value_t *out, char *err,
                          size_t errlen);

/* Strict IEEE 488.2 decimal number (NR1/NR2/NR3, surrounding blanks allowed).
 * 0 or LMQ_EPROTO. */
int lmq__scpi_number(const char *text, size_t len, double *out);

/* True when a reply to the error query means "no error". */
bool lmq__scpi_no_error(const lmq__scpi_desc_t *d, const char *reply);

/* Bytes for people: printable ASCII as is, \n \r \t \\ \" and \xHH otherwise,
 * "..." when cut. Always NUL-terminates; returns out. */
char *lmq__scpi_escape(const void *data, size_t len, char *out, size_t size);

#endif
