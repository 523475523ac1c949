/*
 * checkpoint: lazy asynchronous checkpoints in a universal (layout-free)
 * HDF5 format, and the resharding reader (DESIGN.md "Checkpoints").
 *
 * What a rank saves
 * - The caller lists what this rank holds as CkptTensor: whole logical
 *   tensors (name, shape) with pointers to the parameter and to the optimizer
 *   moments m and v, all fp32 and row-major. Ranks that hold the same tensor
 *   (data/sequence-parallel replicas, the tied `wte` on the first and last
 *   stage) split its bytes: replica j of R writes rows [j*rows/R,
 *   (j+1)*rows/R) (elements for 1-D tensors), so every byte is written once.
 *   A rank that keeps only its share of m and v (ZeRO-1) marks the tensor
 *   moments_share_only; its share is a fragment like any other, so the
 *   checkpoint reads back whole in any layout, sharded or not.
 *
 * Writing (one Checkpointer per rank)
 * - ckpt_open() is collective over `world`: it splits a communicator for the
 *   sidecar, exchanges the fragment table (and checks that the fragments of
 *   every logical tensor tile it exactly), checks the directories and, in
 *   async mode, starts the sidecar thread. Every rank gets the same verdict.
 * - The training thread, around optimizer step s (1-based):
 *       ckpt_wait_copied(ck);                    right before the optimizer writes
 *       optimizer step s
 *       if (ckpt_due(ck, s)) ckpt_snapshot(ck, &state, err, sizeof(err));
 *   async: ckpt_snapshot() returns at once; the sidecar copies this rank's
 *   share of params, m and v into a staging buffer while the next forward and
 *   backward run (so those buffers must not change until ckpt_wait_copied()
 *   returns), then serialises and flushes it in the background.
 *   sync: ckpt_snapshot() copies, writes and commits before it returns.
 *   Memory: staging holds this rank's share of params, m and v; a flush
 *   builds the shard as an HDF5 image in memory (about twice that, briefly).
 * - Tiers: tier 1 in node-local memory (options.memory_dir, by default
 *   /dev/shm/phalanx-<hash of the tier-2 path>), survives a crashed process;
 *   tier 2 is options.dir (shared by all ranks). Same files in both; tier 1
 *   is committed first. A tier-1 checkpoint is readable where all its shards
 *   are local (one node); elsewhere resume falls back to tier 2 by itself.
 * - Commit, per tier: every rank writes and fsyncs its shard; the sidecars
 *   agree (a non-blocking allreduce on their own communicator); rank 0 writes
 *   index.h5 (tmp file, fsync, renameat2(RENAME_NOREPLACE), directory fsync:
 *   an index is never replaced). A checkpoint is complete when its index
 *   exists. Then rank 0 reads the fence again and, unless its own commit is
 *   fenced, prunes checkpoints older than the newest `keep` complete and
 *   valid ones (tier 1 keeps at most 2: it is memory); a writer never
 *   removes a step directory of a newer epoch than its own. A pruned step
 *   is first renamed to removing_<its name> (never listed), then emptied, so
 *   a removal cut short never looks like an incomplete checkpoint.
 *   A checkpoint that cannot be written (no space, I/O error) is not
 *   committed: a warning goes to stderr, the partial files are removed and
 *   training goes on; earlier checkpoints are never touched by a failed one.
 * - ckpt_close() is collective: it flushes what is pending and, after a
 *   successful run whose newest checkpoint reached tier 2, removes tier 1.
 *
 * Files, the same in both tiers (E: the epoch that wrote the step, below):
 *   <tier>/step_%08ld.eE/            a step written by attempt E of an
 *       elastic job; step_%08ld without an epoch (a run that is not elastic).
 *       Every file of a step is written by one attempt: two attempts never
 *       share a directory, so an old one cannot replace or mix into a newer
 *       one's files. Readers take the newest valid step, and of one step the
 *       highest epoch.
 *   <tier>/step_%08ld.eE/rank_%05d.h5   one shard per writing rank: datasets
 *       params/<name>, optim/m/<name>, optim/v/<name>, each a fragment of a
 *       logical tensor (attributes logical_name, logical_shape, offset),
 *       chunked with Fletcher32; metadata checksummed (HDF5 1.10 format:
 *       readers need HDF5 1.10 or newer).
 *   <tier>/step_%08ld.eE/index.h5       written last: group `run` (run state as
 *       attributes, run/extra for key-value pairs, among them fence.epoch: E,
 *       -1 without one; it must match the directory's name), table `fragments`, table
 *       `shards` (rank, bytes), and virtual datasets params/<name>,
 *       optim/m/<name>, optim/v/<name> that show every logical tensor whole
 *       (h5py and h5dump read them without Phalanx; a missing shard reads NaN);
 *       a 512-byte user block seals it (see Reading). Every string attribute,
 *       here and in shards, is fixed-length (h5py reads it as bytes).
 *
 * Replication (checkpoint/replica.c; DESIGN.md "Elasticity")
 * - ckpt_open() learns every rank's host (gethostname: an emulated host has
 *   its own) and pairs each rank r with a buddy on the next host in the
 *   order hosts first appear: rank i of host h is kept by rank i mod n of
 *   host h+1 (cyclic). Losing any one host then leaves every shard of it on
 *   the next host, and every other shard on its own: a complete copy. One
 *   host: no buddy, replication off (said once when asked for with "on";
 *   "auto", the default, is quiet about it; "off" never replicates).
 * - A tier-1 commit with replication: each sidecar writes its shard, sends
 *   the same bytes to its buddy over its own communicator (non-blocking,
 *   serving the training thread's copies meanwhile) and writes what it
 *   receives as step_N.eE/buddy_rank_%05d.h5, with the files' safety rules.
 *   A rank votes "written" only when its own shard and every copy it keeps
 *   are durable in memory, so a tier-1 index (committed) means every shard
 *   is in memory twice. Rank 0 then sends the index to the lowest rank of
 *   every other host, which publishes it there. Each host's lowest rank
 *   prunes that host's tier 1.
 * - Recovery (ckpt_resume "latest"): every rank reports what its host's
 *   tier 1 holds (indexes, own shards, buddy copies); all agree on the
 *   newest step that the survivors hold whole, an own copy preferred to a
 *   buddy copy. A rank reads a shard its host holds in place and receives
 *   one held elsewhere from its holder over MPI, assembles the checkpoint
 *   in a private view (tier1/recovery_rank_%05d, hard links and received
 *   files, removed afterwards) and reads it with the one validation below,
 *   every checksum verified. A corrupt copy fails that step on every rank
 *   and the next older one is tried; when memory has none, the durable
 *   tier (rank 0 says why). Rank 0 prints the bytes read in place and over
 *   the network.
 *
 * Reading
 * - ckpt_load() reads one checkpoint into whole logical tensors of any layout;
 *   each rank reads only the fragments of the tensors it passes, straight
 *   from the shards, with every checksum verified.
 * - ckpt_resume() is collective: "latest" (the newest complete checkpoint
 *   across both tiers) or a path; when a candidate fails to load on any rank
 *   (checksum, missing shard) rank 0 warns and all fall back to the previous
 *   complete one. A different model shape is never a reason to fall back:
 *   it fails with a message naming the dimension.
 *
 * Rules
 * - Errors come back as -1 or a CkptStatus with a message in err; nothing
 *   aborts. Warnings of the background flush go to stderr.
 * - All functions are called from one thread (the training thread). Resume
 *   before ckpt_open(): during training only the sidecar calls HDF5, since
 *   the thread-safe HDF5 (Debian's serial libhdf5) serialises every call
 *   behind one lock.
 * - Fault injection: PHALANX_FAULT_KILL_DURING_FLUSH=STEP[:TIER][@RANK] makes
 *   the sidecar raise SIGKILL after writing half of that step's shard in that
 *   tier (default 2; every rank unless @RANK is given).
 */
