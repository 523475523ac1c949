/* Model files of other programs (contract in modelfile.h). Little-endian
 * hosts only, like the token shards: the formats are little-endian. */
#include "modelfile.h"
#include "util.h"

#include "checkpoint.h"
#include "stateful.h"

#include <jansson.h>

#include <errno.h>
#include <inttypes.h>
#include <libgen.h>
#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define SAFETENSORS_HEADER_MAX (100u << 20) /* the format's own limit */
#define LLMC_HEADER_INTS 256
#define LLMC_TENSORS 16
#define LLMC_VOCAB_MULTIPLE 128
#define LAYER_TENSORS 12

const char *modelfile_format_name(ModelFormat format)
{
    switch (format) {
    case MODEL_CHECKPOINT: return "checkpoint";
    case MODEL_SAFETENSORS: return "safetensors";
    case MODEL_LLMC: return "llmc";
    }
    return "?";
}

bool modelfile_format_parse(const char *text, ModelFormat *out)
{
    if (strcmp(text, "safetensors") == 0)
        *out = MODEL_SAFETENSORS;
    else if (strcmp(text, "llmc") == 0)
        *out = MODEL_LLMC;
    else
        return false;
    return true;
}

// ----------------------------------------------------------------------------
// where each of our tensors lives in the other formats

/* The tensors of one layer in our storage order (gpt.c) and llm.c's order
 * (which start at index 2); Conv1D weights are transposed in safetensors. */
static const struct {
    const char *ours, *hf;
    bool transposed;
} LAYER_NAMES[LAYER_TENSORS] = {
    {"ln1.weight", "ln_1.weight", false},        {"ln1.bias", "ln_1.bias", false},
    {"attn.qkv.weight", "attn.c_attn.weight", true}, {"attn.qkv.bias", "attn.c_attn.bias", false},
    {"attn.proj.weight", "attn.c_proj.weight", true}, {"attn.proj.bias", "attn.c_proj.bias", false},
    {"ln2.weight", "ln_2.weight", false},        {"ln2.bias", "ln_2.bias", false},
    {"mlp.fc.weight", "mlp.c_fc.weight", true},  {"mlp.fc.bias", "mlp.c_fc.bias", false},
    {"mlp.proj.weight", "mlp.c_proj.weight", true}, {"mlp.proj.bias", "mlp.c_proj.bias", false},
};

static const struct {
    const char *ours, *hf;
    int llmc;
} GLOBAL_NAMES[] = {
    {"wte", "transformer.wte.weight", 0},
    {"wpe", "transformer.wpe.weight", 1},
    {"lnf.weight", "transformer.ln_f.weight", 14},
    {"lnf.bias", "transformer.ln_f.bias", 15},
};

typedef struct {
    char hf[96];
    int llmc;  /* index in llm.c's order */
    int layer; /* -1: not a layer's */
    bool transposed;
} TensorPlace;

static int tensor_place(const char *name, TensorPlace *p)
{
    for (size_t i = 0; i < sizeof(GLOBAL_NAMES) / sizeof(GLOBAL_NAMES[0]); i++)
        if (strcmp(name, GLOBAL_NAMES[i].ours) == 0) {
            *p = (TensorPlace){.llmc = GLOBAL_NAMES[i].llmc, .layer = -1};
            snprintf(p->hf, sizeof(p->hf), "%s", GLOBAL_NAMES[i].hf);
            return 0;
        }
    int layer, used = 0;
    if (sscanf(name, "h.%d.%n", &layer, &used) != 1 || used == 0)
        return -1;
    for (int i = 0; i < LAYER_TENSORS; i++)
        if (strcmp(name + used, LAYER_NAMES[i].ours) == 0) {
            *p = (TensorPlace){.llmc = 2 + i, .layer = layer,
                               .transposed = LAYER_NAMES[i].transposed};
            snprintf(p->hf, sizeof(p->hf), "transformer.h.%d.%s", layer, LAYER_NAMES[i].hf);
            return 0;
        }
    return -1;
}

/* Rows of wte that hold real tokens: the file never sees our padding. */
static size_t real_rows(const GPT *gpt, const ParamTensor *t)
{
    return strcmp(t->name, "wte") == 0 ? (size_t)gpt->config.vocab : (size_t)t->shape[0];
}

