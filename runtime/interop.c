/*
 * `phalanx export`, `phalanx eval` and `phalanx sample` (runtime.h): a model
 * given by path (a checkpoint, a safetensors or an llm.c model file:
 * modelfile.h), held whole on one process on the CPU (eval: on each rank of
 * `phalanx run`, the batches split between them).
 */
#include "runtime.h"

#include "channel.h"
#include "comm.h"
#include "data.h"
#include "device.h"
#include "gpt.h"
#include "modelfile.h"
#include "rng.h"
#include "util.h"

#include <getopt.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TOKENIZER_MAGIC 20240328
#define BYTE_VOCAB 256

/* A model opened for reading: its whole GPT on the CPU. */
typedef struct {
    const Device *dev;
    ModelFormat format;
    GPT gpt;
} OpenModel;

static void model_close(OpenModel *m)
{
    gpt_free(&m->gpt);
    if (m->dev)
        device_close(m->dev);
    memset(m, 0, sizeof(*m));
}

/* Opens the model at path; 0, or -1 with the reason in err. */
static int model_load(OpenModel *m, const char *path, char *err, size_t err_len)
{
    GPTConfig config;
    memset(m, 0, sizeof(*m));
    err[0] = '\0';
    if (modelfile_probe(path, &m->format, &config, err, err_len) == 0 &&
        (m->dev = device_open("cpu", false, err, err_len)) != NULL &&
        gpt_init_full(&m->gpt, m->dev, &config) == 0 &&
        modelfile_load(path, &m->gpt, err, err_len) == 0)
        return 0;
    if (m->dev && !m->gpt.dev && !err[0])
        snprintf(err, err_len, "out of memory for this model");
    model_close(m);
    return -1;
}

static int model_open(OpenModel *m, const char *prog, const char *path)
{
    char err[2048];
    if (model_load(m, path, err, sizeof(err)) == 0)
        return 0;
    fprintf(stderr, "phalanx %s: %s\n", prog, err);
    return -1;
}

/* getopt_long's errors in our words; 0 on success. */
static int bad_option(const char *prog, int code, char **argv)
{
    const char *bad = argv[optind - 1];
    if (code == '?')
        fprintf(stderr, "phalanx %s: unknown option '%s'\n", prog, bad);
    else
        fprintf(stderr, "phalanx %s: option '%s' needs a value\n", prog, bad);
    fprintf(stderr, "phalanx %s: see `phalanx %s --help`\n", prog, prog);
    return 2;
}

/* The one positional argument: the model. */
static const char *model_argument(const char *prog, int argc, char **argv)
{
    if (optind == argc - 1)
        return argv[optind];
    fprintf(stderr, "phalanx %s: %s; see `phalanx %s --help`\n", prog,
            optind >= argc ? "name the model (a checkpoint, .safetensors or llm.c .bin file)"
                           : "more than one model given",
            prog);
    return NULL;
}

// ----------------------------------------------------------------------------
// export

static void export_usage(FILE *out)
{
    fputs("usage: phalanx export CKPT --format safetensors|llmc -o OUT\n"
          "\n"
          "Writes a model (a checkpoint step directory, or a model file) for other programs:\n"
          "  safetensors  Hugging Face GPT-2 (GPT2LMHeadModel) weights, plus config.json in\n"
          "               OUT's directory: name OUT DIR/model.safetensors and\n"
          "               GPT2LMHeadModel.from_pretrained(DIR) loads it\n"
          "  llmc         llm.c's model file (version 3: fp32, vocabulary padded to 128)\n"
          "OUT is written through a temporary file and renamed: a failed export leaves\n"
          "nothing. Exit status: 0 written, 1 the model could not be read or written, 2 bad\n"
          "usage.\n",
          out);
}

