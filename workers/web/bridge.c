/* labmq-web — the queues between the control, data and server threads (see
 * bridge.h): one mutex, an eventfd per ZeroMQ thread, a waker for lws. */
#include "bridge.h"
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

/* The server thread takes texts as they come; this many waiting means it
 * is stalled, and more would only grow memory. */
#define WEB_TEXT_QUEUE_MAX 100000
/* Streams the data thread can have at once (slots are reused by topic). */
#define WEB_SLOTS_MAX 256

typedef struct slot {
    char topic[WEB_TOPIC_MAX];
    web_block_t *blk; /* NULL when taken */
} slot_t;

struct web_bridge {
    pthread_mutex_t mu;
    web_text_t *texts, **texts_tail;
    size_t ntexts;
    uint64_t texts_dropped;
    slot_t slots[WEB_SLOTS_MAX];
    size_t nslots;
    web_cmd_t *cmds, **cmds_tail;
    web_subop_t *subops, **subops_tail;
    int control_fd, data_fd;
    void (*wake)(void *arg);
    void *wake_arg;
    atomic_bool stop;
};

static void kick(int fd)
{
    uint64_t one = 1;
    /* EAGAIN means the counter is already non-zero: the reader wakes anyway. */
    ssize_t n = write(fd, &one, sizeof one);
    (void)n;
}

static void drain(int fd)
{
    uint64_t v;
    ssize_t n = read(fd, &v, sizeof v);
    (void)n;
}

web_bridge_t *web_bridge_new(void)
{
    web_bridge_t *b = calloc(1, sizeof *b);
    if (!b)
        return NULL;
    b->control_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    b->data_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (b->control_fd < 0 || b->data_fd < 0 || pthread_mutex_init(&b->mu, NULL) != 0) {
        int e = errno;
        if (b->control_fd >= 0)
            close(b->control_fd);
        if (b->data_fd >= 0)
            close(b->data_fd);
        free(b);
        errno = e;
        return NULL;
    }
    b->texts_tail = &b->texts;
    b->cmds_tail = &b->cmds;
    b->subops_tail = &b->subops;
    return b;
}

void web_bridge_destroy(web_bridge_t **pb)
{
    if (!pb || !*pb)
        return;
    web_bridge_t *b = *pb;
    while (b->texts) {
        web_text_t *t = b->texts;
        b->texts = t->next;
        web_text_free(t);
    }
    while (b->cmds) {
        web_cmd_t *c = b->cmds;
        b->cmds = c->next;
        web_cmd_free(c);
    }
    while (b->subops) {
        web_subop_t *s = b->subops;
        b->subops = s->next;
        web_subop_free(s);
    }
    for (size_t i = 0; i < b->nslots; i++)
        web_block_unref(&b->slots[i].blk);
    close(b->control_fd);
    close(b->data_fd);
    pthread_mutex_destroy(&b->mu);
    free(b);
    *pb = NULL;
}

void web_bridge_set_waker(web_bridge_t *b, void (*wake)(void *arg), void *arg)
{
    pthread_mutex_lock(&b->mu);
    b->wake = wake;
    b->wake_arg = arg;
    pthread_mutex_unlock(&b->mu);
}

static void wake_server(web_bridge_t *b)
{
    pthread_mutex_lock(&b->mu);
    void (*wake)(void *) = b->wake;
    void *arg = b->wake_arg;
    pthread_mutex_unlock(&b->mu);
    if (wake)
        wake(arg);
}

void web_bridge_post_text(web_bridge_t *b, uint64_t client, char *json)
{
    if (!json)
        return;
    web_text_t *t = calloc(1, sizeof *t);
    if (!t) {
        free(json);
        return;
    }
    t->client = client;
    t->json = json;
    t->len = strlen(json);
    pthread_mutex_lock(&b->mu);
    if (b->ntexts >= WEB_TEXT_QUEUE_MAX) {
        b->texts_dropped++;
        pthread_mutex_unlock(&b->mu);
        web_text_free(t);
        return;
    }
    *b->texts_tail = t;
    b->texts_tail = &t->next;
    b->ntexts++;
    pthread_mutex_unlock(&b->mu);
    wake_server(b);
}

