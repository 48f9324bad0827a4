/* Out-of-tree drivers: shared objects that export their lmq_driver_t, loaded
 * by path (dlopen). A loaded driver stays loaded for the life of the
 * process: devices, their tables and their threads point into it, and a
 * daemon may outlive the configuration that named it. */
#include <dlfcn.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include "labmq/driver.h"
#include "labmq/status.h"

typedef int (*abi_fn)(void);
typedef const lmq_driver_t *(*entry_fn)(void);

const lmq_driver_t *lmq_driver_load(const char *path, char *err, size_t errlen)
{
    char dummy[1];
    if (!err)
        err = dummy, errlen = sizeof dummy;
    if (!path || !*path) {
        snprintf(err, errlen, "no driver path");
        return NULL;
    }
    struct stat st;
    if (stat(path, &st) != 0) {
        snprintf(err, errlen, "driver %s: no such file", path);
        return NULL;
    }
    /* RTLD_NOW: a missing symbol is an error here, not a crash later on a
     * device thread. RTLD_LOCAL: drivers never see each other's symbols. */
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        const char *why = dlerror();
        snprintf(err, errlen, "driver %s: cannot load: %s", path, why ? why : "unknown error");
        return NULL;
    }
    /* dlsym returns void *; POSIX guarantees it converts to a function pointer. */
    abi_fn abi;
    entry_fn entry;
    *(void **)&abi = dlsym(h, LMQ_DRIVER_ABI_SYMBOL);
    *(void **)&entry = dlsym(h, LMQ_DRIVER_ENTRY);
    const lmq_driver_t *drv = NULL;
    if (!abi || !entry)
        snprintf(err, errlen, "driver %s: not a labmq driver (it exports no %s/%s; use LMQ_DRIVER_EXPORT)", path,
                 LMQ_DRIVER_ABI_SYMBOL, LMQ_DRIVER_ENTRY);
    else if (abi() != LMQ_DRIVER_ABI)
        /* An older struct is shorter than ours: reading its new members
         * would read past it. */
        snprintf(err, errlen, "driver %s: built for driver ABI %d, this labmq speaks %d%s: rebuild it", path, abi(),
                 LMQ_DRIVER_ABI, abi() < 3 ? " (ABI 3 added safe_state to lmq_driver_t)" : "");
    else if (!(drv = entry()) || !drv->name || !*drv->name)
        snprintf(err, errlen, "driver %s: its entry point returned no driver or a driver without a name", path);
    if (drv && (!abi || abi() != LMQ_DRIVER_ABI))
        drv = NULL;
    if (!drv)
        dlclose(h);
    return drv;
}
