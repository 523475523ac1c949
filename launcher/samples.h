/*
 * samples: the samples a run consumed, lost and duplicated, from its
 * metrics file (private to launcher/; the drill report's "samples").
 * Rows are JSON objects, one a line, read with a JSON parser (whatever the
 * spacing or the order of the keys); a line that is not one, or lacks an
 * integer "step" (>= 1), "samples" or "global_batch", is skipped (a rank
 * killed mid-write leaves a torn last line).
 */
#ifndef PHALANX_SAMPLES_H
#define PHALANX_SAMPLES_H

typedef struct {
    long steps;
    long long consumed, lost, duplicated;
} SampleAccount;

/* The committed trajectory of `metrics`: 0, or -1 when it cannot be read. */
int samples_account(const char *metrics, SampleAccount *acc);

#endif
