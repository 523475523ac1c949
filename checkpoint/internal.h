/* Private to checkpoint/: the contracts between its files, one section per
 * file. The files stand on floors; each calls only files on lower floors
 * (never one on its own floor or above), so there is no circle:
 *
 *   5  reader.c   load, verify, list, resume (checkpoint.h's reading half)
 *      sidecar.c  the writer: Checkpointer, its sidecar thread, commit, prune
 *   4  replica.c  buddy copies of shards, tier 1 surveys and fetches
 *   3  format.c   the schema: what a shard and an index hold, written as
 *                 images and read back checked
 *   2  h5util.c   HDF5 plumbing: error stack, in-memory images, checksums
 *                 (superblock, Fletcher32, the index seal), attributes
 *   1  state.c    run-state typed values and key-value pairs, status names, messages, index
 *                 memory: no HDF5, no file system
 *      files.c    the file system: names, durable writes, removal, listing,
 *                 tiers and fences
 *   0  checkpoint.h (public), internal.h (these contracts), util/util.h
 */
#ifndef PHALANX_CHECKPOINT_INTERNAL_H
#define PHALANX_CHECKPOINT_INTERNAL_H

#include "checkpoint.h"

#include <hdf5.h>
#include <limits.h>

#define CKPT_INDEX_FILE "index.h5"
/* run/extra key of the index: the epoch that wrote it (-1: none); the index
 * checksum covers it like any run state */
#define CKPT_EPOCH_KEY "fence.epoch"

enum { KIND_PARAM, KIND_M, KIND_V, KIND_COUNT };

/* ---------------------------------------------------------------------- */
/* state.c                                                                */

/* printf of a reason into err as "PATH: reason": the reason always fits,
 * the middle of a long path gives way ("/a/b...y/z"). Returns -1. */
int ckpt_fail_at(char *err, size_t err_len, const char *path, const char *format, ...)
    __attribute__((format(printf, 4, 5)));

/* Elements per row: shape[1] for 2-D tensors, 1 for 1-D. */
int64_t ckpt_row_length(int ndim, const int64_t shape[2]);

/* ---------------------------------------------------------------------- */
/* files.c                                                                */

/* Called between the pieces of a long write (the sidecar serves copies). */
typedef struct {
    void (*between)(void *ctx);
    void *ctx;
    size_t kill_at; /* fault injection: SIGKILL after this many bytes; SIZE_MAX: never */
} WriteHooks;

/* A directory held open, with its path for messages. Everything below a
 * tier's root is reached from such a handle without following a link
 * (openat, mkdirat, renameat, unlinkat with O_NOFOLLOW): a link planted in
 * a tier is never written through, and what it points to never deleted. */
typedef struct {
    int fd; /* -1: not open */
    char path[PATH_MAX];
} FilesDir;

/* files_open_private's verdict on a directory someone else may control. */
#define FILES_UNSAFE (-2)

/* step_%08lld, and step_%08lld.e%d for an epoch >= 0 (checkpoint.h, "Files") */
void files_step_name(char *out, size_t len, int64_t step, int epoch);
void files_shard_name(char *out, size_t len, int rank); /* rank_%05d.h5 */
void files_index_path(char *out, size_t len, const char *step_dir);
/* `path` is a step directory or its index file: both, in PATH_MAX bytes each. */
void files_locate(const char *path, char *dir, char *index);

/* Creates a directory and its parents (0755). */
int files_mkdirs(const char *path, char *err, size_t err_len);
/* Tier 2: creates tier->path when missing and opens it. The user named it,
 * so the path may pass through links of theirs. */
int files_open_tier(FilesDir *tier, char *err, size_t err_len);
/* Tier 1, at a predictable name in a shared directory: tier->path is
 * created 0700; an existing one is opened only when it is a real directory
 * (not a link) of this user that group and others cannot write.
 * FILES_UNSAFE when it is not (err names the path and why), -1 on other
 * errors. */
int files_open_private(FilesDir *tier, char *err, size_t err_len);
/* Opens (creates when `create`) step_%08lld under `tier`; a link there is
 * refused. */
int files_open_step(const FilesDir *tier, int64_t step, int epoch, bool create, FilesDir *out,
                    char *err, size_t err_len);
void files_close(FilesDir *dir);
/* Creates a file, removes it: the directory accepts new files. */
int files_probe(const FilesDir *dir, char *err, size_t err_len);
/* Writes `name` in `dir` durably: a new temporary file (O_EXCL|O_NOFOLLOW),
 * written and fsynced, renamed over `name`, then the directory fsynced. A
 * failed write leaves no temporary file behind. */
int files_write(const FilesDir *dir, const char *name, const void *data, size_t size,
                const WriteHooks *hooks, char *err, size_t err_len);
/* The same, except that an existing `name` is never replaced: the final
 * rename is renameat2(RENAME_NOREPLACE) (a link and an unlink where the
 * file system refuses that flag), and an existing name fails it. */
int files_publish(const FilesDir *dir, const char *name, const void *data, size_t size,
                  char *err, size_t err_len);
