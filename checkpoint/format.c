/*
 * The checkpoint schema: what a shard and an index hold (groups, datasets,
 * the fragment and shard tables, virtual datasets, the run state's
 * attributes), built as in-memory images and read back with every part
 * checked. The HDF5 plumbing under it (images, checksums, the index seal,
 * attributes; and why files are built as images) is h5util.c's.
 */
#include "internal.h"
#include "util.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

const char *const ckpt_kind_group[KIND_COUNT] = {"params", "optim/m", "optim/v"};

/* Chunks of at most 4 MiB: big enough for fast I/O, small enough that a
 * checksum error names a small region and reading needs little scratch. */
#define CHUNK_BYTES ((size_t)4 << 20)

// ----------------------------------------------------------------------------
// the fragment table

static int compare_fragments(const void *a, const void *b)
{
    const CkptFragment *x = a, *y = b;
    int by_name = strcmp(x->name, y->name);
    if (by_name != 0)
        return by_name;
    return (x->row_begin > y->row_begin) - (x->row_begin < y->row_begin);
}

void format_fragments_sort(CkptFragment *fragments, int count)
{
    qsort(fragments, (size_t)count, sizeof(*fragments), compare_fragments);
}

static bool same_shape(const CkptFragment *a, const CkptFragment *b)
{
    return a->ndim == b->ndim && a->shape[0] == b->shape[0] &&
           ckpt_row_length(a->ndim, a->shape) == ckpt_row_length(b->ndim, b->shape);
}

int format_fragments_check(const CkptFragment *f, int count, char *err, size_t err_len)
{
    for (int i = 0; i < count; i++) {
        bool first = i == 0 || strcmp(f[i].name, f[i - 1].name) != 0;
        bool last = i == count - 1 || strcmp(f[i].name, f[i + 1].name) != 0;
        if (!first && !same_shape(&f[i], &f[i - 1]))
            return util_fail(err, err_len,
                             "tensor '%s': rank %d holds shape [%lld, %lld], rank %d holds "
                             "[%lld, %lld]",
                             f[i].name, f[i].rank, (long long)f[i].shape[0],
                             (long long)ckpt_row_length(f[i].ndim, f[i].shape), f[i - 1].rank,
                             (long long)f[i - 1].shape[0],
                             (long long)ckpt_row_length(f[i - 1].ndim, f[i - 1].shape));
        int64_t expected = first ? 0 : f[i - 1].row_end;
        if (f[i].row_begin > expected)
            return util_fail(err, err_len, "tensor '%s': rows [%lld, %lld) are written by no rank",
                             f[i].name, (long long)expected, (long long)f[i].row_begin);
        if (f[i].row_begin < expected)
            return util_fail(err, err_len,
                             "tensor '%s': rows [%lld, %lld) of rank %d overlap rows up to %lld "
                             "of rank %d (replica_index/replica_count disagree)",
                             f[i].name, (long long)f[i].row_begin, (long long)f[i].row_end,
                             f[i].rank, (long long)expected, f[i - 1].rank);
        if (last && f[i].row_end != f[i].shape[0])
            return util_fail(err, err_len, "tensor '%s': rows [%lld, %lld) are written by no rank",
                             f[i].name, (long long)f[i].row_end, (long long)f[i].shape[0]);
    }
    return 0;
}

// ----------------------------------------------------------------------------
// run state: group `run`, one attribute per core field of CkptRunState, the
// stateful parts' typed values between the model's and the writer's (the
// order of format 1), and run/extra's pairs

typedef enum { F_INT, F_I64, F_U64, F_F64, F_STR } FieldType;

typedef struct {
    const char *name;
    FieldType type;
    size_t offset, size;
} Field;

#define FIELD(n, t, member) \
    {n, t, offsetof(CkptRunState, member), sizeof(((CkptRunState *)0)->member)}

/* Written before the values */
static const Field HEAD_FIELDS[] = {
    FIELD("format_version", F_INT, format_version),
    FIELD("step", F_I64, step),
    FIELD("sample_cursor", F_I64, sample_cursor),
    FIELD("seed", F_U64, seed),
    FIELD("vocab", F_INT, model.vocab),
    FIELD("layers", F_INT, model.layers),
    FIELD("heads", F_INT, model.heads),
    FIELD("dim", F_INT, model.dim),
    FIELD("seq_len", F_INT, model.seq_len),
};
/* ... and after them */
static const Field TAIL_FIELDS[] = {
    FIELD("writer_dp", F_INT, writer.dp),
    FIELD("writer_pp", F_INT, writer.pp),
    FIELD("writer_sp", F_INT, writer.sp),
    FIELD("writer_world", F_INT, writer.world),
};
#define COUNT_OF(a) (sizeof(a) / sizeof((a)[0]))

static hid_t field_file_type(FieldType t)
{
    switch (t) {
    case F_INT: return H5T_STD_I32LE;
    case F_I64: return H5T_STD_I64LE;
    case F_U64: return H5T_STD_U64LE;
    case F_F64: return H5T_IEEE_F64LE;
    case F_STR: break;
    }
    return H5I_INVALID_HID;
}

static hid_t field_mem_type(FieldType t)
{
    switch (t) {
    case F_INT: return H5T_NATIVE_INT;
    case F_I64: return H5T_NATIVE_INT64;
    case F_U64: return H5T_NATIVE_UINT64;
    case F_F64: return H5T_NATIVE_DOUBLE;
    case F_STR: break;
    }
    return H5I_INVALID_HID;
}

static int fields_write(hid_t run, const CkptRunState *state, const Field *fields, size_t count)
{
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < count; i++) {
        const Field *f = &fields[i];
        const char *at = (const char *)state + f->offset;
        rc = f->type == F_STR ? h5_attr_string(run, f->name, at, f->size)
                              : h5_attr_write(run, f->name, field_file_type(f->type),
                                              field_mem_type(f->type), 0, at);
    }
    return rc;
}

/* A typed value as the attribute of its type (CkptValueType). */
static int value_write(hid_t run, const CkptValue *v)
{
    switch (v->type) {
    case CKPT_INT32:
        return h5_attr_write(run, v->key, H5T_STD_I32LE, H5T_NATIVE_INT32, 0, &v->as.i32);
    case CKPT_INT64: return h5_attr_i64(run, v->key, 0, &v->as.i64);
    case CKPT_F64:
        return h5_attr_write(run, v->key, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, 0, &v->as.f64);
    case CKPT_TEXT: return h5_attr_string(run, v->key, v->as.text, sizeof(v->as.text));
    }
    return -1;
}

