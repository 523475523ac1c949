/*
 * channel: the worker's end of the line protocol with the launcher
 * (runtime.h). Best effort: a worker without a launcher (no PHALANX_CHANNEL)
 * has a closed channel, and every call on it does nothing.
 *
 * Opening answers the launcher's challenge with the job's secret (runtime.h)
 * before the hello. Afterwards the launcher sends "ping" every second; a
 * rank learns at its step boundaries and between groups of micro-batches
 * (channel_launcher_lost) that the
 * launcher is gone: its channel closed, or nothing came from it for
 * $PHALANX_LAUNCHER_TIMEOUT seconds (default 10). Lines that were waiting in
 * the socket count as heard when they are read, so a step longer than the
 * timeout is no false alarm; a silent launcher is then noticed one step late.
 */
#ifndef PHALANX_CHANNEL_H
#define PHALANX_CHANNEL_H

#include <stdbool.h>
#include <stddef.h>

#define CHANNEL_TIMEOUT_ENV "PHALANX_LAUNCHER_TIMEOUT"
#define CHANNEL_DEFAULT_TIMEOUT_SECONDS 10.0

typedef struct {
    int fd; /* -1 when there is no launcher, or it is gone */
    int rank;
    char pending[512]; /* from the launcher: the start of a line not yet whole */
    size_t pending_len;
    double last_beat;  /* monotonic seconds of the last heartbeat sent */
    double last_heard; /* ... of the last bytes read from the launcher */
    double timeout;    /* seconds of silence after which the launcher is gone */
    bool stop, lost;   /* the launcher said "stop"; the launcher is gone */
    char lost_why[160];
} Channel;

/* Connects to $PHALANX_CHANNEL, authenticates with $PHALANX_CHANNEL_SECRET
 * and says hello. Returns 0 (also when PHALANX_CHANNEL is unset), or -1
 * with a message when it is set but the secret or the timeout is missing or
 * malformed, or the launcher is unreachable or refuses the answer. */
int channel_open(Channel *channel, int rank, int world, char *err, size_t err_len);
/* `phalanx probe`: connects to $PHALANX_CHANNEL, authenticates and says
 * "probe NODE" (NODE as a hello names it), then waits for the launcher to
 * close the connection: 0 when it did, else -1 with the reason in err. The
 * elastic agent starts it on a host it wants back, through the launcher's
 * own path (mpirun or srun), so an answer shows the path works end to end. */
int channel_probe(char *err, size_t err_len);
bool channel_connected(const Channel *channel);
void channel_send(Channel *channel, const char *format, ...)
    __attribute__((format(printf, 2, 3)));
/* "beat RANK STEP": the training thread is making progress (the launcher's
 * hang detection). Cheap to call often: it sends at most every 0.5 s. */
void channel_beat(Channel *channel, long step);
/* Non-blocking: true once the launcher has sent "stop". */
bool channel_stop_requested(Channel *channel);
/* Non-blocking: true once this rank had a launcher and it is gone (the
 * reason in lost_why). A rank without a launcher never loses it. */
bool channel_launcher_lost(Channel *channel);
/* Ends the connection so that every line sent reaches the launcher: our side
 * is shut down first, then what the launcher still sends is read and dropped
 * until it closes its end (at most 2 s), then the socket is closed. */
void channel_close(Channel *channel);

#endif
