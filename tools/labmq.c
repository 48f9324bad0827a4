/* labmq — the command-line client: ping, list, describe, call, get, set,
 * watch, record and stats against a running labmqd.
 *
 * main() parses the command line into a cli_t, creates the process's one
 * ZeroMQ context, runs one command and destroys the context. Commands live in
 * commands.c, watch.c and record.c. */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <unistd.h>
#include <zmq.h>
#include "cli.h"

enum { OPT_DURATION = 256, OPT_OVERWRITE, OPT_KEY, OPT_SERVER_KEY, OPT_LEASE };

static const struct option long_opts[] = {
    {"endpoint", required_argument, NULL, 'e'},
    {"data", required_argument, NULL, 'd'},
    {"timeout", required_argument, NULL, 't'},
    {"json", no_argument, NULL, 'j'},
    {"count", required_argument, NULL, 'n'},
    {"duration", required_argument, NULL, OPT_DURATION},
    {"output", required_argument, NULL, 'o'},
    {"overwrite", no_argument, NULL, OPT_OVERWRITE},
    {"key", required_argument, NULL, OPT_KEY},
    {"server-key", required_argument, NULL, OPT_SERVER_KEY},
    {"lease", required_argument, NULL, OPT_LEASE},
    {"help", no_argument, NULL, 'h'},
    {"version", no_argument, NULL, 'V'},
    {NULL, 0, NULL, 0},
};
/* '+': the pre-pass below already separated options from operands;
 * ':': report a missing value ourselves, in our words. */
static const char short_opts[] = "+:e:d:t:jn:o:hV";

typedef struct command {
    const char *name;
    int (*fn)(cli_t *c, int argc, char **argv);
    int min_args, max_args; /* max -1: any number */
    const char *synopsis;
} command_t;

static const command_t commands[] = {
    {"ping", cli_cmd_ping, 0, 0, "ping"},
    {"ls", cli_cmd_ls, 0, 0, "ls"},
    {"list", cli_cmd_ls, 0, 0, "ls"},
    {"describe", cli_cmd_describe, 1, 1, "describe DEV"},
    {"call", cli_cmd_call, 2, -1, "call DEV METHOD [ARGS...]"},
    {"get", cli_cmd_get, 2, 2, "get DEV PROP"},
    {"set", cli_cmd_set, 3, 3, "set DEV PROP VALUE"},
    {"watch", cli_cmd_watch, 1, 1, "watch DEV/STREAM|DEV [--count N] [--duration S]"},
    {"record", cli_cmd_record, 1, -1, "record DEV/STREAM... -o FILE [--duration S] [--overwrite]"},
    {"stats", cli_cmd_stats, 0, 1, "stats [DEV]"},
    {"scan", cli_cmd_scan, 0, 0, "scan"},
    {"workers", cli_cmd_workers, 0, 0, "workers"},
    {"keygen", cli_cmd_keygen, 0, 0, "keygen [-o FILE] [--overwrite]"},
    {"lock", cli_cmd_lock, 1, 64, "lock DEV... [--duration S] [--lease MS]"},
};

/* ---- errors ---- */

int cli_failf(cli_t *c, int status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(c->err, "labmq: %s: ", lmq_status_name(status));
    vfprintf(c->err, fmt, ap);
    fputc('\n', c->err);
    va_end(ap);
    return CLI_FAILED;
}

int cli_fail_proxy(cli_t *c, const lmq_proxy_t *p, int status)
{
    if (status == LMQ_EUNREACH && !c->curve) {
        /* The single most common mistake deserves a sentence, not a code. */
        fprintf(c->err, "labmq: no daemon answers at %s (is labmqd running?%s)\n", c->control,
                strncmp(c->control, "tcp://", 6) == 0 ? " A daemon with keys answers only a client with --key and "
                                                        "--server-key"
                                                      : "");
        return CLI_FAILED;
    }
    const char *msg = p ? lmq_proxy_last_error(p) : NULL;
    if (status == LMQ_ETIMEOUT && (!msg || !*msg))
        return cli_failf(c, status, "no reply within %d ms (try --timeout)", c->timeout_ms);
    return cli_failf(c, status, "%s", msg && *msg ? msg : lmq_strerror(status));
}

int cli_usage(cli_t *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("labmq: ", c->err);
    vfprintf(c->err, fmt, ap);
    va_end(ap);
    fputs("\nTry 'labmq --help' for more information.\n", c->err);
    return CLI_USAGE;
}

