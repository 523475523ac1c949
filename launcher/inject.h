/*
 * inject: the --inject grammar of `phalanx drill` (private to launcher/; the
 * events and what each does are in elastic.h). inject.c stays pure, so that
 * tests/fuzz links it alone.
 */
#ifndef PHALANX_INJECT_H
#define PHALANX_INJECT_H

/* One --inject event. */
typedef struct {
    char kind[16]; /* crash, hang, slow, node, flushkill, corrupt, partition, poweroff,
                      restore */
    int who;       /* rank or node */
    char host[64]; /* partition, poweroff, restore: [A-Za-z0-9._-], not starting with '-' */
    long step;
    double factor;
    int attempt;
} ElasticEvent;

/* Parses one --inject text into *event: 0, or -1 when it is not an event.
 * Pure (no I/O, no global state), so tests/fuzz drives it with any bytes. */
int elastic_event_parse(const char *text, ElasticEvent *event);

#endif
