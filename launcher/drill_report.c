/* The elastic agent's report (contract in drill.h): the JSON timeline of
 * every attempt, recovery and grow, written when the run ends. */
#include "drill.h"
#include "samples.h"

#include "checkpoint.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

/* A JSON string: names and paths come from ranks and users. */
static void write_json_text(FILE *out, const char *text)
{
    fputc('"', out);
    for (const unsigned char *c = (const unsigned char *)text; *c; c++) {
        if (*c == '"' || *c == '\\')
            fprintf(out, "\\%c", *c);
        else if (*c < 0x20)
            fprintf(out, "\\u%04x", *c);
        else
            fputc(*c, out);
    }
    fputc('"', out);
}

/* Which tier a resumed checkpoint came from: "memory" (tier 1), "durable". */
const char *drill_report_resumed_tier(const Agent *agent, const char *path)
{
    CkptOptions ck = {.dir = agent->plan.ckpt_dir, .memory_dir = agent->plan.ckpt_memory_dir};
    char tiers[2][4096];
    ckpt_tier_dirs(&ck, tiers[0], sizeof(tiers[0]), tiers[1], sizeof(tiers[1]));
    size_t memory = strlen(tiers[0]);
    return memory && strncmp(path, tiers[0], memory) == 0 && path[memory] == '/' ? "memory"
                                                                                 : "durable";
}

/* Rank 0's steps per second in an attempt, from its first step to its last
 * (0 when it made fewer than two). */
static double steps_per_second(const Attempt *a)
{
    double seconds = a->last_step_at - a->first_step_at;
    return a->last_step > a->first_step && seconds > 0
               ? (double)(a->last_step - a->first_step) / seconds
               : 0;
}

/* The tier an attempt resumed from and how many bytes its ranks read from
 * where (rank 0's loaded line; runtime.h). */
static void write_resume_source(FILE *out, const Agent *agent, const Attempt *a)
{
    fprintf(out, ", \"resumed_tier\": \"%s\", \"read_bytes\": {\"own_host_memory\": %ld, "
                 "\"other_hosts_memory\": %ld, \"durable\": %ld}",
            drill_report_resumed_tier(agent, a->resumed_path), a->read_bytes[0],
            a->read_bytes[1], a->read_bytes[2]);
}

static void write_attempt(FILE *out, const Agent *agent, int i)
{
    const Attempt *a = &agent->attempts[i];
    double t0 = agent->t0;
    fprintf(out, "    {\"attempt\": %d, \"world\": %d, \"layout\": \"%dx%dx%d\", "
                 "\"resume\": %s, \"launched_s\": %.3f",
            i, a->world, a->dp, a->pp, a->sp, a->resumed_flag ? "true" : "false",
            a->launched_at - t0);
    if (a->ranks_up_at > 0)
        fprintf(out, ", \"ranks_up_s\": %.3f", a->ranks_up_at - t0);
    if (a->resumed_at > 0) {
        fprintf(out, ", \"ckpt_loaded_s\": %.3f, \"resumed_step\": %ld", a->resumed_at - t0,
                a->resumed_step);
        write_resume_source(out, agent, a);
        fprintf(out, ", \"resumed_from\": ");
        write_json_text(out, a->resumed_path);
    }
    if (a->first_step_at > 0)
        fprintf(out, ", \"first_step_s\": %.3f, \"first_step\": %ld", a->first_step_at - t0,
                a->first_step);
    fprintf(out, ", \"last_step\": %ld, \"ended_s\": %.3f", a->last_step, a->ended_at - t0);
    double rate = steps_per_second(a);
    if (rate > 0)
        fprintf(out, ", \"steps_per_s\": %.3f", rate);
    if (a->grown)
        fprintf(out, ", \"ended_by\": \"grow\"");
    if (a->replicated_step > 0)
        fprintf(out, ", \"replicated_step\": %ld, \"replication_lag_max\": %ld",
                a->replicated_step, a->replication_lag_max);
    const JobFailure *f = &a->failure;
    if (f->kind != FAILURE_NONE) {
        fprintf(out, ", \"failure\": {\"kind\": \"%s\", \"rank\": %d, \"node\": ",
                job_failure_name(f->kind), f->rank);
        write_json_text(out, f->node);
        fprintf(out, ", \"address\": ");
        write_json_text(out, f->address);
        fprintf(out, ", \"how\": \"%s\", \"detected_s\": %.3f", f->how ? f->how : "",
                f->detected_at - t0);
        if (a->cause) {
            fprintf(out, ", \"cause\": \"%s\", \"host\": ", a->cause);
            write_json_text(out, a->cause_host);
        }
        if (f->fault_at > 0)
            fprintf(out, ", \"fault_s\": %.3f", f->fault_at - t0);
        if (a->hosts_checked)
            fprintf(out, ", \"other_hosts_found_lost\": %d", a->hosts_found_lost);
        fprintf(out, ", \"node_removed\": %d}", a->node_lost);
    }
    fprintf(out, "}%s\n", i + 1 < agent->attempt_count ? "," : "");
}

