/* The scpi driver's pure parts (drivers/scpi/template.c): command templates,
 * reply parsing (numbers, lists, elements, bools, enums, strings, IEEE 488.2
 * blocks of every dtype and byte order), garbage that must fail cleanly, and
 * the description's validation messages. */
#include <check.h>
#include "harness.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "labmq/labmq.h"
#include "scpi/template.h"

static const char desc_yaml[] =
    "instrument: test\n"
    "properties:\n"
    "  - {name: voltage, type: float, unit: V, min: 0, max: 32, get: ':SOUR1:VOLT?', set: ':SOUR1:VOLT {value:.3f}'}\n"
    "  - {name: output, type: bool, spellings: [ON, OFF], get: ':OUTP? CH1', set: ':OUTP CH1,{value}'}\n"
    "  - {name: beep, type: bool, get: 'SYST:BEEP?', set: 'SYST:BEEP {value}'}\n"
    "  - name: func\n"
    "    type: enum\n"
    "    values: {dc: 'VOLTage:DC', ac: 'VOLTage:AC', res: RESistance}\n"
    "    get: 'FUNC?'\n"
    "    set: 'FUNC \"{value}\"'\n"
    "  - {name: count, type: int, get: 'SAMP:COUN?', set: 'SAMP:COUN {value}', element: 1}\n"
    "  - {name: plain, type: float, get: 'P?', set: 'P {value}'}\n"
    "methods:\n"
    "  - {name: text, args: [{name: msg, type: string}], command: 'DISP:TEXT {msg:q}'}\n"
    "  - {name: raw, args: [{name: word, type: string}], command: 'SYST:{word} {{x}}'}\n"
    "  - name: sweep\n"
    "    args: [{name: start, type: float, unit: V}, {name: n, type: int, min: 1, max: 100}]\n"
    "    command: 'SWE {start:+08.2e},{n:04d}'\n"
    "    returns: list\n"
    "  - {name: wave, command: 'WAV:DATA?', returns: block, dtype: '>i2'}\n"
    "  - {name: err, command: 'SYST:ERR?', returns: string, element: 1}\n";

static lmq__scpi_desc_t *load(void)
{
    char err[512] = "";
    lmq__scpi_desc_t *d = lmq__scpi_desc_parse(desc_yaml, strlen(desc_yaml), "t.yaml", err, sizeof err);
    ck_assert_msg(d != NULL, "%s", err);
    return d;
}

static const lmq__scpi_cmd_t *prop(const lmq__scpi_desc_t *d, const char *name)
{
    for (size_t i = 0; i < d->n_props; i++)
        if (strcmp(d->props[i].name, name) == 0)
            return &d->props[i];
    ck_abort_msg("no property %s", name);
    return NULL;
}

static const lmq__scpi_cmd_t *meth(const lmq__scpi_desc_t *d, const char *name)
{
    for (size_t i = 0; i < d->n_methods; i++)
        if (strcmp(d->methods[i].name, name) == 0)
            return &d->methods[i];
    ck_abort_msg("no method %s", name);
    return NULL;
}

/* Formats one value into a property's set: template. */
static int fmt1(const lmq__scpi_cmd_t *c, lmq_value_t v, char *out, size_t size, char *err)
{
    err[0] = '\0';
    return lmq__scpi_format(&c->command, c->args, &v, 1, out, size, err, 256);
}

