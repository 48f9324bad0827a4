/* labmq — symbol visibility. The library builds with -fvisibility=hidden and
 * exports only what is marked LMQ_EXPORT. */
#ifndef LABMQ_EXPORT_H
#define LABMQ_EXPORT_H
#if defined(LMQ_BUILDING) && defined(__GNUC__)
#define LMQ_EXPORT __attribute__((visibility("default")))
#else
#define LMQ_EXPORT
#endif
#if defined(__GNUC__)
#define LMQ_PRINTF(f, a) __attribute__((format(printf, f, a)))
#else
#define LMQ_PRINTF(f, a)
#endif
#endif
