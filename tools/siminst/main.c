/* labmq-siminst — command line: options, --help, loading the model, and
 * handing over to the server. */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include "siminst.h"

static void usage(FILE *f)
{
    fputs("Usage: labmq-siminst [OPTIONS] MODEL.yaml\n"
          "\n"
          "Simulates a SCPI text instrument described by MODEL.yaml, byte for byte, for\n"
          "any client (labmq, pyvisa, vendor tools, a terminal). Shipped models:\n"
          "examples/instruments/siminst/{rigol-dp832,keysight-34461a,keithley-2400}.yaml\n"
          "\n"
          "Serving (default: a new pseudo-terminal):\n"
          "  (default)          print the pty's path (e.g. /dev/pts/5) on a line of stdout\n"
          "  --link PATH        also keep PATH a symlink to the pty (survives hang-ups)\n"
          "  --tcp PORT         serve on 127.0.0.1:PORT instead (0 = any free port) and\n"
          "                     print tcp:127.0.0.1:PORT. One client at a time: a second\n"
          "                     connection is accepted and closed at once (refused)\n"
          "Lines end in \\n (\\r\\n accepted); replies end in the model's terminator.\n"
          "\n"
          "Behaviour:\n"
          "  --time-scale X     simulated time runs X times faster: command delays and\n"
          "                     ramps (slew) shrink by X; the time t in expressions\n"
          "                     grows X times faster\n"
          "  --seed N           seed of the measurement noise (default: from the clock)\n"
          "  --set NAME[@CH]=V  set a variable at start, e.g. the simulated load\n"
          "                     (--set load@2=5); variables marked external keep\n"
          "                     their value through *RST\n"
          "  --log              print each received line (<) and reply (>) on stderr\n"
          "  --check            load MODEL.yaml, report the first error, and exit\n"
          "\n"
          "Faults (times in real milliseconds):\n"
          "  --fault SPEC       apply SPEC at start (repeatable)\n"
          "  --fault-commands   also accept a line \"#sim SPEC\" from the client (never\n"
          "                     valid SCPI; no reply)\n"
          "  SPEC is one of:\n"
          "    drop N           discard the next N replies\n"
          "    garble N         corrupt bytes of the next N replies (every 4th byte\n"
          "                     becomes '~'; length and terminator kept)\n"
          "    delay MS         send every reply MS later (0 = off)\n"
          "    split BYTES MS   send replies in BYTES-sized pieces MS apart (0 0 = off)\n"
          "    late MS          send the next reply MS later than usual\n"
          "    hangup MS [N]    after N more replies (default 0: now) close the\n"
          "                     connection and serve again MS later (pty: a new pty,\n"
          "                     its path printed, --link moved to it)\n"
          "    clear            all faults off\n"
          "  and at runtime also: set NAME[@CH] VALUE (as --set)\n"
          "\n"
          "Exit status: 0 stopped by SIGINT/SIGTERM (or --check passed), 1 runtime\n"
          "failure (cannot create the pty or listen), 2 bad usage or a bad model file\n"
          "(the message names file:line).\n"
          "The model file format: tools/siminst/README.md.\n",
          f);
}

