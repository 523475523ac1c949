/*
 * drill: what `phalanx drill` adds to the elastic agent (private to
 * launcher/; the event grammar and the report's contents are in elastic.h).
 *
 * drill.c: the --inject events of an attempt turned into what makes them:
 * the worker's fault environment, flipped bytes in checkpoint shards, and
 * the fault command for host faults (fired as rank 0 reports steps, reaped
 * when the attempt ends, and named as the cause of the failure they made).
 * report.c: the --report JSON, written once the run has ended.
 */
#ifndef PHALANX_DRILL_H
#define PHALANX_DRILL_H

#include "agent.h"

/* The worker's environment for attempt `a`: FAULT_ENV (crash, hang, slow,
 * node) and the checkpoint module's kill-during-flush hook (flushkill). */
void drill_set_fault_env(const Agent *agent, int a);
/* corrupt:S events of attempt `a`, before it starts: one flipped byte in the
 * middle of the step-S checkpoint's rank-0 shard, in every tier that has it. */
void drill_corrupt_shards(const Agent *agent, int a);
/* Rank 0 completed `step`: starts the due host faults' commands. */
void drill_fire_due_host_faults(Agent *agent, long step);
/* Waits for the fault commands (bounded: a stuck one is killed). */
void drill_reap_fault_commands(Agent *agent);
/* Names the host fault behind the failure of attempt `a`, if one was fired. */
void drill_attribute_failure(Agent *agent, Attempt *a);

/* Which tier a resumed checkpoint came from: "memory" (tier 1), "durable". */
const char *drill_report_resumed_tier(const Agent *agent, const char *path);
/* Writes the report to options->report_path (nothing when NULL); a file that
 * cannot be written is said on stderr, and the run's status stays. */
void drill_report_write(const Agent *agent, int status);

#endif