/* ---- help ---- */

static void print_help(FILE *out)
{
    char control[CLI_EP_MAX], data[CLI_EP_MAX];
    if (lmq_default_endpoint(control, sizeof control, "control", false) != 0)
        snprintf(control, sizeof control, "ipc://$XDG_RUNTIME_DIR/labmq/control");
    if (lmq_default_endpoint(data, sizeof data, "data", false) != 0)
        snprintf(data, sizeof data, "ipc://$XDG_RUNTIME_DIR/labmq/data");
    fprintf(out,
            "labmq - talk to the instruments served by labmqd\n"
            "\n"
            "Usage: labmq [OPTIONS] COMMAND [ARGS...]\n"
            "\n"
            "Commands:\n"
            "  ping                       is a daemon there? version, endpoints, uptime,\n"
            "                             config generation and how its last reload went\n"
            "                               labmq ping\n"
            "  ls                         devices: name, driver, state, description\n"
            "                               labmq ls\n"
            "  describe DEV               methods, properties and streams of a device\n"
            "                               labmq describe psu1\n"
            "  call DEV METHOD [ARGS...]  call a method; arguments take the types describe shows\n"
            "                               labmq call daq1 read 0\n"
            "  get DEV PROP               read a property\n"
            "                               labmq get psu1 voltage\n"
            "  set DEV PROP VALUE         write a property\n"
            "                               labmq set psu1 voltage 3.3\n"
            "  watch DEV/STREAM           live summary of a data stream until Ctrl-C (a lossy\n"
            "                             subscription: it never holds up a recording)\n"
            "                               labmq watch daq1/wave --duration 10\n"
            "  watch DEV                  the device's changes as they happen: properties\n"
            "                             set by any client, state (ready, fault, disconnected)\n"
            "                               labmq watch psu1\n"
            "  record DEV/STREAM... -o FILE\n"
            "                             record streams into an HDF5 file until Ctrl-C or\n"
            "                             --duration, with a progress line; every lost block is\n"
            "                             listed in the file (runs labmq-recorder; see its --help)\n"
            "                               labmq record daq1/wave cam1/frames -o run1.h5 --duration 60\n"
            "  stats [DEV]                state, requests, errors and latency per device, and\n"
            "                             the stream subscribers: held bytes, delivered, dropped\n"
            "                               labmq stats\n"
            "  workers                    the daemon's supervised workers: state, pid, restarts,\n"
            "                             uptime, last exit\n"
            "                               labmq workers\n"
            "  lock DEV...                lock devices for this command's lifetime: others cannot\n"
            "                             set or call them; released at the end of --duration or\n"
            "                             on Ctrl-C; if this process dies, the lease runs out and\n"
            "                             the devices go to their safe state (output off)\n"
            "                               labmq lock psu1 daq1 --duration 600 --lease 2000\n"
            "  scan                       serial ports (with USB VID:PID, maker, product, serial)\n"
            "                             and USBTMC devices on this machine, as connection strings\n"
            "                               labmq scan\n"
            "  keygen [-o FILE]           make a CURVE key pair: FILE (secret, mode 0600) and\n"
            "                             FILE.pub (public, to hand out); without -o, print it\n"
            "                               labmq keygen -o ~/.config/labmq/alice.key\n"
            "\n"
            "Options (anywhere on the line):\n"
            "  -e, --endpoint EP   control endpoint (default %s)\n"
            "  -d, --data EP       data endpoint for watch DEV (default: as the daemon reports it,\n"
            "                      else %s)\n"
            "  -t, --timeout MS    wait at most MS ms for each reply (default %d)\n"
            "  -j, --json          print the result as one JSON document, for scripts\n"
            "  -n, --count N       watch: stop after N blocks\n"
            "      --duration S    watch, record, lock: stop after S seconds\n"
            "      --lease MS      lock: the lease, renewed every MS/3 ms (default 10000)\n"
            "  -o, --output FILE   record: the HDF5 file to create; keygen: the key file\n"
            "      --overwrite     record, keygen: replace FILE if it exists\n"
            "      --key FILE      this client's key pair (labmq keygen), for a daemon with\n"
            "                      keys (default: $LABMQ_KEY)\n"
            "      --server-key K  the daemon's public key: its .pub file or the 40-character\n"
            "                      key (default: $LABMQ_SERVER_KEY); see docs/security.md\n"
            "  -h, --help          show this help\n"
            "  -V, --version       show the version\n"
            "\n"
            "Values: numbers, true/false, or text; an array argument as 1,2,3. Negative numbers\n"
            "are values, not options (labmq set psu1 voltage -0.5); '--' ends the options.\n"
            "A daemon on another machine (with keys):\n"
            "  labmq -e tcp://labpc:5555 --key alice.key --server-key labpc.key.pub ls\n"
            "\n"
            "Exit status:\n"
            "  0  success\n"
            "  1  the operation failed: no daemon, unknown device, method or property, a value\n"
            "     of the wrong type or out of range, an instrument error or timeout, watch\n"
            "     saw no data, record could not create or write its file, a key file that\n"
            "     cannot be read (or that others can read), or PERMISSION (an observe key)\n"
            "  2  usage error: unknown command or option, missing or extra arguments\n",
            control, data, LMQ_PROXY_DEFAULT_TIMEOUT_MS);
}