static int run_state_write(hid_t file, const CkptRunState *state)
{
    hid_t lcpl = H5Pcreate(H5P_LINK_CREATE);
    H5Pset_create_intermediate_group(lcpl, 1);
    hid_t run = H5Gcreate2(file, "run", lcpl, H5P_DEFAULT, H5P_DEFAULT);
    hid_t extra = run >= 0 ? H5Gcreate2(run, "extra", lcpl, H5P_DEFAULT, H5P_DEFAULT)
                           : H5I_INVALID_HID;
    int rc = extra >= 0 ? fields_write(run, state, HEAD_FIELDS, COUNT_OF(HEAD_FIELDS)) : -1;
    for (int i = 0; rc == 0 && i < state->value_count; i++)
        rc = value_write(run, &state->values[i]);
    if (rc == 0)
        rc = fields_write(run, state, TAIL_FIELDS, COUNT_OF(TAIL_FIELDS));
    for (int i = 0; rc == 0 && i < state->extra_count; i++)
        rc = h5_attr_write(extra, state->extra[i].key, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, 0,
                           &state->extra[i].value);
    h5_close(extra);
    h5_close(run);
    h5_close(lcpl);
    return rc;
}

static herr_t read_extra(hid_t obj, const char *name, const H5A_info_t *info, void *data)
{
    (void)info;
    CkptRunState *state = data;
    double value;
    if (h5_attr_read(obj, name, H5T_NATIVE_DOUBLE, 0, &value) != 0 ||
        ckpt_state_set(state, name, value) != 0)
        return -1;
    return 0;
}

static int fields_read(hid_t run, CkptRunState *state, const Field *fields, size_t count,
                       char *err, size_t err_len)
{
    for (size_t i = 0; i < count; i++) {
        const Field *f = &fields[i];
        char *at = (char *)state + f->offset;
        const char *problem = NULL;
        if (f->type == F_STR)
            problem = h5_attr_read_string(run, f->name, at, f->size);
        else if (h5_attr_read(run, f->name, field_mem_type(f->type), 0, at) != 0)
            problem = "is missing, unreadable or of the wrong type";
        if (problem)
            return util_fail(err, err_len, "corrupt run state: attribute '%s' %s", f->name,
                             problem);
    }
    return 0;
}

static bool is_core_field(const char *name)
{
    for (size_t i = 0; i < COUNT_OF(HEAD_FIELDS); i++)
        if (strcmp(name, HEAD_FIELDS[i].name) == 0)
            return true;
    for (size_t i = 0; i < COUNT_OF(TAIL_FIELDS); i++)
        if (strcmp(name, TAIL_FIELDS[i].name) == 0)
            return true;
    return false;
}

typedef struct {
    CkptRunState *state;
    char *err;
    size_t err_len;
    bool said; /* err holds why the iteration stopped */
} ValueReading;

/* The type a value was stored with: CKPT_TEXT for a string, else the
 * numeric type a writer stores (-1: none; the value is left out, and the
 * part that owns it reports it missing or of the wrong type). */
static int stored_value_type(hid_t attr)
{
    hid_t type = H5Aget_type(attr);
    H5T_class_t class = type >= 0 ? H5Tget_class(type) : H5T_NO_CLASS;
    size_t size = type >= 0 ? H5Tget_size(type) : 0;
    bool is_signed = class == H5T_INTEGER && H5Tget_sign(type) == H5T_SGN_2;
    h5_close(type);
    if (class == H5T_STRING)
        return CKPT_TEXT;
    if (class == H5T_FLOAT && size == 8)
        return CKPT_F64;
    if (is_signed && (size == 4 || size == 8))
        return size == 4 ? CKPT_INT32 : CKPT_INT64;
    return -1;
}

/* A value read as stored; -1 only for what must not be read on (a string
 * of another kind than Phalanx writes, too many values). */
static int value_read(hid_t run, const char *name, int type, ValueReading *r)
{
    CkptValue v = {.type = (CkptValueType)type};
    int rc = -1;
    switch (type) {
    case CKPT_INT32: rc = h5_attr_read(run, name, H5T_NATIVE_INT32, 0, &v.as.i32); break;
    case CKPT_INT64: rc = h5_attr_read(run, name, H5T_NATIVE_INT64, 0, &v.as.i64); break;
    case CKPT_F64: rc = h5_attr_read(run, name, H5T_NATIVE_DOUBLE, 0, &v.as.f64); break;
    case CKPT_TEXT: {
        const char *problem = h5_attr_read_string(run, name, v.as.text, sizeof(v.as.text));
        if (problem) {
            r->said = true;
            return util_fail(r->err, r->err_len, "corrupt run state: attribute '%s' %s", name,
                             problem);
        }
        rc = 0;
    }
    }
    if (rc != 0 || strlen(name) >= sizeof(v.key))
        return 0; // left out: its owner says it is missing
    if (r->state->value_count == CKPT_VALUE_MAX) {
        r->said = true;
        return util_fail(r->err, r->err_len, "corrupt run state: group 'run' holds more than "
                                             "%d values", CKPT_VALUE_MAX);
    }
    snprintf(v.key, sizeof(v.key), "%s", name);
    r->state->values[r->state->value_count++] = v;
    return 0;
}

static herr_t read_value(hid_t run, const char *name, const H5A_info_t *info, void *data)
{
    (void)info;
    if (is_core_field(name))
        return 0;
    hid_t attr = H5Aopen(run, name, H5P_DEFAULT);
    int type = attr >= 0 ? stored_value_type(attr) : -1;
    h5_close(attr);
    return type < 0 ? 0 : value_read(run, name, type, data);
}

static int run_state_read(hid_t file, CkptRunState *state, char *err, size_t err_len)
{
    memset(state, 0, sizeof(*state));
    if (H5Lexists(file, "run", H5P_DEFAULT) <= 0 || H5Lexists(file, "run/extra", H5P_DEFAULT) <= 0)
        return util_fail(err, err_len, "no run state (group 'run')");
    hid_t run = H5Gopen2(file, "run", H5P_DEFAULT);
    hid_t extra = H5Gopen2(file, "run/extra", H5P_DEFAULT);
    ValueReading reading = {state, err, err_len, false};
    int rc = run >= 0 && extra >= 0 ? 0 : -1;
    if (rc == 0)
        rc = fields_read(run, state, HEAD_FIELDS, COUNT_OF(HEAD_FIELDS), err, err_len) ||
                     fields_read(run, state, TAIL_FIELDS, COUNT_OF(TAIL_FIELDS), err, err_len)
                 ? -1
                 : 0;
    if (rc == 0 && H5Aiterate2(run, H5_INDEX_NAME, H5_ITER_INC, NULL, read_value, &reading) < 0)
        rc = reading.said ? -1 : util_fail(err, err_len, "run state: unreadable attributes in "
                                                         "group 'run'");
    if (rc == 0 && H5Aiterate2(extra, H5_INDEX_NAME, H5_ITER_INC, NULL, read_extra, state) < 0)
        rc = util_fail(err, err_len, "run state: unreadable key-value pairs in run/extra");
    h5_close(extra);
    h5_close(run);
    return rc;
}