/* Shape of tensor t in a safetensors file: unpadded, Conv1D transposed. */
static void safetensors_shape(const GPT *gpt, const ParamTensor *t, const TensorPlace *p,
                              int *ndim, int64_t shape[2])
{
    *ndim = t->ndim;
    shape[0] = (int64_t)real_rows(gpt, t);
    shape[1] = t->ndim == 2 ? t->shape[1] : 0;
    if (p->transposed) {
        shape[0] = t->shape[1];
        shape[1] = t->shape[0];
    }
}

// ----------------------------------------------------------------------------
// an open model file

typedef struct {
    const char *path;
    ModelFormat format;
    FILE *file;
    uint64_t size;
    GPTConfig config;
    int file_vocab_rows; /* llm.c: its padded vocabulary */
    json_t *header;      /* safetensors */
    uint64_t data_start; /* safetensors: first byte after the header */
} ModelSource;

static void source_close(ModelSource *s)
{
    if (s->file)
        fclose(s->file);
    json_decref(s->header);
    memset(s, 0, sizeof(*s));
}

static int read_at(ModelSource *s, uint64_t offset, void *out, size_t bytes, char *err,
                   size_t err_len)
{
    if (offset + bytes > s->size || fseeko(s->file, (off_t)offset, SEEK_SET) != 0 ||
        fread(out, 1, bytes, s->file) != bytes)
        return util_fail(err, err_len, "%s: cannot read %zu bytes at offset %" PRIu64
                                       " (the file has %" PRIu64 "): truncated?",
                         s->path, bytes, offset, s->size);
    return 0;
}

static int config_from(ModelSource *s, GPTConfig c, char *err, size_t err_len)
{
    char why[256];
    if (gpt_config_check(&c, why, sizeof(why)) != 0)
        return util_fail(err, err_len, "%s: a model Phalanx cannot hold: %s", s->path, why);
    s->config = c;
    return 0;
}

// ---- llm.c

/* Floats of llm.c's tensor k (all layers), in llm.c's order. */
static uint64_t llmc_tensor_floats(const GPTConfig *c, int Vp, int k)
{
    uint64_t C = (uint64_t)c->dim, L = (uint64_t)c->layers;
    const uint64_t per_layer[LAYER_TENSORS] = {C, C, 3 * C * C, 3 * C, C * C, C,
                                               C, C, 4 * C * C, 4 * C, 4 * C * C, C};
    if (k == 0)
        return (uint64_t)Vp * C;
    if (k == 1)
        return (uint64_t)c->seq_len * C;
    if (k >= 14)
        return C;
    return L * per_layer[k - 2];
}

static uint64_t llmc_offset(const GPTConfig *c, int Vp, int k)
{
    uint64_t offset = LLMC_HEADER_INTS * sizeof(int32_t);
    for (int i = 0; i < k; i++)
        offset += llmc_tensor_floats(c, Vp, i) * sizeof(float);
    return offset;
}

static int llmc_open(ModelSource *s, char *err, size_t err_len)
{
    int32_t h[LLMC_HEADER_INTS];
    if (s->size < sizeof(h))
        return util_fail(err, err_len, "%s: truncated llm.c model file: %" PRIu64 " bytes, shorter "
                                       "than its 1024-byte header", s->path, s->size);
    if (read_at(s, 0, h, sizeof(h), err, err_len))
        return -1;
    if (h[1] != LLMC_MODEL_VERSION)
        return util_fail(err, err_len, "%s: llm.c model file version %d: Phalanx reads version 3 "
                                       "(fp32, padded vocabulary); write one with llm.c's fp32 "
                                       "export or `phalanx export --format llmc`", s->path, h[1]);
    GPTConfig c = {.seq_len = h[2], .vocab = h[3], .layers = h[4], .heads = h[5], .dim = h[6]};
    if (h[7] < h[3] || h[7] > h[3] + 4096)
        return util_fail(err, err_len, "%s: llm.c header: padded vocabulary %d for vocabulary %d "
                                       "(it must be at least the vocabulary): a damaged file",
                         s->path, h[7], h[3]);
    if (config_from(s, c, err, err_len))
        return -1;
    s->file_vocab_rows = h[7];
    uint64_t expect = llmc_offset(&c, h[7], LLMC_TENSORS);
    if (s->size != expect)
        return util_fail(err, err_len, "%s: llm.c model file of %" PRIu64 " bytes, but its header "
                                       "(vocab %d, layers %d, channels %d, max_seq_len %d) needs %"
                                       PRIu64 ": %s", s->path, s->size, c.vocab, c.layers, c.dim,
                         c.seq_len, expect, s->size < expect ? "truncated" : "trailing bytes");
    return 0;
}

