/*
 * `phalanx ckpt ls|verify|inspect`: look at checkpoints without training
 * (checkpoint/checkpoint.h has the format). Exit statuses are CkptStatus
 * values: 0 ok, 1 corrupt, 3 incomplete, 4 not found, 5 mismatch (a newer
 * format), 6 a system error; 2 is a usage error.
 */
#ifndef PHALANX_LAUNCHER_CKPT_H
#define PHALANX_LAUNCHER_CKPT_H

int ckpt_main(int argc, char **argv);

#endif
