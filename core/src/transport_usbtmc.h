/* USBTMC transport internals shared with tests and fuzz targets: the
 * protocol constants and the parser for the header the device sends on
 * bulk-in. Internal to liblabmq. */
#ifndef LMQ_TRANSPORT_USBTMC_H
#define LMQ_TRANSPORT_USBTMC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* USBTMC 1.0 §3.2: every bulk message starts with this header. */
#define LMQ__USBTMC_HEADER 12
/* MsgID values (Table 2). */
#define LMQ__USBTMC_DEV_DEP_MSG_OUT 1
#define LMQ__USBTMC_REQUEST_DEV_DEP_MSG_IN 2
#define LMQ__USBTMC_DEV_DEP_MSG_IN 2
/* Class-specific control requests (Table 15) and USB488 READ_STATUS_BYTE. */
#define LMQ__USBTMC_INITIATE_ABORT_BULK_OUT 1
#define LMQ__USBTMC_CHECK_ABORT_BULK_OUT_STATUS 2
#define LMQ__USBTMC_INITIATE_ABORT_BULK_IN 3
#define LMQ__USBTMC_CHECK_ABORT_BULK_IN_STATUS 4
#define LMQ__USBTMC_INITIATE_CLEAR 5
#define LMQ__USBTMC_CHECK_CLEAR_STATUS 6
#define LMQ__USBTMC_GET_CAPABILITIES 7
#define LMQ__USB488_READ_STATUS_BYTE 128
/* USBTMC_status values (Table 16). */
#define LMQ__USBTMC_STATUS_SUCCESS 0x01
#define LMQ__USBTMC_STATUS_PENDING 0x02
#define LMQ__USBTMC_STATUS_FAILED 0x80
#define LMQ__USBTMC_STATUS_TRANSFER_NOT_IN_PROGRESS 0x81
/* Largest bulk transfer we send or accept, header included: a multiple of
 * every bulk wMaxPacketSize (64, 512, 1024), so a reply that fills it ends
 * the transfer without the device having to send a zero-length packet. */
#define LMQ__USBTMC_XFER 4096
#define LMQ__USBTMC_MAX_PAYLOAD (LMQ__USBTMC_XFER - LMQ__USBTMC_HEADER)

/* Parses the DEV_DEP_MSG_IN header at the start of buf, the len bytes one
 * bulk-in transfer delivered, as the answer to the REQUEST_DEV_DEP_MSG_IN
 * with bTag expect_tag. Checks MsgID, bTag, bTagInverse and that the
 * TransferSize payload bytes arrived (padding after them is allowed). On
 * success sets *size and *eom (bmTransferAttributes bit 0) and returns 0;
 * otherwise returns LMQ_EPROTO and writes a reason naming the offending
 * bytes into err. Accepts any bytes: it is the boundary to the device. */
int lmq__usbtmc_parse_in_header(const uint8_t *buf, size_t len, uint8_t expect_tag, uint32_t *size, bool *eom,
                                char *err, size_t errlen);

#endif