/* ---- command line ---- */

/* "-0.5" and "-1e-3" are values for set/call, not clusters of short options. */
static bool looks_like_number(const char *s)
{
    char *end = NULL;
    strtod(s, &end);
    return end != s && *end == '\0';
}

static bool is_option(const char *a)
{
    return a[0] == '-' && a[1] != '\0' && !looks_like_number(a);
}

/* Whether option word `a` consumes the next word as its value. */
static bool takes_next(const char *a)
{
    if (a[1] == '-') {
        const char *name = a + 2;
        size_t len = strcspn(name, "=");
        if (name[len] == '=')
            return false;
        const struct option *hit = NULL;
        for (const struct option *o = long_opts; o->name; o++) {
            if (strncmp(o->name, name, len) != 0)
                continue;
            if (strlen(o->name) == len) {
                hit = o;
                break;
            }
            hit = hit ? NULL : o; /* an ambiguous prefix: getopt will say so */
        }
        return hit && hit->has_arg == required_argument;
    }
    for (const char *p = a + 1; *p; p++) {
        const char *q = *p == ':' ? NULL : strchr(short_opts + 2, *p);
        if (q && q[1] == ':')
            return p[1] == '\0'; /* "-t500" carries its value */
    }
    return false;
}

static int parse_long(cli_t *c, const char *opt, const char *text, long min, long max, long *out)
{
    char *end = NULL;
    errno = 0;
    long v = strtol(text, &end, 10);
    if (errno || end == text || *end || v < min || v > max)
        return cli_usage(c, "%s needs a whole number from %ld to %ld, not '%s'", opt, min, max, text);
    *out = v;
    return 0;
}

typedef struct parsed {
    char **pos; /* operands: command and its arguments (borrowed from argv) */
    int npos;
    bool help, version;
    bool count_opt;    /* --count seen */
    bool duration_opt; /* --duration seen */
    bool record_opts;  /* --output or --overwrite seen */
    const char *key, *server_key; /* --key, --server-key */
    bool lease_opt;    /* --lease seen */
} parsed_t;

/* Returns -1 to go on, else the exit code. Options may stand anywhere, so
 * `labmq ls --json` and `labmq --json ls` both work: a pre-pass sorts words
 * into options and operands, then getopt_long reads the options. */