START_TEST(format_numbers_bools_enums)
{
    lmq__scpi_desc_t *d = load();
    char out[128], err[256];
    ck_assert_int_eq(fmt1(prop(d, "voltage"), lmq_float(1.5), out, sizeof out, err), 0);
    ck_assert_str_eq(out, ":SOUR1:VOLT 1.500");
    ck_assert_int_eq(fmt1(prop(d, "voltage"), lmq_int(2), out, sizeof out, err), 0); /* ints pass for floats */
    ck_assert_str_eq(out, ":SOUR1:VOLT 2.000");
    ck_assert_int_eq(fmt1(prop(d, "voltage"), lmq_float(NAN), out, sizeof out, err), LMQ_EARG);
    ck_assert_int_eq(fmt1(prop(d, "plain"), lmq_float(0.1), out, sizeof out, err),
                     0); /* %.12g: no 0.1000000000000000055 */
    ck_assert_str_eq(out, "P 0.1");
    ck_assert_int_eq(fmt1(prop(d, "plain"), lmq_float(1.25e-7), out, sizeof out, err), 0);
    ck_assert_str_eq(out, "P 1.25e-07");
    ck_assert_int_eq(fmt1(prop(d, "count"), lmq_int(-42), out, sizeof out, err), 0);
    ck_assert_str_eq(out, "SAMP:COUN -42");
    ck_assert_int_eq(fmt1(prop(d, "output"), lmq_bool(true), out, sizeof out, err), 0);
    ck_assert_str_eq(out, ":OUTP CH1,ON");
    ck_assert_int_eq(fmt1(prop(d, "output"), lmq_bool(false), out, sizeof out, err), 0);
    ck_assert_str_eq(out, ":OUTP CH1,OFF");
    ck_assert_int_eq(fmt1(prop(d, "beep"), lmq_bool(true), out, sizeof out, err), 0); /* default spellings 1/0 */
    ck_assert_str_eq(out, "SYST:BEEP 1");
    lmq_value_t s = {0};
    lmq_value_set_string(&s, "ac");
    ck_assert_int_eq(fmt1(prop(d, "func"), s, out, sizeof out, err), 0);
    ck_assert_str_eq(out, "FUNC \"VOLTage:AC\"");
    lmq_value_set_string(&s, "AC"); /* names are exact; spellings are the instrument's business */
    ck_assert_int_eq(fmt1(prop(d, "func"), s, out, sizeof out, err), LMQ_EARG);
    ck_assert_msg(strstr(err, "'AC' is not one of: dc, ac, res"), "%s", err);
    lmq_value_clear(&s);
    /* too small an output buffer: refused, never cut */
    ck_assert_int_eq(fmt1(prop(d, "voltage"), lmq_float(1.5), out, 10, err), LMQ_EARG);
    ck_assert_msg(strstr(err, "longer than 9 bytes"), "%s", err);

    const lmq__scpi_cmd_t *sw = meth(d, "sweep");
    lmq_value_t args[2] = {lmq_float(1.5), lmq_int(7)};
    ck_assert_int_eq(lmq__scpi_format(&sw->command, sw->args, args, 2, out, sizeof out, err, sizeof err), 0);
    ck_assert_str_eq(out, "SWE +1.50e+00,0007");
    args[1] = lmq_float(2.5); /* not whole: refused for %d */
    ck_assert_int_eq(lmq__scpi_format(&sw->command, sw->args, args, 2, out, sizeof out, err, sizeof err), LMQ_EARG);
    lmq__scpi_desc_free(&d);
    ck_assert_ptr_null(d);
    lmq__scpi_desc_free(&d); /* accepts NULL */
}
END_TEST

START_TEST(format_strings_escaped)
{
    lmq__scpi_desc_t *d = load();
    char out[128], err[256];
    const lmq__scpi_cmd_t *text = meth(d, "text"), *raw = meth(d, "raw");
    lmq_value_t v = {0};
    lmq_value_set_string(&v, "say \"hi\"; ok");
    ck_assert_int_eq(lmq__scpi_format(&text->command, text->args, &v, 1, out, sizeof out, err, sizeof err), 0);
    ck_assert_str_eq(out, "DISP:TEXT \"say \"\"hi\"\"; ok\"");
    /* unquoted, ';' would start a second command */
    ck_assert_int_eq(lmq__scpi_format(&raw->command, raw->args, &v, 1, out, sizeof out, err, sizeof err), LMQ_EARG);
    ck_assert_msg(strstr(err, "';'") && strstr(err, "{word:q}"), "%s", err);
    lmq_value_set_string(&v, "BEEP");
    ck_assert_int_eq(lmq__scpi_format(&raw->command, raw->args, &v, 1, out, sizeof out, err, sizeof err), 0);
    ck_assert_str_eq(out, "SYST:BEEP {x}"); /* {{ }} are literal braces */
    lmq_value_set_string(&v, "two\nlines"); /* a terminator inside: refused, quoted or not */
    ck_assert_int_eq(lmq__scpi_format(&text->command, text->args, &v, 1, out, sizeof out, err, sizeof err), LMQ_EARG);
    ck_assert_msg(strstr(err, "control character (\\x0a)"), "%s", err);
    lmq_value_clear(&v);

    char esc[64];
    ck_assert_str_eq(lmq__scpi_escape("a\"b\\\n\r\t\x01\xff", 9, esc, sizeof esc), "a\\\"b\\\\\\n\\r\\t\\x01\\xff");
    ck_assert_str_eq(lmq__scpi_escape("0123456789abcdef", 16, esc, 10), "012345...");
    lmq__scpi_desc_free(&d);
}
END_TEST

