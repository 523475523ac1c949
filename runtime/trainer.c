/* What the files of the training loop share of a worker (contract in trainer.h). */
#include "trainer.h"

#include <stdio.h>

/* Drains the device queue; after a failed kernel, says where and returns -1. */
int trainer_device_failed(Trainer *t, const char *when)
{
    char why[512];
    if (device_ready(t->dev, why, sizeof(why)) == 0)
        return 0;
    fprintf(stderr, "phalanx train: rank %d: %s: %s\n", t->rank, when, why);
    return -1;
}
