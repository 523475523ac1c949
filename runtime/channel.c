/* The worker's end of the launcher channel (contract in channel.h). */
#include "channel.h"

#include "runtime.h"

#include <errno.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BEAT_INTERVAL_SECONDS 0.5

static int connect_to(const char *address, char *err, size_t err_len)
{
    char host[256];
    const char *colon = strrchr(address, ':');
    if (!colon || (size_t)(colon - address) >= sizeof(host)) {
        snprintf(err, err_len, "%s='%s' is not HOST:PORT", CHANNEL_ENV, address);
        return -1;
    }
    memcpy(host, address, (size_t)(colon - address));
    host[colon - address] = '\0';
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *found;
    int code = getaddrinfo(host, colon + 1, &hints, &found);
    if (code != 0) {
        snprintf(err, err_len, "launcher channel %s: %s", address, gai_strerror(code));
        return -1;
    }
    int fd = -1;
    for (struct addrinfo *a = found; a && fd < 0; a = a->ai_next) {
        fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
        if (fd >= 0 && connect(fd, a->ai_addr, a->ai_addrlen) != 0) {
            close(fd);
            fd = -1;
        }
    }
    freeaddrinfo(found);
    if (fd < 0)
        snprintf(err, err_len, "cannot reach the launcher at %s: %s", address, strerror(errno));
    return fd;
}

int channel_open(Channel *channel, int rank, int world, char *err, size_t err_len)
{
    memset(channel, 0, sizeof(*channel));
    channel->fd = -1;
    channel->rank = rank;
    const char *address = getenv(CHANNEL_ENV);
    if (!address || !*address)
        return 0;
    channel->fd = connect_to(address, err, err_len);
    if (channel->fd < 0)
        return -1;
    // the node a failure takes down: Slurm's name for it (emulated nodes share a host)
    char host[128] = "?";
    const char *slurm_node = getenv("SLURMD_NODENAME");
    if (slurm_node && *slurm_node)
        snprintf(host, sizeof(host), "%s", slurm_node);
    else
        gethostname(host, sizeof(host) - 1);
    // under srun, the step: the launcher cancels the whole step after a failure
    const char *job = getenv("SLURM_JOB_ID"), *step = getenv("SLURM_STEP_ID");
    char step_id[64] = "-";
    if (job && step)
        snprintf(step_id, sizeof(step_id), "%s.%s", job, step);
    channel_send(channel, "hello %d %d %ld %s %s", rank, world, (long)getpid(), host, step_id);
    return 0;
}

bool channel_connected(const Channel *channel)
{
    return channel->fd >= 0;
}

void channel_send(Channel *channel, const char *format, ...)
{
    if (channel->fd < 0)
        return;
    char line[1024];
    va_list args;
    va_start(args, format);
    int length = vsnprintf(line, sizeof(line) - 1, format, args);
    va_end(args);
    if (length < 0)
        return;
    if ((size_t)length > sizeof(line) - 2)
        length = (int)sizeof(line) - 2;
    line[length++] = '\n';
    // a launcher that went away must not kill the worker with SIGPIPE
    if (send(channel->fd, line, (size_t)length, MSG_NOSIGNAL) < 0) {
        close(channel->fd);
        channel->fd = -1;
    }
}

void channel_beat(Channel *channel, long step)
{
    if (channel->fd < 0)
        return;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    double now = (double)ts.tv_sec + ts.tv_nsec * 1e-9;
    if (now - channel->last_beat < BEAT_INTERVAL_SECONDS)
        return;
    channel->last_beat = now;
    channel_send(channel, "beat %d %ld", channel->rank, step);
}

bool channel_stop_requested(Channel *channel)
{
    if (channel->fd < 0)
        return false;
    size_t room = sizeof(channel->pending) - 1 - channel->pending_len;
    ssize_t got = recv(channel->fd, channel->pending + channel->pending_len, room, MSG_DONTWAIT);
    if (got > 0) {
        channel->pending_len += (size_t)got;
        channel->pending[channel->pending_len] = '\0';
    }
    if (strstr(channel->pending, "stop\n"))
        return true;
    if (channel->pending_len == sizeof(channel->pending) - 1)
        channel->pending_len = 0; /* nothing we understand: drop it */
    return false;
}

void channel_close(Channel *channel)
{
    if (channel->fd >= 0)
        close(channel->fd);
    channel->fd = -1;
}
