/*
 * HDF5 plumbing under the checkpoint format (format.c): reference counts,
 * the error stack in words, files built as in-memory images (the core
 * driver), the checksums HDF5 computes (the superblock's lookup3, the
 * chunks' Fletcher32) and the index seal, files opened for reading, and
 * attributes. Nothing here knows the schema: which groups, datasets and
 * attributes a shard or an index has is format.c's.
 *
 * Why images: HDF5 1.10.8 does not survive a failed write cleanly (after
 * ENOSPC its close calls fail and leave state behind that crashes the
 * library at exit), so HDF5 never touches a real file while writing; the
 * sidecar writes the image with write() and sees a full disk as an errno.
 *
 * Files use the 1.8+ format (superblock 2, object headers 2), which puts a
 * checksum on all metadata; Fletcher32 covers the data. H5Fget_file_image in
 * 1.10.8 leaves a stale superblock checksum in images of that format, so
 * h5_core_image() recomputes it (Jenkins' lookup3, as HDF5 does).
 *
 * What HDF5 does not checksum, we keep out of reach: every string attribute
 * is fixed-length (a variable-length one lives in the global heap, whose
 * records HDF5 1.10.8 trusts: a damaged one crashed or hung the reader), and
 * index.h5, whose virtual datasets keep their mappings in that heap, starts
 * with a seal (a user block, below) checked over the raw bytes before HDF5
 * parses any of them.
 */
#include "internal.h"
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

void h5_close(hid_t id)
{
    if (id >= 0)
        H5Idec_ref(id);
}

void h5_quiet(void)
{
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
}

// ----------------------------------------------------------------------------
// errors

typedef struct {
    char *buf;
    size_t len;
} ErrorText;

/* Some entries of HDF5's stack carry an empty description: the minor
 * error's name ("wrong B-tree signature") is the text then. */
static void error_name(const H5E_error2_t *e, char *buf, size_t len)
{
    H5E_type_t type;
    if (H5Eget_msg(e->min_num, &type, buf, len) <= 0 || !buf[0])
        snprintf(buf, len, "HDF5 failed in %s", e->func_name ? e->func_name : "a call");
}

static herr_t innermost_error(unsigned n, const H5E_error2_t *e, void *data)
{
    ErrorText *t = data;
    if (n > 0)
        return 0;
    if (!e->desc || !e->desc[0]) {
        error_name(e, t->buf, t->len);
        return 0;
    }
    const char *desc = e->desc;
    // low-level I/O errors carry the system's text inside a long description
    const char *sys = strstr(desc, "error message = '");
    if (sys) {
        sys += strlen("error message = '");
        snprintf(t->buf, t->len, "%.*s", (int)strcspn(sys, "'"), sys);
    } else {
        snprintf(t->buf, t->len, "%s", desc);
    }
    return 0;
}

/* The most specific message on this thread's HDF5 error stack. */
const char *h5_error(char *buf, size_t len)
{
    ErrorText text = {buf, len};
    snprintf(buf, len, "unknown HDF5 error");
    H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, innermost_error, &text);
    H5Eclear2(H5E_DEFAULT);
    return buf;
}

int h5_fail(char *err, size_t err_len, const char *what)
{
    char why[256];
    return util_fail(err, err_len, "%s: %s", what, h5_error(why, sizeof(why)));
}

// ----------------------------------------------------------------------------
// in-memory files

static const uint8_t HDF5_SIGNATURE[8] = {0x89, 'H', 'D', 'F', '\r', '\n', 0x1a, '\n'};

#define ROT(x, k) (((x) << (k)) | ((x) >> (32 - (k))))

