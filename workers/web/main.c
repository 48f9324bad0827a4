/* labmq-web — the lab in a browser: serves a page that shows every device
 * of a labmqd live (state, properties, methods, streams, stats) and drives
 * it. A client like any other (proxies and subscriptions), run by hand or as
 * a supervised worker (workers/README.md).
 *
 * main() reads its own options (--listen, --www, ...) and hands the rest to
 * the worker runtime (--control, --data, --name, --help), binds the HTTP
 * server, then runs the control and data threads (hub.c) beside the server
 * loop (server.c) until SIGTERM/SIGINT. */
#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>
#include "bridge.h"
#include "hub.h"
#include "labmq/labmq.h"
#include "server.h"

#define PROG "labmq-web"
#define DEFAULT_LISTEN "127.0.0.1:8080"
#define DEFAULT_MAX_RATE 30.0

static const char about[] =
    "labmq-web - the lab in a browser: devices, properties, methods, streams and stats of a\n"
    "labmqd, live, at http://127.0.0.1:8080/ (no authentication: loopback only by default).\n"
    "\n"
    "Its own options (besides --control, --data and --name above; it takes no --device,\n"
    "--stream or --option):\n"
    "  --listen [HOST:]PORT   address to serve on (default " DEFAULT_LISTEN "; port 0: any free\n"
    "                         port; the URL is printed on stdout). HOST is a numeric address or\n"
    "                         localhost; one that is not loopback needs --insecure-listen\n"
    "  --insecure-listen      allow a HOST beyond loopback: ANYONE who reaches it drives the\n"
    "                         instruments (there is no authentication yet)\n"
    "  --www DIR              the page's files (default: www/ beside the program, else\n"
    "                         ../share/labmq/web/ from it)\n"
    "  --max-rate N           at most N blocks per second per stream to each tab (default 30);\n"
    "                         the rest are skipped, latest wins, and shown as skipped\n"
    "  --timeout MS           wait at most MS ms for a device's answer (default 2000)\n";

typedef struct opts {
    char host[INET6_ADDRSTRLEN];
    int port;
    bool insecure;
    const char *www;
    double max_rate;
    int timeout_ms;
} opts_t;

static int usage(const char *fmt, const char *arg)
{
    fprintf(stderr, PROG ": ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\nTry '" PROG " --help' for more information.\n");
    return LMQ_WORKER_EXIT_USAGE;
}

/* [HOST:]PORT, HOST numeric or localhost, [V6]:PORT. */
static int parse_listen(opts_t *o, const char *text)
{
    char buf[128];
    if (strlen(text) >= sizeof buf)
        return usage("--listen '%s': too long", text);
    snprintf(buf, sizeof buf, "%s", text);
    char *host = NULL, *port = buf;
    if (buf[0] == '[') {
        char *end = strchr(buf, ']');
        if (!end || end[1] != ':')
            return usage("--listen '%s': an IPv6 address is written [ADDRESS]:PORT", text);
        *end = '\0';
        host = buf + 1;
        port = end + 2;
    } else if (strchr(buf, ':')) {
        char *colon = strrchr(buf, ':');
        *colon = '\0';
        host = buf;
        port = colon + 1;
    }
    char *end;
    errno = 0;
    long p = strtol(port, &end, 10);
    if (!*port || *end || errno || p < 0 || p > 65535)
        return usage("--listen '%s': the port must be a number from 0 to 65535", text);
    o->port = (int)p;
    if (host) {
        if (strcasecmp(host, "localhost") == 0)
            host = "127.0.0.1";
        struct in_addr a4;
        struct in6_addr a6;
        if (inet_pton(AF_INET, host, &a4) != 1 && inet_pton(AF_INET6, host, &a6) != 1)
            return usage("--listen '%s': the host must be a numeric IPv4 or IPv6 address, or localhost", text);
        memcpy(o->host, host, strlen(host) + 1); /* an address: shorter than INET6_ADDRSTRLEN */
    }
    return 0;
}