// ----------------------------------------------------------------------------
// shards

static void dataset_path(char *out, size_t len, int kind, const char *name)
{
    snprintf(out, len, "%s/%s", ckpt_kind_group[kind], name);
}

static void fragment_dims(const CkptFragment *f, hsize_t dims[2])
{
    dims[0] = (hsize_t)(f->row_end - f->row_begin);
    dims[1] = (hsize_t)(f->ndim == 2 ? f->shape[1] : 1);
}

/* Rows per chunk: whole rows, up to CHUNK_BYTES. */
static hsize_t chunk_rows(const CkptFragment *f)
{
    hsize_t dims[2];
    fragment_dims(f, dims);
    size_t row_bytes = (size_t)dims[1] * sizeof(float);
    hsize_t rows = row_bytes >= CHUNK_BYTES ? 1 : CHUNK_BYTES / row_bytes;
    return dims[0] < rows ? dims[0] : rows;
}

static size_t chunk_bytes(const CkptFragment *f)
{
    hsize_t dims[2];
    fragment_dims(f, dims);
    return (size_t)chunk_rows(f) * (size_t)dims[1] * sizeof(float);
}

/* Chunked (which Fletcher32 needs) with the Fletcher32 filter. */
static hid_t fragment_dcpl(const CkptFragment *f)
{
    hsize_t dims[2], chunk[2];
    fragment_dims(f, dims);
    chunk[0] = chunk_rows(f);
    chunk[1] = dims[1];
    hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
    if (dcpl >= 0 && (H5Pset_chunk(dcpl, f->ndim, chunk) < 0 || H5Pset_fletcher32(dcpl) < 0)) {
        h5_close(dcpl);
        return H5I_INVALID_HID;
    }
    return dcpl;
}

_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
               "chunks are written as raw little-endian floats (H5T_IEEE_F32LE)");

/* Writes the chunks already filtered, with H5Dwrite_chunk: HDF5's own filter
 * runs at a few hundred MB/s and copies more. Readers check the checksum with
 * HDF5's filter as usual. An edge chunk is stored whole, zero-padded. */
static int write_chunks(hid_t ds, const CkptFragment *f, const float *data, uint8_t *scratch)
{
    hsize_t dims[2], rows = chunk_rows(f);
    fragment_dims(f, dims);
    size_t whole = chunk_bytes(f);
    for (hsize_t r = 0; r < dims[0]; r += rows) {
        size_t bytes = (size_t)(dims[0] - r < rows ? dims[0] - r : rows) * dims[1] * sizeof(float);
        memcpy(scratch, data + r * dims[1], bytes);
        memset(scratch + bytes, 0, whole - bytes);
        uint32_t sum = h5_fletcher32(scratch, whole);
        for (int i = 0; i < 4; i++)
            scratch[whole + (size_t)i] = (uint8_t)(sum >> (8 * i)); // stored little-endian
        hsize_t offset[2] = {r, 0};
        if (H5Dwrite_chunk(ds, H5P_DEFAULT, 0, offset, whole + 4, scratch) < 0)
            return -1;
    }
    return 0;
}

static int write_piece(hid_t file, hid_t lcpl, const ShardPiece *piece, int kind,
                       uint8_t *scratch)
{
    const CkptFragment *f = piece->fragment;
    char path[2 * CKPT_NAME_MAX];
    dataset_path(path, sizeof(path), kind, f->name);
    hsize_t dims[2];
    fragment_dims(f, dims);
    int64_t offset[2] = {f->row_begin, 0};
    hid_t space = H5Screate_simple(f->ndim, dims, NULL);
    hid_t dcpl = fragment_dcpl(f);
    hid_t ds = space >= 0 && dcpl >= 0
                   ? H5Dcreate2(file, path, H5T_IEEE_F32LE, space, lcpl, dcpl, H5P_DEFAULT)
                   : H5I_INVALID_HID;
    int rc = ds >= 0 && write_chunks(ds, f, piece->data[kind], scratch) == 0 &&
                     h5_attr_string(ds, "logical_name", f->name, CKPT_NAME_MAX) == 0 &&
                     h5_attr_i64(ds, "logical_shape", (hsize_t)f->ndim, f->shape) == 0 &&
                     h5_attr_i64(ds, "offset", (hsize_t)f->ndim, offset) == 0
                 ? 0
                 : -1;
    h5_close(ds);
    h5_close(dcpl);
    h5_close(space);
    return rc;
}

static int write_root_attrs(hid_t file, int64_t step, uint64_t run_id)
{
    int version = CKPT_FORMAT_VERSION;
    return h5_attr_write(file, "format_version", H5T_STD_I32LE, H5T_NATIVE_INT, 0, &version) ||
                   h5_attr_i64(file, "step", 0, &step) ||
                   h5_attr_write(file, "run_id", H5T_STD_U64LE, H5T_NATIVE_UINT64, 0, &run_id)
               ? -1
               : 0;
}

int format_shard_image(const ShardContent *c, void **image, size_t *size, char *err,
                       size_t err_len)
{
    h5_quiet();
    size_t bytes = 1 << 16, largest_chunk = 0;
    for (int i = 0; i < c->piece_count; i++) {
        const CkptFragment *f = c->pieces[i].fragment;
        bytes += KIND_COUNT * ((size_t)(f->row_end - f->row_begin) *
                                   (size_t)ckpt_row_length(f->ndim, f->shape) * sizeof(float) +
                               4096);
        largest_chunk = chunk_bytes(f) > largest_chunk ? chunk_bytes(f) : largest_chunk;
    }
    uint8_t *scratch = malloc(largest_chunk + 4);
    if (!scratch)
        return util_fail(err, err_len, "out of memory for a chunk of %zu bytes", largest_chunk);
    hid_t file = h5_core_create(bytes, 0);
    hid_t lcpl = H5Pcreate(H5P_LINK_CREATE);
    int64_t rank = c->rank, world = c->world;
    int rc = file >= 0 && lcpl >= 0 && H5Pset_create_intermediate_group(lcpl, 1) >= 0 &&
                     write_root_attrs(file, c->step, c->run_id) == 0 &&
                     h5_attr_i64(file, "rank", 0, &rank) == 0 &&
                     h5_attr_i64(file, "world", 0, &world) == 0
                 ? 0
                 : -1;
    for (int i = 0; rc == 0 && i < c->piece_count; i++)
        for (int kind = 0; rc == 0 && kind < KIND_COUNT; kind++)
            rc = write_piece(file, lcpl, &c->pieces[i], kind, scratch);
    if (rc != 0)
        h5_fail(err, err_len, "cannot build the shard");
    else
        rc = h5_core_image(file, 0, image, size, err, err_len);
    h5_close(lcpl);
    h5_close(file);
    free(scratch);
    return rc;
}

