/* emit and append through the C API, timed: bench PATH COUNT emit|append
 * Prints "<mode> <count> events: calls <ns> ns, until flush <ns> ns". Run by `cargo run --release --example
 * bench -- --capi`, which builds the library and this program and times the same
 * calls from Rust in the same run. The 256-byte JSON bodies are made before the clock
 * starts, as the Rust side's are. */
#define _POSIX_C_SOURCE 200809L
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "eventspool.h"

#define EVENT_BYTES 256
/* As the Rust side's: no cap, and a channel with room for every timed call. */
#define CONFIG "{\"max_bytes\": 18446744073709551615, \"channel_capacity\": 1048576}"

static uint64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

static void check(eventspool_status status, const char *what) {
    if (status != EVENTSPOOL_OK) {
        char message[512];
        eventspool_last_error(message, sizeof message);
        fprintf(stderr, "%s: %s\n", what, message);
        exit(1);
    }
}

/* Opens a spool at `path`, makes the calls, flushes, closes; prints the times when
 * `mode` is not NULL. */
static void run(const char *path, const char *bodies, uint64_t count, int append,
                const char *mode) {
    eventspool_spool *spool = NULL;
    check(eventspool_open(path, CONFIG, &spool), "open");
    uint64_t start = now_ns();
    for (uint64_t n = 0; n < count; n++) {
        const char *body = bodies + n * EVENT_BYTES;
        if (append)
            check(eventspool_append(spool, "bench.event", body, EVENT_BYTES, NULL, NULL, NULL),
                  "append");
        else
            check(eventspool_emit(spool, "bench.event", body, EVENT_BYTES, NULL, NULL), "emit");
    }
    uint64_t calls = now_ns() - start;
    check(eventspool_flush(spool, UINT64_MAX), "flush");
    uint64_t took = now_ns() - start;
    if (mode != NULL)
        printf("%s %llu events: calls %llu ns, until flush %llu ns\n", mode,
               (unsigned long long)count, (unsigned long long)calls, (unsigned long long)took);
    check(eventspool_close(spool, 60000), "close");
    eventspool_free(spool);
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: bench PATH COUNT emit|append\n");
        return 2;
    }
    uint64_t count = strtoull(argv[2], NULL, 10);
    int append = strcmp(argv[3], "append") == 0;
    char *bodies = malloc(count * EVENT_BYTES);
    if (bodies == NULL) return 1;
    for (uint64_t n = 0; n < count; n++) {
        char *body = bodies + n * EVENT_BYTES;
        int head = snprintf(body, EVENT_BYTES, "{\"n\":%llu,\"pad\":\"", (unsigned long long)n);
        memset(body + head, 'x', EVENT_BYTES - head - 2);
        memcpy(body + EVENT_BYTES - 2, "\"}", 2);
    }
    /* A first, untimed run warms the heap, as the Rust side's is by the rounds before. */
    char warm[4096];
    snprintf(warm, sizeof warm, "%s.warm", argv[1]);
    run(warm, bodies, count, append, NULL);
    run(argv[1], bodies, count, append, argv[3]);
    free(bodies);
    return 0;
}