static int llmc_read(ModelSource *s, const GPT *gpt, const ParamTensor *t,
                     const TensorPlace *p, float *out, char *err, size_t err_len)
{
    uint64_t floats = llmc_tensor_floats(&s->config, s->file_vocab_rows, p->llmc);
    uint64_t offset = llmc_offset(&s->config, s->file_vocab_rows, p->llmc);
    if (p->layer >= 0)
        offset += (uint64_t)p->layer * (floats / (uint64_t)s->config.layers) * sizeof(float);
    size_t count = real_rows(gpt, t) * (t->ndim == 2 ? (size_t)t->shape[1] : 1);
    memset(out + count, 0, (t->numel - count) * sizeof(float));
    return read_at(s, offset, out, count * sizeof(float), err, err_len);
}

// ---- safetensors

static size_t dtype_bytes(const char *dtype)
{
    static const struct { const char *name; size_t bytes; } sizes[] = {
        {"F64", 8}, {"F32", 4}, {"F16", 2}, {"BF16", 2}, {"I64", 8}, {"I32", 4}, {"I16", 2},
        {"I8", 1},  {"U8", 1},  {"BOOL", 1}, {"U16", 2}, {"U32", 4}, {"U64", 8},
    };
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++)
        if (strcmp(dtype, sizes[i].name) == 0)
            return sizes[i].bytes;
    return 0;
}

typedef struct {
    uint64_t begin, end;
    const char *name;
} ByteRange;

static int by_begin(const void *a, const void *b)
{
    const ByteRange *x = a, *y = b;
    return x->begin < y->begin ? -1 : x->begin > y->begin;
}

/* One entry: a known dtype, a shape of non-negative sizes, and offsets that
 * stay inside the data and hold exactly shape x dtype bytes. */
static int check_entry(const ModelSource *s, const char *name, json_t *entry, uint64_t data,
                       ByteRange *range, char *err, size_t err_len)
{
    json_t *dtype = json_object_get(entry, "dtype"), *shape = json_object_get(entry, "shape");
    json_t *offsets = json_object_get(entry, "data_offsets");
    size_t bytes = json_is_string(dtype) ? dtype_bytes(json_string_value(dtype)) : 0;
    if (!bytes || !json_is_array(shape) || !json_is_array(offsets) ||
        json_array_size(offsets) != 2 || !json_is_integer(json_array_get(offsets, 0)) ||
        !json_is_integer(json_array_get(offsets, 1)))
        return util_fail(err, err_len, "%s: safetensors header: tensor '%s' lacks a known dtype, a "
                                       "shape or two data_offsets", s->path, name);
    uint64_t numel = 1;
    for (size_t i = 0; i < json_array_size(shape); i++) {
        json_t *dim = json_array_get(shape, i);
        if (!json_is_integer(dim) || json_integer_value(dim) < 0 ||
            json_integer_value(dim) > (1LL << 40))
            return util_fail(err, err_len, "%s: safetensors header: tensor '%s' has a bad shape",
                             s->path, name);
        numel *= (uint64_t)json_integer_value(dim);
        if (numel > (1ULL << 40))
            return util_fail(err, err_len, "%s: safetensors header: tensor '%s' is too large",
                             s->path, name);
    }
    json_int_t begin = json_integer_value(json_array_get(offsets, 0));
    json_int_t end = json_integer_value(json_array_get(offsets, 1));
    if (begin < 0 || end < begin || (uint64_t)end > data)
        return util_fail(err, err_len,
                         "%s: safetensors header: tensor '%s' has data_offsets [%lld, %lld] "
                         "outside the %" PRIu64 " data bytes of the file (truncated, or a "
                         "header that lies)",
                         s->path, name, (long long)begin, (long long)end, data);
    if ((uint64_t)(end - begin) != numel * bytes)
        return util_fail(err, err_len, "%s: safetensors header: tensor '%s' spans %lld bytes, but "
                                       "its shape and dtype need %" PRIu64,
                         s->path, name, (long long)(end - begin), numel * bytes);
    *range = (ByteRange){(uint64_t)begin, (uint64_t)end, name};
    return 0;
}

