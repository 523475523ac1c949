/* One launch of the ranks and the watch over it (contract in job.h). */
#include "job.h"
#include "util.h"

#include "checkpoint.h"
#include "protocol.h"
#include "runtime.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define STOP_GRACE_SECONDS 30.0 /* after a stop request, then the job is killed */
#define KILL_GRACE_SECONDS 5.0  /* between SIGTERM and SIGKILL */
/* A ping unacknowledged by a host's kernel this long (and retransmitted):
 * the host is partitioned or off. A healthy host acknowledges within
 * milliseconds, even when its rank is blocked and silent; a slow link (tbf
 * drops what waits over 100 ms) delays it by far less. */
#define UNREACHABLE_SECONDS 2.0

static int signal_pipe[2] = {-1, -1};

static void on_signal(int signo)
{
    unsigned char byte = (unsigned char)signo;
    ssize_t ignored = write(signal_pipe[1], &byte, 1);
    (void)ignored;
}


int job_install_signals(void)
{
    if (signal_pipe[0] >= 0)
        return 0;
    if (pipe2(signal_pipe, O_CLOEXEC | O_NONBLOCK) != 0)
        return -1;
    struct sigaction action = {.sa_handler = on_signal};
    sigemptyset(&action.sa_mask);
    sigaction(SIGINT, &action, NULL);
    sigaction(SIGTERM, &action, NULL);
    signal(SIGPIPE, SIG_IGN);
    return 0;
}

// ----------------------------------------------------------------------------
// the channel

/* The address of this host's interface that routes to `host`: connect()
 * on a UDP socket only picks the route (no packet is sent). */
static int route_source(const char *host, struct in_addr *out, char *err, size_t err_len)
{
    struct addrinfo hints = {.ai_family = AF_INET, .ai_socktype = SOCK_DGRAM}, *found;
    int code = getaddrinfo(host, "9", &hints, &found);
    if (code != 0) {
        snprintf(err, err_len, "cannot resolve the job's first host '%s': %s", host,
                 gai_strerror(code));
        return -1;
    }
    struct sockaddr_in local;
    socklen_t len = sizeof(local);
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    int ok = fd >= 0 && connect(fd, found->ai_addr, found->ai_addrlen) == 0 &&
             getsockname(fd, (struct sockaddr *)&local, &len) == 0;
    if (!ok)
        snprintf(err, err_len, "no route from this host to the job's first host '%s': %s",
                 host, strerror(errno));
    if (fd >= 0)
        close(fd);
    freeaddrinfo(found);
    if (ok)
        *out = local.sin_addr;
    return ok ? 0 : -1;
}

/* Where the channel listens, and what the ranks are told: loopback on one
 * host; across hosts --channel-address, else the address that routes to the
 * first host (not gethostname(): Debian resolves a host's own name to
 * 127.0.1.1, which no other host reaches); under srun without either, every
 * address and the host name, as Slurm's nodes resolve it. */
static int listen_address(const Job *job, struct in_addr *out, char *err, size_t err_len)
{
    char first[256];
    out->s_addr = htonl(INADDR_LOOPBACK);
    if (job->config->channel_address) {
        if (inet_pton(AF_INET, job->config->channel_address, out) == 1)
            return 0;
        snprintf(err, err_len, "--channel-address '%s' is not an IPv4 address (give one of "
                               "this host's addresses, e.g. from `ip -4 addr`)",
                 job->config->channel_address);
        return -1;
    }
    if (!spawn_is_multi_host(&job->config->plan))
        return 0;
    if (spawn_first_host(&job->config->plan, first, sizeof(first)) == 0)
        return route_source(first, out, err, err_len);
    out->s_addr = htonl(INADDR_ANY);
    return 0;
}

