/* The worker's end of the launcher channel (contract in channel.h). */
#include "channel.h"
#include "util.h"

#include "checkpoint.h"
#include "runtime.h"

#include <errno.h>
#include <math.h>
#include <netdb.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BEAT_INTERVAL_SECONDS 0.5
/* The launcher answers a connection in its next poll (20 ms); a loaded host may take longer. */
#define CHALLENGE_WAIT_MS 60000
#define PROBE_WAIT_MS 10000 /* for the launcher to take a probe's line */
#define CLOSE_WAIT_MS 2000   /* for the launcher to close its end after our last line */
#define TIMEOUT_MAX_SECONDS 86400.0


// ----------------------------------------------------------------------------
// authentication (runtime.h)

static void to_hex(const unsigned char *bytes, size_t count, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < count; i++) {
        out[2 * i] = digits[bytes[i] >> 4];
        out[2 * i + 1] = digits[bytes[i] & 15];
    }
    out[2 * count] = '\0';
}

int channel_token(char out[CHANNEL_TOKEN_HEX + 1])
{
    unsigned char bytes[CHANNEL_TOKEN_HEX / 2];
    size_t got = 0;
    while (got < sizeof(bytes)) {
        ssize_t n = getrandom(bytes + got, sizeof(bytes) - got, 0);
        if (n < 0 && errno != EINTR)
            return -1;
        got += n > 0 ? (size_t)n : 0;
    }
    to_hex(bytes, sizeof(bytes), out);
    return 0;
}

void channel_answer(const char *secret, const char *nonce, char out[CHANNEL_TOKEN_HEX + 1])
{
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int length = 0;
    HMAC(EVP_sha256(), secret, (int)strlen(secret), (const unsigned char *)nonce, strlen(nonce),
         mac, &length);
    to_hex(mac, CHANNEL_TOKEN_HEX / 2, out);
}

bool channel_answer_valid(const char *secret, const char *nonce, const char *answer)
{
    char expected[CHANNEL_TOKEN_HEX + 1];
    channel_answer(secret, nonce, expected);
    // the length is no secret; the digits are compared in constant time
    return strlen(answer) == CHANNEL_TOKEN_HEX &&
           CRYPTO_memcmp(expected, answer, CHANNEL_TOKEN_HEX) == 0;
}

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
        snprintf(err, err_len, "cannot reach the launcher at %s (%s, set by `phalanx run`): %s; "
                 "if this host has no route to that address, give `phalanx run "
                 "--channel-address ADDR` an address of the launcher's host that the ranks' "
                 "hosts reach (and let TCP to it through any firewall)",
                 address, CHANNEL_ENV, strerror(errno));
    return fd;
}

// ----------------------------------------------------------------------------
// the worker's end

/* The launcher is gone: the channel closes, and nothing more is sent. */
static void lose(Channel *channel, const char *why)
{
    if (channel->fd >= 0)
        close(channel->fd);
    channel->fd = -1;
    channel->lost = true;
    snprintf(channel->lost_why, sizeof(channel->lost_why), "%s", why);
}

static int read_timeout(Channel *channel, char *err, size_t err_len)
{
    channel->timeout = CHANNEL_DEFAULT_TIMEOUT_SECONDS;
    const char *text = getenv(CHANNEL_TIMEOUT_ENV);
    if (!text || !*text)
        return 0;
    char *end;
    double value = strtod(text, &end);
    if (*end || end == text || !isfinite(value) || value < 1 || value > TIMEOUT_MAX_SECONDS) {
        snprintf(err, err_len, "%s='%.40s' is not a number of seconds in [1, %.0f]; unset it "
                               "for the default (%.0f)", CHANNEL_TIMEOUT_ENV, text,
                 TIMEOUT_MAX_SECONDS, CHANNEL_DEFAULT_TIMEOUT_SECONDS);
        return -1;
    }
    channel->timeout = value;
    return 0;
}

/* Waits for "challenge NONCE" and answers it; bytes after the challenge
 * line stay pending. */
