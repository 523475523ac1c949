/* comm/comm.h on the local world (a process not started by mpirun): the
 * non-blocking reduce-scatter of one rank hands its whole send buffer back.
 * The MPI backend's is exercised by ZeRO-1's runs in test_zero.py. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>

#include "comm.h"

static void test_local_ireduce_scatter_returns_the_only_chunk(void **state)
{
    (void)state;
    // as a plain process (comm_launched_by_mpi looks for these)
    unsetenv("OMPI_COMM_WORLD_SIZE");
    unsetenv("PMIX_RANK");
    unsetenv("PMI_RANK");
    char err[256];
    Comm *world = comm_world_init(NULL, NULL, err, sizeof(err));
    assert_non_null(world);
    assert_int_equal(comm_size(world), 1);
    float send[3] = {1.5f, -2.0f, 4.25f}, recv[3] = {0};
    CommRequest *request = comm_ireduce_scatter(world, send, recv, 3, COMM_F32);
    assert_non_null(request);
    bool done = false;
    assert_int_equal(comm_test(request, &done), 0);
    assert_true(done);
    assert_int_equal(comm_wait(request), 0);
    assert_memory_equal(recv, send, sizeof(send));
    comm_world_finalize(world);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_local_ireduce_scatter_returns_the_only_chunk),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