/* Every entry checked, and no two tensors share bytes. */
static int check_header(const ModelSource *s, uint64_t data, char *err, size_t err_len)
{
    size_t count = json_object_size(s->header);
    ByteRange *ranges = calloc(count ? count : 1, sizeof(ByteRange));
    if (!ranges)
        return util_fail(err, err_len, "out of memory");
    size_t used = 0;
    const char *name;
    json_t *entry;
    int status = 0;
    json_object_foreach(s->header, name, entry) {
        if (strcmp(name, "__metadata__") == 0)
            continue;
        if (!json_is_object(entry) ||
            check_entry(s, name, entry, data, &ranges[used++], err, err_len)) {
            if (!json_is_object(entry))
                util_fail(err, err_len, "%s: safetensors header: '%s' is not a tensor entry",
                          s->path, name);
            status = -1;
            break;
        }
    }
    qsort(ranges, used, sizeof(ByteRange), by_begin);
    for (size_t i = 1; status == 0 && i < used; i++)
        if (ranges[i].begin < ranges[i - 1].end)
            status = util_fail(err, err_len, "%s: safetensors header: tensors '%s' and '%s' "
                                             "overlap: a header that lies about offsets",
                               s->path, ranges[i - 1].name, ranges[i].name);
    free(ranges);
    return status;
}

static json_t *tensor_entry(const ModelSource *s, const char *name)
{
    json_t *entry = json_object_get(s->header, name);
    return strcmp(name, "__metadata__") == 0 ? NULL : entry;
}

static int entry_dim(json_t *entry, size_t i)
{
    json_t *shape = json_object_get(entry, "shape");
    return i < json_array_size(shape) ? (int)json_integer_value(json_array_get(shape, i)) : -1;
}

/* n_head: from the metadata, else from config.json beside the file. */
static int safetensors_heads(const ModelSource *s, char *err, size_t err_len)
{
    json_t *meta = json_object_get(s->header, "__metadata__");
    const char *text = json_string_value(json_object_get(meta, "n_head"));
    if (text)
        return atoi(text);
    char copy[PATH_MAX], config[PATH_MAX + 16];
    snprintf(copy, sizeof(copy), "%s", s->path);
    snprintf(config, sizeof(config), "%s/config.json", dirname(copy));
    json_t *root = json_load_file(config, 0, NULL);
    int heads = (int)json_integer_value(json_object_get(root, "n_head"));
    json_decref(root);
    if (heads <= 0)
        util_fail(err, err_len, "%s: the head count is in neither the file's metadata (n_head) nor "
                                "a config.json beside it; put GPT-2's config.json next to the file",
                  s->path);
    return heads;
}

static int safetensors_config(ModelSource *s, char *err, size_t err_len)
{
    json_t *wte = tensor_entry(s, "transformer.wte.weight");
    json_t *wpe = tensor_entry(s, "transformer.wpe.weight");
    if (!wte || !wpe)
        return util_fail(err, err_len, "%s: safetensors file without transformer.wte.weight and "
                                       "transformer.wpe.weight: not a Hugging Face GPT-2 model",
                         s->path);
    GPTConfig c = {.vocab = entry_dim(wte, 0), .dim = entry_dim(wte, 1),
                   .seq_len = entry_dim(wpe, 0)};
    char name[96];
    for (;; c.layers++) {
        snprintf(name, sizeof(name), "transformer.h.%d.ln_1.weight", c.layers);
        if (!tensor_entry(s, name))
            break;
    }
    if ((c.heads = safetensors_heads(s, err, err_len)) <= 0)
        return -1;
    return config_from(s, c, err, err_len);
}

static int safetensors_open(ModelSource *s, uint64_t header_len, char *err, size_t err_len)
{
    char *text = malloc(header_len);
    if (!text)
        return util_fail(err, err_len, "out of memory");
    int status = read_at(s, 8, text, header_len, err, err_len);
    json_error_t jerr;
    if (status == 0 && !(s->header = json_loadb(text, header_len, JSON_REJECT_DUPLICATES, &jerr)))
        status = util_fail(err, err_len, "%s: safetensors header is not valid JSON: %s", s->path,
                           jerr.text);
    free(text);
    if (status == 0 && !json_is_object(s->header))
        status = util_fail(err, err_len, "%s: safetensors header is not a JSON object", s->path);
    if (status)
        return -1;
    s->data_start = 8 + header_len;
    return check_header(s, s->size - s->data_start, err, err_len) ||
                   safetensors_config(s, err, err_len)
               ? -1
               : 0;
}