int main(int argc, char **argv)
{
    enum { O_TCP = 1000, O_LINK, O_SCALE, O_SEED, O_LOG, O_FAULT, O_FAULTCMD, O_CHECK, O_SET };
    static const struct option opts[] = {
        {"tcp", required_argument, NULL, O_TCP},
        {"link", required_argument, NULL, O_LINK},
        {"time-scale", required_argument, NULL, O_SCALE},
        {"seed", required_argument, NULL, O_SEED},
        {"log", no_argument, NULL, O_LOG},
        {"fault", required_argument, NULL, O_FAULT},
        {"fault-commands", no_argument, NULL, O_FAULTCMD},
        {"check", no_argument, NULL, O_CHECK},
        {"set", required_argument, NULL, O_SET},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    sim_opts_t o = {.tcp_port = -1, .scale = 1, .seed = (uint64_t)sim_mono_ns()};
    bool check = false;
    const char **faults = calloc((size_t)argc, sizeof *faults);
    const char **sets = calloc((size_t)argc, sizeof *sets);
    size_t n_sets = 0;
    if (!faults || !sets) {
        free(sets);
        fprintf(stderr, "labmq-siminst: out of memory\n");
        return SIM_EXIT_RUNTIME;
    }
    o.faults = faults;
    int c, rc = SIM_EXIT_USAGE;
    char *end;
    char err[SIM_ERRMSG];
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'h':
            usage(stdout);
            free(faults);
            free(sets);
            return SIM_EXIT_OK;
        case O_TCP:
            errno = 0;
            o.tcp_port = strtol(optarg, &end, 10);
            if (errno || *end || !*optarg || o.tcp_port < 0 || o.tcp_port > 65535) {
                fprintf(stderr, "labmq-siminst: --tcp: \"%s\" is not a port (0-65535)\n", optarg);
                goto done;
            }
            break;
        case O_LINK:
            o.link = optarg;
            break;
        case O_SCALE:
            errno = 0;
            o.scale = strtod(optarg, &end);
            if (errno || *end || !*optarg || !isfinite(o.scale) || o.scale <= 0) {
                fprintf(stderr, "labmq-siminst: --time-scale: \"%s\" is not a positive number\n", optarg);
                goto done;
            }
            break;
        case O_SEED:
            errno = 0;
            o.seed = strtoull(optarg, &end, 10);
            if (errno || *end || !*optarg) {
                fprintf(stderr, "labmq-siminst: --seed: \"%s\" is not an unsigned integer\n", optarg);
                goto done;
            }
            break;
        case O_LOG:
            o.log = true;
            break;
        case O_FAULT:
            if (sim_fault_check(optarg, err, sizeof err) != 0) {
                fprintf(stderr, "labmq-siminst: --fault: %s\n", err);
                goto done;
            }
            faults[o.n_faults++] = optarg;
            break;
        case O_FAULTCMD:
            o.fault_commands = true;
            break;
        case O_CHECK:
            check = true;
            break;
        case O_SET:
            sets[n_sets++] = optarg;
            break;
        default:
            fprintf(stderr, "Try 'labmq-siminst --help'.\n");
            goto done;
        }
    }
    if (optind != argc - 1) {
        fprintf(stderr, "labmq-siminst: expected one MODEL.yaml (got %d arguments); try --help\n", argc - optind);
        goto done;
    }
    if (o.link && o.tcp_port >= 0) {
        fprintf(stderr, "labmq-siminst: --link applies to the pty, not to --tcp\n");
        goto done;
    }
    struct stat st;
    if (o.link && lstat(o.link, &st) == 0 && !S_ISLNK(st.st_mode)) {
        fprintf(stderr, "labmq-siminst: --link %s exists and is not a symlink: not replacing it\n", o.link);
        goto done;
    }
    o.model = argv[optind];
    sim_model_t *m = sim_model_load(o.model, o.seed, err, sizeof err);
    if (!m) {
        fprintf(stderr, "labmq-siminst: %s\n", err);
        goto done;
    }
    sim_engine_t *e = sim_engine_new(m, o.scale);
    for (size_t i = 0; e && i < n_sets; i++)
        if (sim_engine_set_spec(e, sets[i], err, sizeof err) != 0) {
            fprintf(stderr, "labmq-siminst: --set %s\n", err);
            sim_engine_destroy(&e);
            sim_model_destroy(&m);
            goto done;
        }
    if (!e) {
        fprintf(stderr, "labmq-siminst: out of memory\n");
        rc = SIM_EXIT_RUNTIME;
    } else if (check) {
        printf("%s: ok (%zu variables, %zu commands)\n", o.model, m->n_vars, m->n_cmds);
        rc = SIM_EXIT_OK;
    } else {
        rc = sim_serve(e, m, &o);
    }
    sim_engine_destroy(&e);
    sim_model_destroy(&m);
done:
    free(faults);
    free(sets);
    return rc;
}