static int parse_str(const lmq__scpi_reply_t *r, const char *text, lmq_value_t *v, bool *nodata)
{
    char err[256];
    lmq_value_clear(v);
    return lmq__scpi_parse(r, text, strlen(text), v, nodata, err, sizeof err);
}

START_TEST(parse_numbers)
{
    lmq__scpi_reply_t r = {.kind = LMQ__SCPI_R_VALUE, .value = {.type = LMQ__SCPI_FLOAT}, .element = -1};
    lmq_value_t v = {0};
    bool nd = true;
    static const struct {
        const char *text;
        double want;
    } good[] = {{"1", 1},
                {"+1", 1},
                {"-15", -15},
                {"1.5", 1.5},
                {"-.5", -0.5},
                {"3.", 3},
                {"+1.50000000E+00", 1.5},
                {"1.234e-03", 1.234e-3},
                {"  2.5E2 \r", 250},
                {"1E+0", 1}};
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        ck_assert_msg(parse_str(&r, good[i].text, &v, &nd) == 0, "%s", good[i].text);
        ck_assert_int_eq(v.type, LMQ_FLOAT);
        ck_assert_double_eq_tol(v.u.f, good[i].want, 1e-12);
        ck_assert(!nd);
    }
    static const char *const bad[] = {"",    " ", "0x10", "inf", "nan", "1.5V",  "1e",
                                      "--1", "+", ".",    "1,2", "1 2", "1E999", "\"1\""};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        ck_assert_msg(parse_str(&r, bad[i], &v, &nd) == LMQ_EPROTO, "'%s' parsed", bad[i]);
    /* SCPI's overflow / not-a-number marker: no reading, not a number */
    ck_assert_int_eq(parse_str(&r, "+9.91E+37", &v, &nd), 0);
    ck_assert(nd);
    ck_assert_int_eq(v.type, LMQ_NONE);
    ck_assert_int_eq(parse_str(&r, "-9.9E+37", &v, &nd), 0);
    ck_assert(nd);

    r.value.type = LMQ__SCPI_INT;
    ck_assert_int_eq(parse_str(&r, "+1.00000000E+01", &v, &nd), 0);
    ck_assert(v.type == LMQ_INT && v.u.i == 10);
    ck_assert_int_eq(parse_str(&r, "-7", &v, &nd), 0);
    ck_assert(v.u.i == -7);
    ck_assert_int_eq(parse_str(&r, "1.5", &v, &nd), LMQ_EPROTO);
    ck_assert_int_eq(parse_str(&r, "1E30", &v, &nd), LMQ_EPROTO);
}
END_TEST

START_TEST(parse_elements_bools_enums_strings)
{
    lmq__scpi_desc_t *d = load();
    lmq_value_t v = {0};
    bool nd;
    char err[256];
    const lmq__scpi_cmd_t *count = prop(d, "count");
    ck_assert_int_eq(parse_str(&count->reply, "a, 5 ,c", &v, &nd), 0);
    ck_assert(v.type == LMQ_INT && v.u.i == 5);
    ck_assert_int_eq(lmq__scpi_parse(&count->reply, "7", 1, &v, &nd, err, sizeof err), LMQ_EPROTO);
    ck_assert_msg(strstr(err, "1 element, element 1 wanted"), "%s", err);
    /* a comma inside a quoted string does not split the list */
    const lmq__scpi_cmd_t *e = meth(d, "err");
    ck_assert_int_eq(parse_str(&e->reply, "-113,\"Undefined, header\"", &v, &nd), 0);
    ck_assert_str_eq(v.u.s, "Undefined, header");

    const lmq__scpi_cmd_t *out = prop(d, "output"), *beep = prop(d, "beep");
    static const struct {
        const char *text;
        bool want;
    } bools[] = {{"1", true}, {"0", false}, {"ON", true}, {"off", false}, {"+1.0E+00", true}, {" 0\r", false}};
    for (size_t i = 0; i < sizeof bools / sizeof bools[0]; i++) {
        ck_assert_msg(parse_str(&beep->reply, bools[i].text, &v, &nd) == 0, "%s", bools[i].text);
        ck_assert(v.type == LMQ_BOOL && v.u.b == bools[i].want);
    }
    ck_assert_int_eq(parse_str(&out->reply, "on", &v, &nd), 0);
    ck_assert(v.u.b);
    ck_assert_int_eq(parse_str(&beep->reply, "2", &v, &nd), LMQ_EPROTO);
    ck_assert_int_eq(parse_str(&beep->reply, "YES", &v, &nd), LMQ_EPROTO);

    const lmq__scpi_cmd_t *func = prop(d, "func");
    static const struct {
        const char *text, *want;
    } enums[] = {
        {"VOLT:AC", "ac"}, {"\"VOLT:AC\"", "ac"}, {"voltage:dc", "dc"}, {"RES", "res"}, {"\"RESISTANCE\"", "res"}};
    for (size_t i = 0; i < sizeof enums / sizeof enums[0]; i++) {
        ck_assert_msg(parse_str(&func->reply, enums[i].text, &v, &nd) == 0, "%s", enums[i].text);
        ck_assert_str_eq(v.u.s, enums[i].want);
    }
    ck_assert_int_eq(parse_str(&func->reply, "CURR", &v, &nd), LMQ_EPROTO);
    ck_assert_int_eq(parse_str(&func->reply, "VOLT", &v, &nd), LMQ_EPROTO);

    lmq__scpi_reply_t sr = {.kind = LMQ__SCPI_R_VALUE, .value = {.type = LMQ__SCPI_STRING}, .element = -1};
    ck_assert_int_eq(parse_str(&sr, "\"He said \"\"hi\"\"\"", &v, &nd), 0);
    ck_assert_str_eq(v.u.s, "He said \"hi\"");
    ck_assert_int_eq(parse_str(&sr, "RIGOL TECHNOLOGIES,DP832,DP8A1,00.01.14", &v, &nd), 0);
    ck_assert_str_eq(v.u.s, "RIGOL TECHNOLOGIES,DP832,DP8A1,00.01.14");
    ck_assert_int_eq(parse_str(&sr, "\xff\xfe", &v, &nd), LMQ_EPROTO); /* not UTF-8 */
    lmq_value_clear(&v);
    lmq__scpi_desc_free(&d);
}
END_TEST