/* Bob Jenkins' lookup3 hashlittle(), byte by byte: HDF5's metadata checksum. */
static uint32_t lookup3(const uint8_t *k, size_t length)
{
    uint32_t a, b, c;
    a = b = c = 0xdeadbeefu + (uint32_t)length;
    while (length > 12) {
        a += k[0] + ((uint32_t)k[1] << 8) + ((uint32_t)k[2] << 16) + ((uint32_t)k[3] << 24);
        b += k[4] + ((uint32_t)k[5] << 8) + ((uint32_t)k[6] << 16) + ((uint32_t)k[7] << 24);
        c += k[8] + ((uint32_t)k[9] << 8) + ((uint32_t)k[10] << 16) + ((uint32_t)k[11] << 24);
        a -= c; a ^= ROT(c, 4);  c += b;
        b -= a; b ^= ROT(a, 6);  a += c;
        c -= b; c ^= ROT(b, 8);  b += a;
        a -= c; a ^= ROT(c, 16); c += b;
        b -= a; b ^= ROT(a, 19); a += c;
        c -= b; c ^= ROT(b, 4);  b += a;
        length -= 12;
        k += 12;
    }
    if (length == 0)
        return c;
    uint32_t *word[3] = {&a, &b, &c};
    for (size_t i = 0; i < length; i++)
        *word[i / 4] += (uint32_t)k[i] << (8 * (i % 4));
    c ^= b; c -= ROT(b, 14);
    a ^= c; a -= ROT(c, 11);
    b ^= a; b -= ROT(a, 25);
    c ^= b; c -= ROT(b, 16);
    a ^= c; a -= ROT(c, 4);
    b ^= a; b -= ROT(a, 14);
    c ^= b; c -= ROT(b, 24);
    return c;
}

/* Superblock 2/3: signature, version, sizes of offsets and lengths, flags,
 * four addresses, then the checksum of everything before it. */
static void fix_superblock_checksum(uint8_t *image, size_t size)
{
    if (size < 12 || memcmp(image, HDF5_SIGNATURE, 8) != 0 || image[8] < 2)
        return;
    size_t end = 12 + 4 * (size_t)image[9];
    if (end + 4 > size)
        return;
    uint32_t sum = lookup3(image, end);
    for (int i = 0; i < 4; i++)
        image[end + (size_t)i] = (uint8_t)(sum >> (8 * i));
}

/* `userblock`: bytes reserved before the superblock (0 or SEAL_BYTES). */
hid_t h5_core_create(size_t increment, hsize_t userblock)
{
    static atomic_ulong serial;
    char name[64];
    // names of open core files must differ, and several sidecars may run
    snprintf(name, sizeof(name), "phalanx-image-%lu", atomic_fetch_add(&serial, 1));
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS), fcpl = H5Pcreate(H5P_FILE_CREATE);
    hid_t file = H5I_INVALID_HID;
    if (fapl >= 0 && fcpl >= 0 && H5Pset_fapl_core(fapl, increment, 0) >= 0 &&
        H5Pset_libver_bounds(fapl, H5F_LIBVER_V110, H5F_LIBVER_V110) >= 0 &&
        (userblock == 0 || H5Pset_userblock(fcpl, userblock) >= 0))
        file = H5Fcreate(name, H5F_ACC_TRUNC, fcpl, fapl);
    h5_close(fcpl);
    h5_close(fapl);
    return file;
}

/* An in-memory copy of `image` open for writing (the core driver copies it). */
hid_t h5_core_open(const void *image, size_t size)
{
    static atomic_ulong serial;
    char name[64];
    snprintf(name, sizeof(name), "phalanx-template-%lu", atomic_fetch_add(&serial, 1));
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    hid_t file = H5I_INVALID_HID;
    if (fapl >= 0 && H5Pset_fapl_core(fapl, 1 << 16, 0) >= 0 &&
        H5Pset_libver_bounds(fapl, H5F_LIBVER_V110, H5F_LIBVER_V110) >= 0 &&
        H5Pset_file_image(fapl, (void *)image, size) >= 0)
        file = H5Fopen(name, H5F_ACC_RDWR, fapl);
    h5_close(fapl);
    return file;
}

