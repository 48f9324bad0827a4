/* labmq — the declarative scpi driver (internal): referenced by the built-in
 * driver registry. */
#ifndef LABMQ_SCPI_H
#define LABMQ_SCPI_H

#include "labmq/driver.h"

extern const lmq_driver_t lmq__scpi_driver;

#endif
