/* The training loop's side of checkpoints (contract in snapshot.h). */
#include "snapshot.h"
#include "stateful.h"
#include "util.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>


/* This rank's moments on the device: whole (as large as the parameters) or,
 * under --zero 1, its shard. */
static void device_moments(const Trainer *t, float **m, float **v, size_t *floats)
{
    *m = t->sharded ? t->zero.m : t->m;
    *v = t->sharded ? t->zero.v : t->v;
    *floats = t->sharded ? t->zero.shard_floats : t->gpt.param_count;
}

/* The same moments where the checkpointer reads them: the device's own
 * buffers, or on a staged device the host mirror after the parameters. */
static void host_moments(const Trainer *t, float **m, float **v)
{
    size_t floats;
    device_moments(t, m, v, &floats);
    if (t->dev->staged) {
        *m = t->host_state + t->gpt.param_count;
        *v = *m + floats;
    }
}

/* Where tensor i's checkpoint share starts in the moments buffers. Sharded,
 * the share lies inside the rank's ZeRO piece (the same rows, or half of
 * them for the tied wte: see build_tensor_table). */
static size_t moments_share_at(const Trainer *t, int i)
{
    const ParamTensor *p = &t->gpt.tensors[i];
    size_t first, count, piece_first, piece_count;
    ckpt_tensor_share(&t->ckpt_tensors[i], &first, &count);
    if (!t->sharded)
        return p->offset + first;
    zero_piece(p, t->zero.rank, t->zero.size, &piece_first, &piece_count);
    return zero_piece_offset(&t->zero, i) + (first - piece_first);
}

/* Every rank of dp x sp holds the same tensors of its stage; the tied wte is
 * also held by the last stage, so its replicas are those of both stages:
 * replica 2j on the first stage and 2j+1 on the last, so that the shares of
 * the two rank-j copies make up rank j's ZeRO piece (rows [j*rows/R,
 * (j+1)*rows/R) = those of replicas 2j and 2j+1 of 2R), which is where a
 * sharded rank's moments of wte are.
 * On a staged device (a GPU; cpu-staged in tests) the checkpointer reads a
 * host mirror (pinned memory on a GPU) of params, m and v
 * (t->host_state, the same layout one after another; m and v as large as the
 * device's: the shard when sharded), which snapshot_after_update fills from
 * the device. */
static int build_tensor_table(Trainer *t)
{
    const GPT *gpt = &t->gpt;
    int replicas = t->layout.dp * t->layout.sp;
    int replica = t->coord.dp * t->layout.sp + t->coord.sp;
    bool tied_on_last = t->layout.pp > 1 && t->coord.pp == t->layout.pp - 1;
    float *params = gpt->params, *m, *v;
    size_t moment_floats;
    device_moments(t, &m, &v, &moment_floats);
    if (t->dev->staged) {
        size_t floats = gpt->param_count + 2 * moment_floats;
        t->host_state = device_host_alloc(t->dev, floats * sizeof(float));
        if (!t->host_state)
            return -1;
        params = t->host_state;
    }
    host_moments(t, &m, &v);
    t->ckpt_tensors = calloc((size_t)gpt->tensor_count, sizeof(CkptTensor));
    if (!t->ckpt_tensors)
        return -1;
    for (int i = 0; i < gpt->tensor_count; i++) {
        const ParamTensor *p = &gpt->tensors[i];
        CkptTensor *x = &t->ckpt_tensors[i];
        snprintf(x->name, sizeof(x->name), "%s", p->name);
        x->ndim = p->ndim;
        x->shape[0] = p->shape[0];
        x->shape[1] = p->ndim == 2 ? p->shape[1] : 0;
        bool tied = t->layout.pp > 1 && strcmp(p->name, "wte") == 0;
        x->replica_count = tied ? 2 * replicas : replicas;
        x->replica_index = tied ? 2 * replica + tied_on_last : replica;
        x->param = params + p->offset;
        x->m = m + (t->sharded ? moments_share_at(t, i) : p->offset);
        x->v = v + (t->sharded ? moments_share_at(t, i) : p->offset);
        x->moments_share_only = t->sharded;
    }
    t->ckpt_tensor_count = gpt->tensor_count;
    return 0;
}