static int safetensors_read(ModelSource *s, const GPT *gpt, const ParamTensor *t,
                            const TensorPlace *p, float *out, char *err, size_t err_len)
{
    json_t *entry = tensor_entry(s, p->hf);
    int ndim;
    int64_t shape[2];
    safetensors_shape(gpt, t, p, &ndim, shape);
    if (!entry)
        return util_fail(err, err_len, "%s: tensor %s (our %s) is missing", s->path, p->hf,
                         t->name);
    const char *dtype = json_string_value(json_object_get(entry, "dtype"));
    json_t *file_shape = json_object_get(entry, "shape");
    if (strcmp(dtype, "F32") != 0)
        return util_fail(err, err_len, "%s: tensor %s is %s: Phalanx reads F32 (float32)", s->path,
                         p->hf, dtype);
    if (json_array_size(file_shape) != (size_t)ndim || entry_dim(entry, 0) != shape[0] ||
        (ndim == 2 && entry_dim(entry, 1) != shape[1])) {
        char want[48];
        ckpt_shape_text(ndim, shape, want, sizeof(want));
        return util_fail(err, err_len, "%s: tensor %s has shape [%d%s...], the model needs %s",
                         s->path, p->hf, entry_dim(entry, 0), ndim == 2 ? ", " : "", want);
    }
    size_t count = (size_t)shape[0] * (ndim == 2 ? (size_t)shape[1] : 1);
    uint64_t begin = (uint64_t)json_integer_value(json_array_get(
        json_object_get(entry, "data_offsets"), 0));
    float *buffer = p->transposed ? malloc(count * sizeof(float)) : out;
    if (!buffer)
        return util_fail(err, err_len, "out of memory");
    int status = read_at(s, s->data_start + begin, buffer, count * sizeof(float), err, err_len);
    if (p->transposed) { /* file [in, out] -> ours [out, in] */
        for (int64_t i = 0; i < shape[0]; i++)
            for (int64_t j = 0; j < shape[1]; j++)
                out[j * shape[0] + i] = buffer[i * shape[1] + j];
        free(buffer);
    }
    memset(out + count, 0, (t->numel - count) * sizeof(float));
    return status;
}

// ---- detection

static const unsigned char HDF5_SIGNATURE[8] = {0x89, 'H', 'D', 'F', '\r', '\n', 0x1a, '\n'};

static int checkpoint_config(ModelSource *s, char *err, size_t err_len)
{
    CkptIndex index;
    if (ckpt_index_read(s->path, &index, err, err_len) != CKPT_OK)
        return -1;
    CkptModel m = index.state.model;
    ckpt_index_free(&index);
    GPTConfig c = {m.vocab, m.layers, m.heads, m.dim, m.seq_len};
    return config_from(s, c, err, err_len);
}

static int source_open(ModelSource *s, const char *path, char *err, size_t err_len)
{
    memset(s, 0, sizeof(*s));
    s->path = path;
    struct stat st;
    if (stat(path, &st) != 0)
        return util_fail(err, err_len, "%s: %s", path, strerror(errno));
    s->format = MODEL_CHECKPOINT;
    if (S_ISDIR(st.st_mode))
        return checkpoint_config(s, err, err_len);
    if (!S_ISREG(st.st_mode))
        return util_fail(err, err_len, "%s: not a regular file", path);
    if (!(s->file = fopen(path, "rb")))
        return util_fail(err, err_len, "%s: %s", path, strerror(errno));
    s->size = (uint64_t)st.st_size;
    unsigned char head[9] = {0};
    size_t got = fread(head, 1, sizeof(head), s->file);
    int32_t magic;
    uint64_t header_len;
    memcpy(&magic, head, sizeof(magic));
    memcpy(&header_len, head, sizeof(header_len));
    // an index.h5 starts with its seal; an HDF5 file without one is refused by the reader
    if (got >= 8 && (memcmp(head, CKPT_INDEX_MAGIC, 8) == 0 ||
                     memcmp(head, HDF5_SIGNATURE, 8) == 0))
        return checkpoint_config(s, err, err_len);
    if (got >= 4 && magic == LLMC_MODEL_MAGIC) {
        s->format = MODEL_LLMC;
        return llmc_open(s, err, err_len);
    }
    if (got == 9 && head[8] == '{' && header_len <= SAFETENSORS_HEADER_MAX) {
        s->format = MODEL_SAFETENSORS;
        if (8 + header_len > s->size)
            return util_fail(err, err_len,
                             "%s: truncated safetensors file: its header says %" PRIu64
                             " header bytes, the file has %" PRIu64 " in all",
                             path, header_len, s->size);
        return safetensors_open(s, header_len, err, err_len);
    }
    return util_fail(err, err_len, "%s: not a model file Phalanx reads: neither a Phalanx "
                                   "checkpoint, a safetensors file nor an llm.c model file (magic "
                                   "%d)", path, LLMC_MODEL_MAGIC);
}

