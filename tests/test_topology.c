/* The rank grid's communicator groups (runtime/topology.h). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "topology.h"

static const Layout LAYOUTS[] = {{1, 1, 1}, {2, 2, 2}, {3, 2, 1}, {1, 4, 2}, {2, 3, 2}, {4, 1, 3}};

static bool holds_wte(Layout l, GridCoord c)
{
    return c.pp == 0 || c.pp == l.pp - 1;
}

/* Whether ranks at a and b belong to one group, by the grid's definition. */
static bool together(Layout l, GridCoord a, GridCoord b, LayoutGroup group)
{
    switch (group) {
    case LAYOUT_GROUP_DP:
        return a.pp == b.pp && a.sp == b.sp;
    case LAYOUT_GROUP_PP:
        return a.dp == b.dp && a.sp == b.sp;
    case LAYOUT_GROUP_SP:
        return a.dp == b.dp && a.pp == b.pp;
    case LAYOUT_GROUP_DPSP:
        return a.pp == b.pp;
    case LAYOUT_GROUP_TIED:
        break;
    }
    if (a.dp == b.dp && a.pp == b.pp && a.sp == b.sp)
        return true;
    return holds_wte(l, a) && holds_wte(l, b) && a.dp == b.dp && a.sp == b.sp;
}

/* The key orders a group's members as their index along its axes. */
static int expected_key(Layout l, GridCoord c, LayoutGroup group)
{
    switch (group) {
    case LAYOUT_GROUP_DP:
        return c.dp;
    case LAYOUT_GROUP_SP:
        return c.sp;
    case LAYOUT_GROUP_DPSP:
        return c.dp * l.sp + c.sp;
    case LAYOUT_GROUP_PP:
    case LAYOUT_GROUP_TIED:
        break;
    }
    return c.pp;
}

static void test_groups_are_the_grid_lines(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(LAYOUTS) / sizeof(LAYOUTS[0]); i++) {
        Layout l = LAYOUTS[i];
        int world = l.dp * l.pp * l.sp;
        for (LayoutGroup g = LAYOUT_GROUP_DP; g <= LAYOUT_GROUP_TIED; g++) {
            for (int a = 0; a < world; a++) {
                GridCoord ca = layout_coord(l, a);
                GroupSplit sa = layout_group_split(l, ca, g);
                assert_true(sa.colour >= 0); /* MPI_Comm_split refuses negative colours */
                assert_int_equal(sa.key, expected_key(l, ca, g));
                for (int b = 0; b < world; b++) {
                    GridCoord cb = layout_coord(l, b);
                    GroupSplit sb = layout_group_split(l, cb, g);
                    assert_int_equal(sa.colour == sb.colour, together(l, ca, cb, g));
                }
            }
        }
    }
}

static void test_coord_and_rank_invert(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(LAYOUTS) / sizeof(LAYOUTS[0]); i++) {
        Layout l = LAYOUTS[i];
        for (int rank = 0; rank < l.dp * l.pp * l.sp; rank++)
            assert_int_equal(layout_rank(l, layout_coord(l, rank)), rank);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_groups_are_the_grid_lines),
        cmocka_unit_test(test_coord_and_rank_invert),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