START_TEST(parse_lists)
{
    lmq__scpi_reply_t r = {.kind = LMQ__SCPI_R_LIST, .dtype = LMQ_F64};
    lmq_value_t v = {0};
    bool nd;
    ck_assert_int_eq(parse_str(&r, "1,2.5,-3E2", &v, &nd), 0);
    ck_assert(v.type == LMQ_ARRAY && v.u.a.dtype == LMQ_F64 && v.u.a.ndim == 1 && v.u.a.shape[0] == 3);
    const double *f = v.u.a.data;
    ck_assert(f[0] == 1 && f[1] == 2.5 && f[2] == -300);
    ck_assert_int_eq(parse_str(&r, "1,+9.91E+37,2", &v, &nd), 0); /* no data inside an array: NaN */
    f = v.u.a.data;
    ck_assert(f[0] == 1 && isnan(f[1]) && f[2] == 2);
    ck_assert_int_eq(parse_str(&r, "  ", &v, &nd), 0);
    ck_assert(v.type == LMQ_ARRAY && v.u.a.shape[0] == 0);
    ck_assert_int_eq(parse_str(&r, "1,,2", &v, &nd), LMQ_EPROTO);
    ck_assert_int_eq(parse_str(&r, "1,2,", &v, &nd), LMQ_EPROTO);
    ck_assert_int_eq(parse_str(&r, "1;2", &v, &nd), LMQ_EPROTO);
    r.dtype = LMQ_F32;
    ck_assert_int_eq(parse_str(&r, "0.5,-1", &v, &nd), 0);
    const float *g = v.u.a.data;
    ck_assert(g[0] == 0.5f && g[1] == -1.0f && v.u.a.nbytes == 8);
    r.dtype = LMQ_I16;
    ck_assert_int_eq(parse_str(&r, "1,-2,+3.0E+02", &v, &nd), 0);
    const unsigned char *b = v.u.a.data; /* little-endian bytes */
    ck_assert(b[0] == 1 && b[1] == 0 && b[2] == 0xfe && b[3] == 0xff && b[4] == 0x2c && b[5] == 0x01);
    ck_assert_int_eq(parse_str(&r, "1,70000", &v, &nd), LMQ_EPROTO);
    ck_assert_int_eq(parse_str(&r, "1.5", &v, &nd), LMQ_EPROTO);
    ck_assert_int_eq(parse_str(&r, "9.91E+37", &v, &nd), LMQ_EPROTO);
    r.dtype = LMQ_U8;
    ck_assert_int_eq(parse_str(&r, "-1", &v, &nd), LMQ_EPROTO);
    lmq_value_clear(&v);
}
END_TEST

/* Every dtype in both byte orders: items of known bytes, checked against the
 * little-endian layout labmq arrays use. */
