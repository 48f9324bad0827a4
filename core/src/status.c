/* Status codes: their wire names and texts for people. */
#include <string.h>
#include "labmq/status.h"

static const struct {
    int status;
    const char *name;
    const char *text;
} table[] = {
    {LMQ_OK, "OK", "success"},
    {LMQ_EARG, "ARG", "invalid argument"},
    {LMQ_EMEM, "MEM", "out of memory"},
    {LMQ_ETIMEOUT, "TIMEOUT", "timed out"},
    {LMQ_EIO, "IO", "instrument I/O failed"},
    {LMQ_EDEVICE, "DEVICE", "instrument error"},
    {LMQ_ECLOSED, "CLOSED", "closed or shutting down"},
    {LMQ_EPROTO, "PROTO", "protocol error"},
    {LMQ_ENOTFOUND, "NOTFOUND", "not found"},
    {LMQ_EUNREACH, "UNREACHABLE", "no daemon answers at the endpoint"},
    {LMQ_EBUSY, "BUSY", "endpoint already in use"},
    {LMQ_ECONFIG, "CONFIG", "invalid configuration"},
    {LMQ_ERANGE, "RANGE", "value out of range"},
    {LMQ_EREADONLY, "READONLY", "read-only"},
    {LMQ_EPERM, "PERMISSION", "permission denied"},
    {LMQ_ESYS, "SYSTEM", "system resource unavailable"},
    {LMQ_ELOCKED, "LOCKED", "locked by another client"},
    {LMQ_EOUTCOME, "OUTCOME_UNKNOWN", "outcome unknown: the reply was lost"},
};

#define NTABLE (sizeof table / sizeof table[0])

const char *lmq_strerror(int status)
{
    for (size_t i = 0; i < NTABLE; i++)
        if (table[i].status == status)
            return table[i].text;
    return "unknown error";
}

const char *lmq_status_name(int status)
{
    for (size_t i = 0; i < NTABLE; i++)
        if (table[i].status == status)
            return table[i].name;
    return "UNKNOWN";
}

int lmq_status_from_name(const char *name)
{
    if (name)
        for (size_t i = 0; i < NTABLE; i++)
            if (strcmp(table[i].name, name) == 0)
                return table[i].status;
    return LMQ_EPROTO;
}