/* Per failure: detection, teardown, relaunch, load and first step, MTTR. */
static void write_recoveries(FILE *out, const Agent *agent)
{
    bool first = true;
    for (int i = 0; i + 1 < agent->attempt_count; i++) {
        const Attempt *a = &agent->attempts[i], *next = &agent->attempts[i + 1];
        const JobFailure *f = &a->failure;
        if (f->kind == FAILURE_NONE)
            continue; /* a grow (write_grows) */
        double failed = f->fault_at > 0 ? f->fault_at : f->detected_at;
        long resumed = next->resumed_at > 0 ? next->resumed_step : 0;
        fprintf(out, "%s    {\"attempt\": %d, \"kind\": \"%s\", \"rank\": %d, \"detect_s\": %.3f, "
                     "\"teardown_s\": %.3f, \"relaunch_s\": %.3f",
                first ? "" : ",\n", i, job_failure_name(f->kind), f->rank, f->detected_at - failed,
                a->ended_at - f->detected_at, next->launched_at - a->ended_at);
        // relaunch -> ranks up (processes, MPI) -> checkpoint loaded -> first step
        if (next->ranks_up_at > 0)
            fprintf(out, ", \"startup_s\": %.3f", next->ranks_up_at - next->launched_at);
        if (next->resumed_at > 0 && next->ranks_up_at > 0)
            fprintf(out, ", \"ckpt_load_s\": %.3f", next->resumed_at - next->ranks_up_at);
        if (next->resumed_at > 0)
            write_resume_source(out, agent, next);
        if (next->first_step_at > 0)
            fprintf(out, ", \"mttr_s\": %.3f", next->first_step_at - failed);
        long recomputed = a->last_step - resumed;
        fprintf(out, ", \"last_step_before\": %ld, \"resumed_step\": %ld, \"steps_recomputed\": %ld}",
                a->last_step, resumed, recomputed > 0 ? recomputed : 0);
        first = false;
    }
    fprintf(out, "\n");
}

/* The steps per second of the attempt before the first failure, of the one
 * a grow stopped (on the survivors), and of the one after it. */
static void write_throughput(FILE *out, const Agent *agent, const Grow *g)
{
    int before = 0;
    while (before + 1 < agent->attempt_count &&
           agent->attempts[before].failure.kind == FAILURE_NONE)
        before++;
    double rates[3] = {steps_per_second(&agent->attempts[before]),
                       steps_per_second(&agent->attempts[g->attempt]),
                       g->attempt + 1 < agent->attempt_count
                           ? steps_per_second(&agent->attempts[g->attempt + 1]) : 0};
    const char *names[3] = {"before_loss", "survivors", "after_grow"};
    fprintf(out, ", \"steps_per_s\": {");
    for (int k = 0; k < 3; k++)
        fprintf(out, "%s\"%s\": %.3f", k ? ", " : "", names[k], rates[k]);
    fprintf(out, "}");
}