#ifndef PHALANX_CHECKPOINT_H
#define PHALANX_CHECKPOINT_H

#include "comm.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <time.h>

#define CKPT_FORMAT_VERSION 1
/* The first 8 bytes of every index.h5 (its seal, before the HDF5 superblock):
 * what tells a checkpoint index from other files. */
#define CKPT_INDEX_MAGIC "PHXSEAL1"
#define CKPT_NAME_MAX 64  /* logical tensor names, including the NUL */
#define CKPT_EXTRA_MAX 32 /* key-value pairs in CkptRunState.extra */

/* Outcome of reading a checkpoint; `phalanx ckpt verify` exits with it
 * (2 is left for usage errors). */
typedef enum {
    CKPT_OK = 0,
    CKPT_CORRUPT = 1,    /* a checksum, a size or a format check failed */
    CKPT_INCOMPLETE = 3, /* never committed (no index) or a shard is missing */
    CKPT_NOT_FOUND = 4,  /* no such path, or no checkpoint there */
    CKPT_MISMATCH = 5,   /* model shape or tensors differ from this run's */
    CKPT_ERROR = 6,      /* a system error (permissions, memory, communication) */
    CKPT_FENCED = 7,     /* committed by an attempt after a newer one fenced it off */
} CkptStatus;

const char *ckpt_status_name(CkptStatus status);

