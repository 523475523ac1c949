/* Command line of `phalanx train` (contract in options.h). */
#include "options.h"

#include "modelfile.h"
#include "runtime.h"

#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

void options_usage(FILE *out)
{
    fputs(
        "usage: phalanx train --data SHARDS [options]\n"
        "\n"
        "Trains a GPT-2 style model on one rank (CPU). SHARDS is a comma-separated\n"
        "list of token shard files or glob patterns (llm.c format, see\n"
        "`phalanx data prepare`).\n"
        "\n"
        "Data:\n"
        "  --data SHARDS          training shards (required)\n"
        "  --val-data SHARDS      validation shards (enables val_loss)\n"
        "  --eval-every N         validation every N steps and at the end (default 0: end only)\n"
        "  --eval-batches N       micro-batches of validation windows per evaluation (default 8)\n"
        "Model:\n"
        "  --vocab N              vocabulary size (default 256: byte tokens)\n"
        "  --layers N             transformer blocks (default 4)\n"
        "  --heads N              attention heads (default 4)\n"
        "  --dim N                width; divisible by --heads (default 128)\n"
        "  --seq-len N            tokens per sequence (default 128)\n"
        "Batch and steps:\n"
        "  --micro-batch N        sequences per forward/backward pass (default 8)\n"
        "  --global-batch N       sequences per optimizer step; a multiple of --micro-batch;\n"
        "                         the accumulation steps are derived (default: micro-batch)\n"
        "  --steps N              optimizer steps (default 100)\n"
        "  --seed N               seed of every random draw (default 1337)\n"
        "Optimizer:\n"
        "  --optim lamb|adamw     optimizer (default lamb)\n"
        "  --lr X                 peak learning rate (default 1e-2 for lamb, 1e-3 for adamw)\n"
        "  --weight-decay X       decoupled weight decay (default 0.01)\n"
        "  --beta1 X, --beta2 X   moment decay rates (default 0.9, 0.999)\n"
        "  --eps X                denominator epsilon (default 1e-6 lamb, 1e-8 adamw)\n"
        "  --clip X               clip the global gradient norm to X; 0 = off (default 1.0)\n"
        "  --decay-all            weight decay and layer adaptation for biases and LayerNorm too\n"
        "Schedule (measured in samples, so it follows the batch):\n"
        "  --schedule KIND        cosine, linear, constant or wsd (default cosine)\n"
        "  --warmup N             warm-up steps (default 0)\n"
        "  --min-lr-ratio X       final LR as a fraction of the peak (default 0.1)\n"
        "  --decay-fraction X     wsd: share of the run spent decaying (default 0.2)\n"
        "Adaptive batch (the global batch grows when the gradient noise scale asks for it):\n"
        "  --batch-policy fixed|adaptive  (default fixed)\n"
        "  --max-global-batch N   upper bound; a multiple of micro-batch x dp (default: the\n"
        "                         start --global-batch)\n"
        "  --batch-quantum N      growth step in samples; a multiple of micro-batch x dp\n"
        "                         (default: the start --global-batch)\n"
        "  --batch-check N        estimate the noise scale every N steps (default 5)\n"
        "  --batch-eta X          norm-test tolerance: grow while batch < B_noise / X^2\n"
        "                         (default 1.0)\n"
        "  --batch-ema X          EMA decay of the estimates (default 0.9)\n"
        "  --lr-scaling none|sqrt|linear  LR follows batch / start batch (default sqrt)\n"
        "  --train-samples N      run length in samples; the run ends there or at --steps\n"
        "                         (default: steps x start global batch)\n"
        "Parallel layout (world = dp x pp x sp ranks, started by `phalanx run`, mpirun or srun):\n"
        "  --dp N, --pp N, --sp N data-parallel replicas, pipeline stages, sequence-parallel\n"
        "                         ranks (an axis not given is 1)\n"
        "  --pp-split N,N,...     layers per pipeline stage (default: even, earlier stages\n"
        "                         take the remainder)\n"
        "  --layout auto|DxPxS    auto: the most data-parallel layout that fits (the default\n"
        "                         when no axis is given); or all three axes, e.g. 2x1x1\n"
        "Checkpoints (the same files in tier 1, node memory, and tier 2, --ckpt-dir):\n"
        "  --ckpt-dir DIR         write checkpoints to DIR (created when missing); a fresh\n"
        "                         run refuses a DIR that already holds checkpoints\n"
        "  --ckpt-every N         checkpoint after every N-th step and after the last\n"
        "                         (default 100); a stop (Ctrl-C, SIGTERM) also checkpoints\n"
        "  --ckpt-durable-every M of those, the ones after every M-th step also go to\n"
        "                         --ckpt-dir (a multiple of N; default: all of them); the\n"
        "                         others stay in tier 1, and the last one and a stop's\n"
        "                         always reach --ckpt-dir\n"
        "  --ckpt-replicate auto|on|off  keep each rank's tier-1 shard also in the memory\n"
        "                         of a buddy rank on another host, so that a lost host is\n"
        "                         recovered from memory (auto, the default: when the ranks\n"
        "                         span several hosts and tier 1 is on; on: the same, and\n"
        "                         says so when they are on one host; off: never)\n"
        "  --ckpt-keep N          complete checkpoints kept per tier (default 2)\n"
        "  --ckpt-mode async|sync async: a sidecar thread copies and writes while training\n"
        "                         goes on; sync: training waits for each (default async)\n"
        "  --ckpt-memory-dir DIR  tier 1's directory (default /dev/shm/phalanx-<hash of\n"
        "                         --ckpt-dir>); none: no tier 1\n"
        "  --resume latest|PATH   continue a run in any layout: latest is the newest complete\n"
        "                         checkpoint of --ckpt-dir (or its tier 1); PATH a step\n"
        "                         directory\n"
        "  --init-from FILE       start from these weights (a Hugging Face GPT-2 .safetensors,\n"
        "                         an llm.c model file or a checkpoint) with fresh optimizer\n"
        "                         state; the model's shape comes from FILE\n"
        "Output:\n"
        "  --metrics FILE         one JSON object per step: step, loss, lr, global_batch,\n"
        "                         tokens_per_s, grad_norm, val_loss (when computed; null\n"
        "                         for a value that is not finite). A fresh run refuses an\n"
        "                         existing FILE; a resumed run (--resume) appends to it\n"
        "  --metrics-overwrite    a fresh run replaces an existing --metrics FILE\n"
        "  --metrics-append       a fresh run appends to an existing --metrics FILE (wins\n"
        "                         over --metrics-overwrite; `phalanx run` relaunches use it)\n"
        "  --dump-params FILE     write the final parameters to FILE (float32) and\n"
        "                         FILE.json (names, shapes, offsets), replacing them\n"
        "  --quiet                no per-step progress lines\n"
        "  Output files must be regular files (or new ones), not links, FIFOs or devices,\n"
        "  and outside the checkpoint directories; a write error ends the run with 1.\n"
        "Memory:\n"
        "  --recompute none|attn|full  activation recomputation (default none): attn drops\n"
        "                         the attention probabilities and recomputes them in the\n"
        "                         backward pass; full keeps only each layer's input and\n"
        "                         reruns the layer's forward in its backward. Results are\n"
        "                         bit-identical; memory falls, time per step rises\n"
        "  --zero 0|1             1: ZeRO-1, the optimizer state (m, v) and its update are\n"
        "                         sharded over the dp x sp replicas: gradients are\n"
        "                         reduce-scattered, each rank updates its shard, parameters\n"
        "                         are all-gathered (default 0). With dp x sp = 1 it has no\n"
        "                         effect (a warning). cpu devices. Each rank checkpoints\n"
        "                         its shard of m and v; a checkpoint resumes with or\n"
        "                         without --zero, in any layout\n"
        "  --grad-bucket N        floats per gradient bucket (default 1048576, 4 MB): each\n"
        "                         bucket's allreduce (or ZeRO-1 reduce-scatter) starts as\n"
        "                         soon as the backward pass has finished it\n"
        "Device:\n"
        "  --device cpu|cuda      where the model runs (default cpu). cuda: one GPU per rank,\n"
        "                         the node-local rank's (OMPI_COMM_WORLD_LOCAL_RANK or\n"
        "                         SLURM_LOCALID); tensors between ranks go over NCCL\n"
        "  --tf32                 cuda: TF32 tensor cores for matrix products (faster; results\n"
        "                         differ from fp32 by TF32's 10-bit mantissa)\n"
        "                         (--device cpu-staged, for tests: the cpu kernels with the\n"
        "                         GPU's copies and checkpoint mirror, bit-identical to cpu)\n"
        "  --precision fp32|bf16  matrix products (default fp32). bf16: each product's\n"
        "                         inputs rounded to bfloat16, sums in fp32; parameters,\n"
        "                         optimizer state, gradients and their reduction, LayerNorm,\n"
        "                         softmax and the loss stay fp32, and so do checkpoints (a\n"
        "                         run resumes in either precision). No loss scaling: bf16\n"
        "                         has fp32's exponent range. cpu: needs AVX512-BF16 and a\n"
        "                         build with oneDNN; cuda: cuBLAS bf16 (cublasGemmEx)\n"
        "  --threads N            CPU threads for OpenMP and OpenBLAS, at most 1024\n"
        "                         (default: all cores)\n"
        "  -h, --help             this text\n"
        "\n"
        "Numbers are checked: each flag says its range when a value is outside it.\n"
        "A stop (Ctrl-C, SIGTERM, or `phalanx run` stopping the job) ends the run at the\n"
        "next step boundary, or at once between micro-batches of a long step or\n"
        "evaluation (the unfinished step is not applied).\n"
        "\n"
        "Exit status: 0 the run finished; 1 it failed while running (data, memory,\n"
        "checkpoint, an output file, a non-finite loss, another rank); 2 bad options;\n"
        "130 stopped by SIGINT, 143 by SIGTERM or a stop from `phalanx run`.\n",
        out);
}

