/*
 * channel: the worker's end of the line protocol with the launcher
 * (runtime.h). Best effort: a worker without a launcher (no PHALANX_CHANNEL)
 * has a closed channel, and every call on it does nothing.
 */
#ifndef PHALANX_CHANNEL_H
#define PHALANX_CHANNEL_H

#include <stdbool.h>
#include <stddef.h>

typedef struct {
    int fd; /* -1 when there is no launcher */
    int rank;
    char pending[512];
    size_t pending_len;
    double last_beat; /* monotonic seconds of the last heartbeat sent */
} Channel;

/* Connects to $PHALANX_CHANNEL and says hello. Returns 0 (also when the
 * variable is unset), or -1 with a message when it is set but unreachable. */
int channel_open(Channel *channel, int rank, int world, char *err, size_t err_len);
bool channel_connected(const Channel *channel);
void channel_send(Channel *channel, const char *format, ...)
    __attribute__((format(printf, 2, 3)));
/* "beat RANK STEP": the training thread is making progress (the launcher's
 * hang detection). Cheap to call often: it sends at most every 0.5 s. */
void channel_beat(Channel *channel, long step);
/* Non-blocking: true once the launcher has sent "stop". */
bool channel_stop_requested(Channel *channel);
void channel_close(Channel *channel);

#endif
