/*
 * elastic: the launcher as elastic agent (`phalanx run --elastic`, `phalanx
 * drill`), private to launcher/. Open MPI 4.1 has no ULFM, so recovery
 * restarts the world, fast (DESIGN.md "Elasticity"):
 *
 *   launch -> watch (job.h: crash = lost channel, hang = no heartbeat)
 *          -> kill what is left -> remove the failed rank's node, and every
 *             listed host where /bin/true cannot be started the way ranks
 *             start (hosts fail together; mpirun cannot launch on a lost one)
 *          -> pick a layout for the survivors that keeps the global batch
 *             (same pp x sp, fewer replicas, more accumulation; else the most
 *             data-parallel layout that fits; else fewer ranks)
 *          -> relaunch with --layout and --resume latest (the newest complete
 *             checkpoint of tier 1 or tier 2) -> watch ...
 *
 * until the run completes, fewer than min_ranks survive, or max_restarts
 * relaunches are used up. Nodes are real hosts (Slurm node names under srun)
 * or, on one host, virtual nodes of ranks_per_node consecutive ranks.
 *
 * Injected events (drills), each for one attempt (#A, default 0) of the run:
 *   crash:R@S  hang:R@S  slow:R*F   a worker fault on rank R (runtime/fault.h)
 *   node:N@S                        crash every rank of node N at step S
 *   flushkill:R@S                   SIGKILL rank R in its step-S checkpoint flush
 *   corrupt:S                       before the attempt starts, flip a byte in the
 *                                   step-S checkpoint's first shard in both tiers
 *   partition:HOST@S                after step S, run the fault command with
 *   poweroff:HOST@S                 {kind} and {host} filled in (a network fault
 *                                   is outside the worker: the agent only asks for
 *                                   it, e.g. `scripts/netcluster {kind} NAME {host}`)
 *   restore:HOST@S                  the same, once, in the first attempt from #A on
 *                                   that completes step S; {kind} is "heal" after a
 *                                   partition of HOST, "poweron" after a poweroff
 *                                   ("restore" for a host no event took down)
 *
 * Growing back (DESIGN.md "Elasticity", both directions). The agent keeps
 * the hosts the job may use: those of --hosts/--hostfile (more than -n needs
 * are spares), or, under srun, the nodes it had to leave out. While a job
 * runs, every host left out is probed every rejoin_every seconds: `phalanx
 * probe` started on it through the job's own path (spawn_probe) must reach
 * this attempt's channel and authenticate. A host that answers PROBES_TO_HEAL
 * probes in a row is healthy and returns to the host list (mpirun's --host,
 * srun's --exclude). When the hosts then hold more ranks than the job has,
 * up to max_ranks, and a layout of the larger world keeps the run (the first
 * launch's pp x sp preferred, the global batch kept), the agent asks the
 * ranks to stop after their current step (job_request_stop: the trainer
 * commits that step's checkpoint before it exits) and relaunches with the
 * larger world, resuming from that checkpoint: no step is recomputed. A
 * healthy host that makes no valid larger layout stays a spare, and the
 * report says why. Grows do not count against max_restarts.
 *
 * The report (JSON) has the timeline of every attempt (launch, first step,
 * fault, detection, teardown, checkpoint loaded, first step after recovery),
 * per failure the MTTR (failure to the first completed step after it) and
 * the steps recomputed, and, from the metrics file, the samples the committed
 * trajectory consumed, lost and duplicated; for every grow, when the host was
 * healthy again, when the stop began, the first step in the larger layout,
 * the steps recomputed (0), and the steps per second before the loss, on the
 * survivors and after the grow; the spares and why each is not used.
 */
#ifndef PHALANX_ELASTIC_H
#define PHALANX_ELASTIC_H

#include "agent.h"

/* The default of --fault-command. */
#define FAULT_COMMAND_ENV "PHALANX_FAULT_COMMAND"

/* Exit statuses besides the job's own (0 success, 2 usage, 3 start-up). */
enum { EXIT_RESTARTS_USED_UP = 4, EXIT_TOO_FEW_RANKS = 5 };

/* Checks the options against the job's size; 0, or -1 after printing why. */
int elastic_check(const ElasticOptions *options, int ranks);

/* Runs the job elastically; returns the exit status. `config` has the plan
 * of the first attempt (ranks, via, worker, training options); the agent
 * changes it for each attempt after that. */
int elastic_run(JobConfig *config, const ElasticOptions *options);

#endif
