/* The drivers compiled into liblabmq. A new driver adds itself here. */
#include <string.h>
#include "labmq/driver.h"
#include "scpi/scpi.h"
#include "sim/sim.h"

static const lmq_driver_t *const builtin[] = {&lmq__sim_psu, &lmq__sim_daq, &lmq__sim_camera, &lmq__scpi_driver, NULL};

const lmq_driver_t *const *lmq_driver_list(void) { return builtin; }

const lmq_driver_t *lmq_driver_find(const char *name)
{
    for (size_t i = 0; name && builtin[i]; i++)
        if (strcmp(builtin[i]->name, name) == 0)
            return builtin[i];
    return NULL;
}