static int open_listener(Job *job)
{
    char err[512];
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = 0};
    if (listen_address(job, &addr.sin_addr, err, sizeof(err)) != 0) {
        fprintf(stderr, "phalanx run: %s; --channel-address ADDR chooses the address the "
                        "ranks reach the launcher at\n", err);
        return -1;
    }
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    socklen_t len = sizeof(addr);
    if (fd < 0 || bind(fd, (struct sockaddr *)&addr, sizeof(addr)) != 0 ||
        listen(fd, 128) != 0 || getsockname(fd, (struct sockaddr *)&addr, &len) != 0) {
        char shown[INET_ADDRSTRLEN] = "?";
        inet_ntop(AF_INET, &addr.sin_addr, shown, sizeof(shown));
        fprintf(stderr, "phalanx run: cannot open the launcher channel on %s: %s%s\n", shown,
                strerror(errno), job->config->channel_address ? " (is --channel-address an address "
                                                        "of this host?)" : "");
        if (fd >= 0)
            close(fd);
        return -1;
    }
    char host[256] = "";
    if (addr.sin_addr.s_addr == htonl(INADDR_ANY))
        gethostname(host, sizeof(host) - 1);
    else
        inet_ntop(AF_INET, &addr.sin_addr, host, sizeof(host));
    snprintf(job->address, sizeof(job->address), "%s:%d", host, ntohs(addr.sin_port));
    job->listen_fd = fd;
    return 0;
}

static void drop_client(Job *job, int index);

/* The oldest connection that has not said hello, or -1. */
static int oldest_pending(const Job *job, int *pending)
{
    int oldest = -1;
    *pending = 0;
    for (int i = 0; i < job->client_count; i++)
        if (job->clients[i].rank < 0) {
            (*pending)++;
            if (oldest < 0 || job->clients[i].accepted_at < job->clients[oldest].accepted_at)
                oldest = i;
        }
    return oldest;
}

/* Every connection is challenged at once; a stranger holding a slot only
 * delays the next stranger, never a rank (ranks answer within a poll). */
static void accept_client(Job *job)
{
    struct sockaddr_in peer;
    socklen_t peer_len = sizeof(peer);
    int fd = accept4(job->listen_fd, (struct sockaddr *)&peer, &peer_len, SOCK_CLOEXEC);
    if (fd < 0)
        return;
    int pending, oldest = oldest_pending(job, &pending);
    if (pending >= JOB_MAX_PENDING || job->client_count == JOB_MAX_CLIENTS + JOB_MAX_PENDING) {
        if (oldest < 0) {
            close(fd);
            return;
        }
        drop_client(job, oldest);
    }
    JobClient client = {.fd = fd, .rank = -1, .accepted_at = util_now_seconds()};
    if (peer.sin_family != AF_INET ||
        !inet_ntop(AF_INET, &peer.sin_addr, client.address, sizeof(client.address)))
        snprintf(client.address, sizeof(client.address), "?");
    char challenge[CHANNEL_TOKEN_HEX + 16];
    if (channel_token(client.nonce) != 0) {
        close(fd);
        return;
    }
    int length = snprintf(challenge, sizeof(challenge), "challenge %s\n", client.nonce);
    ssize_t ignored = send(fd, challenge, (size_t)length, MSG_NOSIGNAL | MSG_DONTWAIT);
    (void)ignored;
    client.last_seen = client.accepted_at;
    job->clients[job->client_count++] = client;
}

static void kill_job(Job *job, int signo)
{
    if (!job->done)
        kill(-job->pid, signo);
}

/* scancel --signal=KILL JOB.STEP in the background (it may wait on
 * slurmctld for seconds while a node is lost); double fork: no zombie. */
static void cancel_step(const char *step)
{
    pid_t pid = fork();
    if (pid == 0) {
        if (fork() == 0) {
            execlp("scancel", "scancel", "--quiet", "--signal=KILL", step, (char *)NULL);
            _exit(127);
        }
        _exit(0);
    }
    if (pid > 0)
        waitpid(pid, NULL, 0);
}