static CkptModel ckpt_model(const GPTConfig *c)
{
    return (CkptModel){c->vocab, c->layers, c->heads, c->dim, c->seq_len};
}

/* The core of the run state and every stateful part's values (stateful.h). */
static int fill_run_state(const Trainer *t, CkptRunState *s, char *err, size_t err_len)
{
    const TrainOptions *o = &t->opt;
    memset(s, 0, sizeof(*s));
    s->step = t->steps_done;
    s->sample_cursor = (int64_t)t->cursor;
    s->seed = o->seed;
    s->model = ckpt_model(&o->model);
    s->writer = (CkptLayout){t->layout.dp, t->layout.pp, t->layout.sp, comm_size(t->world)};
    return stateful_save(t, s, err, err_len);
}

/* What must match for the resumed run to be the same run: the seed here,
 * the optimizer in its part's restore; the rest (layout, micro-batch,
 * learning rate, length) may change between runs. */
static int restore_run_state(Trainer *t, const CkptRunState *s, const char *path)
{
    const TrainOptions *o = &t->opt;
    if (s->seed != o->seed) {
        if (t->rank == 0)
            fprintf(stderr, "phalanx train: --resume: %s was written with --seed %llu, this run "
                            "has --seed %llu: the data order would differ; use --seed %llu\n",
                    path, (unsigned long long)s->seed, (unsigned long long)o->seed,
                    (unsigned long long)s->seed);
        return -1;
    }
    char why[1024];
    if (stateful_restore(t, s, why, sizeof(why)) == 0)
        return 0;
    if (t->rank == 0)
        fprintf(stderr, "phalanx train: --resume: %s %s\n", path, why);
    return -1;
}

/* A staged rank loaded into its host mirror: params, m and v go to the device. */
static int upload_state(Trainer *t)
{
    const Device *dev = t->dev;
    if (!dev->staged)
        return 0;
    float *m, *v, *host_m, *host_v;
    size_t floats;
    device_moments(t, &m, &v, &floats);
    host_moments(t, &host_m, &host_v);
    device_upload(dev, t->gpt.params, t->host_state, t->gpt.param_count * sizeof(float));
    device_upload(dev, m, host_m, floats * sizeof(float));
    device_upload(dev, v, host_v, floats * sizeof(float));
    char why[512];
    if (device_ready(dev, why, sizeof(why)) == 0)
        return 0;
    fprintf(stderr, "phalanx train: rank %d: --resume: copying the checkpoint to the %s\n",
            t->rank, why);
    return -1;
}

/* Sharded: the table to read, whose m and v are this rank's ZeRO pieces (the
 * rows of share zero.rank of zero.size; for the tied wte that is both copies'
 * shares of the writing table): the reader fills only those rows, so a
 * resume never holds the whole moments. NULL when out of memory. */
static CkptTensor *share_moments_table(const Trainer *t)
{
    int count = t->ckpt_tensor_count;
    CkptTensor *table = malloc((size_t)count * sizeof(CkptTensor));
    if (!table)
        return NULL;
    float *m, *v;
    host_moments(t, &m, &v);
    for (int i = 0; i < count; i++) {
        table[i] = t->ckpt_tensors[i];
        table[i].replica_index = t->zero.rank;
        table[i].replica_count = t->zero.size;
        table[i].m = m + zero_piece_offset(&t->zero, i);
        table[i].v = v + zero_piece_offset(&t->zero, i);
        table[i].moments_share_only = true;
    }
    return table;
}