static int parse_args(cli_t *c, int argc, char **argv, parsed_t *ps, char **optv)
{
    int nopt = 0;
    optv[nopt++] = argv[0];
    bool operands_only = false;
    for (int i = 1; i < argc; i++) {
        char *a = argv[i];
        if (operands_only || !is_option(a)) {
            ps->pos[ps->npos++] = a;
        } else if (strcmp(a, "--") == 0) {
            operands_only = true;
        } else {
            optv[nopt++] = a;
            if (takes_next(a) && i + 1 < argc)
                optv[nopt++] = argv[++i];
        }
    }
    optv[nopt] = NULL;

    int ch;
    long v;
    while ((ch = getopt_long(nopt, optv, short_opts, long_opts, NULL)) != -1) {
        switch (ch) {
        case 'e':
            if (!*optarg || strlen(optarg) >= sizeof c->control)
                return cli_usage(c, "--endpoint needs an endpoint such as ipc:///tmp/lab/control");
            snprintf(c->control, sizeof c->control, "%s", optarg);
            break;
        case 'd':
            if (!*optarg || strlen(optarg) >= sizeof c->data)
                return cli_usage(c, "--data needs an endpoint such as ipc:///tmp/lab/data");
            snprintf(c->data, sizeof c->data, "%s", optarg);
            break;
        case 't':
            if (parse_long(c, "--timeout", optarg, 1, INT_MAX, &v))
                return CLI_USAGE;
            c->timeout_ms = (int)v;
            break;
        case 'j': c->json = true; break;
        case 'n':
            if (parse_long(c, "--count", optarg, 1, LONG_MAX, &v))
                return CLI_USAGE;
            c->count = v;
            ps->count_opt = true;
            break;
        case OPT_DURATION: {
            char *end = NULL;
            double d = strtod(optarg, &end);
            if (end == optarg || *end || !isfinite(d) || d <= 0)
                return cli_usage(c, "--duration needs a positive number of seconds, not '%s'", optarg);
            c->duration_s = d;
            ps->duration_opt = true;
            break;
        }
        case 'o':
            if (!*optarg)
                return cli_usage(c, "--output needs a file name");
            c->output = optarg;
            ps->record_opts = true;
            break;
        case OPT_OVERWRITE:
            c->overwrite = true;
            ps->record_opts = true;
            break;
        case OPT_KEY:
            if (!*optarg)
                return cli_usage(c, "--key needs a key file (made by labmq keygen)");
            ps->key = optarg;
            break;
        case OPT_SERVER_KEY:
            if (!*optarg)
                return cli_usage(c, "--server-key needs the daemon's public key file or key");
            ps->server_key = optarg;
            break;
        case OPT_LEASE:
            if (parse_long(c, "--lease", optarg, 100, 60000, &v))
                return CLI_USAGE;
            c->lease_ms = (int)v;
            ps->lease_opt = true;
            break;
        case 'h': ps->help = true; break;
        case 'V': ps->version = true; break;
        case ':': return cli_usage(c, "option '%s' needs a value", optv[optind - 1]);
        default: {
            const char *word = optv[optind - 1];
            if (strncmp(word, "--", 2) == 0)
                return cli_usage(c, "unknown option '%s'", word);
            return cli_usage(c, "unknown option '-%c'", optopt);
        }
        }
    }
    return -1;
}

static const command_t *find_command(const char *name)
{
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (strcmp(commands[i].name, name) == 0)
            return &commands[i];
    return NULL;
}

/* watch ends on Ctrl-C with its summary; record passes it on to the recorder
 * and waits for it. SIGINT/SIGTERM become readable on a signalfd that both
 * poll. They must be blocked before the ZeroMQ context starts its threads, so
 * every thread inherits the mask. */
static int catch_signals(cli_t *c)
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    if (sigprocmask(SIG_BLOCK, &set, NULL) != 0)
        return -1;
    c->sigfd = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
    return c->sigfd < 0 ? -1 : 0;
}

/* --key/--server-key, else $LABMQ_KEY/$LABMQ_SERVER_KEY: both or neither.
 * Returns -1 to go on, else the exit code. */
static int load_keys(cli_t *c, const parsed_t *ps)
{
    const char *key = ps->key ? ps->key : getenv("LABMQ_KEY");
    const char *server = ps->server_key ? ps->server_key : getenv("LABMQ_SERVER_KEY");
    if (key && !*key)
        key = NULL;
    if (server && !*server)
        server = NULL;
    if (!key && !server)
        return -1;
    if (!key || !server)
        return cli_usage(c, "%s needs %s too: the client's key pair and the daemon's public key go together",
                         key ? "--key (or LABMQ_KEY)" : "--server-key (or LABMQ_SERVER_KEY)",
                         key ? "--server-key (or LABMQ_SERVER_KEY)" : "--key (or LABMQ_KEY)");
    char err[600];
    int rc = lmq_client_keys_load(&c->keys, key, server, err, sizeof err);
    if (rc != 0)
        return cli_failf(c, rc, "%s", err);
    c->curve = true;
    c->key_path = key;
    return -1;
}

