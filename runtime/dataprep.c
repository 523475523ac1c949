/*
 * `phalanx data prepare`: text files -> byte-level token shards (see data.h).
 *
 * Everything is read, split and checked before the first file is written, so a
 * bad option or input leaves the output directory as it was.
 */
#include "data.h"

#include "runtime.h"

#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define PROG "phalanx data prepare"
#define VOCAB 256
#define MAX_SHARDS 1000 /* names are NAME_%03d.bin: more would sort out of order */

static const char USAGE[] =
    "usage: phalanx data prepare --out DIR [--val-fraction F] [--shard-tokens N] FILE...\n"
    "\n"
    "Turns text files into byte-level token shards (vocab 256, token = byte value) in\n"
    "llm.c's format: DIR/train_000.bin, train_001.bin, ... and DIR/val_000.bin, ...\n"
    "\n"
    "Documents: a file with lines that are only \"%\" (the fortune format) is split at\n"
    "those lines; any other file is split at blank lines (one paragraph per document).\n"
    "Blank lines around a document are dropped, and so are empty documents. In each\n"
    "split, documents are joined by a blank line (\"\\n\\n\"). Every k-th document,\n"
    "k = round(1/F), goes to validation.\n"
    "\n"
    "  -o, --out DIR          output directory (created when missing; required)\n"
    "      --val-fraction F   share of documents for validation, 0 < F <= 0.5 (default 0.1)\n"
    "      --shard-tokens N   at most N tokens per shard (default 1000000); a longer\n"
    "                         split is cut into shards of equal size\n"
    "  -h, --help             this text\n"
    "\n"
    "Exit status: 0 the shards were written; 1 an input could not be read, held too\n"
    "little text, or a shard could not be written; 2 bad options.\n";

typedef struct {
    const char *out_dir;
    double val_fraction;
    long shard_tokens;
} PrepareOptions;

/* The token stream of one split: its documents joined by "\n\n", one byte per token. */
typedef struct {
    const char *name;
    unsigned char *bytes;
    size_t len, cap;
    size_t documents;
    int shards;
} Split;

typedef struct {
    Split train, val;
    long every; /* every `every`-th document goes to validation */
    size_t documents;
} Corpus;

static int complain(const char *fmt, ...)
{
    va_list args;
    va_start(args, fmt);
    fprintf(stderr, PROG ": ");
    vfprintf(stderr, fmt, args);
    fprintf(stderr, "\n");
    va_end(args);
    return -1;
}

/* ---- options ------------------------------------------------------------ */

static int parse_fraction(const char *text, double *out)
{
    double value;
    if (parse_flag_double(PROG, "--val-fraction", text, 0.0, 0.5, &value) != 0)
        return -1;
    if (value == 0.0)
        return complain("--val-fraction is %s, outside (0, 0.5]: it is the share of documents "
                     "held out for validation, e.g. 0.1", text);
    *out = value;
    return 0;
}

