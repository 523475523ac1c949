/* Starting the ranks with mpirun or srun (contract in spawn.h). */
#include "spawn.h"

#include "channel.h"
#include "checkpoint.h"
#include "runtime.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_ARGS 512

typedef struct {
    char *items[MAX_ARGS];
    int count;
    char numbers[4][32];
    char exclude[1100];
    char hosts[4096];
} Argv;

static void add(Argv *a, const char *item)
{
    if (a->count < MAX_ARGS - 1)
        a->items[a->count++] = (char *)item;
    a->items[a->count] = NULL;
}

Via spawn_resolve_via(Via via)
{
    if (via != VIA_AUTO)
        return via;
    return getenv("SLURM_JOB_ID") ? VIA_SRUN : VIA_MPIRUN;
}

bool spawn_is_multi_host(const SpawnPlan *plan)
{
    return spawn_resolve_via(plan->via) == VIA_SRUN || plan->hostfile || plan->hosts;
}

/* Threads per rank when the user did not choose: the cores of this host
 * shared among the ranks on it, so that ranks do not fight over cores. */
static void default_threads(const SpawnPlan *plan)
{
    if (getenv("OMP_NUM_THREADS") || spawn_is_multi_host(plan))
        return;
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    long per_rank = cores / plan->ranks;
    char value[32];
    snprintf(value, sizeof(value), "%ld", per_rank > 0 ? per_rank : 1);
    setenv("OMP_NUM_THREADS", value, 1);
}

/* The length of a host name's first label (short and full host names both
 * match), or all of it for an IPv4 address, whose labels are no names. */
static size_t short_name_length(const char *name, size_t len)
{
    char copy[INET_ADDRSTRLEN];
    struct in_addr ignored;
    if (len < sizeof(copy)) {
        memcpy(copy, name, len);
        copy[len] = '\0';
        if (inet_pton(AF_INET, copy, &ignored) == 1)
            return len;
    }
    size_t first = strcspn(name, ".");
    return first < len ? first : len;
}

/* `name` (its first `len` bytes) is one of the comma-separated `names`,
 * compared by short_name_length. */
static bool host_listed(const char *name, size_t len, const char *names)
{
    len = short_name_length(name, len);
    for (const char *n = names; n && *n;) {
        size_t item = strcspn(n, ","), item_short = short_name_length(n, item);
        if (item_short == len && strncmp(n, name, len) == 0)
            return true;
        n += item + (n[item] == ',');
    }
    return false;
}

/* Appends "name[:slots]" to out unless excluded; returns 1 when kept. */
static int keep_host(const char *entry, size_t len, const char *exclude, char *out, size_t out_len)
{
    size_t name_len = strcspn(entry, ":");
    if (name_len > len)
        name_len = len;
    if (len == 0 || host_listed(entry, name_len, exclude))
        return 0;
    size_t used = strlen(out);
    snprintf(out + used, out_len - used, "%s%.*s", used ? "," : "", (int)len, entry);
    return 1;
}

static int hostfile_hosts(const SpawnPlan *plan, char *out, size_t len)
{
    FILE *f = fopen(plan->hostfile, "r");
    if (!f)
        return -1;
    char line[512], entry[300];
    int kept = 0;
    while (fgets(line, sizeof(line), f)) {
        char name[256];
        int slots = 0;
        const char *at = strstr(line, "slots=");
        if (line[0] == '#' || sscanf(line, "%255s", name) != 1)
            continue;
        if (at)
            slots = atoi(at + 6);
        int n = slots > 0 ? snprintf(entry, sizeof(entry), "%s:%d", name, slots)
                          : snprintf(entry, sizeof(entry), "%s", name);
        kept += keep_host(entry, (size_t)n, plan->exclude, out, len);
    }
    fclose(f);
    return kept;
}

int spawn_filtered_hosts(const SpawnPlan *plan, char *out, size_t len)
{
    out[0] = '\0';
    if (plan->hostfile)
        return hostfile_hosts(plan, out, len);
    int kept = 0;
    for (const char *h = plan->hosts; h && *h;) {
        size_t item = strcspn(h, ",");
        kept += keep_host(h, item, plan->exclude, out, len);
        h += item + (h[item] == ',');
    }
    return kept;
}

int spawn_host_slots(const char *hosts)
{
    int slots = 0;
    for (const char *h = hosts; *h;) {
        size_t item = strcspn(h, ",");
        const char *colon = memchr(h, ':', item);
        slots += colon ? atoi(colon + 1) : 1;
        h += item + (h[item] == ',');
    }
    return slots;
}

int spawn_first_host(const SpawnPlan *plan, char *out, size_t len)
{
    char hosts[4096];
    SpawnPlan all = *plan;
    all.exclude = NULL;
    if (len == 0 || spawn_filtered_hosts(&all, hosts, sizeof(hosts)) <= 0)
        return -1;
    size_t name = strcspn(hosts, ":,");
    if (name >= len)
        return -1;
    memcpy(out, hosts, name);
    out[name] = '\0';
    return 0;
}