/* The file's bytes. H5Fget_file_image gives them from the superblock on:
 * a file with a user block of `userblock` bytes gets that many zeros first. */
int h5_core_image(hid_t file, size_t userblock, void **image, size_t *size, char *err,
                  size_t err_len)
{
    if (H5Fflush(file, H5F_SCOPE_LOCAL) < 0)
        return h5_fail(err, err_len, "cannot flush the in-memory file");
    ssize_t n = H5Fget_file_image(file, NULL, 0);
    if (n <= 0)
        return h5_fail(err, err_len, "cannot size the in-memory file");
    uint8_t *buf = calloc(1, userblock + (size_t)n);
    if (!buf)
        return util_fail(err, err_len, "out of memory for a %zd-byte file image", n);
    if (H5Fget_file_image(file, buf + userblock, (size_t)n) != n) {
        free(buf);
        return h5_fail(err, err_len, "cannot copy the in-memory file");
    }
    fix_superblock_checksum(buf + userblock, (size_t)n);
    *image = buf;
    *size = userblock + (size_t)n;
    return 0;
}

// ----------------------------------------------------------------------------
// the index seal: index.h5 starts with a 512-byte HDF5 user block (HDF5, h5py
// and h5dump skip it) holding
//   bytes 0-7    SEAL_MAGIC
//   bytes 8-11   zlib's crc32 (little-endian) of every byte from 12 to the end
//   bytes 12-19  the file's size in bytes (little-endian)
//   the rest     zeros
// so that every byte HDF5 would parse (the virtual datasets' mappings in the
// unchecksummed global heap among them) is checked before HDF5 sees it. A
// CRC-32 catches every burst of damage up to 32 bits and any other with
// probability 1 - 2^-32: accidental damage is what it is for, not forgery.
// Python checks it with zlib.crc32(data[12:]).

#define SEAL_CRC_AT 8
#define SEAL_SIZE_AT 12
#define SEAL_COVERED_FROM 12
/* far above a real index (a few MB for thousands of tensors), small enough to read whole */
#define INDEX_BYTES_MAX ((size_t)1 << 30)
static const uint8_t SEAL_MAGIC[8] = CKPT_INDEX_MAGIC; // without the NUL

static void put_le(uint8_t *at, uint64_t value, int bytes)
{
    for (int i = 0; i < bytes; i++)
        at[i] = (uint8_t)(value >> (8 * i));
}

static uint64_t get_le(const uint8_t *at, int bytes)
{
    uint64_t value = 0;
    for (int i = 0; i < bytes; i++)
        value |= (uint64_t)at[i] << (8 * i);
    return value;
}

static uint32_t seal_crc(const uint8_t *image, size_t size)
{
    uLong crc = crc32(0L, Z_NULL, 0);
    // zlib takes lengths as uInt: feed it in pieces
    for (size_t at = SEAL_COVERED_FROM; at < size;) {
        uInt n = size - at > (1u << 30) ? (1u << 30) : (uInt)(size - at);
        crc = crc32(crc, image + at, n);
        at += n;
    }
    return (uint32_t)crc;
}

/* Writes the seal into the user block of an index image. */
void h5_seal_write(uint8_t *image, size_t size)
{
    memset(image, 0, SEAL_BYTES);
    memcpy(image, SEAL_MAGIC, sizeof(SEAL_MAGIC));
    put_le(image + SEAL_SIZE_AT, size, 8);
    put_le(image + SEAL_CRC_AT, seal_crc(image, size), 4);
}

