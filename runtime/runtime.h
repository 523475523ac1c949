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
int data_main(int argc, char **argv);

#endif
