/* The rank grid and its rules (contract in topology.h). */
#include "topology.h"

#include <stdio.h>
#include <string.h>

/* Parallel axes this build can train with. The grid and its communicators
 * exist for all three; the pipeline and sequence-parallel schedules arrive
 * in later issues, and until then a layout using them is refused. */
#define PIPELINE_SUPPORTED true
#define SEQUENCE_PARALLEL_SUPPORTED true

GridCoord layout_coord(Layout l, int rank)
{
    GridCoord c;
    c.sp = rank % l.sp;
    c.dp = (rank / l.sp) % l.dp;
    c.pp = rank / (l.sp * l.dp);
    return c;
}

int layout_rank(Layout l, GridCoord c)
{
    return c.sp + l.sp * (c.dp + l.dp * c.pp);
}

/* A group's colour is the rank its members would have with their own axis
 * (or axes) at 0, which the other axes tell apart; the key is the rank along
 * the group's axes. */
GroupSplit layout_group_split(Layout l, GridCoord c, LayoutGroup group)
{
    switch (group) {
    case LAYOUT_GROUP_DP:
        return (GroupSplit){layout_rank(l, (GridCoord){0, c.pp, c.sp}), c.dp};
    case LAYOUT_GROUP_PP:
        return (GroupSplit){layout_rank(l, (GridCoord){c.dp, 0, c.sp}), c.pp};
    case LAYOUT_GROUP_SP:
        return (GroupSplit){layout_rank(l, (GridCoord){c.dp, c.pp, 0}), c.sp};
    case LAYOUT_GROUP_DPSP:
        return (GroupSplit){layout_rank(l, (GridCoord){0, c.pp, 0}),
                            layout_rank(l, (GridCoord){c.dp, 0, c.sp})};
    case LAYOUT_GROUP_TIED:
        break;
    }
    // the first and last stage of a pipeline share their dp x sp position;
    // the colours of the ranks between lie past every such position
    bool holds_wte = c.pp == 0 || c.pp == l.pp - 1;
    int position = layout_rank(l, (GridCoord){c.dp, 0, c.sp});
    return (GroupSplit){holds_wte ? position : l.dp * l.sp + layout_rank(l, c), c.pp};
}

/* The first rule a --pp-split breaks for `pp` stages, or NULL. */
static const char *broken_split(int pp, const LayoutNeeds *n, char *buf, size_t len)
{
    if (!n->pp_split)
        return NULL;
    if (n->pp_split_count != pp) {
        snprintf(buf, len, "--pp-split has %d entries but there are %d pipeline stages",
                 n->pp_split_count, pp);
        return buf;
    }
    int sum = 0;
    for (int i = 0; i < pp; i++) {
        if (n->pp_split[i] < 1) {
            snprintf(buf, len, "--pp-split gives stage %d %d layers: every stage needs at "
                               "least one layer", i, n->pp_split[i]);
            return buf;
        }
        sum += n->pp_split[i];
    }
    if (sum != n->model.layers) {
        snprintf(buf, len, "--pp-split sums to %d layers but the model has --layers %d", sum,
                 n->model.layers);
        return buf;
    }
    return NULL;
}

/* The first rule the layout breaks, as a sentence; NULL when it fits. */
static const char *broken_rule(Layout l, int world, const LayoutNeeds *n, char *buf,
                               size_t len)
{
    const GPTConfig *m = &n->model;
    if (l.dp < 1 || l.pp < 1 || l.sp < 1)
        snprintf(buf, len, "every axis needs at least 1 rank");
    else if (l.dp * l.pp * l.sp != world)
        snprintf(buf, len, "dp x pp x sp = %d x %d x %d = %d ranks, but the world has %d",
                 l.dp, l.pp, l.sp, l.dp * l.pp * l.sp, world);
    else if (l.pp > 1 && !PIPELINE_SUPPORTED)
        snprintf(buf, len, "pp = %d: pipeline parallelism is not implemented yet", l.pp);
    else if (l.sp > 1 && !SEQUENCE_PARALLEL_SUPPORTED)
        snprintf(buf, len, "sp = %d: sequence parallelism is not implemented yet", l.sp);
    else if (l.pp > m->layers)
        snprintf(buf, len, "pp = %d stages is more stages than the model's %d layers: each "
                           "stage needs at least one layer", l.pp, m->layers);
    else if (broken_split(l.pp, n, buf, len))
        return buf;
    else if (m->heads % l.sp != 0)
        snprintf(buf, len, "--heads %d is not divisible by sp = %d", m->heads, l.sp);
    else if (m->seq_len % l.sp != 0)
        snprintf(buf, len, "--seq-len %d is not divisible by sp = %d", m->seq_len, l.sp);
    else if (n->global_batch % (n->micro_batch * l.dp) != 0)
        snprintf(buf, len,
                 "--global-batch %d is not divisible by micro-batch x dp = %d x %d = %d",
                 n->global_batch, n->micro_batch, l.dp, n->micro_batch * l.dp);
    else if (n->max_global_batch % (n->micro_batch * l.dp) != 0)
        snprintf(buf, len,
                 "--max-global-batch %d is not a multiple of micro-batch x dp = %d x %d = %d",
                 n->max_global_batch, n->micro_batch, l.dp, n->micro_batch * l.dp);
    else if (n->batch_quantum % (n->micro_batch * l.dp) != 0)
        snprintf(buf, len,
                 "--batch-quantum %d is not a multiple of micro-batch x dp = %d x %d = %d",
                 n->batch_quantum, n->micro_batch, l.dp, n->micro_batch * l.dp);
    else
        return NULL;
    return buf;
}