int files_fsync(const FilesDir *dir);
/* `name` is a regular file in `dir` (a link is not). */
bool files_has_file(const FilesDir *dir, const char *name);
/* Unlinks `name` when it is a regular file. */
void files_remove_file(const FilesDir *dir, const char *name);
/* Removes step_%08lld(.eE) of `tier`: its index first (so it stops being complete
 * at once), then the regular files a checkpoint's layout names (shards,
 * index, their temporary names), then the directory when that emptied it.
 * A step that is a link is left alone. */
void files_remove_step(const FilesDir *tier, int64_t step, int epoch);
/* Removes this rank's shard (and its temporary) of a step, and the step
 * directory when that left it empty. */
void files_remove_own(const FilesDir *tier, int64_t step, int epoch, int rank);

bool files_exists(const char *path);
bool files_is_dir(const char *path);
int64_t files_size(const char *path); /* -1 when absent */
/* Sum of the sizes of the regular files in a directory; *newest: latest mtime. */
uint64_t files_dir_bytes(const char *dir, time_t *newest);

/* A step directory's name: its step, and the epoch that wrote it (-1: none). */
typedef struct {
    int64_t step;
    int epoch;
} FilesStep;
/* step_DIGITS or step_DIGITS.eDIGITS, nothing else. */
bool files_parse_step_name(const char *name, FilesStep *out);

/* The step directories in `dir`, by step then epoch, ascending (malloc'd);
 * a link of such a name is not a step. */
int files_list_steps(const char *dir, FilesStep **steps, int *count, char *err, size_t err_len);
/* The same for an open tier. */
int files_list_tier(const FilesDir *tier, FilesStep **steps, int *count);

/* ---------------------------------------------------------------------- */
/* h5util.c                                                               */

/* Bytes of index.h5's user block, which holds the seal (h5util.c). */
#define SEAL_BYTES 512

/* Drops a reference to an HDF5 id; a negative id (a failed call's) is none. */
void h5_close(hid_t id);
/* Turns HDF5's automatic error printing off for the calling thread (the
 * thread-safe library keeps that setting per thread). */
void h5_quiet(void);
/* The most specific message on this thread's HDF5 error stack, in buf
 * (returned); the stack is cleared. */
const char *h5_error(char *buf, size_t len);
/* "what: HDF5's message" into err; returns -1. */
int h5_fail(char *err, size_t err_len, const char *what);

/* A new in-memory file growing by `increment` bytes; `userblock`: bytes
 * reserved before the superblock (0 or SEAL_BYTES). */
hid_t h5_core_create(size_t increment, hsize_t userblock);
/* An in-memory copy of `image` open for writing (the core driver copies it). */
hid_t h5_core_open(const void *image, size_t size);
/* The file's bytes (malloc'd), its superblock checksum recomputed; a file
 * with a user block of `userblock` bytes gets that many zeros first. */
int h5_core_image(hid_t file, size_t userblock, void **image, size_t *size, char *err,
                  size_t err_len);
/* Writes the seal into the user block of an index image. */
void h5_seal_write(uint8_t *image, size_t size);

/* A shard opened read-only, without a lock (checkpoint files never change
 * once committed); on failure err holds the reason (without the path). */
hid_t h5_open_read(const char *path, char *err, size_t err_len);
/* An index read whole, checked against its seal and opened read-only from
 * those bytes in memory: what HDF5 parses is what the seal covered. */
hid_t h5_open_sealed_index(const char *path, char *err, size_t err_len);

/* Attributes of `obj`: `count` 0 is a scalar, else a 1-D array. 0 or -1. */
int h5_attr_write(hid_t obj, const char *name, hid_t file_type, hid_t mem_type, hsize_t count,
                  const void *value);
int h5_attr_i64(hid_t obj, const char *name, hsize_t count, const int64_t *v);
/* A fixed-length string of the text's bytes (at most `max` - 1), NUL-padded:
 * never variable-length, whose bytes HDF5 keeps in its unchecksummed global
 * heap. */
int h5_attr_string(hid_t obj, const char *name, const char *text, size_t max);
/* Reads an attribute of `count` elements (0: scalar) whose stored type
 * converts to `mem_type` without loss. 0 or -1. */
int h5_attr_read(hid_t obj, const char *name, hid_t mem_type, hssize_t count, void *out);
/* Reads a fixed-length string attribute of at most `len` - 1 bytes into out.
 * Returns NULL, or what is wrong with it. */
const char *h5_attr_read_string(hid_t obj, const char *name, char *out, size_t len);

/* HDF5's Fletcher32 checksum of `bytes` (an even count) bytes. */
uint32_t h5_fletcher32(const uint8_t *data, size_t bytes);

/* ---------------------------------------------------------------------- */
/* format.c                                                               */

/* Dataset groups of the three kinds, in shards and in the index. */
extern const char *const ckpt_kind_group[KIND_COUNT];

/* One fragment this rank writes, with its rows of params, m and v. */
typedef struct {
    const CkptFragment *fragment;
    const float *data[KIND_COUNT];
} ShardPiece;