START_TEST(parse_blocks_every_dtype)
{
    static const lmq_dtype_t dts[] = {LMQ_U8,  LMQ_I8,  LMQ_U16, LMQ_I16, LMQ_U32,
                                      LMQ_I32, LMQ_U64, LMQ_I64, LMQ_F32, LMQ_F64};
    char err[256];
    for (size_t k = 0; k < sizeof dts / sizeof dts[0]; k++)
        for (int big = 0; big < 2; big++) {
            lmq__scpi_reply_t r = {.kind = LMQ__SCPI_R_BLOCK, .dtype = dts[k], .big_endian = big};
            size_t isz = lmq_dtype_size(dts[k]), n = 5 * isz;
            unsigned char buf[64];
            int h = snprintf((char *)buf, sizeof buf, "#2%02zu", n);
            for (size_t i = 0; i < n; i++)
                buf[h + i] = (unsigned char)(0x10 * (i / isz) + i % isz + 1);
            lmq_value_t v = {0};
            ck_assert_int_eq(lmq__scpi_parse_block(&r, buf, (size_t)h + n, &v, err, sizeof err), 0);
            ck_assert(v.type == LMQ_ARRAY && v.u.a.dtype == dts[k] && v.u.a.shape[0] == 5 && v.u.a.nbytes == n);
            const unsigned char *o = v.u.a.data;
            for (size_t i = 0; i < n; i++) {
                size_t item = i / isz, b = i % isz, src = big ? isz - 1 - b : b;
                ck_assert_msg(o[i] == buf[h + item * isz + src], "%s big=%d byte %zu", lmq_dtype_name(dts[k]), big, i);
            }
            lmq_value_clear(&v);
            /* one byte short of the declared length, and a partial element */
            ck_assert_int_eq(lmq__scpi_parse_block(&r, buf, (size_t)h + n - 1, &v, err, sizeof err), LMQ_EPROTO);
            if (isz > 1) {
                snprintf((char *)buf, sizeof buf, "#2%02zu", n - 1);
                ck_assert_int_eq(lmq__scpi_parse_block(&r, buf, (size_t)h + n - 1, &v, err, sizeof err), LMQ_EPROTO);
                ck_assert_msg(strstr(err, "not a whole number"), "%s", err);
            }
        }
}
END_TEST

START_TEST(parse_blocks_values_and_garbage)
{
    char err[256];
    lmq_value_t v = {0};
    /* >i2: 1, -2, 300 as a scope sends them (big-endian, IEEE 488.2's default) */
    lmq__scpi_reply_t r = {.kind = LMQ__SCPI_R_BLOCK, .dtype = LMQ_I16, .big_endian = true};
    static const unsigned char be[] = {'#', '1', '6', 0x00, 0x01, 0xff, 0xfe, 0x01, 0x2c};
    ck_assert_int_eq(lmq__scpi_parse_block(&r, be, sizeof be, &v, err, sizeof err), 0);
    const unsigned char *o = v.u.a.data;
    int16_t vals[3];
    for (int i = 0; i < 3; i++)
        vals[i] = (int16_t)(o[2 * i] | o[2 * i + 1] << 8);
    ck_assert(vals[0] == 1 && vals[1] == -2 && vals[2] == 300);
    /* <f4: 1.5, -2 as IEEE 754 bits */
    r = (lmq__scpi_reply_t){.kind = LMQ__SCPI_R_BLOCK, .dtype = LMQ_F32};
    static const unsigned char le[] = {'#', '2', '0', '8', 0x00, 0x00, 0xc0, 0x3f, 0x00, 0x00, 0x00, 0xc0};
    ck_assert_int_eq(lmq__scpi_parse_block(&r, le, sizeof le, &v, err, sizeof err), 0);
    float fl[2];
    memcpy(fl, v.u.a.data, sizeof fl); /* this test assumes a little-endian host for the float view */
    ck_assert(fl[0] == 1.5f && fl[1] == -2.0f);
    /* #0: indefinite, the data runs to the end */
    static const unsigned char ind[] = {'#', '0', 1, 2, 3, 4};
    ck_assert_int_eq(lmq__scpi_parse_block(&r, ind, sizeof ind, &v, err, sizeof err), 0);
    ck_assert_uint_eq(v.u.a.shape[0], 1);
    ck_assert_int_eq(lmq__scpi_parse_block(&r, "#000", 4, &v, err, sizeof err), LMQ_EPROTO); /* 2 bytes: half a <f4 */
    r.dtype = LMQ_U8;
    ck_assert_int_eq(lmq__scpi_parse_block(&r, "#10", 3, &v, err, sizeof err), 0); /* an empty block */
    ck_assert_uint_eq(v.u.a.shape[0], 0);
    static const struct {
        const char *bytes;
        const char *why;
    } garbage[] = {
        {"", "truncated block header"},
        {"#", "truncated block header"},
        {"#3", "truncated block header"},
        {"#30", "truncated block header"},
        {"1.5", "does not start with '#'"},
        {"#A12", "not followed by a digit"},
        {"#21xab", "digit 2 is not a digit"},
        {"#15abc", "truncated block: 3 of 5"},
        {"#13abcd", "1 bytes after a block of 3"},
        {"#9999999999", "exceeds the limit"},
    };
    for (size_t i = 0; i < sizeof garbage / sizeof garbage[0]; i++) {
        err[0] = '\0';
        ck_assert_int_eq(lmq__scpi_parse_block(&r, garbage[i].bytes, strlen(garbage[i].bytes), &v, err, sizeof err),
                         LMQ_EPROTO);
        ck_assert_msg(strstr(err, garbage[i].why), "'%s': %s", garbage[i].bytes, err);
    }
    size_t head, dlen;
    bool indef;
    ck_assert_int_eq(lmq__scpi_block_head("#3", 2, &head, &dlen, &indef, err, sizeof err), 1); /* needs more */
    ck_assert_int_eq(lmq__scpi_block_head("#3012", 5, &head, &dlen, &indef, err, sizeof err), 0);
    ck_assert(head == 5 && dlen == 12 && !indef);
    lmq_value_clear(&v);
}
END_TEST