enum {
    OPT_DATA = 256, OPT_VAL_DATA, OPT_EVAL_EVERY, OPT_EVAL_BATCHES, OPT_VOCAB, OPT_LAYERS,
    OPT_HEADS, OPT_DIM, OPT_SEQ_LEN, OPT_MICRO_BATCH, OPT_GLOBAL_BATCH, OPT_STEPS, OPT_SEED,
    OPT_OPTIM, OPT_LR, OPT_WEIGHT_DECAY, OPT_BETA1, OPT_BETA2, OPT_EPS, OPT_CLIP,
    OPT_DECAY_ALL, OPT_SCHEDULE, OPT_WARMUP, OPT_MIN_LR_RATIO, OPT_DECAY_FRACTION,
    OPT_METRICS, OPT_DUMP_PARAMS, OPT_THREADS, OPT_QUIET, OPT_DP, OPT_PP, OPT_SP, OPT_LAYOUT,
    OPT_PP_SPLIT, OPT_BATCH_POLICY, OPT_MAX_GLOBAL_BATCH, OPT_BATCH_QUANTUM, OPT_BATCH_CHECK,
    OPT_BATCH_ETA, OPT_BATCH_EMA, OPT_LR_SCALING, OPT_TRAIN_SAMPLES, OPT_CKPT_DIR,
    OPT_CKPT_EVERY, OPT_CKPT_KEEP, OPT_CKPT_MODE, OPT_CKPT_MEMORY_DIR, OPT_CKPT_DURABLE_EVERY, OPT_CKPT_REPLICATE, OPT_RESUME, OPT_INIT_FROM, OPT_DEVICE,
    OPT_TF32, OPT_PRECISION, OPT_METRICS_OVERWRITE, OPT_METRICS_APPEND, OPT_RECOMPUTE, OPT_ZERO,
    OPT_GRAD_BUCKET,
};