static int authenticate(Channel *channel, const char *secret, char *err, size_t err_len)
{
    char *newline = NULL;
    while (!newline) {
        struct pollfd p = {.fd = channel->fd, .events = POLLIN};
        size_t room = sizeof(channel->pending) - 1 - channel->pending_len;
        ssize_t got = 0;
        if (room == 0 || poll(&p, 1, CHALLENGE_WAIT_MS) <= 0 ||
            (got = recv(channel->fd, channel->pending + channel->pending_len, room, 0)) <= 0) {
            snprintf(err, err_len, "the launcher sent no challenge (is %s the address of "
                                   "this job's `phalanx run`?)", getenv(CHANNEL_ENV));
            return -1;
        }
        channel->pending_len += (size_t)got;
        channel->pending[channel->pending_len] = '\0';
        newline = strchr(channel->pending, '\n');
    }
    *newline = '\0';
    const char *nonce = channel->pending + strlen("challenge ");
    if (strncmp(channel->pending, "challenge ", strlen("challenge ")) != 0 ||
        strlen(nonce) != CHANNEL_TOKEN_HEX) {
        snprintf(err, err_len, "the launcher at %s did not send a challenge", getenv(CHANNEL_ENV));
        return -1;
    }
    char answer[CHANNEL_TOKEN_HEX + 1];
    channel_answer(secret, nonce, answer);
    size_t rest = channel->pending_len - (size_t)(newline + 1 - channel->pending);
    memmove(channel->pending, newline + 1, rest + 1);
    channel->pending_len = rest;
    channel_send(channel, "auth %s", answer);
    return 0;
}

/* The node a failure takes down: Slurm's name for it (emulated nodes share
 * a host), else the host's name. */
static void node_name(char *out, size_t len)
{
    snprintf(out, len, "?");
    const char *slurm_node = getenv("SLURMD_NODENAME");
    if (slurm_node && *slurm_node)
        snprintf(out, len, "%s", slurm_node);
    else
        gethostname(out, len - 1);
    out[len - 1] = '\0';
}

/* Connects and answers the challenge; the secret checked first. */
static int connect_authenticated(Channel *channel, const char *address, char *err,
                                 size_t err_len)
{
    const char *secret = getenv(CHANNEL_SECRET_ENV);
    if (!secret || strlen(secret) != CHANNEL_TOKEN_HEX) {
        snprintf(err, err_len, "%s is set but %s is %s: only `phalanx run` starts ranks that "
                               "talk to a launcher (unset %s to train without one)",
                 CHANNEL_ENV, CHANNEL_SECRET_ENV, secret ? "malformed" : "not", CHANNEL_ENV);
        return -1;
    }
    if (read_timeout(channel, err, err_len))
        return -1;
    channel->fd = connect_to(address, err, err_len);
    if (channel->fd < 0 || authenticate(channel, secret, err, err_len))
        return -1;
    return 0;
}

int channel_open(Channel *channel, int rank, int world, char *err, size_t err_len)
{
    memset(channel, 0, sizeof(*channel));
    channel->fd = -1;
    channel->rank = rank;
    const char *address = getenv(CHANNEL_ENV);
    if (!address || !*address)
        return 0;
    if (connect_authenticated(channel, address, err, err_len))
        return -1;
    channel->last_heard = util_now_seconds();
    char host[128];
    node_name(host, sizeof(host));
    // under srun, the step: the launcher cancels the whole step after a failure
    const char *job = getenv("SLURM_JOB_ID"), *step = getenv("SLURM_STEP_ID");
    char step_id[64] = "-";
    if (job && step)
        snprintf(step_id, sizeof(step_id), "%s.%s", job, step);
    // the attempt of an elastic job: the agent hears only the current one
    const char *epoch = getenv(CKPT_EPOCH_ENV);
    char epoch_field[32] = "";
    if (epoch && *epoch && strspn(epoch, "0123456789") == strlen(epoch) && strlen(epoch) < 10)
        snprintf(epoch_field, sizeof(epoch_field), " epoch=%s", epoch);
    channel_send(channel, "hello %d %d %ld %s %s%s", rank, world, (long)getpid(), host, step_id,
                 epoch_field);
    return channel->fd >= 0 ? 0 : (snprintf(err, err_len, "%s", channel->lost_why), -1);
}