/* The first failure counts; the job is killed at once. */
static void fail(Job *job, FailureKind kind, const JobClient *client, const char *how)
{
    if (!job->config->detect || job->failure.kind != FAILURE_NONE || job->stop_signal)
        return;
    job->failure.kind = kind;
    job->failure.rank = client ? client->rank : -1;
    if (client) {
        snprintf(job->failure.node, sizeof(job->failure.node), "%s", client->node);
        snprintf(job->failure.address, sizeof(job->failure.address), "%s", client->address);
    }
    job->failure.detected_at = util_now_seconds();
    job->failure.how = how;
    job->killed_at = job->failure.detected_at;
    // srun's tasks are remote: killing srun would leave them running (stuck
    // in a collective, spinning), so Slurm kills the whole step first
    if (job->slurm_step[0])
        cancel_step(job->slurm_step);
    kill_job(job, SIGKILL);
}

/* "ranks on hosts: h1 0-1, h2 2-3": where mpirun or srun put them. */
static void print_placement(const Job *job)
{
    const char *node_of[JOB_MAX_CLIENTS];
    for (int r = 0; r < job->config->plan.ranks; r++)
        node_of[r] = "?"; /* a rank may have finished and closed already */
    for (int i = 0; i < job->client_count; i++)
        if (job->clients[i].rank >= 0)
            node_of[job->clients[i].rank] = job->clients[i].node;
    char line[4096];
    size_t used = 0;
    for (int r = 0; r < job->config->plan.ranks && used < sizeof(line) - 80; r++) {
        if (r > 0 && strcmp(node_of[r], node_of[r - 1]) == 0)
            continue;
        int last = r;
        while (last + 1 < job->config->plan.ranks && strcmp(node_of[last + 1], node_of[r]) == 0)
            last++;
        used += (size_t)snprintf(line + used, sizeof(line) - used, "%s%.63s %d", used ? ", " : "",
                                 node_of[r], r);
        if (last > r)
            used += (size_t)snprintf(line + used, sizeof(line) - used, "-%d", last);
    }
    char shown[sizeof(line)];
    protocol_sanitize_text(line, strlen(line), shown, sizeof(shown));
    fprintf(stderr, "phalanx run: ranks on hosts: %s\n", shown);
}

/* The rank must be one this job launched that no connection has claimed;
 * false closes the connection. */
static bool on_hello(Job *job, JobClient *client, const ProtocolMessage *m)
{
    if (job->config->epoch >= 0 && m->epoch != job->config->epoch) {
        fprintf(stderr, "phalanx run: refused a hello from rank %d of attempt %d: this is "
                        "attempt %d (a process of an attempt given up on stops by itself)\n",
                m->rank, m->epoch, job->config->epoch);
        return false;
    }
    if (m->world != job->config->plan.ranks || m->rank >= job->config->plan.ranks || m->rank >= JOB_MAX_CLIENTS ||
        job->claimed[m->rank]) {
        fprintf(stderr, "phalanx run: refused a hello for rank %d of %d: this job has %d "
                        "rank(s)%s\n", m->rank, m->world, job->config->plan.ranks,
                m->rank < JOB_MAX_CLIENTS && job->claimed[m->rank] ? ", and that one said hello"
                                                                  : "");
        return false;
    }
    job->claimed[m->rank] = true;
    client->rank = m->rank;
    client->pid = m->pid;
    snprintf(client->node, sizeof(client->node), "%s", m->node);
    // scancel takes options too: only a step of our own allocation reaches it
    if (protocol_step_of_job(m->slurm_step, getenv("SLURM_JOB_ID")))
        snprintf(job->slurm_step, sizeof(job->slurm_step), "%s", m->slurm_step);
    else if (m->slurm_step[0])
        fprintf(stderr, "phalanx run: rank %d named Slurm step '%.63s', not one of job %s; it "
                        "will not be cancelled\n", m->rank, m->slurm_step,
                getenv("SLURM_JOB_ID") ? getenv("SLURM_JOB_ID") : "(none: no SLURM_JOB_ID)");
    if (++job->hello_count == job->config->plan.ranks) {
        job->ready = true;
        if (spawn_is_multi_host(&job->config->plan))
            print_placement(job);
        if (job->config->on_event)
            job->config->on_event(job->config->event_context, "ranks_up", 0, client->last_seen);
    }
    return true;
}