/* ---------------------------------------------------------------------- */
/* What is saved                                                          */

typedef struct {
    char name[CKPT_NAME_MAX]; /* logical name: "wte", "h.3.attn.qkv.weight" */
    int ndim;                 /* 1 or 2 */
    int64_t shape[2];         /* logical shape (shape[1] unused for 1-D) */
    float *param, *m, *v;     /* the whole tensor; m or v may be NULL when loading */
    int replica_index, replica_count; /* this rank's share (see moments_share_only) */
    /* m and v point at the first element of this rank's share (rows of
     * share replica_index of replica_count), not at the whole tensor: they
     * hold only that share (a ZeRO-1 rank's optimizer shard). Writing: only
     * that share is written. Reading: only those rows are read into m and v
     * (param is filled whole). */
    bool moments_share_only;
} CkptTensor;

typedef struct {
    int vocab, layers, heads, dim, seq_len;
} CkptModel;

typedef struct {
    int dp, pp, sp, world;
} CkptLayout;

typedef struct {
    char key[32];
    double value;
} CkptExtra;

#define CKPT_VALUE_MAX 48 /* typed values in CkptRunState.values */
#define CKPT_TEXT_MAX 32  /* a text value, including the NUL */

/* The type a value has in the file: H5T_STD_I32LE, H5T_STD_I64LE,
 * H5T_IEEE_F64LE, or a fixed-length string. */
typedef enum { CKPT_INT32, CKPT_INT64, CKPT_F64, CKPT_TEXT } CkptValueType;

typedef struct {
    char key[32];
    CkptValueType type;
    union {
        int32_t i32;
        int64_t i64;
        double f64;
        char text[CKPT_TEXT_MAX];
    } as;
} CkptValue;

/* Everything that defines the run besides the tensors; the caller fills it
 * (format_version is set by the writer).
 * - The core fields are the checkpoint's own: what it needs to find, fence,
 *   check and reshard a checkpoint (step, cursor, seed, model, writer).
 * - values: the state of the run's stateful parts (optimizer, schedule,
 *   batch controller, ...), each saved and checked by its owner
 *   (runtime/stateful.h); checkpoint/ stores them without knowing them. In
 *   the file each is one attribute of group `run` of its own type, in the
 *   order they were put, between the model's and the writer's attributes.
 *   Keys must not be a core field's attribute name.
 * - extra: key-value pairs of doubles (group run/extra), checked finite. */
typedef struct {
    int format_version;
    int64_t step;          /* optimizer steps completed */
    int64_t sample_cursor; /* global samples consumed */
    uint64_t seed;
    CkptModel model;
    CkptLayout writer; /* the layout that wrote it (information only) */
    int value_count;
    CkptValue values[CKPT_VALUE_MAX];
    int extra_count;
    CkptExtra extra[CKPT_EXTRA_MAX];
} CkptRunState;

/* Adds or replaces a key-value pair; -1 when full or the key is too long. */
int ckpt_state_set(CkptRunState *state, const char *key, double value);
/* The value of `key`, or `fallback` when absent. */
double ckpt_state_get(const CkptRunState *state, const char *key, double fallback);

/* Adds a typed value, or replaces the one of that key (its type too; it
 * keeps its place). -1 when full, or the key or the text is too long. */
