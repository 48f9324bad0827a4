/* labmq-pool-centroid — a pool worker (labmq/pool.h) that reduces a uint16
 * frame to its centroid.
 *
 * Task:   u32 height, u32 width, then height*width u16 pixels, row-major,
 *         all little-endian.
 * Result: f64 x, f64 y (intensity-weighted mean column and row, 0-based;
 *         NaN for an all-zero frame), u64 total (the sum of the pixels);
 *         24 bytes, little-endian.
 * A task of the wrong size fails with a message naming both sizes. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "labmq/pool.h"

static uint32_t le32(const unsigned char *b)
{
    return (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
}

static int fail(void **result, size_t *rlen, const char *text)
{
    *result = strdup(text);
    *rlen = *result ? strlen(text) : 0;
    return 1;
}

static int centroid(void *user, const void *task, size_t len, void **result, size_t *rlen)
{
    (void)user;
    const unsigned char *b = task; /* not necessarily aligned: read bytes */
    char why[160];
    if (len < 8) {
        snprintf(why, sizeof why, "a centroid task is at least 8 bytes (height, width), not %zu", len);
        return fail(result, rlen, why);
    }
    uint32_t h = le32(b), w = le32(b + 4);
    uint64_t need = 8 + (uint64_t)h * w * 2;
    if (need != len) {
        snprintf(why, sizeof why, "a %ux%u frame task is %llu bytes, not %zu", (unsigned)h, (unsigned)w,
                 (unsigned long long)need, len);
        return fail(result, rlen, why);
    }
    const unsigned char *px = b + 8;
    uint64_t total = 0;
    double sx = 0, sy = 0;
    for (uint32_t y = 0; y < h; y++) {
        uint64_t row = 0, rowx = 0;
        for (uint32_t x = 0; x < w; x++, px += 2) {
            unsigned v = (unsigned)px[0] | (unsigned)px[1] << 8;
            row += v;
            rowx += (uint64_t)v * x;
        }
        total += row;
        sx += (double)rowx;
        sy += (double)row * y;
    }
    double out_x = total ? sx / (double)total : NAN, out_y = total ? sy / (double)total : NAN;
    unsigned char *r = malloc(24);
    if (!r)
        return fail(result, rlen, "out of memory");
    memcpy(r, &out_x, 8);
    memcpy(r + 8, &out_y, 8);
    memcpy(r + 16, &total, 8);
    *result = r;
    *rlen = 24;
    return 0;
}

int main(int argc, char **argv) { return lmq_pool_worker_run(argc, argv, centroid, NULL); }
