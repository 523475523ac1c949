/* What the files of the training loop share of a worker (contract in trainer.h). */
#include "trainer.h"

#include <math.h>
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

const ParamTensor *trainer_tied_embedding(const Trainer *t)
{
    return t->layout.pp > 1 ? gpt_find_tensor(&t->gpt, "wte") : NULL;
}

void trainer_abort_if_comm_broken(Trainer *t)
{
    Comm *groups[] = {t->world, t->dp, t->pp, t->sp, t->dpsp, t->tied,
                      t->pp_data, t->sp_data, t->dpsp_data, t->tied_data};
    for (size_t i = 0; i < sizeof(groups) / sizeof(groups[0]); i++) {
        if (!groups[i] || !comm_broken(groups[i]))
            continue;
        fprintf(stderr,
                "phalanx train: rank %d: %s; after a failure inside the communication "
                "library the other ranks may wait in that collective for ever, so this rank "
                "ends the job (MPI_Abort) instead of agreeing on the failure with them\n",
                t->rank, comm_error(groups[i]));
        comm_abort(t->world, 1);
    }
}

/* Sums `value` over the world; a failed reduction counts as a failure. */
double trainer_world_sum(Trainer *t, double value)
{
    if (comm_allreduce(t->world, &value, 1, COMM_F64) != 0) {
        fprintf(stderr, "phalanx train: rank %d: %s\n", t->rank, comm_error(t->world));
        return NAN;
    }
    return value;
}