static void on_step(Job *job, long step, double at)
{
    job->last_step = step;
    if (job->config->on_event)
        job->config->on_event(job->config->event_context, "step", step, at);
    if (job->first_step == 0) {
        job->first_step = step;
        if (job->config->on_event)
            job->config->on_event(job->config->event_context, "first_step", step, at);
    }
}

/* A rank's text on the launcher's terminal, without its control characters. */
static void print_text(const ProtocolMessage *m)
{
    char text[sizeof(((JobClient *)0)->buffer)];
    protocol_sanitize_text(m->text, m->text_length, text, sizeof(text));
    printf("%s\n", text);
    fflush(stdout);
}

/* The lines of a rank that said hello. */
static void handle_message(Job *job, JobClient *client, const ProtocolMessage *m)
{
    switch (m->kind) {
    case PROTOCOL_PROGRESS:
        job->last_step = m->step;
        print_text(m);
        break;
    case PROTOCOL_LOG:
        print_text(m);
        break;
    case PROTOCOL_STEP:
        on_step(job, m->step, client->last_seen);
        break;
    case PROTOCOL_DONE:
        client->done = true;
        break;
    case PROTOCOL_FAULT:
        job->failure.fault_at = client->last_seen;
        client->faulted = true;
        break;
    case PROTOCOL_COMMITTED:
        if (job->config->on_event)
            job->config->on_event(job->config->event_context, "committed", m->step, client->last_seen);
        break;
    case PROTOCOL_LOADED:
        memcpy(job->read_bytes, m->read_bytes, sizeof(job->read_bytes));
        break;
    case PROTOCOL_RESUMED:
        protocol_sanitize_text(m->text, m->text_length, job->resumed_path,
                               sizeof(job->resumed_path));
        if (job->config->on_event)
            job->config->on_event(job->config->event_context, "resumed", m->step, client->last_seen);
        break;
    default: /* beat: last_seen is all; auth and hello once only */
        break;
    }
}

/* Before its hello a connection may say only "auth" (right), then "hello"
 * (a free rank of this job). False: close it. */
static bool admit(Job *job, JobClient *client, const ProtocolMessage *m, int parsed)
{
    if (!client->authenticated) {
        client->authenticated = parsed == 0 && m->kind == PROTOCOL_AUTH &&
                                channel_answer_valid(job->secret, client->nonce, m->answer);
        return client->authenticated;
    }
    if (parsed == 0 && m->kind == PROTOCOL_PROBE && job->config->on_probe) {
        client->probe = true;
        job->config->on_probe(job->config->event_context, m->node, client->address, util_now_seconds());
        return false; /* answered: the probe waits for this close */
    }
    return parsed == 0 && m->kind == PROTOCOL_HELLO && on_hello(job, client, m);
}

/* False when the connection is to be closed. */
static bool handle_line(Job *job, JobClient *client, const char *line, size_t length)
{
    ProtocolMessage m;
    char err[160];
    int parsed = protocol_parse(line, length, &m, err, sizeof(err));
    if (client->rank < 0)
        return admit(job, client, &m, parsed);
    client->last_seen = util_now_seconds();
    if (parsed != 0) {
        fprintf(stderr, "phalanx run: rank %d sent a line that is not of the protocol (%s); "
                        "ignored\n", client->rank, err);
        return true;
    }
    handle_message(job, client, &m);
    return true;
}