int export_main(int argc, char **argv)
{
    static const struct option options[] = {{"format", required_argument, NULL, 'f'},
                                            {"output", required_argument, NULL, 'o'},
                                            {"help", no_argument, NULL, 'h'},
                                            {NULL, 0, NULL, 0}};
    const char *format_text = NULL, *out = NULL;
    optind = 1;
    opterr = 0;
    int code;
    while ((code = getopt_long(argc, argv, "o:h", options, NULL)) != -1) {
        if (code == 'h')
            return export_usage(stdout), 0;
        if (code == 'f')
            format_text = optarg;
        else if (code == 'o')
            out = optarg;
        else
            return bad_option("export", code, argv);
    }
    const char *path = model_argument("export", argc, argv);
    ModelFormat format;
    if (!path)
        return 2;
    if (!format_text || !modelfile_format_parse(format_text, &format) || !out) {
        fprintf(stderr, "phalanx export: %s; see `phalanx export --help`\n",
                !format_text || !out ? "give --format safetensors|llmc and -o OUT"
                                     : "--format is safetensors or llmc");
        return 2;
    }
    OpenModel m;
    if (model_open(&m, "export", path))
        return 1;
    char err[2048];
    int status = modelfile_export(&m.gpt, format, out, err, sizeof(err));
    if (status)
        fprintf(stderr, "phalanx export: %s\n", err);
    else
        printf("exported %s (%zu parameters) to %s (%s)\n", path, m.gpt.param_count, out,
               format_text);
    model_close(&m);
    return status ? 1 : 0;
}

// ----------------------------------------------------------------------------
// eval: llm.c's validation loader reads batch i of B x T targets at token
// i x B x T of a shard (never across shards), shard after shard. Under
// `phalanx run -n N` rank r evaluates batches r, r + N, ...; the per-batch
// losses are gathered and rank 0 sums them in batch order in double, as one
// process does, so the loss does not depend on N.

typedef struct {
    const char *data;
    int micro_batch, seq_len;
    long batches; /* 0: every batch of the data */
    bool json;
} EvalOptions;

/* One rank of an evaluation (the only one without `phalanx run`). Failures
 * every rank meets alike (options, model, data) are said once, by rank 0:
 * a rank keeps its message in `why` until the ranks have compared notes. */
typedef struct {
    Comm *world;
    int rank, size;
    Channel channel;
    OpenModel model;
    TokenData data;
    bool data_open;
    Activations acts;
    long batches;
    double *losses; /* [batches + 1]: see evaluate_share */
    char why[2048];
} EvalRank;

static long shard_batches(const TokenShard *shard, size_t span)
{
    return shard->count > span ? (long)((shard->count - 1) / span) : 0;
}

/* Fills acts with batch `index` of the data; false when there is none. */
static bool load_batch(const TokenData *data, long index, Activations *acts)
{
    size_t span = (size_t)acts->B * acts->T;
    for (int s = 0; s < data->shard_count; s++) {
        long here = shard_batches(&data->shards[s], span);
        if (index >= here) {
            index -= here;
            continue;
        }
        const uint16_t *tokens = data->shards[s].tokens + (size_t)index * span;
        for (size_t i = 0; i < span; i++) {
            acts->tokens[i] = tokens[i];
            acts->targets[i] = tokens[i + 1];
        }
        return true;
    }
    return false;
}

static long data_batches(const TokenData *data, size_t span)
{
    long total = 0;
    for (int s = 0; s < data->shard_count; s++)
        total += shard_batches(&data->shards[s], span);
    return total;
}

/* Channel, model, data, batch count and buffers of one rank; 0, or -1
 * with the reason in r->why. */
