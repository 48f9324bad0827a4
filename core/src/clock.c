/* Clocks: CLOCK_MONOTONIC for intervals and deadlines, CLOCK_REALTIME for
 * the acquisition times (t_ns) streams carry. */
#include <time.h>
#include "labmq/driver.h"

static int64_t clock_ns(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int64_t lmq_clock_mono_ns(void) { return clock_ns(CLOCK_MONOTONIC); }
int64_t lmq_clock_real_ns(void) { return clock_ns(CLOCK_REALTIME); }
