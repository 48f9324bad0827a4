/* A test driver that says it was built for an older driver ABI (PLUGIN_ABI,
 * set by the build): lmq_driver_load must refuse it. */
#include <labmq/labmq.h>

static const lmq_driver_t old_driver = {
    .name = "old-abi",
    .description = "a driver built for an older ABI",
};

__attribute__((visibility("default"))) int lmq_driver_abi(void);
__attribute__((visibility("default"))) const lmq_driver_t *lmq_driver_entry(void);
int lmq_driver_abi(void) { return PLUGIN_ABI; }
const lmq_driver_t *lmq_driver_entry(void) { return &old_driver; }