static int eval_prepare(EvalRank *r, EvalOptions *o, const char *path)
{
    char err[1024];
    if (channel_open(&r->channel, r->rank, r->size, err, sizeof(err)))
        return util_fail(r->why, sizeof(r->why), "%s", err);
    if (model_load(&r->model, path, r->why, sizeof(r->why)))
        return -1;
    const GPTConfig *c = &r->model.gpt.config;
    if (o->seq_len == 0)
        o->seq_len = c->seq_len;
    if (o->seq_len > c->seq_len)
        return util_fail(r->why, sizeof(r->why), "--seq-len %d is longer than the model's %d "
                         "positions; use --seq-len %d or less", o->seq_len, c->seq_len, c->seq_len);
    if (tokendata_open(&r->data, o->data, c->vocab, err, sizeof(err)) != 0)
        return util_fail(r->why, sizeof(r->why), "--data: %s", err);
    r->data_open = true;
    long available = data_batches(&r->data, (size_t)o->micro_batch * o->seq_len);
    r->batches = o->batches ? o->batches : available;
    if (r->batches == 0 || r->batches > available)
        return util_fail(r->why, sizeof(r->why),
                         "--batches %ld is more than %s holds: %ld batches of %d x %d tokens "
                         "(each needs %d x %d + 1 tokens of one shard); use --batches %ld or "
                         "less, or a smaller --micro-batch or --seq-len",
                         r->batches, o->data, available, o->micro_batch, o->seq_len,
                         o->micro_batch, o->seq_len, available);
    if (acts_init(&r->acts, &r->model.gpt, o->micro_batch, o->seq_len) ||
        !(r->losses = calloc((size_t)r->batches + 1, sizeof(double))))
        return util_fail(r->why, sizeof(r->why), "out of memory for --micro-batch %d "
                         "--seq-len %d --batches %ld", o->micro_batch, o->seq_len, r->batches);
    return 0;
}

/* Whether every rank is ready, with rank 0's batch count (the reduction's
 * length). A failure rank 0 met too is said by rank 0 alone (every rank read
 * the same files); else each failed rank says its own. */
static bool eval_agree(EvalRank *r, bool ready)
{
    double rank0_batches = (double)r->batches;
    if (comm_broadcast(r->world, &rank0_batches, 1, COMM_F64, 0) != 0) {
        fprintf(stderr, "phalanx eval: rank %d: %s\n", r->rank, comm_error(r->world));
        return false;
    }
    if (ready && (double)r->batches != rank0_batches) {
        ready = false;
        util_fail(r->why, sizeof(r->why), "--data holds other batches here than on rank 0 "
                  "(%ld, not %.0f): give every host the same shards", r->batches, rank0_batches);
    }
    double failed[2] = {ready ? 0.0 : 1.0, r->rank == 0 && !ready ? 1.0 : 0.0};
    if (comm_allreduce(r->world, failed, 2, COMM_F64) != 0) {
        fprintf(stderr, "phalanx eval: rank %d: %s\n", r->rank, comm_error(r->world));
        return false;
    }
    if (!ready && r->rank == 0)
        fprintf(stderr, "phalanx eval: %s\n", r->why);
    else if (!ready && failed[1] == 0.0)
        fprintf(stderr, "phalanx eval: rank %d: %s\n", r->rank, r->why);
    return failed[0] == 0.0;
}

/* This rank's share of the batches into losses[0..batches); losses[batches]
 * counts the ranks stopped early (the launcher said stop, or is gone). */
static void evaluate_share(EvalRank *r, double *losses)
{
    for (long i = r->rank; i < r->batches; i += r->size) {
        if (channel_stop_requested(&r->channel) || channel_launcher_lost(&r->channel)) {
            losses[r->batches] = 1.0;
            return;
        }
        load_batch(&r->data, i, &r->acts);
        losses[i] = gpt_forward(&r->model.gpt, &r->acts);
    }
}

static void print_loss(const EvalOptions *o, long batches, double loss)
{
    if (o->json)
        printf("{\"loss\": %.17g, \"batches\": %ld, \"micro_batch\": %d, \"seq_len\": %d, "
               "\"tokens\": %ld}\n",
               loss, batches, o->micro_batch, o->seq_len,
               batches * o->micro_batch * (long)o->seq_len);
    else
        printf("loss %.6f over %ld batches of %d x %d tokens\n", loss, batches, o->micro_batch,
               o->seq_len);
    fflush(stdout);
}

