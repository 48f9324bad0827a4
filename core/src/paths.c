/* labmq — default endpoints.
 *
 * The default ipc:// sockets live in a per-user directory that nobody else can
 * enter: whoever can reach a control socket can drive the instruments. An
 * existing directory is therefore checked (with lstat, so a planted symlink to
 * somebody else's directory is refused rather than followed) before we put a
 * socket into it. */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/un.h>
#include <unistd.h>
#include "labmq/daemon.h"
#include "labmq/status.h"

/* The socket path ZeroMQ binds must fit sockaddr_un.sun_path with its NUL. */
#define SUN_PATH_MAX (sizeof(((struct sockaddr_un *)NULL)->sun_path) - 1)

/* On failure errno says why (EACCES, ENOENT from mkdir; EPERM for a directory
 * that is not ours or is open to others; ENOTDIR; ENAMETOOLONG), so a program
 * can tell its user what to fix. */
int lmq_default_endpoint(char *buf, size_t size, const char *which, bool create)
{
    if (!buf || size == 0 || !which || (strcmp(which, "control") != 0 && strcmp(which, "data") != 0)) {
        errno = EINVAL;
        return LMQ_EARG;
    }
    buf[0] = '\0';
    char dir[4096];
    const char *xdg = getenv("XDG_RUNTIME_DIR");
    int n;
    /* A relative XDG_RUNTIME_DIR is invalid per the XDG spec; ignore it as
     * the spec asks rather than bind relative to the current directory. */
    if (xdg && xdg[0] == '/')
        n = snprintf(dir, sizeof dir, "%s/labmq", xdg);
    else
        n = snprintf(dir, sizeof dir, "/tmp/labmq-%lu", (unsigned long)getuid());
    if (n < 0 || (size_t)n >= sizeof dir || (size_t)n + 1 + strlen(which) > SUN_PATH_MAX) {
        errno = ENAMETOOLONG;
        return LMQ_ECONFIG;
    }
    if (create) {
        if (mkdir(dir, 0700) != 0 && errno != EEXIST)
            return LMQ_ECONFIG;
        struct stat st;
        if (lstat(dir, &st) != 0)
            return LMQ_ECONFIG;
        if (!S_ISDIR(st.st_mode)) {
            errno = ENOTDIR;
            return LMQ_ECONFIG;
        }
        if (st.st_uid != geteuid() || (st.st_mode & 077) != 0) {
            errno = EPERM;
            return LMQ_ECONFIG;
        }
    }
    n = snprintf(buf, size, "ipc://%s/%s", dir, which);
    if (n < 0 || (size_t)n >= size) {
        buf[0] = '\0';
        errno = ENOBUFS;
        return LMQ_EARG;
    }
    return 0;
}