static const struct option long_options[] = {
    {"data", required_argument, NULL, OPT_DATA},
    {"val-data", required_argument, NULL, OPT_VAL_DATA},
    {"eval-every", required_argument, NULL, OPT_EVAL_EVERY},
    {"eval-batches", required_argument, NULL, OPT_EVAL_BATCHES},
    {"vocab", required_argument, NULL, OPT_VOCAB},
    {"layers", required_argument, NULL, OPT_LAYERS},
    {"heads", required_argument, NULL, OPT_HEADS},
    {"dim", required_argument, NULL, OPT_DIM},
    {"seq-len", required_argument, NULL, OPT_SEQ_LEN},
    {"micro-batch", required_argument, NULL, OPT_MICRO_BATCH},
    {"global-batch", required_argument, NULL, OPT_GLOBAL_BATCH},
    {"steps", required_argument, NULL, OPT_STEPS},
    {"seed", required_argument, NULL, OPT_SEED},
    {"optim", required_argument, NULL, OPT_OPTIM},
    {"lr", required_argument, NULL, OPT_LR},
    {"weight-decay", required_argument, NULL, OPT_WEIGHT_DECAY},
    {"beta1", required_argument, NULL, OPT_BETA1},
    {"beta2", required_argument, NULL, OPT_BETA2},
    {"eps", required_argument, NULL, OPT_EPS},
    {"clip", required_argument, NULL, OPT_CLIP},
    {"decay-all", no_argument, NULL, OPT_DECAY_ALL},
    {"schedule", required_argument, NULL, OPT_SCHEDULE},
    {"warmup", required_argument, NULL, OPT_WARMUP},
    {"min-lr-ratio", required_argument, NULL, OPT_MIN_LR_RATIO},
    {"decay-fraction", required_argument, NULL, OPT_DECAY_FRACTION},
    {"metrics", required_argument, NULL, OPT_METRICS},
    {"metrics-overwrite", no_argument, NULL, OPT_METRICS_OVERWRITE},
    {"metrics-append", no_argument, NULL, OPT_METRICS_APPEND},
    {"dump-params", required_argument, NULL, OPT_DUMP_PARAMS},
    {"threads", required_argument, NULL, OPT_THREADS},
    {"quiet", no_argument, NULL, OPT_QUIET},
    {"dp", required_argument, NULL, OPT_DP},
    {"pp", required_argument, NULL, OPT_PP},
    {"sp", required_argument, NULL, OPT_SP},
    {"layout", required_argument, NULL, OPT_LAYOUT},
    {"pp-split", required_argument, NULL, OPT_PP_SPLIT},
    {"batch-policy", required_argument, NULL, OPT_BATCH_POLICY},
    {"max-global-batch", required_argument, NULL, OPT_MAX_GLOBAL_BATCH},
    {"batch-quantum", required_argument, NULL, OPT_BATCH_QUANTUM},
    {"batch-check", required_argument, NULL, OPT_BATCH_CHECK},
    {"batch-eta", required_argument, NULL, OPT_BATCH_ETA},
    {"batch-ema", required_argument, NULL, OPT_BATCH_EMA},
    {"lr-scaling", required_argument, NULL, OPT_LR_SCALING},
    {"train-samples", required_argument, NULL, OPT_TRAIN_SAMPLES},
    {"ckpt-dir", required_argument, NULL, OPT_CKPT_DIR},
    {"ckpt-every", required_argument, NULL, OPT_CKPT_EVERY},
    {"ckpt-keep", required_argument, NULL, OPT_CKPT_KEEP},
    {"ckpt-mode", required_argument, NULL, OPT_CKPT_MODE},
    {"ckpt-memory-dir", required_argument, NULL, OPT_CKPT_MEMORY_DIR},
    {"ckpt-durable-every", required_argument, NULL, OPT_CKPT_DURABLE_EVERY},
    {"ckpt-replicate", required_argument, NULL, OPT_CKPT_REPLICATE},
    {"resume", required_argument, NULL, OPT_RESUME},
    {"init-from", required_argument, NULL, OPT_INIT_FROM},
    {"device", required_argument, NULL, OPT_DEVICE},
    {"tf32", no_argument, NULL, OPT_TF32},
    {"precision", required_argument, NULL, OPT_PRECISION},
    {"recompute", required_argument, NULL, OPT_RECOMPUTE},
    {"zero", required_argument, NULL, OPT_ZERO},
    {"grad-bucket", required_argument, NULL, OPT_GRAD_BUCKET},
    {"help", no_argument, NULL, 'h'},
    {NULL, 0, NULL, 0},
};

