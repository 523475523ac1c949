/* The launcher's view of a run's training options (contract in plan.h). */
#include "plan.h"

#include "options.h"

#include <stdio.h>
#include <string.h>

int plan_check_launch(int world, int argc, char **argv)
{
    TrainOptions options;
    int parsed = options_parse(&options, argc, argv);
    if (parsed != 0)
        return parsed > 0 ? 0 : 2;
    Layout layout;
    return options_resolve_layout(&options, world, &layout) ? 2 : 0;
}

/* The preferred pp x sp with dp = world / (pp sp), when it fits. */
static int preferred_layout(int world, int pp, int sp, const LayoutNeeds *needs, Layout *out)
{
    if (pp < 1 || sp < 1 || world % (pp * sp) != 0)
        return -1;
    Layout layout = {world / (pp * sp), pp, sp};
    char ignored[2048];
    if (layout_check(layout, world, needs, ignored, sizeof(ignored)) != 0)
        return -1;
    *out = layout;
    return 0;
}

int plan_launch(int world, int prefer_pp, int prefer_sp, int argc, char **argv, TrainPlan *plan,
                char *err, size_t err_len)
{
    TrainOptions o;
    if (options_parse(&o, argc, argv) != 0) {
        snprintf(err, err_len, "the training options do not parse (see above)");
        return -1;
    }
    memset(plan, 0, sizeof(*plan));
    snprintf(plan->ckpt_dir, sizeof(plan->ckpt_dir), "%s", o.ckpt.dir ? o.ckpt.dir : "");
    snprintf(plan->ckpt_memory_dir, sizeof(plan->ckpt_memory_dir), "%s",
             o.ckpt.memory_dir ? o.ckpt.memory_dir : "");
    snprintf(plan->metrics, sizeof(plan->metrics), "%s", o.metrics_path ? o.metrics_path : "");
    LayoutNeeds needs = options_layout_needs(&o);
    Layout layout;
    if (prefer_pp == 0 && !o.layout_auto) {
        prefer_pp = o.layout.pp;
        prefer_sp = o.layout.sp;
    }
    if (preferred_layout(world, prefer_pp, prefer_sp, &needs, &layout) != 0 &&
        layout_auto(world, &needs, &layout, err, err_len) != 0)
        return -1;
    plan->dp = layout.dp;
    plan->pp = layout.pp;
    plan->sp = layout.sp;
    return 0;
}
