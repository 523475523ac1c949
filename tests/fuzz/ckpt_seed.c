/*
 * ckpt_seed: writes the tiny real checkpoint that the checkpoint harnesses
 * start from (tests/fuzz/ckpt-base): one rank, two small tensors (a 2-D and a
 * 1-D one, so both fragment kinds are there), committed with the public
 * writer in sync mode. Its files are a few KB, which keeps HDF5 parsing fast
 * enough to fuzz. Rerun it when the checkpoint format changes:
 *   build/tests/fuzz/ckpt_seed DIR, then copy DIR/step_00000001/index.h5 and
 *   rank_00000.h5 into tests/fuzz/ckpt-base/ and into corpus/fuzz_ckpt_index/
 *   and corpus/fuzz_ckpt_shard/ (scripts/fuzz --reseed-checkpoint does it).
 */
#include "checkpoint.h"
#include "ckpt_tensors.h"
#include "comm.h"

#include <stdio.h>
#include <string.h>

#define ROWS 4
#define COLS 2

static CkptRunState seed_state(void)
{
    CkptRunState s;
    memset(&s, 0, sizeof(s));
    s.step = 1;
    s.sample_cursor = 8;
    s.seed = 1337;
    s.model = (CkptModel){.vocab = ROWS, .layers = 1, .heads = 1, .dim = COLS, .seq_len = 2};
    TestParts parts = {.optimizer = "lamb", .lr = 1e-3, .beta1 = 0.9, .beta2 = 0.999,
                       .eps = 1e-6, .weight_decay = 0.01, .clip = 1.0, .schedule = "cosine",
                       .warmup_steps = 1, .total_steps = 4, .train_samples = 32,
                       .min_lr_ratio = 0.1, .decay_fraction = 0.2, .global_batch = 8,
                       .micro_batch = 8};
    test_parts_put(&s, &parts, NULL);
    s.writer = (CkptLayout){1, 1, 1, 1};
    ckpt_state_set(&s, "batch.noise_scale", 0.5);
    return s;
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: ckpt_seed DIR\nwrites the fuzzing harnesses' base checkpoint "
                        "(step 1) into DIR\n");
        return 2;
    }
    char err[1024];
    Comm *world = comm_world_init(&argc, &argv, err, sizeof(err));
    if (!world) {
        fprintf(stderr, "ckpt_seed: %s\n", err);
        return 1;
    }
    static float wte[3][ROWS * COLS], bias[3][COLS];
    for (int i = 0; i < ROWS * COLS; i++)
        wte[0][i] = 0.25f * (float)i, wte[1][i] = -0.5f, wte[2][i] = 0.125f;
    for (int i = 0; i < COLS; i++)
        bias[0][i] = 1.0f + (float)i, bias[1][i] = 0.0f, bias[2][i] = 2.0f;
    CkptTensor tensors[2] = {
        {"wte", 2, {ROWS, COLS}, wte[0], wte[1], wte[2], 0, 1, false},
        {"ln_f.bias", 1, {COLS, 0}, bias[0], bias[1], bias[2], 0, 1, false},
    };
    CkptOptions options = {.dir = argv[1], .memory_dir = "none", .every = 1, .keep = 1,
                           .mode = CKPT_SYNC};
    Checkpointer *ck = ckpt_open(&options, world, tensors, 2, err, sizeof(err));
    CkptRunState state = seed_state();
    int status = ck && ckpt_snapshot(ck, &state, err, sizeof(err)) == 0 ? 0 : 1;
    if (ck && ckpt_close(ck, true, NULL) != 0 && status == 0) {
        snprintf(err, sizeof(err), "the checkpoint was not committed (see the warning above)");
        status = 1;
    }
    if (status != 0)
        fprintf(stderr, "ckpt_seed: %s\n", err);
    comm_world_finalize(world);
    return status;
}