/* `reading`: the tensor table to load (share_moments_table when sharded). */
static int resume(Trainer *t, const CkptTensor *reading)
{
    CkptModel expect = ckpt_model(&t->opt.model);
    CkptOptions options = t->opt.ckpt;
    options.check_state = stateful_check;
    CkptRunState state;
    char path[4096], err[2048];
    CkptReadBytes read;
    CkptStatus status = ckpt_resume(t->world, &options, t->opt.resume, reading,
                                    t->ckpt_tensor_count, &expect, &state, path, sizeof(path),
                                    &read, err, sizeof(err));
    if (status != CKPT_OK) {
        if (t->rank == 0)
            fprintf(stderr, "phalanx train: --resume %s: %s\n", t->opt.resume, err);
        return -1;
    }
    if (restore_run_state(t, &state, path) || upload_state(t))
        return -1;
    t->steps_done = (long)state.step;
    t->cursor = (uint64_t)state.sample_cursor;
    char line[4352];
    snprintf(line, sizeof(line),
             "resumed from %s: step %lld, %lld samples, written by dp=%d pp=%d sp=%d",
             path, (long long)state.step, (long long)state.sample_cursor, state.writer.dp,
             state.writer.pp, state.writer.sp);
    if (t->rank == 0) { /* even under --quiet: which checkpoint a run continues matters */
        fprintf(stderr, "phalanx train: %s\n", line);
        channel_send(&t->channel, "loaded %lld %llu %llu %llu", (long long)state.step,
                     (unsigned long long)read.host_memory, (unsigned long long)read.other_hosts,
                     (unsigned long long)read.durable);
        channel_send(&t->channel, "resumed %lld %s", (long long)state.step, path);
    }
    return 0;
}

/* A fresh run must not write over (or prune) another run's checkpoints. */
static int check_fresh_dir(Trainer *t)
{
    int64_t newest = t->rank == 0 ? ckpt_newest_complete(&t->opt.ckpt) : -1;
    if (comm_broadcast(t->world, &newest, 1, COMM_I64, 0) != 0)
        return -1;
    if (newest < 0)
        return 0;
    if (t->rank == 0)
        fprintf(stderr, "phalanx train: --ckpt-dir %s already holds checkpoints (the newest "
                        "complete one is step %lld); continue that run with --resume latest, "
                        "or give another --ckpt-dir\n",
                t->opt.ckpt.dir, (long long)newest);
    return -1;
}

/* The sidecar's wait for the device-to-host copy of a snapshot. */
static int wait_for_device_copy(void *context, char *err, size_t err_len)
{
    const Trainer *t = context;
    return device_snapshot_wait(t->dev, err, err_len);
}

static int open_checkpointer(Trainer *t)
{
    char err[2048];
    t->ckpt = ckpt_open(&t->opt.ckpt, t->world, t->ckpt_tensors, t->ckpt_tensor_count, err,
                        sizeof(err));
    if (t->ckpt && t->dev->staged)
        ckpt_set_source_wait(t->ckpt, wait_for_device_copy, t);
    if (t->ckpt)
        return 0;
    if (t->rank == 0)
        fprintf(stderr, "phalanx train: %s\n", err);
    return -1;
}

int snapshot_setup(Trainer *t)
{
    const TrainOptions *o = &t->opt;
    if (!o->resume && !o->ckpt.dir)
        return 0;
    // every rank allocates the same way, so all fail together or none
    CkptTensor *reading = NULL;
    if (build_tensor_table(t) ||
        !(reading = o->resume && t->sharded ? share_moments_table(t) : t->ckpt_tensors)) {
        fprintf(stderr, "phalanx train: rank %d: out of memory\n", t->rank);
        return -1;
    }
    int status = o->resume ? resume(t, reading) : o->ckpt.dir ? check_fresh_dir(t) : 0;
    if (reading != t->ckpt_tensors)
        free(reading);
    if (status)
        return -1;
    return o->ckpt.dir ? open_checkpointer(t) : 0;
}

/* On a staged device the optimizer's kernels wait for the snapshot copy on
 * the device (a GPU: an event on the compute stream); the host thread goes
 * on at once. */
double snapshot_before_update(Trainer *t)
{
    if (!t->ckpt)
        return 0.0;
    if (!t->dev->staged)
        return ckpt_wait_copied(t->ckpt);
    device_compute_after_snapshot(t->dev);
    return 0.0;
}

