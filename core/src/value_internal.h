/* Internal helpers shared by the codec and the device model. */
#ifndef LMQ_VALUE_INTERNAL_H
#define LMQ_VALUE_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include "labmq/value.h"

bool lmq__utf8_valid(const char *s, size_t len);
/* nbytes of an array of that dtype and shape; LMQ_EARG on bad dtype/ndim or overflow. */
int lmq__array_nbytes(lmq_dtype_t dtype, unsigned ndim, const size_t *shape, size_t *nbytes);

#endif