int modelfile_probe(const char *path, ModelFormat *format, GPTConfig *config, char *err,
                    size_t err_len)
{
    ModelSource s;
    int status = source_open(&s, path, err, err_len);
    if (status == 0) {
        *format = s.format;
        *config = s.config;
    }
    source_close(&s);
    return status;
}

// ----------------------------------------------------------------------------
// loading

static int same_shape(const ModelSource *s, const GPTConfig *m, char *err, size_t err_len)
{
    const GPTConfig *f = &s->config;
    const struct { const char *flag; int file, model; } dims[] = {
        {"--vocab", f->vocab, m->vocab}, {"--layers", f->layers, m->layers},
        {"--heads", f->heads, m->heads}, {"--dim", f->dim, m->dim},
        {"--seq-len", f->seq_len, m->seq_len},
    };
    for (size_t i = 0; i < sizeof(dims) / sizeof(dims[0]); i++)
        if (dims[i].file != dims[i].model)
            return util_fail(err, err_len, "%s has %s %d, the model has %s %d", s->path,
                             dims[i].flag, dims[i].file, dims[i].flag, dims[i].model);
    return 0;
}

static int load_checkpoint(ModelSource *s, const GPT *gpt, float *host, char *err,
                           size_t err_len)
{
    CkptTensor *tensors = calloc((size_t)gpt->tensor_count, sizeof(CkptTensor));
    if (!tensors)
        return util_fail(err, err_len, "out of memory");
    for (int i = 0; i < gpt->tensor_count; i++) {
        const ParamTensor *t = &gpt->tensors[i];
        snprintf(tensors[i].name, sizeof(tensors[i].name), "%s", t->name);
        tensors[i].ndim = t->ndim;
        tensors[i].shape[0] = t->shape[0];
        tensors[i].shape[1] = t->ndim == 2 ? t->shape[1] : 0;
        tensors[i].param = host + t->offset;
    }
    const GPTConfig *c = &gpt->config;
    CkptModel expect = {c->vocab, c->layers, c->heads, c->dim, c->seq_len};
    CkptRunState state;
    CkptStatus status = ckpt_load(s->path, tensors, gpt->tensor_count, &expect, stateful_check,
                                  &state, err, err_len);
    free(tensors);
    return status == CKPT_OK ? 0 : -1;
}

static int load_tensors(ModelSource *s, const GPT *gpt, float *host, char *err, size_t err_len)
{
    if (s->format == MODEL_CHECKPOINT)
        return load_checkpoint(s, gpt, host, err, err_len);
    for (int i = 0; i < gpt->tensor_count; i++) {
        const ParamTensor *t = &gpt->tensors[i];
        TensorPlace place;
        if (tensor_place(t->name, &place) != 0)
            return util_fail(err, err_len, "tensor %s has no place in %s files", t->name,
                             modelfile_format_name(s->format));
        float *out = host + t->offset;
        int status = s->format == MODEL_LLMC
                         ? llmc_read(s, gpt, t, &place, out, err, err_len)
                         : safetensors_read(s, gpt, t, &place, out, err, err_len);
        if (status)
            return -1;
    }
    return 0;
}

int modelfile_load(const char *path, GPT *gpt, char *err, size_t err_len)
{
    ModelSource s;
    if (source_open(&s, path, err, err_len) || same_shape(&s, &gpt->config, err, err_len)) {
        source_close(&s);
        return -1;
    }
    const Device *dev = gpt->dev;
    size_t bytes = gpt->param_count * sizeof(float);
    float *host = dev->staged ? malloc(bytes) : gpt->params;
    int status = host ? load_tensors(&s, gpt, host, err, err_len)
                      : util_fail(err, err_len, "out of memory");
    source_close(&s);
    if (status == 0) {
        device_upload(dev, gpt->params, host, bytes);
        if (device_sync(dev) != 0)
            status = util_fail(err, err_len, "copying %s to the %s: %s", path, dev->name,
                               device_error(dev));
    }
    if (host != gpt->params)
        free(host);
    return status;
}

