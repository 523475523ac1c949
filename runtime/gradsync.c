/* Bucketed, overlapped gradient allreduce (contract in gradsync.h). */
#include "gradsync.h"
#include "util.h"

#include <stdio.h>
#include <time.h>


void gradsync_init(GradSync *sync, Comm *comm, const Device *dev, float *grads, size_t count,
                   size_t bucket_floats)
{
    sync->comm = comm;
    sync->dev = dev;
    sync->grads = grads;
    sync->count = count;
    sync->bucket_floats = bucket_floats > 0 ? bucket_floats : 1;
    sync->zero = NULL;
    gradsync_begin(sync);
}

/* No group (ZeRO-1 reduces by itself) or a group of one: nothing to sum. */
static bool idle(const GradSync *sync)
{
    return !sync->comm || comm_size(sync->comm) == 1;
}

void gradsync_begin(GradSync *sync)
{
    sync->launched_from = sync->count;
    sync->request_count = 0;
    sync->comm_seconds = 0.0;
    sync->error[0] = '\0';
}

static int launch(GradSync *sync, size_t from)
{
    if (sync->request_count == GRADSYNC_MAX_BUCKETS) {
        snprintf(sync->error, sizeof(sync->error), "more than %d gradient buckets",
                 GRADSYNC_MAX_BUCKETS);
        return -1;
    }
    char why[512];
    if (device_ready(sync->dev, why, sizeof(why))) {
        snprintf(sync->error, sizeof(sync->error), "gradient allreduce: %s", why);
        return -1;
    }
    size_t length = sync->launched_from - from;
    CommRequest *request = comm_iallreduce(sync->comm, sync->grads + from, length, COMM_F32);
    if (!request) {
        snprintf(sync->error, sizeof(sync->error), "gradient allreduce: %s",
                 comm_error(sync->comm));
        return -1;
    }
    sync->requests[sync->request_count++] = request;
    sync->launched_from = from;
    return 0;
}

/* Lets MPI move the buckets in flight along while the caller computes. */
static void drive_progress(GradSync *sync)
{
    bool done;
    for (int i = 0; i < sync->request_count; i++)
        comm_test(sync->requests[i], &done);
}

int gradsync_ready_from(GradSync *sync, size_t offset)
{
    if (sync->zero && zero_ready_from(sync->zero, offset)) {
        snprintf(sync->error, sizeof(sync->error), "%s", sync->zero->error);
        return -1;
    }
    if (idle(sync))
        return 0;
    if (offset < sync->launched_from && sync->launched_from - offset >= sync->bucket_floats &&
        launch(sync, offset))
        return -1;
    drive_progress(sync);
    return 0;
}

int gradsync_finish(GradSync *sync)
{
    if (idle(sync))
        return 0;
    double start = util_now_seconds();
    int status = 0;
    if (sync->launched_from > 0 && launch(sync, 0))
        status = -1;
    for (int i = 0; i < sync->request_count; i++) {
        if (comm_wait(sync->requests[i]) != 0 && status == 0) {
            snprintf(sync->error, sizeof(sync->error), "gradient allreduce: %s",
                     comm_error(sync->comm));
            status = -1;
        }
    }
    sync->request_count = 0;
    sync->comm_seconds = util_now_seconds() - start;
    return status;
}
