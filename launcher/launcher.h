/*
 * launcher: the `phalanx` command's subcommands that start and watch jobs.
 *
 *   run_main   `phalanx run -n N [launcher options] -- [train options]`:
 *              checks the layout, starts N ranks of `phalanx train` with
 *              mpirun (or srun inside a Slurm allocation), shows one progress
 *              line per step for the whole job, forwards Ctrl-C as a clean stop
 *              and returns the job's status.
 */
#ifndef PHALANX_LAUNCHER_H
#define PHALANX_LAUNCHER_H

int run_main(int argc, char **argv);

/*   drill_main `phalanx drill ...`: `phalanx run --elastic` with failures to
 *              inject (--inject) and a report (--report). */
int drill_main(int argc, char **argv);

/*   probe_main `phalanx probe`: started by the elastic agent on a host it
 *              wants back (channel_probe); 0 when the agent took it. */
int probe_main(int argc, char **argv);

#endif