int ckpt_state_put_int(CkptRunState *state, const char *key, int32_t value);
int ckpt_state_put_i64(CkptRunState *state, const char *key, int64_t value);
int ckpt_state_put_f64(CkptRunState *state, const char *key, double value);
int ckpt_state_put_str(CkptRunState *state, const char *key, const char *text);
/* True, with *out set, when `key` holds a value of that type; a value of
 * another type is not found. The text stays in state. */
bool ckpt_state_get_int(const CkptRunState *state, const char *key, int32_t *out);
bool ckpt_state_get_i64(const CkptRunState *state, const char *key, int64_t *out);
bool ckpt_state_get_f64(const CkptRunState *state, const char *key, double *out);
bool ckpt_state_get_str(const CkptRunState *state, const char *key, const char **out);

/* Range checks for a stateful part's values, with the messages the reader
 * gives its own fields: -1 with "attribute 'lr' is missing, unreadable or
 * of the wrong type", "'lr' is nan, not a finite number in [0, 1e+06]" or
 * "'step' is -1, outside [0, 9007199254740992]" (the caller's check adds
 * nothing; the reader says "corrupt run state: " before it). A text is
 * "attribute 'optimizer' is missing" or "... is not a string". */
int ckpt_state_need_int(const CkptRunState *state, const char *key, int64_t low, int64_t high,
                        char *err, size_t err_len);
int ckpt_state_need_i64(const CkptRunState *state, const char *key, int64_t low, int64_t high,
                        char *err, size_t err_len);
int ckpt_state_need_f64(const CkptRunState *state, const char *key, double low, double high,
                        char *err, size_t err_len);
int ckpt_state_need_str(const CkptRunState *state, const char *key, char *err, size_t err_len);
/* The message for an integer outside [low, high] (for the reader's own). */
int ckpt_range_fail(char *err, size_t err_len, const char *field, int64_t value, int64_t low,
                    int64_t high);
/* Counts in a run state (steps, samples) are at most 2^53: exact in a double. */
#define CKPT_COUNT_MAX ((int64_t)1 << 53)

/* 0 when equal; else -1 with "checkpoint has --dim 64, this run has --dim 128". */
int ckpt_model_check(const CkptModel *checkpoint, const CkptModel *run, char *err,
                     size_t err_len);

/* ---------------------------------------------------------------------- */
/* Writing                                                                */

typedef enum { CKPT_ASYNC = 0, CKPT_SYNC = 1 } CkptMode;

/* The caller's check of the run state it restores (its stateful parts'
 * values, and the meaning and ranges of its extra pairs; the runtime's is
 * stateful_check): 0, or -1 with a message naming the field. */
typedef int (*CkptStateCheck)(const CkptRunState *state, char *err, size_t err_len);

/* Buddy replication of tier 1 (checkpoint.h, "Replication"). */
typedef enum {
    CKPT_REPLICATE_AUTO = 0, /* on when the ranks span several hosts (the default) */
    CKPT_REPLICATE_ON,       /* the same, and a note when there is one host */
    CKPT_REPLICATE_OFF,
} CkptReplicate;

/* Parses "auto" / "on" / "off". */
bool ckpt_replicate_parse(const char *text, CkptReplicate *out);

typedef struct {
    const char *dir;        /* tier 2 (--ckpt-dir); created when missing */
    const char *memory_dir; /* tier 1; NULL or "": /dev/shm/phalanx-<hash>; "none": off */
    long every;             /* checkpoint after steps every, 2*every, ... (>= 1) */
    long durable_every;     /* of those, the ones at multiples of this also go to tier 2
                             * (0: every one; else a multiple of every; needs tier 1) */
    CkptReplicate replicate;
    int keep;               /* complete checkpoints kept per tier (>= 1) */
    CkptMode mode;
    CkptStateCheck check_state; /* resume: NULL, or refuses (then falls back) */
} CkptOptions;

/* Parses "async" / "sync". */
bool ckpt_mode_parse(const char *text, CkptMode *out);