/* Queues the copy of this rank's share of params, m and v (the rows it
 * writes) from the device into the host mirror, after the optimizer step. */
static void copy_from_device(Trainer *t)
{
    float *m, *v, *host_m, *host_v;
    size_t floats;
    device_moments(t, &m, &v, &floats);
    host_moments(t, &host_m, &host_v);
    for (int i = 0; i < t->ckpt_tensor_count; i++) {
        size_t offset = t->gpt.tensors[i].offset, first, count;
        ckpt_tensor_share(&t->ckpt_tensors[i], &first, &count);
        if (count == 0)
            continue;
        size_t at = moments_share_at(t, i), bytes = count * sizeof(float);
        device_snapshot_copy(t->dev, t->host_state + offset + first, t->gpt.params + offset + first,
                             bytes);
        device_snapshot_copy(t->dev, host_m + at, m + at, bytes);
        device_snapshot_copy(t->dev, host_v + at, v + at, bytes);
    }
}

double snapshot_after_update(Trainer *t, bool last)
{
    if (!t->ckpt || !(last || ckpt_due(t->ckpt, t->steps_done)))
        return 0.0;
    CkptRunState state;
    char err[512];
    if (fill_run_state(t, &state, err, sizeof(err)) != 0) {
        fprintf(stderr, "phalanx train: rank %d: checkpoint of step %ld: %s\n", t->rank,
                t->steps_done, err);
        return 0.0;
    }
    double start = util_now_seconds();
    if (t->dev->staged) {
        ckpt_wait_copied(t->ckpt); /* the sidecar is done with the mirror's last version */
        copy_from_device(t);
    }
    // the last checkpoint of a run (its end, a stop) reaches tier 2 whatever the cadence
    int handed = last ? ckpt_snapshot_durable(t->ckpt, &state, err, sizeof(err))
                      : ckpt_snapshot(t->ckpt, &state, err, sizeof(err));
    if (handed != 0)
        fprintf(stderr, "phalanx train: rank %d: checkpoint of step %ld: %s\n", t->rank,
                t->steps_done, err);
    return util_now_seconds() - start;
}

void snapshot_describe(Trainer *t, char *out, size_t len)
{
    if (!t->ckpt) {
        snprintf(out, len, "ckpt off");
        return;
    }
    long dir, memory;
    snapshot_committed(t, &dir, &memory);
    if (dir < 0 && memory < 0)
        snprintf(out, len, "ckpt none yet");
    else if (dir < 0)
        snprintf(out, len, "ckpt t1 %ld", memory);
    else if (memory > dir)
        snprintf(out, len, "ckpt %ld (t1 %ld)", dir, memory);
    else
        snprintf(out, len, "ckpt %ld", dir);
}

void snapshot_committed(Trainer *t, long *tier2, long *tier1)
{
    *tier2 = *tier1 = -1;
    if (!t->ckpt)
        return;
    CkptStats s = ckpt_stats(t->ckpt);
    *tier2 = (long)s.last_step[1];
    *tier1 = (long)s.last_step[0];
}

int snapshot_close(Trainer *t, bool success)
{
    int status = 0;
    if (t->ckpt) {
        CkptStats stats;
        bool lost = ckpt_close(t->ckpt, success, &stats) != 0;
        if (lost && stats.last_step[1] < 0) {
            status = -1; // the same on every rank: commits are collective
            if (t->rank == 0)
                fprintf(stderr, "phalanx train: error: this run committed no checkpoint to "
                                "--ckpt-dir %s (see the warnings above): its state is not "
                                "saved\n",
                        t->opt.ckpt.dir);
        } else if (lost && t->rank == 0) {
            fprintf(stderr, "phalanx train: warning: the last checkpoint did not reach "
                            "--ckpt-dir %s; the newest there is step %lld\n",
                    t->opt.ckpt.dir, (long long)stats.last_step[1]);
        }
        t->ckpt = NULL;
    }
    free(t->ckpt_tensors);
    t->ckpt_tensors = NULL;
    if (t->host_state)
        device_host_free(t->dev, t->host_state);
    t->host_state = NULL;
    return status;
}
