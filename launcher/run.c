/*
 * `phalanx run`: start a job of N ranks and watch it (contract in launcher.h).
 *
 * The launcher listens on a TCP port (the channel, protocol in runtime.h),
 * starts mpirun or srun in a process group of its own, and then waits on the
 * channel, its signals and the job. It prints rank 0's progress lines (one per
 * step for the whole job), bounds start-up with a timeout of its own (a rank
 * that never says hello cannot hang it), turns Ctrl-C into a clean stop of
 * every rank at a step boundary, and exits with the job's status.
 */
#include "launcher.h"

#include "runtime.h"
#include "spawn.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_CLIENTS 1024
#define STOP_GRACE_SECONDS 30.0 /* after a stop request, then the job is killed */
#define KILL_GRACE_SECONDS 5.0  /* between SIGTERM and SIGKILL */

typedef struct {
    int fd;
    int rank; /* -1 until its hello */
    char buffer[2048];
    size_t length;
} Client;

typedef struct {
    SpawnPlan plan;
    double startup_timeout;
    int listen_fd;
    Client clients[MAX_CLIENTS];
    int client_count;
    int hello_count;
    long last_step;
    pid_t job;
    int job_status; /* raw waitpid status, valid once job_done */
    bool job_done, ready, startup_timed_out;
    double started_at, stop_at, term_at;
    int stop_signal;
} Run;

static int signal_pipe[2] = {-1, -1};

static void on_signal(int signo)
{
    unsigned char byte = (unsigned char)signo;
    ssize_t ignored = write(signal_pipe[1], &byte, 1);
    (void)ignored;
}

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

// ----------------------------------------------------------------------------
// command line

static void usage(FILE *out)
{
    fputs("usage: phalanx run -n N [launcher options] -- [phalanx train options]\n"
          "\n"
          "Starts N ranks of `phalanx train` and shows the job's progress. Inside a Slurm\n"
          "allocation (SLURM_JOB_ID set) the ranks start with srun, otherwise with mpirun.\n"
          "The layout (--dp/--pp/--sp or --layout) is checked before any rank starts.\n"
          "\n"
          "  -n, --ranks N            number of ranks (required)\n"
          "      --via auto|mpirun|srun  how to start them (default auto)\n"
          "      --hostfile FILE      mpirun across the hosts in FILE\n"
          "      --hosts H1,H2,...    mpirun across these hosts\n"
          "      --startup-timeout S  seconds for every rank to start (default 60)\n"
          "      --worker PATH        the phalanx binary the ranks run (default: this one)\n"
          "  -h, --help               this text\n"
          "\n"
          "Ctrl-C (or SIGTERM) stops every rank cleanly after its current step; a second\n"
          "Ctrl-C kills the job. Exit status: the job's (0 when every rank finished),\n"
          "130/143 after a stop, 2 for bad options, 3 when ranks did not start in time.\n",
          out);
}

static int parse_number(const char *flag, const char *text, double min, double *out)
{
    char *end;
    double value = strtod(text, &end);
    if (end == text || *end || !(value >= min)) {
        fprintf(stderr, "phalanx run: %s: '%s' is not a number >= %g\n", flag, text, min);
        return -1;
    }
    *out = value;
    return 0;
}

static int parse_via(const char *text, Via *out)
{
    static const char *names[] = {"auto", "mpirun", "srun"};
    for (int i = 0; i < 3; i++)
        if (strcmp(text, names[i]) == 0) {
            *out = (Via)i;
            return 0;
        }
    fprintf(stderr, "phalanx run: --via: '%s' is not auto, mpirun or srun\n", text);
    return -1;
}

