/* labmq — lab instrument control over ZeroMQ. Umbrella header. */
#ifndef LABMQ_H
#define LABMQ_H

#define LMQ_VERSION_MAJOR 0
#define LMQ_VERSION_MINOR 1
#define LMQ_VERSION_PATCH 0
#define LMQ_VERSION_STRING "0.1.0"
#define LMQ_PROTOCOL_VERSION 1

#include "labmq/auth.h"
#include "labmq/config.h"
#include "labmq/daemon.h"
#include "labmq/driver.h"
#include "labmq/events.h"
#include "labmq/log.h"
#include "labmq/pool.h"
#include "labmq/proxy.h"
#include "labmq/spawn.h"
#include "labmq/status.h"
#include "labmq/supervise.h"
#include "labmq/sub.h"
#include "labmq/transport.h"
#include "labmq/value.h"
#include "labmq/worker.h"

#endif