typedef struct {
    int64_t step;
    uint64_t run_id;
    int rank, world;
    const ShardPiece *pieces;
    int piece_count;
} ShardContent;

typedef struct {
    const CkptRunState *state;
    uint64_t run_id;
    const CkptFragment *fragments; /* every fragment of every rank */
    int fragment_count;
    const CkptShard *shards;
    int shard_count;
} IndexContent;

/* Serialise a shard / an index into an HDF5 file image in memory (malloc'd):
 * files are written with plain write(), so a full disk is an ordinary errno
 * and never an HDF5 error path. */
int format_shard_image(const ShardContent *content, void **image, size_t *size, char *err,
                       size_t err_len);
int format_index_image(const IndexContent *content, void **image, size_t *size, char *err,
                       size_t err_len);
/* The same index as format_index_image, from an earlier image of this run
 * (same fragments and shard count): only what changes per checkpoint is
 * rewritten, so a flush does not recreate every virtual dataset. */
int format_index_update(const void *template, size_t template_size,
                        const IndexContent *content, void **image, size_t *size, char *err,
                        size_t err_len);

/* Reads an index file (not the directory). */
CkptStatus format_index_read(const char *file, CkptIndex *index, char *err, size_t err_len);

/* Opens a shard and checks that it belongs to the index (step, run id, rank). */
CkptStatus format_shard_open(const char *file, const CkptIndex *index, int rank, hid_t *out,
                             char *err, size_t err_len);
/* Reads one fragment's rows of one kind into dest (checksums verified). */
CkptStatus format_fragment_read(hid_t shard, int kind, const CkptFragment *fragment,
                                float *dest, char *err, size_t err_len);
/* The same for rows [first, first + count) of the fragment (0 <= first,
 * first + count <= its rows), into dest. */
CkptStatus format_fragment_read_rows(hid_t shard, int kind, const CkptFragment *fragment,
                                     int64_t first, int64_t count, float *dest, char *err,
                                     size_t err_len);

/* Sorts fragments by name, then first row. */
void format_fragments_sort(CkptFragment *fragments, int count);
/* Checks sorted fragments: one shape per tensor, rows tiled exactly (no gap,
 * no overlap). The message names the tensor and the ranks. */
int format_fragments_check(const CkptFragment *sorted, int count, char *err, size_t err_len);

/* ---------------------------------------------------------------------- */
/* replica.c (checkpoint.h, "Replication")                                */

typedef struct {
    bool on;       /* shards are sent to buddies */
    bool leader;   /* the lowest rank on this host: publishes and prunes its tier 1 */
    int rank, world;
    int *buddy;    /* per rank: the rank that keeps its copy; -1: none */
} Replica;

/* Collective over `world`: learns the hosts, plans the pairing. */
int replica_plan(Replica *r, Comm *world, CkptReplicate mode, bool memory_tier, char *err,
                 size_t err_len);
void replica_free(Replica *r);
/* buddy_rank_%05d.h5 */
void replica_copy_name(char *out, size_t len, int rank);
/* Waits for `request`, calling hooks->between (when set) while it is not done. */
int replica_wait(CommRequest *request, const WriteHooks *hooks);
/* Collective over the sidecar's `comm`: sends this rank's shard image to its
 * buddy (size -1 when image is NULL: nothing to keep) and writes every copy
 * it keeps into `step`. 0 when every copy it keeps was written. */
int replica_exchange(const Replica *r, Comm *comm, const FilesDir *step, const void *image,
                     size_t size, const WriteHooks *hooks, char *err, size_t err_len);
/* Collective: rank 0's index image (image/size on rank 0 only; size 0: none
 * committed) published in `step` by the leader of every other host. */
void replica_share_index(const Replica *r, Comm *comm, const FilesDir *step,
                         const void *image, size_t size);

/* What the survivors' tier 1 holds (ckpt_resume's memory path). */
typedef struct {
    int64_t *items; /* every rank's: step, epoch, shard (-1: index), kind, count, rank */
    int item_count;
    int64_t (*candidates)[2]; /* (step, epoch) held whole, newest first */
    int candidate_count;
    bool replicated; /* some buddy copy exists: the memory path applies */
} ReplicaSurvey;

/* Collective over `comm`: every rank lists its host's tier 1 `tier1`. */
int replica_survey(Comm *comm, const char *tier1, ReplicaSurvey *survey, char *err,
                   size_t err_len);
void replica_survey_free(ReplicaSurvey *survey);

/* A private copy of one surveyed checkpoint on this rank: view is its step
 * directory; bytes read in place (linked) and received over the network. */
typedef struct {
    char root[PATH_MAX];
    char view[PATH_MAX];
    int64_t step;
    int epoch;
    uint64_t local_bytes, network_bytes;
} ReplicaView;

/* Collective: assembles candidate `which` of the survey. 0 or -1 (err). */
int replica_fetch(Comm *comm, const char *tier1, const ReplicaSurvey *survey, int which,
                  ReplicaView *view, char *err, size_t err_len);
void replica_view_remove(const char *tier1, const ReplicaView *view);

#endif