// ----------------------------------------------------------------------------
// index

static hid_t fragment_type(void)
{
    hid_t name = H5Tcopy(H5T_C_S1);
    hsize_t two = 2;
    hid_t shape = H5Tarray_create2(H5T_NATIVE_INT64, 1, &two);
    hid_t t = H5Tcreate(H5T_COMPOUND, sizeof(CkptFragment));
    if (name < 0 || shape < 0 || t < 0 || H5Tset_size(name, CKPT_NAME_MAX) < 0 ||
        H5Tinsert(t, "name", offsetof(CkptFragment, name), name) < 0 ||
        H5Tinsert(t, "ndim", offsetof(CkptFragment, ndim), H5T_NATIVE_INT) < 0 ||
        H5Tinsert(t, "shape", offsetof(CkptFragment, shape), shape) < 0 ||
        H5Tinsert(t, "rank", offsetof(CkptFragment, rank), H5T_NATIVE_INT) < 0 ||
        H5Tinsert(t, "row_begin", offsetof(CkptFragment, row_begin), H5T_NATIVE_INT64) < 0 ||
        H5Tinsert(t, "row_end", offsetof(CkptFragment, row_end), H5T_NATIVE_INT64) < 0) {
        h5_close(t);
        t = H5I_INVALID_HID;
    }
    h5_close(shape);
    h5_close(name);
    return t;
}

static hid_t shard_type(void)
{
    hid_t t = H5Tcreate(H5T_COMPOUND, sizeof(CkptShard));
    if (t >= 0 && (H5Tinsert(t, "rank", offsetof(CkptShard, rank), H5T_NATIVE_INT) < 0 ||
                   H5Tinsert(t, "bytes", offsetof(CkptShard, bytes), H5T_NATIVE_INT64) < 0)) {
        h5_close(t);
        return H5I_INVALID_HID;
    }
    return t;
}

/* A 1-D table of `count` records, chunked with Fletcher32 like every dataset. */
static int table_write(hid_t file, const char *name, hid_t mem_type, size_t count,
                       const void *records)
{
    hsize_t n = count, chunk = count ? count : 1;
    hsize_t max = H5S_UNLIMITED;
    hid_t file_type = H5Tcopy(mem_type);
    hid_t space = H5Screate_simple(1, &n, &max);
    hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
    hid_t ds = H5I_INVALID_HID;
    if (file_type >= 0 && H5Tpack(file_type) >= 0 && space >= 0 && dcpl >= 0 &&
        H5Pset_chunk(dcpl, 1, &chunk) >= 0 && H5Pset_fletcher32(dcpl) >= 0)
        ds = H5Dcreate2(file, name, file_type, space, H5P_DEFAULT, dcpl, H5P_DEFAULT);
    int rc = ds >= 0 && (count == 0 || H5Dwrite(ds, mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT,
                                                records) >= 0)
                 ? 0
                 : -1;
    h5_close(ds);
    h5_close(dcpl);
    h5_close(space);
    h5_close(file_type);
    return rc;
}

/* The virtual dataset <kind>/<name> over the `count` fragments of one tensor. */
static int write_virtual(hid_t file, hid_t lcpl, int kind, const CkptFragment *fragments,
                         int count)
{
    const CkptFragment *t = &fragments[0];
    char path[2 * CKPT_NAME_MAX], source[32];
    dataset_path(path, sizeof(path), kind, t->name);
    hsize_t dims[2] = {(hsize_t)t->shape[0], (hsize_t)ckpt_row_length(t->ndim, t->shape)};
    hid_t space = H5Screate_simple(t->ndim, dims, NULL);
    hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
    float missing = NAN; // a shard that cannot be found reads as NaN, not as zeros
    int rc = space >= 0 && dcpl >= 0 &&
                     H5Pset_fill_value(dcpl, H5T_NATIVE_FLOAT, &missing) >= 0
                 ? 0
                 : -1;
    for (int i = 0; rc == 0 && i < count; i++) {
        const CkptFragment *f = &fragments[i];
        hsize_t start[2] = {(hsize_t)f->row_begin, 0}, size[2];
        fragment_dims(f, size);
        hid_t src = H5Screate_simple(f->ndim, size, NULL);
        snprintf(source, sizeof(source), "rank_%05d.h5", f->rank);
        rc = src >= 0 &&
                     H5Sselect_hyperslab(space, H5S_SELECT_SET, start, NULL, size, NULL) >= 0 &&
                     H5Pset_virtual(dcpl, space, source, path, src) >= 0
                 ? 0
                 : -1;
        h5_close(src);
    }
    hid_t ds = H5I_INVALID_HID;
    if (rc == 0 && H5Sselect_all(space) >= 0)
        ds = H5Dcreate2(file, path, H5T_IEEE_F32LE, space, lcpl, dcpl, H5P_DEFAULT);
    rc = ds >= 0 && h5_attr_i64(ds, "logical_shape", (hsize_t)t->ndim, t->shape) == 0 ? 0 : -1;
    h5_close(ds);
    h5_close(dcpl);
    h5_close(space);
    return rc;
}

static int write_virtuals(hid_t file, const CkptFragment *fragments, int count)
{
    hid_t lcpl = H5Pcreate(H5P_LINK_CREATE);
    int rc = lcpl >= 0 && H5Pset_create_intermediate_group(lcpl, 1) >= 0 ? 0 : -1;
    // fragments come sorted by name: each run of one name is one tensor
    for (int first = 0, end; rc == 0 && first < count; first = end) {
        for (end = first + 1; end < count && strcmp(fragments[end].name, fragments[first].name) == 0;)
            end++;
        for (int kind = 0; rc == 0 && kind < KIND_COUNT; kind++)
            rc = write_virtual(file, lcpl, kind, &fragments[first], end - first);
    }
    h5_close(lcpl);
    return rc;
}

int format_index_image(const IndexContent *c, void **image, size_t *size, char *err,
                       size_t err_len)
{
    h5_quiet();
    hid_t file = h5_core_create(1 << 20, SEAL_BYTES);
    hid_t ftype = fragment_type(), stype = shard_type();
    int rc = file >= 0 && ftype >= 0 && stype >= 0 &&
                     write_root_attrs(file, c->state->step, c->run_id) == 0 &&
                     run_state_write(file, c->state) == 0 &&
                     table_write(file, "fragments", ftype, (size_t)c->fragment_count,
                                 c->fragments) == 0 &&
                     table_write(file, "shards", stype, (size_t)c->shard_count, c->shards) == 0 &&
                     write_virtuals(file, c->fragments, c->fragment_count) == 0
                 ? 0
                 : -1;
    if (rc != 0)
        h5_fail(err, err_len, "cannot build the index");
    else if ((rc = h5_core_image(file, SEAL_BYTES, image, size, err, err_len)) == 0)
        h5_seal_write(*image, *size);
    h5_close(stype);
    h5_close(ftype);
    h5_close(file);
    return rc;
}

