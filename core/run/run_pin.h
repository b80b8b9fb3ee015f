/* Page-locked host buffers of a run with shard.cpu_offload on another backend (the op
 * table's host_pin, ABI 9). Offloaded, the same host buffers cross to the device every
 * step: the trainable parameters up and their gradients down, or under full sharding the
 * rank's pieces up at each gather and its gradient piece down at each unit's backward. A
 * GPU copies page-locked memory by DMA; pageable memory goes through the driver's staging
 * buffers, at a fraction of the link's rate. shard.pin_memory = false leaves them
 * pageable, as does a backend or driver that refuses (logged, not an error). */
#ifndef QFT_RUN_PIN_H
#define QFT_RUN_PIN_H

#include <stddef.h>

#include "run_shard.h"

struct qft_ops;

#define QFT_RUN_PINS_MAX 8

typedef struct qft_run_pins {
    const struct qft_ops *ops;
    int n;
    void *p[QFT_RUN_PINS_MAX]; /* the locked ranges' starts, for host_unpin */
    size_t bytes;              /* locked */
    size_t refused;            /* the backend would not lock these: they stay pageable */
    char why[256];             /* the first refusal's reason */
} qft_run_pins;

/* Locks the buffers that cross between sh's host side and ops every step: under full
 * sharding with offload the shards (parameters, gradients, frozen and packed pieces),
 * otherwise m's trainable parameters and gradients. Nothing where ops has no host_pin. */
void qft_run_pins_offload(qft_run_pins *pins, const struct qft_ops *ops, const qft_run_shard *sh,
                          const qft_llama_model *m);
/* Unlocks every range; before their memory is freed. Safe on a zeroed struct. */
void qft_run_pins_release(qft_run_pins *pins);

#endif
