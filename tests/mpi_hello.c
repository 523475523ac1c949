/* Tiny MPI check for the launcher tests (mpirun, srun --mpi=pmix).
 *
 * Each rank prints one line:
 *   rank R size N sum S host H
 * where S is the MPI_Allreduce sum of all ranks (N*(N-1)/2), and H the
 * processor name. Exits 0 when the sum is right, 1 otherwise. */
#include <mpi.h>
#include <stdio.h>

int main(int argc, char **argv)
{
    int rank = 0, size = 0, sum = -1, len = 0;
    char host[MPI_MAX_PROCESSOR_NAME] = "";

    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    MPI_Get_processor_name(host, &len);
    MPI_Allreduce(&rank, &sum, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    printf("rank %d size %d sum %d host %s\n", rank, size, sum, host);
    fflush(stdout);
    MPI_Finalize();
    return sum == size * (size - 1) / 2 ? 0 : 1;
}