// ----------------------------------------------------------------------------
// writing

static int write_all(FILE *file, const void *data, size_t bytes)
{
    return fwrite(data, 1, bytes, file) == bytes ? 0 : -1;
}

static int write_zeros(FILE *file, size_t floats)
{
    static const float zeros[1024];
    for (size_t done = 0; done < floats; done += 1024) {
        size_t n = floats - done < 1024 ? floats - done : 1024;
        if (write_all(file, zeros, n * sizeof(float)))
            return -1;
    }
    return 0;
}

/* A tensor as the file stores it: real rows only, Conv1D transposed. */
static int write_tensor(FILE *file, const GPT *gpt, const ParamTensor *t, bool transposed)
{
    const float *p = gpt->params + t->offset;
    size_t rows = real_rows(gpt, t), cols = t->ndim == 2 ? (size_t)t->shape[1] : 1;
    if (!transposed)
        return write_all(file, p, rows * cols * sizeof(float));
    float *buffer = malloc(rows * cols * sizeof(float));
    if (!buffer)
        return -1;
    for (size_t i = 0; i < rows; i++)
        for (size_t j = 0; j < cols; j++)
            buffer[j * rows + i] = p[i * cols + j];
    int status = write_all(file, buffer, rows * cols * sizeof(float));
    free(buffer);
    return status;
}

static json_t *safetensors_header(const GPT *gpt)
{
    json_t *root = json_object();
    json_t *meta = json_object();
    char heads[16];
    snprintf(heads, sizeof(heads), "%d", gpt->config.heads);
    json_object_set_new(meta, "format", json_string("pt"));
    json_object_set_new(meta, "n_head", json_string(heads));
    json_object_set_new(root, "__metadata__", meta);
    uint64_t offset = 0;
    for (int i = 0; i < gpt->tensor_count; i++) {
        const ParamTensor *t = &gpt->tensors[i];
        TensorPlace p;
        int ndim;
        int64_t shape[2];
        tensor_place(t->name, &p);
        safetensors_shape(gpt, t, &p, &ndim, shape);
        uint64_t bytes = (uint64_t)shape[0] * (ndim == 2 ? (uint64_t)shape[1] : 1) * 4;
        json_t *dims = json_array();
        for (int d = 0; d < ndim; d++)
            json_array_append_new(dims, json_integer(shape[d]));
        json_object_set_new(root, p.hf,
                            json_pack("{s:s, s:o, s:[I, I]}", "dtype", "F32", "shape", dims,
                                      "data_offsets", (json_int_t)offset,
                                      (json_int_t)(offset + bytes)));
        offset += bytes;
    }
    return root;
}

static int write_safetensors(FILE *file, const GPT *gpt)
{
    json_t *header = safetensors_header(gpt);
    char *text = json_dumps(header, JSON_COMPACT);
    json_decref(header);
    if (!text)
        return -1;
    size_t len = strlen(text), padded = (len + 7) / 8 * 8;
    uint64_t header_len = padded;
    int status = write_all(file, &header_len, 8) || write_all(file, text, len) ||
                 write_all(file, "        ", padded - len);
    free(text);
    for (int i = 0; status == 0 && i < gpt->tensor_count; i++) {
        TensorPlace p;
        tensor_place(gpt->tensors[i].name, &p);
        status = write_tensor(file, gpt, &gpt->tensors[i], p.transposed);
    }
    return status;
}

/* llm.c's order: wte (padded to a multiple of 128 rows), wpe, each layer
 * tensor stacked over the layers, lnfw, lnfb. */