/* The raw bytes of an index against its seal; err says what is wrong. */
static int seal_check(const uint8_t *image, size_t size, char *err, size_t err_len)
{
    if (size >= sizeof(HDF5_SIGNATURE) &&
        memcmp(image, HDF5_SIGNATURE, sizeof(HDF5_SIGNATURE)) == 0)
        return util_fail(err, err_len, "corrupt: an HDF5 file without the seal of a Phalanx "
                                       "index (written by an older Phalanx, or by another "
                                       "program)");
    if (size < SEAL_BYTES || memcmp(image, SEAL_MAGIC, sizeof(SEAL_MAGIC)) != 0)
        return util_fail(err, err_len, "is not an HDF5 file (it does not start with the seal "
                                       "of a Phalanx index or the HDF5 signature)");
    uint64_t recorded = get_le(image + SEAL_SIZE_AT, 8);
    if (recorded != size)
        return util_fail(err, err_len, "corrupt: the index seal records %llu bytes, the file "
                                       "has %zu (truncated or extended)",
                         (unsigned long long)recorded, size);
    uint32_t stored = (uint32_t)get_le(image + SEAL_CRC_AT, 4), computed = seal_crc(image, size);
    if (stored != computed)
        return util_fail(err, err_len, "corrupt: the index checksum (crc32) is %08x, its bytes "
                                       "sum to %08x (damaged or edited after it was written)",
                         stored, computed);
    return 0;
}

/* What HDF5 would say "unknown error" or block on, named first: a FIFO is
 * opened without blocking and refused, like a directory, a device or an
 * empty file. Returns the open descriptor and the file's size, or -1. */
static int open_regular(const char *path, size_t *size, char *err, size_t err_len)
{
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0)
        return util_fail(err, err_len, "cannot open it: %s", strerror(errno));
    struct stat st;
    int rc = 0;
    if (fstat(fd, &st) != 0)
        rc = util_fail(err, err_len, "cannot stat it: %s", strerror(errno));
    else if (S_ISDIR(st.st_mode))
        rc = util_fail(err, err_len, "is a directory, not an HDF5 file");
    else if (!S_ISREG(st.st_mode))
        rc = util_fail(err, err_len, "is not a regular file (a FIFO, socket or device)");
    else if (st.st_size == 0)
        rc = util_fail(err, err_len, "is empty (0 bytes), not an HDF5 file");
    if (rc != 0) {
        close(fd);
        return -1;
    }
    *size = (size_t)st.st_size;
    return fd;
}

/* A shard: a regular file that starts with the HDF5 signature (shards
 * have no user block). */
static int check_hdf5_file(const char *path, char *err, size_t err_len)
{
    size_t size;
    int fd = open_regular(path, &size, err, err_len);
    if (fd < 0)
        return -1;
    uint8_t head[8];
    int rc = 0;
    if (pread(fd, head, sizeof(head), 0) != (ssize_t)sizeof(head) ||
        memcmp(head, HDF5_SIGNATURE, sizeof(head)) != 0)
        rc = util_fail(err, err_len, "is not an HDF5 file (it does not start with the HDF5 "
                                     "signature)");
    close(fd);
    return rc;
}

/* The whole index file read into memory (malloc'd) and checked against its
 * seal, so that HDF5 only ever parses the bytes that were checked. */