/* The per-checkpoint parts of an index (root attributes, run state, shard
 * sizes) written over a copy of an earlier index of the same run: the
 * fragments and the virtual datasets, most of the work, stay as they are. */
int format_index_update(const void *template, size_t template_size, const IndexContent *c,
                        void **image, size_t *size, char *err, size_t err_len)
{
    h5_quiet();
    hid_t file = h5_core_open(template, template_size);
    hid_t stype = shard_type();
    hid_t shards = file >= 0 ? H5Dopen2(file, "shards", H5P_DEFAULT) : H5I_INVALID_HID;
    hid_t space = shards >= 0 ? H5Dget_space(shards) : H5I_INVALID_HID;
    int rc = stype >= 0 && space >= 0 &&
                     H5Sget_simple_extent_npoints(space) == (hssize_t)c->shard_count &&
                     H5Adelete(file, "format_version") >= 0 && H5Adelete(file, "step") >= 0 &&
                     H5Adelete(file, "run_id") >= 0 && H5Ldelete(file, "run", H5P_DEFAULT) >= 0 &&
                     write_root_attrs(file, c->state->step, c->run_id) == 0 &&
                     run_state_write(file, c->state) == 0 &&
                     H5Dwrite(shards, stype, H5S_ALL, H5S_ALL, H5P_DEFAULT, c->shards) >= 0
                 ? 0
                 : -1;
    if (rc != 0)
        h5_fail(err, err_len, "cannot update the index");
    else if ((rc = h5_core_image(file, SEAL_BYTES, image, size, err, err_len)) == 0)
        h5_seal_write(*image, *size);
    h5_close(space);
    h5_close(shards);
    h5_close(stype);
    h5_close(file);
    return rc;
}

/* Bounds on what an index may declare, checked before any arithmetic or
 * allocation uses the numbers: far above any real run, far below overflow. */
#define TABLE_RECORDS_MAX (1 << 20)          /* fragments, shards */
#define TENSOR_ELEMENTS_MAX ((int64_t)1 << 40) /* elements of one logical tensor */

/* The table's stored record type is the one table_write stores (mem_type
 * packed), checked before H5Dread: no variable-length member, whose bytes
 * HDF5 would fetch from its unchecksummed global heap. */
static bool record_type_is(hid_t ds, hid_t mem_type)
{
    hid_t stored = H5Dget_type(ds), packed = H5Tcopy(mem_type);
    bool same = stored >= 0 && packed >= 0 && H5Tpack(packed) >= 0 &&
                H5Tequal(stored, packed) > 0;
    h5_close(packed);
    h5_close(stored);
    return same;
}

/* Reads a whole 1-D table of at most TABLE_RECORDS_MAX records into a
 * malloc'd array of `record_size` records. */
static int table_read(hid_t file, const char *name, hid_t mem_type, size_t record_size,
                      void **out, int *count, char *err, size_t err_len)
{
    if (H5Lexists(file, name, H5P_DEFAULT) <= 0)
        return util_fail(err, err_len, "no table '%s'", name);
    hid_t ds = H5Dopen2(file, name, H5P_DEFAULT);
    if (ds >= 0 && !record_type_is(ds, mem_type)) {
        h5_close(ds);
        H5Eclear2(H5E_DEFAULT);
        return util_fail(err, err_len, "corrupt: table '%s' has another record type than the "
                                       "one Phalanx writes", name);
    }
    hid_t space = ds >= 0 ? H5Dget_space(ds) : H5I_INVALID_HID;
    hssize_t n = space >= 0 ? H5Sget_simple_extent_npoints(space) : -1;
    void *records = n >= 0 && n <= TABLE_RECORDS_MAX ? calloc((size_t)n + 1, record_size) : NULL;
    int rc = records && (n == 0 || H5Dread(ds, mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT,
                                           records) >= 0)
                 ? 0
                 : -1;
    h5_close(space);
    h5_close(ds);
    if (rc != 0) {
        free(records);
        if (n > TABLE_RECORDS_MAX)
            return util_fail(err, err_len, "table '%s' has %lld records, more than %d", name,
                             (long long)n, TABLE_RECORDS_MAX);
        return h5_fail(err, err_len, name);
    }
    *out = records;
    *count = (int)n;
    return 0;
}

/* Shard ranks are 0 .. count-1, each once (the reader indexes by rank). */
static int shards_sane(const CkptIndex *x, char *err, size_t err_len)
{
    if (x->shard_count < 1)
        return util_fail(err, err_len, "corrupt: the shard table is empty");
    bool *seen = calloc((size_t)x->shard_count, sizeof(bool));
    if (!seen)
        return util_fail(err, err_len, "out of memory");
    int rc = 0;
    for (int i = 0; rc == 0 && i < x->shard_count; i++) {
        const CkptShard *s = &x->shards[i];
        if (s->rank < 0 || s->rank >= x->shard_count || seen[s->rank])
            rc = util_fail(err, err_len,
                           "corrupt shard table: entry %d has rank %d (ranks must be 0..%d, "
                           "each once)",
                           i, s->rank, x->shard_count - 1);
        else if (s->bytes < 0)
            rc = util_fail(err, err_len, "corrupt shard table: entry %d has bytes %lld", i,
                           (long long)s->bytes);
        else
            seen[s->rank] = true;
    }
    free(seen);
    return rc;
}

static bool name_sane(const char *name)
{
    if (!name[0])
        return false;
    for (const char *c = name; *c; c++)
        if (!(*c >= 'a' && *c <= 'z') && !(*c >= 'A' && *c <= 'Z') && !(*c >= '0' && *c <= '9') &&
            !strchr("._-", *c))
            return false;
    return true;
}

/* What is wrong with fragment f (NULL: nothing), every number bounded
 * before it is multiplied. */
static const char *fragment_problem(const CkptFragment *f, int shard_count)
{
    if (!name_sane(f->name))
        return "its 'name' is empty or has characters outside [A-Za-z0-9._-]";
    if (f->ndim < 1 || f->ndim > 2)
        return "its 'ndim' is not 1 or 2";
    int64_t rows = f->shape[0], row = ckpt_row_length(f->ndim, f->shape);
    if (rows < 1 || row < 1 || rows > TENSOR_ELEMENTS_MAX / row)
        return "its 'shape' is not positive or has more than 2^40 elements";
    if (f->row_begin < 0 || f->row_end <= f->row_begin || f->row_end > rows)
        return "its rows 'row_begin'..'row_end' are empty or outside the shape";
    if (f->rank < 0 || f->rank >= shard_count)
        return "its 'rank' names no shard of the shard table";
    return NULL;
}