void web_bridge_post_block(web_bridge_t *b, web_block_t *blk)
{
    if (!blk)
        return;
    web_block_t *old = NULL;
    pthread_mutex_lock(&b->mu);
    slot_t *s = NULL;
    for (size_t i = 0; i < b->nslots && !s; i++)
        if (strcmp(b->slots[i].topic, blk->topic) == 0)
            s = &b->slots[i];
    if (!s && b->nslots < WEB_SLOTS_MAX) {
        s = &b->slots[b->nslots++];
        memcpy(s->topic, blk->topic, sizeof s->topic);
    }
    if (!s) { /* more streams than slots: the data thread never subscribes to that many */
        pthread_mutex_unlock(&b->mu);
        web_block_unref(&blk);
        return;
    }
    old = s->blk;
    if (old) {
        /* The replaced block's losses and restart travel on, so no browser
         * misses that they happened. */
        blk->replaced += old->replaced + 1;
        blk->lost_before += old->lost_before;
        blk->restarted = blk->restarted || old->restarted;
    }
    s->blk = blk;
    pthread_mutex_unlock(&b->mu);
    web_block_unref(&old);
    wake_server(b);
}

web_text_t *web_bridge_take_texts(web_bridge_t *b)
{
    pthread_mutex_lock(&b->mu);
    web_text_t *t = b->texts;
    b->texts = NULL;
    b->texts_tail = &b->texts;
    b->ntexts = 0;
    pthread_mutex_unlock(&b->mu);
    return t;
}

size_t web_bridge_take_blocks(web_bridge_t *b, web_block_t **out, size_t max)
{
    size_t n = 0;
    pthread_mutex_lock(&b->mu);
    for (size_t i = 0; i < b->nslots && n < max; i++)
        if (b->slots[i].blk) {
            out[n++] = b->slots[i].blk;
            b->slots[i].blk = NULL;
        }
    pthread_mutex_unlock(&b->mu);
    return n;
}

uint64_t web_bridge_texts_dropped(web_bridge_t *b)
{
    pthread_mutex_lock(&b->mu);
    uint64_t n = b->texts_dropped;
    pthread_mutex_unlock(&b->mu);
    return n;
}

void web_bridge_post_cmd(web_bridge_t *b, uint64_t client, json_t *req)
{
    web_cmd_t *c = calloc(1, sizeof *c);
    if (!c) {
        json_decref(req);
        return;
    }
    c->client = client;
    c->req = req;
    pthread_mutex_lock(&b->mu);
    *b->cmds_tail = c;
    b->cmds_tail = &c->next;
    pthread_mutex_unlock(&b->mu);
    kick(b->control_fd);
}

web_cmd_t *web_bridge_take_cmds(web_bridge_t *b)
{
    drain(b->control_fd);
    pthread_mutex_lock(&b->mu);
    web_cmd_t *c = b->cmds;
    b->cmds = NULL;
    b->cmds_tail = &b->cmds;
    pthread_mutex_unlock(&b->mu);
    return c;
}

void web_bridge_post_subop(web_bridge_t *b, const char *topic, bool on)
{
    web_subop_t *s = calloc(1, sizeof *s);
    if (!s)
        return;
    s->on = on;
    strncpy(s->topic, topic, sizeof s->topic - 1);
    pthread_mutex_lock(&b->mu);
    *b->subops_tail = s;
    b->subops_tail = &s->next;
    pthread_mutex_unlock(&b->mu);
    kick(b->data_fd);
}

web_subop_t *web_bridge_take_subops(web_bridge_t *b)
{
    drain(b->data_fd);
    pthread_mutex_lock(&b->mu);
    web_subop_t *s = b->subops;
    b->subops = NULL;
    b->subops_tail = &b->subops;
    pthread_mutex_unlock(&b->mu);
    return s;
}

int web_bridge_control_fd(const web_bridge_t *b) { return b->control_fd; }
int web_bridge_data_fd(const web_bridge_t *b) { return b->data_fd; }

void web_bridge_stop(web_bridge_t *b)
{
    atomic_store(&b->stop, true);
    kick(b->control_fd);
    kick(b->data_fd);
    wake_server(b);
}

bool web_bridge_stopping(web_bridge_t *b) { return atomic_load(&b->stop); }

web_block_t *web_block_new(size_t size)
{
    web_block_t *blk = calloc(1, sizeof *blk);
    if (!blk)
        return NULL;
    blk->data = malloc(size ? size : 1);
    if (!blk->data) {
        free(blk);
        return NULL;
    }
    blk->size = size;
    blk->refs = 1;
    return blk;
}

void web_block_unref(web_block_t **pblk)
{
    if (!pblk || !*pblk)
        return;
    web_block_t *blk = *pblk;
    *pblk = NULL;
    if (--blk->refs > 0)
        return;
    free(blk->data);
    free(blk);
}

void web_text_free(web_text_t *t)
{
    if (!t)
        return;
    free(t->json);
    free(t);
}

void web_cmd_free(web_cmd_t *c)
{
    if (!c)
        return;
    json_decref(c->req);
    free(c);
}

void web_subop_free(web_subop_t *s) { free(s); }