/* Upper limits of the numeric flags. Each is far beyond a real run and keeps
 * what the value feeds inside its type, or the process alive. */
_Static_assert(sizeof(long) >= 8, "step and sample counts are longs of 64 bits");
#define MAX_STEPS (1L << 32)   /* times MAX_BATCH: sample counts stay below 2^62 */
#define MAX_SAMPLES (1L << 62) /* sample cursors are 64-bit; room for the last batch */
enum {
    MAX_BATCH = 1 << 30, /* sequences in a global batch (and its maximum and quantum) */
    MAX_MICRO_BATCH = 1 << 20,
    MAX_SEQ_LEN = 1 << 20,
    MAX_DIM = 1 << 16,
    MAX_HEADS = 1 << 12,
    MAX_LAYERS = 1 << 12,
    MAX_VOCAB = 65536, /* tokens are uint16 in the shards */
    MAX_DP = 1 << 16,  /* with MAX_SP and MAX_STAGES: dp x pp x sp fits an int */
    MAX_SP = 1 << 8,
    MAX_KEEP = 1 << 20,
    /* Every OpenMP thread gets its own stack: --threads 100000 overflowed
     * libgomp and crashed; no node has anywhere near 1024 cores per rank. */
    MAX_THREADS = 1024,
};

static int bad_value(const char *flag, const char *text, const char *expected)
{
    fprintf(stderr, "phalanx train: --%s: '%s' is not %s\n", flag, text, expected);
    return -1;
}

/* Digits with an optional leading '-': strtol alone would also take leading
 * blanks, a '+' and, in some locales, more. */
static bool is_decimal_integer(const char *text)
{
    const char *digits = text[0] == '-' ? text + 1 : text;
    return *digits && strspn(digits, "0123456789") == strlen(digits);
}

int parse_flag_long(const char *prog, const char *flag, const char *text, long min, long max,
                    long *out)
{
    if (!is_decimal_integer(text)) {
        fprintf(stderr, "%s: %s: '%s' is not an integer\n", prog, flag, text);
        return -1;
    }
    errno = 0;
    long value = strtol(text, NULL, 10);
    if (errno == ERANGE || value < min || value > max) {
        fprintf(stderr, "%s: %s is %s: it must be between %ld and %ld\n", prog, flag, text,
                min, max);
        return -1;
    }
    *out = value;
    return 0;
}

int parse_flag_int(const char *prog, const char *flag, const char *text, int min, int max,
                   int *out)
{
    long value;
    if (parse_flag_long(prog, flag, text, min, max, &value))
        return -1;
    *out = (int)value;
    return 0;
}

int parse_flag_double(const char *prog, const char *flag, const char *text, double min,
                      double max, double *out)
{
    char *end;
    errno = 0;
    double value = strtod(text, &end);
    if (errno == ERANGE || end == text || *end != '\0' || !isfinite(value)) {
        fprintf(stderr, "%s: %s: '%s' is not a finite number\n", prog, flag, text);
        return -1;
    }
    if (value < min || value > max) {
        fprintf(stderr, "%s: %s is %s: it must be between %g and %g\n", prog, flag, text, min,
                max);
        return -1;
    }
    *out = value;
    return 0;
}