static int run(cli_t *c, int argc, char **argv)
{
    parsed_t ps = {0};
    /* Both lists hold at most every word of argv, plus a terminator. */
    ps.pos = calloc((size_t)argc + 1, sizeof *ps.pos);
    char **optv = calloc((size_t)argc + 1, sizeof *optv);
    int rc;
    if (!ps.pos || !optv) {
        rc = cli_failf(c, LMQ_EMEM, "out of memory");
        goto out;
    }
    rc = parse_args(c, argc, argv, &ps, optv);
    if (rc >= 0)
        goto out;
    if (ps.help) {
        print_help(c->out);
        rc = CLI_OK;
        goto out;
    }
    if (ps.version) {
        fprintf(c->out, "labmq %s (protocol %d)\n", LMQ_VERSION_STRING, LMQ_PROTOCOL_VERSION);
        rc = CLI_OK;
        goto out;
    }
    if (ps.npos == 0) {
        rc = cli_usage(c, "no command given (ping, ls, describe, call, get, set, watch, record, stats, workers, lock, "
                          "scan, keygen)");
        goto out;
    }
    const command_t *cmd = find_command(ps.pos[0]);
    if (!cmd) {
        rc = cli_usage(c,
                       "unknown command '%s' (ping, ls, describe, call, get, set, watch, record, stats, workers, lock, "
                       "scan, keygen)",
                       ps.pos[0]);
        goto out;
    }
    int nargs = ps.npos - 1;
    if (nargs < cmd->min_args || (cmd->max_args >= 0 && nargs > cmd->max_args)) {
        rc = cli_usage(c, "%s arguments to %s\nusage: labmq %s", nargs < cmd->min_args ? "missing" : "too many",
                       cmd->name, cmd->synopsis);
        goto out;
    }
    if (ps.count_opt && cmd->fn != cli_cmd_watch) {
        rc = cli_usage(c, "--count belongs to watch, not %s", cmd->name);
        goto out;
    }
    if (ps.duration_opt && cmd->fn != cli_cmd_watch && cmd->fn != cli_cmd_record && cmd->fn != cli_cmd_lock) {
        rc = cli_usage(c, "--duration belongs to watch, record and lock, not %s", cmd->name);
        goto out;
    }
    if (ps.lease_opt && cmd->fn != cli_cmd_lock) {
        rc = cli_usage(c, "--lease belongs to lock, not %s", cmd->name);
        goto out;
    }
    if (ps.record_opts && cmd->fn != cli_cmd_record && cmd->fn != cli_cmd_keygen) {
        rc = cli_usage(c, "--output and --overwrite belong to record and keygen, not %s", cmd->name);
        goto out;
    }
    if (cmd->fn != cli_cmd_keygen && (rc = load_keys(c, &ps)) >= 0)
        goto out;
    if (!c->control[0] && lmq_default_endpoint(c->control, sizeof c->control, "control", false) != 0) {
        rc = cli_failf(c, LMQ_ECONFIG, "cannot work out the default endpoint; give one with --endpoint");
        goto out;
    }
    if ((cmd->fn == cli_cmd_watch || cmd->fn == cli_cmd_record || cmd->fn == cli_cmd_lock) && catch_signals(c) != 0) {
        rc = cli_failf(c, LMQ_EIO, "cannot set up Ctrl-C handling: %s", strerror(errno));
        goto out;
    }
    c->zctx = zmq_ctx_new();
    if (!c->zctx) {
        rc = cli_failf(c, LMQ_EMEM, "cannot create a ZeroMQ context: %s", zmq_strerror(errno));
        goto out;
    }
    /* Sockets of a short-lived tool must not keep unsent requests around
     * and stall the exit when no daemon is there: linger 0 by default. */
    zmq_ctx_set(c->zctx, ZMQ_BLOCKY, 0);
    rc = cmd->fn(c, nargs, ps.pos + 1);
    zmq_ctx_term(c->zctx);
    c->zctx = NULL;
out:
    if (c->sigfd >= 0)
        close(c->sigfd);
    c->sigfd = -1;
    free(ps.pos);
    free(optv);
    return rc;
}

int main(int argc, char **argv)
{
    cli_t c = {
        .timeout_ms = LMQ_PROXY_DEFAULT_TIMEOUT_MS,
        .sigfd = -1,
        .out = stdout,
        .err = stderr,
    };
    c.tty = isatty(STDOUT_FILENO) == 1;
    int rc = run(&c, argc, argv);
    if (fflush(stdout) != 0 && rc == CLI_OK)
        rc = CLI_FAILED; /* a full disk or closed pipe must not look like success */
    return rc;
}