/* Only a rank's loss is a crash: a connection that never said hello is no rank. */
static void drop_client(Job *job, int index)
{
    JobClient *c = &job->clients[index];
    close(c->fd);
    if (c->rank >= 0 && !c->done)
        fail(job, FAILURE_CRASH, c, "lost channel");
    if (c->rank < 0 && !c->probe && job->refused++ == 0)
        fprintf(stderr, "phalanx run: closed a channel connection that did not authenticate "
                        "as a rank of this job (further ones are not reported)\n");
    job->clients[index] = job->clients[--job->client_count];
}

static void read_client(Job *job, int index)
{
    JobClient *c = &job->clients[index];
    ssize_t got = read(c->fd, c->buffer + c->length, sizeof(c->buffer) - c->length);
    if (got <= 0) {
        drop_client(job, index);
        return;
    }
    c->length += (size_t)got;
    char *start = c->buffer, *newline;
    while ((newline = memchr(start, '\n', c->length - (size_t)(start - c->buffer)))) {
        if (!handle_line(job, c, start, (size_t)(newline - start))) {
            drop_client(job, index);
            return;
        }
        start = newline + 1;
    }
    c->length -= (size_t)(start - c->buffer);
    memmove(c->buffer, start, c->length);
    if (c->length == sizeof(c->buffer)) /* no line of the protocol is this long */
        drop_client(job, index);
}

/* To the ranks that said hello (strangers get nothing but a challenge). */
static void send_to_ranks(Job *job, const char *line)
{
    for (int i = 0; i < job->client_count; i++)
        if (job->clients[i].rank >= 0) {
            ssize_t ignored = send(job->clients[i].fd, line, strlen(line),
                                   MSG_NOSIGNAL | MSG_DONTWAIT);
            (void)ignored;
        }
}

static void broadcast_stop(Job *job)
{
    send_to_ranks(job, "stop\n");
}

void job_request_stop(Job *job)
{
    if (job->stop_requested || job->stop_signal)
        return;
    job->stop_requested = true;
    job->stop_at = util_now_seconds();
    broadcast_stop(job);
}

/* Ranks stop when they hear nothing for a while: a ping every second. */
static void ping_ranks(Job *job, double now)
{
    if (now - job->pinged_at < 1.0)
        return;
    job->pinged_at = now;
    send_to_ranks(job, "ping\n");
}

/* Connections that have not said hello in time go; never a rank's. */
static void close_stale_pending(Job *job, double now)
{
    for (int i = job->client_count - 1; i >= 0; i--)
        if (job->clients[i].rank < 0 && now - job->clients[i].accepted_at > JOB_PENDING_SECONDS)
            drop_client(job, i);
}

// ----------------------------------------------------------------------------
// the event loop

static void on_user_signal(Job *job, int signo)
{
    if (job->stop_signal == 0) {
        job->stop_signal = signo;
        job->stop_at = util_now_seconds();
        broadcast_stop(job);
        fprintf(stderr, "\nphalanx run: stopping: every rank finishes its current step and "
                        "exits (Ctrl-C again to kill the job)\n");
        return;
    }
    fprintf(stderr, "phalanx run: killing the job\n");
    kill_job(job, SIGTERM);
    job->term_at = util_now_seconds();
}

/* A process of this host in the stopped state ('T' in /proc/PID/stat). */
static bool process_stopped(long pid)
{
    char path[64], text[512];
    snprintf(path, sizeof(path), "/proc/%ld/stat", pid);
    FILE *f = fopen(path, "r");
    size_t got = f ? fread(text, 1, sizeof(text) - 1, f) : 0;
    if (f)
        fclose(f);
    text[got] = '\0';
    const char *paren = strrchr(text, ')'); /* the name may hold spaces */
    return paren && paren[1] == ' ' && paren[2] == 'T';
}

/* Which rank hung: peers stuck waiting on it fall silent too, so silence
 * alone does not tell; an announced fault or a stopped process does. */
static const JobClient *hung_rank(const Job *job)
{
    for (int i = 0; i < job->client_count; i++)
        if (job->clients[i].faulted)
            return &job->clients[i];
    for (int i = 0; i < job->client_count; i++)
        if (job->clients[i].rank >= 0 && process_stopped(job->clients[i].pid))
            return &job->clients[i];
    return NULL;
}