/* The train command's flags go through the shared parsers; `flag` is the
 * long name without its dashes, as in the option table. */
static int parse_long(const char *flag, const char *text, long min, long max, long *out)
{
    char name[64];
    snprintf(name, sizeof(name), "--%s", flag);
    return parse_flag_long("phalanx train", name, text, min, max, out);
}

static int parse_int(const char *flag, const char *text, int min, int max, int *out)
{
    char name[64];
    snprintf(name, sizeof(name), "--%s", flag);
    return parse_flag_int("phalanx train", name, text, min, max, out);
}

static int parse_double(const char *flag, const char *text, double min, double max,
                        double *out)
{
    char name[64];
    snprintf(name, sizeof(name), "--%s", flag);
    return parse_flag_double("phalanx train", name, text, min, max, out);
}

static int parse_float(const char *flag, const char *text, double min, double max, float *out)
{
    double value;
    if (parse_double(flag, text, min, max, &value))
        return -1;
    *out = (float)value;
    return 0;
}

/* "3,3,2": layers per pipeline stage (checked against the layout later). */
static int parse_split(const char *text, TrainOptions *o)
{
    char copy[512];
    snprintf(copy, sizeof(copy), "%s", text);
    o->pp_split_count = 0;
    for (char *save, *item = strtok_r(copy, ",", &save); item; item = strtok_r(NULL, ",", &save)) {
        if (o->pp_split_count == MAX_STAGES) {
            fprintf(stderr, "phalanx train: --pp-split: more than %d stages\n", MAX_STAGES);
            return -1;
        }
        long value;
        if (parse_long("pp-split", item, 0, MAX_LAYERS, &value))
            return -1;
        o->pp_split[o->pp_split_count++] = (int)value;
    }
    if (o->pp_split_count == 0)
        return bad_value("pp-split", text, "a list of layer counts such as 3,3,2");
    return 0;
}

/* The axes of --layout DPxPPxSP within the limits of --dp, --pp and --sp. */
static int check_layout_axes(const char *text, Layout l)
{
    if (l.dp <= MAX_DP && l.pp <= MAX_STAGES && l.sp <= MAX_SP)
        return 0;
    fprintf(stderr, "phalanx train: --layout is %s: dp must be between 1 and %d, pp between 1 "
                    "and %d, sp between 1 and %d\n", text, MAX_DP, MAX_STAGES, MAX_SP);
    return -1;
}

static void set_defaults(TrainOptions *o)
{
    memset(o, 0, sizeof(*o));
    o->model = (GPTConfig){.vocab = 256, .layers = 4, .heads = 4, .dim = 128, .seq_len = 128};
    o->micro_batch = 8;
    o->steps = 100;
    o->seed = 1337;
    o->optim = optim_default_config(OPTIM_LAMB);
    o->lr = NAN; /* default depends on the optimizer */
    o->clip = 1.0f;
    o->schedule = SCHEDULE_COSINE;
    o->min_lr_ratio = 0.1;
    o->decay_fraction = 0.2;
    o->eval_batches = 8;
    o->layout = (Layout){1, 1, 1};
    o->layout_auto = true;
    o->batch_check = 5;
    o->batch_eta = 1.0;
    o->batch_ema = 0.9;
    o->lr_scaling = LR_SCALING_SQRT;
    o->ckpt = (CkptOptions){.every = 100, .keep = 2, .mode = CKPT_ASYNC};
    o->device = "cpu";
    // 4 MB: the per-message cost of MPI stays small, and buckets still overlap
    o->grad_bucket = 1 << 20;
}