/* The mean loss over every rank's batches, printed by rank 0. A batch is
 * evaluated by one rank and is zero on the others, so the sum over the ranks
 * is each batch's loss exactly. */
static int evaluate(EvalRank *r, const EvalOptions *o)
{
    double *losses = r->losses;
    evaluate_share(r, losses);
    int status = 1;
    if (comm_allreduce(r->world, losses, (size_t)r->batches + 1, COMM_F64) != 0)
        fprintf(stderr, "phalanx eval: rank %d: %s\n", r->rank, comm_error(r->world));
    else if (losses[r->batches] > 0.0) {
        if (r->rank == 0)
            fprintf(stderr, "phalanx eval: stopped before every batch was evaluated\n");
    } else {
        double total = 0.0;
        for (long i = 0; i < r->batches; i++)
            total += losses[i];
        double loss = total / (double)r->batches;
        if (r->rank == 0)
            print_loss(o, r->batches, loss);
        status = isfinite(loss) ? 0 : 1;
    }
    return status;
}

static void eval_usage(FILE *out)
{
    fputs("usage: phalanx eval CKPT|FILE --data GLOB [--micro-batch B] [--seq-len T]\n"
          "                    [--batches N] [--json]\n"
          "       phalanx run -n N [launcher options] -- eval CKPT|FILE --data GLOB ...\n"
          "\n"
          "The mean loss of a model (a checkpoint, a safetensors or an llm.c model file) on\n"
          "the first N batches of B x T targets, read the way llm.c's validation loader\n"
          "reads them: batch i starts at token i x B x T of a shard, shard after shard.\n"
          "Under `phalanx run -n N` every rank holds the whole model and rank r evaluates\n"
          "batches r, r + N, ...; rank 0 sums the losses in batch order, so the loss is\n"
          "the same bits as on one process, and prints it (ranks beyond the batch count\n"
          "have nothing to do). There is no layout: --dp, --pp, --sp, --layout are refused.\n"
          "  --data GLOB       token shards (llm.c's .bin format)\n"
          "  --micro-batch B   sequences per batch (default 4)\n"
          "  --seq-len T       tokens per sequence (default and most: the model's)\n"
          "  --batches N       batches (default: every batch the data holds)\n"
          "  --json            one JSON object: loss, batches, micro_batch, seq_len, tokens\n"
          "Exit status: 0, 1 the model or the data could not be read (or too few batches),\n"
          "2 bad usage.\n",
          out);
}

static int parse_eval_option(EvalOptions *o, int code, const char *flag)
{
    switch (code) {
    case 'd': o->data = optarg; return 0;
    case 'b': return parse_flag_int("eval", "--micro-batch", optarg, 1, 1 << 16, &o->micro_batch);
    case 't': return parse_flag_int("eval", "--seq-len", optarg, 1, 1 << 20, &o->seq_len);
    case 'n': return parse_flag_long("eval", "--batches", optarg, 1, 1L << 40, &o->batches);
    case 'j': o->json = true; return 0;
    case 'L':
        fprintf(stderr, "phalanx eval: %s: eval has no layout: every rank holds the whole model "
                        "and the N ranks of `phalanx run -n N -- eval ...` split the batches "
                        "between them; drop %s\n", flag, flag);
        return -1;
    }
    return -1;
}

/* Parses eval's command line into o and *path: 0, 1 after --help, -1 after
 * saying what is wrong. */
