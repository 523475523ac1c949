/*
 * `phalanx export`, `phalanx eval` and `phalanx sample` (runtime.h): a model
 * given by path (a checkpoint, a safetensors or an llm.c model file:
 * modelfile.h), held whole on one process on the CPU.
 */
#include "runtime.h"

#include "data.h"
#include "device.h"
#include "gpt.h"
#include "modelfile.h"
#include "rng.h"

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
}

static int model_open(OpenModel *m, const char *prog, const char *path)
{
    char err[2048];
    GPTConfig config;
    memset(m, 0, sizeof(*m));
    if (modelfile_probe(path, &m->format, &config, err, sizeof(err)) == 0 &&
        (m->dev = device_open("cpu", false, err, sizeof(err))) != NULL &&
        gpt_init_full(&m->gpt, m->dev, &config) == 0 &&
        modelfile_load(path, &m->gpt, err, sizeof(err)) == 0)
        return 0;
    if (m->dev && !m->gpt.dev && !err[0])
        snprintf(err, sizeof(err), "out of memory for this model");
    fprintf(stderr, "phalanx %s: %s\n", prog, err);
    model_close(m);
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
// i x B x T of a shard (never across shards), shard after shard

typedef struct {
    const char *data;
    int micro_batch, seq_len;
    long batches; /* 0: every batch of the data */
    bool json;
} EvalOptions;

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

static int evaluate_model(OpenModel *m, const EvalOptions *o, const TokenData *data)
{
    long available = data_batches(data, (size_t)o->micro_batch * o->seq_len);
    long batches = o->batches ? o->batches : available;
    if (batches == 0 || batches > available) {
        fprintf(stderr, "phalanx eval: --batches %ld is more than %s holds: %ld batches of %d "
                        "x %d tokens (each needs %d x %d + 1 tokens of one shard); use "
                        "--batches %ld or less, or a smaller --micro-batch or --seq-len\n",
                batches, o->data, available, o->micro_batch, o->seq_len, o->micro_batch,
                o->seq_len, available);
        return 1;
    }
    Activations acts;
    if (acts_init(&acts, &m->gpt, o->micro_batch, o->seq_len)) {
        fprintf(stderr, "phalanx eval: out of memory for --micro-batch %d --seq-len %d\n",
                o->micro_batch, o->seq_len);
        return 1;
    }
    double total = 0.0;
    for (long i = 0; i < batches; i++) {
        load_batch(data, i, &acts);
        total += gpt_forward(&m->gpt, &acts);
    }
    acts_free(&acts);
    double loss = total / (double)batches;
    if (o->json)
        printf("{\"loss\": %.17g, \"batches\": %ld, \"micro_batch\": %d, \"seq_len\": %d, "
               "\"tokens\": %ld}\n",
               loss, batches, o->micro_batch, o->seq_len,
               batches * o->micro_batch * (long)o->seq_len);
    else
        printf("loss %.6f over %ld batches of %d x %d tokens\n", loss, batches, o->micro_batch,
               o->seq_len);
    return isfinite(loss) ? 0 : 1;
}

static void eval_usage(FILE *out)
{
    fputs("usage: phalanx eval CKPT|FILE --data GLOB [--micro-batch B] [--seq-len T]\n"
          "                    [--batches N] [--json]\n"
          "\n"
          "The mean loss of a model (a checkpoint, a safetensors or an llm.c model file) on\n"
          "the first N batches of B x T targets, read the way llm.c's validation loader\n"
          "reads them: batch i starts at token i x B x T of a shard, shard after shard.\n"
          "  --data GLOB       token shards (llm.c's .bin format)\n"
          "  --micro-batch B   sequences per batch (default 4)\n"
          "  --seq-len T       tokens per sequence (default and most: the model's)\n"
          "  --batches N       batches (default: every batch the data holds)\n"
          "  --json            one JSON object: loss, batches, micro_batch, seq_len, tokens\n"
          "Exit status: 0, 1 the model or the data could not be read (or too few batches),\n"
          "2 bad usage.\n",
          out);
}

static int parse_eval_option(EvalOptions *o, int code)
{
    switch (code) {
    case 'd': o->data = optarg; return 0;
    case 'b': return parse_flag_int("eval", "--micro-batch", optarg, 1, 1 << 16, &o->micro_batch);
    case 't': return parse_flag_int("eval", "--seq-len", optarg, 1, 1 << 20, &o->seq_len);
    case 'n': return parse_flag_long("eval", "--batches", optarg, 1, 1L << 40, &o->batches);
    case 'j': o->json = true; return 0;
    }
    return -1;
}

int eval_main(int argc, char **argv)
{
    static const struct option options[] = {
        {"data", required_argument, NULL, 'd'},    {"micro-batch", required_argument, NULL, 'b'},
        {"seq-len", required_argument, NULL, 't'}, {"batches", required_argument, NULL, 'n'},
        {"json", no_argument, NULL, 'j'},          {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0}};
    EvalOptions o = {.micro_batch = 4};
    optind = 1;
    opterr = 0;
    int code;
    while ((code = getopt_long(argc, argv, "h", options, NULL)) != -1) {
        if (code == 'h')
            return eval_usage(stdout), 0;
        if (code == '?' || code == ':')
            return bad_option("eval", code, argv);
        if (parse_eval_option(&o, code))
            return 2;
    }
    const char *path = model_argument("eval", argc, argv);
    if (!path)
        return 2;
    if (!o.data) {
        fprintf(stderr, "phalanx eval: give --data GLOB (token shards)\n");
        return 2;
    }
    OpenModel m;
    if (model_open(&m, "eval", path))
        return 1;
    int status = 1;
    TokenData data;
    char err[1024];
    if (o.seq_len == 0)
        o.seq_len = m.gpt.config.seq_len;
    if (o.seq_len > m.gpt.config.seq_len)
        fprintf(stderr, "phalanx eval: --seq-len %d is longer than the model's %d positions; "
                        "use --seq-len %d or less\n",
                o.seq_len, m.gpt.config.seq_len, m.gpt.config.seq_len);
    else if (tokendata_open(&data, o.data, m.gpt.config.vocab, err, sizeof(err)) != 0)
        fprintf(stderr, "phalanx eval: --data: %s\n", err);
    else {
        status = evaluate_model(&m, &o, &data);
        tokendata_close(&data);
    }
    model_close(&m);
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