static bool is_loopback(const char *host)
{
    struct in_addr a4;
    struct in6_addr a6;
    if (inet_pton(AF_INET, host, &a4) == 1)
        return (ntohl(a4.s_addr) >> 24) == 127;
    return inet_pton(AF_INET6, host, &a6) == 1 && IN6_IS_ADDR_LOOPBACK(&a6);
}

static int parse_number(const char *opt, const char *text, double lo, double hi, double *out)
{
    char *end;
    errno = 0;
    double d = strtod(text, &end);
    if (!*text || *end || errno || !(d >= lo && d <= hi)) {
        char msg[200];
        snprintf(msg, sizeof msg, "%s '%%s': must be a number from %g to %g", opt, lo, hi);
        return usage(msg, text);
    }
    *out = d;
    return 0;
}

/* Takes this program's options out of argv (into o); the rest stays for the
 * worker runtime. Returns 0 or an exit status. */
static int own_options(int *argc, char **argv, opts_t *o)
{
    int out = 1;
    for (int i = 1; i < *argc; i++) {
        const char *a = argv[i];
        static const char *const with_value[] = {"--listen", "--www", "--max-rate", "--timeout"};
        const char *value = NULL, *name = NULL;
        for (size_t k = 0; k < sizeof with_value / sizeof *with_value && !name; k++) {
            size_t n = strlen(with_value[k]);
            if (strncmp(a, with_value[k], n) == 0 && (a[n] == '\0' || a[n] == '=')) {
                name = with_value[k];
                if (a[n] == '=')
                    value = a + n + 1;
                else if (i + 1 < *argc)
                    value = argv[++i];
                else
                    return usage("%s needs a value", name);
            }
        }
        static const char *const refused[] = {"--device", "--stream", "--option"};
        for (size_t k = 0; k < sizeof refused / sizeof *refused; k++) {
            size_t n = strlen(refused[k]);
            if (strncmp(a, refused[k], n) == 0 && (a[n] == '\0' || a[n] == '='))
                return usage("%s: labmq-web shows every device and stream and has no --option settings "
                             "(its settings are --listen, --www, --max-rate, --timeout)", refused[k]);
        }
        if (strcmp(a, "--") == 0) {
            argv[out++] = argv[i];
            continue;
        }
        int rc = 0;
        double d;
        if (!name && strcmp(a, "--insecure-listen") == 0)
            o->insecure = true;
        else if (!name)
            argv[out++] = argv[i];
        else if (strcmp(name, "--listen") == 0)
            rc = parse_listen(o, value);
        else if (strcmp(name, "--www") == 0)
            o->www = value;
        else if (strcmp(name, "--max-rate") == 0)
            rc = parse_number(name, value, 0.1, 1000, &o->max_rate);
        else if ((rc = parse_number(name, value, 1, 3600000, &d)) == 0)
            o->timeout_ms = (int)d;
        if (rc)
            return rc;
    }
    *argc = out;
    argv[out] = NULL;
    return 0;
}

static bool has_index(const char *dir)
{
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/index.html", dir);
    return access(path, R_OK) == 0;
}

/* The page: --www, else www/ beside the program (the build tree), else
 * ../share/labmq/web from it (installed). */
static const char *find_www(const opts_t *o, char *buf, size_t size)
{
    if (o->www)
        return has_index(o->www) ? o->www : NULL;
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0)
        return NULL;
    exe[n] = '\0';
    char *slash = strrchr(exe, '/');
    if (!slash)
        return NULL;
    *slash = '\0';
    if (snprintf(buf, size, "%s/www", exe) < (int)size && has_index(buf))
        return buf;
    if (snprintf(buf, size, "%s/../share/labmq/web", exe) < (int)size && has_index(buf))
        return buf;
    return NULL;
}