/* Applies one option; returns 0, or -1 after printing why the value is bad. */
static int apply_option(TrainOptions *o, int code, const char *arg, double *beta_eps_wd,
                        bool *optim_set)
{
    long value;
    switch (code) {
    case OPT_DATA: o->data = arg; return 0;
    case OPT_VAL_DATA: o->val_data = arg; return 0;
    case OPT_METRICS: o->metrics_path = arg; return 0;
    case OPT_METRICS_OVERWRITE: o->metrics_overwrite = true; return 0;
    case OPT_METRICS_APPEND: o->metrics_append = true; return 0;
    case OPT_DUMP_PARAMS: o->dump_params_path = arg; return 0;
    case OPT_DECAY_ALL: o->optim.decay_all = true; return 0;
    case OPT_QUIET: o->quiet = true; return 0;
    case OPT_EVAL_EVERY: return parse_long("eval-every", arg, 0, MAX_STEPS, &o->eval_every);
    case OPT_EVAL_BATCHES: return parse_int("eval-batches", arg, 1, INT_MAX, &o->eval_batches);
    case OPT_VOCAB: o->shape_given |= 1u << 0; return parse_int("vocab", arg, 2, MAX_VOCAB, &o->model.vocab);
    case OPT_LAYERS: o->shape_given |= 1u << 1; return parse_int("layers", arg, 1, MAX_LAYERS, &o->model.layers);
    case OPT_HEADS: o->shape_given |= 1u << 2; return parse_int("heads", arg, 1, MAX_HEADS, &o->model.heads);
    case OPT_DIM: o->shape_given |= 1u << 3; return parse_int("dim", arg, 1, MAX_DIM, &o->model.dim);
    case OPT_SEQ_LEN: o->shape_given |= 1u << 4; return parse_int("seq-len", arg, 1, MAX_SEQ_LEN, &o->model.seq_len);
    case OPT_MICRO_BATCH:
        return parse_int("micro-batch", arg, 1, MAX_MICRO_BATCH, &o->micro_batch);
    case OPT_GLOBAL_BATCH:
        return parse_int("global-batch", arg, 1, MAX_BATCH, &o->global_batch);
    case OPT_STEPS: return parse_long("steps", arg, 1, MAX_STEPS, &o->steps);
    case OPT_WARMUP: return parse_long("warmup", arg, 0, MAX_STEPS, &o->warmup);
    case OPT_THREADS: return parse_int("threads", arg, 1, MAX_THREADS, &o->threads);
    case OPT_DP: o->layout_auto = false; return parse_int("dp", arg, 1, MAX_DP, &o->layout.dp);
    case OPT_PP:
        o->layout_auto = false;
        return parse_int("pp", arg, 1, MAX_STAGES, &o->layout.pp);
    case OPT_SP: o->layout_auto = false; return parse_int("sp", arg, 1, MAX_SP, &o->layout.sp);
    case OPT_PP_SPLIT: return parse_split(arg, o);
    case OPT_BATCH_POLICY:
        if (strcmp(arg, "fixed") != 0 && strcmp(arg, "adaptive") != 0)
            return bad_value("batch-policy", arg, "a policy (fixed or adaptive)");
        o->batch_adaptive = strcmp(arg, "adaptive") == 0;
        return 0;
    case OPT_MAX_GLOBAL_BATCH:
        return parse_int("max-global-batch", arg, 1, MAX_BATCH, &o->max_global_batch);
    case OPT_BATCH_QUANTUM:
        return parse_int("batch-quantum", arg, 1, MAX_BATCH, &o->batch_quantum);
    case OPT_BATCH_CHECK: return parse_long("batch-check", arg, 1, MAX_STEPS, &o->batch_check);
    case OPT_BATCH_ETA: return parse_double("batch-eta", arg, -1e30, 1e30, &o->batch_eta);
    case OPT_BATCH_EMA: return parse_double("batch-ema", arg, 0.0, 0.999999, &o->batch_ema);
    case OPT_TRAIN_SAMPLES:
        return parse_long("train-samples", arg, 1, MAX_SAMPLES, &o->train_samples);
    case OPT_CKPT_DIR: o->ckpt.dir = arg; return 0;
    case OPT_CKPT_MEMORY_DIR: o->ckpt.memory_dir = arg; return 0;
    case OPT_RESUME: o->resume = arg; return 0;
    case OPT_INIT_FROM: o->init_from = arg; return 0;
    case OPT_TF32: o->tf32 = true; return 0;
    case OPT_PRECISION:
        if (strcmp(arg, "fp32") != 0 && strcmp(arg, "bf16") != 0)
            return bad_value("precision", arg, "fp32 or bf16");
        o->bf16 = strcmp(arg, "bf16") == 0;
        return 0;
    case OPT_RECOMPUTE:
        if (!recompute_parse(arg, &o->recompute))
            return bad_value("recompute", arg, "a mode (none, attn or full)");
        return 0;
    case OPT_GRAD_BUCKET: return parse_int("grad-bucket", arg, 1, 1 << 30, &o->grad_bucket);
    case OPT_ZERO:
        if (parse_int("zero", arg, 0, 3, &o->zero))
            return -1;
        if (o->zero < 2)
            return 0;
        fprintf(stderr, "phalanx train: --zero %d is not implemented: Phalanx shards the "
                        "optimizer state (stage 1) but not gradients (2) or parameters (3); "
                        "use --zero 1\n", o->zero);
        return -1;
    case OPT_DEVICE:
        if (strcmp(arg, "cpu") != 0 && strcmp(arg, "cuda") != 0 && strcmp(arg, "cpu-staged") != 0)
            return bad_value("device", arg, "a device (cpu or cuda)");
        o->device = arg;
        return 0;
    case OPT_CKPT_EVERY: return parse_long("ckpt-every", arg, 1, MAX_STEPS, &o->ckpt.every);
    case OPT_CKPT_DURABLE_EVERY:
        return parse_long("ckpt-durable-every", arg, 1, MAX_STEPS, &o->ckpt.durable_every);
    case OPT_CKPT_REPLICATE:
        if (!ckpt_replicate_parse(arg, &o->ckpt.replicate))
            return bad_value("ckpt-replicate", arg, "auto, on or off");
        return 0;
    case OPT_CKPT_KEEP: return parse_int("ckpt-keep", arg, 1, MAX_KEEP, &o->ckpt.keep);
    case OPT_CKPT_MODE:
        if (!ckpt_mode_parse(arg, &o->ckpt.mode))
            return bad_value("ckpt-mode", arg, "a mode (async or sync)");
        return 0;
    case OPT_LR_SCALING:
        if (!lr_scaling_parse(arg, &o->lr_scaling))
            return bad_value("lr-scaling", arg, "a rule (none, sqrt or linear)");
        return 0;
    case OPT_LAYOUT:
        if (!layout_parse(arg, &o->layout, &o->layout_auto))
            return bad_value("layout", arg, "a layout (auto, or DPxPPxSP such as 2x2x1)");
        return check_layout_axes(arg, o->layout);
    case OPT_SEED:
        if (parse_long("seed", arg, 0, LONG_MAX, &value))
            return -1;
        o->seed = (uint64_t)value;
        return 0;
    case OPT_OPTIM:
        if (!optim_kind_parse(arg, &o->optim.kind))
            return bad_value("optim", arg, "an optimizer (lamb or adamw)");
        *optim_set = true;
        return 0;
    case OPT_SCHEDULE:
        if (!schedule_kind_parse(arg, &o->schedule))
            return bad_value("schedule", arg, "a schedule (cosine, linear, constant, wsd)");
        return 0;
    case OPT_LR: return parse_double("lr", arg, 0.0, 1e30, &o->lr);
    case OPT_MIN_LR_RATIO: return parse_double("min-lr-ratio", arg, 0.0, 1.0, &o->min_lr_ratio);
    case OPT_DECAY_FRACTION:
        return parse_double("decay-fraction", arg, 1e-9, 1.0, &o->decay_fraction);
    case OPT_CLIP: return parse_float("clip", arg, 0.0, 1e30, &o->clip);
    case OPT_BETA1: return parse_double("beta1", arg, 0.0, 0.999999, &beta_eps_wd[0]);
    case OPT_BETA2: return parse_double("beta2", arg, 0.0, 0.999999999, &beta_eps_wd[1]);
    case OPT_EPS: return parse_double("eps", arg, 1e-30, 1.0, &beta_eps_wd[2]);
    case OPT_WEIGHT_DECAY: return parse_double("weight-decay", arg, 0.0, 10.0, &beta_eps_wd[3]);
    }
    return -1;
}