static int parse_run_options(Run *run, int argc, char **argv)
{
    static const struct option options[] = {
        {"ranks", required_argument, NULL, 'n'},
        {"via", required_argument, NULL, 'v'},
        {"hostfile", required_argument, NULL, 'f'},
        {"hosts", required_argument, NULL, 'H'},
        {"startup-timeout", required_argument, NULL, 't'},
        {"worker", required_argument, NULL, 'w'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    double ranks = 0;
    optind = 1;
    opterr = 0;
    int code;
    while ((code = getopt_long(argc, argv, "+n:h", options, NULL)) != -1) {
        int status = 0;
        switch (code) {
        case 'n': status = parse_number("--ranks", optarg, 1, &ranks); break;
        case 'v': status = parse_via(optarg, &run->plan.via); break;
        case 'f': run->plan.hostfile = optarg; break;
        case 'H': run->plan.hosts = optarg; break;
        case 't': status = parse_number("--startup-timeout", optarg, 0.1, &run->startup_timeout); break;
        case 'w': run->plan.worker = optarg; break;
        case 'h': usage(stdout); return 1;
        default:
            fprintf(stderr, "phalanx run: unknown option or missing value: '%s'; see "
                            "`phalanx run --help`\n", argv[optind - 1]);
            return -1;
        }
        if (status)
            return -1;
    }
    if (ranks < 1 || ranks != (int)ranks) {
        fprintf(stderr, "phalanx run: -n N (a whole number of ranks) is required\n");
        return -1;
    }
    run->plan.ranks = (int)ranks;
    run->plan.train_argc = argc - optind;
    run->plan.train_argv = argv + optind;
    return 0;
}

/* The worker must exist before anything starts (locally: remote hosts are
 * covered by the start-up timeout). */
static int check_worker(const Run *run)
{
    if (spawn_is_multi_host(&run->plan) || access(run->plan.worker, X_OK) == 0)
        return 0;
    fprintf(stderr, "phalanx run: the worker binary '%s' cannot be run: %s; build it "
                    "(scripts/build) or give --worker PATH\n",
            run->plan.worker, strerror(errno));
    return -1;
}

// ----------------------------------------------------------------------------
// the channel

static int open_listener(Run *run, char *address, size_t address_len)
{
    bool wide = spawn_is_multi_host(&run->plan);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = 0};
    addr.sin_addr.s_addr = htonl(wide ? INADDR_ANY : INADDR_LOOPBACK);
    socklen_t len = sizeof(addr);
    if (fd < 0 || bind(fd, (struct sockaddr *)&addr, sizeof(addr)) != 0 ||
        listen(fd, 128) != 0 || getsockname(fd, (struct sockaddr *)&addr, &len) != 0) {
        fprintf(stderr, "phalanx run: cannot open the launcher channel: %s\n", strerror(errno));
        return -1;
    }
    char host[256] = "127.0.0.1";
    if (wide)
        gethostname(host, sizeof(host) - 1);
    snprintf(address, address_len, "%s:%d", host, ntohs(addr.sin_port));
    run->listen_fd = fd;
    return 0;
}

static void accept_client(Run *run)
{
    int fd = accept4(run->listen_fd, NULL, NULL, SOCK_CLOEXEC);
    if (fd < 0)
        return;
    if (run->client_count == MAX_CLIENTS) {
        close(fd);
        return;
    }
    run->clients[run->client_count++] = (Client){.fd = fd, .rank = -1};
}

static void handle_line(Run *run, Client *client, char *line)
{
    if (strncmp(line, "hello ", 6) == 0) {
        client->rank = atoi(line + 6);
        if (++run->hello_count == run->plan.ranks)
            run->ready = true;
    } else if (strncmp(line, "progress ", 9) == 0) {
        char *text = strchr(line + 9, ' ');
        run->last_step = atol(line + 9);
        printf("%s\n", text ? text + 1 : "");
        fflush(stdout);
    } else if (strncmp(line, "log ", 4) == 0) {
        printf("%s\n", line + 4);
        fflush(stdout);
    }
}

static void read_client(Run *run, int index)
{
    Client *c = &run->clients[index];
    ssize_t got = read(c->fd, c->buffer + c->length, sizeof(c->buffer) - 1 - c->length);
    if (got <= 0) {
        close(c->fd);
        run->clients[index] = run->clients[--run->client_count];
        return;
    }
    c->length += (size_t)got;
    c->buffer[c->length] = '\0';
    char *start = c->buffer, *newline;
    while ((newline = strchr(start, '\n'))) {
        *newline = '\0';
        handle_line(run, c, start);
        start = newline + 1;
    }
    c->length = strlen(start);
    memmove(c->buffer, start, c->length + 1);
    if (c->length == sizeof(c->buffer) - 1)
        c->length = 0; /* an over-long line: drop it */
}

static void broadcast_stop(Run *run)
{
    for (int i = 0; i < run->client_count; i++) {
        ssize_t ignored = send(run->clients[i].fd, "stop\n", 5, MSG_NOSIGNAL);
        (void)ignored;
    }
}

// ----------------------------------------------------------------------------
// the event loop

static void kill_job(Run *run, int signo)
{
    if (!run->job_done)
        kill(-run->job, signo);
}

static void on_user_signal(Run *run, int signo)
{
    if (run->stop_signal == 0) {
        run->stop_signal = signo;
        run->stop_at = now_seconds();
        broadcast_stop(run);
        fprintf(stderr, "\nphalanx run: stopping: every rank finishes its current step and "
                        "exits (Ctrl-C again to kill the job)\n");
        return;
    }
    fprintf(stderr, "phalanx run: killing the job\n");
    kill_job(run, SIGTERM);
    run->term_at = now_seconds();
}

static void check_timeouts(Run *run)
{
    double now = now_seconds();
    if (!run->ready && run->term_at == 0 && now - run->started_at > run->startup_timeout) {
        fprintf(stderr,
                "phalanx run: only %d of %d ranks started within %.0f s; stopping the job "
                "(see the messages above; --startup-timeout sets the limit)\n",
                run->hello_count, run->plan.ranks, run->startup_timeout);
        run->startup_timed_out = true;
        kill_job(run, SIGTERM);
        run->term_at = now;
    }
    if (run->stop_at > 0 && run->term_at == 0 && now - run->stop_at > STOP_GRACE_SECONDS) {
        fprintf(stderr, "phalanx run: the ranks did not stop within %.0f s; killing the job\n",
                STOP_GRACE_SECONDS);
        kill_job(run, SIGTERM);
        run->term_at = now;
    }
    if (run->term_at > 0 && now - run->term_at > KILL_GRACE_SECONDS)
        kill_job(run, SIGKILL);
}

static void poll_once(Run *run)
{
    struct pollfd fds[MAX_CLIENTS + 2];
    fds[0] = (struct pollfd){.fd = signal_pipe[0], .events = POLLIN};
    fds[1] = (struct pollfd){.fd = run->listen_fd, .events = POLLIN};
    for (int i = 0; i < run->client_count; i++)
        fds[i + 2] = (struct pollfd){.fd = run->clients[i].fd, .events = POLLIN};
    int count = run->client_count;
    if (poll(fds, (nfds_t)count + 2, 100) <= 0)
        return;
    if (fds[0].revents & POLLIN) {
        unsigned char signo;
        if (read(signal_pipe[0], &signo, 1) == 1)
            on_user_signal(run, signo);
    }
    if (fds[1].revents & POLLIN)
        accept_client(run);
    for (int i = count - 1; i >= 0; i--) /* from the end: read_client may swap in the last */
        if (fds[i + 2].revents & (POLLIN | POLLHUP | POLLERR))
            read_client(run, i);
}

static void watch(Run *run)
{
    while (!run->job_done) {
        poll_once(run);
        if (waitpid(run->job, &run->job_status, WNOHANG) == run->job)
            run->job_done = true;
        check_timeouts(run);
    }
    for (int i = 0; i < 5 && run->client_count > 0; i++) /* lines still in flight */
        poll_once(run);
}

static int job_exit_status(const Run *run)
{
    int status = run->job_status;
    int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    if (!run->ready) {
        fprintf(stderr, "phalanx run: the job ended before all ranks started (%d of %d; "
                        "exit status %d)\n", run->hello_count, run->plan.ranks, code);
        return run->startup_timed_out || code == 0 ? 3 : code;
    }
    if (run->stop_signal) {
        fprintf(stderr, "phalanx run: stopped by %s after step %ld; %s\n",
                run->stop_signal == SIGINT ? "Ctrl-C" : "SIGTERM", run->last_step,
                run->term_at > 0 ? "the job was killed" : "every rank exited cleanly");
        return 128 + run->stop_signal;
    }
    if (code != 0)
        fprintf(stderr, "phalanx run: the job failed with exit status %d\n", code);
    return code;
}

static int install_signals(void)
{
    if (pipe2(signal_pipe, O_CLOEXEC | O_NONBLOCK) != 0)
        return -1;
    struct sigaction action = {.sa_handler = on_signal};
    sigemptyset(&action.sa_mask);
    sigaction(SIGINT, &action, NULL);
    sigaction(SIGTERM, &action, NULL);
    signal(SIGPIPE, SIG_IGN);
    return 0;
}

int run_main(int argc, char **argv)
{
    static Run run;
    memset(&run, 0, sizeof(run));
    run.startup_timeout = 60;
    run.plan.worker = "/proc/self/exe";
    char self[4096];
    ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
    if (n > 0) {
        self[n] = '\0';
        run.plan.worker = self;
    }
    int parsed = parse_run_options(&run, argc, argv);
    if (parsed != 0)
        return parsed > 0 ? 0 : 2;
    // the layout is checked here, before any rank starts (argv[-1] is `--` or a flag: reuse a name)
    char *train_argv[512] = {"train"};
    int train_argc = 1;
    for (int i = 0; i < run.plan.train_argc && train_argc < 511; i++)
        train_argv[train_argc++] = run.plan.train_argv[i];
    int check = train_check_launch(run.plan.ranks, train_argc, train_argv);
    if (check != 0 || check_worker(&run))
        return check ? check : 2;

    char address[300], err[512];
    if (install_signals() || open_listener(&run, address, sizeof(address)))
        return 1;
    setenv(CHANNEL_ENV, address, 1);
    const char *job = getenv("SLURM_JOB_ID");
    bool srun = spawn_resolve_via(run.plan.via) == VIA_SRUN;
    fprintf(stderr, "phalanx run: starting %d rank(s) with %s%s%s\n", run.plan.ranks,
            srun ? "srun in Slurm job " : "mpirun", srun && job ? job : "", srun && !job ? "(no job)" : "");
    run.started_at = now_seconds();
    run.job = spawn_job(&run.plan, err, sizeof(err));
    if (run.job < 0) {
        fprintf(stderr, "phalanx run: %s\n", err);
        return 1;
    }
    watch(&run);
    return job_exit_status(&run);
}