int layout_valid_list(int world, const LayoutNeeds *needs, Layout *out, int max)
{
    char scratch[256];
    int count = 0;
    // pp and sp ascending: the first layouts found are the most data-parallel
    for (int pp = 1; pp <= world; pp++) {
        for (int sp = 1; sp * pp <= world; sp++) {
            if (world % (pp * sp) != 0)
                continue;
            Layout l = {world / (pp * sp), pp, sp};
            if (broken_rule(l, world, needs, scratch, sizeof(scratch)))
                continue;
            if (count < max)
                out[count] = l;
            count++;
        }
    }
    return count;
}

static void append_valid_layouts(int world, const LayoutNeeds *needs, char *err, size_t len)
{
    Layout valid[32];
    int count = layout_valid_list(world, needs, valid, 32);
    size_t used = strlen(err);
    if (count == 0) {
        snprintf(err + used, len - used,
                 "; no layout fits %d ranks with this model and batch (check --global-batch, "
                 "--micro-batch, --heads, --seq-len)",
                 world);
        return;
    }
    used += (size_t)snprintf(err + used, len - used, "; valid layouts for %d ranks:", world);
    for (int i = 0; i < count && i < 32 && used < len; i++)
        used += (size_t)snprintf(err + used, len - used, "%s --dp %d --pp %d --sp %d",
                                 i ? "," : "", valid[i].dp, valid[i].pp, valid[i].sp);
}

int layout_check(Layout layout, int world, const LayoutNeeds *needs, char *err, size_t err_len)
{
    char rule[256];
    if (!broken_rule(layout, world, needs, rule, sizeof(rule)))
        return 0;
    snprintf(err, err_len, "layout dp=%d pp=%d sp=%d does not fit: %s", layout.dp, layout.pp,
             layout.sp, rule);
    append_valid_layouts(world, needs, err, err_len);
    return -1;
}

int layout_auto(int world, const LayoutNeeds *needs, Layout *out, char *err, size_t err_len)
{
    if (layout_valid_list(world, needs, out, 1) > 0)
        return 0;
    snprintf(err, err_len, "--layout auto: no layout fits %d ranks", world);
    Layout pure_dp = {world, 1, 1};
    char rule[256];
    if (broken_rule(pure_dp, world, needs, rule, sizeof(rule))) {
        size_t used = strlen(err);
        snprintf(err + used, err_len - used, " (pure data parallelism: %s)", rule);
    }
    return -1;
}

void layout_stage_layers(Layout l, const LayoutNeeds *n, int stage, int *begin, int *end)
{
    int first = 0;
    for (int i = 0; i < stage; i++)
        first += n->pp_split ? n->pp_split[i] : n->model.layers / l.pp + (i < n->model.layers % l.pp);
    *begin = first;
    *end = first + (n->pp_split ? n->pp_split[stage]
                                : n->model.layers / l.pp + (stage < n->model.layers % l.pp));
}

bool layout_parse(const char *text, Layout *out, bool *is_auto)
{
    *is_auto = strcmp(text, "auto") == 0;
    if (*is_auto)
        return true;
    Layout l;
    char tail;
    if (sscanf(text, "%dx%dx%d%c", &l.dp, &l.pp, &l.sp, &tail) != 3 || l.dp < 1 || l.pp < 1 ||
        l.sp < 1)
        return false;
    *out = l;
    return true;
}