/* Fencing (DESIGN.md "Elasticity"): the elastic agent numbers every launch
 * (its epoch E, given to ranks as PHALANX_EPOCH) and, before it, appends
 * "epoch E after K" to <--ckpt-dir>/fence (the whole history rewritten:
 * temporary file, fsync, rename), K being the newest complete valid step
 * at that moment (ckpt_newest_complete; -1: none). The one validity rule,
 * applied by resume, load, verify, `phalanx ckpt ls`, pruning and the agent:
 *     a checkpoint of epoch e at step s is valid unless the fence has an
 *     entry (F, K) with F > e and s > K.
 * So whatever an older attempt still alive (a rank on a partitioned host)
 * commits after the fence went up is invisible, whenever it lands: it is
 * newer than K, and it lies in a directory of its own epoch. No timing is
 * involved; the writer's check of the fence before each shard and index
 * (a fenced Checkpointer stops writing) only saves it the work. Tier 1 is
 * judged by tier 2's fence. A fence file that cannot be parsed stops
 * readers with a message (it is never guessed at). */
typedef struct {
    int epoch;     /* F: the attempt that raised it */
    int64_t after; /* K: the newest valid step then; INT64_MAX for a "epoch F" line */
} CkptFenceEntry;
typedef struct {
    CkptFenceEntry *entries; /* ascending epochs */
    int count;               /* 0: no fence */
} CkptFence;
int ckpt_fence_read(const char *dir, CkptFence *fence, char *err, size_t err_len);
void ckpt_fence_free(CkptFence *fence);
/* The rule; when false, `why` says which entry fenced it (why may be NULL). */
bool ckpt_fence_allows(const CkptFence *fence, int epoch, int64_t step, char *why,
                       size_t why_len);
/* Appends (epoch, after); refused unless epoch is above every entry. */
int ckpt_fence_raise(const char *dir, int epoch, int64_t after, char *err, size_t err_len);
/* The newest entry's epoch; -1 when there is no fence (or it is unreadable). */
int ckpt_fence_epoch(const char *dir);
#define CKPT_EPOCH_ENV "PHALANX_EPOCH"
/* The kill-during-flush hook above (the drill's flushkill events set it). */
#define CKPT_FLUSH_KILL_ENV "PHALANX_FAULT_KILL_DURING_FLUSH"

/* "<tier>/step_%08lld", or "<tier>/step_%08lld.e%d" when epoch >= 0. */
void ckpt_step_dir(char *out, size_t len, const char *tier, int64_t step, int epoch);

/* "<step_dir>/rank_%05d.h5": the shard that `rank` writes in a step's
 * directory (the elastic agent's drill corrupts one). */
void ckpt_shard_path(char *out, size_t len, const char *step_dir, int rank);

/* The tier directories for `options`: tier1 is "" when tier 1 is off. */
void ckpt_tier_dirs(const CkptOptions *options, char *tier1, size_t tier1_len, char *tier2,
                    size_t tier2_len);

typedef struct Checkpointer Checkpointer;

/* Collective over `world`. The descriptors are copied; the buffers they
 * point to must stay valid until ckpt_close(). NULL on error (every rank). */
Checkpointer *ckpt_open(const CkptOptions *options, Comm *world, const CkptTensor *tensors,
                        int count, char *err, size_t err_len);

/* The elements [*first, *first + *count) of `t` (row-major) that this
 * rank writes: its replica's rows. A GPU rank copies only those to the host. */
void ckpt_tensor_share(const CkptTensor *t, size_t *first, size_t *count);

/* For tensors that are filled asynchronously (a GPU rank's device-to-host
 * copy): the sidecar, or ckpt_snapshot() in sync mode, calls wait(context)
 * before it reads a snapshot's tensors. When wait fails that checkpoint is
 * skipped with a warning naming its message; training goes on. */
typedef int (*CkptSourceWait)(void *context, char *err, size_t err_len);
void ckpt_set_source_wait(Checkpointer *ck, CkptSourceWait wait, void *context);

/* True when a checkpoint is due after optimizer step `step` (1-based). */
bool ckpt_due(const Checkpointer *ck, int64_t step);
/* True when the checkpoint of `step` goes to tier 2 by the cadence
 * (--ckpt-durable-every), or was handed over with ckpt_snapshot_durable. */
bool ckpt_durable_due(const Checkpointer *ck, int64_t step);

/* Hands over the version of the tensors after optimizer step state->step.
 * async: returns at once. sync: returns after the checkpoint is committed
 * (or not: see the warning). Returns 0, or -1 on misuse (message in err). */