/* The kernel's view of a rank's connection: data (pings) sent, none of it
 * acknowledged for UNREACHABLE_SECONDS, and retransmitted. */
static bool unacknowledged(const JobClient *c)
{
    struct tcp_info info;
    socklen_t len = sizeof(info);
    if (getsockopt(c->fd, IPPROTO_TCP, TCP_INFO, &info, &len) != 0)
        return false;
    return info.tcpi_unacked > 0 && info.tcpi_last_ack_recv > UNREACHABLE_SECONDS * 1000 &&
           (info.tcpi_retransmits > 0 || info.tcpi_backoff > 0);
}

/* A rank on a host that no longer acknowledges (partitioned or off). */
static const JobClient *unreachable_rank(const Job *job)
{
    for (int i = 0; i < job->client_count; i++)
        if (job->clients[i].rank >= 0 && !job->clients[i].done &&
            unacknowledged(&job->clients[i]))
            return &job->clients[i];
    return NULL;
}

/* A host that stopped acknowledging is lost whatever the heartbeat timeout:
 * its kernel, not its ranks, is silent (a rank that waits on a slow peer
 * still has a kernel that acknowledges), so it is told at once, and a long
 * --heartbeat-timeout for slow steps does not delay the recovery of a host. */
static void check_heartbeats(Job *job, double now)
{
    if (!job->config->detect || !job->ready || job->failure.kind != FAILURE_NONE)
        return;
    const JobClient *lost = unreachable_rank(job);
    if (lost) {
        fail(job, FAILURE_UNREACHABLE, lost, "host unreachable");
        return;
    }
    for (int i = 0; i < job->client_count; i++) {
        const JobClient *c = &job->clients[i];
        if (c->rank >= 0 && !c->done && now - c->last_seen > job->config->heartbeat_timeout) {
            fail(job, FAILURE_HANG, hung_rank(job), "no heartbeat");
            return;
        }
    }
}

static void check_timeouts(Job *job)
{
    double now = util_now_seconds();
    if (!job->ready && job->term_at == 0 && now - job->started_at > job->config->startup_timeout) {
        fprintf(stderr,
                "phalanx run: only %d of %d ranks started within %.0f s; stopping the job "
                "(see the messages above; --startup-timeout sets the limit)\n",
                job->hello_count, job->config->plan.ranks, job->config->startup_timeout);
        job->startup_timed_out = true;
        kill_job(job, SIGTERM);
        job->term_at = now;
    }
    if (job->stop_at > 0 && job->term_at == 0 && now - job->stop_at > STOP_GRACE_SECONDS) {
        fprintf(stderr, "phalanx run: the ranks did not stop within %.0f s; killing the job\n",
                STOP_GRACE_SECONDS);
        kill_job(job, SIGTERM);
        job->term_at = now;
    }
    if (job->term_at > 0 && now - job->term_at > KILL_GRACE_SECONDS)
        kill_job(job, SIGKILL);
    check_heartbeats(job, now);
    close_stale_pending(job, now);
    ping_ranks(job, now);
}

static void poll_once(Job *job, int timeout_ms)
{
    struct pollfd fds[JOB_MAX_CLIENTS + JOB_MAX_PENDING + 2];
    fds[0] = (struct pollfd){.fd = signal_pipe[0], .events = POLLIN};
    fds[1] = (struct pollfd){.fd = job->listen_fd, .events = POLLIN};
    for (int i = 0; i < job->client_count; i++)
        fds[i + 2] = (struct pollfd){.fd = job->clients[i].fd, .events = POLLIN};
    int count = job->client_count;
    if (poll(fds, (nfds_t)count + 2, timeout_ms) <= 0)
        return;
    if (fds[0].revents & POLLIN) {
        unsigned char signo;
        if (read(signal_pipe[0], &signo, 1) == 1)
            on_user_signal(job, signo);
    }
    for (int i = count - 1; i >= 0; i--) /* from the end: read_client may swap in the last */
        if (fds[i + 2].revents & (POLLIN | POLLHUP | POLLERR))
            read_client(job, i);
    if (fds[1].revents & POLLIN) /* last: it may close a client, which reorders them */
        accept_client(job);
}