/* The fragment table is data from disk: check it before anything trusts it.
 * The shard table is already checked; a shard must be large enough for its
 * fragments' params, m and v. */
static int fragments_sane(const CkptIndex *x, char *err, size_t err_len)
{
    if (x->fragment_count < 1)
        return util_fail(err, err_len, "corrupt: the fragment table is empty");
    int64_t *need = calloc((size_t)x->shard_count, sizeof(int64_t));
    if (!need)
        return util_fail(err, err_len, "out of memory");
    int rc = 0;
    for (int i = 0; rc == 0 && i < x->fragment_count; i++) {
        CkptFragment *f = &x->fragments[i];
        f->name[CKPT_NAME_MAX - 1] = '\0';
        const char *problem = fragment_problem(f, x->shard_count);
        if (problem) {
            rc = util_fail(err, err_len, "corrupt fragment table: entry %d ('%s'): %s", i,
                           f->name, problem);
            break;
        }
        int64_t bytes = (f->row_end - f->row_begin) * ckpt_row_length(f->ndim, f->shape) *
                        (int64_t)(KIND_COUNT * sizeof(float));
        need[f->rank] += bytes;
        if (need[f->rank] > x->shards[f->rank].bytes)
            rc = util_fail(err, err_len,
                           "corrupt fragment table: the fragments of rank %d need more than "
                           "the %lld bytes of its shard",
                           f->rank, (long long)x->shards[f->rank].bytes);
    }
    free(need);
    return rc;
}

static int bad_count(char *err, size_t err_len, const char *field, int64_t value, int64_t low,
                     int64_t high)
{
    char why[256];
    ckpt_range_fail(why, sizeof(why), field, value, low, high);
    return util_fail(err, err_len, "corrupt run state: %s", why);
}

#define COUNT_IN(field, value, low, high) \
    ((value) < (low) || (value) > (high) ? bad_count(err, err_len, field, value, low, high) : 0)

/* Every core value of the run state in the range a run can have (steps and
 * samples below 2^53, each step at most INT_MAX samples), the extra pairs
 * finite; the values of the stateful parts are their owners' to check
 * (CkptOptions.check_state), as is the meaning of the extra pairs. */
static int run_state_check(const CkptRunState *s, char *err, size_t err_len)
{
    const CkptModel *m = &s->model;
    const CkptLayout *w = &s->writer;
    int rc = COUNT_IN("format_version", s->format_version, 1, CKPT_FORMAT_VERSION) ||
             COUNT_IN("step", s->step, 0, CKPT_COUNT_MAX) ||
             COUNT_IN("sample_cursor", s->sample_cursor, 0,
                      s->step < CKPT_COUNT_MAX / INT_MAX ? s->step * INT_MAX : CKPT_COUNT_MAX) ||
             COUNT_IN("vocab", m->vocab, 1, INT_MAX) || COUNT_IN("layers", m->layers, 1, INT_MAX) ||
             COUNT_IN("heads", m->heads, 1, INT_MAX) || COUNT_IN("dim", m->dim, 1, INT_MAX) ||
             COUNT_IN("seq_len", m->seq_len, 1, INT_MAX) ||
             COUNT_IN("writer_dp", w->dp, 1, INT_MAX) || COUNT_IN("writer_pp", w->pp, 1, INT_MAX) ||
             COUNT_IN("writer_sp", w->sp, 1, INT_MAX) ||
             COUNT_IN("writer_world", w->world, 1, INT_MAX);
    for (int i = 0; rc == 0 && i < s->extra_count; i++)
        if (!isfinite(s->extra[i].value))
            rc = util_fail(err, err_len, "corrupt run state: run/extra '%s' is %g, not a finite "
                                         "number", s->extra[i].key, s->extra[i].value);
    return rc ? -1 : 0;
}

/* The fragments tile every tensor (format_fragments_check), said as the
 * corruption it is in a file. */
static int fragments_tile(const CkptIndex *x, char *err, size_t err_len)
{
    char why[512];
    if (format_fragments_check(x->fragments, x->fragment_count, why, sizeof(why)) != 0)
        return util_fail(err, err_len, "corrupt fragment table: %s", why);
    return 0;
}

/* Mapping i of a virtual dataset's dcpl shows fragment f: source
 * rank_%05d.h5:/path, its rows of the tensor (HDF5 made the source
 * selection match when the mapping was created). */
static bool mapping_agrees(hid_t dcpl, size_t i, const char *path, const CkptFragment *f)
{
    char want[32], file[64] = "", dataset[2 * CKPT_NAME_MAX] = "";
    snprintf(want, sizeof(want), "rank_%05d.h5", f->rank);
    hsize_t dims[2], first[2] = {0, 0}, last[2] = {0, 0};
    fragment_dims(f, dims);
    hid_t vspace = H5Pget_virtual_vspace(dcpl, i);
    bool ok = H5Pget_virtual_filename(dcpl, i, file, sizeof(file)) > 0 &&
              strcmp(file, want) == 0 &&
              H5Pget_virtual_dsetname(dcpl, i, dataset, sizeof(dataset)) > 0 &&
              strcmp(dataset, path) == 0 && vspace >= 0 &&
              H5Sget_select_bounds(vspace, first, last) >= 0 &&
              first[0] == (hsize_t)f->row_begin && first[1] == 0 &&
              last[0] == (hsize_t)f->row_end - 1 && (f->ndim == 1 || last[1] == dims[1] - 1) &&
              H5Sget_select_npoints(vspace) == (hssize_t)(dims[0] * dims[1]);
    h5_close(vspace);
    return ok;
}

/* The index's virtual dataset <kind>/<name> over the `count` fragments of
 * one tensor is as write_virtual made it (its mapping lives in HDF5's global
 * heap, which has no checksum of its own). */
