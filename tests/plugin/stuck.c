/* A test driver loaded by labmqd from a shared object: its `slow` property
 * blocks for 60 s in a plain system call, as vendor code does, and its open
 * blocks for `open_ms`. labmqd must name it and exit (status 3) once the stop
 * grace period is over, and must not wait for its open at start-up. */
#include <time.h>
#include <labmq/labmq.h>

static void block_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0)
        ;
}

static int open_stuck(lmq_dev_t *dev, void **state)
{
    block_ms((long)lmq_dev_opt_int(dev, "open_ms"));
    *state = NULL;
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
    {.name = NULL},
};

static const lmq_driver_t stuck_driver = {
    .name = "stuck", .description = "blocks in plain system calls", .options = options, .open = open_stuck,
    .properties = properties};

LMQ_DRIVER_EXPORT(stuck_driver)