/* Random bytes into every parser: a status, never a crash (ASan/UBSan watch). */
START_TEST(parse_random_bytes_never_crash)
{
    lmq__scpi_desc_t *d = load();
    uint64_t s = 0x9E3779B97F4A7C15ull;
    const lmq__scpi_reply_t *replies[] = {&prop(d, "voltage")->reply, &prop(d, "count")->reply,
                                          &prop(d, "output")->reply,  &prop(d, "func")->reply,
                                          &meth(d, "sweep")->reply,   &meth(d, "err")->reply};
    const lmq__scpi_reply_t *block = &meth(d, "wave")->reply;
    static const char alphabet[] = "0123456789+-.,eE #\"' \r\tONF";
    for (int it = 0; it < 20000; it++) {
        unsigned char buf[48];
        s ^= s << 13, s ^= s >> 7, s ^= s << 17;
        size_t n = (size_t)(s % sizeof buf);
        for (size_t i = 0; i < n; i++) {
            s ^= s << 13, s ^= s >> 7, s ^= s << 17;
            /* half of the runs from a number-ish alphabet, so deeper paths run too */
            buf[i] = it % 2 ? (unsigned char)(s >> 24) : (unsigned char)alphabet[(s >> 24) % (sizeof alphabet - 1)];
        }
        lmq_value_t v = {0};
        bool nd;
        char err[128];
        int rc = lmq__scpi_parse(replies[it % 6], (const char *)buf, n, &v, &nd, err, sizeof err);
        ck_assert(rc == 0 || rc == LMQ_EPROTO);
        lmq_value_clear(&v);
        rc = lmq__scpi_parse_block(block, buf, n, &v, err, sizeof err);
        ck_assert(rc == 0 || rc == LMQ_EPROTO);
        lmq_value_clear(&v);
    }
    lmq__scpi_desc_free(&d);
}
END_TEST