/* Returns 0 to go on, 1 after --help, -1 on a bad command line. */
static int parse_options(int argc, char **argv, PrepareOptions *opts)
{
    enum { OPT_VAL_FRACTION = 256, OPT_SHARD_TOKENS };
    static const struct option longopts[] = {
        {"out", required_argument, NULL, 'o'},
        {"val-fraction", required_argument, NULL, OPT_VAL_FRACTION},
        {"shard-tokens", required_argument, NULL, OPT_SHARD_TOKENS},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    *opts = (PrepareOptions){.out_dir = NULL, .val_fraction = 0.1, .shard_tokens = 1000000};
    optind = 1; /* the launcher may have run getopt already */
    opterr = 0; /* our messages name the command */
    int c;
    while ((c = getopt_long(argc, argv, ":o:h", longopts, NULL)) != -1) {
        int status = 0;
        switch (c) {
        case 'o': opts->out_dir = optarg; break;
        case OPT_VAL_FRACTION: status = parse_fraction(optarg, &opts->val_fraction); break;
        case OPT_SHARD_TOKENS:
            status = parse_flag_long(PROG, "--shard-tokens", optarg, 1, INT32_MAX,
                                     &opts->shard_tokens);
            break;
        case 'h': fputs(USAGE, stdout); return 1;
        case ':': return complain("%s needs a value (see --help)", argv[optind - 1]);
        default: return complain("unknown option '%s' (see --help)", argv[optind - 1]);
        }
        if (status != 0)
            return -1;
    }
    if (!opts->out_dir || !*opts->out_dir)
        return complain("--out DIR is required: the directory for the shards");
    if (optind >= argc)
        return complain("no input files: give one or more text files after the options");
    return 0;
}

/* ---- documents ---------------------------------------------------------- */

static int split_append(Split *split, const char *bytes, size_t len)
{
    size_t need = split->len + len;
    if (need > split->cap) {
        size_t cap = split->cap ? split->cap : 1 << 16;
        while (cap < need)
            cap *= 2;
        unsigned char *grown = realloc(split->bytes, cap);
        if (!grown)
            return complain("out of memory after %zu bytes of %s text", split->len, split->name);
        split->bytes = grown;
        split->cap = cap;
    }
    memcpy(split->bytes + split->len, bytes, len);
    split->len += len;
    return 0;
}

static int corpus_add_document(Corpus *corpus, const char *doc, size_t len)
{
    Split *split = corpus->documents % corpus->every == (size_t)corpus->every - 1
                       ? &corpus->val : &corpus->train;
    corpus->documents++;
    if (split->documents++ > 0 && split_append(split, "\n\n", 2) != 0)
        return -1;
    return split_append(split, doc, len);
}

static int is_blank(const char *line, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if (!memchr(" \t\r\v\f", line[i], 5))
            return 0;
    return 1;
}

static int is_fortune_separator(const char *line, size_t len)
{
    return len == 1 && line[0] == '%';
}

/* Returns the line at *pos (without its newline) and moves *pos past it. */
static const char *next_line(const char **pos, const char *text_end, size_t *len)
{
    const char *line = *pos;
    const char *nl = memchr(line, '\n', (size_t)(text_end - line));
    const char *end = nl ? nl : text_end;
    *len = (size_t)(end - line);
    *pos = end + 1;
    return line;
}

static int has_fortune_separators(const char *text, size_t len)
{
    size_t line_len;
    for (const char *pos = text; pos < text + len;) {
        const char *line = next_line(&pos, text + len, &line_len);
        if (is_fortune_separator(line, line_len))
            return 1;
    }
    return 0;
}

/* Adds the document [*doc, doc_end) if there is one, and starts the next. */
static int end_document(Corpus *corpus, const char **doc, const char *doc_end)
{
    int status = *doc ? corpus_add_document(corpus, *doc, (size_t)(doc_end - *doc)) : 0;
    *doc = NULL;
    return status;
}

/* Splits one file's text into documents: at "%" lines in a fortune file, else
 * at blank lines. A document runs from its first non-blank line to the end of
 * its last one (without that line's newline). */
static int add_documents(Corpus *corpus, const char *text, size_t len)
{
    int (*is_separator)(const char *, size_t) =
        has_fortune_separators(text, len) ? is_fortune_separator : is_blank;
    const char *text_end = text + len, *doc = NULL, *doc_end = NULL;
    size_t line_len;
    for (const char *pos = text; pos < text_end;) {
        const char *line = next_line(&pos, text_end, &line_len);
        if (is_separator(line, line_len)) {
            if (end_document(corpus, &doc, doc_end) != 0)
                return -1;
        } else if (!is_blank(line, line_len)) {
            doc = doc ? doc : line;
            doc_end = line + line_len;
        }
    }
    return end_document(corpus, &doc, doc_end);
}

static int read_file(const char *path, char **text, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return complain("cannot read input '%s': %s", path, strerror(errno));
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    while (buf && (n += fread(buf + n, 1, cap - n, f)) == cap) {
        cap *= 2;
        char *grown = realloc(buf, cap);
        if (!grown)
            free(buf);
        buf = grown;
    }
    int saved = errno, failed = ferror(f);
    fclose(f);
    if (!buf)
        return complain("cannot read input '%s': out of memory", path);
    if (failed) {
        free(buf);
        return complain("cannot read input '%s': %s", path, strerror(saved));
    }
    *text = buf;
    *len = n;
    return 0;
}

static int read_inputs(Corpus *corpus, char **paths, int count)
{
    for (int i = 0; i < count; i++) {
        char *text = NULL;
        size_t len = 0;
        if (read_file(paths[i], &text, &len) != 0)
            return -1;
        int status = add_documents(corpus, text, len);
        free(text);
        if (status != 0)
            return -1;
    }
    return 0;
}

/* ---- shards ------------------------------------------------------------- */

static int plan_shards(Split *split, long shard_tokens)
{
    size_t shards = (split->len + (size_t)shard_tokens - 1) / (size_t)shard_tokens;
    if (shards > MAX_SHARDS)
        return complain("the %s split (%zu tokens) would need %zu shards of at most %ld tokens, "
                     "more than %d; raise --shard-tokens", split->name, split->len, shards,
                     shard_tokens, MAX_SHARDS);
    split->shards = (int)shards;
    return 0;
}

/* Checks that the corpus can be written, before anything is. */
static int check_corpus(Corpus *corpus, const PrepareOptions *opts, int inputs)
{
    if (corpus->documents == 0)
        return complain("the %d input file(s) hold no documents (only blank lines or "
                     "separators); give files with text", inputs);
    if (corpus->val.documents == 0)
        return complain("only %zu document(s): with --val-fraction %g "
                     "validation gets 1 document in %ld, so it would be empty; give more text "
                     "or raise --val-fraction", corpus->documents, opts->val_fraction,
                     corpus->every);
    if (plan_shards(&corpus->train, opts->shard_tokens) != 0)
        return -1;
    return plan_shards(&corpus->val, opts->shard_tokens);
}

static void shard_path(char *path, size_t size, const char *dir, const char *name, int index)
{
    snprintf(path, size, "%s/%s_%03d.bin", dir, name, index);
}

static int make_dirs(const char *dir)
{
    char *path = strdup(dir);
    if (!path)
        return complain("out of memory");
    int status = 0;
    for (char *p = path + 1; status == 0; p++) {
        int last = *p == '\0';
        if (*p != '/' && !last)
            continue;
        *p = '\0';
        if (mkdir(path, 0755) != 0 && errno != EEXIST)
            status = complain("cannot create output directory '%s': %s", path, strerror(errno));
        if (last)
            break;
        *p = '/';
    }
    struct stat st;
    if (status == 0 && (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)))
        status = complain("--out '%s' is not a directory", dir);
    free(path);
    return status;
}