static int read_sealed_index(const char *path, uint8_t **image, size_t *size, char *err,
                             size_t err_len)
{
    int fd = open_regular(path, size, err, err_len);
    if (fd < 0)
        return -1;
    uint8_t *buf = NULL;
    int rc = 0;
    if (*size > INDEX_BYTES_MAX)
        rc = util_fail(err, err_len, "corrupt: %zu bytes, more than any index (%zu)", *size,
                       INDEX_BYTES_MAX);
    else if (!(buf = malloc(*size)))
        rc = util_fail(err, err_len, "out of memory for its %zu bytes", *size);
    for (size_t done = 0; rc == 0 && done < *size;) {
        ssize_t n = pread(fd, buf + done, *size - done, (off_t)done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            rc = util_fail(err, err_len, "cannot read it: %s",
                           n < 0 ? strerror(errno) : "it shrank while being read");
        else
            done += (size_t)n;
    }
    close(fd);
    if (rc == 0)
        rc = seal_check(buf, *size, err, err_len);
    if (rc != 0) {
        free(buf);
        return -1;
    }
    *image = buf;
    return 0;
}

/* Checkpoint files never change once committed, so readers take no lock:
 * HDF5 1.10 flocks by default, which fails on some parallel file systems.
 * On failure err holds the reason (without the path). */
hid_t h5_open_read(const char *path, char *err, size_t err_len)
{
    if (check_hdf5_file(path, err, err_len) != 0)
        return H5I_INVALID_HID;
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    hid_t file = H5I_INVALID_HID;
    if (fapl >= 0 && H5Pset_file_locking(fapl, 0, 1) >= 0)
        file = H5Fopen(path, H5F_ACC_RDONLY, fapl);
    h5_close(fapl);
    if (file < 0)
        h5_error(err, err_len);
    return file;
}

/* An index opened read-only from its checked bytes in memory (the core
 * driver copies them): what HDF5 parses is what the seal covered, even if
 * the file changes meanwhile. */
hid_t h5_open_sealed_index(const char *path, char *err, size_t err_len)
{
    static atomic_ulong serial;
    uint8_t *image;
    size_t size;
    if (read_sealed_index(path, &image, &size, err, err_len) != 0)
        return H5I_INVALID_HID;
    char name[64];
    snprintf(name, sizeof(name), "phalanx-index-%lu", atomic_fetch_add(&serial, 1));
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    hid_t file = H5I_INVALID_HID;
    if (fapl >= 0 && H5Pset_fapl_core(fapl, 1 << 16, 0) >= 0 &&
        H5Pset_file_image(fapl, image, size) >= 0)
        file = H5Fopen(name, H5F_ACC_RDONLY, fapl);
    h5_close(fapl);
    free(image);
    if (file < 0)
        h5_error(err, err_len);
    return file;
}

// ----------------------------------------------------------------------------
// attributes

int h5_attr_write(hid_t obj, const char *name, hid_t file_type, hid_t mem_type,
                  hsize_t count, const void *value)
{
    hid_t space = count ? H5Screate_simple(1, &count, NULL) : H5Screate(H5S_SCALAR);
    hid_t attr = space < 0 ? H5I_INVALID_HID
                           : H5Acreate2(obj, name, file_type, space, H5P_DEFAULT, H5P_DEFAULT);
    int rc = attr >= 0 && H5Awrite(attr, mem_type, value) >= 0 ? 0 : -1;
    h5_close(attr);
    h5_close(space);
    return rc;
}

int h5_attr_i64(hid_t obj, const char *name, hsize_t count, const int64_t *v)
{
    return h5_attr_write(obj, name, H5T_STD_I64LE, H5T_NATIVE_INT64, count, v);
}

/* A fixed-length string of the text's bytes (at most `max` - 1), NUL-padded:
 * never variable-length, whose bytes HDF5 keeps in its unchecksummed global
 * heap. h5py reads it as bytes (b"lamb"). */
int h5_attr_string(hid_t obj, const char *name, const char *text, size_t max)
{
    size_t length = strnlen(text, max - 1);
    char *padded = calloc(1, length + 1);
    hid_t type = H5Tcopy(H5T_C_S1);
    int rc = -1;
    if (padded && type >= 0 && H5Tset_size(type, length ? length : 1) >= 0 &&
        H5Tset_strpad(type, H5T_STR_NULLPAD) >= 0) {
        memcpy(padded, text, length);
        rc = h5_attr_write(obj, name, type, type, 0, padded);
    }
    h5_close(type);
    free(padded);
    return rc;
}

/* A stored type that converts to `mem_type` without loss: the same class,
 * no wider (HDF5 would clamp 1e12 into an int, or round a double). */
static bool type_fits(hid_t stored, hid_t mem_type)
{
    return stored >= 0 && H5Tget_class(stored) == H5Tget_class(mem_type) &&
           H5Tget_size(stored) <= H5Tget_size(mem_type);
}

int h5_attr_read(hid_t obj, const char *name, hid_t mem_type, hssize_t count, void *out)
{
    if (H5Aexists(obj, name) <= 0)
        return -1;
    hid_t attr = H5Aopen(obj, name, H5P_DEFAULT);
    hid_t space = attr >= 0 ? H5Aget_space(attr) : H5I_INVALID_HID;
    hid_t type = attr >= 0 ? H5Aget_type(attr) : H5I_INVALID_HID;
    int rc = -1;
    if (space >= 0 && H5Sget_simple_extent_npoints(space) == (count ? count : 1) &&
        type_fits(type, mem_type))
        rc = H5Aread(attr, mem_type, out) >= 0 ? 0 : -1;
    h5_close(type);
    h5_close(space);
    h5_close(attr);
    return rc;
}

/* What is wrong with a string attribute's stored type and space for a
 * buffer of `len` bytes (NULL: nothing). Checked before H5Aread: reading a
 * variable-length string makes HDF5 follow the record sizes of its global
 * heap, which carries no checksum (a damaged one crashed or hung HDF5). */
static const char *string_problem(hid_t type, hid_t space, size_t len)
{
    if (type < 0 || space < 0)
        return "is unreadable";
    if (H5Tget_class(type) != H5T_STRING)
        return "is not a string";
    if (H5Tis_variable_str(type) != 0)
        return "is a variable-length string (Phalanx writes fixed-length ones)";
    if (H5Tget_size(type) < 1 || H5Tget_size(type) >= len)
        return "is a string longer than any Phalanx writes";
    if (H5Sget_simple_extent_npoints(space) != 1)
        return "is not a single string";
    return NULL;
}

/* Reads a fixed-length string attribute of at most `len` - 1 bytes into out.
 * Returns NULL, or what is wrong with it. */
const char *h5_attr_read_string(hid_t obj, const char *name, char *out, size_t len)
{
    if (H5Aexists(obj, name) <= 0)
        return "is missing";
    hid_t attr = H5Aopen(obj, name, H5P_DEFAULT);
    hid_t type = attr >= 0 ? H5Aget_type(attr) : H5I_INVALID_HID;
    hid_t space = attr >= 0 ? H5Aget_space(attr) : H5I_INVALID_HID;
    const char *problem = string_problem(type, space, len);
    if (!problem) {
        memset(out, 0, len); // NUL-padded or not, the text ends within out
        if (H5Aread(attr, type, out) < 0)
            problem = "is unreadable";
    }
    h5_close(space);
    h5_close(type);
    h5_close(attr);
    return problem;
}


/* HDF5's Fletcher32 (H5_checksum_fletcher32, for an even length): sums of
 * big-endian 16-bit words, folded to 17 bits after every 360 words. Over a
 * block of n words sum2 gains n*sum1 + sum((n - i) * w_i), the same value
 * modulo 2^32 as the word-by-word loop, in a form the compiler vectorises. */
uint32_t h5_fletcher32(const uint8_t *data, size_t bytes)
{
    uint32_t sum1 = 0, sum2 = 0;
    for (size_t words = bytes / 2; words > 0;) {
        uint32_t n = words > 360 ? 360 : (uint32_t)words, s = 0, t = 0;
        for (uint32_t i = 0; i < n; i++) {
            uint32_t w = (uint32_t)data[2 * i] << 8 | data[2 * i + 1];
            s += w;
            t += (n - i) * w;
        }
        sum2 += n * sum1 + t;
        sum1 += s;
        sum1 = (sum1 & 0xffff) + (sum1 >> 16);
        sum2 = (sum2 & 0xffff) + (sum2 >> 16);
        data += 2 * (size_t)n;
        words -= n;
    }
    sum1 = (sum1 & 0xffff) + (sum1 >> 16);
    sum2 = (sum2 & 0xffff) + (sum2 >> 16);
    return sum2 << 16 | sum1;
}