static void build_mpirun(const SpawnPlan *plan, Argv *a)
{
    add(a, "mpirun");
    add(a, "-n");
    snprintf(a->numbers[0], sizeof(a->numbers[0]), "%d", plan->ranks);
    add(a, a->numbers[0]);
    if (plan->exclude && (plan->hostfile || plan->hosts)) {
        // a relaunch after a lost host: the others only
        spawn_filtered_hosts(plan, a->hosts, sizeof(a->hosts));
        add(a, "--host");
        add(a, a->hosts);
    } else if (plan->hostfile) {
        add(a, "--hostfile");
        add(a, plan->hostfile);
    } else if (plan->hosts) {
        add(a, "--host");
        add(a, plan->hosts);
    } else {
        add(a, "--oversubscribe"); /* one host: as many ranks as asked, whatever the cores */
    }
    add(a, "--bind-to");
    add(a, "none");
    if (geteuid() == 0)
        add(a, "--allow-run-as-root");
    // -x NAME without a value exports it from the environment: the channel's
    // secret never appears on a command line (srun passes the environment)
    static const char *const forwarded[] = {CHANNEL_ENV, CHANNEL_SECRET_ENV,
                                            CHANNEL_TIMEOUT_ENV, CKPT_EPOCH_ENV,
                                            "OMP_NUM_THREADS",
                                            FAULT_ENV, CKPT_FLUSH_KILL_ENV};
    for (size_t i = 0; i < sizeof(forwarded) / sizeof(forwarded[0]); i++)
        if (getenv(forwarded[i])) {
            add(a, "-x");
            add(a, forwarded[i]);
        }
}

static void build_srun(const SpawnPlan *plan, Argv *a)
{
    add(a, "srun");
    add(a, "-n");
    snprintf(a->numbers[0], sizeof(a->numbers[0]), "%d", plan->ranks);
    add(a, a->numbers[0]);
    add(a, "--mpi=pmix");
    if (plan->elastic) {
        // a lost node must not take the step down before the launcher sees it
        add(a, "--no-kill");
        // the failed step's resources may still be held while its lost node
        // is not yet marked down: the relaunched step shares them
        add(a, "--overlap");
        if (plan->ranks_per_node > 0) {
            snprintf(a->numbers[1], sizeof(a->numbers[1]), "--ntasks-per-node=%d",
                     plan->ranks_per_node);
            add(a, a->numbers[1]);
        }
        if (plan->exclude) {
            snprintf(a->exclude, sizeof(a->exclude), "--exclude=%s", plan->exclude);
            add(a, a->exclude);
        }
    } else {
        add(a, "--kill-on-bad-exit=1");
    }
}

/* Forks and execs a's command in a process group of its own; `quiet`: its
 * output goes to /dev/null. */
static pid_t start(const Argv *a, bool quiet, char *err, size_t err_len)
{
    pid_t pid = fork();
    if (pid < 0) {
        snprintf(err, err_len, "fork: %s", strerror(errno));
        return -1;
    }
    if (pid == 0) {
        setpgid(0, 0);
        int null = quiet ? open("/dev/null", O_WRONLY) : -1;
        if (null >= 0) {
            dup2(null, STDOUT_FILENO);
            dup2(null, STDERR_FILENO);
        }
        execvp(a->items[0], a->items);
        fprintf(stderr, "phalanx run: cannot start %s: %s\n", a->items[0], strerror(errno));
        _exit(127);
    }
    setpgid(pid, pid); /* also here: no race with the child's own call */
    return pid;
}

pid_t spawn_job(const SpawnPlan *plan, char *err, size_t err_len)
{
    default_threads(plan);
    Argv a = {.count = 0};
    if (spawn_resolve_via(plan->via) == VIA_SRUN)
        build_srun(plan, &a);
    else
        build_mpirun(plan, &a);
    add(&a, plan->worker);
    add(&a, plan->command ? plan->command : "train");
    for (int i = 0; i < plan->train_argc; i++)
        add(&a, plan->train_argv[i]);
    if (a.count >= MAX_ARGS - 1) {
        snprintf(err, err_len, "too many training options (at most %d)", MAX_ARGS - 8);
        return -1;
    }
    return start(&a, false, err, err_len);
}

pid_t spawn_probe(const SpawnPlan *plan, const char *host, char *err, size_t err_len)
{
    Argv a = {.count = 0};
    if (spawn_resolve_via(plan->via) == VIA_SRUN) {
        add(&a, "srun");
        add(&a, "-n");
        add(&a, "1");
        add(&a, "-N");
        add(&a, "1");
        add(&a, "--overlap");
        add(&a, "--quiet");
        snprintf(a.hosts, sizeof(a.hosts), "--nodelist=%s", host);
        add(&a, a.hosts);
    } else {
        SpawnPlan one = *plan;
        one.ranks = 1;
        one.hostfile = NULL;
        one.hosts = host;
        one.exclude = NULL;
        build_mpirun(&one, &a);
    }
    add(&a, plan->worker);
    add(&a, "probe");
    return start(&a, true, err, err_len);
}