/* Shards are written from the last to the first, so the first one's presence
 * means the split is complete (scripts/prepare-default-data relies on it). The
 * split is cut into equal shards (sizes differ by at most one token). */
static int write_split(const Split *split, const char *dir)
{
    size_t base = split->len / (size_t)split->shards, extra = split->len % (size_t)split->shards;
    uint16_t *tokens = malloc((base + 1) * sizeof(*tokens));
    if (!tokens)
        return complain("out of memory");
    int status = 0;
    for (int i = split->shards - 1; i >= 0 && status == 0; i--) {
        size_t start = (size_t)i * base + ((size_t)i < extra ? (size_t)i : extra);
        size_t count = base + ((size_t)i < extra);
        for (size_t t = 0; t < count; t++)
            tokens[t] = split->bytes[start + t];
        char path[4096], err[1024];
        shard_path(path, sizeof(path), dir, split->name, i);
        if (shard_write(path, tokens, count, err, sizeof(err)) != 0)
            status = complain("%s; the shards in '%s' are now incomplete: fix this and run "
                           "again", err, dir);
    }
    free(tokens);
    return status;
}

/* Shards of an earlier, longer run would join this data set through a
 * DIR/train_*.bin pattern: they are removed once the new set is complete. */
static void remove_stale(const Split *split, const char *dir)
{
    for (int i = split->shards; i < MAX_SHARDS; i++) {
        char path[4096];
        shard_path(path, sizeof(path), dir, split->name, i);
        if (unlink(path) == 0)
            printf("removed stale shard %s (from an earlier run)\n", path);
    }
}

static double unigram_entropy(const Split *split)
{
    size_t counts[VOCAB] = {0};
    for (size_t i = 0; i < split->len; i++)
        counts[split->bytes[i]]++;
    double entropy = 0;
    for (int t = 0; t < VOCAB; t++) {
        if (counts[t] == 0)
            continue;
        double p = (double)counts[t] / (double)split->len;
        entropy -= p * log(p);
    }
    return entropy;
}

static void print_split(const Split *split, const char *dir)
{
    printf("  %-5s %8zu documents %10zu tokens  %3d shard%s  %s/%s_000.bin%s\n", split->name,
           split->documents, split->len, split->shards, split->shards == 1 ? " " : "s", dir,
           split->name, split->shards > 1 ? " ..." : "");
}

static void print_summary(const Corpus *corpus, const char *dir, int inputs)
{
    printf(PROG ": %d input file%s, %zu documents, vocab %d (byte-level)\n", inputs,
           inputs == 1 ? "" : "s", corpus->documents, VOCAB);
    print_split(&corpus->train, dir);
    print_split(&corpus->val, dir);
    printf("  unigram entropy of the train tokens: %.4f nats (the loss of a model that knows "
           "only byte frequencies)\n", unigram_entropy(&corpus->train));
}

static int prepare(const PrepareOptions *opts, char **inputs, int input_count)
{
    Corpus corpus = {
        .train = {.name = "train"},
        .val = {.name = "val"},
        .every = lround(1.0 / opts->val_fraction),
    };
    int status = read_inputs(&corpus, inputs, input_count);
    if (status == 0)
        status = check_corpus(&corpus, opts, input_count);
    if (status == 0)
        status = make_dirs(opts->out_dir);
    if (status == 0)
        status = write_split(&corpus.train, opts->out_dir);
    if (status == 0)
        status = write_split(&corpus.val, opts->out_dir);
    if (status == 0) {
        remove_stale(&corpus.train, opts->out_dir);
        remove_stale(&corpus.val, opts->out_dir);
        print_summary(&corpus, opts->out_dir, input_count);
    }
    free(corpus.train.bytes);
    free(corpus.val.bytes);
    return status;
}

int data_prepare_main(int argc, char **argv)
{
    PrepareOptions opts;
    int parsed = parse_options(argc, argv, &opts);
    if (parsed != 0)
        return parsed > 0 ? 0 : 2;
    return prepare(&opts, argv + optind, argc - optind) == 0 ? 0 : 1;
}

int data_main(int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "prepare") == 0)
        return data_prepare_main(argc - 1, argv + 1);
    fprintf(stderr, "usage: phalanx data prepare --out DIR [options] TEXT_FILE...\n");
    return 2;
}
