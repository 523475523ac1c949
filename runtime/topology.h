/*
 * topology: the rank grid (DESIGN.md "Rank grid").
 *
 *   world = dp * pp * sp,   rank = sp_i + sp * (dp_i + dp * pp_i)
 *
 * Sequence-parallel peers are neighbours, pipeline stages farthest apart.
 * layout_check() applies every rule that ties a layout to the world size, the
 * model and the batch, and on failure writes a message that names the broken
 * constraint and lists the valid layouts for this world size.
 */
#ifndef PHALANX_TOPOLOGY_H
#define PHALANX_TOPOLOGY_H

#include "gpt.h"

#include <stdbool.h>
#include <stddef.h>

typedef struct {
    int dp, pp, sp;
} Layout;

typedef struct {
    int dp, pp, sp; /* this rank's index along each axis */
} GridCoord;

#define MAX_STAGES 64

/* What a layout must fit besides the world size. */
typedef struct {
    GPTConfig model;
    int micro_batch, global_batch;
    const int *pp_split; /* layers per stage (--pp-split), or NULL for an even split */
    int pp_split_count;
    int max_global_batch, batch_quantum; /* 0: not used */
} LayoutNeeds;

GridCoord layout_coord(Layout layout, int rank);
int layout_rank(Layout layout, GridCoord coord);

/* The communicator groups of a rank (comm_split): ranks that get the same
 * colour form one group, ordered by key. LAYOUT_GROUP_TIED joins the first
 * and last stage of one pipeline (the two copies of wte); every rank of the
 * stages between gets a group of its own. */
typedef enum {
    LAYOUT_GROUP_DP,
    LAYOUT_GROUP_PP,
    LAYOUT_GROUP_SP,
    LAYOUT_GROUP_DPSP,
    LAYOUT_GROUP_TIED,
} LayoutGroup;

typedef struct {
    int colour, key;
} GroupSplit;

GroupSplit layout_group_split(Layout layout, GridCoord coord, LayoutGroup group);

/* 0 when `layout` fits; -1 with the broken rule and the valid layouts in err. */
int layout_check(Layout layout, int world, const LayoutNeeds *needs, char *err, size_t err_len);

/* Writes up to `max` valid layouts for `world`, most data-parallel first;
 * returns how many exist. */
int layout_valid_list(int world, const LayoutNeeds *needs, Layout *out, int max);

/* The preferred valid layout (the most data-parallel), or -1 with a message. */
int layout_auto(int world, const LayoutNeeds *needs, Layout *out, char *err, size_t err_len);

/* Layers [*begin, *end) of pipeline stage `stage`: the --pp-split counts, or
 * an even split (the first layers % pp stages take one layer more). */
void layout_stage_layers(Layout layout, const LayoutNeeds *needs, int stage, int *begin,
                         int *end);

/* Parses "auto" (sets *is_auto) or "DPxPPxSP" such as "2x2x1". */
bool layout_parse(const char *text, Layout *out, bool *is_auto);

#endif