static int parse_eval(EvalOptions *o, const char **path, int argc, char **argv)
{
    static const struct option options[] = {
        {"data", required_argument, NULL, 'd'},    {"micro-batch", required_argument, NULL, 'b'},
        {"seq-len", required_argument, NULL, 't'}, {"batches", required_argument, NULL, 'n'},
        {"json", no_argument, NULL, 'j'},          {"help", no_argument, NULL, 'h'},
        {"dp", required_argument, NULL, 'L'},      {"pp", required_argument, NULL, 'L'},
        {"sp", required_argument, NULL, 'L'},      {"layout", required_argument, NULL, 'L'},
        {NULL, 0, NULL, 0}};
    *o = (EvalOptions){.micro_batch = 4};
    optind = 0; /* 0, not 1: glibc then forgets `phalanx run`'s "+" (stop at the first word) */
    opterr = 0;
    int code, index = 0;
    while ((code = getopt_long(argc, argv, "h", options, &index)) != -1) {
        if (code == 'h')
            return eval_usage(stdout), 1;
        if (code == '?' || code == ':') {
            bad_option("eval", code, argv);
            return -1;
        }
        char flag[64];
        snprintf(flag, sizeof(flag), "--%s", options[index].name);
        if (parse_eval_option(o, code, flag))
            return -1;
    }
    if (!(*path = model_argument("eval", argc, argv)))
        return -1;
    if (!o->data) {
        fprintf(stderr, "phalanx eval: give --data GLOB (token shards)\n");
        return -1;
    }
    return 0;
}

int eval_check_launch(int argc, char **argv)
{
    EvalOptions o;
    const char *path;
    return parse_eval(&o, &path, argc, argv);
}

static void eval_rank_close(EvalRank *r, int status)
{
    acts_free(&r->acts);
    free(r->losses);
    if (r->data_open)
        tokendata_close(&r->data);
    model_close(&r->model);
    channel_send(&r->channel, "done %d %d", r->rank, status);
    channel_close(&r->channel);
    comm_world_finalize(r->world);
}

int eval_main(int argc, char **argv)
{
    EvalOptions o;
    const char *path;
    int parsed = parse_eval(&o, &path, argc, argv);
    if (parsed != 0)
        return parsed > 0 ? 0 : 2;
    EvalRank r;
    memset(&r, 0, sizeof(r));
    r.channel.fd = -1;
    char err[512];
    if (!(r.world = comm_world_init(&argc, &argv, err, sizeof(err)))) {
        fprintf(stderr, "phalanx eval: %s\n", err);
        return 1;
    }
    r.rank = comm_rank(r.world);
    r.size = comm_size(r.world);
    int status = eval_agree(&r, eval_prepare(&r, &o, path) == 0) ? evaluate(&r, &o) : 1;
    eval_rank_close(&r, status);
    return status;
}

// ----------------------------------------------------------------------------
// sample

typedef struct {
    const char *prompt, *tokenizer;
    long tokens;
    double temperature;
    int top_k;
    uint64_t seed;
} SampleOptions;

/* llm.c's tokenizer file: 256 uint32 (magic 20240328, version, vocab), then
 * per token a length byte and that many bytes. */
typedef struct {
    int count;
    char **pieces;
} Tokenizer;

static void tokenizer_free(Tokenizer *t)
{
    for (int i = 0; i < t->count; i++)
        free(t->pieces[i]);
    free(t->pieces);
    memset(t, 0, sizeof(*t));
}

static int tokenizer_read(Tokenizer *t, const char *path, int vocab)
{
    memset(t, 0, sizeof(*t));
    FILE *file = fopen(path, "rb");
    uint32_t h[256];
    const char *why = NULL;
    if (!file)
        why = "cannot open it";
    else if (fread(h, sizeof(uint32_t), 256, file) != 256 || h[0] != TOKENIZER_MAGIC)
        why = "not an llm.c tokenizer file (magic 20240328)";
    else if ((int)h[2] < vocab)
        why = "it has fewer tokens than the model's vocabulary";
    else if (!(t->pieces = calloc(h[2], sizeof(char *))))
        why = "out of memory";
    for (uint32_t i = 0; !why && i < h[2]; i++, t->count++) {
        unsigned char len;
        if (fread(&len, 1, 1, file) != 1 || !(t->pieces[i] = calloc(len + 1u, 1)) ||
            fread(t->pieces[i], 1, len, file) != len)
            why = "truncated";
    }
    if (file)
        fclose(file);
    if (!why)
        return 0;
    fprintf(stderr, "phalanx sample: --tokenizer %s: %s\n", path, why);
    tokenizer_free(t);
    return -1;
}

