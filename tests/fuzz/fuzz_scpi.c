/* Fuzz target for the scpi driver's pure parts (drivers/scpi/template.c):
 * everything an instrument or a description file controls.
 *
 * Input layout: byte 0 chooses what the rest is: even = an instrument's
 * reply, parsed as every kind of reply a description can declare (numbers,
 * elements, bools, enums, strings, comma lists, blocks of several dtypes and
 * byte orders), and sent back through a template as a string argument; odd =
 * a description file (YAML), whose templates are then formatted.
 *
 * Built with clang -fsanitize=fuzzer when LMQ_FUZZ is on (scripts/fuzz.sh
 * scpi); otherwise main() below replays a corpus, which CI does under
 * ASan/UBSan. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "labmq/status.h"
#include "scpi/template.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char fixed[] =
    "properties:\n"
    "  - {name: f, type: float, get: 'F?', set: 'F {value:+08.3e}'}\n"
    "  - {name: i, type: int, get: 'I?', set: 'I {value:04d}', element: 2}\n"
    "  - {name: b, type: bool, spellings: [ON, OFF], get: 'B?', set: 'B {value}'}\n"
    "  - {name: e, type: enum, values: {dc: 'VOLTage:DC', res: RESistance}, get: 'E?', set: 'E {value}'}\n"
    "  - {name: s, type: string, get: 'S?', set: 'S {value:q}', element: 1}\n"
    "  - {name: r, type: string, get: 'R?', set: 'R {value}'}\n"
    "methods:\n"
    "  - {name: l8, command: 'L?', returns: list}\n"
    "  - {name: li2, command: 'L?', returns: list, dtype: '<i2'}\n"
    "  - {name: lu1, command: 'L?', returns: list, dtype: 'u1'}\n"
    "  - {name: bf4, command: 'B?', returns: block, dtype: '<f4'}\n"
    "  - {name: bi2, command: 'B?', returns: block, dtype: '>i2'}\n"
    "  - {name: bf8, command: 'B?', returns: block, dtype: '>f8'}\n"
    "  - {name: bu1, command: 'B?', returns: block, dtype: 'u1'}\n";

/* Every refusal must say why. */
static void expect(int rc, const char *err)
{
    if (rc != 0 && rc != LMQ_EMEM && !err[0])
        abort();
}

static void replies(const lmq__scpi_desc_t *d, const char *text, size_t len)
{
    char err[300];
    for (size_t i = 0; i < d->n_props; i++) {
        lmq_value_t v = {0};
        bool nd;
        err[0] = '\0';
        int rc = lmq__scpi_parse(&d->props[i].reply, text, len, &v, &nd, err, sizeof err);
        if (rc != 0 && rc != LMQ_EPROTO && rc != LMQ_EMEM)
            abort();
        expect(rc, err);
        /* what parses must format again */
        if (rc == 0 && !nd && d->props[i].command.text) {
            char out[LMQ__SCPI_MAX_CMD];
            err[0] = '\0';
            expect(lmq__scpi_format(&d->props[i].command, d->props[i].args, &v, 1, out, sizeof out, err, sizeof err),
                   err);
        }
        lmq_value_clear(&v);
    }
    for (size_t i = 0; i < d->n_methods; i++) {
        lmq_value_t v = {0};
        bool nd;
        err[0] = '\0';
        if (d->methods[i].reply.kind == LMQ__SCPI_R_NONE)
            continue;
        int rc = d->methods[i].reply.kind == LMQ__SCPI_R_BLOCK
                     ? lmq__scpi_parse_block(&d->methods[i].reply, text, len, &v, err, sizeof err)
                     : lmq__scpi_parse(&d->methods[i].reply, text, len, &v, &nd, err, sizeof err);
        if (rc != 0 && rc != LMQ_EPROTO && rc != LMQ_EMEM)
            abort();
        expect(rc, err);
        if (rc == 0 && v.type == LMQ_ARRAY && v.u.a.nbytes != v.u.a.shape[0] * lmq_dtype_size(v.u.a.dtype))
            abort();
        lmq_value_clear(&v);
    }
    char esc[64];
    lmq__scpi_escape(text, len, esc, sizeof esc);
    if (strlen(esc) >= sizeof esc)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    const char *text = (const char *)data + 1;
    size_t len = size - 1;
    char err[700] = "";
    if (data[0] % 2 == 0) {
        lmq__scpi_desc_t *d = lmq__scpi_desc_parse(fixed, sizeof fixed - 1, "fixed", err, sizeof err);
        if (!d)
            abort(); /* the fixed description is valid */
        replies(d, text, len);
        lmq__scpi_desc_free(&d);
        return 0;
    }
    lmq__scpi_desc_t *d = lmq__scpi_desc_parse(text, len, "fuzz.yaml", err, sizeof err);
    if (!d) {
        if (!err[0])
            abort();
        return 0;
    }
    /* A description that loads has templates that format. */
    lmq_value_t vals[16];
    for (size_t i = 0; i < d->n_methods; i++) {
        const lmq__scpi_cmd_t *c = &d->methods[i];
        if (c->n_args > 16)
            continue;
        for (size_t k = 0; k < c->n_args; k++) {
            lmq__scpi_vtype_t t = c->args[k].type;
            vals[k] = t == LMQ__SCPI_FLOAT ? lmq_float(1.5) : t == LMQ__SCPI_INT ? lmq_int(-3) : lmq_bool(true);
            if (t == LMQ__SCPI_ENUM || t == LMQ__SCPI_STRING) {
                vals[k] = (lmq_value_t){0};
                lmq_value_set_string(&vals[k], t == LMQ__SCPI_ENUM ? c->args[k].choices[0].name : "x\"y");
            }
        }
        char out[LMQ__SCPI_MAX_CMD];
        err[0] = '\0';
        expect(lmq__scpi_format(&c->command, c->args, vals, c->n_args, out, sizeof out, err, sizeof err), err);
        for (size_t k = 0; k < c->n_args; k++)
            lmq_value_clear(&vals[k]);
    }
    replies(d, "1,2,3", 5);
    lmq__scpi_desc_free(&d);
    return 0;
}
