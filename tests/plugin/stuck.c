/* A test driver loaded by labmqd from a shared object: its `slow` property
 * blocks for 60 s in a plain system call, as vendor code does, and its open
 * blocks for `open_ms`. labmqd must name it and exit (status 3) once the stop
 * grace period is over, and must not wait for its open at start-up. Its
 * `blocked` property blocks for `block_ms` (settable) the same way: a hang
 * that ends, and that wakes nothing meanwhile (test_load). */
#include <stdlib.h>
#include <time.h>
#include <labmq/labmq.h>

static void block_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0)
        ;
}

typedef struct stuck {
    long block_ms;
} stuck_t;

static int open_stuck(lmq_dev_t *dev, void **state)
{
    block_ms((long)lmq_dev_opt_int(dev, "open_ms"));
    stuck_t *s = calloc(1, sizeof *s);
    *state = s;
    return s ? 0 : LMQ_EMEM;
}

static void close_stuck(lmq_dev_t *dev, void *state)
{
    (void)dev;
    free(state);
}

static int get_block_ms(lmq_dev_t *dev, void *state, lmq_value_t *out)
{
    (void)dev;
    *out = lmq_int(((stuck_t *)state)->block_ms);
    return 0;
}

static int set_block_ms(lmq_dev_t *dev, void *state, const lmq_value_t *v)
{
    (void)dev;
    ((stuck_t *)state)->block_ms = (long)v->u.i;
    return 0;
}

static int get_blocked(lmq_dev_t *dev, void *state, lmq_value_t *out)
{
    (void)dev;
    block_ms(((stuck_t *)state)->block_ms);
    *out = lmq_int(3);
    return 0;
}

static int get_slow(lmq_dev_t *dev, void *state, lmq_value_t *out)
{
    (void)dev;
    (void)state;
    block_ms(60000);
    *out = lmq_int(1);
    return 0;
}

static int get_fast(lmq_dev_t *dev, void *state, lmq_value_t *out)
{
    (void)dev;
    (void)state;
    *out = lmq_int(2);
    return 0;
}

static const lmq_option_t options[] = {
    {.name = "open_ms", .type = LMQ_INT, .def = "0", .doc = "how long open() blocks"},
    {.name = NULL},
};

static const lmq_property_t properties[] = {
    {.name = "slow", .doc = "blocks 60 s", .type = LMQ_INT, .unit = "", .get = get_slow},
    {.name = "fast", .doc = "answers at once", .type = LMQ_INT, .unit = "", .get = get_fast},
    {.name = "block_ms", .doc = "how long a get of blocked blocks", .type = LMQ_INT, .unit = "ms", .limited = true,
     .min = 0, .max = 60000, .get = get_block_ms, .set = set_block_ms},
    {.name = "blocked", .doc = "blocks block_ms", .type = LMQ_INT, .unit = "", .get = get_blocked},
    {.name = NULL},
};

static const lmq_driver_t stuck_driver = {
    .name = "stuck", .description = "blocks in plain system calls", .options = options, .open = open_stuck,
    .close = close_stuck, .properties = properties};

LMQ_DRIVER_EXPORT(stuck_driver)