static int write_llmc(FILE *file, const GPT *gpt)
{
    const GPTConfig *c = &gpt->config;
    int Vp = (c->vocab + LLMC_VOCAB_MULTIPLE - 1) / LLMC_VOCAB_MULTIPLE * LLMC_VOCAB_MULTIPLE;
    int32_t h[LLMC_HEADER_INTS] = {LLMC_MODEL_MAGIC, LLMC_MODEL_VERSION, c->seq_len, c->vocab,
                                   c->layers, c->heads, c->dim, Vp};
    const ParamTensor *wte = gpt_find_tensor(gpt, "wte");
    if (write_all(file, h, sizeof(h)) || write_tensor(file, gpt, wte, false) ||
        write_zeros(file, (size_t)(Vp - c->vocab) * (size_t)c->dim) ||
        write_tensor(file, gpt, gpt_find_tensor(gpt, "wpe"), false))
        return -1;
    char name[48];
    for (int k = 0; k < LAYER_TENSORS; k++)
        for (int l = 0; l < c->layers; l++) {
            snprintf(name, sizeof(name), "h.%d.%s", l, LAYER_NAMES[k].ours);
            if (write_tensor(file, gpt, gpt_find_tensor(gpt, name), false))
                return -1;
        }
    return write_tensor(file, gpt, gpt_find_tensor(gpt, "lnf.weight"), false) ||
                   write_tensor(file, gpt, gpt_find_tensor(gpt, "lnf.bias"), false)
               ? -1
               : 0;
}

/* GPT2Config's fields, so that GPT2LMHeadModel.from_pretrained(DIR) loads it. */
static json_t *hf_config(const GPTConfig *c)
{
    return json_pack("{s:[s], s:s, s:i, s:i, s:i, s:i, s:i, s:i, s:s, s:f, s:b, s:f, s:f, s:f}",
                     "architectures", "GPT2LMHeadModel", "model_type", "gpt2", "n_embd", c->dim,
                     "n_layer", c->layers, "n_head", c->heads, "n_positions", c->seq_len,
                     "n_ctx", c->seq_len, "vocab_size", c->vocab, "activation_function",
                     "gelu_new", "layer_norm_epsilon", 1e-5, "tie_word_embeddings", 1,
                     "resid_pdrop", 0.0, "embd_pdrop", 0.0, "attn_pdrop", 0.0);
}

typedef int (*FileWriter)(FILE *file, const void *context);

/* Writes through PATH.tmp-XXXXXX, fsync and rename: all or nothing. */
static int write_atomically(const char *path, FileWriter write, const void *context, char *err,
                            size_t err_len)
{
    char tmp[PATH_MAX];
    if (snprintf(tmp, sizeof(tmp), "%s.tmp-XXXXXX", path) >= (int)sizeof(tmp))
        return util_fail(err, err_len, "%s: path too long", path);
    int fd = mkstemp(tmp);
    if (fd < 0)
        return util_fail(err, err_len, "%s: cannot create a file beside it: %s", path,
                         strerror(errno));
    mode_t mask = umask(0); /* a model file is as readable as any other new file */
    umask(mask);
    fchmod(fd, 0666 & ~mask);
    FILE *file = fdopen(fd, "wb");
    int status = file && write(file, context) == 0 && fflush(file) == 0 && fsync(fd) == 0 ? 0
                                                                                          : -1;
    int saved = errno;
    if (file ? fclose(file) != 0 : close(fd) != 0)
        status = -1;
    if (status == 0 && rename(tmp, path) == 0)
        return 0;
    saved = status ? saved : errno;
    unlink(tmp);
    return util_fail(err, err_len, "%s: writing failed: %s", path, strerror(saved));
}

static int write_safetensors_file(FILE *file, const void *gpt)
{
    return write_safetensors(file, gpt);
}

static int write_llmc_file(FILE *file, const void *gpt)
{
    return write_llmc(file, gpt);
}

static int write_json_file(FILE *file, const void *json)
{
    return json_dumpf(json, file, JSON_INDENT(2)) == 0 && fputc('\n', file) != EOF ? 0 : -1;
}

static int write_hf_config(const char *model_path, const GPTConfig *c, char *err,
                           size_t err_len)
{
    char copy[PATH_MAX], path[PATH_MAX + 16];
    snprintf(copy, sizeof(copy), "%s", model_path);
    snprintf(path, sizeof(path), "%s/config.json", dirname(copy));
    json_t *config = hf_config(c);
    int status = write_atomically(path, write_json_file, config, err, err_len);
    json_decref(config);
    return status;
}

int modelfile_export(const GPT *gpt, ModelFormat format, const char *path, char *err,
                     size_t err_len)
{
    if (format == MODEL_LLMC)
        return write_atomically(path, write_llmc_file, gpt, err, err_len);
    if (format != MODEL_SAFETENSORS)
        return util_fail(err, err_len, "export writes safetensors or llmc");
    return write_atomically(path, write_safetensors_file, gpt, err, err_len) ||
                   write_hf_config(path, &gpt->config, err, err_len)
               ? -1
               : 0;
}