int job_start(Job *job, const JobConfig *config)
{
    memset(job, 0, sizeof(*job));
    job->config = config;
    char err[512];
    if (job_install_signals() || open_listener(job))
        return -1;
    if (channel_token(job->secret) != 0) {
        fprintf(stderr, "phalanx run: cannot draw the channel's secret: getrandom: %s\n",
                strerror(errno));
        return -1;
    }
    setenv(CHANNEL_ENV, job->address, 1);
    // the environment, not argv: a command line is visible to every user
    setenv(CHANNEL_SECRET_ENV, job->secret, 1);
    char epoch[32];
    snprintf(epoch, sizeof(epoch), "%d", job->config->epoch);
    if (job->config->epoch >= 0)
        setenv(CKPT_EPOCH_ENV, epoch, 1);
    else
        unsetenv(CKPT_EPOCH_ENV);
    job->failure.rank = -1;
    job->started_at = util_now_seconds();
    job->pid = spawn_job(&job->config->plan, err, sizeof(err));
    if (job->pid < 0) {
        fprintf(stderr, "phalanx run: %s\n", err);
        return -1;
    }
    return 0;
}

int job_code(const Job *job)
{
    return WIFEXITED(job->status) ? WEXITSTATUS(job->status) : 128 + WTERMSIG(job->status);
}

const char *job_failure_name(FailureKind kind)
{
    static const char *const names[] = {"none", "crash", "hang", "exit", "unreachable"};
    return names[kind];
}

void job_watch(Job *job)
{
    while (!job->done) {
        poll_once(job, 20);
        if (waitpid(job->pid, &job->status, WNOHANG) == job->pid)
            job->done = true;
        check_timeouts(job);
        if (job->config->on_tick && !job->done)
            job->config->on_tick(job->config->event_context, util_now_seconds());
    }
    // lines still in flight (not after a failure: recovery is waiting)
    for (int i = 0; i < 5 && job->client_count > 0 && job->failure.kind == FAILURE_NONE; i++)
        poll_once(job, 20);
    // a failure the channel did not show: a rank exited non-zero after saying done
    if (job->config->detect && job->failure.kind == FAILURE_NONE && !job->stop_signal &&
        !job->stop_requested && job->ready &&
        job_code(job) != 0) {
        job->failure = (JobFailure){.kind = FAILURE_EXIT, .rank = -1,
                                    .detected_at = util_now_seconds(), .how = "exit status"};
    }
}

int job_exit_status(const Job *job)
{
    int code = job_code(job);
    if (!job->ready) {
        fprintf(stderr, "phalanx run: the job ended before all ranks started (%d of %d; "
                        "exit status %d)\n", job->hello_count, job->config->plan.ranks, code);
        return job->startup_timed_out || code == 0 ? 3 : code;
    }
    if (job->stop_signal) {
        fprintf(stderr, "phalanx run: stopped by %s after step %ld; %s\n",
                job->stop_signal == SIGINT ? "Ctrl-C" : "SIGTERM", job->last_step,
                job->term_at > 0 ? "the job was killed" : "every rank exited cleanly");
        return 128 + job->stop_signal;
    }
    if (code != 0)
        fprintf(stderr, "phalanx run: the job failed with exit status %d\n", code);
    return code;
}

void job_close(Job *job)
{
    for (int i = 0; i < job->client_count; i++)
        close(job->clients[i].fd);
    job->client_count = 0;
    if (job->listen_fd > 0)
        close(job->listen_fd);
    job->listen_fd = -1;
}