/* Per grow: host healthy, stop began, first step in the larger layout. */
static void write_grows(FILE *out, const Agent *agent)
{
    for (int i = 0; i < agent->grow_count; i++) {
        const Grow *g = &agent->grows[i];
        const Attempt *a = &agent->attempts[g->attempt];
        const Attempt *next = g->attempt + 1 < agent->attempt_count
                                  ? &agent->attempts[g->attempt + 1] : NULL;
        fprintf(out, "%s    {\"attempt\": %d, \"hosts\": ", i ? ",\n" : "", g->attempt);
        write_json_text(out, g->hosts);
        fprintf(out, ", \"world_before\": %d, \"world_after\": %d, \"healthy_s\": %.3f, "
                     "\"stop_s\": %.3f, \"stopped_after_step\": %ld",
                g->world_before, g->world_after, g->healthy_at - agent->t0,
                g->stop_at - agent->t0, a->last_step);
        if (next && next->first_step_at > 0) {
            long resumed = next->resumed_at > 0 ? next->resumed_step : 0;
            long recomputed = a->last_step - resumed;
            fprintf(out, ", \"layout_after\": \"%dx%dx%d\", \"first_step_after\": %ld, "
                         "\"first_step_after_s\": %.3f, \"grow_s\": %.3f, "
                         "\"steps_recomputed\": %ld",
                    next->dp, next->pp, next->sp, next->first_step,
                    next->first_step_at - agent->t0, next->first_step_at - g->healthy_at,
                    recomputed > 0 ? recomputed : 0);
        }
        write_throughput(out, agent, g);
        fprintf(out, "}");
    }
    fprintf(out, "\n");
}

/* Healthy hosts not used, and why. */
static void write_spares(FILE *out, const Agent *agent)
{
    bool first = true;
    for (int i = 0; i < agent->pool_count; i++) {
        const PoolHost *p = &agent->pool[i];
        if (!p->spare_why[0])
            continue;
        fprintf(out, "%s    {\"host\": ", first ? "" : ",\n");
        write_json_text(out, p->name);
        fprintf(out, ", \"why\": ");
        write_json_text(out, p->spare_why);
        fprintf(out, "}");
        first = false;
    }
    fprintf(out, "\n");
}

void drill_report_write(const Agent *agent, int status)
{
    const char *path = agent->options->report_path;
    if (!path)
        return;
    FILE *out = fopen(path, "w");
    if (!out) {
        fprintf(stderr, "phalanx run: --report: cannot write '%s': %s\n", path, strerror(errno));
        return;
    }
    fprintf(out, "{\n  \"outcome\": \"%s\", \"exit_status\": %d, \"restarts\": %d,\n",
            agent->outcome, status, agent->attempt_count - 1 - agent->grow_count);
    fprintf(out, "  \"min_ranks\": %d, \"max_ranks\": %d, \"ranks_per_node\": %d, "
                 "\"heartbeat_timeout_s\": %g, \"rejoin_every_s\": %g,\n",
            agent->options->min_ranks, agent->max_ranks, agent->options->ranks_per_node,
            agent->options->heartbeat_timeout, agent->options->rejoin_every);
    fprintf(out, "  \"injected\": [");
    for (int i = 0; i < agent->options->event_count; i++)
        fprintf(out, "%s\"%s\"", i ? ", " : "", agent->options->events[i]);
    fprintf(out, "],\n  \"attempts\": [\n");
    for (int i = 0; i < agent->attempt_count; i++)
        write_attempt(out, agent, i);
    fprintf(out, "  ],\n  \"recoveries\": [\n");
    write_recoveries(out, agent);
    fprintf(out, "  ],\n  \"grows\": [\n");
    write_grows(out, agent);
    fprintf(out, "  ],\n  \"spares\": [\n");
    write_spares(out, agent);
    fprintf(out, "  ]");
    SampleAccount acc;
    if (samples_account(agent->plan.metrics, &acc) == 0)
        fprintf(out, ",\n  \"samples\": {\"metrics\": \"%s\", \"committed_steps\": %ld, "
                     "\"consumed\": %lld, \"lost\": %lld, \"duplicated\": %lld}",
                agent->plan.metrics, acc.steps, acc.consumed, acc.lost, acc.duplicated);
    fprintf(out, "\n}\n");
    fclose(out);
    fprintf(stderr, "phalanx run: drill report in %s\n", path);
}
