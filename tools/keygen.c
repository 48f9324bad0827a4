/* labmq CLI — keygen: a CURVE key pair for a daemon or a client, written as
 * key files (labmq/auth.h) or printed. */
#include <stdlib.h>
#include <string.h>
#include "cli.h"

int cli_cmd_keygen(cli_t *c, int argc, char **argv)
{
    (void)argc;
    (void)argv;
    lmq_keypair_t kp;
    char err[600];
    int rc = lmq_keypair_new(&kp, err, sizeof err);
    if (rc != 0)
        return cli_failf(c, rc, "%s", err);
    if (!c->output) {
        /* The key file's own format, so `> FILE` (then chmod 600) works too. */
        fprintf(c->out,
                "#   labmq CURVE key pair: keep the secret key private\n"
                "metadata\n"
                "curve\n"
                "    public-key = \"%s\"\n"
                "    secret-key = \"%s\"\n",
                kp.public_key, kp.secret_key);
        explicit_bzero(&kp, sizeof kp);
        return CLI_OK;
    }
    rc = lmq_keypair_save(&kp, c->output, c->overwrite, err, sizeof err);
    if (rc != 0) {
        explicit_bzero(&kp, sizeof kp);
        return cli_failf(c, rc, "%s%s", err, rc == LMQ_EBUSY ? " (--overwrite replaces it)" : "");
    }
    if (c->json) {
        size_t len = strlen(c->output) + 5;
        char *pub = malloc(len);
        json_t *j = pub ? json_pack("{s:s, s:s, s:s}", "public_key", kp.public_key, "key_file", c->output,
                                    "public_file", (snprintf(pub, len, "%s.pub", c->output), pub))
                        : NULL;
        if (j) {
            json_dumpf(j, c->out, JSON_INDENT(2));
            fputc('\n', c->out);
        }
        json_decref(j);
        free(pub);
    } else
        fprintf(c->out,
                "public key: %s\n"
                "wrote %s (the key pair: keep it private, mode 0600)\n"
                "  and %s.pub (the public key: give it to the other side)\n",
                kp.public_key, c->output, c->output);
    explicit_bzero(&kp, sizeof kp);
    return CLI_OK;
}
