/* labmq — typed values: method arguments and results, property values.
 *
 * An lmq_value_t is a small tagged union passed by value. Strings and arrays
 * own heap memory: release with lmq_value_clear(). A zeroed value is LMQ_NONE
 * and needs no clearing. On the wire, scalars travel as JSON and arrays as a
 * raw little-endian binary frame (docs/protocol.md). */
#ifndef LABMQ_VALUE_H
#define LABMQ_VALUE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "labmq/export.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum lmq_type {
    LMQ_NONE = 0,
    LMQ_BOOL,
    LMQ_INT,
    LMQ_FLOAT,
    LMQ_STRING,
    LMQ_ARRAY
} lmq_type_t;

/* Element types of arrays and streams; names follow numpy ("<f8"). */
typedef enum lmq_dtype {
    LMQ_DT_INVALID = 0,
    LMQ_U8, LMQ_I8, LMQ_U16, LMQ_I16, LMQ_U32, LMQ_I32, LMQ_U64, LMQ_I64, LMQ_F32, LMQ_F64
} lmq_dtype_t;

#define LMQ_MAX_DIMS 4

typedef struct lmq_array {
    lmq_dtype_t dtype;
    unsigned ndim;
    size_t shape[LMQ_MAX_DIMS];
    void *data;    /* owned, little-endian, C order */
    size_t nbytes; /* = product(shape) * dtype size */
} lmq_array_t;

typedef struct lmq_value {
    lmq_type_t type;
    union {
        bool b;
        int64_t i;
        double f;
        char *s; /* owned, UTF-8, NUL-terminated */
        lmq_array_t a;
    } u;
} lmq_value_t;

/* Scalar constructors (no ownership involved). */
static inline lmq_value_t lmq_bool(bool b) { lmq_value_t v = {LMQ_BOOL, {.b = b}}; return v; }
static inline lmq_value_t lmq_int(int64_t i) { lmq_value_t v = {LMQ_INT, {.i = i}}; return v; }
static inline lmq_value_t lmq_float(double f) { lmq_value_t v = {LMQ_FLOAT, {.f = f}}; return v; }

/* Frees what the value owns and resets it to LMQ_NONE. Accepts NULL. */
LMQ_EXPORT void lmq_value_clear(lmq_value_t *v);
/* Sets *v to a copy of the string. Clears *v first. 0 or LMQ_EMEM / LMQ_EARG (invalid UTF-8). */
LMQ_EXPORT int lmq_value_set_string(lmq_value_t *v, const char *s);
/* Sets *v to an array; copies `data` (may be NULL: zero-filled). Clears *v first. */
LMQ_EXPORT int lmq_value_set_array(lmq_value_t *v, lmq_dtype_t dtype, unsigned ndim, const size_t *shape,
                                   const void *data);
/* Deep copy. */
LMQ_EXPORT int lmq_value_copy(lmq_value_t *dst, const lmq_value_t *src);
/* Reads a number as double: LMQ_INT and LMQ_FLOAT; returns LMQ_EARG otherwise. */
LMQ_EXPORT int lmq_value_to_double(const lmq_value_t *v, double *out);

LMQ_EXPORT const char *lmq_type_name(lmq_type_t t);   /* "float", ... */
LMQ_EXPORT lmq_type_t lmq_type_parse(const char *name); /* LMQ_NONE when unknown */
LMQ_EXPORT size_t lmq_dtype_size(lmq_dtype_t dt);      /* 0 when invalid */
LMQ_EXPORT const char *lmq_dtype_name(lmq_dtype_t dt); /* "<f8", ... */
LMQ_EXPORT lmq_dtype_t lmq_dtype_parse(const char *name);

/* Formats a value for people ("3.3", "true", "\"text\"", "<f8[1000]"); always
 * NUL-terminates. Returns the length it wanted, like snprintf. */
LMQ_EXPORT int lmq_value_format(const lmq_value_t *v, char *buf, size_t size);
/* Parses command-line and config text as `type` (LMQ_NONE = guess: bool, int,
 * float, else string). Integers are decimal ("010" is 10), hexadecimal only
 * with 0x. Returns 0 or LMQ_EARG. */
LMQ_EXPORT int lmq_value_parse(lmq_value_t *v, const char *text, lmq_type_t type);

#ifdef __cplusplus
}
#endif
#endif