/* The adaptive-batch rules that do not depend on the layout. */
static int check_batch_options(TrainOptions *o)
{
    if (o->max_global_batch == 0)
        o->max_global_batch = o->global_batch;
    if (o->batch_quantum == 0)
        o->batch_quantum = o->global_batch;
    if (o->train_samples == 0)
        o->train_samples = o->steps * (long)o->global_batch;
    if (o->max_global_batch < o->global_batch) {
        fprintf(stderr, "phalanx train: --max-global-batch %d is below the start --global-batch "
                        "%d: the batch never shrinks; raise the maximum\n",
                o->max_global_batch, o->global_batch);
        return -1;
    }
    if (!(o->batch_eta > 0)) {
        fprintf(stderr, "phalanx train: --batch-eta %g must be > 0: it is the norm test's "
                        "tolerance (grow while batch < noise scale / eta^2)\n", o->batch_eta);
        return -1;
    }
    return 0;
}

/* Rules that involve several options. */
static int check_combination(TrainOptions *o)
{
    char err[512];
    if (!o->data) {
        fprintf(stderr, "phalanx train: --data is required: give the training shards, "
                        "for example --data 'data/fortunes/train_*.bin'\n");
        return -1;
    }
    if (gpt_config_check(&o->model, err, sizeof(err)) != 0) {
        fprintf(stderr, "phalanx train: %s\n", err);
        return -1;
    }
    if (o->global_batch == 0)
        o->global_batch = o->micro_batch;
    if (o->global_batch % o->micro_batch != 0) {
        fprintf(stderr,
                "phalanx train: --global-batch %d is not a multiple of --micro-batch %d: "
                "a step is a whole number of micro-batches; try --global-batch %d\n",
                o->global_batch, o->micro_batch,
                (o->global_batch / o->micro_batch + 1) * o->micro_batch);
        return -1;
    }
    if (o->tf32 && strcmp(o->device, "cuda") != 0) {
        fprintf(stderr, "phalanx train: --tf32 needs --device cuda: TF32 is a GPU tensor-core "
                        "mode; drop --tf32 or add --device cuda\n");
        return -1;
    }
    if (o->zero && strcmp(o->device, "cuda") == 0) {
        fprintf(stderr, "phalanx train: --zero 1 is not implemented for --device cuda yet "
                        "(its optimizer kernels update whole tensors); use --zero 0\n");
        return -1;
    }
    if (!device_built(o->device, err, sizeof(err))) {
        fprintf(stderr, "phalanx train: %s\n", err);
        return -1;
    }
    if (o->resume && strcmp(o->resume, "latest") == 0 && !o->ckpt.dir) {
        fprintf(stderr, "phalanx train: --resume latest needs --ckpt-dir: it looks for the "
                        "newest checkpoint there (and in its tier 1); or give a path\n");
        return -1;
    }
    return check_batch_options(o);
}