int channel_probe(char *err, size_t err_len)
{
    Channel channel = {.fd = -1};
    const char *address = getenv(CHANNEL_ENV);
    if (!address || !*address) {
        snprintf(err, err_len, "%s is not set: only the elastic agent of `phalanx run` starts "
                               "probes", CHANNEL_ENV);
        return -1;
    }
    if (connect_authenticated(&channel, address, err, err_len)) {
        channel_close(&channel);
        return -1;
    }
    char host[128];
    node_name(host, sizeof(host));
    channel_send(&channel, "probe %s", host);
    // the launcher closes the connection once it has read the line
    char byte;
    struct pollfd p = {.fd = channel.fd, .events = POLLIN};
    int heard = channel.fd >= 0 ? poll(&p, 1, PROBE_WAIT_MS) : 0;
    bool closed = heard > 0 && recv(channel.fd, &byte, 1, 0) == 0;
    if (!closed)
        snprintf(err, err_len, "the launcher at %s did not take the probe", address);
    channel_close(&channel);
    return closed ? 0 : -1;
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
        char why[128];
        snprintf(why, sizeof(why), "cannot write to the launcher: %s", strerror(errno));
        lose(channel, why);
    }
}

void channel_beat(Channel *channel, long step)
{
    if (channel->fd < 0)
        return;
    double now = util_now_seconds();
    if (now - channel->last_beat < BEAT_INTERVAL_SECONDS)
        return;
    channel->last_beat = now;
    channel_send(channel, "beat %d %ld", channel->rank, step);
}

/* Takes the whole lines pending: "stop" and "ping" (which only shows the
 * launcher is there); anything else is not ours to act on. */
static void take_lines(Channel *channel)
{
    char *start = channel->pending, *newline;
    while ((newline = memchr(start, '\n', channel->pending_len - (size_t)(start - channel->pending)))) {
        *newline = '\0';
        if (strcmp(start, "stop") == 0)
            channel->stop = true;
        start = newline + 1;
    }
    channel->pending_len -= (size_t)(start - channel->pending);
    memmove(channel->pending, start, channel->pending_len);
    if (channel->pending_len == sizeof(channel->pending) - 1)
        channel->pending_len = 0; /* a line too long to be ours: drop it */
}

/* Reads whatever the launcher sent, without waiting. */
static void poll_launcher(Channel *channel)
{
    while (channel->fd >= 0) {
        size_t room = sizeof(channel->pending) - 1 - channel->pending_len;
        ssize_t got = recv(channel->fd, channel->pending + channel->pending_len, room,
                           MSG_DONTWAIT);
        if (got > 0) {
            channel->pending_len += (size_t)got;
            channel->last_heard = util_now_seconds();
            take_lines(channel);
        } else if (got == 0 || (got < 0 && errno == ECONNRESET)) {
            /* A launcher that dies with our lines unread in its socket resets the
             * connection instead of closing it: the same loss, told the same way. */
            lose(channel, "the launcher closed the channel");
        } else if (errno != EINTR) {
            if (errno != EAGAIN && errno != EWOULDBLOCK) {
                char why[128];
                snprintf(why, sizeof(why), "the channel failed: %s", strerror(errno));
                lose(channel, why);
            }
            break;
        }
    }
    double silent = util_now_seconds() - channel->last_heard;
    if (channel->fd >= 0 && silent > channel->timeout) {
        char why[128];
        snprintf(why, sizeof(why), "nothing from the launcher for %.0f s (%s)", silent,
                 CHANNEL_TIMEOUT_ENV);
        lose(channel, why);
    }
}

bool channel_stop_requested(Channel *channel)
{
    poll_launcher(channel);
    return channel->stop;
}

bool channel_launcher_lost(Channel *channel)
{
    poll_launcher(channel);
    return channel->lost;
}

void channel_close(Channel *channel)
{
    if (channel->fd < 0)
        return;
    /* close(2) on a socket with unread bytes in it (a ping that came after
     * our last poll) resets the connection, and a reset drops what we sent
     * but the kernel has not yet transmitted: our "done" could be lost and a
     * rank that finished taken for a crash (seen under ASan). So end our side
     * (FIN after our lines), read and drop what the launcher still sends until
     * it closes its end, at most CLOSE_WAIT_MS, and only then close. */
    shutdown(channel->fd, SHUT_WR);
    double until = util_now_seconds() + CLOSE_WAIT_MS / 1000.0;
    char scratch[512];
    for (;;) {
        int left_ms = (int)((until - util_now_seconds()) * 1000.0);
        struct pollfd p = {.fd = channel->fd, .events = POLLIN};
        if (left_ms <= 0 || poll(&p, 1, left_ms) <= 0)
            break;
        ssize_t got = recv(channel->fd, scratch, sizeof(scratch), MSG_DONTWAIT);
        if (got == 0 || (got < 0 && errno != EINTR && errno != EAGAIN))
            break;
    }
    close(channel->fd);
    channel->fd = -1;
}
