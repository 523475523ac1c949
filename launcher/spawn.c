/* Starting the ranks with mpirun or srun (contract in spawn.h). */
#include "spawn.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_ARGS 512

typedef struct {
    char *items[MAX_ARGS];
    int count;
    char numbers[4][32];
    char exclude[1100];
} Argv;

static void add(Argv *a, const char *item)
{
    if (a->count < MAX_ARGS - 1)
        a->items[a->count++] = (char *)item;
    a->items[a->count] = NULL;
}

Via spawn_resolve_via(Via via)
{
    if (via != VIA_AUTO)
        return via;
    return getenv("SLURM_JOB_ID") ? VIA_SRUN : VIA_MPIRUN;
}

bool spawn_is_multi_host(const SpawnPlan *plan)
{
    return spawn_resolve_via(plan->via) == VIA_SRUN || plan->hostfile || plan->hosts;
}

/* Threads per rank when the user did not choose: the cores of this host
 * shared among the ranks on it, so that ranks do not fight over cores. */
static void default_threads(const SpawnPlan *plan)
{
    if (getenv("OMP_NUM_THREADS") || spawn_is_multi_host(plan))
        return;
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    long per_rank = cores / plan->ranks;
    char value[32];
    snprintf(value, sizeof(value), "%ld", per_rank > 0 ? per_rank : 1);
    setenv("OMP_NUM_THREADS", value, 1);
}

static void build_mpirun(const SpawnPlan *plan, Argv *a)
{
    add(a, "mpirun");
    add(a, "-n");
    snprintf(a->numbers[0], sizeof(a->numbers[0]), "%d", plan->ranks);
    add(a, a->numbers[0]);
    if (plan->hostfile) {
        add(a, "--hostfile");
        add(a, plan->hostfile);
    } else if (plan->hosts) {
        add(a, "--host");
        add(a, plan->hosts);
    } else {
        add(a, "--oversubscribe"); /* one host: as many ranks as asked, whatever the cores */
    }
    add(a, "--bind-to");
    add(a, "none");
    if (geteuid() == 0)
        add(a, "--allow-run-as-root");
    static const char *const forwarded[] = {"PHALANX_CHANNEL", "OMP_NUM_THREADS",
                                            "PHALANX_FAULTS", "PHALANX_FAULT_KILL_DURING_FLUSH"};
    for (size_t i = 0; i < sizeof(forwarded) / sizeof(forwarded[0]); i++)
        if (getenv(forwarded[i])) {
            add(a, "-x");
            add(a, forwarded[i]);
        }
}

static void build_srun(const SpawnPlan *plan, Argv *a)
{
    add(a, "srun");
    add(a, "-n");
    snprintf(a->numbers[0], sizeof(a->numbers[0]), "%d", plan->ranks);
    add(a, a->numbers[0]);
    add(a, "--mpi=pmix");
    if (plan->elastic) {
        // a lost node must not take the step down before the launcher sees it
        add(a, "--no-kill");
        // the failed step's resources may still be held while its lost node
        // is not yet marked down: the relaunched step shares them
        add(a, "--overlap");
        if (plan->ranks_per_node > 0) {
            snprintf(a->numbers[1], sizeof(a->numbers[1]), "--ntasks-per-node=%d",
                     plan->ranks_per_node);
            add(a, a->numbers[1]);
        }
        if (plan->exclude) {
            snprintf(a->exclude, sizeof(a->exclude), "--exclude=%s", plan->exclude);
            add(a, a->exclude);
        }
    } else {
        add(a, "--kill-on-bad-exit=1");
    }
}

pid_t spawn_job(const SpawnPlan *plan, char *err, size_t err_len)
{
    default_threads(plan);
    Argv a = {.count = 0};
    if (spawn_resolve_via(plan->via) == VIA_SRUN)
        build_srun(plan, &a);
    else
        build_mpirun(plan, &a);
    add(&a, plan->worker);
    add(&a, "train");
    for (int i = 0; i < plan->train_argc; i++)
        add(&a, plan->train_argv[i]);
    if (a.count >= MAX_ARGS - 1) {
        snprintf(err, err_len, "too many training options (at most %d)", MAX_ARGS - 8);
        return -1;
    }
    pid_t pid = fork();
    if (pid < 0) {
        snprintf(err, err_len, "fork: %s", strerror(errno));
        return -1;
    }
    if (pid == 0) {
        setpgid(0, 0);
        execvp(a.items[0], a.items);
        fprintf(stderr, "phalanx run: cannot start %s: %s\n", a.items[0], strerror(errno));
        _exit(127);
    }
    setpgid(pid, pid); /* also here: no race with the child's own call */
    return pid;
}