static int virtual_check(hid_t file, int kind, const CkptFragment *fragments, int count,
                         char *err, size_t err_len)
{
    char path[2 * CKPT_NAME_MAX];
    dataset_path(path, sizeof(path), kind, fragments[0].name);
    hid_t ds = H5Lexists(file, ckpt_kind_group[kind], H5P_DEFAULT) > 0 &&
                       H5Lexists(file, path, H5P_DEFAULT) > 0
                   ? H5Dopen2(file, path, H5P_DEFAULT)
                   : H5I_INVALID_HID;
    hid_t dcpl = ds >= 0 ? H5Dget_create_plist(ds) : H5I_INVALID_HID;
    size_t n = 0;
    bool ok = dcpl >= 0 && H5Pget_layout(dcpl) == H5D_VIRTUAL &&
              H5Pget_virtual_count(dcpl, &n) >= 0 && n == (size_t)count;
    for (int i = 0; ok && i < count; i++)
        ok = mapping_agrees(dcpl, (size_t)i, path, &fragments[i]);
    h5_close(dcpl);
    h5_close(ds);
    H5Eclear2(H5E_DEFAULT);
    return ok ? 0 : util_fail(err, err_len, "corrupt: the virtual dataset /%s does not show the "
                                            "fragments the table lists", path);
}

/* Every tensor of the (sorted, checked) fragment table, every kind. */
static int virtuals_check(hid_t file, const CkptIndex *x, char *err, size_t err_len)
{
    for (int first = 0, end; first < x->fragment_count; first = end) {
        for (end = first + 1; end < x->fragment_count &&
                              strcmp(x->fragments[end].name, x->fragments[first].name) == 0;)
            end++;
        for (int kind = 0; kind < KIND_COUNT; kind++)
            if (virtual_check(file, kind, &x->fragments[first], end - first, err, err_len) != 0)
                return -1;
    }
    return 0;
}

static CkptStatus index_read_all(hid_t file, CkptIndex *x, char *err, size_t err_len)
{
    int version = 0;
    int64_t step = -1;
    if (h5_attr_read(file, "format_version", H5T_NATIVE_INT, 0, &version) != 0 ||
        h5_attr_read(file, "run_id", H5T_NATIVE_UINT64, 0, &x->run_id) != 0 ||
        h5_attr_read(file, "step", H5T_NATIVE_INT64, 0, &step) != 0) {
        util_fail(err, err_len,
                  "not a Phalanx checkpoint index (no attributes format_version, run_id, step)");
        return CKPT_CORRUPT;
    }
    if (version > CKPT_FORMAT_VERSION) {
        util_fail(err, err_len,
                  "written in checkpoint format %d; this Phalanx reads format %d and older: "
                  "use a newer Phalanx",
                  version, CKPT_FORMAT_VERSION);
        return CKPT_MISMATCH;
    }
    hid_t ftype = fragment_type(), stype = shard_type();
    int rc = run_state_read(file, &x->state, err, err_len) == 0 &&
                     table_read(file, "fragments", ftype, sizeof(CkptFragment),
                                (void **)&x->fragments, &x->fragment_count, err, err_len) == 0 &&
                     table_read(file, "shards", stype, sizeof(CkptShard), (void **)&x->shards,
                                &x->shard_count, err, err_len) == 0 &&
                     run_state_check(&x->state, err, err_len) == 0 &&
                     shards_sane(x, err, err_len) == 0 && fragments_sane(x, err, err_len) == 0 &&
                     fragments_tile(x, err, err_len) == 0 &&
                     virtuals_check(file, x, err, err_len) == 0
                 ? 0
                 : -1;
    h5_close(stype);
    h5_close(ftype);
    if (rc == 0 && step != x->state.step)
        rc = util_fail(err, err_len, "corrupt: the index is of step %lld, its run state of step "
                                     "%lld", (long long)step, (long long)x->state.step);
    return rc == 0 ? CKPT_OK : CKPT_CORRUPT;
}

CkptStatus format_index_read(const char *file_path, CkptIndex *index, char *err, size_t err_len)
{
    h5_quiet();
    memset(index, 0, sizeof(*index));
    char why[1024];
    hid_t file = h5_open_sealed_index(file_path, why, sizeof(why));
    if (file < 0) {
        ckpt_fail_at(err, err_len, file_path, "%s", why);
        return CKPT_CORRUPT;
    }
    CkptStatus status = index_read_all(file, index, why, sizeof(why));
    h5_close(file);
    if (status != CKPT_OK) {
        ckpt_index_free(index);
        ckpt_fail_at(err, err_len, file_path, "%s", why);
    }
    return status;
}

CkptStatus ckpt_index_read(const char *path, CkptIndex *index, char *err, size_t err_len)
{
    char dir[PATH_MAX], file[PATH_MAX];
    struct stat st;
    memset(index, 0, sizeof(*index));
    if (strlen(path) + sizeof("/" CKPT_INDEX_FILE) > PATH_MAX) {
        ckpt_fail_at(err, err_len, path, "the path is longer than the system allows (%d "
                     "bytes with /%s)", PATH_MAX, CKPT_INDEX_FILE);
        return CKPT_NOT_FOUND;
    }
    if (stat(path, &st) != 0) {
        ckpt_fail_at(err, err_len, path, "%s",
                     errno == ENOENT ? "no such file or directory" : strerror(errno));
        return CKPT_NOT_FOUND;
    }
    files_locate(path, dir, file);
    if (!files_exists(file)) {
        ckpt_fail_at(err, err_len, dir,
                     "no %s: the checkpoint was never committed (its write was interrupted "
                     "or failed), or this is not a checkpoint directory",
                     CKPT_INDEX_FILE);
        return CKPT_INCOMPLETE;
    }
    return format_index_read(file, index, err, err_len);
}

CkptStatus format_shard_open(const char *file_path, const CkptIndex *index, int rank, hid_t *out,
                             char *err, size_t err_len)
{
    h5_quiet();
    char why[1024];
    hid_t file = h5_open_read(file_path, why, sizeof(why));
    if (file < 0) {
        ckpt_fail_at(err, err_len, file_path, "%s", why);
        return CKPT_CORRUPT;
    }
    int64_t step = -1, file_rank = -1;
    uint64_t run_id = 0;
    if (h5_attr_read(file, "step", H5T_NATIVE_INT64, 0, &step) != 0 ||
        h5_attr_read(file, "run_id", H5T_NATIVE_UINT64, 0, &run_id) != 0 ||
        h5_attr_read(file, "rank", H5T_NATIVE_INT64, 0, &file_rank) != 0) {
        h5_close(file);
        H5Eclear2(H5E_DEFAULT);
        ckpt_fail_at(err, err_len, file_path,
                     "the attributes step, run_id, rank are missing or unreadable");
        return CKPT_CORRUPT;
    }
    if (step != index->state.step || run_id != index->run_id || file_rank != rank) {
        h5_close(file);
        ckpt_fail_at(err, err_len, file_path,
                     "does not belong to this checkpoint's index (it says step %lld, rank "
                     "%lld, run %016llx; the index wants step %lld, rank %d, run %016llx)",
                     (long long)step, (long long)file_rank, (unsigned long long)run_id,
                     (long long)index->state.step, rank, (unsigned long long)index->run_id);
        return CKPT_CORRUPT;
    }
    *out = file;
    return CKPT_OK;
}