int ckpt_snapshot(Checkpointer *ck, const CkptRunState *state, char *err, size_t err_len);

/* ckpt_snapshot, and the checkpoint goes to tier 2 whatever the cadence (the
 * last one of a run, a stop): a version already committed to tier 1 is not
 * written there again. */
int ckpt_snapshot_durable(Checkpointer *ck, const CkptRunState *state, char *err,
                          size_t err_len);

/* Blocks until the sidecar has copied the last snapshot (at once when it
 * has); returns the seconds spent blocked. Call before the optimizer writes. */
double ckpt_wait_copied(Checkpointer *ck);

typedef struct {
    long snapshots;                 /* versions handed over */
    long committed[2], failed[2];   /* per tier (0: memory, 1: dir) */
    int64_t last_step[2];           /* newest committed step per tier, -1: none */
    double stall_seconds;           /* training thread blocked, in total */
    double last_stall_seconds;      /* ... by the latest wait or sync snapshot */
    double last_copy_seconds;       /* copy into staging */
    double last_flush_seconds;      /* serialise + write + commit, all tiers */
    uint64_t last_shard_bytes;      /* this rank's shard file */
    bool replicated;                /* tier 1 is replicated to buddies: a tier-1
                                     * commit survives the loss of any one host */
} CkptStats;

/* A consistent copy of the counters (safe while the sidecar runs). */
CkptStats ckpt_stats(Checkpointer *ck);

/* Commits no checkpoint from now on: snapshots still pending (and later
 * ones) are written as shards and removed, never indexed; a commit whose
 * index is already written stands. For a run that must stop without
 * leaving a newer checkpoint than it has (its launcher is gone: a relaunch
 * may already be resuming). Call on every rank, then ckpt_close(ck, false). */
void ckpt_abandon(Checkpointer *ck);

/* Collective. Finishes pending work and stops the sidecar; `success` says
 * the run ended well, which lets tier 1 go. Fills *final (when not NULL)
 * with the counters after the last flush. Returns 0, or -1 when the last
 * checkpoint handed over was not committed to tier 2. Frees ck. */
int ckpt_close(Checkpointer *ck, bool success, CkptStats *final);

/* ---------------------------------------------------------------------- */
/* Reading                                                                */

/* What a checkpoint must be before any of it is trusted, for load, resume
 * and verify alike (one validation, in open_checkpoint):
 * - index.h5 and every shard: regular HDF5 files (a FIFO is refused without
 *   blocking; a directory, an empty or a non-HDF5 file is named as such);
 * - the index: its seal (a 512-byte user block: magic, size, zlib crc32 of
 *   every later byte) matches the raw bytes, checked before HDF5 parses any
 *   of them; its strings are fixed-length and its tables of the writer's
 *   record types (nothing is read from HDF5's unchecksummed global heap
 *   but the virtual datasets' mappings, which the seal covers); the shard table lists ranks
 *   0..n-1 once each; the fragment table is not empty, every entry has a
 *   sane name, ndim 1 or 2, a shape of at most 2^40 elements, rows inside
 *   it, a listed rank, fits in its shard's bytes, and the fragments tile
 *   every tensor exactly; every core run-state value is in range (steps and
 *   samples in [0, 2^53]) and every extra pair finite, with the field named;
 *   the stateful parts' values pass the caller's check (CkptStateCheck:
 *   resume, load and verify take one), which names the field the same way;
 * - every shard dataset read: reached through hard links only, float32,
 *   chunked as the writer chunks it, Fletcher32 its only filter, no external
 *   storage (so not virtual), attributes that agree with the index (the
 *   string logical_name fixed-length, checked before it is read).
 * Anything else is CKPT_CORRUPT, and resume falls back past it. A complete
 * checkpoint that the fence rule above rejects (judged by the fence of the
 * step directory's parent) is CKPT_FENCED: resume falls back past it too. */

/* "[32]" or "[32, 1]": a shape as the messages print it. */
void ckpt_shape_text(int ndim, const int64_t shape[2], char *out, size_t len);

/* Fills the caller's tensors (whole logical tensors; m and v may be NULL)
 * and *state from the checkpoint at `path` (a step directory or its
 * index.h5). With `expect` non-NULL the model shape must match it; with
 * `check` non-NULL the run state must pass it (else CKPT_CORRUPT). */