/* Byte vocabularies read the prompt as text, others as token ids. */
static int prompt_tokens(const SampleOptions *o, int vocab, int *ids, long *count)
{
    *count = 0;
    if (vocab == BYTE_VOCAB) {
        for (const char *c = o->prompt; *c; c++)
            ids[(*count)++] = (unsigned char)*c;
    } else {
        char *end;
        for (const char *c = o->prompt; *c; c = end) {
            long id = strtol(c, &end, 10);
            if (end == c) {
                if (*c == ' ' || *c == ',') {
                    end = (char *)c + 1;
                    continue;
                }
                id = -1;
            }
            if (id < 0 || id >= vocab) {
                fprintf(stderr, "phalanx sample: --prompt: for a vocabulary of %d the prompt is "
                                "token ids below %d, separated by spaces\n", vocab, vocab);
                return -1;
            }
            ids[(*count)++] = (int)id;
        }
    }
    if (*count == 0) /* the end-of-text token of GPT-2, or the first one */
        ids[(*count)++] = vocab == 50257 ? 50256 : 0;
    return 0;
}

static void print_token(int id, int vocab, const Tokenizer *tok)
{
    if (tok->count > 0)
        fputs(tok->pieces[id], stdout);
    else if (vocab == BYTE_VOCAB)
        putchar(id);
    else
        printf("%d ", id);
}

static int descending(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return x < y ? 1 : x > y ? -1 : 0;
}

/* The k-th largest logit (-inf when out of memory: then no top-k cut). */
static float kth_largest(const float *logits, int V, int k)
{
    float *copy = malloc((size_t)V * sizeof(float));
    if (!copy)
        return -INFINITY;
    memcpy(copy, logits, (size_t)V * sizeof(float));
    qsort(copy, (size_t)V, sizeof(float), descending);
    float kth = copy[k - 1];
    free(copy);
    return kth;
}

/* The next token from the logits of the last position: greedy at
 * temperature 0, else drawn from the top-k softmax with a keyed draw. */
static int draw_token(const float *logits, int V, const SampleOptions *o, long index)
{
    int best = 0;
    for (int i = 1; i < V; i++)
        if (logits[i] > logits[best])
            best = i;
    if (o->temperature == 0.0)
        return best;
    float floor_logit = o->top_k > 0 && o->top_k < V ? kth_largest(logits, V, o->top_k)
                                                      : -INFINITY;
    double sum = 0.0;
    for (int i = 0; i < V; i++)
        if (logits[i] >= floor_logit)
            sum += exp((logits[i] - logits[best]) / o->temperature);
    double u = rng_uniform(o->seed, RNG_SAMPLE, 0, (uint64_t)index) * sum, acc = 0.0;
    for (int i = 0; i < V; i++)
        if (logits[i] >= floor_logit && (acc += exp((logits[i] - logits[best]) / o->temperature)) >= u)
            return i;
    return best;
}

static int generate(OpenModel *m, const SampleOptions *o, const Tokenizer *tok)
{
    const GPTConfig *c = &m->gpt.config;
    int T = c->seq_len, Vp = gpt_padded_vocab(c);
    int *ids = calloc((size_t)(strlen(o->prompt) + 1 + (size_t)o->tokens), sizeof(int));
    Activations acts;
    long count;
    if (!ids || acts_init(&acts, &m->gpt, 1, T)) {
        free(ids);
        fprintf(stderr, "phalanx sample: out of memory\n");
        return 1;
    }
    int status = prompt_tokens(o, c->vocab, ids, &count) ? 2 : 0;
    for (long i = 0; status == 0 && i < count; i++)
        print_token(ids[i], c->vocab, tok);
    for (long n = 0; status == 0 && n < o->tokens; n++) {
        // the newest T tokens from position 0; causal attention ignores the rest
        long first = count > T ? count - T : 0, used = count - first;
        memset(acts.tokens, 0, (size_t)T * sizeof(int));
        memcpy(acts.tokens, ids + first, (size_t)used * sizeof(int));
        memset(acts.targets, 0, (size_t)T * sizeof(int));
        gpt_forward(&m->gpt, &acts);
        ids[count] = draw_token(acts.logits + (size_t)(used - 1) * Vp, c->vocab, o, n);
        print_token(ids[count++], c->vocab, tok);
    }
    putchar('\n');
    acts_free(&acts);
    free(ids);
    return status;
}

