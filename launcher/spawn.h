/*
 * spawn: the command line that starts the ranks (mpirun or srun), and the
 * child process that runs it, in a process group of its own so that a
 * terminal's Ctrl-C reaches only the launcher, which then stops the ranks
 * cleanly.
 */
#ifndef PHALANX_SPAWN_H
#define PHALANX_SPAWN_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

typedef enum { VIA_AUTO, VIA_MPIRUN, VIA_SRUN } Via;

typedef struct {
    int ranks;
    Via via;
    const char *hostfile, *hosts; /* mpirun across hosts */
    const char *worker;           /* the phalanx binary the ranks run */
    bool elastic;                 /* srun: --no-kill (the launcher handles failures) */
    const char *exclude;          /* failed nodes, comma-separated, or NULL: srun gets
                                     --exclude=, mpirun the hosts without them */
    int ranks_per_node;           /* srun, elastic: --ntasks-per-node (0: Slurm's choice) */
    const char *command;          /* the ranks' phalanx command: NULL for "train", or "eval" */
    char **train_argv;            /* its options (after `--`, less the command's name) */
    int train_argc;
} SpawnPlan;

/* VIA_AUTO resolves to srun inside a Slurm allocation (SLURM_JOB_ID), else mpirun. */
Via spawn_resolve_via(Via via);
/* True when ranks may run on other hosts (the channel must not be loopback). */
bool spawn_is_multi_host(const SpawnPlan *plan);
/* mpirun across hosts: the --host list of `hosts` or of the hostfile's lines
 * ("name slots=N" -> "name:N") without the hosts named in `exclude` (names
 * compared up to the first '.', IPv4 addresses whole). Returns the hosts kept, or -1 when the
 * hostfile cannot be read. */
int spawn_filtered_hosts(const SpawnPlan *plan, char *out, size_t len);
/* The slots of a host list as spawn_filtered_hosts writes it ("a:2,b"
 * holds 3: a host without ":N" has one). */
int spawn_host_slots(const char *hosts);
/* The first host of `hosts` or of the hostfile (its name, without ":slots"
 * or "slots=N"): the channel's address is the one that routes to it.
 * 0, or -1 when there is none or the hostfile cannot be read. */
int spawn_first_host(const SpawnPlan *plan, char *out, size_t len);
/* Forks and execs the job; returns the child's pid, or -1 with a message in err. */
pid_t spawn_job(const SpawnPlan *plan, char *err, size_t err_len);
/* The elastic agent's probe of `host` (one name, no ":slots"): `phalanx
 * probe` started on it through the job's own path, so that an answer shows
 * the path works: mpirun -n 1 --host HOST (the rsh agent and MCA settings of
 * the environment, as for the job), or srun -n 1 -N 1 --overlap
 * --nodelist=HOST. Its output goes to /dev/null (a lost host makes mpirun
 * and ssh complain every time); a process group of its own. Returns the
 * pid, or -1 with the reason in err. */
pid_t spawn_probe(const SpawnPlan *plan, const char *host, char *err, size_t err_len);

#endif