CkptStatus ckpt_load(const char *path, const CkptTensor *tensors, int count,
                     const CkptModel *expect, CkptStateCheck check, CkptRunState *state,
                     char *err, size_t err_len);

/* Where a resume's bytes came from, summed over every rank (the same on
 * every rank). From memory (checkpoint.h, "Replication"): the shard files
 * a rank used in place in its own host's tier 1 (host_memory) and those it
 * received from another host's tier 1 over MPI (other_hosts). Read in place
 * from a tier's files: the tensor data read, counted as host_memory for
 * tier 1 and as durable for the durable tier or a path given. Failed
 * candidates a resume fell back past are not counted. */
typedef struct {
    uint64_t host_memory, other_hosts, durable;
} CkptReadBytes;

/* Collective over `comm`. `spec` is "latest" (the tiers of `options`) or a
 * path: a step directory, or a directory of step directories (its newest
 * complete one). Falls back to older complete checkpoints when one fails on
 * any rank (corrupt, incomplete, or refused by options->check_state); for an
 * explicit step directory DIR/step_N those are the complete step
 * directories of DIR older than N. A model that differs (CKPT_MISMATCH)
 * and a system error never fall back. On success *state is filled,
 * path_out names the checkpoint and *read (when not NULL) says where its
 * bytes came from. The status and the message are the same on every rank. */
CkptStatus ckpt_resume(Comm *comm, const CkptOptions *options, const char *spec,
                       const CkptTensor *tensors, int count, const CkptModel *expect,
                       CkptRunState *state, char *path_out, size_t path_len,
                       CkptReadBytes *read, char *err, size_t err_len);

/* ---------------------------------------------------------------------- */
/* Inspection (the `phalanx ckpt` subcommands)                           */

typedef struct {
    char name[CKPT_NAME_MAX];
    int ndim;
    int64_t shape[2];
    int rank;                   /* writer: shard file rank_%05d.h5 */
    int64_t row_begin, row_end; /* rows (elements for 1-D) of the logical tensor */
} CkptFragment;

typedef struct {
    int rank;
    int64_t bytes;
} CkptShard;

typedef struct {
    CkptRunState state;
    uint64_t run_id; /* the writing run; shards must carry the same */
    CkptFragment *fragments;
    int fragment_count;
    CkptShard *shards;
    int shard_count;
} CkptIndex;

/* Reads index.h5 of the checkpoint at `path`. */
CkptStatus ckpt_index_read(const char *path, CkptIndex *index, char *err, size_t err_len);
void ckpt_index_free(CkptIndex *index);

typedef struct {
    char path[4096];
    int64_t step;
    int epoch;      /* from the directory's name: -1 without one */
    time_t time;    /* when the index was committed (else last change) */
    uint64_t bytes; /* all files of the step directory */
    CkptStatus status; /* CKPT_OK: complete (index and every shard present) */
    char why[256];  /* what is missing, when not complete */
} CkptEntry;

/* The step directories of `dir`, oldest first (of one step, lowest epoch
 * first; *entries is malloc'd). Completeness is checked cheaply (files
 * present, sizes); no checksums. A complete one the fence of `dir` rejects
 * is CKPT_FENCED. -1 also when that fence cannot be read. */
int ckpt_list(const char *dir, CkptEntry **entries, int *count, char *err, size_t err_len);
/* The same, judged by the fence of `fence_dir` (tier 1 by tier 2's). */
int ckpt_list_fenced(const char *dir, const char *fence_dir, CkptEntry **entries, int *count,
                     char *err, size_t err_len);

/* The newest complete and valid checkpoint step in either tier of
 * `options` (cheap checks, as ckpt_list), or -1 when there is none or no
 * directory yet. */
int64_t ckpt_newest_complete(const CkptOptions *options);

/* The validation above, the caller's `check` of the run state (NULL: none;
 * `phalanx ckpt verify` passes the runtime's, which knows the stateful
 * parts' values), and every fragment of every shard read (all checksums).
 * Writes one line per problem to `report`. */
CkptStatus ckpt_verify(const char *path, CkptStateCheck check, FILE *report, char *err,
                       size_t err_len);

#endif