/* --init-from: the model's shape is the file's; a shape flag that says
 * otherwise is refused with both values. */
static int adopt_file_shape(TrainOptions *o)
{
    GPTConfig file;
    ModelFormat format;
    char err[2048];
    if (modelfile_probe(o->init_from, &format, &file, err, sizeof(err)) != 0) {
        fprintf(stderr, "phalanx train: --init-from: %s\n", err);
        return -1;
    }
    const struct { const char *flag; int file, run; } dims[] = {
        {"--vocab", file.vocab, o->model.vocab}, {"--layers", file.layers, o->model.layers},
        {"--heads", file.heads, o->model.heads}, {"--dim", file.dim, o->model.dim},
        {"--seq-len", file.seq_len, o->model.seq_len}};
    for (unsigned i = 0; i < sizeof(dims) / sizeof(dims[0]); i++)
        if ((o->shape_given & (1u << i)) && dims[i].file != dims[i].run) {
            fprintf(stderr, "phalanx train: --init-from %s has %s %d, this run has %s %d: the "
                            "shape comes from the file; drop %s or give %s %d\n",
                    o->init_from, dims[i].flag, dims[i].file, dims[i].flag, dims[i].run,
                    dims[i].flag, dims[i].flag, dims[i].file);
            return -1;
        }
    o->model = file;
    return 0;
}

int options_parse(TrainOptions *o, int argc, char **argv)
{
    set_defaults(o);
    OptimConfig defaults = o->optim;
    double hyper[4] = {NAN, NAN, NAN, NAN}; /* beta1, beta2, eps, weight decay */
    bool optim_set = false;
    optind = 1;
    opterr = 0; /* our own messages name the flag and the fix */
    int code;
    while ((code = getopt_long(argc, argv, "h", long_options, NULL)) != -1) {
        if (code == 'h') {
            options_usage(stdout);
            return 1;
        }
        if (code == '?' || code == ':') {
            const char *bad = argv[optind - 1];
            if (optopt && optopt < 256 && code == '?')
                fprintf(stderr, "phalanx train: unknown option '-%c'\n", optopt);
            else if (code == '?' && strncmp(bad, "--", 2) == 0 && optopt == 0)
                fprintf(stderr, "phalanx train: unknown option '%s'\n", bad);
            else
                fprintf(stderr, "phalanx train: option '%s' needs a value\n", bad);
            fprintf(stderr, "phalanx train: see `phalanx train --help` for the options\n");
            return -1;
        }
        if (apply_option(o, code, optarg, hyper, &optim_set))
            return -1;
    }
    if (optind < argc) {
        fprintf(stderr, "phalanx train: unexpected argument '%s'; every option is a --flag\n",
                argv[optind]);
        return -1;
    }
    if (optim_set)
        defaults = optim_default_config(o->optim.kind);
    if (isnan(o->lr))
        o->lr = o->optim.kind == OPTIM_LAMB ? 1e-2 : 1e-3;
    o->optim.beta1 = (float)(isnan(hyper[0]) ? defaults.beta1 : hyper[0]);
    o->optim.beta2 = (float)(isnan(hyper[1]) ? defaults.beta2 : hyper[1]);
    o->optim.eps = (float)(isnan(hyper[2]) ? defaults.eps : hyper[2]);
    o->optim.weight_decay = (float)(isnan(hyper[3]) ? defaults.weight_decay : hyper[3]);
    if (o->init_from && adopt_file_shape(o) != 0)
        return -1;
    return check_combination(o);
}

LayoutNeeds options_layout_needs(const TrainOptions *o)
{
    return (LayoutNeeds){o->model, o->micro_batch, o->global_batch,
                         o->pp_split_count ? o->pp_split : NULL, o->pp_split_count,
                         o->max_global_batch, o->batch_quantum};
}

int options_resolve_layout(const TrainOptions *o, int world, Layout *out)
{
    LayoutNeeds needs = options_layout_needs(o);
    char err[2048];
    int status = o->layout_auto ? layout_auto(world, &needs, out, err, sizeof(err))
                                : layout_check(o->layout, world, &needs, err, sizeof(err));
    if (status != 0) {
        fprintf(stderr, "phalanx train: %s\n", err);
        return -1;
    }
    if (!o->layout_auto)
        *out = o->layout;
    return 0;
}
