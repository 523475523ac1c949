/*
 * runtime: the training worker. The `phalanx` command (launcher/) calls these
 * entry points; everything else in runtime/ is private to it.
 *
 *   train_main      `phalanx train [options]`: trains one run (see --help)
 *   data_main       `phalanx data prepare ...`: text to token shards
 *
 * Both return the process exit status: 0 success, 1 a failure while running
 * (bad data, non-finite loss), 2 bad command-line input.
 */
#ifndef PHALANX_RUNTIME_H
#define PHALANX_RUNTIME_H

int train_main(int argc, char **argv);

/* For the launcher, before any rank starts: parses the training options and
 * checks that a layout fits `world` ranks. Returns 0 when the run can start,
 * else the exit status, after printing what is wrong. */
int train_check_launch(int world, int argc, char **argv);

/*
 * The worker <-> launcher channel. `phalanx run` listens on a TCP port and
 * passes PHALANX_CHANNEL=host:port to every rank. Text lines:
 *   rank -> launcher   hello RANK WORLD PID HOST
 *                      progress STEP TEXT        (rank 0: the job's progress line)
 *                      log TEXT                  (rank 0: a line for the user)
 *                      done RANK STATUS          (before a rank exits)
 *   launcher -> rank   stop                      (finish the current step, exit)
 * A rank that runs without PHALANX_CHANNEL prints its own progress (rank 0).
 */
#define CHANNEL_ENV "PHALANX_CHANNEL"
int data_main(int argc, char **argv);

#endif