/* `path` (relative to `shard`) is a hard link at every step: no external or
 * soft link may take the reader to another file or object. */
static bool hard_links_only(hid_t shard, const char *path)
{
    char prefix[2 * CKPT_NAME_MAX];
    for (const char *slash = path;; slash++) {
        slash = strchr(slash, '/');
        size_t n = slash ? (size_t)(slash - path) : strlen(path);
        snprintf(prefix, sizeof(prefix), "%.*s", (int)n, path);
        H5L_info_t info;
        if (H5Lexists(shard, prefix, H5P_DEFAULT) <= 0 ||
            H5Lget_info(shard, prefix, &info, H5P_DEFAULT) < 0 || info.type != H5L_TYPE_HARD)
            return false;
        if (!slash)
            return true;
    }
}

/* What the writer makes and nothing else: float32, chunked as fragment_dcpl
 * chunks, Fletcher32 the only filter, no external storage (a virtual
 * dataset has another layout). NULL when it is so, else what is wrong. */
static const char *storage_problem(hid_t ds, const CkptFragment *f)
{
    hid_t type = H5Dget_type(ds), dcpl = H5Dget_create_plist(ds);
    const char *problem = NULL;
    hsize_t chunk[2] = {0, 0}, want[2];
    fragment_dims(f, want);
    want[0] = chunk_rows(f);
    unsigned flags, config;
    size_t cd_count = 0;
    if (type < 0 || H5Tequal(type, H5T_IEEE_F32LE) <= 0)
        problem = "is not float32 (H5T_IEEE_F32LE)";
    else if (dcpl < 0 || H5Pget_layout(dcpl) != H5D_CHUNKED)
        problem = "is not stored in chunks in this file (contiguous, compact or virtual)";
    else if (H5Pget_external_count(dcpl) != 0)
        problem = "keeps its data in external files";
    else if (H5Pget_nfilters(dcpl) != 1 ||
             H5Pget_filter2(dcpl, 0, &flags, &cd_count, NULL, 0, NULL, &config) !=
                 H5Z_FILTER_FLETCHER32)
        problem = "is not guarded by Fletcher32 alone";
    else if (H5Pget_chunk(dcpl, f->ndim, chunk) != f->ndim || chunk[0] != want[0] ||
             (f->ndim == 2 && chunk[1] != want[1]))
        problem = "has chunks of another shape than the writer's";
    h5_close(dcpl);
    h5_close(type);
    return problem;
}

/* The attributes logical_name, logical_shape and offset say what the index says. */
static bool attributes_agree(hid_t ds, const CkptFragment *f)
{
    char name[CKPT_NAME_MAX] = "";
    int64_t shape[2] = {0, 0}, offset[2] = {-1, -1};
    return h5_attr_read_string(ds, "logical_name", name, sizeof(name)) == NULL &&
           strcmp(name, f->name) == 0 &&
           h5_attr_read(ds, "logical_shape", H5T_NATIVE_INT64, f->ndim, shape) == 0 &&
           shape[0] == f->shape[0] && (f->ndim == 1 || shape[1] == f->shape[1]) &&
           h5_attr_read(ds, "offset", H5T_NATIVE_INT64, f->ndim, offset) == 0 &&
           offset[0] == f->row_begin && (f->ndim == 1 || offset[1] == 0);
}

/* Reads rows [first, first + count) of the dataset (of `want` rows) into dest:
 * all of it with H5S_ALL, else a hyperslab of whole rows (HDF5 still reads,
 * and checks the checksum of, every chunk it touches). */
static herr_t read_rows(hid_t ds, hid_t space, const hsize_t want[2], int ndim, int64_t first,
                        int64_t count, float *dest)
{
    if (first == 0 && (hsize_t)count == want[0])
        return H5Dread(ds, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, dest);
    hsize_t start[2] = {(hsize_t)first, 0}, size[2] = {(hsize_t)count, want[1]};
    hid_t memory = H5Screate_simple(ndim, size, NULL);
    herr_t rc = memory >= 0 &&
                        H5Sselect_hyperslab(space, H5S_SELECT_SET, start, NULL, size, NULL) >= 0
                    ? H5Dread(ds, H5T_NATIVE_FLOAT, memory, space, H5P_DEFAULT, dest)
                    : -1;
    h5_close(memory);
    return rc;
}

CkptStatus format_fragment_read(hid_t shard, int kind, const CkptFragment *f, float *dest,
                                char *err, size_t err_len)
{
    return format_fragment_read_rows(shard, kind, f, 0, f->row_end - f->row_begin, dest, err,
                                     err_len);
}

CkptStatus format_fragment_read_rows(hid_t shard, int kind, const CkptFragment *f, int64_t first,
                                     int64_t count, float *dest, char *err, size_t err_len)
{
    char path[2 * CKPT_NAME_MAX], why[256];
    dataset_path(path, sizeof(path), kind, f->name);
    if (!hard_links_only(shard, path)) {
        H5Eclear2(H5E_DEFAULT);
        util_fail(err, err_len, "/%s: dataset missing (or reached through a link)", path);
        return CKPT_CORRUPT;
    }
    hid_t ds = H5Dopen2(shard, path, H5P_DEFAULT);
    hid_t space = ds >= 0 ? H5Dget_space(ds) : H5I_INVALID_HID;
    hsize_t want[2], have[2] = {0, 1};
    fragment_dims(f, want);
    CkptStatus status = CKPT_CORRUPT;
    const char *problem = NULL;
    if (space < 0 || H5Sget_simple_extent_ndims(space) != f->ndim ||
        H5Sget_simple_extent_dims(space, have, NULL) < 0)
        util_fail(err, err_len, "/%s: %s", path,
                  space < 0 ? h5_error(why, sizeof(why)) : "has another number of dimensions");
    else if (have[0] != want[0] || (f->ndim == 2 && have[1] != want[1]))
        util_fail(err, err_len, "/%s: has %llu x %llu elements, the index says %llu x %llu",
                  path, (unsigned long long)have[0], (unsigned long long)have[1],
                  (unsigned long long)want[0], (unsigned long long)want[1]);
    else if ((problem = storage_problem(ds, f)) != NULL)
        util_fail(err, err_len, "/%s: %s", path, problem);
    else if (!attributes_agree(ds, f))
        util_fail(err, err_len, "/%s: its attributes logical_name, logical_shape, offset do "
                                "not match the index", path);
    else if (read_rows(ds, space, want, f->ndim, first, count, dest) < 0)
        util_fail(err, err_len, "/%s: %s", path, h5_error(why, sizeof(why)));
    else
        status = CKPT_OK;
    H5Eclear2(H5E_DEFAULT);
    h5_close(space);
    h5_close(ds);
    return status;
}