/* Each broken description fails with the file, the line and the entry. */
START_TEST(description_errors)
{
    static const struct {
        const char *yaml, *want;
    } cases[] = {
        {"", "empty description"},
        {"properties: [\n", "d.yaml:2:"},
        {"- a\n- b\n", "a description is a mapping"},
        {"instrument: x\n", "declares no properties and no methods"},
        {"bogus: 1\nproperties: []\n", "d.yaml:1: unknown key 'bogus'"},
        {"properties:\n  - name: v\n    type: float\n    get: V?\n    gett: x\n",
         "d.yaml:5: property 'v': unknown key 'gett'"},
        {"properties:\n  - name: v\n    type: float\n", "d.yaml:2: property 'v': a property needs get:"},
        {"properties:\n  - {name: v, type: double, get: V?}\n", "property 'v': type must be float, int, bool, enum"},
        {"properties:\n  - {type: float, get: V?}\n", "property 1: 'name' is required"},
        {"properties:\n  - {name: 1v, type: float, get: V?}\n", "property '1v': a name is"},
        {"properties:\n  - {name: v, type: float, get: V?}\n  - {name: v, type: int, get: I?}\n",
         "d.yaml:3: property 'v' is declared twice (first on line 2)"},
        {"properties:\n  - {name: v, type: float, get: V?, set: 'V {volt}'}\n", "set: {volt} names no argument"},
        {"properties:\n  - {name: v, type: float, get: 'V? {value}'}\n", "get: {value} names no value"},
        {"properties:\n  - {name: v, type: float, get: V?, set: 'V 1'}\n", "set: never uses {value}"},
        {"properties:\n  - {name: v, type: float, get: V?, set: 'V }'}\n", "a lone '}' at column 3"},
        {"properties:\n  - {name: v, type: float, get: V?, set: 'V {value'}\n", "'{' at column 3 is never closed"},
        {"properties:\n  - {name: v, type: float, get: V?, set: 'V {value:.3x}'}\n", "a format is [+][0][width]"},
        {"properties:\n  - {name: v, type: float, get: V?, set: 'V {value:d}'}\n", "a format is"},
        {"properties:\n  - {name: v, type: float, get: V?, set: 'V {value:q}'}\n", "quotes strings"},
        {"properties:\n  - {name: v, type: bool, get: V?, set: 'V {value:.2f}'}\n", "take no format"},
        {"properties:\n  - {name: v, type: float, get: \"V?\\x01\"}\n", "control character"},
        {"properties:\n  - {name: v, type: float, get: ''}\n", "an empty command"},
        {"properties:\n  - {name: v, type: enum, get: V?}\n", "an enum needs 'values'"},
        {"properties:\n  - {name: v, type: float, values: {a: A}, get: V?}\n", "values are for enum types"},
        {"properties:\n  - {name: v, type: float, min: 5, max: 1, get: V?}\n", "min 5 is above max 1"},
        {"properties:\n  - {name: v, type: float, min: low, get: V?}\n", "'min' must be a number, not 'low'"},
        {"properties:\n  - {name: v, type: bool, min: 0, get: V?}\n", "min and max are for float and int values"},
        {"properties:\n  - {name: v, type: bool, spellings: [ON], get: V?}\n", "spellings must be two words"},
        {"properties:\n  - {name: v, type: int, spellings: [ON, OFF], get: V?}\n", "spellings are for bool values"},
        {"properties:\n  - {name: v, type: float, get: V?, timeout_ms: -5}\n", "'timeout_ms' must be a whole number"},
        {"properties:\n  - {name: v, type: float, get: V?, get: W?}\n", "'get' is given twice"},
        {"properties:\n  - {name: v, type: float, get: V?, error_check: true}\n", "error_check needs"},
        {"methods:\n  - {name: m}\n", "method 'm': a method needs command:"},
        {"methods:\n  - {name: m, command: 'M?', returns: block}\n", "returns: block needs dtype"},
        {"methods:\n  - {name: m, command: 'M?', returns: block, dtype: f4}\n", "needs the block's byte order"},
        {"methods:\n  - {name: m, command: 'M?', returns: block, dtype: '<c8'}\n", "dtype '<c8' is not one of"},
        {"methods:\n  - {name: m, command: 'M?', returns: list, dtype: '>f8'}\n", "a comma list has no byte order"},
        {"methods:\n  - {name: m, command: 'M?', returns: list, element: 2}\n", "'element' is for methods returning"},
        {"methods:\n  - {name: m, command: 'M', dtype: '<f8'}\n", "dtype is for methods returning list or block"},
        {"methods:\n  - {name: m, command: 'M?', returns: table}\n", "returns must be none, float"},
        {"methods:\n  - {name: m, command: 'M {a}', args: [{name: a, type: float}, {name: a, type: int}]}\n",
         "method 'm', argument 'a': given twice"},
        {"methods:\n  - {name: m, command: 'M', args: [{name: a}]}\n", "argument 'a': 'type' is required"},
        {"methods:\n  - {name: m, command: 'M', args: {a: float}}\n", "args must be a list"},
        {"methods:\n  - {name: m, command: 'M', unit: V}\n", "this method returns none"},
        {"error_query: 'SYST:ERR?'\nmethods:\n  - {name: m, command: 'M?', returns: float, error_check: true}\n",
         "error_check is for commands that return nothing"},
        {"no_error: ['0']\nmethods:\n  - {name: m, command: M}\n", "means nothing without error_query"},
        {"terminators: {write: \"\\r\\n\\r\"}\nmethods:\n  - {name: m, command: M}\n", "a terminator is one or two"},
        {"terminators: {eol: \"\\n\"}\nmethods:\n  - {name: m, command: M}\n", "terminators: unknown key 'eol'"},
        {"idn: ''\nmethods:\n  - {name: m, command: M}\n", "an empty idn matches anything"},
        {"init: ['*CLS', '']\nmethods:\n  - {name: m, command: M}\n", "init: command 2 is empty"},
        {"error_check: true\nmethods:\n  - {name: m, command: M}\n", "error_check: needs error_query"},
        {"properties:\n  - {name: v, type: float, get: V?, restore: false}\n", "restore is for properties with set:"},
        {"properties:\n  - {name: v, type: float, get: V?, set: 'V {value}', restore: maybe}\n",
         "'restore' must be true or false"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char err[512] = "";
        lmq__scpi_desc_t *d = lmq__scpi_desc_parse(cases[i].yaml, strlen(cases[i].yaml), "d.yaml", err, sizeof err);
        ck_assert_msg(d == NULL, "case %zu loaded", i);
        ck_assert_msg(strstr(err, cases[i].want) && strncmp(err, "d.yaml", 6) == 0, "case %zu: '%s' lacks '%s'", i, err,
                      cases[i].want);
    }
    char err[512];
    ck_assert_ptr_null(lmq__scpi_desc_load("/nonexistent/dp832.yaml", err, sizeof err));
    ck_assert_msg(strstr(err, "/nonexistent/dp832.yaml: No such file"), "%s", err);
}
END_TEST

START_TEST(description_defaults_and_examples)
{
    char err[512] = "";
    static const char y[] = "error_query: 'SYST:ERR?'\n"
                            "methods:\n"
                            "  - {name: reset, command: '*RST'}\n"
                            "  - {name: quiet, command: 'Q', error_check: false}\n"
                            "  - {name: idn, command: '*IDN?', returns: string}\n";
    lmq__scpi_desc_t *d = lmq__scpi_desc_parse(y, sizeof y - 1, "d.yaml", err, sizeof err);
    ck_assert_msg(d, "%s", err);
    ck_assert_str_eq(d->write_term, "\n");
    ck_assert_str_eq(d->read_term, "\n");
    ck_assert_int_eq(d->clear_quiet_ms, 100);
    ck_assert(d->methods[0].error_check && !d->methods[1].error_check && !d->methods[2].error_check);
    ck_assert(lmq__scpi_no_error(d, "0,\"No error\""));
    ck_assert(lmq__scpi_no_error(d, "+0,\"No error\"\r"));
    ck_assert(!lmq__scpi_no_error(d, "-222,\"Data out of range\""));
    ck_assert(!lmq__scpi_no_error(d, "+01,\"x\""));
    lmq__scpi_desc_free(&d);
    static const char y2[] = "properties:\n"
                             "  - {name: a, type: float, get: A?, set: 'A {value}'}\n"
                             "  - {name: b, type: bool, get: B?, set: 'B {value}', restore: false}\n";
    d = lmq__scpi_desc_parse(y2, sizeof y2 - 1, "d.yaml", err, sizeof err);
    ck_assert_msg(d, "%s", err);
    ck_assert(!d->props[0].transient && d->props[1].transient);
    lmq__scpi_desc_free(&d);

    static const char *const examples[] = {"rigol-dp832.yaml", "keysight-34461a.yaml", "keithley-2400.yaml"};
    for (size_t i = 0; i < 3; i++) {
        char path[512];
        snprintf(path, sizeof path, "%s/examples/instruments/%s", LMQ_SOURCE_DIR, examples[i]);
        d = lmq__scpi_desc_load(path, err, sizeof err);
        ck_assert_msg(d != NULL, "%s", err);
        ck_assert(d->idn && d->error_query && d->n_props > 0);
        lmq__scpi_desc_free(&d);
    }
}
END_TEST

int main(void)
{
    Suite *s = suite_create("scpi_template");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, format_numbers_bools_enums);
    tcase_add_test(tc, format_strings_escaped);
    tcase_add_test(tc, parse_numbers);
    tcase_add_test(tc, parse_elements_bools_enums_strings);
    tcase_add_test(tc, parse_lists);
    tcase_add_test(tc, parse_blocks_every_dtype);
    tcase_add_test(tc, parse_blocks_values_and_garbage);
    tcase_add_test(tc, parse_random_bytes_never_crash);
    tcase_add_test(tc, description_errors);
    tcase_add_test(tc, description_defaults_and_examples);
    suite_add_tcase(s, tc);
    return th_run_suite(s);
}