int main(int argc, char **argv)
{
    opts_t o = {.host = "127.0.0.1", .port = 8080, .max_rate = DEFAULT_MAX_RATE,
                .timeout_ms = LMQ_PROXY_DEFAULT_TIMEOUT_MS};
    int code = own_options(&argc, argv, &o);
    if (code)
        return code;
    lmq_worker_t *w = lmq_worker_new(argc, argv, about, &code);
    if (!w)
        return code;
    const char *name = lmq_worker_name(w);
    char wwwbuf[PATH_MAX];
    const char *www = find_www(&o, wwwbuf, sizeof wwwbuf);
    if (!is_loopback(o.host) && !o.insecure) {
        fprintf(stderr, PROG ": --listen %s is beyond loopback: labmq-web has no authentication, so anyone "
                        "who reaches it could drive the instruments; add --insecure-listen to do it anyway\n",
                o.host);
        lmq_worker_destroy(&w);
        return LMQ_WORKER_EXIT_USAGE;
    }
    if (!www) {
        fprintf(stderr, PROG ": the page's files (index.html) are not in %s\n",
                o.www ? o.www : "www/ beside the program nor in ../share/labmq/web from it; give --www DIR");
        lmq_worker_destroy(&w);
        return LMQ_WORKER_EXIT_FAILURE;
    }
    web_bridge_t *bridge = web_bridge_new();
    if (!bridge) {
        fprintf(stderr, "%s: cannot create its queues: %s\n", name, strerror(errno));
        lmq_worker_destroy(&w);
        return LMQ_WORKER_EXIT_FAILURE;
    }
    char err[256];
    web_server_cfg_t scfg = {.host = o.host, .port = o.port, .loopback = is_loopback(o.host), .www = www,
                             .max_rate = o.max_rate, .bridge = bridge};
    web_server_t *srv = web_server_new(&scfg, err, sizeof err);
    if (!srv) {
        fprintf(stderr, "%s: %s\n", name, err);
        web_bridge_destroy(&bridge);
        lmq_worker_destroy(&w);
        return LMQ_WORKER_EXIT_FAILURE;
    }
    if (!scfg.loopback)
        fprintf(stderr, "%s: WARNING: serving on %s without authentication: anyone who reaches it can drive "
                        "the instruments\n", name, o.host);
    bool v6 = strchr(o.host, ':') != NULL;
    printf("%s: serving http://%s%s%s:%d/ for the daemon at %s (data %s)\n", name, v6 ? "[" : "", o.host,
           v6 ? "]" : "", web_server_port(srv), lmq_worker_control(w), lmq_worker_data(w));
    fflush(stdout);

    web_hub_cfg_t hcfg = {.zctx = lmq_worker_zctx(w), .control = lmq_worker_control(w),
                          .data = lmq_worker_data(w), .timeout_ms = o.timeout_ms, .worker = w, .bridge = bridge};
    pthread_t control, data;
    int status = LMQ_WORKER_EXIT_OK;
    bool have_control = pthread_create(&control, NULL, web_control_main, &hcfg) == 0;
    bool have_data = have_control && pthread_create(&data, NULL, web_data_main, &hcfg) == 0;
    if (have_data) {
        web_server_run(srv);
    } else {
        fprintf(stderr, "%s: cannot start a thread\n", name);
        status = LMQ_WORKER_EXIT_FAILURE;
    }
    web_bridge_stop(bridge);
    if (have_control)
        pthread_join(control, NULL);
    if (have_data)
        pthread_join(data, NULL);
    web_server_destroy(&srv);
    web_bridge_destroy(&bridge);
    if (status == LMQ_WORKER_EXIT_OK && lmq_worker_stop_signal(w) == 0) {
        fprintf(stderr, "%s: stopped without a stop signal (see above)\n", name);
        status = LMQ_WORKER_EXIT_FAILURE;
    }
    printf("%s: stopped\n", name);
    lmq_worker_destroy(&w);
    return status;
}
