/*
 * runtime: the training worker. The `phalanx` command (launcher/) calls these
 * entry points and plans its launches with plan.h; everything else in
 * runtime/ is private to it.
 *
 *   train_main      `phalanx train [options]`: trains one run (see --help)
 *   data_main       `phalanx data prepare ...`: text to token shards
 *
 * Both return the process exit status: 0 success, 1 a failure while running
 * (bad data, non-finite loss), 2 bad command-line input.
 */
#ifndef PHALANX_RUNTIME_H
#define PHALANX_RUNTIME_H

#include <stdbool.h>
#include <stddef.h>

int train_main(int argc, char **argv);
int data_main(int argc, char **argv);

/* Models given by path (a checkpoint, a Hugging Face safetensors or an llm.c
 * model file), held whole on one process (runtime/interop.c):
 *   export_main     `phalanx export CKPT --format safetensors|llmc -o OUT`
 *   eval_main       `phalanx eval CKPT|FILE --data GLOB ...`: llm.c's validation loss
 *   sample_main     `phalanx sample CKPT|FILE --prompt TEXT ...`: text the model writes
 * Same exit statuses as train_main. */
int export_main(int argc, char **argv);
int eval_main(int argc, char **argv);
/* `phalanx run -n N -- eval ...` checks eval's options (argv[0] "eval")
 * before any rank starts: 0, 1 after printing --help, -1 after saying what
 * is wrong. */
int eval_check_launch(int argc, char **argv);
int sample_main(int argc, char **argv);

/*
 * Numbers on a command line, the one parser every command uses (train, run,
 * drill, data prepare). The whole text must be a base-10 integer
 * (parse_flag_long, parse_flag_int: digits with an optional leading '-',
 * nothing before or after, no overflow) or a finite number
 * (parse_flag_double), within [min, max]. Returns 0 and sets *out, or -1
 * after printing "PROG: FLAG: ..." naming the value and the limits; *out is
 * then left alone.
 */
int parse_flag_long(const char *prog, const char *flag, const char *text, long min, long max,
                    long *out);
int parse_flag_int(const char *prog, const char *flag, const char *text, int min, int max,
                   int *out);
int parse_flag_double(const char *prog, const char *flag, const char *text, double min,
                      double max, double *out);

/*
 * The worker <-> launcher channel. `phalanx run` listens on a TCP port and
 * passes PHALANX_CHANNEL=host:port to every rank, and a secret drawn for the
 * job (channel_token: 256 random bits) in PHALANX_CHANNEL_SECRET, in the
 * environment only, never on a command line. Text lines:
 *   launcher -> rank   challenge NONCE           (at once on every connection)
 *   rank -> launcher   auth ANSWER               (first: channel_answer of the nonce;
 *                                                   the launcher closes a connection
 *                                                   that does not answer right in time)
 *                      hello RANK WORLD PID NODE STEP  (NODE: $SLURMD_NODENAME or the
 *                                                   host; STEP: JOB.STEP under srun, else -;
 *                                                   fields after STEP are for later versions)
 *                      progress STEP TEXT        (rank 0: the job's progress line)
 *                      step STEP                 (rank 0: step STEP completed, always)
 *                      log TEXT                  (rank 0: a line for the user)
 *                      done RANK STATUS          (before a rank exits)
 *                      beat RANK STEP            (training progress, at most every 0.5 s)
 *                      fault KIND RANK STEP      (an injected crash or hang fires now)
 *                      loaded STEP HOST OTHER DURABLE  (rank 0, before resumed: the
 *                                                   bytes the resume read from the ranks'
 *                                                   own host's memory, other hosts' memory
 *                                                   and the durable tier; CkptReadBytes)
 *                      resumed STEP PATH         (rank 0: the checkpoint it resumed)
 *                      committed STEP            (rank 0, tier 1 replicated: the memory
 *                                                   checkpoint of STEP is on two hosts)
 *   probe -> launcher  probe NODE                (after auth, instead of a hello:
 *                                                   `phalanx probe` on a host the elastic
 *                                                   agent wants back; then closed)
 *   launcher -> rank   stop                      (finish the current step, exit)
 *                      ping                      (every second: a rank whose channel
 *                                                   closes or stays silent stops)
 * A rank that runs without PHALANX_CHANNEL prints its own progress (rank 0).
 */
#define CHANNEL_ENV "PHALANX_CHANNEL"
#define CHANNEL_SECRET_ENV "PHALANX_CHANNEL_SECRET"
/* The elastic agent's attempt (its epoch), said in the hello as epoch=N, is
 * CKPT_EPOCH_ENV (checkpoint.h): the same variable fences checkpoints. */
#define CHANNEL_TOKEN_HEX 64 /* hex digits of a secret, a nonce or an answer */
/* 256 bits from getrandom(2) in hex; 0, or -1 (errno says why). */
int channel_token(char out[CHANNEL_TOKEN_HEX + 1]);
/* The hex HMAC-SHA256 of `nonce` under `secret`: the secret itself never
 * crosses the wire. */
void channel_answer(const char *secret, const char *nonce, char out[CHANNEL_TOKEN_HEX + 1]);
/* True when `answer` is channel_answer(secret, nonce); compared in constant time. */
bool channel_answer_valid(const char *secret, const char *nonce, const char *answer);
/* Injected failures for a drill, set by the launcher (runtime/fault.h). */
#define FAULT_ENV "PHALANX_FAULTS"

#endif