static void sample_usage(FILE *out)
{
    fputs("usage: phalanx sample CKPT|FILE [--prompt TEXT] [--tokens N] [--temperature T]\n"
          "                      [--top-k K] [--seed S] [--tokenizer FILE]\n"
          "\n"
          "Continues a prompt with a model (a checkpoint, a safetensors or an llm.c model\n"
          "file) and prints the prompt and what the model writes.\n"
          "  --prompt TEXT      text for byte-token models (vocab 256); token ids separated\n"
          "                     by spaces for others (default: GPT-2's <|endoftext|> for\n"
          "                     vocab 50257, else token 0)\n"
          "  --tokens N         tokens to write (default 64)\n"
          "  --temperature T    0: the most likely token; default 1\n"
          "  --top-k K          draw among the K most likely tokens (default 0: all)\n"
          "  --seed S           the same seed writes the same text (default 1337)\n"
          "  --tokenizer FILE   llm.c's tokenizer file (magic 20240328): print text, not ids\n"
          "Exit status: 0, 1 the model could not be read, 2 bad usage.\n",
          out);
}

static int parse_sample_option(SampleOptions *o, int code)
{
    long seed;
    switch (code) {
    case 'p': o->prompt = optarg; return 0;
    case 'k': o->tokenizer = optarg; return 0;
    case 'n': return parse_flag_long("sample", "--tokens", optarg, 0, 1L << 20, &o->tokens);
    case 't':
        return parse_flag_double("sample", "--temperature", optarg, 0, 100, &o->temperature);
    case 'K': return parse_flag_int("sample", "--top-k", optarg, 0, 1 << 20, &o->top_k);
    case 's':
        if (parse_flag_long("sample", "--seed", optarg, 0, __LONG_MAX__, &seed))
            return -1;
        o->seed = (uint64_t)seed;
        return 0;
    }
    return -1;
}

int sample_main(int argc, char **argv)
{
    static const struct option options[] = {
        {"prompt", required_argument, NULL, 'p'},      {"tokens", required_argument, NULL, 'n'},
        {"temperature", required_argument, NULL, 't'}, {"top-k", required_argument, NULL, 'K'},
        {"seed", required_argument, NULL, 's'},        {"tokenizer", required_argument, NULL, 'k'},
        {"help", no_argument, NULL, 'h'},              {NULL, 0, NULL, 0}};
    SampleOptions o = {.prompt = "", .tokens = 64, .temperature = 1.0, .seed = 1337};
    optind = 1;
    opterr = 0;
    int code;
    while ((code = getopt_long(argc, argv, "h", options, NULL)) != -1) {
        if (code == 'h')
            return sample_usage(stdout), 0;
        if (code == '?' || code == ':')
            return bad_option("sample", code, argv);
        if (parse_sample_option(&o, code))
            return 2;
    }
    const char *path = model_argument("sample", argc, argv);
    if (!path)
        return 2;
    OpenModel m;
    if (model_open(&m, "sample", path))
        return 1;
    Tokenizer tok = {0, NULL};
    int status = o.tokenizer && tokenizer_read(&tok, o.tokenizer, m.gpt.config.vocab)
                     ? 1
                     : generate(&m, &o, &tok);
    tokenizer_free(&tok);
    model_close(&m);
    return status;
}
